"""``tledge eval frontier``: which model to ship, measured on the user's own class folders.

For every model, in one run: few-shot accuracy (5-way 1-shot, all-way 1-shot, 5-way 5-shot)
and open-set AUROC, each with a 95% interval and a paired difference to the first model on
identical episodes; for each ``transfer`` folder (another domain with the same class
folders, e.g. PACS photo -> sketch), the accuracy of its images against galleries of every
DATA image of their class (class means in prototype mode), paired per image; latency
p50/p95 at batch 1 with the chosen threads; file size; memory (resident-set growth while the
model loads and runs once). Torch-free.

Each image is embedded once per model; episodes then run on those embeddings through real
galleries (``tledge.evaluate.run_episodes``), exactly as ``tledge eval fewshot`` does.
Latency is timed in turns of ten calls per model, alternating, so that a noisy neighbour
slows every model alike (as ``tledge bench`` does).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tledge.errors import TledgeError
from tledge.evaluate import Episodes, embed_folder, embed_unknown, mean_ci95, run_episodes
from tledge.runtime.batch import class_folders
from tledge.runtime.embedder import Embedder
from tledge.runtime.gallery import Gallery
from tledge.runtime.images import load_image
from tledge.runtime.preprocess import preprocess_one

# (name, way, shot); way None: every class. AUROC is measured on the first task's episodes.
TASKS = (("5-way 1-shot", 5, 1), ("all-way 1-shot", None, 1), ("5-way 5-shot", 5, 5))
OPEN_SET_TASK = TASKS[0][0]


@dataclass(frozen=True)
class FrontierOptions:
    episodes: int = 300              # per 5-way task
    all_way_episodes: int = 100
    query: int = 5                   # queries per class and episode
    seed: int = 0
    threads: int = 2                 # intra-op threads, for the latency and the embedding
    repeats: int = 100               # timed calls per model at batch 1
    latency_images: int = 10
    providers: str = "cpu"
    mode: str = "prototype"          # the gallery's matching: "prototype" or "nearest"
    metric: str = "all-way 1-shot"   # the accuracy plotted and used for the Pareto set

    def plans(self, per_class: dict[str, int], transfer_tasks: tuple[str, ...] = ()
              ) -> dict[str, list]:
        """Seeded episode plans by task name, the same for every model."""
        names = [t[0] for t in TASKS] + list(transfer_tasks)
        if self.metric not in names:
            raise TledgeError(f"unknown metric {self.metric!r}; choose one of "
                              f"{', '.join(names)}")
        return {name: Episodes(way, shot, self.query,
                               self.all_way_episodes if way is None else self.episodes,
                               self.seed).plan(per_class)
                for name, way, shot in TASKS}


@dataclass
class Loaded:
    """One model under measurement: its embedder and what loading it cost."""

    path: Path
    embedder: Embedder
    memory_mb: float
    file_mb: float


def rss_mb() -> float:
    """This process's resident set in MB (NaN where /proc is unavailable)."""
    try:
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) / 1024 for line in fh if line.startswith("VmRSS"))
    except (OSError, StopIteration):
        return float("nan")


def load_models(models: list[Path], options: FrontierOptions) -> list[Loaded]:
    """Load each model and run it once; memory is the resident-set growth across both.
    ONNX Runtime's one-off start-up (libraries, thread pools) is paid first, by a session
    that is then dropped, so that it is not counted as the first model's memory."""
    if models:
        Embedder(models[0], providers=options.providers, threads=options.threads).warmup()
    loaded = []
    for path in models:
        before = rss_mb()
        embedder = Embedder(path, providers=options.providers, threads=options.threads)
        embedder.warmup()
        loaded.append(Loaded(Path(path), embedder, max(0.0, rss_mb() - before),
                             Path(path).stat().st_size / 1e6))
    return loaded


def time_in_turns(runs: list[Callable[[int], object]], n_inputs: int, repeats: int,
                  block: int = 10) -> list[list[float]]:
    """Milliseconds of ``repeats`` calls of each ``run(input_index)``, in turns of ``block``
    consecutive calls per run (each run then works with its own weights in the caches; one
    untimed call per turn brings them in)."""
    times: list[list[float]] = [[] for _ in runs]
    done = 0
    while done < repeats:
        n = min(block, repeats - done)
        for run, out in zip(runs, times):
            run(done % n_inputs)
            for i in range(done, done + n):
                start = time.perf_counter()
                run(i % n_inputs)
                out.append((time.perf_counter() - start) * 1000.0)
        done += n
    return times


def measure_latency(loaded: list[Loaded], images: list[np.ndarray],
                    repeats: int) -> list[dict]:
    """p50/p95 ms per model at batch 1, each on its own preprocessing of ``images``."""
    runs = []
    for item in loaded:
        cfg = item.embedder.info.preprocess
        tensors = [preprocess_one(im, cfg)[None] for im in images]
        runs.append(lambda i, e=item.embedder, t=tensors: e.embed_tensor(t[i]))
    times = time_in_turns(runs, len(images), repeats)
    return [{"p50": float(np.median(t)), "p95": float(np.percentile(t, 95))} for t in times]


def open_set_plan(plan: list, per_class: dict[str, int], count: int,
                  seed: int) -> list[list[tuple[str, list[int]]]]:
    """Per episode, unknowns from classes outside it: ``count`` images from each of up to
    as many other classes as the episode has (seeded apart from the plan itself)."""
    rng = np.random.default_rng([seed, 1])
    eligible = sorted(c for c, n in per_class.items() if n >= count)
    out = []
    for episode in plan:
        inside = {c for c, _, _ in episode}
        others = [c for c in eligible if c not in inside]
        chosen = rng.choice(others, min(len(others), len(episode)), replace=False) if others \
            else []
        out.append([(str(c), sorted(rng.permutation(per_class[c])[:count].tolist()))
                    for c in sorted(chosen)])
    return out


def measure_accuracy(embedder: Embedder, vectors: dict[str, np.ndarray], plans: dict,
                     unknowns: list[np.ndarray] | None, mode: str) -> dict[str, np.ndarray]:
    """Per-episode accuracy by task, and ``auroc`` per episode of the open-set task."""
    out = {}
    for name, plan in plans.items():
        res = run_episodes(embedder, vectors, plan, mode=mode,
                           unknown_per_episode=unknowns if name == OPEN_SET_TASK else None)
        out[name] = res["per_episode"]
        if name == OPEN_SET_TASK and unknowns is not None:
            out["auroc"] = res["per_episode_auroc"]
    return out


def paired(a: np.ndarray, b: np.ndarray) -> dict:
    """B minus A on the same episodes, mean and 95% half-width (episodes where either is
    NaN, e.g. an AUROC without a correct query, are left out of both)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    keep = np.isfinite(a) & np.isfinite(b)
    diff, ci = mean_ci95(b[keep] - a[keep]) if keep.any() else (float("nan"), float("nan"))
    return {"difference": diff, "ci95": ci, "episodes": int(keep.sum())}


def summarise(values: np.ndarray) -> dict:
    values = np.asarray(values, np.float64)
    values = values[np.isfinite(values)]
    if not len(values):
        return {"mean": float("nan"), "ci95": float("nan"), "episodes": 0}
    mean, ci = mean_ci95(values)
    return {"mean": mean, "ci95": ci, "episodes": int(len(values))}


def pareto_front(accuracy: list[float], latency: list[float]) -> list[bool]:
    """True where no other model is at least as accurate and at least as fast, and strictly
    better in one of the two (maximise accuracy, minimise latency)."""
    points = list(zip(accuracy, latency))
    return [not any(a2 >= a and l2 <= lat and (a2 > a or l2 < lat) for a2, l2 in points)
            for a, lat in points]


def latency_images(folders: dict[str, list[Path]], count: int) -> list[np.ndarray]:
    """The first image of each class in turn: real pictures, decoded once."""
    files = [f for group in zip(*[v for v in folders.values() if v]) for f in group]
    return [load_image(f) for f in files[:max(1, count)]]


def transfer_name(data: Path, target: Path) -> str:
    return f"{Path(data).resolve().name}->{Path(target).resolve().name}"


def transfer_classes(data: Path, targets: list[Path]) -> dict[str, list[str]]:
    """Task name -> the classes DATA and the target folder share (at least two)."""
    own = set(class_folders(data))
    tasks = {}
    for target in targets:
        shared = sorted(own & set(class_folders(target)))
        if len(shared) < 2:
            raise TledgeError(f"{target} shares {len(shared)} class folder(s) with {data}; a "
                              "transfer folder needs the same <class> folders as DATA")
        name = transfer_name(data, target)
        if name in tasks:
            raise TledgeError(f"two transfer folders are both named {Path(target).name}")
        tasks[name] = shared
    return tasks


def transfer_accuracy(embedder: Embedder, source: dict[str, np.ndarray],
                      target: dict[str, np.ndarray], classes: list[str],
                      mode: str) -> np.ndarray:
    """1.0/0.0 per target image (classes in order): is its answer its class, from a
    gallery holding every source image of ``classes``?"""
    with tempfile.TemporaryDirectory(prefix="tledge-transfer-") as tmp:
        with Gallery.create(Path(tmp) / "g", embedder) as gallery:
            for label in classes:
                gallery.enroll_vectors(label, source[label])
            got = gallery.classify_batch(np.concatenate([target[c] for c in classes]),
                                         mode=mode, threshold=-1.0)
    truth = [c for c in classes for _ in range(len(target[c]))]
    return np.array([float(g[0] == t) for g, t in zip(got, truth)])


def frontier(models: list[Path], data: Path, options: FrontierOptions = FrontierOptions(),
             unknown: Path | None = None, transfer: list[Path] | None = None) -> dict:
    """Measure every model (see the module docstring); the first is the paired baseline."""
    if not models:
        raise TledgeError("give at least one model (--model A.onnx --model B.onnx ...)")
    folders = class_folders(data)
    per_class = {c: len(f) for c, f in folders.items()}
    shared = transfer_classes(data, list(transfer or []))  # refuses two of one name
    targets = {transfer_name(data, t): Path(t) for t in transfer or []}
    plans = options.plans(per_class, tuple(shared))
    loaded = load_models(models, options)
    latency = measure_latency(loaded, latency_images(folders, options.latency_images),
                              options.repeats)
    per_episode = []
    for item in loaded:
        vectors = embed_folder(item.embedder, data)
        if unknown is not None:
            unk = embed_unknown(item.embedder, unknown)
            unknowns = [unk] * len(plans[OPEN_SET_TASK])
        else:
            unknowns = [np.concatenate([vectors[c][idx] for c, idx in ep]) for ep in
                        open_set_plan(plans[OPEN_SET_TASK], per_class, options.query,
                                      options.seed)]
        measured = measure_accuracy(item.embedder, vectors, plans, unknowns, options.mode)
        for name, classes in shared.items():
            target = embed_folder(item.embedder, targets[name])
            measured[name] = transfer_accuracy(item.embedder, vectors, target, classes,
                                               options.mode)
        per_episode.append(measured)
    result = assemble(loaded, latency, per_episode, plans, options, data, unknown)
    result["transfer"] = {name: {"target": str(targets[name]), "classes": classes,
                                 "queries": len(per_episode[0][name])}
                          for name, classes in shared.items()}
    return result


def assemble(loaded: list[Loaded], latency: list[dict], per_episode: list[dict], plans: dict,
             options: FrontierOptions, data: Path, unknown: Path | None) -> dict:
    """The result: one row per model, paired differences to the first, the Pareto set."""
    rows = []
    for item, lat, eps in zip(loaded, latency, per_episode):
        info = item.embedder.info
        rows.append({
            "model": str(item.path), "name": item.path.name, "backbone": info.backbone,
            "precision": info.precision, "fingerprint": info.fingerprint,
            "input_size": info.preprocess.crop_size, "embedding_dim": info.embedding_dim,
            "accuracy": {k: summarise(v) for k, v in eps.items() if k != "auroc"},  # + transfer
            "auroc": summarise(eps.get("auroc", [])),
            "vs_first": {k: paired(per_episode[0][k], v) for k, v in eps.items()},
            "latency_ms": lat, "file_mb": round(item.file_mb, 2),
            "memory_mb": round(item.memory_mb, 1), "provider": item.embedder.provider,
            "per_episode": {k: [round(float(x), 6) for x in v] for k, v in eps.items()}})
    front = pareto_front([r["accuracy"][options.metric]["mean"] for r in rows],
                         [r["latency_ms"]["p50"] for r in rows])
    for row, on in zip(rows, front):
        row["pareto"] = on
    return {"data": str(data), "unknown": str(unknown) if unknown else
            f"{options.query} images from each of up to 5 classes outside each "
            f"{OPEN_SET_TASK} episode",
            "options": asdict(options),
            "tasks": {k: {"way": len(p[0]), "episodes": len(p)} for k, p in plans.items()},
            "models": rows}
