"""Reduced-precision exports behind the accuracy gate, and the model file's portability."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

from tledge.runtime import Embedder
from tledge.runtime.images import list_images, load_image
from tledge.runtime.preprocess import preprocess_batch
from tledge.samples import sample_root
from tledge.train.gate import GateError, GateOptions, nn_agreement
from tledge.train.quantize import QuantizeOptions, reduce_precision

QUICK_GATE = GateOptions(episodes=20)


def test_fp16_passes_the_gate_and_records_it(tiny_model, tmp_path):
    out = tmp_path / "tiny_fp16.onnx"
    report = reduce_precision(tiny_model, out, QuantizeOptions(precision="fp16", gate=QUICK_GATE))
    assert report["passed"] and report["mean_cosine"] > 0.999 and report["images"] == 60
    assert "fewshot_change" in report
    info = Embedder(out, providers="cpu").info
    assert info.precision == "fp16"
    assert info.fingerprint != Embedder(tiny_model, providers="cpu").info.fingerprint
    stored = json.loads(info.extra["gate"])
    assert stored["mean_cosine"] == report["mean_cosine"] and stored["min_mean_cosine"] == 0.98


def test_gate_fails_a_broken_quantisation_and_writes_nothing(tiny_model, tmp_path):
    calib = tmp_path / "calib"
    calib.mkdir()
    Image.new("RGB", (64, 64)).save(calib / "black.png")  # ranges from one black image
    out = tmp_path / "broken_int8.onnx"
    options = QuantizeOptions(calib=calib, float_first=0, float_last=0, gate=QUICK_GATE)
    with pytest.raises(GateError, match="accuracy gate") as err:
        reduce_precision(tiny_model, out, options)
    assert "Nothing was written" in str(err.value)
    assert not out.exists() and not list(tmp_path.glob(".quant-*"))
    forced = QuantizeOptions(calib=calib, float_first=0, float_last=0,
                             gate=GateOptions(episodes=20, force=True))
    report = reduce_precision(tiny_model, out, forced)
    assert not report["passed"] and report["failures"]
    assert json.loads(Embedder(out, providers="cpu").info.extra["gate"])["passed"] is False


def test_int8_needs_an_fp32_parent(tiny_model, tmp_path):
    from tledge.errors import TledgeError

    half = tmp_path / "half.onnx"
    reduce_precision(tiny_model, half, QuantizeOptions(precision="fp16", gate=QUICK_GATE))
    with pytest.raises(TledgeError, match="reduce an fp32 model"):
        reduce_precision(half, tmp_path / "x.onnx", QuantizeOptions(gate=QUICK_GATE))


def test_nn_agreement_counts_answers_and_samples():
    ref = np.eye(4, dtype=np.float32)
    labels = np.array([0, 0, 1, 1])
    assert nn_agreement(ref, ref, labels) == (1.0, 1.0)
    swapped = ref[[0, 1, 3, 2]]  # queries 1 and 3 now nearest to other samples
    label_agree, sample_agree = nn_agreement(ref, swapped, labels)
    assert sample_agree <= label_agree


def test_opencv_dnn_loads_the_model_and_gives_the_same_embedding(tiny_model):
    import cv2

    embedder = Embedder(tiny_model, providers="cpu")
    files = list_images(sample_root())[:4]
    x = preprocess_batch([load_image(f) for f in files], embedder.info.preprocess)
    net = cv2.dnn.readNetFromONNX(str(tiny_model))
    out = []
    for i in range(len(x)):
        net.setInput(x[i:i + 1])
        out.append(net.forward()[0])
    got = np.array(out)
    got /= np.linalg.norm(got, axis=1, keepdims=True)
    cos = np.sum(got * embedder.embed_tensor(x), axis=1)
    assert cos.min() > 0.9999


def test_cli_quantize_reports_the_gate_and_fails_cleanly(tiny_model, tmp_path, capsys):
    from tledge.cli import main

    out = tmp_path / "cli_fp16.onnx"
    assert main(["quantize", str(tiny_model), "-o", str(out), "--precision", "fp16"]) == 0
    printed = capsys.readouterr().out
    assert "gate on 60 images: mean cosine" in printed and out.is_file()
    calib = tmp_path / "calib"
    calib.mkdir()
    Image.new("RGB", (64, 64)).save(calib / "black.png")
    bad = tmp_path / "cli_int8.onnx"
    assert main(["quantize", str(tiny_model), "-o", str(bad), "--calib", str(calib),
                 "--float-first", "0", "--float-last", "0"]) == 1
    assert "failed the accuracy gate" in capsys.readouterr().err and not bad.exists()


X86_VNNI = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n"
X86_AVX2 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n"
ARM_DOT = "processor\t: 0\nFeatures\t: fp asimd asimddp crc32\n"


def test_fast_int8_dot_is_read_from_cpuinfo():
    from tledge.runtime.cpu import cpu_flags, fast_int8_dot

    assert fast_int8_dot(cpu_flags(X86_VNNI)) == "avx512_vnni"
    assert fast_int8_dot(cpu_flags(ARM_DOT)) == "asimddp"
    assert fast_int8_dot(cpu_flags(X86_AVX2)) is None
    assert fast_int8_dot({"avx_vnni", "amx_int8"}) == "amx_int8"  # best first
    assert cpu_flags("no flags here") == set()


@pytest.mark.parametrize("fast,expect_reduce", [("avx512_vnni", False), (None, True)])
def test_auto_weight_range_follows_the_detected_cpu(tiny_model, tmp_path, monkeypatch,
                                                    fast, expect_reduce):
    import tledge.train.quantize as Q

    monkeypatch.setattr(Q, "fast_int8_dot", lambda: fast)
    out = tmp_path / "auto_int8.onnx"
    options = QuantizeOptions(reduce_range=None, calib_limit=8,
                              gate=GateOptions(episodes=5, force=True))
    reduce_precision(tiny_model, out, options)
    made = json.loads(Embedder(out, providers="cpu").info.extra["quantization"])
    assert made["reduce_range"] is expect_reduce and made["reduce_range_option"] is None
    assert made["built_on_fast_int8_dot"] == fast
    # An explicit choice wins over the detection, and the detection is still recorded.
    reduce_precision(tiny_model, out, dataclasses.replace(options, reduce_range=True))
    made = json.loads(Embedder(out, providers="cpu").info.extra["quantization"])
    assert made["reduce_range"] is True and made["built_on_fast_int8_dot"] == fast


def test_a_full_8bit_model_warns_on_a_cpu_without_fast_int8(tiny_model, tmp_path, monkeypatch,
                                                            caplog):
    """8-bit weights saturate on x86 without VNNI: loading such a model there says so."""
    import tledge.runtime.cpu as C
    import tledge.train.quantize as Q

    monkeypatch.setattr(Q, "fast_int8_dot", lambda: "avx512_vnni")
    eight, seven = tmp_path / "w8.onnx", tmp_path / "w7.onnx"
    options = QuantizeOptions(reduce_range=None, calib_limit=8,
                              gate=GateOptions(episodes=5, force=True))
    reduce_precision(tiny_model, eight, options)
    reduce_precision(tiny_model, seven, dataclasses.replace(options, reduce_range=True))
    monkeypatch.setattr(C, "cpu_flags", lambda: {"fpu", "avx2"})  # readable flags
    for fast, path, warns in [(None, eight, True), ("avx_vnni", eight, False),
                              (None, seven, False), (None, tiny_model, False)]:
        monkeypatch.setattr(C, "fast_int8_dot", lambda fast=fast: fast)
        caplog.clear()
        with caplog.at_level("WARNING", logger="tledge.runtime.embedder"):
            Embedder(path, providers="cpu")
        said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert bool(said) is warns, (path.name, fast, said)
        if warns:
            assert "full 8-bit weights (built on avx512_vnni)" in said[0]
            assert "this CPU has no VNNI" in said[0] and "--weight-bits 7" in said[0]
    # where the features cannot be read (no /proc/cpuinfo), the warning says so
    extra = Embedder(eight, providers="cpu").info.extra
    monkeypatch.setattr(C, "cpu_flags", lambda: set())
    monkeypatch.setattr(C.platform, "system", lambda: "Windows")
    assert "cannot read this CPU's features" in C.int8_weight_warning(extra,
                                                                       "CPUExecutionProvider")
    assert C.int8_weight_warning(extra, "CPUExecutionProvider", fast="asimddp") is None
    assert "this CPU has no VNNI" in C.int8_weight_warning(extra, "CPUExecutionProvider", "")
    assert C.int8_weight_warning(extra, "CUDAExecutionProvider", "") is None
