"""CLI subcommands for model files: export (fp32, fp16, int8), quantize, bench."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tledge.cli_types import cosine, int_range, positive_float, positive_int, probability
from tledge.errors import TledgeError

NON_NEGATIVE_INT = int_range(0)
MAX_GALLERY_SIZE = 10_000_000   # synthetic vectors held in memory: ~20 GB at 512-d


def gallery_sizes(text: str) -> str:
    """``--sizes``: comma-separated gallery sizes (1e5 style allowed), each >= 1.

    Returned as plain comma-separated integers, the form ``tledge.bench`` reads."""
    sizes = []
    for part in (s.strip() for s in text.split(",") if s.strip()):
        try:
            value = float(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part!r} is not a number") from None
        if not (value.is_integer() and 1 <= value <= MAX_GALLERY_SIZE):
            raise argparse.ArgumentTypeError(
                f"{part} is out of range: each size must be a whole number between 1 and "
                f"{MAX_GALLERY_SIZE:,}")
        sizes.append(int(value))
    if not sizes:
        raise argparse.ArgumentTypeError("give at least one size, e.g. 1000,10000")
    return ",".join(str(size) for size in sizes)


gallery_sizes.__name__ = "sizes"


def cmd_export(args) -> int:
    from tledge.train.export import (
        ExportOptions,
        checkpoint_model,
        export_embedding_model,
        pretrained_model,
    )

    opts = ExportOptions(backbone=args.backbone, weights=args.weights,
                         allow_download=args.allow_download, parity_images=args.parity_images,
                         threshold=args.threshold)
    quant = _quantize_options(args) if args.precision != "fp32" else None
    if args.precision == "int8":
        from tledge.train.quantize import calibration_files

        calibration_files(quant)  # no images: say so before the fp32 export, not after
    # A reduced export starts from a verified fp32 file next to the output (kept: it is the
    # reference the gate compares with, and what `tledge gallery reembed` may go back to).
    fp32_out = args.output.with_name(args.output.stem + ".fp32.onnx") if quant else args.output
    model, info = (checkpoint_model(args.checkpoint, opts, not args.no_centering)
                   if args.checkpoint else pretrained_model(opts))
    report = export_embedding_model(model, info, fp32_out, opts)
    print(f"wrote {report.path} ({report.size_bytes / 1e6:.1f} MB): {report.info.describe()}")
    print(f"parity PyTorch vs ONNX Runtime on {report.parity_images} images: "
          f"min cosine {report.min_cosine:.6f}, mean {report.mean_cosine:.6f}")
    if quant and args.precision == "int8" and args.qat_steps > 0:
        return _distil_int8(model, report.info, fp32_out, args, quant, opts)
    if quant:
        return _reduce(fp32_out, args.output, quant)
    return 0


def _distil_int8(model, info, fp32_out: Path, args, quant, opts) -> int:
    from tqdm import tqdm

    from tledge.train.qat import QATOptions, export_int8

    qat = QATOptions(steps=args.qat_steps, batch=args.qat_batch, lr=args.qat_lr,
                     images=args.qat_images)
    with tqdm(total=qat.steps, desc="int8-aware distillation", unit="step", file=sys.stderr,
              disable=None) as bar:
        def progress(step: int, cos: float) -> None:
            bar.update(step - bar.n)
            bar.set_postfix_str(f"simulated int8 cosine to fp32 {cos:.4f}")
            if bar.disable and (step % 25 == 0 or step == qat.steps):  # a log, not a TTY
                print(f"int8-aware distillation: step {step}/{qat.steps}, simulated int8 "
                      f"cosine to fp32 {cos:.4f}", file=sys.stderr, flush=True)

        r = export_int8(model, info, fp32_out, args.output, quant, qat, opts, progress)
    _print_gate(args.output, quant, r)
    return 0


def _quantize_options(args):
    from tledge.train.gate import GateOptions
    from tledge.train.quantize import QuantizeOptions

    gate = GateOptions(images=args.gate_images, min_mean_cosine=args.min_cosine_gate,
                       min_top1_agreement=args.min_agreement, force=args.force)
    return QuantizeOptions(precision=args.precision, calib=args.calib,
                           calib_limit=args.calib_limit, method=args.calib_method,
                           float_first=args.float_first, float_last=args.float_last,
                           keep_float=tuple(args.keep_float or ()), gate=gate)


def _reduce(fp32_model: Path, output: Path, options) -> int:
    from tledge.train.quantize import reduce_precision

    _print_gate(output, options, reduce_precision(fp32_model, output, options))
    return 0


def _print_gate(output: Path, options, r: dict) -> None:
    print(f"wrote {output} ({output.stat().st_size / 1e6:.1f} MB, {options.precision})")
    print(f"gate on {r['images']} images: mean cosine {r['mean_cosine']:.4f}, min "
          f"{r['min_cosine']:.4f}, nearest-neighbour top-1 agreement {r['top1_agreement']:.1%}"
          + (f", 5-way 1-shot {r['fewshot_fp32']:.1%} -> {r['fewshot_reduced']:.1%}"
             if "fewshot_change" in r else "")
          + ("" if r["passed"] else "  [FAILED, kept because of --force]"))


def cmd_quantize(args) -> int:
    return _reduce(args.model, args.output, _quantize_options(args))


def _precision_args(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"), default=default)
    p.add_argument("--calib", type=Path, help="int8: calibration images (default: the samples)")
    p.add_argument("--calib-limit", type=positive_int, default=200,
                   help="int8: images used at most")
    p.add_argument("--calib-method", choices=("minmax", "percentile", "entropy"),
                   default="minmax")
    p.add_argument("--float-first", type=NON_NEGATIVE_INT, default=1,
                   help="int8: convolutions kept in float at the input (default 1)")
    p.add_argument("--float-last", type=NON_NEGATIVE_INT, default=1,
                   help="int8: convolutions kept in float at the output (default 1)")
    p.add_argument("--keep-float", action="append", metavar="NODE",
                   help="int8: another graph node to keep in float (repeatable)")
    p.add_argument("--gate-images", type=Path,
                   help="class folders for the accuracy gate (default: the samples)")
    p.add_argument("--min-cosine-gate", type=cosine, default=0.98,
                   help="gate: least mean cosine to fp32 (default 0.98)")
    p.add_argument("--min-agreement", type=probability, default=0.98,
                   help="gate: least nearest-neighbour top-1 agreement (default 0.98)")
    p.add_argument("--force", action="store_true", help="write the model even if the gate fails")


def cmd_bench(args) -> int:
    if args.gallery:
        return _bench_gallery(args)
    if args.models:
        return _bench_models(args)
    from tledge.bench import run_bench

    run_bench(args)
    return 0


def _bench_models(args) -> int:
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


def _bench_gallery(args) -> int:
    from tledge import bench_gallery as G
    from tledge.runtime import Embedder
    from tledge.runtime.images import list_images

    if not args.models:
        raise TledgeError("bench --gallery needs a MODEL for the real embeddings")
    embedder = Embedder(args.models[0], providers=args.providers, threads=args.threads)
    folders = args.real or [Path(__file__).parent / "samples"]
    files = [f for folder in folders for f in list_images(folder)]
    from tqdm import tqdm

    with tqdm(total=len(files), desc="embedding", unit="img", file=sys.stderr,
              disable=None, leave=False) as bar:
        real = embedder.embed(files, progress=bar.update)
    import faiss

    faiss.omp_set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = G.gallery_scaling(real, sizes, progress=lambda r: print(
        f"  {r['size']:,}: {r['index']}, p50 {r['p50_ms']:.2f} ms, recall@1 "
        f"{r['recall_at_1']:.3f}", file=sys.stderr))
    print(json.dumps(rows, indent=2) if args.json else G.format_gallery(rows))
    return 0


def add_export_parsers(sub) -> None:
    p = sub.add_parser("export", help="export a backbone as a self-describing ONNX model")
    p.add_argument("--backbone", default="mobilenet_v2")
    p.add_argument("--output", "-o", type=Path, required=True)
    p.add_argument("--weights", help="a .pth state dict to use instead of the published one")
    p.add_argument("--allow-download", action="store_true",
                   help="let torchvision download weights that are not available offline")
    p.add_argument("--parity-images", type=Path, help="folder of images for the parity check")
    p.add_argument("--threshold", type=cosine,
                   help="default open-set threshold to record (a cosine in [-1, 1])")
    p.add_argument("--checkpoint", type=Path, help="a `tledge finetune` run directory to export")
    p.add_argument("--no-centering", action="store_true",
                   help="with --checkpoint: plain L2 normalisation instead of CL2N centring")
    _precision_args(p, "fp32")
    p.add_argument("--qat-steps", type=NON_NEGATIVE_INT, default=200,
                   help="int8: steps of int8-aware distillation before quantising (0: "
                        "post-training quantisation only; default 200, ~8 min on 2 CPU cores)")
    p.add_argument("--qat-batch", type=positive_int, default=16, help="int8: images per step")
    p.add_argument("--qat-lr", type=positive_float, default=2e-5,
                   help="int8: distillation learning rate")
    p.add_argument("--qat-images", type=positive_int, default=1000,
                   help="int8: calibration-folder images the distillation draws from")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("quantize", help="an int8 or fp16 copy of an exported fp32 model, "
                                        "behind an accuracy gate")
    p.add_argument("model", type=Path, help="the fp32 .onnx model")
    p.add_argument("--output", "-o", type=Path, required=True)
    _precision_args(p, "int8")
    p.set_defaults(func=cmd_quantize)


def add_bench_parser(sub) -> None:
    p = sub.add_parser("bench", help="benchmark: ONNX Runtime vs PyTorch, end to end, search; "
                       "MODEL...: runtimes and precisions; --gallery: search by size")
    p.add_argument("models", nargs="*", type=Path,
                   help="models to compare (fp32 first), e.g. m.onnx m_fp16.onnx m_int8.onnx")
    p.add_argument("--batch", type=positive_int, default=1, help="MODEL...: images per call")
    p.add_argument("--providers", default="cpu", help="MODEL...: ONNX Runtime providers")
    p.add_argument("--no-torch", action="store_true", help="MODEL...: skip PyTorch eager")
    p.add_argument("--plot", type=Path, help="MODEL...: write a latency chart (PNG)")
    p.add_argument("--gallery", action="store_true",
                   help="search latency and recall@1 vs exact at --sizes (with MODEL)")
    p.add_argument("--real", type=Path, action="append",
                   help="--gallery: folders of real images to embed (default: the samples)")
    p.add_argument("--backbone", default="mobilenet_v2")
    p.add_argument("--model", type=Path, help="exported model (default: export to --workdir)")
    p.add_argument("--workdir", type=Path, default=Path("tledge-demo"))
    p.add_argument("--threads", type=positive_int, default=2)
    p.add_argument("--repeats", type=positive_int, default=30)
    p.add_argument("--sizes", type=gallery_sizes, default="1000,10000,100000",
                   help="gallery sizes for search")
    p.add_argument("--video", type=Path, help="frames for frame->label (default: the shared "
                   "bottle video when present, else the sample images)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench)
