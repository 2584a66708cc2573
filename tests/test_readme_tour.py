"""The README's 60-second tour runs as written, on the shipped samples, and prints what the
README says it prints: the front door never rots.

The commands are the bash block after ``<!-- tour -->`` in README.md. What a newcomer supplies
is put in place first: their photos (``mug1.jpg`` …) are shipped sample pictures of a cup, the
demo's exported model is the tiny test model (or, in the slow variant, the real default
backbone, EfficientNet-Lite0),
webcam ``0`` is a short video clip, the GUI runs offscreen and quits by itself, and the kiosk
stops after a few frames on a free port.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import write_clip
from tledge.samples import enroll_dir, query_dir, unknown_dir

ROOT = Path(__file__).resolve().parents[1]
MODEL = "tledge-demo/efficientnet_lite0.onnx"  # where `tledge demo` puts (or reuses) its model
TIMEOUT = 180                               # seconds per command: a bound against hangs only

# What each step prints, as the README quotes it (checked against the README too).
PRINTS = {
    "enroll": "blue mug: 3 samples",
    "demo_real": "known images recognised correctly: 97% of 30",
    "recognize_real": "mug4.jpg: blue mug  score 0.48",
}


def tour_commands(readme: str) -> list[list[str]]:
    """The commands of the first ```bash block after ``<!-- tour -->``, comments removed."""
    marker = readme.index("<!-- tour -->")
    block = re.search(r"```bash\n(.*?)```", readme[marker:], flags=re.S)
    assert block, "README.md: no ```bash block after <!-- tour -->"
    text = block.group(1).replace("\\\n", " ")
    return [words for line in text.splitlines() if (words := shlex.split(line, comments=True))]


def test_tour_parsing():
    """The parser: continuation lines join, comments go, quoted labels stay one word."""
    readme = ('intro\n<!-- tour -->\n```bash\ntledge a --label "blue mug" x.jpg  # note\n'
              "# only a comment\ntledge b \\\n  --c 1\n```\n```bash\ntledge later\n```\n")
    assert tour_commands(readme) == [["tledge", "a", "--label", "blue mug", "x.jpg"],
                                     ["tledge", "b", "--c", "1"]]


def test_readme_tour_covers_the_steps():
    """The tour shows demo → enroll → recognise → GUI → kiosk, in that order."""
    commands = tour_commands((ROOT / "README.md").read_text(encoding="utf-8"))
    steps = [c[1] for c in commands if c[0] == "tledge"]
    assert steps == ["demo", "enroll", "recognize", "gui", "kiosk"], steps
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for text in PRINTS.values():
        assert text in readme, f"the README no longer says the tour prints {text!r}"


def _newcomer_files(workdir: Path, model: Path) -> Path:
    """The photos, the exported model and a clip standing in for webcam 0; returns the clip."""
    cups = sorted((enroll_dir() / "cup").glob("*.jpg"))
    for i, src in enumerate(cups[:3], start=1):
        shutil.copy(src, workdir / f"mug{i}.jpg")
    shutil.copy(sorted((query_dir() / "cup").glob("*.jpg"))[0], workdir / "mug4.jpg")
    (workdir / "tledge-demo").mkdir()
    shutil.copy(model, workdir / MODEL)
    others = sorted(unknown_dir().glob("*.jpg"))[:2]
    return write_clip(workdir / "webcam.avi", [workdir / "mug4.jpg", *others], frames_each=8)


def _substitute(command: list[str], clip: Path) -> list[str]:
    """The command as this test can run it: no webcam, no screen, a bounded run."""
    argv = [clip.name if (prev in ("-s", "--source") and word == "0") else word
            for prev, word in zip(["", *command], command)]
    if argv[1] == "gui":
        argv += ["--exit-after", "4", "--screenshot", "gui.png"]
    if argv[1] == "kiosk":
        argv += ["--max-frames", "24", "--exit-after", "60", "--port", "0"]
    return [sys.executable, "-m", "tledge.cli", *argv[1:]]


def _env(workdir: Path) -> dict[str, str]:
    """The environment: offscreen Qt, and the GUI's remembered settings kept in the tmp dir."""
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", HOME=str(workdir),
               XDG_CONFIG_HOME=str(workdir / ".config"), PYTHONPATH=str(ROOT))
    env.pop("TLEDGE_KIOSK_TOKEN", None)
    return env


def _run(argv: list[str], workdir: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, cwd=workdir, env=_env(workdir), capture_output=True,
                            text=True, timeout=TIMEOUT)
    assert result.returncode == 0, (f"{shlex.join(argv[3:])} exited {result.returncode}\n"
                                    f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return result


def _check(step: str, out: str, workdir: Path, real: bool) -> None:
    """What the README says each step prints (with the real model, its exact figures)."""
    if step == "demo":
        assert "known images recognised correctly:" in out and f"Model:   {MODEL}" in out
        assert not real or PRINTS["demo_real"] in out, out
    elif step == "enroll":
        assert PRINTS["enroll"] in out, out
    elif step == "recognize":
        # The tiny test model is random: it may not know the mug; the real one must.
        assert re.search(r"^mug4\.jpg: (blue mug|unknown)", out, flags=re.M), out
        assert not real or PRINTS["recognize_real"] in out, out
    elif step == "gui":
        assert (workdir / "gui.png").stat().st_size > 0, "the app showed no recognition"
    elif step == "kiosk":
        events = [json.loads(line)["event"] for line in out.splitlines() if line.strip()]
        assert events[0] == "started" and events[-1] == "stopped", events


def _tour(workdir: Path, model: Path, real: bool) -> None:
    pytest.importorskip("PySide6", reason="the tour's GUI step needs the gui extra")
    clip = _newcomer_files(workdir, model)
    for command in tour_commands((ROOT / "README.md").read_text(encoding="utf-8")):
        if command[0] == "source":
            assert command == ["source", ".venv/bin/activate"], command  # what bootstrap made
            continue
        assert command[0] == "tledge", f"the tour runs tledge commands only: {command}"
        result = _run(_substitute(command, clip), workdir)
        _check(command[1], result.stdout, workdir, real)


@pytest.mark.gui
def test_readme_tour_runs(tmp_path, tiny_model):
    """Every tour command exits 0 and prints what the README says (tiny model: seconds)."""
    _tour(tmp_path, tiny_model, real=False)


@pytest.mark.slow
@pytest.mark.gui
def test_readme_tour_real_model(tmp_path, default_model):
    """The same tour with the real default backbone: the demo's and the mug's figures hold."""
    _tour(tmp_path, default_model, real=True)
