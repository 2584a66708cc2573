"""``tledge bench --gallery``: search latency and recall@1 of the gallery's index by size.

Real embeddings give the structure: half of them are queries, the other half seed the
gallery, which is filled up to each size with synthetic neighbours of those seeds (a seed
plus Gaussian noise, cosine ~0.9 to it), so that the index meets embedding-like clusters
rather than uniform noise. Recall@1 is the share of queries whose top-1 sample is the
exact search's top-1 (numpy brute force); latency is one query at a time, like live use.
"""

from __future__ import annotations

import time

import numpy as np

from tledge.runtime.gallery_index import APPROX_FROM, build_faiss, index_kind, search_faiss

NOISE = 0.5  # per-vector Gaussian noise of norm ~0.5 around a unit seed: cosine ~0.9


def synthetic_gallery(seeds: np.ndarray, size: int, seed: int = 0,
                      chunk: int = 100_000) -> np.ndarray:
    """(size, dim) unit vectors: the seeds first, then noisy copies of random seeds."""
    rng = np.random.default_rng(seed)
    n, dim = seeds.shape
    out = np.empty((size, dim), np.float32)
    out[:min(n, size)] = seeds[:size]
    for start in range(n, size, chunk):
        stop = min(size, start + chunk)
        x = seeds[rng.integers(0, n, stop - start)]
        x = x + rng.normal(scale=NOISE / np.sqrt(dim), size=x.shape).astype(np.float32)
        out[start:stop] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def exact_top1(gallery: np.ndarray, queries: np.ndarray, chunk: int = 200_000) -> np.ndarray:
    """(q,) row of the best inner product per query, brute force in chunks."""
    best = np.full(len(queries), -np.inf, np.float32)
    arg = np.zeros(len(queries), np.int64)
    for start in range(0, len(gallery), chunk):
        sims = queries @ gallery[start:start + chunk].T
        top = sims.argmax(1)
        val = sims[np.arange(len(queries)), top]
        better = val > best
        best[better], arg[better] = val[better], top[better] + start
    return arg


def gallery_scaling(real: np.ndarray, sizes: list[int], queries: int = 300,
                    approx_from: int = APPROX_FROM, timed_queries: int = 200,
                    progress=None) -> list[dict]:
    """Per size: index kind, build seconds, search p50/p95 ms, recall@1 vs exact."""
    rng = np.random.default_rng(0)
    order = rng.permutation(len(real))
    n_q = min(queries, len(real) // 2)
    q = np.ascontiguousarray(real[order[:n_q]], np.float32)
    seeds = np.ascontiguousarray(real[order[n_q:]], np.float32)
    rows = []
    for size in sizes:
        data = synthetic_gallery(seeds, size)
        t0 = time.perf_counter()
        index = build_faiss(data, approx_from)
        build_s = time.perf_counter() - t0
        truth = exact_top1(data, q)
        _, got = search_faiss(index, q, 1)
        times = []
        for i in range(min(timed_queries, n_q)):
            start = time.perf_counter()
            search_faiss(index, q[i:i + 1], 1)
            times.append((time.perf_counter() - start) * 1000.0)
        row = {"size": size, "index": index_kind(index), "build_s": round(build_s, 2),
               "p50_ms": float(np.median(times)), "p95_ms": float(np.percentile(times, 95)),
               "recall_at_1": float((got[:, 0] == truth).mean()), "queries": n_q}
        rows.append(row)
        if progress:
            progress(row)
        del data, index
    return rows


def format_gallery(rows: list[dict]) -> str:
    lines = ["| gallery size | index | build | search p50 / p95 (1 query) | recall@1 vs exact |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['size']:,} | {r['index']} | {r['build_s']:.1f} s | "
                     f"{r['p50_ms']:.2f} / {r['p95_ms']:.2f} ms | {r['recall_at_1']:.3f} |")
    return "\n".join(lines)
