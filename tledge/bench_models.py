"""``tledge bench MODEL...``: runtimes and precisions compared on the same images, one run.

Rows: ONNX Runtime for every model given (fp32, fp16, int8 ...), at each graph optimisation
level for the first; OpenCV's DNN module on the fp32 model (the file is portable: it must give
the same embedding); PyTorch eager on the fp32 model's backbone when torch is installed.
Timings are taken in turns of ten calls per row so that a noisy neighbour slows every row
alike while each row runs with its own weights in the CPU caches.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tledge.runtime.embedder import Embedder, l2_normalize
from tledge.runtime.images import load_image
from tledge.runtime.preprocess import preprocess_batch

LEVELS = ("all", "extended", "basic", "disable")  # ONNX Runtime's default first


@dataclass
class Row:
    name: str
    run: Callable[[np.ndarray], np.ndarray]  # (n, 3, H, W) -> (n, dim)
    size_mb: float | None = None
    memory_mb: float = 0.0
    times: list[float] = field(default_factory=list)
    cosine: float | None = None


def _rss_mb() -> float:
    try:
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) / 1024 for line in fh if line.startswith("VmRSS"))
    except (OSError, StopIteration):
        return float("nan")


def _session(path: Path, threads: int, level: str, providers: str):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[level]
    from tledge.runtime.providers import requested

    sess = ort.InferenceSession(str(path), opts, providers=requested(providers)[0])
    name = sess.get_inputs()[0].name
    return lambda x: sess.run([sess.get_outputs()[0].name], {name: x})[0]


def _measured(name: str, build: Callable[[], Callable], batch: np.ndarray,
              size: float | None) -> Row | None:
    before = _rss_mb()
    try:
        fn = build()
        fn(batch)
    except Exception as exc:  # a runtime that cannot load the file is a result, not a crash
        print(f"  {name}: could not run ({type(exc).__name__}: {str(exc)[:200]})")
        return None
    return Row(name, fn, size, max(0.0, _rss_mb() - before))


def compare_models(models: list[Path], images: list[np.ndarray], threads: int, batch: int,
                   repeats: int, providers: str = "cpu", torch_eager: bool = True,
                   levels: bool = True) -> list[dict]:
    """Latency p50/p95, throughput, memory, file size and cosine to the first model."""
    first = Embedder(models[0], providers="cpu")
    cfg = first.info.preprocess
    tensors = [preprocess_batch(images[i:i + batch], cfg)
               for i in range(0, len(images) - batch + 1, batch)]
    probe = tensors[0]
    rows: list[Row] = []
    for path in models:
        info = Embedder(path, providers="cpu").info
        levels_here = LEVELS if (levels and path == models[0]) else ("all",)
        for level in levels_here:
            suffix = "" if level == "all" else f", optimisation {level}"
            row = _measured(f"ONNX Runtime {info.precision} ({path.name}{suffix})",
                            lambda p=path, lv=level: _session(p, threads, lv, providers),
                            probe, path.stat().st_size / 1e6)
            rows += [row] if row else []
    rows += [r for r in [_opencv_row(models[0], probe, threads)] if r]
    reference = l2_normalize(rows[0].run(probe))
    for row in rows:
        row.cosine = float(np.mean(np.sum(l2_normalize(row.run(probe)) * reference, axis=1)))
    _interleave(rows, tensors, repeats)
    # PyTorch last and alone: its OpenMP workers keep spinning after each call and would
    # steal the cores from whatever ran next in an interleaved loop.
    torch_row = _torch_row(first, probe, threads) if torch_eager else None
    if torch_row is not None:
        torch_row.cosine = float(np.mean(np.sum(l2_normalize(torch_row.run(probe)) * reference,
                                                axis=1)))
        _interleave([torch_row], tensors, repeats)
        rows.append(torch_row)
    return [_summary(r, batch) for r in rows]


def _opencv_row(path: Path, probe: np.ndarray, threads: int) -> Row | None:
    def build():
        import cv2

        cv2.setNumThreads(threads)
        net = cv2.dnn.readNetFromONNX(str(path))

        def run(x: np.ndarray) -> np.ndarray:
            net.setInput(x)
            return net.forward()
        return run
    return _measured(f"OpenCV DNN fp32 ({path.name})", build, probe, path.stat().st_size / 1e6)


def _torch_row(embedder: Embedder, probe: np.ndarray, threads: int) -> Row | None:
    def build():
        import torch

        from tledge.train.backbones import get_backbone
        from tledge.train.model import EmbeddingModel

        torch.set_num_threads(threads)
        model = EmbeddingModel(get_backbone(embedder.info.backbone)[0]).eval()

        def run(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return model.embed(torch.from_numpy(x)).numpy()
        return run
    try:
        import torch  # noqa: F401
    except ImportError:
        print("  PyTorch eager: skipped (torch is not installed: the runtime-only extra)")
        return None
    return _measured(f"PyTorch eager fp32 ({embedder.info.backbone})", build, probe, None)


def _interleave(rows: list[Row], tensors: list[np.ndarray], repeats: int,
                block: int = 10) -> None:
    """Time ``repeats`` calls per row, in turns of ``block`` consecutive calls: a noisy
    neighbour hits every row alike, and each row runs with its own weights in the caches
    (call-by-call alternation would measure cache misses, not the model)."""
    done = 0
    while done < repeats:
        n = min(block, repeats - done)
        for row in rows:
            row.run(tensors[done % len(tensors)])  # untimed: bring this row's weights in
            for i in range(done, done + n):
                x = tensors[i % len(tensors)]
                start = time.perf_counter()
                row.run(x)
                row.times.append((time.perf_counter() - start) * 1000.0)
        done += n


def _summary(row: Row, batch: int) -> dict:
    t = np.array(row.times)
    return {"runtime": row.name, "p50_ms": float(np.median(t)),
            "p95_ms": float(np.percentile(t, 95)),
            "images_per_s": float(batch * 1000.0 / np.median(t)),
            "memory_mb": round(row.memory_mb, 1),
            "file_mb": round(row.size_mb, 2) if row.size_mb else None,
            "cosine_to_first": round(row.cosine, 5)}


def format_models(rows: list[dict], batch: int, threads: int) -> str:
    base = rows[0]["p50_ms"]
    lines = [f"batch {batch}, {threads} threads; speed-up relative to the first row",
             "| runtime | p50 | p95 | images/s | speed-up | memory | file | cosine to first |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['runtime']} | {r['p50_ms']:.2f} ms | {r['p95_ms']:.2f} ms | "
                     f"{r['images_per_s']:.0f} | {base / r['p50_ms']:.2f}x | "
                     f"+{r['memory_mb']:.0f} MB | "
                     f"{(str(r['file_mb']) + ' MB') if r['file_mb'] else '-'} | "
                     f"{r['cosine_to_first']:.4f} |")
    return "\n".join(lines)


def plot_models(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    names = [r["runtime"] for r in rows][::-1]
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(rows) + 1.2))
    ax.barh(names, [r["p50_ms"] for r in rows][::-1], color="#4f81bd")
    ax.errorbar([r["p50_ms"] for r in rows][::-1], names,
                xerr=[[0] * len(rows), [r["p95_ms"] - r["p50_ms"] for r in rows][::-1]],
                fmt="none", ecolor="#333333", capsize=3)
    ax.set(xlabel="latency per call, ms (bar: p50, whisker: p95)", title="tledge bench")
    ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def load_bench_images(count: int) -> list[np.ndarray]:
    from tledge.samples import query_dir

    return [load_image(p) for p in sorted(query_dir().rglob("*.jpg"))[:count]]
