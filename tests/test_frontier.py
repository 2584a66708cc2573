"""The frontier against brute-force numpy references, on tiny exported models and real images."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tledge import frontier as fr
from tledge.evaluate import embed_folder
from tledge.frontier_report import format_frontier, plot_frontier, write_json
from tledge.runtime.embedder import Embedder

FAST = fr.FrontierOptions(episodes=6, all_way_episodes=3, query=1, repeats=4,
                          latency_images=2, threads=1)




@pytest.fixture(scope="module")
def result(tiny_model, classes, tmp_path_factory):
    from .conftest import perturbed_copy

    other = perturbed_copy(tiny_model, tmp_path_factory.mktemp("m") / "other.onnx", 0.3)
    return fr.frontier([tiny_model, other], classes, FAST)


def brute_force(vectors: dict[str, np.ndarray], plan, unknowns=None) -> tuple[list, list]:
    """Per-episode prototype accuracy and AUROC (correct known vs unknown, pairwise)."""
    accs, aurocs = [], []
    for i, episode in enumerate(plan):
        labels = [c for c, _, _ in episode]
        protos = np.stack([vectors[c][s].mean(0) for c, s, _ in episode])
        protos /= np.linalg.norm(protos, axis=1, keepdims=True)
        known = []
        hits = []
        for c, _, q in episode:
            for qi in q:
                sims = protos @ vectors[c][qi]
                hits.append(labels[int(np.argmax(sims))] == c)
                if hits[-1]:
                    known.append(sims.max())
        accs.append(np.mean(hits))
        if unknowns is not None:
            unk = (unknowns[i] @ protos.T).max(1)
            pairs = [(k > u) + 0.5 * (k == u) for k in known for u in unk]
            aurocs.append(np.mean(pairs) if pairs else np.nan)
    return accs, aurocs


def test_frontier_numbers_equal_brute_force(result, tiny_model, classes):
    per_class = {d.name: 6 for d in classes.iterdir()}
    plans = FAST.plans(per_class)
    assert [m["name"] for m in result["models"]] == ["tiny.onnx", "other.onnx"]
    for row in result["models"]:
        emb = Embedder(row["model"], providers="cpu")
        vectors = embed_folder(emb, classes)
        unk_plan = fr.open_set_plan(plans[fr.OPEN_SET_TASK], per_class, FAST.query, FAST.seed)
        unknowns = [np.concatenate([vectors[c][i] for c, i in ep]) for ep in unk_plan]
        for task, plan in plans.items():
            accs, aurocs = brute_force(vectors, plan,
                                       unknowns if task == fr.OPEN_SET_TASK else None)
            np.testing.assert_allclose(row["per_episode"][task], accs, atol=1e-6)
            assert row["accuracy"][task]["mean"] == pytest.approx(np.mean(accs))
            if task == fr.OPEN_SET_TASK:
                np.testing.assert_allclose(row["per_episode"]["auroc"], aurocs, atol=1e-6)
                assert row["auroc"]["mean"] == pytest.approx(np.nanmean(aurocs))
        assert row["file_mb"] == round(emb.path.stat().st_size / 1e6, 2)
        assert 0 < row["latency_ms"]["p50"] <= row["latency_ms"]["p95"]
        assert row["memory_mb"] >= 0
    # the first model is the baseline: its paired difference to itself is exactly zero
    first = result["models"][0]["vs_first"]
    assert all(first[t]["difference"] == 0.0 for t in plans)
    assert result["tasks"]["all-way 1-shot"]["way"] == 10


def test_unknowns_come_from_classes_outside_each_episode():
    per_class = {f"c{i}": 6 for i in range(9)}
    plan = fr.FrontierOptions(query=1, episodes=20).plans(per_class)[fr.OPEN_SET_TASK]
    unk = fr.open_set_plan(plan, per_class, 2, seed=0)
    for episode, unknown in zip(plan, unk):
        inside = {c for c, _, _ in episode}
        assert len(unknown) == 4 and not inside & {c for c, _ in unknown}  # 9 - 5 left
        assert all(len(i) == 2 and len(set(i)) == 2 for _, i in unknown)
    assert unk == fr.open_set_plan(plan, per_class, 2, seed=0)


def test_table_json_and_plot_are_written(result, tmp_path):
    path = write_json(result, tmp_path / "out" / "frontier.json")
    back = json.loads(path.read_text())
    assert [m["fingerprint"] for m in back["models"]] == \
        [m["fingerprint"] for m in result["models"]]
    assert back["models"][1]["per_episode"]["5-way 5-shot"] == \
        result["models"][1]["per_episode"]["5-way 5-shot"]
    pytest.importorskip("matplotlib")
    png = tmp_path / "frontier.png"
    assert plot_frontier(result, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    table = format_frontier(result)
    assert "tiny.onnx" in table and "other.onnx" in table and "Paired differences" in table
    assert table.count("**yes**") == sum(m["pareto"] for m in result["models"]) >= 1


def test_pareto_front_on_a_constructed_example():
    #            A fast/weak  B dominated by A  C slow/strong  D best-at-its-speed  E tie with D
    accuracy = [0.70, 0.65, 0.90, 0.80, 0.80]
    latency = [5.0, 6.0, 20.0, 10.0, 10.0]
    assert fr.pareto_front(accuracy, latency) == [True, False, True, True, True]
    # E slightly slower than D at the same accuracy: dominated
    assert fr.pareto_front([0.8, 0.8], [10.0, 10.5]) == [True, False]
    assert fr.pareto_front([0.5], [1.0]) == [True]


def test_paired_difference_and_interval_on_a_constructed_example():
    a = np.array([0.6, 0.8, 0.4, 0.7, 0.5, np.nan])
    b = np.array([0.7, 0.8, 0.6, 0.7, 0.8, 0.9])  # last episode has no A figure: left out
    diff = np.array([0.1, 0.0, 0.2, 0.0, 0.3])
    sd = np.sqrt(((diff - 0.12) ** 2).sum() / 4)  # sample standard deviation, by hand
    got = fr.paired(a, b)
    assert got["episodes"] == 5
    assert got["difference"] == pytest.approx(0.12)
    assert got["ci95"] == pytest.approx(1.96 * sd / np.sqrt(5))
    # pairing matters: the unpaired interval of the same numbers is far wider
    unpaired = 1.96 * np.sqrt(np.var(a[:5], ddof=1) / 5 + np.var(b[:5], ddof=1) / 5)
    assert got["ci95"] < unpaired


def test_unknown_metric_is_refused():
    with pytest.raises(Exception, match="unknown metric"):
        fr.FrontierOptions(metric="top-5").plans({f"c{i}": 9 for i in range(6)})


def grey_domain(classes, root, keep: int):
    """Another 'domain': greyscale copies of the first ``keep`` classes, plus a class DATA
    does not have (ignored by the transfer task)."""
    import cv2

    for d in sorted(classes.iterdir())[:keep] + [classes / "not-in-data"]:
        (root / d.name).mkdir(parents=True)
        src = sorted(d.iterdir()) if d.exists() else sorted(next(classes.iterdir()).iterdir())
        for f in src[:3]:
            grey = cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2GRAY)
            cv2.imwrite(str(root / d.name / f.name), grey)
    return root


def test_transfer_task_equals_class_mean_brute_force(tiny_model, classes, tmp_path):
    target = grey_domain(classes, tmp_path / "grey", keep=4)
    name = f"{classes.name}->grey"
    res = fr.frontier([tiny_model], classes, fr.FrontierOptions(
        episodes=2, all_way_episodes=1, query=1, repeats=2, latency_images=1, threads=1,
        metric=name), transfer=[target])
    emb = Embedder(tiny_model, providers="cpu")
    source, got = embed_folder(emb, classes), embed_folder(emb, target)
    shared = sorted(d.name for d in target.iterdir() if d.name != "not-in-data")
    protos = np.stack([source[c].mean(0) for c in shared])
    protos /= np.linalg.norm(protos, axis=1, keepdims=True)
    expected = [float(shared[int(np.argmax(protos @ v))] == c) for c in shared for v in got[c]]
    row = res["models"][0]
    assert res["transfer"][name] == {"target": str(target), "classes": shared, "queries": 12}
    np.testing.assert_allclose(row["per_episode"][name], expected)
    assert row["accuracy"][name]["mean"] == pytest.approx(np.mean(expected))
    assert row["pareto"] and name in format_frontier(res)


def test_transfer_folder_without_shared_classes_is_refused(tiny_model, classes, tmp_path):
    target = grey_domain(classes, tmp_path / "grey", keep=1)
    with pytest.raises(Exception, match="shares 1 class folder"):
        fr.frontier([tiny_model], classes, FAST, transfer=[target])
