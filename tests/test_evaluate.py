"""Evaluation figures against brute-force numpy references."""

import json

import numpy as np
import pytest

from tledge import evaluate as ev
from tledge.cli import main
from tledge.runtime import Gallery
from tledge.samples import enroll_dir, query_dir, unknown_dir

from .test_finetune import dataset  # noqa: F401 - fixture


def test_episode_accuracy_matches_numpy(embedder, dataset):  # noqa: F811
    episodes = ev.Episodes(way=4, shot=1, query=3, episodes=15, seed=3)
    vectors = ev.embed_folder(embedder, dataset)
    plan = episodes.plan({c: len(v) for c, v in vectors.items()})
    got = ev.run_episodes(embedder, vectors, plan)["per_episode"]
    expected = []
    for episode in plan:
        labels = [c for c, _, _ in episode]
        protos = np.stack([vectors[c][s].mean(0) for c, s, _ in episode])
        protos /= np.linalg.norm(protos, axis=1, keepdims=True)
        correct = [labels[int(np.argmax(protos @ vectors[c][qi]))] == c
                   for c, _, q in episode for qi in q]
        expected.append(np.mean(correct))
    np.testing.assert_allclose(got, expected)


def test_plan_is_seeded_and_all_way_uses_every_class():
    counts = {f"c{i}": 6 for i in range(7)}
    a = ev.Episodes(3, 1, 2, 5, seed=1).plan(counts)
    assert a == ev.Episodes(3, 1, 2, 5, seed=1).plan(counts)
    assert a != ev.Episodes(3, 1, 2, 5, seed=2).plan(counts)
    assert len(ev.Episodes(None, 1, 2, 1, 0).plan(counts)[0]) == 7
    with pytest.raises(Exception, match="needs 9 classes"):
        ev.Episodes(9, 1, 2, 1, 0).plan(counts)


def test_auroc_matches_pairwise_count():
    rng = np.random.default_rng(0)
    pos, neg = rng.normal(1, 1, 40), rng.normal(0, 1, 30)
    pos[:3] = neg[:3]  # ties count half
    brute = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    assert ev.auroc(pos, neg) == pytest.approx(brute)


def test_mean_ci95():
    mean, ci = ev.mean_ci95(np.array([0.5, 0.7, 0.6, 0.8]))
    assert mean == pytest.approx(0.65) and ci == pytest.approx(1.96 * np.std([0.5, 0.7, 0.6, 0.8], ddof=1) / 2)


def test_compare_a_model_with_itself_differs_by_zero(tiny_model, dataset):  # noqa: F811
    res = ev.compare(tiny_model, tiny_model, dataset, ev.Episodes(3, 1, 2, 10, 0), "cpu")
    assert res["difference"] == 0.0 and res["a"]["accuracy"] == res["b"]["accuracy"]


def test_cli_eval_fewshot_json_with_unknowns(tiny_model, dataset, capsys):  # noqa: F811
    code = main(["eval", "fewshot", str(dataset), "--model", str(tiny_model), "--way", "all",
                 "--shot", "1", "--query", "2", "--episodes", "5", "--unknown", str(unknown_dir()),
                 "--json"])
    res = json.loads(capsys.readouterr().out)
    assert code == 0 and res["way"] == 10 and 0 <= res["accuracy"] <= 1 and res["ci95"] >= 0
    assert 0 <= res["auroc"] <= 1 and -1 <= res["threshold_at_far"] <= 1.01


def test_calibrate_sets_a_threshold_from_the_gallery(tmp_path, embedder):
    with Gallery.create(tmp_path / "g", embedder) as g:
        for d in sorted(enroll_dir().iterdir()):
            g.enroll(d.name, sorted(d.glob("*.jpg")) + sorted((query_dir() / d.name).glob("*.jpg")))
        res = ev.calibrate(g, far=0.1)
        labels, vecs = g.vectors()
    # brute force: impostor scores accepted at the threshold are at most 10%
    labels = np.array(labels)
    impostor = []
    for v, lab in zip(vecs, labels):
        others = [vecs[labels == c].mean(0) for c in set(labels) if c != lab]
        impostor.append(max(float(v @ (o / np.linalg.norm(o))) for o in others))
    assert np.mean(np.array(impostor) >= res["threshold"]) <= 0.1
    assert res["samples"] == 60
