"""Galleries that grow: the index switches from exact to IVF and stays consistent with exact
search (numpy brute force); enrollment into a large gallery does not rebuild it."""

from __future__ import annotations

import numpy as np
import pytest

from tledge.runtime import Gallery
from tledge.runtime.gallery import CACHE_NAME
from tledge.runtime.gallery_cache import CacheKey, load_cache
from tledge.runtime.gallery_index import VectorIndex, build_faiss, ivf_lists, search_faiss


def clustered(n: int, dim: int, centers: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around ``centers`` random directions, like embeddings of ``centers``
    classes: (vectors (n, dim), class of each)."""
    rng = np.random.default_rng(seed)
    mu = rng.normal(size=(centers, dim))
    cls = rng.integers(0, centers, n)
    x = mu[cls] + rng.normal(scale=0.3, size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), cls


def test_ivf_lists_grow_with_the_square_root():
    assert ivf_lists(1000) == 64 and ivf_lists(100_000) == 512 and ivf_lists(1_000_000) == 2048


def test_small_is_exact_large_is_ivf_and_agrees_with_brute_force():
    both, both_cls = clustered(6300, 32, 40, seed=0)
    x, q, cls = both[:6000], both[6000:], both_cls[:6000]  # queries: new cluster members
    exact = build_faiss(x, approx_from=10_000)
    assert type(exact).__name__ == "IndexFlatIP"
    ivf = build_faiss(x, approx_from=5000)
    assert type(ivf).__name__ == "IndexIVFScalarQuantizer" and 1 <= ivf.nprobe <= ivf.nlist
    truth = (q @ x.T).argmax(1)
    _, got_exact = exact.search(q, 1)
    _, got_ivf = ivf.search(q, 1)
    assert (got_exact[:, 0] == truth).all()
    # approximate: most queries find the very same nearest sample, nearly all the same class
    assert (got_ivf[:, 0] == truth).mean() >= 0.9
    assert (cls[got_ivf[:, 0]] == cls[truth]).mean() >= 0.97
    # one live query at a time (threads over the inverted lists) answers as the batch does
    single = np.concatenate([search_faiss(ivf, q[i:i + 1], 3)[1] for i in range(40)])
    assert ivf.parallel_mode == 1
    np.testing.assert_array_equal(single, search_faiss(ivf, q[:40], 3)[1])
    assert ivf.parallel_mode == 0


def test_gallery_switches_index_by_size_and_keeps_answers(tmp_path, embedder):
    dim = embedder.dim
    both, both_cls = clustered(3200, dim, 30, seed=2)
    x, cls, q = both[:3000], both_cls[:3000], both[3000:]
    g = Gallery.create(tmp_path / "g", embedder)
    g.approx_from = 2000
    for c in range(30):  # each class added without a rebuild while the index is exact
        g.enroll_vectors(f"class {c}", x[cls == c])
        assert g._current().kind == ("exact" if (cls < c + 1).sum() < 2000 else
                                     g._current().kind)
    index = g._current()
    assert index.kind.startswith("ivf") and index.size == 3000
    names, vecs = g.vectors()
    truth = np.array(names)[(q @ vecs.T).argmax(1)]
    near = [lab for lab, _ in g.best_matches(q, "nearest")]
    assert np.mean(np.array(near) == truth) >= 0.95
    protos = [lab for lab, _ in g.best_matches(q, "prototype")]  # prototypes stay exact
    means = {lab: vecs[np.array(names) == lab].mean(0) for lab in set(names)}
    labels = sorted(means)
    p = np.stack([means[lab] / np.linalg.norm(means[lab]) for lab in labels])
    assert protos == [labels[i] for i in (q @ p.T).argmax(1)]
    # a new class goes into the trained IVF: same object, no re-training
    g.enroll_vectors("late", x[:5])
    assert g._current() is index and index.size == 3005
    g.close()
    with Gallery.open(tmp_path / "g", embedder) as again:
        snap = again.store.snapshot(dim)
        cached = load_cache(tmp_path / "g" / CACHE_NAME, CacheKey(snap.gallery_id, snap.content),
                            snap.sample_ids, snap.class_ids, dim)
        assert cached is not None and cached.kind == index.kind
        assert [lab for lab, _ in again.best_matches(q, "nearest")] == near


def test_ivf_is_retrained_after_the_gallery_quadruples():
    x, cls = clustered(400, 16, 5, seed=4)
    idx = VectorIndex.build(1, np.arange(400), cls, x, approx_from=100)
    assert idx.kind.startswith("ivf") and not idx.needs_rebuild(100)
    more, _ = clustered(1300, 16, 5, seed=5)
    idx.add(2, np.arange(400, 1700), 0, more)
    assert idx.needs_rebuild(100)


def test_approx_from_must_be_positive(tmp_path, embedder):
    from tledge.errors import GalleryError

    with Gallery.create(tmp_path / "g", embedder) as g, pytest.raises(GalleryError):
        g.approx_from = 0


def test_gallery_bench_reports_recall_against_exact(embedder, sample_files):
    from tledge.bench_gallery import exact_top1, gallery_scaling, synthetic_gallery

    real = embedder.embed([f for fs in sample_files.values() for f in fs])
    grown = synthetic_gallery(real, 500)
    assert grown.shape == (500, embedder.dim)
    np.testing.assert_allclose(np.linalg.norm(grown, axis=1), 1.0, atol=1e-5)
    assert (exact_top1(grown, real, chunk=64) == exact_top1(grown, real)).all()
    rows = gallery_scaling(real, [300, 3000], queries=12, approx_from=1000, timed_queries=5)
    assert rows[0]["index"] == "exact" and rows[0]["recall_at_1"] == 1.0
    assert rows[1]["index"].startswith("ivf") and 0.5 <= rows[1]["recall_at_1"] <= 1.0
    assert all(r["p50_ms"] > 0 for r in rows)


def test_bench_compares_models_with_opencv_and_precisions(tiny_model, tmp_path, capsys):
    from tledge.cli import main
    from tledge.train.gate import GateOptions
    from tledge.train.quantize import QuantizeOptions, reduce_precision

    half = tmp_path / "tiny_fp16.onnx"
    reduce_precision(tiny_model, half, QuantizeOptions(precision="fp16",
                                                       gate=GateOptions(episodes=10)))
    chart = tmp_path / "bench.png"
    assert main(["bench", str(tiny_model), str(half), "--repeats", "5", "--threads", "1",
                 "--json", "--plot", str(chart)]) == 0
    rows = __import__("json").loads(capsys.readouterr().out)
    names = [r["runtime"] for r in rows]
    assert any(n.startswith("OpenCV DNN") for n in names)
    assert any("fp16" in n for n in names) and any("optimisation disable" in n for n in names)
    assert any(n.startswith("PyTorch eager") for n in names)
    assert all(r["cosine_to_first"] > 0.999 for r in rows)
    assert chart.stat().st_size > 1000
