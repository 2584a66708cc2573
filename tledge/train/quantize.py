"""Reduced-precision copies (int8, fp16) of an fp32 tledge model, each behind an accuracy
gate: path in, path out, with a typed options dataclass (like onnxruntime's quantize_static).

int8: ONNX Runtime static QDQ quantisation calibrated on real images through the model's
own preprocessing; per-channel weights; U8S8 with ``reduce_range`` (7-bit weights) by
default, because x86 CPUs without VNNI saturate in the fast U8S8 kernels otherwise (measured
on such a CPU: mean cosine 0.89 without it, 0.96 with it); ``reduce_range=None`` picks full
8-bit weights where the building CPU has fast 8-bit dot products (VNNI, AMX, ARM dotprod),
and the metadata records which instruction was found; the first and last convolutions in
float.
``tledge export --precision int8`` first fine-tunes the model for exactly this recipe
(``tledge.train.qat``) and passes its learned activation ranges here.
fp16: weights and compute in float16 where the provider has kernels, float32 inputs and
outputs kept. The gate (``tledge.train.gate``) runs on every reduced export.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tledge.errors import TledgeError
from tledge.runtime.cpu import fast_int8_dot
from tledge.runtime.embedder import Embedder
from tledge.runtime.images import list_images, load_image
from tledge.runtime.preprocess import preprocess_batch
from tledge.train.gate import GateError, GateOptions, gate
from tledge.train.metadata import write_model

METHODS = ("minmax", "percentile", "entropy")
PRECISIONS = ("int8", "fp16")


@dataclass(frozen=True)
class QuantizeOptions:
    precision: str = "int8"
    calib: Path | None = None         # calibration images (int8); default: shipped samples
    calib_limit: int = 200
    method: str = "minmax"
    percentile: float = 99.999
    per_channel: bool = True
    # 7-bit weights: exact on AVX2/AVX-512 without VNNI. False: full 8-bit weights. None:
    # 8-bit when this CPU has fast 8-bit dot products (``tledge.runtime.cpu``), 7-bit
    # otherwise. The default stays 7-bit: the model may run on another CPU. int8-aware
    # distillation simulates whichever grid is chosen.
    reduce_range: bool | None = True
    float_first: int = 1              # convolutions kept in float at the input ...
    float_last: int = 1               # ... and at the output
    keep_float: tuple[str, ...] = ()  # more node names to keep in float
    gate: GateOptions = GateOptions()

    def validate(self) -> None:
        if self.precision not in PRECISIONS:
            raise TledgeError(f"precision {self.precision!r}: choose one of {PRECISIONS}")
        if self.method not in METHODS:
            raise TledgeError(f"calibration method {self.method!r}: choose one of {METHODS}")
        if self.calib_limit < 1 or self.float_first < 0 or self.float_last < 0:
            raise TledgeError("calib-limit must be >= 1 and float-first/last >= 0")


def reduce_precision(fp32_model: Path, output: Path, options: QuantizeOptions,
                     reference: Path | None = None, recipe: dict | None = None,
                     ranges: list[tuple[str, float, float]] | None = None) -> dict:
    """Write an int8 or fp16 copy of ``fp32_model`` to ``output`` if it passes the gate.

    ``reference``: the fp32 model the gate compares with, when ``fp32_model`` is a stand-in
    prepared for quantisation (``tledge.train.qat``); default ``fp32_model`` itself.
    ``recipe``: more facts for the metadata's ``quantization`` record. ``ranges``: int8
    activation ranges to use instead of calibrated ones (see ``activation_overrides``).
    Returns the gate report (also stored in the model's metadata as ``gate``). On a failed
    gate nothing is written unless ``options.gate.force``.
    """
    import onnx

    options.validate()
    source = Embedder(fp32_model, providers="cpu")
    if source.info.precision != "fp32":
        raise TledgeError(f"{fp32_model} is {source.info.precision}; reduce an fp32 model")
    parent = Embedder(reference, providers="cpu") if reference else source
    if (parent.info.preprocess, parent.dim) != (source.info.preprocess, source.dim):
        raise TledgeError(f"{reference} and {fp32_model} differ in preprocessing or size")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=".quant-") as tmp:
        staged = Path(tmp) / output.name
        if options.precision == "int8":
            made = _int8(Path(fp32_model), staged, source, options, Path(tmp), ranges)
        else:
            made = _fp16(Path(fp32_model), staged)
        made.update(recipe or {})
        proto = onnx.load(str(staged))
        # The writer stamps a new fingerprint from these weights and this precision: an int8
        # or fp16 copy gives other vectors than its parent, so it never joins its gallery.
        info = write_model(proto, dataclasses.replace(
            source.info, precision=options.precision,
            extra={**source.info.extra, "parent_fingerprint": parent.fingerprint,
                   "quantization": json.dumps(made)}), staged)
        report = gate(parent, Embedder(staged, providers="cpu"), options.gate)
        write_model(proto, dataclasses.replace(
            info, extra={**info.extra, "gate": json.dumps(report)}), staged)
        if not report["passed"] and not options.gate.force:
            raise GateError(
                f"the {options.precision} model failed the accuracy gate: "
                + "; ".join(report["failures"])
                + ". Nothing was written; use --force to keep it anyway"
                + (", or let `tledge export --precision int8 --qat-steps N` fine-tune the "
                   "model for int8" if options.precision == "int8" and not recipe else ""))
        os.replace(staged, output)
    return report


def calibration_files(options: QuantizeOptions, limit: int | None = None) -> list[Path]:
    """Up to ``limit`` (default ``calib_limit``) images of ``options.calib``, spread over
    its classes rather than its first folders."""
    from tledge.samples import sample_root

    root = Path(options.calib or sample_root())
    files = list_images(root)
    if not files:
        raise TledgeError(f"no calibration images in {root}")
    rng = np.random.default_rng(0)
    return [files[i] for i in sorted(rng.permutation(len(files))[:limit or options.calib_limit])]


def _int8(src: Path, out: Path, source: Embedder, options: QuantizeOptions, tmp: Path,
          ranges: list[tuple[str, float, float]] | None = None) -> dict:
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    files = calibration_files(options)
    cfg, name = source.info.preprocess, source.info.input_name
    tensors = [preprocess_batch([load_image(p)], cfg) for p in files]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(tensors)

        def get_next(self):
            batch = next(self.items, None)
            return None if batch is None else {name: batch}

    prepared = tmp / "prepared.onnx"
    quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
    convs = [n.name for n in onnx.load(str(prepared)).graph.node if n.op_type == "Conv"]
    exclude = convs[:options.float_first] + (convs[-options.float_last:]
                                             if options.float_last else [])
    exclude += list(options.keep_float)
    method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
              "entropy": CalibrationMethod.Entropy}[options.method]
    extra = {"CalibPercentile": options.percentile} if options.method == "percentile" else {}
    if ranges:
        extra["TensorQuantOverrides"] = activation_overrides(onnx.load(str(prepared)), ranges,
                                                             options.float_first,
                                                             options.float_last)
    fast = fast_int8_dot()
    reduce_range = resolve_reduce_range(options.reduce_range)
    quantize_static(str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=options.per_channel, reduce_range=reduce_range,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    nodes_to_exclude=exclude, calibrate_method=method, extra_options=extra)
    if ranges:
        quantised = {n.input[0] for n in onnx.load(str(out)).graph.node
                     if n.op_type == "QuantizeLinear"}
        missing = set(extra["TensorQuantOverrides"]) - quantised
        if missing:
            raise TledgeError(f"learned ranges for tensors onnxruntime did not quantise: "
                              f"{sorted(missing)[:3]}")
    return {"format": "QDQ U8S8", "per_channel": options.per_channel,
            "reduce_range": reduce_range, "reduce_range_option": options.reduce_range,
            "built_on_fast_int8_dot": fast, "method": options.method,
            "calibration_images": len(files), "float_nodes": exclude}


def resolve_reduce_range(option: bool | None) -> bool:
    """``QuantizeOptions.reduce_range`` made definite: None -> 7-bit weights unless this CPU
    has fast 8-bit dot products."""
    return option if option is not None else fast_int8_dot() is None


def quantised_tensors(model, float_first: int, float_last: int
                      ) -> tuple[list[tuple[str, str]], set[str]]:
    """The activations onnxruntime's QDQ recipe quantises, in graph order, as ``(kind,
    tensor name)``: the input (only when the first conv is quantised), each conv's output
    after its Clip/Relu but the float last ones', and each sum of two computed tensors; and
    the names among them that can never be negative (Relu, or Clip with a min >= 0)."""
    graph = model.graph
    users: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    made = {n for node in graph.node for n in node.output}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    float_tail = {n.name for n in convs[len(convs) - float_last:]} if float_last else set()
    tensors = [("input", graph.input[0].name)] if float_first == 0 else []
    clipped = set()
    for node in graph.node:
        if node.op_type == "Conv" and node.name not in float_tail:
            out = node.output[0]
            after = users.get(out, [])
            if len(after) == 1 and after[0].op_type in ("Clip", "Relu"):
                out = after[0].output[0]
                if _never_negative(after[0], graph):
                    clipped.add(out)
            tensors.append(("conv", out))
        elif node.op_type == "Add" and all(i in made for i in node.input):
            tensors.append(("add", node.output[0]))
    return tensors, clipped


def _never_negative(node, graph) -> bool:
    """A Relu, or a Clip whose min is a constant >= 0."""
    if node.op_type == "Relu":
        return True
    if len(node.input) < 2 or not node.input[1]:
        return False
    from onnx import numpy_helper

    name = node.input[1]
    for init in graph.initializer:
        if init.name == name:
            return bool(np.all(numpy_helper.to_array(init) >= 0))
    for const in graph.node:
        if const.op_type == "Constant" and const.output[0] == name and const.attribute:
            return bool(np.all(numpy_helper.to_array(const.attribute[0].t) >= 0))
    return False


def check_lines_up(fp32_model: Path, kinds: list[str], float_first: int,
                   float_last: int) -> None:
    """Refuse, before any distillation, a simulation whose quantisation points (``kinds`` in
    execution order) are not the tensors onnxruntime will quantise in ``fp32_model``."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="tledge-lineup-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_model), str(prepared), skip_symbolic_shape=True)
        tensors, _ = quantised_tensors(onnx.load(str(prepared)), float_first, float_last)
    if [k for k, _ in tensors] != list(kinds):
        raise TledgeError(f"int8-aware distillation is not supported for this model: its "
                          f"simulation has {len(kinds)} quantisation points, onnxruntime "
                          f"quantises {len(tensors)} tensors; use --qat-steps 0 "
                          "(post-training int8)")


def activation_overrides(model, ranges: list[tuple[str, float, float]], float_first: int,
                         float_last: int) -> dict:
    """onnxruntime ``TensorQuantOverrides`` giving each quantised activation
    (``quantised_tensors``) its range from ``ranges`` (``(kind, rmin, rmax)`` in execution
    order, from ``tledge.train.qat``)."""
    tensors, clipped = quantised_tensors(model, float_first, float_last)
    if [k for k, _ in tensors] != [k for k, _, _ in ranges]:
        raise TledgeError(f"the learned activation ranges ({len(ranges)}) do not line up with "
                          f"this graph's quantised tensors ({len(tensors)})")
    for (_, name), (_, lo, hi) in zip(tensors, ranges, strict=True):
        # a learned range far below zero for a tensor that cannot be negative means the
        # simulation quantised another tensor (e.g. before the activation): refuse it
        if name in clipped and lo < -0.05 * max(hi, 1e-6):
            raise TledgeError(f"the int8 simulation does not match this graph: tensor {name} "
                              f"is an activation's output (never negative) but its learned "
                              f"range is [{lo:.3g}, {hi:.3g}]; distillation is not supported "
                              "for this backbone, use --qat-steps 0")
    return {name: [{"rmin": np.array(lo, np.float32), "rmax": np.array(hi, np.float32)}]
            for (_, name), (_, lo, hi) in zip(tensors, ranges, strict=True)}


def _fp16(src: Path, out: Path) -> dict:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(out))
    return {"format": "float16 weights and compute, float32 input/output"}
