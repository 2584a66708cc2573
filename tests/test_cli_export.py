"""Issue 14 item 4: export is one library pipeline (``tledge.train.pipeline.export``) and
``tledge export`` only parses and prints. The pipeline owns the fp32 reference sibling, the
calibration checks (before any export work), distil-or-quantise and the gate."""

import pytest

from tledge.cli import main
from tledge.errors import TledgeError
from tledge.runtime import Embedder
from tledge.train.export import ExportOptions
from tledge.train.pipeline import ExportReport, PipelineOptions, export, reference_path
from tledge.train.quantize import QuantizeOptions

TINY = ExportOptions(backbone="tiny", parity_limit=4)


def test_fp32_is_one_file_and_its_own_reference(tmp_path):
    report = export(tmp_path / "m.onnx", PipelineOptions(model=TINY))
    assert isinstance(report, ExportReport)
    assert report.path == report.reference == tmp_path / "m.onnx" and report.gate is None
    assert report.parity.min_cosine > 0.9999 and report.parity.parity_images == 4
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_fp16_keeps_the_fp32_reference_and_passes_the_gate(tmp_path):
    out = tmp_path / "m_fp16.onnx"
    report = export(out, PipelineOptions(precision="fp16", model=TINY))
    assert report.reference == tmp_path / "m_fp16.fp32.onnx" == reference_path(out, "fp16")
    assert report.path == out and report.precision == "fp16" and report.gate["passed"]
    reduced, reference = Embedder(out, providers="cpu"), Embedder(report.reference,
                                                                  providers="cpu")
    assert reduced.info.precision == "fp16" and reference.info.precision == "fp32"
    assert reduced.info.extra["parent_fingerprint"] == reference.fingerprint
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m_fp16.fp32.onnx", "m_fp16.onnx"]


@pytest.mark.parametrize("calib", ["missing", "empty"])
def test_int8_refuses_a_bad_calibration_folder_before_any_export(tmp_path, calib):
    folder = tmp_path / calib
    if calib == "empty":
        folder.mkdir()
        (folder / "notes.txt").write_text("no images here")
    options = PipelineOptions(precision="int8", model=TINY,
                              quantize=QuantizeOptions(calib=folder))
    with pytest.raises(TledgeError, match="calibration"):
        export(tmp_path / "out" / "m_int8.onnx", options)
    assert not (tmp_path / "out").exists()  # nothing exported, not even the fp32 reference


def test_cli_export_refuses_an_empty_calib_folder_in_one_line(tmp_path, capsys):
    empty = tmp_path / "calib"
    empty.mkdir()
    code = main(["export", "--backbone", "tiny", "-o", str(tmp_path / "m.onnx"),
                 "--precision", "int8", "--calib", str(empty)])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: no calibration images in")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib"]


def test_pipeline_refuses_a_missing_gate_folder_and_a_wrong_name_early(tmp_path):
    from tledge.train.gate import GateOptions

    bad_gate = PipelineOptions(precision="fp16", model=TINY,
                               quantize=QuantizeOptions(gate=GateOptions(tmp_path / "nope")))
    with pytest.raises(TledgeError, match="not a folder of class folders"):
        export(tmp_path / "m.onnx", bad_gate)
    with pytest.raises(TledgeError, match="should end in .onnx"):
        export(tmp_path / "m.pt", PipelineOptions(model=TINY))
    with pytest.raises(TledgeError, match="not a run directory"):
        export(tmp_path / "m.onnx", PipelineOptions(model=TINY, checkpoint=tmp_path / "run"))
    assert list(tmp_path.iterdir()) == []


def test_cli_export_fp16_prints_parity_and_gate(tmp_path, capsys):
    out = tmp_path / "m_fp16.onnx"
    assert main(["export", "--backbone", "tiny", "-o", str(out), "--precision", "fp16"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith(f"wrote {tmp_path / 'm_fp16.fp32.onnx'} (")
    assert printed[1].startswith("parity PyTorch vs ONNX Runtime on ")
    assert printed[2].startswith(f"wrote {out} (") and printed[2].endswith(", fp16)")
    assert printed[3].startswith("gate on 60 images: mean cosine")


def test_quantize_takes_no_fp32(tiny_model, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["quantize", str(tiny_model), "-o", str(tmp_path / "q.onnx"), "--precision",
              "fp32"])
    assert exc.value.code == 2 and "invalid choice: 'fp32'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
