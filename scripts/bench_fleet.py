"""Fleet benchmark (not a test): a real PostgreSQL hub and N real device processes.

Prints: propagation p50/p95 (enroll on one device -> recognisable on all), convergence after
a hub outage with queued enrollments, throughput of concurrent enrollments, and the time to
roll out a new model over the gallery's samples.

    python scripts/bench_fleet.py                       # 8 devices, 60 s outage, 8 x 50, 1000
    python scripts/bench_fleet.py --devices 3 --outage 10 --per-device 10 --rollout-samples 100
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.pg import ADMIN, ADMIN_PASSWORD, DeviceProc, PgServer, find_bin  # noqa: E402
from tledge.fleet import hub  # noqa: E402
from tledge.samples import enroll_dir  # noqa: E402


def converged(dsn: str, devices: list[DeviceProc]) -> bool:
    want = hub.hub_digest(dsn)
    return all(d.call("digest")["digest"] == want and d.call("digest")["pending"] == 0
               for d in devices)


def wait(pred, timeout: float = 600.0, every: float = 0.02) -> float:
    start = time.monotonic()
    while not pred():
        if time.monotonic() - start > timeout:
            raise TimeoutError("benchmark condition not reached")
        time.sleep(every)
    return time.monotonic() - start


def propagation(devices, images, trials: int) -> list[float]:
    times = []
    for t in range(trials):
        source, label = devices[t % len(devices)], f"prop{t}"
        source.call("enroll", label=label, files=[str(images[t % len(images)])])
        start = time.monotonic()
        pending = [d for d in devices if d is not source]
        while pending:
            pending = [d for d in pending if label not in d.call("labels")["labels"]]
            if time.monotonic() - start > 60:
                raise TimeoutError(f"{label} did not reach every device")
        times.append(time.monotonic() - start)
    return times


def outage(server, dsn, devices, images, seconds: float, queued: int) -> float:
    server.stop("fast")
    for i in range(queued):
        devices[i % len(devices)].call("enroll", label=f"outage{i}",
                                       files=[str(images[i % len(images)])])
    time.sleep(seconds)
    server.start()
    return wait(lambda: converged(dsn, devices), every=0.2)


def throughput(dsn, devices, images, per_device: int) -> tuple[int, float]:
    start = time.monotonic()
    for d_i, device in enumerate(devices):
        for k in range(per_device):
            device.send("enroll", label=f"tp{d_i}_{k}", files=[str(images[k % len(images)])])
    for device in devices:
        for _ in range(per_device):  # pipelined replies: plain blocking reads
            reply = json.loads(device.proc.stdout.readline())
            if not reply["ok"]:
                raise RuntimeError(reply["error"])
    wait(lambda: converged(dsn, devices), every=0.2)
    return len(devices) * per_device, time.monotonic() - start


def rollout(dsn, devices, images, samples: int, model: Path, tmp: Path) -> tuple[int, float]:
    have = hub.status(dsn)["samples"]
    per = len(images)
    for c in range(max(0, samples - have) // per + 1):
        devices[0].call("enroll", label=f"roll{c}", files=[str(p) for p in images], timeout=600)
    wait(lambda: converged(dsn, devices), every=0.5)
    total = hub.status(dsn)["samples"]
    from tests.conftest import perturbed_copy

    other = perturbed_copy(model, tmp / "other.onnx")
    start = time.monotonic()
    fp = hub.rollout(dsn, other)
    wait(lambda: all(d.call("digest")["fingerprint"] == fp for d in devices), every=0.5)
    return total, time.monotonic() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=8)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--outage", type=float, default=60.0)
    ap.add_argument("--queued", type=int, default=20)
    ap.add_argument("--per-device", type=int, default=50)
    ap.add_argument("--rollout-samples", type=int, default=1000)
    args = ap.parse_args()
    from tledge.train.export import ExportOptions, export_model

    tmp = Path(tempfile.mkdtemp(prefix="tledge-bench-"))
    model = tmp / "tiny.onnx"
    export_model(model, ExportOptions(backbone="tiny", parity_limit=8))
    images = sorted(enroll_dir().rglob("*.jpg"))
    server = PgServer(find_bin("initdb"), find_bin("pg_ctl"))
    devices: list[DeviceProc] = []
    try:
        server.init()
        server.start()
        server.psql_admin(f"CREATE ROLE {ADMIN} LOGIN CREATEROLE PASSWORD '{ADMIN_PASSWORD}'")
        server.psql_admin(f"CREATE DATABASE bench OWNER {ADMIN}")
        dsn = server.dsn("bench")
        hub.init(dsn)
        devices = [DeviceProc(model, tmp / f"d{i}", dsn, f"d{i}") for i in range(args.devices)]
        for device in devices:
            device.call("start")
        times = propagation(devices, images, args.trials)
        q = statistics.quantiles(times, n=20, method="inclusive")
        print(flush=True)
        print(f"propagation over {args.devices} devices ({args.trials} enrollments): "
              f"p50 {statistics.median(times):.3f} s, p95 {q[18]:.3f} s, max {max(times):.3f} s")
        t = outage(server, dsn, devices, images, args.outage, args.queued)
        print(f"hub outage {args.outage:.0f} s with {args.queued} enrollments queued: converged "
              f"{t:.2f} s after the hub came back")
        n, t = throughput(dsn, devices, images, args.per_device)
        print(f"throughput: {args.devices} devices x {args.per_device} concurrent enrollments = "
              f"{n} in {t:.2f} s to full convergence ({n / t:.1f} enrollments/s)")
        n, t = rollout(dsn, devices, images, args.rollout_samples, model, tmp)
        print(f"rollout of a new model over {n} samples on {args.devices} devices: {t:.2f} s")
    finally:
        for device in devices:
            device.close()
        server.destroy()


if __name__ == "__main__":
    main()
