"""Real disks that fill up or turn read-only (issue 12, item 9).

A small tmpfs is mounted for each test: a true size limit and a true read-only remount,
which even root cannot write through. Where mounting is not allowed (no root and no user
namespaces), the tests skip and say so; tests/test_gallery_faults.py simulates the same
faults inside SQLite.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import numpy as np
import pytest

from tledge.errors import GalleryError
from tledge.runtime import Gallery


def _mount(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30)


@pytest.fixture()
def small_fs(tmp_path):
    """A 2 MiB tmpfs at tmp_path/fs; yields (path, remount_read_only)."""
    where = tmp_path / "fs"
    where.mkdir()
    out = _mount(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0777", f"tledge-{uuid.uuid4().hex[:8]}",
                  str(where)])
    if out.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({out.stderr.strip()}): a real full or "
                    "read-only disk needs root; the simulated faults in test_gallery_faults.py run")

    def read_only() -> None:
        res = _mount(["mount", "-o", "remount,ro", str(where)])
        assert res.returncode == 0, res.stderr

    yield where, read_only
    _mount(["umount", "-l", str(where)])


def _vectors(n: int, dim: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_a_full_disk_reports_the_real_cause_and_keeps_what_was_stored(small_fs, embedder,
                                                                      sample_files):
    root, _ = small_fs
    gallery_dir = root / "g"
    with Gallery.create(gallery_dir, embedder) as gallery:
        gallery.enroll("cup", sample_files["cup"])
        stored = gallery.classes()
        # Fill the rest of the disk, then try to enroll a large class.
        filler = root / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
        with pytest.raises(GalleryError) as err:
            gallery.enroll_vectors("huge", _vectors(2000, embedder.dim, 0))
        message = str(err.value)
        assert "full" in message and "rollback" not in message.lower()
        assert gallery.classes() == stored                        # nothing half-written
        query = embedder.embed([sample_files["cup"][0]])
        assert gallery.best_matches(query, "nearest")[0][0] == "cup"   # still recognises
    filler.unlink()
    with Gallery.open(gallery_dir, embedder) as gallery:           # and reopens intact
        assert gallery.store.integrity_ok()
        assert [c.label for c in gallery.classes()] == ["cup"]


def test_a_read_only_gallery_still_recognises_and_refuses_writes_clearly(small_fs, embedder,
                                                                         sample_files):
    root, read_only = small_fs
    gallery_dir = root / "g"
    with Gallery.create(gallery_dir, embedder) as gallery:
        for label in ("cup", "watch"):
            gallery.enroll(label, sample_files[label])
    (gallery_dir / "index.npz").unlink(missing_ok=True)          # no cache: it must rebuild in memory
    read_only()
    with Gallery.open(gallery_dir, embedder) as gallery:
        assert {c.label for c in gallery.classes()} == {"cup", "watch"}
        assert gallery.info()["classes"] == 2
        for label in ("cup", "watch"):
            query = embedder.embed([sample_files[label][0]])
            # the tiny model's class means are close; the enrolled shot itself is exact
            assert gallery.best_matches(query, "nearest")[0] == (label, pytest.approx(1.0, abs=1e-5))
        with pytest.raises(GalleryError, match="read-only"):
            gallery.enroll("mug", sample_files["cup"][:1])
        with pytest.raises(GalleryError, match="read-only"):
            gallery.remove("cup")


def test_cli_reads_a_read_only_gallery(small_fs, tiny_model, sample_files, capsys):
    from tledge.cli import main

    root, read_only = small_fs
    gallery = root / "g"
    assert main(["enroll", "--model", str(tiny_model), "--gallery", str(gallery), "--label",
                 "cup", *map(str, sample_files["cup"])]) == 0
    read_only()
    capsys.readouterr()
    assert main(["gallery", "list", "--gallery", str(gallery)]) == 0
    assert "cup" in capsys.readouterr().out
    assert main(["recognize", "--model", str(tiny_model), "--gallery", str(gallery), "--json",
                 str(sample_files["cup"][0])]) == 0
    assert '"candidate": "cup"' in capsys.readouterr().out
    assert Path(gallery / "gallery.sqlite").exists()
