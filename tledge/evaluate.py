"""Few-shot and open-set evaluation of exported models, torch-free.

Every image is embedded once; each episode then enrolls its support shots into a real
``Gallery`` (SQLite + FAISS, in a temporary folder) and classifies its queries through it, so
the figures measure the code that users run, not a copy of its maths.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from tledge.errors import TledgeError
from tledge.runtime.batch import class_folders
from tledge.runtime.embedder import Embedder
from tledge.runtime.gallery import Gallery
from tledge.runtime.images import list_images


@dataclass(frozen=True)
class Episodes:
    """Seeded episode plan, shared by every model compared on it."""

    way: int | None      # None: all classes
    shot: int
    query: int
    episodes: int
    seed: int

    def plan(self, per_class: dict[str, int]) -> list[list[tuple[str, list[int], list[int]]]]:
        """Per episode: (class, support indices, query indices) for each chosen class."""
        eligible = sorted(c for c, n in per_class.items() if n >= self.shot + self.query)
        way = len(eligible) if self.way is None else self.way
        if way < 2 or len(eligible) < way:
            raise TledgeError(
                f"{way}-way {self.shot}-shot with {self.query} queries needs {way} classes of "
                f">= {self.shot + self.query} images; {len(eligible)} have them")
        rng = np.random.default_rng(self.seed)
        plans = []
        for _ in range(self.episodes):
            chosen = rng.choice(eligible, way, replace=False)
            episode = []
            for c in sorted(chosen):
                idx = rng.permutation(per_class[c])
                support, query = idx[:self.shot], idx[self.shot:self.shot + self.query]
                episode.append((c, list(support), list(query)))
            plans.append(episode)
        return plans


def embed_folder(embedder: Embedder, root: Path) -> dict[str, np.ndarray]:
    """``{class: embeddings (n, dim)}`` for a class-per-folder tree, embedded once."""
    folders = class_folders(root)
    total = sum(len(f) for f in folders.values())
    out = {}
    with tqdm(total=total, desc=f"embedding {Path(root).name}", unit="img", disable=None,
              leave=False) as bar:
        for label, files in folders.items():
            out[label] = embedder.embed(files, progress=bar.update)
    return out


def embed_unknown(embedder: Embedder, root: Path) -> np.ndarray:
    files = list_images(root)
    if not files:
        raise TledgeError(f"{root} holds no images to use as unknowns")
    return embedder.embed(files)


def run_episodes(embedder: Embedder, vectors: dict[str, np.ndarray], plan,
                 unknown: np.ndarray | None = None, mode: str = "prototype",
                 queries: dict[str, np.ndarray] | None = None,
                 unknown_per_episode: list[np.ndarray] | None = None) -> dict:
    """Per-episode accuracy (and open-set scores) through real galleries.

    Shots come from ``vectors``, queries from ``queries`` (default: the same vectors; e.g.
    embeddings of other views). Unknowns: ``unknown`` (n, dim) in every episode, or
    ``unknown_per_episode[i]`` in episode i; then ``per_episode_auroc`` is each episode's
    AUROC of correct known queries against its unknowns (NaN where it has none).
    """
    queries = vectors if queries is None else queries
    accs, known_scores, unknown_scores, aurocs = [], [], [], []
    with tempfile.TemporaryDirectory(prefix="tledge-eval-") as tmp:
        for i, episode in enumerate(tqdm(plan, desc="episodes", disable=None, leave=False)):
            with Gallery.create(Path(tmp) / f"e{i}", embedder) as gallery:
                for label, support, _ in episode:
                    gallery.enroll_vectors(label, vectors[label][support])
                batch = np.concatenate([queries[lab][q] for lab, _, q in episode])
                truth = [lab for lab, _, q in episode for _ in q]
                got = gallery.classify_batch(batch, mode=mode, threshold=-1.0)
                correct = [g[0] == t for g, t in zip(got, truth)]
                accs.append(float(np.mean(correct)))
                known = [g[1] for g, ok in zip(got, correct) if ok]
                known_scores += known
                unk = unknown if unknown_per_episode is None else unknown_per_episode[i]
                if unk is not None:
                    scores = [s for _, s in gallery.classify_batch(unk, mode=mode,
                                                                   threshold=-1.0)]
                    unknown_scores += scores
                    aurocs.append(auroc(np.array(known), np.array(scores)))
    return {"per_episode": np.array(accs), "known_scores": np.array(known_scores),
            "unknown_scores": np.array(unknown_scores), "per_episode_auroc": np.array(aurocs)}


def mean_ci95(values: np.ndarray) -> tuple[float, float]:
    """Mean and the half-width of its normal-approximation 95% confidence interval."""
    values = np.asarray(values, np.float64)
    if len(values) < 2:
        return float(values.mean()), 0.0
    return float(values.mean()), float(1.96 * values.std(ddof=1) / np.sqrt(len(values)))


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Probability that a known (correct) query outscores an unknown one (ties count half)."""
    if not len(positive) or not len(negative):
        return float("nan")
    order = np.argsort(np.concatenate([positive, negative]), kind="mergesort")
    ranks = np.empty(len(order))
    ranks[order] = np.arange(1, len(order) + 1)
    all_scores = np.concatenate([positive, negative])
    for value in np.unique(all_scores):  # average ranks of ties
        tie = all_scores == value
        ranks[tie] = ranks[tie].mean()
    n_pos = len(positive)
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * len(negative)))


def check_far(far: float) -> float:
    """``far`` as a false-accept rate strictly between 0 and 1, or a one-line error."""
    if not (math.isfinite(float(far)) and 0.0 < float(far) < 1.0):
        raise TledgeError(f"false-accept rate {far!r} must be a fraction in (0, 1), "
                          "e.g. 0.05 for 5% of impostors accepted")
    return float(far)


def threshold_for_far(unknown_scores: np.ndarray, far: float) -> float:
    """The lowest threshold that accepts at most ``far`` of the unknown scores."""
    check_far(far)
    if not len(unknown_scores):
        raise TledgeError("no unknown scores to set a threshold from")
    return float(np.quantile(unknown_scores, 1.0 - far, method="higher") + 1e-6)


def fewshot(model: Path, data: Path, episodes: Episodes, unknown: Path | None = None,
            far: float = 0.05, providers: str = "auto") -> dict:
    """Mean accuracy with a 95% interval; with ``unknown`` also AUROC and a threshold."""
    check_far(far)
    embedder = Embedder(model, providers=providers)
    vectors = embed_folder(embedder, data)
    plan = episodes.plan({c: len(v) for c, v in vectors.items()})
    unk = embed_unknown(embedder, unknown) if unknown else None
    res = run_episodes(embedder, vectors, plan, unk)
    acc, ci = mean_ci95(res["per_episode"])
    out = {"model": str(model), "data": str(data), "way": len(plan[0]), "shot": episodes.shot,
           "query": episodes.query, "episodes": episodes.episodes, "seed": episodes.seed,
           "accuracy": acc, "ci95": ci, "provider": embedder.provider}
    if unk is not None:
        thr = threshold_for_far(res["unknown_scores"], far)
        out.update({"auroc": auroc(res["known_scores"], res["unknown_scores"]), "far": far,
                    "threshold_at_far": thr,
                    "known_accepted_at_threshold": float((res["known_scores"] >= thr).mean())})
    return out


def compare(model_a: Path, model_b: Path, data: Path, episodes: Episodes,
            providers: str = "auto") -> dict:
    """Paired comparison on identical episodes: B minus A, with a 95% interval."""
    results = []
    for model in (model_a, model_b):
        embedder = Embedder(model, providers=providers)
        vectors = embed_folder(embedder, data)
        plan = episodes.plan({c: len(v) for c, v in vectors.items()})
        results.append(run_episodes(embedder, vectors, plan)["per_episode"])
    diff, diff_ci = mean_ci95(results[1] - results[0])
    (a, a_ci), (b, b_ci) = mean_ci95(results[0]), mean_ci95(results[1])
    return {"data": str(data), "way": len(plan[0]), "shot": episodes.shot, "query": episodes.query,
            "episodes": episodes.episodes, "seed": episodes.seed,
            "a": {"model": str(model_a), "accuracy": a, "ci95": a_ci},
            "b": {"model": str(model_b), "accuracy": b, "ci95": b_ci},
            "difference": diff, "difference_ci95": diff_ci,
            "accuracy": b, "ci95": b_ci}


def calibrate(gallery: Gallery, far: float = 0.05) -> dict:
    """A threshold from the gallery's own samples, leave-one-out.

    Each sample is scored against every class prototype rebuilt without it: its own class is
    a genuine score, the best other class an impostor score. The threshold accepts at most
    ``far`` of the impostors.
    """
    check_far(far)  # before the leave-one-out pass, not after it
    labels, vecs = gallery.vectors()
    labels = np.array(labels)
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise TledgeError("calibration needs at least two classes in the gallery")
    sums = {c: vecs[labels == c].sum(0) for c in classes}
    counts = {c: int((labels == c).sum()) for c in classes}
    genuine, impostor = [], []
    for v, lab in zip(vecs, labels):
        scores = {}
        for c in classes:
            s, n = (sums[c] - v, counts[c] - 1) if c == lab else (sums[c], counts[c])
            if n:
                scores[c] = float(v @ (s / np.linalg.norm(s)))
        if lab in scores:
            genuine.append(scores.pop(lab))
        impostor.append(max(scores.values()))
    thr = threshold_for_far(np.array(impostor), far)
    return {"threshold": thr, "far": far, "samples": len(vecs),
            "genuine_accepted": float(np.mean(np.array(genuine) >= thr)) if genuine else None,
            "auroc": auroc(np.array(genuine), np.array(impostor)) if genuine else None}


def classify(model: Path, data: Path, head: str | None = None,
             providers: str = "auto") -> dict:
    """Accuracy of one of the model's classification heads over DATA/<class>/*.jpg.

    Class folders are matched to the head's labels by name; a folder the head does not know
    is an error (it could never be right). One inference per image gives every head.
    """
    from tledge.errors import suggest

    embedder = Embedder(model, providers=providers)
    heads = {h.name: h for h in embedder.info.heads}
    if not heads:
        raise TledgeError(f"{model} has no classification head; export a run of `tledge adapt`, "
                          "`tledge multitask` or `tledge finetune --objective ce`")
    name = head or next(iter(heads))
    if name not in heads:
        raise TledgeError(f"the model has no head {name!r}; it has {sorted(heads)}."
                          + suggest(name, list(heads)))
    labels = heads[name].labels
    folders = class_folders(data)
    unknown = sorted(set(folders) - set(labels))
    if unknown:
        raise TledgeError(f"folders {unknown} are not labels of head {name!r} "
                          f"({', '.join(labels)})")
    per_class, correct, total = {}, 0, 0
    confusion = np.zeros((len(labels), len(labels)), np.int64)
    for label, files in tqdm(folders.items(), desc="classifying", disable=None, leave=False):
        probs = embedder.run(files).heads[name]
        pred = probs.argmax(1)
        truth = labels.index(label)
        np.add.at(confusion, (truth, pred), 1)
        hits = int((pred == truth).sum())
        per_class[label] = {"accuracy": hits / len(files), "images": len(files)}
        correct, total = correct + hits, total + len(files)
    return {"model": str(model), "data": str(data), "head": name, "labels": list(labels),
            "accuracy": correct / max(1, total), "images": total, "per_class": per_class,
            "confusion": confusion.tolist(), "provider": embedder.provider}
