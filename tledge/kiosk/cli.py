"""``tledge kiosk``: its command line (the service itself is ``tledge.kiosk.app``)."""

from __future__ import annotations

from pathlib import Path

from tledge.errors import TledgeError


def cmd_kiosk(args) -> int:
    from tledge.kiosk.app import read_token, run_kiosk
    from tledge.kiosk.service import KioskConfig

    if args.allow_enroll and args.no_http:
        raise TledgeError("--allow-enroll works over the HTTP API; drop --no-http")
    token = read_token(args.token_file) if args.allow_enroll else None
    config = KioskConfig(
        model=args.model, gallery=args.gallery, source=args.source, stable_frames=args.stable,
        threshold=args.threshold, smoothing=args.smoothing,
        roi=tuple(args.roi) if args.roi else None, max_frames=args.max_frames,
        exit_after=args.exit_after, loop=args.loop, every_frame=args.every_frame,
        retry_max=args.retry_max, stale_after=args.stale_after, providers=args.providers,
        threads=args.threads)
    http = None if args.no_http else (args.host, args.port)
    return run_kiosk(config, http, token)


def add_parser(sub, model_args) -> None:
    p = sub.add_parser("kiosk", help="headless recognition service: JSON-lines events on "
                       "stdout and a local HTTP API")
    model_args(p)
    p.add_argument("--gallery", "-g", type=Path, required=True)
    p.add_argument("--source", "-s", required=True,
                   help="webcam index, video file, image folder or image")
    p.add_argument("--stable", type=int, default=5,
                   help="report a label after it held for N frames in a row (default 5)")
    p.add_argument("--threshold", type=float, help="override the gallery's threshold")
    p.add_argument("--smoothing", type=int, default=1, help="average embeddings over N frames")
    p.add_argument("--roi", type=int, nargs=4, metavar=("X", "Y", "W", "H"),
                   help="recognise only this region of each frame")
    p.add_argument("--max-frames", type=int, help="stop after N frames")
    p.add_argument("--exit-after", type=float, help="stop after N seconds")
    p.add_argument("--loop", action="store_true", help="restart a video file or folder at its end")
    p.add_argument("--every-frame", action="store_true",
                   help="also emit a 'frame' event for every frame (not debounced)")
    p.add_argument("--retry-max", type=float, default=30.0,
                   help="longest wait between camera reconnection attempts, seconds")
    p.add_argument("--stale-after", type=float, default=10.0,
                   help="/health fails when no frame arrived for this many seconds")
    p.add_argument("--host", default="127.0.0.1",
                   help="HTTP address (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8765, help="HTTP port (0: any free port)")
    p.add_argument("--no-http", action="store_true", help="events on stdout only")
    p.add_argument("--allow-enroll", action="store_true",
                   help="accept POST /enroll with the bearer token from --token-file or "
                        "$TLEDGE_KIOSK_TOKEN")
    p.add_argument("--token-file", type=Path, help="file holding the enrollment token")
    p.set_defaults(func=cmd_kiosk)
