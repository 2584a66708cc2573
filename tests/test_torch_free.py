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


def test_cli_recognize_runs_with_torch_blocked(tiny_model, tmp_path):
    code = ("import sys; sys.modules['torch'] = None; from tledge.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    from tledge.samples import enroll_dir

    args = ["enroll", "--model", str(tiny_model), "--gallery", str(tmp_path / "g"),
            "--folder", str(enroll_dir())]
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_import_linter_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    if not lint.exists():
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    out = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "BROKEN" not in out.stdout
