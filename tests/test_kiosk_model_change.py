"""Another process re-embeds the gallery for another model while a kiosk runs: the kiosk
must never compare its old model's frames with the new vectors (issue 12, found by probing)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

from tests.conftest import write_clip


def test_a_kiosk_stops_rather_than_answer_with_the_old_model(tmp_path, tiny_model, other_model,
                                                             sample_files, query_files):
    from tledge.runtime import Embedder, Gallery

    with Gallery.create(tmp_path / "g", Embedder(tiny_model)) as gallery:
        gallery.enroll("cup", sample_files["cup"])
    clip = write_clip(tmp_path / "cup.avi", query_files["cup"], 5)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tledge.cli", "kiosk", "-m", str(tiny_model), "-g",
         str(tmp_path / "g"), "-s", str(clip), "--loop", "--every-frame", "--no-http",
         "--exit-after", "60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    events: list[dict] = []
    reader = threading.Thread(target=lambda: events.extend(json.loads(line)
                                                           for line in proc.stdout))
    reader.start()
    deadline = time.monotonic() + 60
    while not any(e["event"] == "frame" for e in events) and time.monotonic() < deadline:
        time.sleep(0.1)
    with Gallery.open(tmp_path / "g") as gallery:                 # another process's reembed
        gallery.reembed(Embedder(other_model))
    switched = time.time()
    code = proc.wait(60)
    reader.join(10)
    stderr = proc.stderr.read()
    assert code == 1, stderr
    changed = [e for e in events if e["event"] == "model_changed"]
    assert changed and "re-embedded" in changed[0]["error"]
    assert changed[0]["fingerprint"] == Embedder(other_model).fingerprint
    # no frame was answered against the new vectors with the old model
    late = [e for e in events if e["event"] == "frame" and e["time"] > switched + 0.5]
    assert late == []
    assert events[-1]["event"] == "stopped"
