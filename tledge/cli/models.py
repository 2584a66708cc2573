"""Model files: ``tledge backbones``, ``tledge export`` (fp32, fp16, int8) and
``tledge quantize``. Export parses and prints; ``tledge.train.pipeline.export`` decides."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from tledge.artifact import DEFAULT_BACKBONE
from tledge.cli import common
from tledge.cli.types import (
    NON_NEGATIVE_INT,
    cosine,
    examples,
    positive_float,
    positive_int,
    probability,
)

log = logging.getLogger("tledge")


def cmd_backbones(args: argparse.Namespace) -> int:
    from tledge.train.backbones import get_spec, list_backbones

    for name in list_backbones():
        spec = get_spec(name)
        print(f"{name:20} {spec.dim:5}-d  {spec.preprocess.crop_size}px  {spec.summary}")
    print("\nAny torchvision classification model name also works (weights from the torch hub "
          "cache, or --allow-download).\nJoin names with '+' for an ensemble in one graph, e.g. "
          "mobilenet_v2+efficientnet_lite0 (export and evaluation only).")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from tledge.train.export import ExportOptions
    from tledge.train.pipeline import PipelineOptions, export
    from tledge.train.qat import QATOptions

    model = ExportOptions(backbone=args.backbone, weights=args.weights,
                          allow_download=args.allow_download,
                          parity_images=args.parity_images, threshold=args.threshold)
    qat = QATOptions(steps=args.qat_steps, batch=args.qat_batch, lr=args.qat_lr,
                     images=args.qat_images)
    options = PipelineOptions(precision=args.precision, model=model,
                              checkpoint=args.checkpoint, centering=not args.no_centering,
                              quantize=quantize_options(args), qat=qat)
    with _StageBars() as bars:
        report = export(args.output, options, progress=bars)
    parity = report.parity
    print(f"wrote {parity.path} ({parity.size_bytes / 1e6:.1f} MB): {parity.info.describe()}")
    print(f"parity PyTorch vs ONNX Runtime on {parity.parity_images} images: "
          f"min cosine {parity.min_cosine:.6f}, mean {parity.mean_cosine:.6f}")
    if report.gate is not None:
        print_gate(report.path, report.precision, report.gate)
    return 0


class _StageBars:
    """The pipeline's progress as one tqdm bar per stage (the distillation's counts steps);
    off the terminal, a log line every 25 distillation steps instead."""

    def __init__(self) -> None:
        self.stage, self.bar = None, None

    def __enter__(self) -> _StageBars:
        return self

    def __call__(self, stage: str, done: int, total: int, note: str) -> None:
        if stage != self.stage:
            self.close()
            unit = "step" if stage == "distil" else "stage"
            desc = {"fp32": "fp32 export + parity", "distil": "int8-aware distillation",
                    "reduce": "quantisation + gate"}.get(stage, stage)
            self.stage, self.bar = stage, common.progress(total, desc, unit, leave=True)
        self.bar.update(done - self.bar.n)
        self.bar.set_postfix_str(note)
        if stage == "distil" and self.bar.disable and (done % 25 == 0 or done == total):
            log.info("int8-aware distillation: step %d/%d, %s", done, total, note)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __exit__(self, *exc) -> None:
        self.close()


def quantize_options(args: argparse.Namespace):
    from tledge.train.gate import GateOptions
    from tledge.train.quantize import QuantizeOptions

    gate = GateOptions(images=args.gate_images, min_mean_cosine=args.min_cosine_gate,
                       min_top1_agreement=args.min_agreement,
                       max_fewshot_drop=args.max_fewshot_drop, mode=args.gate_mode,
                       force=args.force)
    return QuantizeOptions(precision=args.precision, calib=args.calib,
                           calib_limit=args.calib_limit, method=args.calib_method,
                           reduce_range=WEIGHT_BITS[args.weight_bits],
                           float_first=args.float_first, float_last=args.float_last,
                           keep_float=tuple(args.keep_float or ()), gate=gate)


# --weight-bits -> QuantizeOptions.reduce_range
WEIGHT_BITS = {"7": True, "8": False, "auto": None}


def print_gate(output: Path, precision: str, r: dict) -> None:
    print(f"wrote {output} ({output.stat().st_size / 1e6:.1f} MB, {precision})")
    print(f"gate on {r['images']} images: mean cosine {r['mean_cosine']:.4f}, min "
          f"{r['min_cosine']:.4f}, {r.get('agreement_mode', 'nearest-sample')} agreement "
          f"{r['top1_agreement']:.1%}"
          + (f", 5-way 1-shot {r['fewshot_fp32']:.1%} -> {r['fewshot_reduced']:.1%}"
             if "fewshot_change" in r else "")
          + ("" if r["passed"] else "  [FAILED, kept because of --force]"))


def cmd_quantize(args: argparse.Namespace) -> int:
    from tledge.train.quantize import reduce_precision

    options = quantize_options(args)
    with common.progress(1, f"{args.precision} + gate", "stage") as bar:
        report = reduce_precision(args.model, args.output, options)
        bar.update(1)
    print_gate(args.output, args.precision, report)
    return 0


def _precision_args(p: argparse.ArgumentParser, choices: tuple[str, ...], default: str) -> None:
    p.add_argument("--precision", choices=choices, default=default,
                   help="fp32: exact; fp16: half the size; int8: a quarter of the size and "
                        "fastest on CPUs, behind the accuracy gate")
    p.add_argument("--calib", type=Path,
                   help="int8: folder of calibration images like the ones the model will see "
                        "(default: the shipped samples)")
    p.add_argument("--calib-limit", type=positive_int, default=200,
                   help="int8: calibration images used at most")
    p.add_argument("--calib-method", choices=("minmax", "percentile", "entropy"),
                   default="minmax", help="int8: how activation ranges are calibrated")
    p.add_argument("--float-first", type=NON_NEGATIVE_INT, default=1,
                   help="int8: convolutions kept in float at the input")
    p.add_argument("--float-last", type=NON_NEGATIVE_INT, default=1,
                   help="int8: convolutions kept in float at the output")
    p.add_argument("--keep-float", action="append", metavar="NODE",
                   help="int8: another graph node to keep in float (repeatable; default: "
                        "none)")
    p.add_argument("--gate-images", type=Path,
                   help="class folders for the accuracy gate (default: the shipped samples)")
    p.add_argument("--min-cosine-gate", type=cosine, default=0.98,
                   help="gate: least mean cosine between the reduced and the fp32 embeddings")
    p.add_argument("--min-agreement", type=probability, default=0.98,
                   help="gate: least share of held-out queries answered with the same class "
                        "as fp32, in the --gate-mode matching")
    p.add_argument("--gate-mode", choices=("prototype", "nearest"), default="prototype",
                   help="gate: the matching whose answers must agree: class prototypes (the "
                        "gallery's default) or the nearest sample")
    p.add_argument("--max-fewshot-drop", type=probability, default=0.01,
                   help="gate: largest 5-way 1-shot accuracy drop as a fraction (default "
                        "0.01: one point)")
    p.add_argument("--weight-bits", choices=tuple(WEIGHT_BITS), default="7",
                   help="int8: 7-bit weights run exactly on every x86 CPU (default); 8: full "
                        "8-bit weights, closer to fp32 but saturating on x86 CPUs without "
                        "VNNI; auto: 8 when this CPU has fast 8-bit dot products (VNNI, AMX, "
                        "ARM dotprod)")
    p.add_argument("--force", action="store_true",
                   help="write the model even if it fails the gate (without it a failing "
                        "model is not written and the command exits 1)")


def _add_backbones(sub, model_args) -> None:
    p = sub.add_parser("backbones", help="list the available backbones",
                       description="List the registered backbones: embedding size, input "
                                   "size and what each is for.",
                       epilog=examples("tledge backbones"))
    p.set_defaults(func=cmd_backbones)


def _add_export(sub, model_args) -> None:
    p = sub.add_parser(
        "export", help="export a backbone or a training run as a self-describing ONNX model",
        description="Export to ONNX, check parity with PyTorch, and for fp16/int8 reduce the "
                    "precision behind an accuracy gate. A reduced export also keeps its fp32 "
                    "reference next to it as OUT.fp32.onnx.",
        epilog=examples("tledge export -o models/efficientnet_lite0.onnx",
                        "tledge export --backbone mobilenet_v2 -o models/mobilenet_v2.onnx",
                        "tledge export --checkpoint runs/proto -o models/proto_int8.onnx "
                        "--precision int8 --calib photos/"))
    p.add_argument("--backbone", default=DEFAULT_BACKBONE,
                   help=f"a name from `tledge backbones` or any torchvision model (default: "
                        f"{DEFAULT_BACKBONE}, the best all-way 1-shot accuracy per ms on the "
                        "frontier; mobilenet_v2 is ~15%% faster and ~7 points weaker)")
    p.add_argument("--output", "-o", type=Path, required=True, help="the .onnx file to write")
    p.add_argument("--weights",
                   help="a .pth state dict to use instead of the published weights")
    p.add_argument("--allow-download", action="store_true",
                   help="let torchvision download weights that are not available offline "
                        "(without it: offline weights only)")
    p.add_argument("--parity-images", type=Path,
                   help="folder of images for the parity check (default: the shipped samples)")
    p.add_argument("--threshold", type=cosine,
                   help="open-set threshold to record, a cosine in [-1, 1] (default: the "
                        "backbone's or the run's own)")
    p.add_argument("--checkpoint", type=Path,
                   help="a `tledge finetune/adapt/multitask` run directory to export "
                        "(default: the published --backbone)")
    p.add_argument("--no-centering", action="store_true",
                   help="with --checkpoint: plain L2 normalisation (without it: CL2N "
                        "centring on the run's training mean)")
    _precision_args(p, ("fp32", "fp16", "int8"), "fp32")
    p.add_argument("--qat-steps", type=NON_NEGATIVE_INT, default=200,
                   help="int8: steps of int8-aware distillation before quantising (0: "
                        "post-training quantisation only; 200 take ~8 min on 2 CPU cores)")
    p.add_argument("--qat-batch", type=positive_int, default=16,
                   help="int8: images per distillation step")
    p.add_argument("--qat-lr", type=positive_float, default=2e-5,
                   help="int8: distillation learning rate")
    p.add_argument("--qat-images", type=positive_int, default=1000,
                   help="int8: calibration-folder images the distillation draws from")
    p.set_defaults(func=cmd_export)


def _add_quantize(sub, model_args) -> None:
    p = sub.add_parser(
        "quantize", help="an int8 or fp16 copy of an exported fp32 model, behind an "
                         "accuracy gate",
        description="Post-training quantisation of an fp32 tledge model (no PyTorch model "
                    "needed); `tledge export --precision int8` also distils first.",
        epilog=examples("tledge quantize models/m.onnx -o models/m_int8.onnx --calib photos/",
                        "tledge quantize models/m.onnx -o models/m_fp16.onnx --precision fp16"))
    p.add_argument("model", type=Path, help="the fp32 .onnx model")
    p.add_argument("--output", "-o", type=Path, required=True, help="the .onnx file to write")
    _precision_args(p, ("int8", "fp16"), "int8")
    p.set_defaults(func=cmd_quantize)


def add_parser(sub, model_args) -> None:
    for add in (_add_backbones, _add_export, _add_quantize):
        add(sub, model_args)
