"""``tledge hub …`` and ``tledge gallery sync``: thin wrappers over the fleet library.

The root CLI registers them with ``add_parsers(sub, model_args)`` (the ``hub`` group) and
``add_sync_parser(gallery_actions, model_args)``; ``python -m tledge.fleet.cli`` runs them
standalone. DSNs never carry passwords (libpq's PGPASSFILE/~/.pgpass, PGSERVICE or
PGPASSWORD do).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from tledge.cli_types import ArgumentParser, examples
from tledge.errors import TledgeError

EXAMPLE_URL = "postgresql://tledge@hub.local/tledge"
URL_HELP = ("hub DSN without password, e.g. postgresql://tledge@hub.local/tledge?sslmode=require "
            "(password from ~/.pgpass, PGPASSFILE, PGSERVICE or PGPASSWORD)")


def cmd_hub(args) -> int:
    from tledge.fleet import hub

    if args.hub_action in ("init", "upgrade"):
        done = hub.init(args.url) if args.hub_action == "init" else hub.upgrade(args.url)
        print(f"hub schema: applied {done}" if done else "hub schema is up to date")
    elif args.hub_action == "status":
        info = hub.status(args.url)
        if args.json:
            print(json.dumps(info, indent=2))
        else:
            _print_status(info)
    elif args.hub_action == "rollout":
        fp = hub.rollout(args.url, args.model)
        print(f"target model {args.model.name} ({fp[:12]}): devices re-embed and switch on "
              "their next sync")
    elif args.hub_action == "grant-device":
        if not args.print_only and not args.url:
            raise TledgeError("grant-device needs --url URL to apply the GRANTs, or --print-only")
        sql = hub.grant_device_sql(args.role) if args.print_only else \
            hub.grant_device(args.url, args.role)
        print(sql, end="")
    return 0


def _print_status(info: dict) -> None:
    target = (info["target_fingerprint"] or "-")[:12]
    print(f"head seq {info['head_seq']}  classes {info['classes']}  samples {info['samples']}  "
          f"target model {target}")
    print(f"{'device':24} {'model':12} {'lag':>6} {'pending':>7}  last seen")
    for d in info["devices"]:
        print(f"{d['name'][:24]:24} {(d['fingerprint'] or '-')[:12]:12} {d['lag']:>6} "
              f"{d['pending']:>7}  {d['last_seen'] or '-'}")


def cmd_sync(args) -> int:
    from tledge.fleet.dsn import parse
    from tledge.fleet.sync import SyncAgent
    from tledge.runtime import Embedder, Gallery

    parse(args.hub)  # a password in the URL is refused before the model loads
    embedder = Embedder(args.model, providers=args.providers, threads=args.threads)
    Gallery.open_or_create(args.gallery, embedder).close()
    agent = SyncAgent(args.gallery, args.hub, embedder, device_name=args.name, poll=args.poll)
    if args.once:
        try:
            print(json.dumps(agent.sync_once()))
        finally:
            agent.stop()
        return 0
    agent.start()
    try:
        while True:
            time.sleep(args.report_every)
            print(json.dumps(agent.status()), flush=True)
    except KeyboardInterrupt:
        return 0
    finally:
        agent.stop()


def add_parsers(sub, model_args) -> None:
    """The ``hub`` command group."""
    p = sub.add_parser("hub", help="the fleet's PostgreSQL hub: schema, status, model rollout",
                       description="Manage the PostgreSQL hub a fleet of devices shares; see "
                                   "`tledge hub ACTION -h` and docs/fleet.md.",
                       epilog=examples(f"tledge hub init --url {EXAMPLE_URL}",
                                       f"tledge hub status --url {EXAMPLE_URL}"))
    actions = p.add_subparsers(dest="hub_action", required=True, metavar="ACTION")
    for name, help_, example in (
            ("init", "create the hub schema in an empty database", ""),
            ("upgrade", "apply the hub's pending schema migrations", ""),
            ("status", "devices, their model, lag and last seen", " --json"),
            ("rollout", "make a model the fleet's target (devices re-embed)",
             " -m models/new.onnx"),
            ("grant-device", "GRANTs for a limited device role", " kiosk_device")):
        a = actions.add_parser(name, help=help_, description=help_[0].upper() + help_[1:] + ".",
                               epilog=examples(f"tledge hub {name} --url {EXAMPLE_URL}{example}"))
        a.add_argument("--url", required=name != "grant-device",
                       help=URL_HELP + ("" if name != "grant-device" else
                                        "; needed unless --print-only"))
        a.set_defaults(func=cmd_hub)
    actions.choices["status"].add_argument(
        "--json", action="store_true", help="print JSON (without it: a readable table)")
    actions.choices["rollout"].add_argument("--model", "-m", type=Path, required=True,
                                            help="the exported .onnx model devices switch to")
    grant = actions.choices["grant-device"]
    grant.add_argument("role", help="an existing PostgreSQL role for one device or all")
    grant.add_argument("--print-only", action="store_true",
                       help="print the SQL instead of applying it (without it: applied "
                            "through --url)")


def add_sync_parser(gallery_actions, model_args) -> None:
    """``tledge gallery sync`` (added to the root CLI's ``gallery`` actions)."""
    a = gallery_actions.add_parser(
        "sync", help="keep a gallery in sync with a fleet hub",
        description="Push this gallery's changes to the hub and pull the fleet's, until "
                    "stopped (or once with --once).",
        epilog=examples(f"tledge gallery sync -g my-gallery -m models/m.onnx --hub {EXAMPLE_URL}",
                        f"tledge gallery sync -g my-gallery -m models/m.onnx --hub "
                        f"{EXAMPLE_URL} --once"))
    a.add_argument("--gallery", "-g", type=Path, required=True,
                   help="gallery folder (created when missing)")
    model_args(a)
    a.add_argument("--hub", required=True, help=URL_HELP)
    a.add_argument("--once", action="store_true",
                   help="one push + pull, then exit (without it: keep syncing until stopped)")
    a.add_argument("--name", help="this device's name in `tledge hub status` (default: "
                                  "device-<id>)")
    a.add_argument("--poll", type=float, default=5.0,
                   help="seconds between polls when no notification arrives")
    a.add_argument("--report-every", type=float, default=10.0,
                   help="print the sync status every N seconds")
    a.set_defaults(func=cmd_sync)


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", type=Path, required=True, help="exported .onnx model")
    p.add_argument("--providers", default="auto", help="ONNX Runtime providers: auto, cpu or "
                                                       "cuda")
    p.add_argument("--threads", type=int, default=None,
                   help="ONNX Runtime intra-op threads (default: ONNX Runtime's choice)")


def main(argv: list[str] | None = None) -> int:
    """Standalone entry: ``python -m tledge.fleet.cli hub …`` / ``… gallery sync …``."""
    parser = ArgumentParser(prog="tledge")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parsers(sub, _model_args)
    gallery = sub.add_parser("gallery").add_subparsers(dest="action", required=True)
    add_sync_parser(gallery, _model_args)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except TledgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
