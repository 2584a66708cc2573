"""``tledge recognize``: recognise images, folders, video files or a webcam."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tledge.cli import common
from tledge.cli.types import cosine, examples, frame_count, positive_int, smoothing


def cmd_recognize(args: argparse.Namespace) -> int:
    from tledge.runtime import Gallery, Recognizer
    from tledge.runtime.batch import recognize_sources

    embedder = common.embedder(args)
    embedder.warmup()  # so the first image's reported latency is not the session's start-up
    with Gallery.open(args.gallery, embedder) as gallery:
        recognizer = Recognizer(embedder, gallery, args.smoothing, args.threshold, mode=args.mode)
        errors = 0
        for item in recognize_sources(recognizer, args.sources, args.max_frames, args.every):
            errors += item.error is not None
            if args.json:
                print(json.dumps(item.to_dict(), ensure_ascii=False), flush=True)
            elif item.error:
                print(f"error: {item.error}", file=sys.stderr)
            else:
                r = item.result
                label = r.label if r.label is not None else f"unknown (closest: {r.candidate})"
                print(f"{item.name}: {label}  score {r.score:.3f}  {r.latency_ms:.1f} ms",
                      flush=True)
    return 1 if errors else 0


def add_parser(sub, model_args) -> None:
    p = sub.add_parser(
        "recognize", help="recognise images, folders, videos or a webcam",
        description="Match each image or frame against a gallery: the closest class above the "
                    "gallery's threshold, else unknown. Unreadable inputs are reported and "
                    "skipped (exit 1 at the end).",
        epilog=examples("tledge recognize -m models/mobilenet_v2.onnx -g my-gallery photo.jpg",
                        "tledge recognize -m models/mobilenet_v2.onnx -g my-gallery --json 0"))
    model_args(p)
    p.add_argument("--gallery", "-g", type=Path, required=True,
                   help="gallery folder written by `tledge enroll`")
    p.add_argument("sources", nargs="+", help="image, folder, video file or webcam index")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object per line (without it: one readable line each)")
    p.add_argument("--threshold", type=cosine,
                   help="override the open-set threshold, a cosine in [-1, 1] (default: the "
                        "gallery's own)")
    p.add_argument("--mode", choices=("prototype", "nearest"), default="prototype",
                   help="match the closest class mean (prototype) or the closest sample "
                        "(nearest)")
    p.add_argument("--smoothing", type=smoothing, default=1,
                   help="average embeddings over N consecutive frames, 1 to 1000")
    p.add_argument("--max-frames", type=frame_count,
                   help="stop each source after N frames (default: run to its end)")
    p.add_argument("--every", type=positive_int, default=1,
                   help="use every Nth frame of a video")
    p.set_defaults(func=cmd_recognize)
