"""Ensembles: two pretrained backbones in one graph, one embedding (tledge.train.ensemble)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tledge.errors import TledgeError
from tledge.train.backbones import get_backbone, get_spec
from tledge.train.data import load_batch
from tledge.train.ensemble import MemberInput, member_names

PAIR = "mobilenet_v2+efficientnet_lite0"


def test_names_parse_and_refuse():
    assert member_names("mobilenet_v2") is None
    assert member_names("a+b") == ["a", "b"]
    for bad, why in [("a++b", "empty member"), ("a+a", "twice"), ("a+b+c+d+e", "at most"),
                     ("a +b", "without spaces"), ("a+b\t", "without spaces")]:
        with pytest.raises(TledgeError, match=why):
            member_names(bad)
    with pytest.raises(TledgeError, match="unknown backbone 'mobilenet_v3'"):
        get_spec("mobilenet_v3+efficientnet_lite0")


def test_spec_takes_the_largest_input_and_the_mean_threshold():
    spec = get_spec("mobilenet_v2+efficientnet_lite2")
    lite2, mnv2 = get_spec("efficientnet_lite2"), get_spec("mobilenet_v2")
    assert spec.preprocess == lite2.preprocess          # 260 px: nothing is upsampled
    assert spec.dim == lite2.dim + mnv2.dim == 2560
    assert spec.threshold == pytest.approx((lite2.threshold + mnv2.threshold) / 2)
    assert not spec.trainable and spec.weights is None


def test_member_input_equals_the_members_own_normalisation(sample_files):
    """Re-normalising inside the graph gives exactly what the member's own preprocessing
    gives on the same pixels (same crop size: an affine map, no resampling)."""
    outer, inner = get_spec("mobilenet_v2").preprocess, get_spec("efficientnet_lite0").preprocess
    files = sample_files[next(iter(sample_files))][:2]
    mapped = MemberInput(outer, inner)(load_batch(files, outer))
    direct = load_batch(files, inner)
    assert float((mapped - direct).abs().max()) < 1e-5
    smaller = MemberInput(get_spec("efficientnet_lite2").preprocess, inner)
    assert smaller(torch.zeros(1, 3, 260, 260)).shape == (1, 3, 224, 224)


@pytest.mark.slow
def test_ensemble_cosine_is_the_mean_of_member_cosines_and_it_exports(sample_files, tmp_path):
    from tledge.runtime.embedder import Embedder
    from tledge.train.export import ExportOptions, export_model
    from tledge.train.model import EmbeddingModel

    ensemble, spec, source = get_backbone(PAIR)
    assert "MobileNet_V2_Weights.IMAGENET1K_V1" in source and "EfficientNet-Lite0" in source
    files = [f for group in sample_files.values() for f in group[:1]][:3]
    with torch.no_grad():
        got = EmbeddingModel(ensemble).eval().embed(load_batch(files, spec.preprocess))
        member_cos = []
        for name in PAIR.split("+"):
            member, mspec, _ = get_backbone(name)
            e = F.normalize(member.forward_features(load_batch(files, mspec.preprocess)), dim=1)
            member_cos.append(e @ e.T)
    expected = (member_cos[0] + member_cos[1]) / 2
    assert torch.allclose(got @ got.T, expected, atol=1e-5)

    out = tmp_path / "pair.onnx"
    report = export_model(out, ExportOptions(backbone=PAIR, parity_limit=4))
    assert report.min_cosine >= 0.9999
    emb = Embedder(out, providers="cpu")
    assert emb.info.backbone == PAIR and emb.info.embedding_dim == 2560
    assert "EfficientNet-Lite0" in emb.info.weights
    vec = emb.embed(files)
    assert np.allclose(np.linalg.norm(vec, axis=1), 1.0, atol=1e-5)
    assert np.allclose(vec @ vec.T, expected.numpy(), atol=1e-3)


def test_an_ensemble_cannot_be_trained():
    with pytest.raises(TledgeError, match="cannot be trained"):
        get_backbone(PAIR, training=True)


@pytest.fixture(scope="module")
def tiny_pair() -> str:
    """An ensemble of two small seeded backbones with different inputs (64 px ImageNet
    pixels, 56 px [-1, 1] pixels): the affine map and the resize are both in the graph."""
    import dataclasses

    from tledge.artifact import Preprocess
    from tledge.train.registry import _REGISTRY, register

    if "tiny_half" not in _REGISTRY:
        register(dataclasses.replace(get_spec("tiny"), name="tiny_half",
                                     preprocess=Preprocess(56, 64, mean=(0.5,) * 3,
                                                           std=(0.5,) * 3)))
    return "tiny+tiny_half"


def test_an_ensemble_distils_for_int8_and_its_points_line_up(tiny_pair, tmp_path, capsys):
    """The members' input shift (a constant add) is not a quantised sum: the simulation's
    points are the tensors onnxruntime quantises, checked before any distillation."""
    from tledge.cli import main
    from tledge.runtime.embedder import Embedder
    from tledge.train.export import ExportOptions, export_model, pretrained_model
    from tledge.train.qat import simulated_kinds
    from tledge.train.quantize import check_lines_up

    fp32 = tmp_path / "pair.onnx"
    export_model(fp32, ExportOptions(backbone=tiny_pair, parity_limit=4))
    model, _ = pretrained_model(ExportOptions(backbone=tiny_pair))
    kinds = simulated_kinds(model)
    assert kinds.count("add") == 0 and kinds.count("conv") == 7  # outputs of 8 convs, not the last
    check_lines_up(fp32, kinds, 1, 1)
    with pytest.raises(TledgeError, match="not supported for this model"):
        check_lines_up(fp32, kinds + ["add"], 1, 1)
    out = tmp_path / "pair_int8.onnx"
    assert main(["export", "--backbone", tiny_pair, "-o", str(out), "--precision", "int8",
                 "--qat-steps", "2", "--qat-batch", "4", "--qat-images", "12", "--force"]) == 0
    assert Embedder(out, providers="cpu").info.backbone == tiny_pair
    capsys.readouterr()


def test_ensemble_options_reach_the_members_and_weights_are_refused(tiny_pair):
    with pytest.raises(TledgeError, match="--weights is for a single backbone"):
        get_backbone(tiny_pair, weights="x.pth")
    model, spec, _ = get_backbone(tiny_pair, pretrained=False)
    assert spec.members == ("tiny", "tiny_half") and model.dim == 64
