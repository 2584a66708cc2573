"""``tledge kiosk``: its command line (the service itself is ``tledge.kiosk.app``)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from tledge.cli_types import (
    cosine,
    examples,
    float_range,
    frame_count,
    int_range,
    positive_float,
    smoothing,
    stable_frames,
)
from tledge.errors import TledgeError
from tledge.kiosk.http_guard import HttpLimits

_HOST = re.compile(r"[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?|\[[0-9a-f:.]+\]", re.IGNORECASE)


def host_name(text: str) -> str:
    """An --allowed-host value: a DNS name, an IPv4 address or a bracketed IPv6 one."""
    if not _HOST.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a host name (e.g. kiosk.local, 192.168.1.20 or [fe80::1]; "
            "no scheme, no port)")
    return text.lower()


def cmd_kiosk(args) -> int:
    from tledge.kiosk.app import read_token, run_kiosk
    from tledge.kiosk.config import KioskConfig

    if args.allow_enroll and args.no_http:
        raise TledgeError("--allow-enroll works over the HTTP API; drop --no-http")
    token = read_token(args.token_file) if args.allow_enroll else None
    model, sync = args.model, None
    if args.hub:
        model, sync = _join_fleet(args)
    config = KioskConfig(
        model=model, gallery=args.gallery, source=args.source, stable_frames=args.stable,
        threshold=args.threshold, smoothing=args.smoothing,
        roi=tuple(args.roi) if args.roi else None, max_frames=args.max_frames,
        exit_after=args.exit_after, loop=args.loop, every_frame=args.every_frame,
        retry_initial=min(0.5, args.retry_max), retry_max=args.retry_max,
        stale_after=args.stale_after, providers=args.providers, threads=args.threads)
    limits = HttpLimits(idle_timeout=args.idle_timeout, max_connections=args.max_connections,
                        max_subscribers=args.max_streams, request_timeout=args.enroll_wait)
    http = None if args.no_http else (args.host, args.port)
    return run_kiosk(config, http, token, limits=limits, allowed_hosts=args.allowed_host,
                     allow_remote=args.allow_remote, sync=sync)


def _join_fleet(args):
    """(model to open, sync agent) for ``--hub``: the gallery is created when this device is
    new, and a model a rollout stored in it is preferred over ``--model``."""
    from tledge.fleet.sync import SyncAgent
    from tledge.kiosk.fleet_link import fleet_model
    from tledge.runtime import Embedder, Gallery

    model = fleet_model(args.gallery, args.model)
    embedder = Embedder(model, providers=args.providers, threads=args.threads)
    Gallery.open_or_create(args.gallery, embedder).close()
    return model, SyncAgent(args.gallery, args.hub, embedder, device_name=args.device_name)


def add_parser(sub, model_args) -> None:
    p = sub.add_parser(
        "kiosk", help="headless recognition service: JSON-lines events on stdout and a local "
                      "HTTP API",
        description="Recognise a camera, video or folder without a screen: a JSON line per "
                    "debounced event on stdout, and /health, /status, /last, /events (and with "
                    "--allow-enroll, /enroll and /enroll/<id>) over HTTP on this machine.",
        epilog=examples("tledge kiosk -m models/m.onnx -g my-gallery -s 0",
                        "tledge kiosk -m models/m.onnx -g my-gallery -s 0 --allow-enroll "
                        "--token-file ~/.tledge-token"))
    model_args(p)
    p.add_argument("--gallery", "-g", type=Path, required=True,
                   help="gallery folder (with --hub: created when missing)")
    p.add_argument("--source", "-s", required=True,
                   help="webcam index, video file, image folder or image")
    p.add_argument("--stable", type=stable_frames, default=5,
                   help="report a label after it held for N frames in a row")
    p.add_argument("--threshold", type=cosine,
                   help="override the open-set threshold, a cosine in [-1, 1] (default: "
                        "the gallery's own)")
    p.add_argument("--smoothing", type=smoothing, default=1,
                   help="average embeddings over N frames")
    p.add_argument("--roi", type=int, nargs=4, metavar=("X", "Y", "W", "H"),
                   help="recognise only this region of each frame (default: the whole "
                        "frame)")
    p.add_argument("--max-frames", type=frame_count, help="stop after N frames, N >= 1 (default: "
                   "run until stopped)")
    p.add_argument("--exit-after", type=positive_float, help="stop after N seconds (default: run "
                   "until stopped)")
    p.add_argument("--loop", action="store_true", help="restart a video file or folder at its "
                   "end (without it: stop there)")
    p.add_argument("--every-frame", action="store_true",
                   help="also emit a 'frame' event for every frame, not debounced (without "
                        "it: only label changes)")
    p.add_argument("--retry-max", type=positive_float, default=30.0,
                   help="longest wait between camera reconnection attempts, seconds")
    p.add_argument("--stale-after", type=positive_float, default=10.0,
                   help="/health fails when no frame arrived for this many seconds")
    _http_args(p)
    p.add_argument("--hub", metavar="DSN",
                   help="share the gallery with a fleet through this PostgreSQL hub "
                        "(postgresql://USER@HOST/DB or service=NAME; the password comes from "
                        "~/.pgpass, $PGPASSWORD or a service file, never the command line; "
                        "default: a stand-alone gallery)")
    p.add_argument("--device-name", help="with --hub: this device's name in `tledge hub "
                   "status` (default: device-<id>)")
    p.set_defaults(func=cmd_kiosk)


def _http_args(p) -> None:
    d = HttpLimits()
    p.add_argument("--host", default="127.0.0.1",
                   help="HTTP address; 127.0.0.1 is this machine only, any other needs "
                        "--allow-remote")
    p.add_argument("--port", type=int_range(0, 65535), default=8765,
                   help="HTTP port (0: any free port)")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow a --host other machines can reach; put a firewall in front "
                        "(without it: such a --host is refused)")
    p.add_argument("--allowed-host", action="append", default=[], type=host_name,
                   metavar="NAME", help="also serve requests whose Host header is NAME "
                   "(repeatable; 127.0.0.1, localhost and [::1] always are)")
    p.add_argument("--idle-timeout", type=float_range(1.0, 3600.0), default=d.idle_timeout,
                   help="close a connection without a complete request after this many "
                        "seconds")
    p.add_argument("--max-connections", type=int_range(16, 10000), default=d.max_connections,
                   help="open HTTP connections at most")
    p.add_argument("--max-streams", type=int_range(1, 64), default=d.max_subscribers,
                   help="concurrent /events streams at most")
    p.add_argument("--enroll-wait", type=float_range(0.0, 600.0), default=d.request_timeout,
                   help="POST /enroll answers 202 with a job id when storing takes longer "
                        "than this many seconds")
    p.add_argument("--no-http", action="store_true",
                   help="events on stdout only (without it: the HTTP API is served too)")
    p.add_argument("--allow-enroll", action="store_true",
                   help="accept POST /enroll with the bearer token from --token-file or "
                        "$TLEDGE_KIOSK_TOKEN (without it: enrollment is refused)")
    p.add_argument("--token-file", type=Path,
                   help="file holding the enrollment token (default: $TLEDGE_KIOSK_TOKEN)")
