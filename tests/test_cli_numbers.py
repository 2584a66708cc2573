"""Issue 12 item 11: every number a `tledge` command takes is range-checked at the command line
(a usage error, exit 2, with argparse's message) and again where the CLI calls the library."""

import math

import pytest

from tledge.cli import build_parser, main
from tledge.errors import TledgeError

M, G = ["--model", "m.onnx"], ["--gallery", "g"]
REC = ["recognize", *M, *G, "x.jpg"]
FT = ["finetune", "data", "-o", "run"]
AD = ["adapt", "--source", "s", "--target", "t", "-o", "run"]
EV = ["eval", "fewshot", "data", *M]
MT = ["multitask", "spec.csv", "-o", "run"]
EX = ["export", "-o", "m.onnx"]

# (argv, fragment of the usage message)
BAD = [
    ([*REC, "--threshold", "2"], "argument --threshold: 2 is out of range: must be in [-1, 1]"),
    ([*REC, "--threshold", "-1.5"], "--threshold: -1.5 is out of range"),
    ([*REC, "--threshold", "nan"], "--threshold: 'nan' is not a finite number"),
    ([*REC, "--threshold", "inf"], "--threshold: 'inf' is not a finite number"),
    ([*REC, "--threshold", "high"], "--threshold: 'high' is not a number"),
    ([*REC, "--every", "0"], "--every: 0 is out of range: must be between 1 and 1000000"),
    ([*REC, "--every", "-3"], "--every: -3 is out of range"),
    ([*REC, "--every", "1.5"], "--every: '1.5' is not an integer"),
    ([*REC, "--max-frames", "0"], "--max-frames: 0 is out of range: must be between 1 and"),
    ([*REC, "--smoothing", "0"], "--smoothing: 0 is out of range: must be between 1 and 1000"),
    ([*REC, "--threads", "0"], "--threads: 0 is out of range: must be between 1 and 256"),
    # Issue 12 attack C4/D3: upper bounds (100 000 threads, OverflowError, pybind11 text).
    ([*REC, "--threads", "100000"], "--threads: 100000 is out of range: must be between 1 and "
                                    "256"),
    ([*REC, "--threads", "9" * 30], "--threads: " + "9" * 30 + " is out of range"),
    ([*REC, "--smoothing", "99999999999999999999"], "--smoothing: 99999999999999999999 is out "
                                                    "of range: must be between 1 and 1000"),
    ([*REC, "--max-frames", str(10**12 + 1)], "must be between 1 and 1000000000000"),
    ([*REC, "--every", "1000001"], "--every: 1000001 is out of range"),
    ([*REC, "--every", "9" * 5000], "--every: '" + "9" * 40 + "...' is not an integer"),
    (["kiosk", *M, *G, "--stable", "10001"], "--stable: 10001 is out of range: must be "
                                              "between 1 and 10000"),
    (["kiosk", *M, *G, "--smoothing", "1001"], "--smoothing: 1001 is out of range"),
    (["kiosk", *M, *G, "--max-frames", "1e3"], "--max-frames: '1e3' is not an integer"),
    (["kiosk", *M, *G, "--threads", "257"], "--threads: 257 is out of range"),
    ([*EV, "--episodes", "1000001"], "--episodes: 1000001 is out of range"),
    ([*EV, "--way", "1000001"], "--way: 1000001 is out of range"),
    ([*FT, "--epochs", "10000000"], "--epochs: 10000000 is out of range"),
    ([*FT, "--steps-per-epoch", "10000000"], "--steps-per-epoch: 10000000 is out of range"),
    ([*EX, "--qat-steps", "10000000"], "--qat-steps: 10000000 is out of range"),
    (["bench", "--threads", "1000"], "--threads: 1000 is out of range"),
    (["bench", "--repeats", "10000000"], "--repeats: 10000000 is out of range"),
    (["enroll", *M, *G, "--folder", "d", "--shots", "0"], "--shots: 0 is out of range"),
    (["gallery", "threshold", *G, "2"], "argument value: 2 is out of range: must be in [-1, 1]"),
    (["gallery", "threshold", *G, "nan"], "'nan' is not a finite number"),
    (["gallery", "info", *G, "--threads", "0"], "--threads: 0 is out of range"),
    (["gallery", "calibrate", *G, "--far", "2"], "--far: 2 is out of range: must be in (0, 1)"),
    (["gallery", "calibrate", *G, "--far", "0"], "--far: 0 is out of range: must be in (0, 1)"),
    (["gallery", "calibrate", *G, "--far", "1"], "--far: 1 is out of range"),
    (["split-images", "d", "-o", "o", "--fraction", "2"], "--fraction: 2 is out of range"),
    (["split-images", "d", "-o", "o", "--fraction", "0"], "--fraction: 0 is out of range"),
    (["split-classes", "d", "-o", "o", "--fraction", "1"], "--fraction: 1 is out of range"),
    (["split-classes", "d", "-o", "o", "--fraction", "nan"], "'nan' is not a finite number"),
    (["split-classes", "d", "-o", "o", "--seed", "-1"], "--seed: -1 is out of range"),
    ([*FT, "--epochs", "0"], "--epochs: 0 is out of range: must be between 1 and 1000000"),
    ([*FT, "--steps-per-epoch", "0"], "--steps-per-epoch: 0 is out of range"),
    ([*FT, "--lr", "0"], "--lr: 0 is out of range: must be > 0"),
    ([*FT, "--lr", "nan"], "--lr: 'nan' is not a finite number"),
    ([*FT, "--backbone-lr-mult", "-1"], "--backbone-lr-mult: -1 is out of range"),
    ([*FT, "--weight-decay", "-0.1"], "--weight-decay: -0.1 is out of range"),
    ([*FT, "--way", "1"], "--way: 1 is out of range: must be between 2 and 1000000"),
    ([*FT, "--anchor", "inf"], "--anchor: 'inf' is not a finite number"),
    ([*FT, "--shot", "0"], "--shot: 0 is out of range"),
    ([*FT, "--query", "0"], "--query: 0 is out of range"),
    ([*FT, "--views", "0"], "--views: 0 is out of range"),
    ([*FT, "--val-fraction", "1"], "--val-fraction: 1 is out of range: must be in (0, 1)"),
    ([*FT, "--patience", "0"], "--patience: 0 is out of range"),
    ([*FT, "--unfreeze", "0"], "--unfreeze: 0 is out of range"),
    ([*FT, "--seed", "4294967296"], "--seed: 4294967296 is out of range"),
    ([*AD, "--batch", "1"], "--batch: 1 is out of range: must be between 2 and 1000000"),
    ([*AD, "--trade-off", "-1"], "--trade-off: -1 is out of range"),
    ([*AD, "--epochs", "0"], "--epochs: 0 is out of range"),
    ([*AD, "--val-fraction", "0"], "--val-fraction: 0 is out of range"),
    ([*EV, "--way", "1"], "--way: 1 is out of range: must be between 2 and 1000000"),
    ([*EV, "--way", "some"], "--way: 'some' is not an integer"),
    ([*EV, "--shot", "0"], "--shot: 0 is out of range"),
    ([*EV, "--query", "0"], "--query: 0 is out of range"),
    ([*EV, "--episodes", "0"], "--episodes: 0 is out of range"),
    ([*EV, "--far", "1.5"], "--far: 1.5 is out of range: must be in (0, 1)"),
    ([*MT, "--batch", "0"], "--batch: 0 is out of range"),
    ([*MT, "--task-weights", "1,nan"], "--task-weights: 'nan' is not a finite number"),
    ([*MT, "--task-weights", "1,-2"], "--task-weights: -2 is out of range"),
    ([*MT, "--task-weights", "0,0"], "at least one task weight must be above 0"),
    ([*EX, "--threshold", "2"], "--threshold: 2 is out of range"),
    ([*EX, "--qat-steps", "-1"], "--qat-steps: -1 is out of range: must be between 0 and"),
    ([*EX, "--qat-batch", "0"], "--qat-batch: 0 is out of range"),
    ([*EX, "--qat-lr", "0"], "--qat-lr: 0 is out of range"),
    ([*EX, "--qat-images", "0"], "--qat-images: 0 is out of range"),
    ([*EX, "--calib-limit", "0"], "--calib-limit: 0 is out of range"),
    ([*EX, "--float-first", "-1"], "--float-first: -1 is out of range"),
    ([*EX, "--min-agreement", "1.5"], "--min-agreement: 1.5 is out of range: must be in [0, 1]"),
    ([*EX, "--min-cosine-gate", "nan"], "--min-cosine-gate: 'nan' is not a finite number"),
    (["quantize", "m.onnx", "-o", "q.onnx", "--float-last", "-2"], "--float-last: -2 is out"),
    (["bench", "--batch", "0"], "--batch: 0 is out of range"),
    (["bench", "--threads", "0"], "--threads: 0 is out of range"),
    (["bench", "--repeats", "0"], "--repeats: 0 is out of range"),
    (["bench", "--sizes", "1000,0"], "--sizes: 0 is out of range"),
    (["bench", "--sizes", "1000,lots"], "--sizes: 'lots' is not a number"),
    (["bench", "--sizes", "1.5"], "--sizes: 1.5 is out of range"),
    (["demo", "--threads", "0"], "--threads: 0 is out of range"),
    (["kiosk", *M, *G, "--threads", "0"], "--threads: 0 is out of range"),
]


@pytest.mark.parametrize(("argv", "fragment"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_out_of_range_numbers_are_usage_errors(argv, fragment, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    assert fragment in err and "usage:" in err


GOOD = [
    ([*REC, "--threshold", "-1", "--every", "3", "--max-frames", "1", "--smoothing", "2",
      "--threads", "1"], {"threshold": -1.0, "every": 3, "max_frames": 1, "smoothing": 2,
                          "threads": 1}),
    ([*REC, "--threshold", "1"], {"threshold": 1.0, "max_frames": None, "every": 1}),
    ([*REC, "--threads", "256", "--smoothing", "1000", "--max-frames", str(10**12), "--every",
      "1000000"], {"threads": 256, "smoothing": 1000, "max_frames": 10**12, "every": 10**6}),
    (["kiosk", *M, *G, "-s", "0", "--stable", "10000"], {"stable": 10_000}),
    (["gallery", "threshold", *G, "0.35"], {"value": 0.35}),
    (["gallery", "calibrate", *G], {"far": 0.05}),
    (["split-images", "d", "-o", "o"], {"fraction": 0.5, "seed": 0}),
    ([*EV, "--way", "all"], {"way": "all", "shot": 1, "episodes": 300}),
    ([*EV], {"way": 5, "far": 0.05}),
    ([*FT, "--lr", "3e-4", "--anchor", "0"], {"lr": 3e-4, "anchor": 0.0, "epochs": None}),
    ([*MT, "--task-weights", "1, 0.5"], {"task_weights": (1.0, 0.5)}),
    ([*EX, "--qat-steps", "0"], {"qat_steps": 0, "min_agreement": 0.98}),
    (["bench", "--sizes", "1e3,20000"], {"sizes": "1000,20000", "threads": 2}),
]


@pytest.mark.parametrize(("argv", "expected"), GOOD, ids=[" ".join(a) for a, _ in GOOD])
def test_values_in_range_parse_to_numbers(argv, expected):
    args = vars(build_parser().parse_args(argv))
    assert {k: args[k] for k in expected} == expected


def test_library_refuses_what_the_cli_refuses(embedder, tmp_path, query_files):
    from tledge.evaluate import calibrate
    from tledge.runtime import Gallery, Recognizer

    with Gallery.create(tmp_path / "g", embedder) as gallery:
        gallery.enroll("cup", query_files["cup"][:2])
        gallery.enroll("watch", query_files["watch"][:2])
        for far in (2.0, 0.0, 1.0, -0.1, math.nan):
            with pytest.raises(TledgeError, match="false-accept rate"):
                calibrate(gallery, far)
        assert 0.0 < calibrate(gallery, 0.5)["far"] < 1.0
        for thr in (2.0, -1.01, math.nan, math.inf):
            with pytest.raises(TledgeError, match="threshold"):
                Recognizer(embedder, gallery, threshold=thr)
        recognizer = Recognizer(embedder, gallery, threshold=0.5)
        with pytest.raises(TledgeError, match="threshold"):
            recognizer.threshold = math.nan  # what the GUI's slider path sets
        assert recognizer.threshold == 0.5
        for smoothing in (0, -1, 1.5):
            with pytest.raises(TledgeError, match="smoothing"):
                Recognizer(embedder, gallery, smoothing=smoothing)
        with pytest.raises(TledgeError, match="matching mode"):
            Recognizer(embedder, gallery, mode="closest")


def test_gallery_threshold_through_the_cli_keeps_the_old_value(tiny_model, tmp_path, capsys,
                                                              query_files):
    gallery = tmp_path / "g"
    assert main(["enroll", "--model", str(tiny_model), "--gallery", str(gallery), "--label",
                 "cup", str(query_files["cup"][0])]) == 0
    assert main(["gallery", "threshold", "--gallery", str(gallery), "0.4"]) == 0
    with pytest.raises(SystemExit):
        main(["gallery", "threshold", "--gallery", str(gallery), "nan"])
    capsys.readouterr()
    assert main(["gallery", "threshold", "--gallery", str(gallery)]) == 0
    assert capsys.readouterr().out.strip() == "threshold 0.4000"
