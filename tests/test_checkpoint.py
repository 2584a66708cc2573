"""The checkpoint module: save and load side by side, the earlier ``head`` format, clear
refusals, and the resumable state the engine writes."""

import numpy as np
import pytest
import torch

from tledge.train import checkpoint as C
from tledge.train.backbones import get_backbone
from tledge.train.engine import Algorithm, Plan, Run, Trainer, fit
from tledge.train.protos import compute_prototypes, ncm_accuracy, open_set_threshold
from tledge.train.report import MetricsLog


def _feats(seed=0, n=40, dim=8, classes=4):
    g = torch.Generator().manual_seed(seed)
    labels = np.repeat(np.arange(classes), n // classes)
    x = torch.randn(n, dim, generator=g) + 6 * torch.eye(dim)[labels]
    return x, labels


def test_save_and_load_round_trip(tmp_path):
    backbone = get_backbone("tiny")[0]
    head = torch.nn.Linear(32, 3)
    train, val = _feats(0, dim=32, classes=3, n=30), _feats(1, dim=32, classes=3, n=30)
    ckpt = C.make_checkpoint("finetune", {"mode": "partial", "objective": "ce"}, "tiny",
                             ["a", "b", "c"], backbone, {"classes": (["a", "b", "c"], head)},
                             train[0].mean(0), train, val)
    C.save(ckpt, tmp_path / "best.pt")
    back = C.load(tmp_path)  # a run directory reads its best.pt
    assert back.recipe == "partial/ce" and back.classes == ["a", "b", "c"]
    assert back.heads["classes"].labels == ["a", "b", "c"]
    torch.testing.assert_close(back.heads["classes"].state["weight"], head.weight)
    assert back.threshold(True) == pytest.approx(
        open_set_threshold(train, val, train[0].mean(0), False))
    assert back.threshold(False) == ckpt.threshold_l2n
    assert set(back.model) == set(backbone.state_dict())


def test_the_earlier_head_format_still_loads(tmp_path):
    old = {"format": C.FORMAT, "kind": "finetune", "config": {"objective": "ce"},
           "backbone": "tiny", "classes": ["x", "y"], "model": {},
           "head": {"fc.weight": torch.ones(2, 32), "fc.bias": torch.zeros(2)},
           "center": torch.zeros(32)}
    torch.save(old, tmp_path / "old.pt")
    ckpt = C.load(tmp_path / "old.pt")
    assert list(ckpt.heads) == ["classes"] and ckpt.heads["classes"].labels == ["x", "y"]
    assert ckpt.heads["classes"].state["weight"].shape == (2, 32)
    assert ckpt.threshold(True) is None  # not recorded then: the export uses the backbone's


def test_what_is_not_a_checkpoint_is_refused(tmp_path):
    with pytest.raises(C.CheckpointError, match="no checkpoint at"):
        C.load(tmp_path)
    torch.save({"w": torch.zeros(1)}, tmp_path / "best.pt")
    with pytest.raises(C.CheckpointError, match="not a tledge checkpoint"):
        C.load(tmp_path)
    (tmp_path / "best.pt").write_bytes(b"junk")
    with pytest.raises(C.CheckpointError, match="not a readable"):
        C.load(tmp_path)


def test_prototypes_are_the_normalised_class_means():
    x, y = _feats()
    classes, protos = compute_prototypes(x, y)
    unit = x / x.norm(dim=1, keepdim=True)
    for c in classes:
        ref = unit[torch.as_tensor(y == c)].mean(0)
        torch.testing.assert_close(protos[c], ref / ref.norm())
    assert ncm_accuracy((x, y), (x, y)) == 1.0


class _Line(Algorithm):
    """y = w x by least squares: the smallest algorithm the engine can run."""

    def __init__(self) -> None:
        self.lin = torch.nn.Linear(1, 1)
        self.x = torch.linspace(-1, 1, 32)[:, None]

    def modules(self):
        return {"lin": self.lin}

    def param_groups(self):
        return [{"params": self.lin.parameters(), "lr": 0.1}]

    def batches(self, epoch, dist):
        for _ in range(5):
            yield self.x

    def loss(self, x):
        loss = ((self.lin(x) - 3 * x) ** 2).mean()
        return loss, {"loss": loss.item()}

    def evaluate(self, epoch):
        return {"w": float(self.lin.weight.detach())}

    def score(self, row):
        return -abs(row["w"] - 3)

    def checkpoint(self):
        return C.Checkpoint("test", {}, "none", [], self.lin.state_dict())


def test_resume_restores_the_training_state(tmp_path):
    def train(resume, crash_at=None):
        torch.manual_seed(0)
        run, algo = Run.start(tmp_path, "cpu", 0), _Line()
        log, steps = MetricsLog(tmp_path), [0]

        def crash(step, logs):
            steps[0] += 1
            if steps[0] == crash_at:
                raise KeyboardInterrupt  # the third epoch dies; last.pt holds the second

        fit(algo, run, Plan(4, 5, resumable=True), log, resume, on_step=crash)
        return algo, log

    straight, _ = train(False)
    with pytest.raises(KeyboardInterrupt):
        train(False, crash_at=12)
    resumed, log = train(True)
    assert [r["epoch"] for r in log.rows] == [0, 1, 2, 3]
    torch.testing.assert_close(resumed.lin.weight, straight.lin.weight)
    assert C.load(tmp_path).model.keys() == {"weight", "bias"}
    assert isinstance(Trainer(_Line(), Run.start(None, "cpu", 0), 10).sched.get_last_lr()[0],
                      float)
