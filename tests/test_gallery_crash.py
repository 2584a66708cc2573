"""A kill at any moment leaves the gallery as before or after a change; concurrent writers
corrupt nothing. Real subprocesses, real SIGKILLs."""

import random
import subprocess
import sys
import time
from pathlib import Path

from tledge.runtime import Gallery
from tledge.runtime.images import decode_image

from .gallery_writer import SHOTS

WRITER = Path(__file__).with_name("gallery_writer.py")


def start_writer(model, gallery, prefix, count):
    proc = subprocess.Popen([sys.executable, str(WRITER), str(model), str(gallery), prefix, str(count)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
    return proc


def assert_consistent(path, embedder):
    with Gallery.open(path, embedder) as g:
        assert g.store.integrity_ok()
        classes = g.classes()
        bad = {c.label: c.samples for c in classes if c.samples != SHOTS}
        assert not bad, f"half-written classes: {bad}"
        index = g._current()
        assert index.size == SHOTS * len(classes)
        if classes:  # the index answers: a stored crop finds a sample at least as close
            crop = decode_image(g.crops(classes[0].label)[0])
            assert g.search(embedder.embed([crop]), k=1)[0][0].score > 0.95
        return len(classes)


def test_kill_during_enrollment_never_leaves_a_half_written_gallery(tmp_path, embedder):
    path = tmp_path / "g"
    Gallery.create(path, embedder).close()
    rng = random.Random(0)
    seen = 0
    for round_ in range(12):
        proc = start_writer(embedder.path, path, f"r{round_}-", 10_000)
        time.sleep(rng.uniform(0.05, 0.6))
        proc.kill()
        proc.wait()
        seen = assert_consistent(path, embedder)
    assert seen > 0  # the writers really wrote between kills


def test_two_processes_enrolling_at_once_lose_nothing(tmp_path, embedder):
    path = tmp_path / "g"
    Gallery.create(path, embedder).close()
    count = 12
    procs = [start_writer(embedder.path, path, prefix, count) for prefix in ("a", "b")]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    with Gallery.open(path, embedder) as g:
        labels = set(g.labels())
    removed = {i - 2 for i in range(count) if i % 5 == 4}
    expected = {f"{p}{i}" for p in "ab" for i in range(count) if i not in removed}
    assert labels == expected
    assert_consistent(path, embedder)
