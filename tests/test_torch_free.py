"""DESIGN rule 2: the runtime works with torch impossible to import."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import sys
sys.modules["torch"] = None          # any `import torch` now raises ImportError
sys.modules["torchvision"] = None
from tledge.runtime import Embedder, Gallery, Recognizer, open_source
from tledge.samples import enroll_dir, query_dir
e = Embedder(sys.argv[1], providers="auto")
g = Gallery.create(sys.argv[2], e)
for d in sorted(enroll_dir().iterdir())[:3]:
    g.enroll(d.name, sorted(d.glob("*.jpg")))
r = Recognizer(e, g)
with open_source(query_dir()) as src:
    frames = [f for f, _ in zip(src, range(3))]
print([r.recognize(f.image).candidate for f in frames])
assert not any(m.startswith("torch") for m in sys.modules if sys.modules[m] is not None)
"""


def test_runtime_runs_with_torch_blocked(tiny_model, tmp_path):
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tiny_model), str(tmp_path / "g")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("[")


CLI = """
import sys
sys.modules["torch"] = None          # any `import torch` now raises ImportError
sys.modules["torchvision"] = None
from tledge.cli import main
code = main(sys.argv[1:])
assert not any(m.startswith("torch") for m in sys.modules if sys.modules[m] is not None)
sys.exit(code)
"""


def run_cli_without_torch(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CLI, *args], capture_output=True, text=True,
                          timeout=180)


def test_cli_recognize_runs_with_torch_blocked(tiny_model, tmp_path):
    import json

    from tledge.samples import enroll_dir, query_dir

    model, gallery = ["--model", str(tiny_model)], ["--gallery", str(tmp_path / "g")]
    out = run_cli_without_torch("enroll", *model, *gallery, "--folder", str(enroll_dir()),
                                "--shots", "2")
    assert out.returncode == 0, out.stderr
    assert "cup: 2 samples" in out.stdout
    out = run_cli_without_torch("recognize", *model, *gallery, "--json", "--threshold", "-1",
                                str(query_dir() / "cup"))
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(rows) == len(list((query_dir() / "cup").glob("*.jpg"))) == 3
    assert all(r["known"] and r["label"] == r["candidate"] and r["latency_ms"] > 0
               for r in rows)
    classes = {d.name for d in enroll_dir().iterdir() if d.is_dir()}
    assert {r["label"] for r in rows} <= classes


def test_import_linter_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    if not lint.exists():
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    out = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "BROKEN" not in out.stdout
