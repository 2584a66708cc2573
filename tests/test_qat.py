"""Int8-aware distillation: the PyTorch simulation matches what ONNX Runtime's quantisation
does, BatchNorm folding keeps the function, distillation brings int8 closer to fp32, and the
CLI exports a gated int8 model compared with the original fp32 one."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tledge.cli import main
from tledge.runtime import Embedder
from tledge.runtime.images import list_images
from tledge.samples import sample_root
from tledge.train import qat
from tledge.train.data import load_batch
from tledge.train.export import ExportOptions, pretrained_model
from tledge.train.gate import GateOptions, gate_images
from tledge.train.quantize import QuantizeOptions, calibration_files, reduce_precision


def _images(limit: int, cfg) -> torch.Tensor:
    return load_batch(list_images(sample_root())[:limit], cfg)


def test_folding_batchnorm_keeps_the_function():
    model, info = pretrained_model(ExportOptions(backbone="mobilenet_v2"))
    x = _images(4, info.preprocess)
    folded = qat.copy.deepcopy(model)
    assert qat.fold_batchnorm(folded) == 52  # every conv of MobileNetV2 has its BN
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    with torch.no_grad():
        np.testing.assert_allclose(folded.embed(x).numpy(), model.embed(x).numpy(), atol=2e-5)


@pytest.mark.parametrize("backbone, exported", [("mobilenet_v2", "mobilenet_model"),
                                                ("efficientnet_lite0", "default_model")])
def test_simulation_matches_onnx_runtime_int8(backbone, exported, tmp_path, request):
    """Same calibration images for both: the simulated int8 embedding's cosine to fp32 is
    the one ONNX Runtime's int8 file gives, image by image. EfficientNet-Lite calls
    F.relu6 (a function, not a module): the simulation must quantise after it, as
    onnxruntime does (before the fix it quantised the conv output, 10x coarser)."""
    mobilenet_model = request.getfixturevalue(exported)
    assert backbone in mobilenet_model.name
    model, info = pretrained_model(ExportOptions(backbone=backbone))
    quant = QuantizeOptions(calib_limit=24, gate=GateOptions(episodes=10, force=True))
    calib = load_batch(calibration_files(quant), info.preprocess)
    files = list_images(sample_root())[-40:]
    simulated = qat.simulated_cosine(model, model, load_batch(files, info.preprocess), calib)
    int8 = tmp_path / "int8.onnx"
    reduce_precision(mobilenet_model, int8, quant)
    ref = Embedder(mobilenet_model, providers="cpu").embed(files)
    ort = np.sum(ref * Embedder(int8, providers="cpu").embed(files), axis=1)
    assert simulated.mean() < 0.995  # int8 error is there to be simulated ...
    assert abs(simulated.mean() - ort.mean()) < 0.004  # ... and it is the same error
    assert np.corrcoef(simulated, ort)[0, 1] > 0.9


def test_distillation_brings_simulated_int8_closer_to_fp32():
    model, info = pretrained_model(ExportOptions(backbone="mobilenet_v2"))
    files = list_images(sample_root())
    calib = load_batch(files[:16], info.preprocess)
    held_out = load_batch(files[-12:], info.preprocess)
    before = qat.simulated_cosine(model, model, held_out, calib).mean()
    seen = []
    options = qat.QATOptions(steps=12, batch=8, lr=5e-5, calib_images=16)
    student, ranges = qat.distill_for_int8(model, files[:-12], info.preprocess, options,
                                           progress=lambda step, cos: seen.append((step, cos)))
    after = qat.simulated_cosine(model, student, held_out, ranges=ranges).mean()
    assert [s for s, _ in seen] == list(range(1, 13))
    assert after > before + 0.005, (before, after)
    # 51 conv outputs (all but the float last conv) and MobileNetV2's 10 residual sums
    assert [k for k, _, _ in ranges].count("conv") == 51 and len(ranges) == 61
    assert all(lo <= 0.0 <= hi and hi > lo for _, lo, hi in ranges)
    assert not any(torch.nn.utils.parametrize.is_parametrized(m) for m in student.modules())
    assert not any(p.requires_grad for p in student.parameters())


def test_cli_int8_export_distils_quantises_and_gates_against_the_original(tmp_path, capsys):
    out = tmp_path / "tiny_int8.onnx"
    code = main(["export", "--backbone", "tiny", "-o", str(out), "--precision", "int8",
                 "--qat-steps", "3", "--qat-batch", "4", "--qat-images", "20", "--force"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "gate on 60 images: mean cosine" in printed
    reference = Embedder(tmp_path / "tiny_int8.fp32.onnx", providers="cpu")
    info = Embedder(out, providers="cpu").info
    assert info.precision == "int8"
    assert info.extra["parent_fingerprint"] == reference.fingerprint
    recipe = json.loads(info.extra["quantization"])
    assert recipe["qat"]["steps"] == 3 and recipe["qat"]["images"] == 20
    gate = json.loads(info.extra["gate"])
    files = [f for fs in gate_images(None).values() for f in fs]
    ours = np.sum(reference.embed(files) * Embedder(out, providers="cpu").embed(files), axis=1)
    assert gate["mean_cosine"] == pytest.approx(float(ours.mean()), abs=1e-4)
    assert not list(tmp_path.glob(".qat-*")) and not list(tmp_path.glob(".quant-*"))


@pytest.mark.parametrize("bits, reduce, qmax", [("8", False, 127), ("7", True, 64)])
def test_weight_bits_are_the_same_grid_in_the_simulation_and_in_onnxruntime(
        tmp_path, capsys, bits, reduce, qmax):
    """--weight-bits forces the recipe (whatever this CPU has); the distillation trains on
    the grid onnxruntime then quantises to, and the gate's options reach the report."""
    import onnx
    from onnx import numpy_helper

    out = tmp_path / "tiny_int8.onnx"
    code = main(["export", "--backbone", "tiny", "-o", str(out), "--precision", "int8",
                 "--qat-steps", "2", "--qat-batch", "4", "--qat-images", "12", "--force",
                 "--weight-bits", bits, "--gate-mode", "nearest", "--max-fewshot-drop", "0.2"])
    assert code == 0
    info = Embedder(out, providers="cpu").info
    recipe = json.loads(info.extra["quantization"])
    assert recipe["reduce_range"] is reduce and recipe["qat"]["weight_qmax"] == qmax
    gate = json.loads(info.extra["gate"])
    assert gate["agreement_mode"] == "nearest" and gate["max_fewshot_drop"] == 0.2
    # the stored int8 weights use the whole grid: some channel reaches +-qmax, none beyond
    model = onnx.load(str(out))
    deq = {n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    weights = [numpy_helper.to_array(t) for t in model.graph.initializer
               if t.name in deq and t.data_type == onnx.TensorProto.INT8 and t.dims]
    assert weights and max(int(abs(w.astype(int)).max()) for w in weights) == qmax
    capsys.readouterr()


def test_ranges_that_cannot_belong_to_an_activation_output_are_refused(mobilenet_model):
    """A learned range reaching far below zero for a Clip/Relu output means the simulation
    quantised some other tensor: refused, never handed to onnxruntime."""
    import onnx

    from tledge.errors import TledgeError
    from tledge.train.quantize import activation_overrides

    graph = onnx.load(str(mobilenet_model))
    model, _ = pretrained_model(ExportOptions(backbone="mobilenet_v2"))
    student = qat.copy.deepcopy(model)
    qat.fold_batchnorm(student)
    _, observers = qat.simulate_int8(student)
    good = [(fq.kind, 0.0, 6.0) if fq.kind == "conv" else (fq.kind, -8.0, 8.0)
            for fq in observers]
    assert len(activation_overrides(graph, good, 1, 1)) == len(good)
    bad = [(k, -20.0, 40.0) if k == "conv" else (k, lo, hi) for k, lo, hi in good]
    with pytest.raises(TledgeError, match="simulation does not match this graph"):
        activation_overrides(graph, bad, 1, 1)
