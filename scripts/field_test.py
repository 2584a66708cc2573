#!/usr/bin/env python3
"""Field test: the real kiosk, for minutes, under everything the field throws at it.

Not a timed test (it measures, it does not assert speeds). It starts `tledge kiosk` on a
looping video with `--every-frame`, then, until the deadline, clients on 127.0.0.1:

- enroll over HTTP (new and repeated images, with and without an Idempotency-Key),
- read /events and hang up, poll /health, /status and /last,
- open idle connections and trickle half requests, send garbage, wrong tokens, foreign
  Host headers and oversized bodies,
- while the gallery's index cache is truncated, emptied or bit-flipped at random moments.

Afterwards every frame event's answer is checked against a cache-free reference: the same
frame embedded again and matched by numpy against the samples the database held when the
frame was processed. It prints requests tried, answers per status, crashes, wrong labels,
health failures and the kiosk's peak memory. Exit 1 if any crash or wrong label occurred.

    python scripts/field_test.py --model models/mobilenet_v2.onnx --minutes 3
    python scripts/field_test.py --backbone tiny --minutes 1        # exports a model first
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from field_clients import FieldRun  # noqa: E402
from field_reference import check_frames, format_report  # noqa: E402

SHARED_VIDEO = Path(__file__).resolve().parents[2] / "shared" / "data" / "video" / \
    "bottle-detection.mp4"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, help="exported tledge model (default: export one)")
    p.add_argument("--backbone", default="mobilenet_v2",
                   help="backbone to export when --model is not given (default mobilenet_v2)")
    p.add_argument("--video", type=Path, default=SHARED_VIDEO if SHARED_VIDEO.exists() else None,
                   help="video to loop (default: the shared bottle clip, else one made from "
                        "the shipped samples)")
    p.add_argument("--minutes", type=float, default=3.0, help="how long to run (default 3)")
    p.add_argument("--workdir", type=Path, help="keep files here (default: a temporary folder)")
    p.add_argument("--seed", type=int, default=0, help="random seed for the clients (default 0)")
    p.add_argument("--check-frames", type=int, default=300,
                   help="frame events re-checked against the reference (default 300)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tledge-field-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        run = FieldRun(workdir, args.model, args.backbone, args.video, args.seed)
        run.prepare()
        stats = run.run(args.minutes * 60.0)
        stats.update(check_frames(run, args.check_frames))
    print(format_report(stats))
    return 0 if stats["crashes"] == 0 and stats["wrong_labels"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
