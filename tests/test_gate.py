"""The int8 gate judges the answers users see: each threshold decides on its own, the
agreement follows the gallery's matching mode, nearest-sample agreement is only reported."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from tledge.errors import TledgeError
from tledge.runtime import Embedder
from tledge.train.gate import GateOptions, failures, gate, nn_agreement, prototype_agreement

PASSING = {"mean_cosine": 0.99, "top1_agreement": 0.99, "nearest_sample_agreement": 0.5,
           "fewshot_change": -0.005}


@pytest.mark.parametrize("key,value,threshold,word", [
    ("mean_cosine", 0.979, "min_mean_cosine", "mean cosine"),
    ("top1_agreement", 0.97, "min_top1_agreement", "prototype agreement"),
    ("fewshot_change", -0.011, "max_fewshot_drop", "drops"),
])
def test_decision_follows_each_threshold(key, value, threshold, word):
    options = GateOptions()
    assert failures(PASSING, options) == []  # nearest-sample agreement 50%: not gated
    bad = {**PASSING, key: value}
    (reason,) = failures(bad, options)
    assert word in reason
    # Loosen only that threshold past the value: the same report passes.
    loose = {"min_mean_cosine": 0.97, "min_top1_agreement": 0.96, "max_fewshot_drop": 0.02}
    assert failures(bad, dataclasses.replace(options, **{threshold: loose[threshold]})) == []


def test_fewshot_gains_never_fail_and_missing_fewshot_is_not_a_drop():
    assert failures({**PASSING, "fewshot_change": 0.2}, GateOptions()) == []
    report = {k: v for k, v in PASSING.items() if k != "fewshot_change"}
    assert failures(report, GateOptions()) == []


def test_prototype_agreement_ignores_near_ties_between_samples():
    # Two classes, two samples each; queries are the odd rows. The candidate moves one
    # query to tie between samples of different classes, but class means still separate.
    ref = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], np.float32)
    labels = np.array([0, 0, 1, 1])
    got = ref.copy()
    got[1] = [0.55, 0.45]
    assert prototype_agreement(ref, got, labels) == 1.0
    assert nn_agreement(ref, ref, labels) == (1.0, 1.0)
    flipped = ref.copy()
    flipped[1] = [0.1, 0.9]  # now closer to class 1 in every sense
    assert prototype_agreement(ref, flipped, labels) == 0.5


def test_gate_reports_both_agreements_and_gates_on_its_mode(tiny_model, other_model):
    ref = Embedder(tiny_model, providers="cpu")
    got = Embedder(other_model, providers="cpu")
    for mode in ("prototype", "nearest"):
        report = gate(ref, got, GateOptions(mode=mode, episodes=10, force=True))
        assert report["agreement_mode"] == mode and report["images"] == 60
        assert {"nearest_sample_agreement", "same_nearest_sample", "fewshot_change"} <= set(
            report)
        if mode == "nearest":
            assert report["top1_agreement"] == report["nearest_sample_agreement"]
        assert report["passed"] == (not report["failures"])
        assert report["failures"] == failures(report, GateOptions(mode=mode))


def test_unknown_mode_is_refused(tiny_model):
    e = Embedder(tiny_model, providers="cpu")
    with pytest.raises(TledgeError, match="matching mode"):
        gate(e, e, GateOptions(mode="cosine"))
