"""Data-parallel training under PyTorch's own launcher (``torch.distributed.run``), two CPU
processes with gloo on 127.0.0.1, the tiny backbone and the shipped images:

- the ranks train in step (identical parameters after every step), match one process with
  the same global batch (parameters within 1e-5, losses within 1e-6: only the order of float
  sums differs), and only rank 0 writes the run directory;
- ``tledge finetune`` itself runs under torchrun and writes one complete run directory;
- a rank killed mid-run ends the whole job, with the launcher naming the rank and signal;
- two launchers (``--nnodes 2``) meet through a c10d rendezvous on loopback.

Every launch has a bounded timeout so a broken rendezvous fails the test instead of hanging.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tledge.samples import enroll_dir, query_dir

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("ddp_worker.py")
LAUNCH = [sys.executable, "-m", "torch.distributed.run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict[str, str]:
    return {**os.environ, "TLEDGE_DIST_TIMEOUT": "60", "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(ROOT)}


def launch(args: list[str], timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(LAUNCH + args, cwd=ROOT, env=env(), capture_output=True, text=True,
                          timeout=timeout)


def single_node(n: int) -> list[str]:
    return ["--nproc-per-node", str(n), "--master-addr", "127.0.0.1",
            "--master-port", str(free_port())]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one")
    subprocess.run([sys.executable, str(WORKER), str(out)], cwd=ROOT, env=env(), check=True,
                   timeout=180, capture_output=True)
    return out


def test_two_ranks_train_in_step_and_match_one_process(one_process, tmp_path):
    done = launch(single_node(2) + [str(WORKER), str(tmp_path)])
    assert done.returncode == 0, done.stderr[-3000:]
    results = [json.loads((tmp_path / f"result-{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in results] == [2, 2]
    # 2 epochs x 4 steps, every one checked by gathering both ranks' parameters
    assert all(len(r["steps_in_step"]) == 8 and all(r["steps_in_step"]) for r in results)
    assert results[0]["rows"] == results[1]["rows"]  # metrics reduced, the same on both
    assert results[1]["writes"] == []  # rank 1 wrote nothing in the run directory
    # the frozen trunk's features: built once by rank 0 (3 parts), loaded by rank 1
    assert [r["caches_built"] for r in results] == [3, 0]
    run = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert run == ["best.pt", "config.json", "last.pt", "metrics.csv"]  # no .features left
    assert json.loads((tmp_path / "run" / "config.json").read_text()) == {"world": 2}
    single = json.loads((one_process / "result-0.json").read_text())
    assert single["world"] == 1
    a, b = torch.load(one_process / "params-0.pt"), torch.load(tmp_path / "params-0.pt")
    assert a.keys() == b.keys()
    for k in a:  # the same global batch of 16: one process of 16, or two ranks of 8
        torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=0)
    for one, two in zip(single["rows"], results[0]["rows"], strict=True):
        for key in one:
            if key.startswith(("loss_", "val_accuracy_")):
                assert two[key] == pytest.approx(one[key], abs=1e-6), key


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """Ten classes of six real images (the shipped enroll + query shots)."""
    root = tmp_path_factory.mktemp("data")
    for d in sorted(p for p in enroll_dir().iterdir() if p.is_dir()):
        (root / d.name).mkdir()
        for f in list(d.glob("*.jpg")) + list((query_dir() / d.name).glob("*.jpg")):
            (root / d.name / f"{f.parent.parent.name}-{f.name}").symlink_to(f)
    return root


def finetune_args(data: Path, run: Path, epochs: int) -> list[str]:
    return ["-m", "tledge.cli", "finetune", str(data), "-o", str(run), "--backbone", "tiny",
            "--mode", "partial", "--unfreeze", "1", "--objective", "proto", "--epochs",
            str(epochs), "--steps-per-epoch", "3", "--way", "4", "--shot", "2", "--query", "2",
            "--views", "1", "--device", "cpu", "--patience", "100"]


def test_the_finetune_command_under_torchrun_writes_one_run_directory(dataset, tmp_path):
    run = tmp_path / "run"
    done = launch(single_node(2) + finetune_args(dataset, run, 2))
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in run.iterdir()) == [
        "best.pt", "config.json", "curves.png", "last.pt", "metrics.csv"]
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [r["epoch"] for r in rows] == ["-1", "0", "1"]


def _children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry.name))
    return kids


def _rank_of(pid: int) -> str | None:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    return next((v[5:].decode() for v in environ if v.startswith(b"RANK=")), None)


def test_a_killed_rank_ends_the_job_with_a_clear_message(dataset, tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(LAUNCH + single_node(2) + finetune_args(dataset, run, 200),
                            cwd=ROOT, env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (run / "last.pt").is_file():  # training is under way
            assert proc.poll() is None and time.monotonic() < deadline, "training did not start"
            time.sleep(0.2)
        ranks = {_rank_of(p): p for p in _children(proc.pid)}
        os.kill(ranks["1"], signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode != 0
    assert "rank      : 1" in err and "Signal 9 (SIGKILL)" in err, err[-3000:]


def test_two_launchers_meet_through_a_c10d_rendezvous_on_loopback(tmp_path):
    port = free_port()
    nodes = ["--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
             "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "tledge-test",
             "--local-addr", "127.0.0.1"]
    procs = [subprocess.Popen(LAUNCH + nodes + [str(WORKER), str(tmp_path)], cwd=ROOT,
                              env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    try:
        errs = [p.communicate(timeout=180)[1] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], errs[0][-2000:] + errs[1][-2000:]
    results = [json.loads((tmp_path / f"result-{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in results] == [2, 2]
    assert all(all(r["steps_in_step"]) and len(r["steps_in_step"]) == 8 for r in results)
