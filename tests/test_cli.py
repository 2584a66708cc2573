import json

import pytest

from tledge.cli import main
from tledge.samples import enroll_dir, query_dir


@pytest.fixture()
def enrolled(tiny_model, tmp_path):
    gallery = tmp_path / "g"
    assert main(["enroll", "--model", str(tiny_model), "--gallery", str(gallery),
                 "--folder", str(enroll_dir()), "--shots", "2"]) == 0
    return tiny_model, gallery


def test_backbones_lists_the_registry(capsys):
    assert main(["backbones"]) == 0
    out = capsys.readouterr().out
    assert "mobilenet_v2" in out and "efficientnet_lite0" in out and "tiny" in out


def test_enroll_folder_then_list(enrolled, capsys):
    model, gallery = enrolled
    capsys.readouterr()
    assert main(["gallery", "list", "--gallery", str(gallery)]) == 0
    rows = dict(line.split("\t") for line in capsys.readouterr().out.strip().splitlines())
    assert len(rows) == 10 and set(rows.values()) == {"2"}


def test_recognize_json_lines(enrolled, capsys):
    model, gallery = enrolled
    capsys.readouterr()
    assert main(["recognize", "--model", str(model), "--gallery", str(gallery), "--json",
                 "--threshold", "-1", str(query_dir() / "cup")]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 3
    assert all(r["known"] and r["label"] in r["candidate"] and r["latency_ms"] > 0 for r in rows)


def test_recognize_reports_bad_files_and_goes_on(enrolled, tmp_path, capsys):
    model, gallery = enrolled
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"junk")
    good = next((query_dir() / "cup").glob("*.jpg"))
    code = main(["recognize", "--model", str(model), "--gallery", str(gallery),
                 str(bad), str(good), str(tmp_path / "missing.jpg")])
    out, err = capsys.readouterr()
    assert code == 1
    assert "bad.jpg" in err and "missing.jpg" in err
    assert good.name in out


def test_gallery_rename_remove_threshold_info(enrolled, capsys):
    _, gallery = enrolled
    g = ["--gallery", str(gallery)]
    assert main(["gallery", "rename", *g, "cup", "mug ☕"]) == 0
    assert main(["gallery", "remove", *g, "pizza"]) == 0
    assert main(["gallery", "threshold", *g, "0.42"]) == 0
    capsys.readouterr()
    assert main(["gallery", "info", *g]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["classes"] == 9 and info["threshold"] == pytest.approx(0.42)
    assert main(["gallery", "remove", *g, "pizza"]) == 1


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["enroll", "--model", "m.onnx", "--gallery", "g"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["frobnicate"])
    assert exc.value.code == 2


def test_errors_are_one_line_exit_1(tmp_path, capsys):
    code = main(["recognize", "--model", str(tmp_path / "none.onnx"), "--gallery", str(tmp_path), "x.jpg"])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: ") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_gallery_of_another_model_is_refused_by_cli(enrolled, other_model, capsys):
    _, gallery = enrolled
    code = main(["recognize", "--model", str(other_model), "--gallery", str(gallery), "x.jpg"])
    assert code == 1 and "another model" in capsys.readouterr().err


def test_unknown_backbone_gets_suggestion(tmp_path, capsys):
    assert main(["export", "--backbone", "mobilenetv2", "--output", str(tmp_path / "m.onnx")]) == 1
    assert "Did you mean 'mobilenet_v2'" in capsys.readouterr().err


@pytest.mark.parametrize("mode", ["nearest", "prototype"])
def test_recognize_mode_is_used(tiny_model, tmp_path, capsys, sample_files, query_files, mode):
    """`--mode nearest` matches the closest sample; prototype the closest class mean."""
    from tests.test_recognizer import split_for_modes
    from tledge.runtime import Embedder, Gallery
    from tledge.runtime.images import load_image

    embedder = Embedder(tiny_model, providers="cpu")
    query = query_files["cup"][0]
    near, proto = split_for_modes(embedder, load_image(query), sample_files)
    with Gallery.create(tmp_path / "g", embedder) as g:
        g.enroll_vectors("near", near)
        g.enroll_vectors("proto", proto)
    capsys.readouterr()
    assert main(["recognize", "--model", str(tiny_model), "--gallery", str(tmp_path / "g"),
                 "--json", "--threshold", "-1", "--mode", mode, str(query)]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["label"] == {"nearest": "near", "prototype": "proto"}[mode]
    if mode == "nearest":
        assert row["score"] > 0.999  # the query's own sample
