"""Export every registered backbone in fp32 and int8, for ``tledge eval frontier --backbones``.

Each backbone goes through the real export pipeline (parity, post-training int8 or
int8-aware distillation, the accuracy gate). A gate that refuses an int8 model does not stop
the sweep: the file is kept (``force``) with its failed report in the metadata, because the
frontier is where the user sees what it costs; the report is returned with the paths.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from tledge.train.backbones import get_spec, list_backbones
from tledge.train.export import ExportOptions
from tledge.train.gate import GateOptions
from tledge.train.pipeline import PipelineOptions, export
from tledge.train.qat import QATOptions
from tledge.train.quantize import QuantizeOptions, reduce_precision, resolve_reduce_range

# Built-in backbones that are not worth measuring (random weights, for tests).
SKIP = ("tiny",)


def zoo_backbones() -> list[str]:
    """Registered backbones that carry pretrained weights, in registry order."""
    return [n for n in list_backbones() if n not in SKIP and get_spec(n).weights is not None]


def export_backbones(out_dir: Path, names: list[str] | None = None,
                     calib: Path | None = None, gate_images: Path | None = None,
                     qat_steps: int = 0, reuse: bool = True,
                     gate: GateOptions | None = None,
                     reduce_range: bool | None = True) -> list[dict]:
    """``out_dir/<name>.onnx`` (fp32) and ``out_dir/<name>_int8.onnx`` for each backbone;
    returns one ``{"backbone", "fp32", "int8", "gate"}`` per backbone. ``reuse``: valid
    files already there are kept (a re-run measures without re-exporting); damaged ones, and
    int8 files on another weight grid, are made again. ``gate``:
    the int8 gate's options (default: on ``gate_images``, kept even when it fails);
    ``reduce_range``: 7-bit weights (True), 8-bit (False) or by this CPU (None)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    gate = gate or GateOptions(images=gate_images, force=True)
    quant = QuantizeOptions(precision="int8", calib=calib, gate=gate, reduce_range=reduce_range)
    want = resolve_reduce_range(reduce_range)  # an int8 file on another grid is redone
    made = []
    for name in names or zoo_backbones():
        fp32, int8 = out_dir / f"{name}.onnx", out_dir / f"{name}_int8.onnx"
        model = ExportOptions(backbone=name)
        if not (reuse and _recipe(fp32) is not None):  # missing, damaged or stale: redo
            export(fp32, PipelineOptions(precision="fp32", model=model))
        report = None
        if not (reuse and (_recipe(int8) or {}).get("reduce_range") == want):
            if qat_steps:  # distillation needs the PyTorch model: the whole pipeline
                options = PipelineOptions(precision="int8", model=model, quantize=quant,
                                          qat=dataclasses.replace(QATOptions(), steps=qat_steps))
                report = export(int8, options).gate
                int8.with_name(int8.stem + ".fp32.onnx").unlink(missing_ok=True)  # = fp32
            else:  # post-training: from the fp32 file just made, not a second export
                report = reduce_precision(fp32, int8, quant)
        made.append({"backbone": name, "fp32": fp32, "int8": int8, "gate": report})
    return made


def _recipe(path: Path) -> dict | None:
    """The ``quantization`` recipe of a verified tledge model file (``{}`` for fp32), or
    None when the file is missing, damaged, stale or not a tledge model."""
    import json

    from tledge.errors import TledgeError
    from tledge.runtime.embedder import load_verified

    if not path.is_file():
        return None
    try:
        recipe = json.loads(load_verified(path)[1].extra.get("quantization", "{}"))
    except (TledgeError, ValueError):
        return None
    return recipe if isinstance(recipe, dict) else None
