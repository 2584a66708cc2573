"""The ``tledge`` command. Thin: each subcommand parses arguments and calls the library.

Exit codes: 0 success, 1 an error (one line; traceback with --debug), 2 a usage error.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from tqdm import tqdm

from tledge import __version__
from tledge.errors import TledgeError

log = logging.getLogger("tledge")


def _model_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--model", "-m", type=Path, required=required, help="exported .onnx model")
    p.add_argument("--providers", default="auto", help="auto (default), cpu or cuda")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")


def _embedder(args):
    from tledge.runtime import Embedder

    return Embedder(args.model, providers=args.providers, threads=args.threads)


def _progress(total: int, desc: str) -> tqdm:
    return tqdm(total=total, desc=desc, unit="img", file=sys.stderr, disable=None, leave=False)


# -- subcommands ---------------------------------------------------------------------------

def cmd_backbones(args) -> int:
    from tledge.train.backbones import get_spec, list_backbones

    for name in list_backbones():
        spec = get_spec(name)
        print(f"{name:20} {spec.dim:5}-d  {spec.preprocess.crop_size}px  {spec.summary}")
    print("\nAny torchvision classification model name also works (weights from the torch hub "
          "cache, or --allow-download).")
    return 0


def cmd_export(args) -> int:
    from tledge.train.export import ExportOptions, export_checkpoint, export_model

    opts = ExportOptions(backbone=args.backbone, weights=args.weights,
                         allow_download=args.allow_download, parity_images=args.parity_images,
                         threshold=args.threshold)
    quant = _quantize_options(args) if args.precision != "fp32" else None
    # A reduced export starts from a verified fp32 file next to the output (kept: it is the
    # reference the gate compares with, and what `tledge gallery reembed` may go back to).
    fp32_out = args.output.with_name(args.output.stem + ".fp32.onnx") if quant else args.output
    if args.checkpoint:
        report = export_checkpoint(args.checkpoint, fp32_out, opts, not args.no_centering)
    else:
        report = export_model(fp32_out, opts)
    print(f"wrote {report.path} ({report.size_bytes / 1e6:.1f} MB): {report.info.describe()}")
    print(f"parity PyTorch vs ONNX Runtime on {report.parity_images} images: "
          f"min cosine {report.min_cosine:.6f}, mean {report.mean_cosine:.6f}")
    if quant:
        return _reduce(fp32_out, args.output, quant)
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

    r = reduce_precision(fp32_model, output, options)
    print(f"wrote {output} ({output.stat().st_size / 1e6:.1f} MB, {options.precision})")
    print(f"gate on {r['images']} images: mean cosine {r['mean_cosine']:.4f}, min "
          f"{r['min_cosine']:.4f}, nearest-neighbour top-1 agreement {r['top1_agreement']:.1%}"
          + (f", 5-way 1-shot {r['fewshot_fp32']:.1%} -> {r['fewshot_reduced']:.1%}"
             if "fewshot_change" in r else "")
          + ("" if r["passed"] else "  [FAILED, kept because of --force]"))
    return 0


def cmd_quantize(args) -> int:
    return _reduce(args.model, args.output, _quantize_options(args))


def _precision_args(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"), default=default)
    p.add_argument("--calib", type=Path, help="int8: calibration images (default: the samples)")
    p.add_argument("--calib-limit", type=int, default=200, help="int8: images used at most")
    p.add_argument("--calib-method", choices=("minmax", "percentile", "entropy"),
                   default="minmax")
    p.add_argument("--float-first", type=int, default=1,
                   help="int8: convolutions kept in float at the input (default 1)")
    p.add_argument("--float-last", type=int, default=1,
                   help="int8: convolutions kept in float at the output (default 1)")
    p.add_argument("--keep-float", action="append", metavar="NODE",
                   help="int8: another graph node to keep in float (repeatable)")
    p.add_argument("--gate-images", type=Path,
                   help="class folders for the accuracy gate (default: the samples)")
    p.add_argument("--min-cosine-gate", type=float, default=0.98,
                   help="gate: least mean cosine to fp32 (default 0.98)")
    p.add_argument("--min-agreement", type=float, default=0.98,
                   help="gate: least nearest-neighbour top-1 agreement (default 0.98)")
    p.add_argument("--force", action="store_true", help="write the model even if the gate fails")


def cmd_enroll(args) -> int:
    from tledge.runtime import Gallery
    from tledge.runtime.batch import class_folders, enroll_folder
    from tledge.runtime.gallery import validate_label

    if args.label is not None:
        validate_label(args.label)  # before anything is created on disk
    embedder = _embedder(args)
    with Gallery.open_or_create(args.gallery, embedder) as gallery:
        if args.folder:
            total = sum(len(f[:args.shots] if args.shots else f)
                        for f in class_folders(args.folder).values())
            with _progress(total, "enrolling") as bar:
                results = enroll_folder(gallery, args.folder, args.shots, bar.update)
        else:
            with _progress(len(args.images), f"enrolling {args.label}") as bar:
                results = [gallery.enroll(args.label, args.images, skip_bad=True,
                                          progress=bar.update)]
        failed = 0
        for res in results:
            print(f"{res.label}: {res.added} samples")
            for name, msg in res.failed:
                print(f"  skipped {name}: {msg}", file=sys.stderr)
                failed += 1
        print(f"gallery {args.gallery}: {len(gallery.labels())} classes "
              f"(model {embedder.info.backbone}, {embedder.provider})")
    return 1 if failed else 0


def cmd_recognize(args) -> int:
    from tledge.runtime import Gallery, Recognizer
    from tledge.runtime.batch import recognize_sources

    embedder = _embedder(args)
    embedder.warmup()  # so the first image's reported latency is not the session's start-up
    with Gallery.open(args.gallery, embedder) as gallery:
        gallery.mode = args.mode
        recognizer = Recognizer(embedder, gallery, args.smoothing, args.threshold)
        errors = 0
        for item in recognize_sources(recognizer, args.sources, args.max_frames, args.every):
            errors += item.error is not None
            if args.json:
                print(json.dumps(item.to_dict(), ensure_ascii=False), flush=True)
            elif item.error:
                print(f"error: {item.error}", file=sys.stderr)
            else:
                r = item.result
                label = r.label if r.label is not None else f"unknown (closest: {r.candidate})"
                print(f"{item.name}: {label}  score {r.score:.3f}  {r.latency_ms:.1f} ms",
                      flush=True)
    return 1 if errors else 0


def cmd_kiosk(args) -> int:
    from tledge.kiosk.app import read_token, run_kiosk
    from tledge.kiosk.service import KioskConfig

    if args.allow_enroll and args.no_http:
        raise TledgeError("--allow-enroll works over the HTTP API; drop --no-http")
    token = read_token(args.token_file) if args.allow_enroll else None
    config = KioskConfig(
        model=args.model, gallery=args.gallery, source=args.source, stable_frames=args.stable,
        threshold=args.threshold, smoothing=args.smoothing,
        roi=tuple(args.roi) if args.roi else None, max_frames=args.max_frames,
        exit_after=args.exit_after, loop=args.loop, every_frame=args.every_frame,
        retry_max=args.retry_max, stale_after=args.stale_after, providers=args.providers,
        threads=args.threads)
    http = None if args.no_http else (args.host, args.port)
    return run_kiosk(config, http, token)


def cmd_gallery(args) -> int:
    from tledge.runtime import Gallery

    embedder = _embedder(args) if args.model else None
    if args.action == "reembed" and embedder is None:
        raise TledgeError("gallery reembed needs --model NEW_MODEL.onnx")
    with Gallery.open(args.gallery, None if args.action == "reembed" else embedder) as gallery:
        if args.action == "info":
            print(json.dumps(gallery.info(), indent=2, ensure_ascii=False))
        elif args.action == "list":
            for c in gallery.classes():
                print(f"{c.label}\t{c.samples}")
        elif args.action == "remove":
            gallery.remove(args.label)
            print(f"removed {args.label!r}")
        elif args.action == "rename":
            gallery.rename(args.old, args.new)
            print(f"renamed {args.old!r} to {args.new!r}")
        elif args.action == "threshold":
            if args.value is not None:
                gallery.threshold = args.value
            print(f"threshold {gallery.threshold:.4f}")
        elif args.action == "calibrate":
            from tledge.evaluate import calibrate

            res = calibrate(gallery, args.far)
            gallery.threshold = res["threshold"]
            print(f"threshold set to {res['threshold']:.4f}: accepts {args.far:.0%} of "
                  f"impostors and {res['genuine_accepted']:.0%} of genuine samples "
                  f"(leave-one-out over {res['samples']} samples)")
        elif args.action == "reembed":
            n = gallery.reembed(embedder)
            print(f"re-embedded {n} samples with {embedder.info.describe()}")
    return 0


def cmd_demo(args) -> int:
    from tledge.demo import format_report, run_demo

    report = run_demo(args.workdir, args.backbone, args.model, args.providers, args.threads)
    print(format_report(report))
    return 0


def run_gui(gui_args: list[str]) -> int:
    """``tledge gui ARGS``: hand every argument to the app's own parser."""
    import importlib

    try:  # imported by name: the tledge package itself never imports PySide6
        app = importlib.import_module("tledge_gui.app")
    except ImportError as exc:
        print(f"error: the desktop app needs the gui extra: pip install \"tledge[gui]\" ({exc})",
              file=sys.stderr)
        return 1
    return app.main(gui_args)


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
    real = embedder.embed(files, progress=_progress(len(files), "embedding").update)
    sizes = [int(float(s)) for s in args.sizes.split(",") if s]
    rows = G.gallery_scaling(real, sizes, progress=lambda r: print(
        f"  {r['size']:,}: {r['index']}, p50 {r['p50_ms']:.2f} ms, recall@1 "
        f"{r['recall_at_1']:.3f}", file=sys.stderr))
    print(json.dumps(rows, indent=2) if args.json else G.format_gallery(rows))
    return 0


# -- parser ---------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tledge", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"tledge {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--quiet", "-q", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("backbones", help="list the available backbones")
    p.set_defaults(func=cmd_backbones)

    p = sub.add_parser("export", help="export a backbone as a self-describing ONNX model")
    p.add_argument("--backbone", default="mobilenet_v2")
    p.add_argument("--output", "-o", type=Path, required=True)
    p.add_argument("--weights", help="a .pth state dict to use instead of the published one")
    p.add_argument("--allow-download", action="store_true",
                   help="let torchvision download weights that are not available offline")
    p.add_argument("--parity-images", type=Path, help="folder of images for the parity check")
    p.add_argument("--threshold", type=float, help="default open-set threshold to record")
    p.add_argument("--checkpoint", type=Path, help="a `tledge finetune` run directory to export")
    p.add_argument("--no-centering", action="store_true",
                   help="with --checkpoint: plain L2 normalisation instead of CL2N centring")
    _precision_args(p, "fp32")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("quantize", help="an int8 or fp16 copy of an exported fp32 model, "
                                        "behind an accuracy gate")
    p.add_argument("model", type=Path, help="the fp32 .onnx model")
    p.add_argument("--output", "-o", type=Path, required=True)
    _precision_args(p, "int8")
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("enroll", help="add classes to a gallery from images (no training)")
    _model_args(p)
    p.add_argument("--gallery", "-g", type=Path, required=True)
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--folder", type=Path, help="folder of class folders: DIR/<label>/*.jpg")
    group.add_argument("--label", help="the label of IMAGE...")
    p.add_argument("--shots", type=int, help="with --folder: use the first K images per class")
    p.add_argument("images", nargs="*", type=Path, help="with --label: the images")
    p.set_defaults(func=cmd_enroll)

    p = sub.add_parser("recognize", help="recognise images, folders, videos or a webcam")
    _model_args(p)
    p.add_argument("--gallery", "-g", type=Path, required=True)
    p.add_argument("sources", nargs="+", help="image, folder, video file or webcam index")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--threshold", type=float, help="override the gallery's threshold")
    p.add_argument("--mode", choices=("prototype", "nearest"), default="prototype")
    p.add_argument("--smoothing", type=int, default=1, help="average over N frames")
    p.add_argument("--max-frames", type=int, help="stop each source after N frames")
    p.add_argument("--every", type=int, default=1, help="use every Nth frame of a video")
    p.set_defaults(func=cmd_recognize)

    p = sub.add_parser("kiosk", help="headless recognition service: JSON-lines events on "
                       "stdout and a local HTTP API")
    _model_args(p)
    p.add_argument("--gallery", "-g", type=Path, required=True)
    p.add_argument("--source", "-s", required=True,
                   help="webcam index, video file, image folder or image")
    p.add_argument("--stable", type=int, default=5,
                   help="report a label after it held for N frames in a row (default 5)")
    p.add_argument("--threshold", type=float, help="override the gallery's threshold")
    p.add_argument("--smoothing", type=int, default=1, help="average embeddings over N frames")
    p.add_argument("--roi", type=int, nargs=4, metavar=("X", "Y", "W", "H"),
                   help="recognise only this region of each frame")
    p.add_argument("--max-frames", type=int, help="stop after N frames")
    p.add_argument("--exit-after", type=float, help="stop after N seconds")
    p.add_argument("--loop", action="store_true", help="restart a video file or folder at its end")
    p.add_argument("--every-frame", action="store_true",
                   help="also emit a 'frame' event for every frame (not debounced)")
    p.add_argument("--retry-max", type=float, default=30.0,
                   help="longest wait between camera reconnection attempts, seconds")
    p.add_argument("--stale-after", type=float, default=10.0,
                   help="/health fails when no frame arrived for this many seconds")
    p.add_argument("--host", default="127.0.0.1",
                   help="HTTP address (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8765, help="HTTP port (0: any free port)")
    p.add_argument("--no-http", action="store_true", help="events on stdout only")
    p.add_argument("--allow-enroll", action="store_true",
                   help="accept POST /enroll with the bearer token from --token-file or "
                        "$TLEDGE_KIOSK_TOKEN")
    p.add_argument("--token-file", type=Path, help="file holding the enrollment token")
    p.set_defaults(func=cmd_kiosk)

    p = sub.add_parser("gallery", help="inspect or edit a gallery")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, help_ in (("info", "summary as JSON"), ("list", "classes and sample counts"),
                        ("remove", "delete a class"), ("rename", "rename a class"),
                        ("threshold", "show or set the open-set threshold"),
                        ("calibrate", "set the threshold from the gallery's own samples"),
                        ("reembed", "re-embed stored crops with another model")):
        a = actions.add_parser(name, help=help_)
        a.add_argument("--gallery", "-g", type=Path, required=True)
        _model_args(a, required=name == "reembed")
        a.set_defaults(func=cmd_gallery)
        if name == "remove":
            a.add_argument("label")
        elif name == "rename":
            a.add_argument("old")
            a.add_argument("new")
        elif name == "threshold":
            a.add_argument("value", type=float, nargs="?")
        elif name == "calibrate":
            a.add_argument("--far", type=float, default=0.05,
                           help="false-accept rate to allow (default 0.05)")

    from tledge.cli_train import add_parsers

    add_parsers(sub, _model_args)

    p = sub.add_parser("demo", help="run the end-to-end demo on the shipped sample images")
    p.add_argument("--workdir", type=Path, default=Path("tledge-demo"))
    p.add_argument("--backbone", default="mobilenet_v2")
    _model_args(p, required=False)
    p.set_defaults(func=cmd_demo)

    sub.add_parser("gui", help="the desktop app (see tledge gui --help)", add_help=False)

    p = sub.add_parser("bench", help="benchmark: ONNX Runtime vs PyTorch, end to end, search; "
                       "MODEL...: runtimes and precisions; --gallery: search by size")
    p.add_argument("models", nargs="*", type=Path,
                   help="models to compare (fp32 first), e.g. m.onnx m_fp16.onnx m_int8.onnx")
    p.add_argument("--batch", type=int, default=1, help="MODEL...: images per call")
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
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--sizes", default="1000,10000,100000", help="gallery sizes for search")
    p.add_argument("--video", type=Path, help="frames for frame->label (default: the shared "
                   "bottle video when present, else the sample images)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["gui"]:
        return run_gui(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "enroll" and args.label and not args.images:
        parser.error("enroll --label NAME needs at least one IMAGE")
    if args.command == "enroll" and args.folder and args.images:
        parser.error("enroll --folder takes no IMAGE arguments")
    level = logging.WARNING if args.quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("tledge: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG if args.debug else level)
    log.propagate = False
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except TledgeError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # the CLI's last line of defence: one line, not a traceback
        if args.debug:
            raise
        print(f"error: {type(exc).__name__}: {exc} (run with --debug for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
