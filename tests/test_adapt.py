"""Domain adaptation and multi-task training with the tiny backbone on real images, with a
synthetic domain shift (colour-inverted copies): every method runs, lowers its losses and
exports; the GRL really reverses gradients; heads agree between PyTorch and ONNX Runtime."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from tledge import evaluate
from tledge.errors import TledgeError
from tledge.runtime import Embedder
from tledge.samples import enroll_dir, query_dir
from tledge.train import alignment as A
from tledge.train.adapt import AdaptConfig, adapt
from tledge.train.export import ExportOptions, export_checkpoint
from tledge.train.multitask import MultitaskConfig, TaskSpec, multitask

FAST = dict(backbone="tiny", unfreeze=2, epochs=3, steps_per_epoch=8, batch=16, lr=3e-3,
            backbone_lr_mult=0.3, trade_off=0.3, views=2, select="last")


@pytest.fixture(scope="module")
def domains(tmp_path_factory):
    """source/<class>/ (the shipped photos), target/<class>/ (the same, colour-inverted)."""
    root = tmp_path_factory.mktemp("domains")
    for d in sorted(p for p in enroll_dir().iterdir() if p.is_dir()):
        for f in sorted(d.glob("*.jpg")) + sorted((query_dir() / d.name).glob("*.jpg")):
            name = f"{f.parent.parent.name}-{f.name}"
            for dom, fn in (("photo", lambda im: im), ("inverted", ImageOps.invert)):
                out = root / dom / d.name / name
                out.parent.mkdir(parents=True, exist_ok=True)
                fn(Image.open(f).convert("RGB")).save(out, quality=92)
    return root


def test_gradient_reversal_flips_and_scales_the_gradient():
    x = torch.randn(4, 3, requires_grad=True)
    (A.GradientReversal()(x, 0.5) * torch.arange(3.0)).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), -0.5 * np.tile(np.arange(3.0), (4, 1)))
    y = torch.randn(5, requires_grad=True)
    assert torch.equal(A.GradientReversal()(y, 1.0), y)  # identity forward


def test_dann_ramp_and_the_discriminator_learning_against_the_features():
    assert A.dann_coefficient(0.0) == 0.0 and A.dann_coefficient(1.0) > 0.999
    assert A.dann_coefficient(0.1) < A.dann_coefficient(0.5)
    torch.manual_seed(0)
    feats = torch.nn.Linear(8, 8)
    loss_fn = A.DomainAdversarialLoss(A.DomainDiscriminator(8, hidden=16))
    xs, xt = torch.randn(32, 8) + 1.0, torch.randn(32, 8) - 1.0
    loss = loss_fn(feats(xs), feats(xt), coeff=1.0)
    loss.backward()
    # the discriminator descends the loss, the features (through the GRL) ascend it
    w = feats.weight.detach().clone()
    with torch.no_grad():
        feats.weight -= 0.1 * feats.weight.grad
    assert loss_fn(feats(xs), feats(xt), coeff=1.0) > loss
    feats.weight.data = w


def test_coral_and_mcc_behave():
    torch.manual_seed(0)
    a = torch.randn(64, 10)
    assert A.coral_loss(a, a) == 0
    assert A.coral_loss(a, 3 * torch.randn(64, 10)) > 0.01
    confident = torch.eye(5).repeat(4, 1) * 20
    uniform = torch.zeros(20, 5)
    assert A.mcc_loss(confident) < 0.05 < A.mcc_loss(uniform)
    probs = torch.softmax(confident, 1)
    assert A.information_maximisation(probs) > A.information_maximisation(torch.full((20, 5), .2))


def test_adabn_reestimates_statistics_and_the_swap_restores_them():
    bn = torch.nn.Sequential(torch.nn.BatchNorm1d(3))
    data = [torch.randn(50, 3) * 2 + 5 for _ in range(4)]
    before = A.batchnorm_stats(bn)
    assert A.adapt_batchnorm(bn, iter(data)) == 200
    np.testing.assert_allclose(bn[0].running_mean, torch.cat(data).mean(0), atol=1e-4)
    target = A.batchnorm_stats(bn)
    bn.load_state_dict({**bn.state_dict(), **{k: v for k, v in before.items()}})
    x = torch.randn(6, 3, requires_grad=True)
    with A.use_batchnorm_stats(bn, target):
        y = bn.eval()(x)
    torch.testing.assert_close(bn[0].running_mean, before["0.running_mean"])
    y.sum().backward()  # the graph built with the swapped statistics still back-propagates
    assert x.grad is not None


@pytest.fixture(scope="module")
def feature_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("feature-cache")


@pytest.mark.parametrize("method", A.METHODS)
def test_each_method_runs_learns_and_writes_a_run(domains, tmp_path, method, feature_cache):
    run = tmp_path / method
    summary = adapt(domains / "photo", domains / "inverted", run,
                    AdaptConfig(method=method, **FAST), target_eval=domains / "inverted",
                    cache_dir=feature_cache)  # later methods reuse the earlier ones' parts
    assert list(feature_cache.glob("cache-*.pt"))
    for name in ("config.json", "metrics.csv", "curves.png", "features.png", "best.pt",
                 "summary.json"):
        assert (run / name).is_file(), name
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [-1, 0, 1, 2]
    cls = [float(r["cls_loss"]) for r in rows[1:]]
    assert cls[-1] < cls[0]
    if method in ("dann", "coral", "mcc"):
        assert all(float(r["align_loss"]) > 0 for r in rows[1:])
    if method == "dann":
        assert all(0 <= float(r["disc_accuracy"]) <= 1 for r in rows[1:])
    assert 0 <= summary["target_accuracy"] <= 1 and summary["selected_epoch"] == 2


def test_adapted_model_exports_and_its_head_matches_pytorch(domains, tmp_path):
    run = tmp_path / "dann"
    summary = adapt(domains / "photo", domains / "inverted", run,
                    AdaptConfig(method="dann", **FAST), target_eval=domains / "inverted")
    onnx_path = tmp_path / "adapted.onnx"
    report = export_checkpoint(run, onnx_path, ExportOptions(parity_limit=8))
    assert report.min_cosine >= 0.9999
    info = Embedder(onnx_path, providers="cpu").info
    assert [h.name for h in info.heads] == ["classes"] and "adapt" in info.weights
    res = evaluate.classify(onnx_path, domains / "inverted", providers="cpu")
    assert abs(res["accuracy"] - summary["target_accuracy"]) <= 1 / res["images"] + 1e-9
    assert set(res["per_class"]) == set(info.heads[0].labels)
    few = evaluate.fewshot(onnx_path, domains / "inverted", evaluate.Episodes(5, 1, 5, 20, 0),
                           providers="cpu")  # the few-shot evaluation takes adapted models too
    assert few["episodes"] == 20 and 0 < few["accuracy"] <= 1


def test_adapt_refuses_bad_input(domains, tmp_path):
    with pytest.raises(TledgeError, match="unknown method"):
        adapt(domains / "photo", domains / "inverted", tmp_path / "r",
              AdaptConfig(method="danm", **{k: v for k, v in FAST.items()}))
    (tmp_path / "empty").mkdir()
    with pytest.raises(TledgeError, match="no images"):
        adapt(domains / "photo", tmp_path / "empty", tmp_path / "r", AdaptConfig(**FAST))


def test_multitask_exports_every_head_and_the_runtime_returns_them_in_one_call(domains,
                                                                                tmp_path,
                                                                                capsys):
    # "class" is a Python keyword: still a fine head name (the exporter once choked on it)
    spec = TaskSpec.from_tree(domains, ["domain", "class"])
    assert spec.names["domain"] == ("inverted", "photo") and len(spec.names["class"]) == 10
    run = tmp_path / "mt"
    summary = multitask(spec, run, MultitaskConfig(backbone="tiny", epochs=3, steps_per_epoch=8,
                                                   batch=24, lr=3e-3, backbone_lr_mult=1.0))
    assert set(summary) >= {"val_accuracy_domain", "val_accuracy_class"}
    assert summary["val_accuracy_domain"] > 0.6  # inverted vs not is easy even for tiny
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert float(rows[-1]["loss_domain"]) < float(rows[0]["loss_domain"])
    assert "weight_class" in rows[0]  # uncertainty weighting learns per-task weights
    path = tmp_path / "mt.onnx"
    export_checkpoint(run, path, ExportOptions(parity_limit=8))
    embedder = Embedder(path, providers="cpu")
    assert {h.name: h.labels for h in embedder.info.heads} == {
        "domain": ("inverted", "photo"), "class": spec.names["class"]}
    files = sorted((domains / "inverted" / "cup").glob("*.jpg"))[:3]
    out = embedder.run(files)
    assert out.vectors.shape == (3, 32)
    assert out.heads["domain"].shape == (3, 2) and out.heads["class"].shape == (3, 10)
    np.testing.assert_allclose(out.heads["class"].sum(1), 1.0, atol=1e-5)
    res = evaluate.classify(path, domains / "inverted", head="class", providers="cpu")
    assert res["head"] == "class" and res["images"] == 60
    with pytest.raises(TledgeError, match="no head 'colour'"):
        evaluate.classify(path, domains / "inverted", head="colour", providers="cpu")
    from tledge.cli import main

    assert main(["eval", "classify", str(domains / "photo"), "--model", str(path), "--head",
                 "domain", "--providers", "cpu", "--json"]) == 1  # folders are not domains
    assert main(["eval", "classify", str(domains), "--model", str(path), "--head", "domain",
                 "--providers", "cpu", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["head"] == "domain" and printed["images"] == 120
    assert set(printed["per_class"]) == {"inverted", "photo"} and 0 <= printed["accuracy"] <= 1


def test_task_csv_with_missing_labels(domains, tmp_path):
    files = sorted((domains / "photo").rglob("*.jpg"))[:12]
    spec_path = tmp_path / "tasks.csv"
    with open(spec_path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "object", "shade"])
        for i, f in enumerate(files):
            w.writerow([f, f.parent.name, "" if i % 3 == 0 else ("dark", "light")[i % 2]])
    spec = TaskSpec.from_csv(spec_path)
    assert (spec.labels["shade"] == -1).sum() == 4 and spec.names["shade"] == ("dark", "light")
    spec_path.write_text("image,object\nmissing.jpg,cup\n")
    with pytest.raises(TledgeError, match="not found"):
        TaskSpec.from_csv(spec_path)


def test_classify_needs_a_head(tiny_model, domains):
    with pytest.raises(TledgeError, match="no classification head"):
        evaluate.classify(tiny_model, domains / "photo", providers="cpu")
