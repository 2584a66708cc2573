"""The export pipeline: a backbone or a training run in, one gated ONNX file out.

``export(output, options) -> ExportReport`` owns every decision ``tledge export`` makes:

1. check the inputs before any work: the output name, the precision, and for int8 a
   calibration folder that exists and holds images;
2. export the fp32 model and prove its parity with PyTorch (``tledge.train.export``). For a
   reduced precision that file is the ``<out>.fp32.onnx`` sibling of the output and is kept:
   it is the reference the gate compares with, and what ``tledge gallery reembed`` can go
   back to;
3. int8 with ``qat.steps > 0``: distil the model for int8 first (``tledge.train.qat``);
   otherwise int8/fp16 by post-training reduction (``tledge.train.quantize``);
4. the accuracy gate on every reduced file (nothing is written at ``output`` when it fails,
   unless ``quantize.gate.force``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tledge.errors import TledgeError
from tledge.train.export import (
    ExportError,
    ExportOptions,
    ParityReport,
    checkpoint_model,
    export_embedding_model,
    pretrained_model,
)
from tledge.train.gate import gate_images
from tledge.train.qat import QATOptions
from tledge.train.quantize import QuantizeOptions, calibration_files

PRECISIONS = ("fp32", "fp16", "int8")

# progress(stage, done, total, note): stages "fp32", "distil" (done/total in steps), "reduce"
Progress = Callable[[str, int, int, str], None]


@dataclass(frozen=True)
class PipelineOptions:
    """What to export and how. ``checkpoint``: a training run directory (default: the
    published ``model.backbone``); ``qat``: int8-aware distillation (``steps=0``: post-training
    quantisation only); ``quantize.precision`` is ignored in favour of ``precision``."""

    precision: str = "fp32"
    model: ExportOptions = ExportOptions()
    checkpoint: Path | None = None
    centering: bool = True                  # with a checkpoint: CL2N centring, else plain L2
    quantize: QuantizeOptions = QuantizeOptions()
    qat: QATOptions = QATOptions()


@dataclass
class ExportReport:
    """The outcome: ``path`` (the file to use), its ``precision``, the verified fp32
    ``reference`` (``path`` itself for fp32) with its ``parity`` report, and for a reduced
    precision the ``gate`` report (also stored in the file's metadata)."""

    path: Path
    precision: str
    reference: Path
    parity: ParityReport
    gate: dict | None = None
    distilled_steps: int = 0

    @property
    def size_bytes(self) -> int:
        return self.path.stat().st_size


def reference_path(output: Path, precision: str) -> Path:
    """Where the fp32 reference goes: ``output`` itself, or its ``.fp32.onnx`` sibling."""
    return output if precision == "fp32" else output.with_name(output.stem + ".fp32.onnx")


def export(output: str | os.PathLike, options: PipelineOptions = PipelineOptions(),
           progress: Progress | None = None) -> ExportReport:
    """Run the pipeline in the module docstring; returns its report. Raises ``ExportError``,
    ``GateError`` or ``TledgeError`` with a one-line reason; on failure nothing is left at
    ``output`` (the fp32 reference of a reduced export stays: it passed its own check)."""
    output = Path(output)
    quant = check(output, options)
    reference = reference_path(output, options.precision)
    _say(progress, "fp32", 0, 1, f"exporting {reference.name}")
    model, info = (checkpoint_model(options.checkpoint, options.model, options.centering)
                   if options.checkpoint else pretrained_model(options.model))
    parity = export_embedding_model(model, info, reference, options.model)
    _say(progress, "fp32", 1, 1, f"parity min cosine {parity.min_cosine:.6f}")
    report = ExportReport(output, options.precision, reference, parity)
    if quant is None:
        return report
    if options.precision == "int8" and options.qat.steps > 0:
        report.gate = _distil_int8(model, parity, output, quant, options, progress)
        report.distilled_steps = options.qat.steps
    else:
        from tledge.train.quantize import reduce_precision

        _say(progress, "reduce", 0, 1, f"{options.precision} of {reference.name}")
        report.gate = reduce_precision(reference, output, quant)
        _say(progress, "reduce", 1, 1, "gate done")
    return report


def check(output: Path, options: PipelineOptions) -> QuantizeOptions | None:
    """Refuse what would fail late, before any export work; returns the quantisation options
    for a reduced precision (``None`` for fp32)."""
    if options.precision not in PRECISIONS:
        raise ExportError(f"precision {options.precision!r}: choose one of {PRECISIONS}")
    if output.suffix != ".onnx":
        raise ExportError(f"output {output} should end in .onnx")
    if options.checkpoint is not None and not Path(options.checkpoint).is_dir():
        raise ExportError(f"checkpoint {options.checkpoint} is not a run directory; pass the "
                          "folder `tledge finetune/adapt/multitask -o RUN` wrote")
    if options.precision == "fp32":
        return None
    quant = dataclasses.replace(options.quantize, precision=options.precision)
    quant.validate()
    if options.precision == "int8":
        calib = quant.calib
        if calib is not None and not Path(calib).exists():
            raise TledgeError(f"calibration folder {calib} does not exist; pass --calib with a "
                              "folder of images like the ones the model will see")
        calibration_files(quant)  # raises on a folder without images
    gate_images(quant.gate.images)  # a missing gate folder fails here, not after the export
    return quant


def _distil_int8(model, parity: ParityReport, output: Path, quant: QuantizeOptions,
                 options: PipelineOptions, progress: Progress | None) -> dict:
    from tledge.train.qat import export_int8

    steps = options.qat.steps

    def on_step(step: int, cosine: float) -> None:
        _say(progress, "distil", step, steps, f"simulated int8 cosine to fp32 {cosine:.4f}")

    gate = export_int8(model, parity.info, parity.path, output, quant, options.qat,
                       options.model, on_step)
    _say(progress, "reduce", 1, 1, "gate done")
    return gate


def _say(progress: Progress | None, stage: str, done: int, total: int, note: str) -> None:
    if progress is not None:
        progress(stage, done, total, note)
