"""A fresh virtual environment with only the runtime extra: no torch, and the kiosk works."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
import venv
from pathlib import Path

import pytest

from .conftest import write_clip

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def runtime_venv(tmp_path_factory) -> Path:
    """``pip install ".[runtime]"`` into a new venv (from PyPI or pip's cache; ~1-2 min)."""
    root = tmp_path_factory.mktemp("runtime-venv")
    venv.create(root, with_pip=True)
    python = root / "bin" / "python"
    proc = subprocess.run([str(python), "-m", "pip", "install", "--quiet",
                           "--disable-pip-version-check", f"{REPO}[runtime]"],
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, f"pip install .[runtime] failed:\n{proc.stderr[-3000:]}"
    return root


def test_runtime_extra_brings_no_torch(runtime_venv):
    python = runtime_venv / "bin" / "python"
    code = ("import importlib.util as u, tledge.kiosk, tledge.runtime, onnxruntime, faiss, cv2;"
            "print(json.dumps([m for m in ('torch', 'torchvision', 'PySide6') "
            "if u.find_spec(m)]))")
    out = subprocess.run([str(python), "-c", "import json;" + code], capture_output=True,
                         text=True, check=True).stdout
    assert json.loads(out) == []


def test_enroll_and_kiosk_run_in_the_runtime_only_venv(runtime_venv, tiny_model, query_files,
                                                       tmp_path):
    tledge = str(runtime_venv / "bin" / "tledge")
    gallery = tmp_path / "gallery"
    for label in ("cup", "watch"):
        subprocess.run([tledge, "enroll", "--model", str(tiny_model), "--gallery", str(gallery),
                        "--providers", "cpu", "--label", label, str(query_files[label][0])],
                       check=True, capture_output=True, text=True)
    clip = write_clip(tmp_path / "clip.avi", [query_files[c][0] for c in ("cup", "watch")], 6)
    proc = subprocess.Popen([tledge, "kiosk", "--model", str(tiny_model), "--gallery",
                             str(gallery), "--source", str(clip), "--providers", "cpu",
                             "--stable", "3", "--loop", "--port", "0", "--exit-after", "20"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        started = json.loads(proc.stdout.readline())
        assert started["event"] == "started", proc.stderr.read()
        labels = []
        while len(labels) < 2:
            event = json.loads(proc.stdout.readline())
            if event["event"] == "recognition":
                labels.append(event["label"])
        with urllib.request.urlopen(started["http"] + "/health", timeout=10) as resp:
            health = json.loads(resp.read())
        proc.terminate()
        rest, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert labels == ["cup", "watch"]
    assert health["status"] == "ok"
    assert proc.returncode == 0
    assert json.loads(rest.strip().splitlines()[-1])["event"] == "stopped"
