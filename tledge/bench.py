"""``tledge bench``: speed figures measured in one run, reported as ratios.

Compared on the same real images, batch 1 and the same thread count: PyTorch eager vs ONNX
Runtime; frame -> label end to end vs bare inference; enrollment of one class; search time
against gallery size. Machines are shared and noisy: read the ratios, not single numbers.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tledge.runtime.embedder import Embedder
from tledge.runtime.gallery import Gallery
from tledge.runtime.gallery_index import VectorIndex
from tledge.runtime.images import load_image
from tledge.runtime.preprocess import preprocess_batch
from tledge.runtime.recognizer import Recognizer
from tledge.samples import enroll_dir, query_dir

SHARED_VIDEO = Path(__file__).resolve().parents[2] / "shared/data/video/bottle-detection.mp4"


def timed(fn: Callable[[], object], repeats: int, warmup: int = 3) -> np.ndarray:
    """Milliseconds per call over ``repeats`` calls, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000.0)
    return np.array(out)


def interleaved(fns: list[Callable[[], object]], repeats: int) -> list[np.ndarray]:
    """Milliseconds per call for each of ``fns``, calling them in turn ``repeats`` times."""
    for fn in fns:
        fn()
    out = [[] for _ in fns]
    for _ in range(repeats):
        for fn, times in zip(fns, out):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1000.0)
    return [np.array(t) for t in out]


def _stats(ms: np.ndarray) -> dict:
    return {"p50_ms": float(np.median(ms)), "p95_ms": float(np.percentile(ms, 95)),
            "mean_ms": float(ms.mean())}


def inference_vs_torch(model_path: Path, backbone: str, images: list[np.ndarray],
                       threads: int, repeats: int) -> dict:
    """Per-image (batch 1) inference: PyTorch eager vs ONNX Runtime on identical tensors."""
    import torch

    from tledge.train.backbones import get_backbone
    from tledge.train.model import EmbeddingModel

    embedder = Embedder(model_path, providers="cpu", threads=threads)
    batches = [preprocess_batch([im], embedder.info.preprocess) for im in images]
    torch.set_num_threads(threads)
    model = EmbeddingModel(get_backbone(backbone)[0]).eval()
    cycle = {"i": 0}

    def next_batch() -> np.ndarray:
        cycle["i"] = (cycle["i"] + 1) % len(batches)
        return batches[cycle["i"]]

    # ONNX Runtime first: PyTorch's OpenMP workers keep spinning after a run and would
    # steal the cores from whatever is timed next.
    ort_ms = timed(lambda: embedder.embed_tensor(next_batch()), repeats)
    with torch.inference_mode():
        torch_ms = timed(lambda: model.embed(torch.from_numpy(next_batch())), repeats)
    return {"torch_eager": _stats(torch_ms), "onnxruntime": _stats(ort_ms),
            "speedup_ort_vs_torch": float(np.median(torch_ms) / np.median(ort_ms)),
            "provider": embedder.provider, "threads": threads}


def end_to_end(embedder: Embedder, gallery: Gallery, frames: list[np.ndarray],
               repeats: int) -> dict:
    """Frame -> label (preprocess + inference + match) vs the bare session call."""
    recognizer = Recognizer(embedder, gallery)
    cfg = embedder.info.preprocess
    tensors = [preprocess_batch([f], cfg) for f in frames]
    i = {"f": 0, "t": 0}

    def frame():
        i["f"] = (i["f"] + 1) % len(frames)
        return frames[i["f"]]

    def tensor():
        i["t"] = (i["t"] + 1) % len(tensors)
        return tensors[i["t"]]

    # Interleaved, so that a noisy neighbour slows both sides alike.
    bare, full = interleaved([lambda: embedder.embed_tensor(tensor()),
                              lambda: recognizer.recognize(frame())], repeats)
    h, w = frames[0].shape[:2]
    return {"bare_inference": _stats(bare), "frame_to_label": _stats(full),
            "overhead": float(np.median(full) / np.median(bare) - 1.0), "frame_size": f"{w}x{h}"}


def enrollment(embedder: Embedder, workdir: Path, repeats: int = 5) -> dict:
    """Seconds to enroll one class of 3 real images into a fresh gallery (embedding included)."""
    files = sorted(next(p for p in enroll_dir().iterdir() if p.is_dir()).glob("*.jpg"))
    path = workdir / "bench-gallery"
    ms = []
    import shutil

    for n in range(repeats):
        shutil.rmtree(path, ignore_errors=True)
        with Gallery.create(path, embedder) as gallery:
            start = time.perf_counter()
            gallery.enroll(f"class {n}", files)
            ms.append((time.perf_counter() - start) * 1000.0)
    shutil.rmtree(path, ignore_errors=True)
    return {"images": len(files), **_stats(np.array(ms))}


def search_scaling(dim: int, sizes: list[int], queries: int = 200,
                   classes: int = 1000) -> list[dict]:
    """Per-query search time against synthetic galleries of ``sizes`` unit vectors."""
    rng = np.random.default_rng(0)
    rows = []
    for n in sizes:
        vecs = rng.standard_normal((n, dim), dtype=np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        index = VectorIndex.build(0, np.arange(n), rng.integers(0, classes, n), vecs)
        noise = 0.05 * rng.standard_normal((queries, dim), dtype=np.float32)
        picked = vecs[rng.integers(0, n, queries)] + noise
        rows.append({"vectors": n, **_time_queries(index, picked)})
    return rows


def _time_queries(index: VectorIndex, queries: np.ndarray) -> dict:
    protos = index.prototypes()
    rows = iter(np.tile(queries, (4, 1)))  # a different query each call, never a cached one

    def nearest():
        return index.search(next(rows)[None, :], 5)

    def prototype():
        return (next(rows)[None, :] @ protos.T).argmax()

    return {"nearest_k5": _stats(timed(nearest, 50)), "prototype": _stats(timed(prototype, 50))}


def run_bench(args) -> dict:
    from tledge.demo import ensure_model

    model = args.model or ensure_model(args.workdir, args.backbone, print)
    images = [load_image(p) for p in sorted(query_dir().rglob("*.jpg"))[:20]]
    result = {"inference": inference_vs_torch(model, args.backbone, images, args.threads,
                                               args.repeats)}
    embedder = Embedder(model, providers="cpu", threads=args.threads)
    result["enroll_one_class"] = enrollment(embedder, args.workdir)
    frames = _video_frames(args.video or SHARED_VIDEO, 20) or images
    gallery_path = args.workdir / "bench-e2e"
    import shutil

    shutil.rmtree(gallery_path, ignore_errors=True)
    with Gallery.create(gallery_path, embedder) as gallery:
        for label_dir in sorted(p for p in enroll_dir().iterdir() if p.is_dir()):
            gallery.enroll(label_dir.name, sorted(label_dir.glob("*.jpg")))
        result["end_to_end"] = end_to_end(embedder, gallery, frames, args.repeats)
    shutil.rmtree(gallery_path, ignore_errors=True)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    result["search"] = search_scaling(embedder.dim, sizes)
    print(json.dumps(result, indent=2) if args.json else format_bench(result))
    return result


def _video_frames(path: Path, count: int) -> list[np.ndarray]:
    if not path.is_file():
        return []
    from tledge.runtime.sources import open_source

    with open_source(path) as source:
        return [f.image for f, _ in zip(source, range(count * 10))][::10]


def format_bench(r: dict) -> str:
    inf, e2e, enr = r["inference"], r["end_to_end"], r["enroll_one_class"]
    lines = [
        f"Per-image inference, batch 1, {inf['threads']} threads ({inf['provider']}):",
        f"  PyTorch eager   p50 {inf['torch_eager']['p50_ms']:7.2f} ms   p95 "
        f"{inf['torch_eager']['p95_ms']:7.2f} ms",
        f"  ONNX Runtime    p50 {inf['onnxruntime']['p50_ms']:7.2f} ms   p95 "
        f"{inf['onnxruntime']['p95_ms']:7.2f} ms",
        f"  ONNX Runtime is {inf['speedup_ort_vs_torch']:.2f}x faster than PyTorch eager",
        f"Frame ({e2e['frame_size']}) -> label vs bare inference:",
        f"  bare inference  p50 {e2e['bare_inference']['p50_ms']:7.2f} ms",
        f"  frame -> label  p50 {e2e['frame_to_label']['p50_ms']:7.2f} ms   "
        f"(+{e2e['overhead']:.0%} for decode-free preprocessing and matching)",
        f"Enroll one class ({enr['images']} images): p50 {enr['p50_ms']:.1f} ms",
        "Search per query (synthetic unit vectors, exact):",
    ]
    for row in r["search"]:
        lines.append(f"  {row['vectors']:>8} vectors: nearest k=5 "
                     f"{row['nearest_k5']['p50_ms']:7.3f} ms   "
                     f"prototype {row['prototype']['p50_ms']:7.3f} ms")
    return "\n".join(lines)
