"""``tledge eval frontier`` end to end: the tiny model against a perturbed copy of itself on
the shipped sample images (enroll + query shots as class folders)."""

from __future__ import annotations

import importlib.util
import json

import pytest

from tledge.cli import main
from tledge.samples import enroll_dir

from .conftest import perturbed_copy

FAST = ["--episodes", "4", "--all-way-episodes", "2", "--query", "1", "--repeats", "3",
        "--threads", "1"]




def test_frontier_writes_table_json_and_plot(tiny_model, classes, tmp_path, capsys):
    other = perturbed_copy(tiny_model, tmp_path / "other.onnx", 0.3)
    out = tmp_path / "out"
    code = main(["eval", "frontier", str(classes), "--model", str(tiny_model), "--model",
                 str(other), "-o", str(out), *FAST])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| model | precision |" in printed and "other.onnx" in printed
    result = json.loads((out / "frontier.json").read_text())
    assert [r["name"] for r in result["models"]] == ["tiny.onnx", "other.onnx"]
    assert result["tasks"]["5-way 5-shot"] == {"way": 5, "episodes": 4}
    assert result["tasks"]["all-way 1-shot"] == {"way": 10, "episodes": 2}
    for row in result["models"]:
        assert 0.0 <= row["accuracy"]["all-way 1-shot"]["mean"] <= 1.0
        assert row["latency_ms"]["p50"] > 0
    if importlib.util.find_spec("matplotlib"):
        assert (out / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert "plot skipped" in printed and not (out / "frontier.png").exists()


def test_frontier_refuses_too_few_images_with_exit_1(tiny_model, tmp_path, capsys):
    # The shipped enroll folders hold three images a class: no 5-shot episode fits.
    code = main(["eval", "frontier", str(enroll_dir()), "-m", str(tiny_model),
                 "-o", str(tmp_path / "out"), *FAST])
    assert code == 1
    assert "5-way 5-shot" in capsys.readouterr().err
    assert not (tmp_path / "out" / "frontier.json").exists()


def test_frontier_without_models_is_an_error(classes, tmp_path, capsys):
    assert main(["eval", "frontier", str(classes), "-o", str(tmp_path / "o")]) == 1
    assert "--model" in capsys.readouterr().err


def test_frontier_bad_numbers_are_usage_errors(tiny_model, classes, capsys):
    for bad in (["--episodes", "0"], ["--threads", "-1"], ["--metric", "top-5"]):
        with pytest.raises(SystemExit) as exc:
            main(["eval", "frontier", str(classes), "-m", str(tiny_model), *bad])
        assert exc.value.code == 2
    assert "frontier" in capsys.readouterr().err


def test_eval_help_lists_frontier(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "-h"])
    assert "frontier" in capsys.readouterr().out


def test_backbones_shortcut_exports_fp32_and_int8_once(tmp_path):
    from tledge.runtime import Embedder
    from tledge.train.gate import GateOptions
    from tledge.train.zoo import export_backbones, zoo_backbones

    assert "tiny" not in zoo_backbones() and "efficientnet_lite2" in zoo_backbones()
    (made,) = export_backbones(tmp_path, names=["tiny"], gate=GateOptions(episodes=5,
                                                                          force=True))
    assert made["gate"] is not None and "passed" in made["gate"]
    assert Embedder(made["fp32"], providers="cpu").info.precision == "fp32"
    assert Embedder(made["int8"], providers="cpu").info.precision == "int8"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.onnx", "tiny_int8.onnx"]
    (again,) = export_backbones(tmp_path, names=["tiny"])  # re-run: kept, not re-exported
    assert again["gate"] is None and again["int8"].stat().st_mtime == made["int8"].stat().st_mtime
    # another weight grid asked for: the int8 file is redone on it, the fp32 one kept
    gate = GateOptions(episodes=5, force=True)
    (eight,) = export_backbones(tmp_path, names=["tiny"], gate=gate, reduce_range=False)
    assert eight["gate"] is not None
    recipe = json.loads(Embedder(eight["int8"], providers="cpu").info.extra["quantization"])
    assert recipe["reduce_range"] is False
    (same,) = export_backbones(tmp_path, names=["tiny"], gate=gate, reduce_range=False)
    assert same["gate"] is None


def test_transfer_folders_and_their_metric_are_checked_before_any_work(classes, tmp_path,
                                                                       capsys, monkeypatch):
    """A transfer folder sharing no classes fails before --backbones exports anything; a
    --metric naming a transfer task is accepted only when that folder is given."""
    import tledge.train.zoo as zoo

    monkeypatch.setattr(zoo, "export_backbones", lambda *a, **k: pytest.fail("exported"))
    other = tmp_path / "other"
    (other / "not-a-class").mkdir(parents=True)
    first = sorted(next(classes.iterdir()).iterdir())[0]
    (other / "not-a-class" / first.name).write_bytes(first.read_bytes())
    out = ["-o", str(tmp_path / "o")]
    assert main(["eval", "frontier", str(classes), "--backbones", "--transfer", str(other),
                 *out]) == 1
    assert "shares 0 class folder(s)" in capsys.readouterr().err
    metric = f"{classes.name}->other"
    with pytest.raises(SystemExit) as exc:
        main(["eval", "frontier", str(classes), "-m", "x.onnx", "--metric", metric, *out])
    assert exc.value.code == 2 and metric in capsys.readouterr().err


def test_backbones_shortcut_redoes_a_damaged_file(tmp_path):
    from tledge.runtime import Embedder
    from tledge.train.gate import GateOptions
    from tledge.train.zoo import export_backbones

    gate = GateOptions(episodes=5, force=True)
    (made,) = export_backbones(tmp_path, names=["tiny"], gate=gate)
    made["fp32"].write_bytes(made["fp32"].read_bytes()[:1000])  # truncated by a crash
    (again,) = export_backbones(tmp_path, names=["tiny"], gate=gate)
    assert Embedder(again["fp32"], providers="cpu").info.precision == "fp32"
    assert again["gate"] is None  # the int8 file was sound: kept
