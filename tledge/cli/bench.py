"""``tledge bench``: ONNX Runtime vs PyTorch, end to end, precisions, search by gallery size."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tledge.cli import common
from tledge.cli.types import examples, gallery_sizes, positive_int, threads
from tledge.errors import TledgeError


def cmd_bench(args: argparse.Namespace) -> int:
    if args.gallery:
        return _bench_gallery(args)
    if args.models:
        return _bench_models(args)
    from tledge.bench import run_bench

    run_bench(args)
    return 0


def _bench_models(args: argparse.Namespace) -> int:
    from tledge import bench_models as B

    images = B.load_bench_images(max(20, args.batch * 4))
    rows = B.compare_models(args.models, images, args.threads, args.batch, args.repeats,
                            args.providers, torch_eager=not args.no_torch)
    print(json.dumps(rows, indent=2) if args.json else B.format_models(rows, args.batch,
                                                                      args.threads))
    if args.plot:
        B.plot_models(rows, args.plot)
        print(f"chart: {args.plot}", file=sys.stderr)
    return 0


def _bench_gallery(args: argparse.Namespace) -> int:
    from tledge import bench_gallery as G
    from tledge.runtime import Embedder
    from tledge.runtime.images import list_images
    from tledge.samples import sample_root

    if not args.models:
        raise TledgeError("bench --gallery needs a MODEL for the real embeddings")
    embedder = Embedder(args.models[0], providers=args.providers, threads=args.threads)
    folders = args.real or [sample_root()]
    files = [f for folder in folders for f in list_images(folder)]
    with common.progress(len(files), "embedding") as bar:
        real = embedder.embed(files, progress=bar.update)
    import faiss

    faiss.omp_set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = G.gallery_scaling(real, sizes, progress=lambda r: print(
        f"  {r['size']:,}: {r['index']}, p50 {r['p50_ms']:.2f} ms, recall@1 "
        f"{r['recall_at_1']:.3f}", file=sys.stderr))
    print(json.dumps(rows, indent=2) if args.json else G.format_gallery(rows))
    return 0


def add_parser(sub, model_args) -> None:
    p = sub.add_parser(
        "bench", help="benchmark: ONNX Runtime vs PyTorch, end to end, search; MODEL...: "
                      "runtimes and precisions; --gallery: search by size",
        description="Without MODEL: inference, enrollment, frame-to-label and search timings "
                    "of one backbone. With MODEL...: each model's latency and agreement with "
                    "the first. With --gallery: search latency and recall by gallery size.",
        epilog=examples("tledge bench --threads 2",
                        "tledge bench m.onnx m_fp16.onnx m_int8.onnx --plot latency.png",
                        "tledge bench --gallery m.onnx --sizes 1e4,1e5"))
    p.add_argument("models", nargs="*", type=Path,
                   help="models to compare (fp32 first), e.g. m.onnx m_fp16.onnx m_int8.onnx "
                        "(default: none, the single-backbone benchmark)")
    p.add_argument("--batch", type=positive_int, default=1, help="MODEL...: images per call")
    p.add_argument("--providers", default="cpu",
                   help="MODEL... and --gallery: ONNX Runtime providers (cpu, cuda or auto)")
    p.add_argument("--no-torch", action="store_true",
                   help="MODEL...: skip PyTorch eager (without it: timed too, when installed)")
    p.add_argument("--plot", type=Path,
                   help="MODEL...: write a latency chart (PNG) here (default: no chart)")
    p.add_argument("--gallery", action="store_true",
                   help="search latency and recall@1 vs exact at --sizes, with real embeddings "
                        "from MODEL (without it: the model benchmarks)")
    p.add_argument("--real", type=Path, action="append",
                   help="--gallery: folders of real images to embed, repeatable (default: the "
                        "shipped samples)")
    p.add_argument("--backbone", default="mobilenet_v2",
                   help="without MODEL: the backbone to export and time")
    p.add_argument("--model", type=Path,
                   help="without MODEL: an exported model to time (default: export --backbone "
                        "into --workdir)")
    p.add_argument("--workdir", type=Path, default=Path("tledge-demo"),
                   help="where the exported model and scratch galleries go")
    p.add_argument("--threads", type=threads, default=2,
                   help="CPU threads for inference and search")
    p.add_argument("--repeats", type=positive_int, default=30, help="timed runs per figure")
    p.add_argument("--sizes", type=gallery_sizes, default="1000,10000,100000",
                   help="gallery sizes for search, comma-separated (1e5 style allowed)")
    p.add_argument("--video", type=Path,
                   help="frames for frame->label (default: the shared bottle video when "
                        "present, else the sample images)")
    p.add_argument("--json", action="store_true",
                   help="print JSON (without it: a readable table)")
    p.set_defaults(func=cmd_bench)
