"""Fine-tuning with the tiny backbone on the shipped images: every mode and objective runs,
writes a complete run directory, resumes, and exports."""

import csv
import json

import numpy as np
import pytest
import torch

from tledge.runtime import Embedder
from tledge.samples import enroll_dir, query_dir
from tledge.train.engine import schedule
from tledge.train.export import ExportOptions, export_checkpoint, load_checkpoint
from tledge.train.finetune import FinetuneConfig, finetune

FAST = dict(backbone="tiny", epochs=2, steps_per_epoch=3, way=4, shot=2, query=2, views=2,
            lr=1e-2, patience=5)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Ten classes of six real images (the shipped enroll + query shots)."""
    root = tmp_path_factory.mktemp("data")
    for d in sorted(enroll_dir().iterdir()):
        if d.is_dir():
            (root / d.name).mkdir()
            for f in list(d.glob("*.jpg")) + list((query_dir() / d.name).glob("*.jpg")):
                (root / d.name / f"{f.parent.parent.name}-{f.name}").symlink_to(f)
    return root


@pytest.mark.parametrize("mode,objective,anchor", [("head", "ce", 1.0), ("partial", "proto", 1.0),
                                                   ("partial", "proto", 0.0),
                                                   ("partial", "supcon", 1.0),
                                                   ("full", "cosface", 1.0), ("full", "ce", 0.0)])
def test_modes_and_objectives_write_a_run(dataset, tmp_path, mode, objective, anchor):
    run = tmp_path / "run"
    config = FinetuneConfig(mode=mode, objective=objective, unfreeze=1, anchor=anchor, **FAST)
    summary = finetune(dataset, run, config)
    assert summary["epochs_run"] >= 2
    for name in ("config.json", "best.pt", "last.pt", "metrics.csv", "curves.png"):
        assert (run / name).is_file(), name
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert rows[0]["epoch"] == "-1"  # the pretrained baseline is measured first
    assert all(0.0 <= float(r["val_accuracy"]) <= 1.0 for r in rows)
    ckpt = load_checkpoint(run)
    assert ckpt.config["objective"] == objective and ckpt.center.shape == (32,)
    assert json.loads((run / "config.json").read_text())["mode"] == mode


def test_training_changes_only_unfrozen_stages(dataset, tmp_path):
    from tledge.train.backbones import get_backbone

    finetune(dataset, tmp_path / "r", FinetuneConfig(mode="partial", objective="proto", unfreeze=1,
                                                     **{**FAST, "epochs": 3}))
    trained = load_checkpoint(tmp_path / "r").model
    original = get_backbone("tiny")[0].state_dict()
    changed = {k.split(".")[1] for k in original if "weight" in k and not torch.equal(original[k], trained[k])}
    assert changed <= {"3"}  # only the last of the four stages


def test_resume_continues_from_the_last_epoch(dataset, tmp_path):
    run = tmp_path / "run"
    finetune(dataset, run, FinetuneConfig(objective="ce", mode="head", **FAST))
    more = FinetuneConfig(objective="ce", mode="head", **{**FAST, "epochs": 4})
    summary = finetune(dataset, run, more, resume=True)
    epochs = [int(r["epoch"]) for r in csv.DictReader(open(run / "metrics.csv"))]
    assert epochs == [-1, 0, 1, 2, 3] and summary["epochs_run"] == 5


def test_ce_checkpoint_exports_embedding_and_class_head(dataset, tmp_path):
    run = tmp_path / "run"
    finetune(dataset, run, FinetuneConfig(objective="ce", mode="head", **{**FAST, "epochs": 4}))
    report = export_checkpoint(run, tmp_path / "m.onnx", ExportOptions(parity_limit=4))
    e = Embedder(report.path, providers="cpu")
    assert [h.name for h in e.info.heads] == ["classes"]
    assert len(e.info.heads[0].labels) == 10 and e.info.extra["centering"] == "cl2n"
    files = sorted(dataset.glob("*/*.jpg"))[:6]
    out = e.run(files)
    assert out.vectors.shape == (6, 32)
    np.testing.assert_allclose(out.heads["classes"].sum(1), 1.0, atol=1e-5)
    # a checkpoint from before heads were generic (``head`` holds the LinearHead) still exports
    ckpt = torch.load(run / "best.pt", weights_only=True)
    heads = ckpt.pop("heads")
    ckpt["head"] = {f"fc.{k}": v for k, v in heads["classes"]["state"].items()}
    old = tmp_path / "old"
    old.mkdir()
    torch.save(ckpt, old / "best.pt")
    again = Embedder(export_checkpoint(old, tmp_path / "old.onnx",
                                       ExportOptions(parity_limit=2)).path, providers="cpu")
    np.testing.assert_allclose(again.run(files).heads["classes"], out.heads["classes"],
                               atol=1e-5)


def test_centering_is_baked_into_the_graph(dataset, tmp_path):
    run = tmp_path / "run"
    finetune(dataset, run, FinetuneConfig(objective="proto", mode="partial", unfreeze=1, **FAST))
    centred = Embedder(export_checkpoint(run, tmp_path / "c.onnx", ExportOptions(parity_limit=2)).path)
    plain = Embedder(export_checkpoint(run, tmp_path / "p.onnx", ExportOptions(parity_limit=2),
                                       centering=False).path)
    files = sorted(dataset.glob("*/*.jpg"))[:20]
    a, b = centred.embed(files), plain.embed(files)
    assert np.allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5)
    assert a.mean(0) @ a.mean(0) < b.mean(0) @ b.mean(0)  # centring spreads the vectors out


def test_bad_options_are_explained(dataset, tmp_path):
    from tledge.errors import TledgeError

    with pytest.raises(TledgeError, match="metric objectives need --mode partial or full"):
        finetune(dataset, tmp_path, FinetuneConfig(mode="head", objective="proto"))
    with pytest.raises(TledgeError, match="Did you mean 'supcon'"):
        finetune(dataset, tmp_path, FinetuneConfig(objective="supcom"))


def test_schedule_warms_up_then_decays():
    f = schedule(100, 10)
    values = [f(s) for s in range(100)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert values[50] < values[20] and values[99] < 0.01
