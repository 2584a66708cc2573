"""Integration tests with the real ImageNet models (marked slow: tens of seconds)."""

import csv

import numpy as np
import pytest
import torch

from tledge.runtime import Embedder, Gallery
from tledge.train.backbones import get_backbone
from tledge.train.data import image_files, load_batch
from tledge.train.export import ExportOptions, export_model, parity
from tledge.train.model import EmbeddingModel

from .conftest import shared_data

pytestmark = pytest.mark.slow


def imagenet_samples():
    root = shared_data("imagenet_samples")
    rows = list(csv.DictReader(open(root / "labels.tsv"), delimiter="\t"))
    return [root / r["relpath"] for r in rows], np.array([int(r["imagenet_class_index"]) for r in rows])


@pytest.mark.parametrize("name,minimum", [("mobilenet_v2", 0.75), ("efficientnet_lite0", 0.75),
                                          ("efficientnet_lite1", 0.75),
                                          ("efficientnet_lite2", 0.75)])
def test_weights_really_are_the_imagenet_ones(name, minimum):
    """Top-1 through the pretrained classifier on 50 ImageNet images (measured 84% / 88% /
    82% / 92%)."""
    paths, labels = imagenet_samples()
    model, spec, _ = get_backbone(name)
    with torch.no_grad():
        pred = model(load_batch(paths, spec.preprocess)).argmax(1).numpy()
    assert (pred == labels).mean() >= minimum


def test_mobilenet_parity_on_fifty_imagenet_images(mobilenet_model):
    paths, _ = imagenet_samples()
    model = EmbeddingModel(get_backbone("mobilenet_v2")[0]).eval()
    min_cos, mean_cos = parity(model, mobilenet_model, paths)
    assert len(paths) == 50 and min_cos >= 0.9999


def test_fast_frame_resize_barely_moves_embeddings(mobilenet_model, query_files):
    e = Embedder(mobilenet_model, providers="cpu")
    files = [f for fs in query_files.values() for f in fs]
    cos = (e.embed(files) * e.embed(files, fast_resize=True)).sum(1)
    assert cos.min() > 0.999


def test_efficientnet_lite0_exports_with_parity(tmp_path):
    paths, _ = imagenet_samples()
    report = export_model(tmp_path / "lite0.onnx", ExportOptions(
        backbone="efficientnet_lite0", parity_images=paths[0].parents[1], parity_limit=50))
    assert report.parity_images == 50 and report.min_cosine >= 0.9999
    e = Embedder(report.path, providers="cpu")
    assert e.info.preprocess.mean == (0.498, 0.498, 0.498)


@pytest.mark.parametrize("name,size", [("efficientnet_lite1", 240), ("efficientnet_lite2", 260)])
def test_larger_lites_export_with_parity_at_their_own_size(name, size, tmp_path):
    paths, _ = imagenet_samples()
    report = export_model(tmp_path / f"{name}.onnx", ExportOptions(
        backbone=name, parity_images=paths[0].parents[1], parity_limit=50))
    assert report.parity_images == 50 and report.min_cosine >= 0.9999
    info = Embedder(report.path, providers="cpu").info
    assert (info.preprocess.crop_size, info.backbone) == (size, name)


def test_failed_parity_writes_no_model(tmp_path):
    out = tmp_path / "strict.onnx"
    with pytest.raises(Exception, match="parity check failed"):
        export_model(out, ExportOptions(backbone="tiny", min_cosine=1.5, parity_limit=2))
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_one_shot_on_caltech_classes(mobilenet_model, tmp_path):
    """51-way 1-shot with the raw ImageNet MobileNetV2 (measured 72.5%), plus open-set."""
    root = shared_data("caltech101_fewshot")
    e = Embedder(mobilenet_model, providers="cpu")
    queries, truth = [], []
    with Gallery.create(tmp_path / "g", e) as g:
        for cls in sorted(p for p in root.iterdir() if p.is_dir()):
            files = image_files(cls)
            g.enroll(cls.name, files[:1])
            queries += files[10:14]
            truth += [cls.name] * 4
        got = g.classify_batch(e.embed(queries), threshold=-1)
        acc = np.mean([lab == t for (lab, _), t in zip(got, truth)])
        assert acc >= 0.65
        background = image_files(shared_data("caltech101_background"))
        bg_scores = [s for _, s in g.classify_batch(e.embed(background), threshold=-1)]
        known_scores = [s for (lab, s), t in zip(got, truth) if lab == t]
        auroc = np.mean([k > b for k in known_scores for b in bg_scores])
        assert auroc > 0.8


@pytest.mark.parametrize("model", ["default_model", "mobilenet_model"])
def test_demo_end_to_end(model, tmp_path, request):
    from tledge.demo import format_report, run_demo

    lines = []
    report = run_demo(tmp_path, model=request.getfixturevalue(model), providers="cpu",
                      say=lines.append)
    assert report.classes == 10 and report.shots == 30
    assert report.accuracy(known=True) >= 0.9
    assert report.accuracy(known=False) >= 0.7
    text = format_report(report)
    assert "tledge recognize --model" in text and "CPUExecutionProvider" in text
