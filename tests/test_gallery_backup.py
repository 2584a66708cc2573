"""Back up while enrolling, restore, and a restore never trusts the old cache or WAL."""

from __future__ import annotations

import shutil
import threading

import pytest

from tledge.errors import GalleryError
from tledge.runtime import Gallery
from tledge.runtime.gallery_backup import backup, restore


def test_backup_is_consistent_while_another_thread_enrolls(tmp_path, embedder, sample_files):
    with Gallery.create(tmp_path / "g", embedder) as gallery:
        gallery.enroll("cup", sample_files["cup"])
        labels = [label for label in sample_files if label != "cup"]
        writer = threading.Thread(target=lambda: [gallery.enroll(lab, sample_files[lab])
                                                  for lab in labels])
        writer.start()
        copies = [backup(tmp_path / "g", tmp_path / f"b{i}.sqlite") for i in range(3)]
        writer.join()
    for copy in copies:   # each copy is a whole-class snapshot: never a class cut in half
        with Gallery.open(tmp_path / "g") as live:
            sizes = {c.label: c.samples for c in live.classes()}
        restore(copy["path"], tmp_path / f"r-{copy['samples']}")
        with Gallery.open(tmp_path / f"r-{copy['samples']}", embedder) as restored:
            assert all(c.samples == sizes[c.label] for c in restored.classes())
            assert restored.store.integrity_ok()


def test_restore_replaces_the_database_and_the_cache_follows(tmp_path, embedder, sample_files):
    with Gallery.create(tmp_path / "g", embedder) as gallery:
        gallery.enroll("cup", sample_files["cup"])
    (tmp_path / "backups").mkdir()
    saved = backup(tmp_path / "g", tmp_path / "backups")          # a folder: FOLDER/gallery.sqlite
    assert saved["classes"] == 1 and saved["samples"] == len(sample_files["cup"])
    with Gallery.open(tmp_path / "g", embedder) as gallery:
        gallery.enroll("watch", sample_files["watch"])
        query = embedder.embed(sample_files["watch"][:1])
        assert gallery.best_matches(query, "nearest")[0][0] == "watch"  # cache written
    restore(tmp_path / "backups" / "gallery.sqlite", tmp_path / "g")
    assert not (tmp_path / "g" / "gallery.sqlite-wal").exists()
    with Gallery.open(tmp_path / "g", embedder) as gallery:
        assert gallery.labels() == ["cup"]
        assert gallery.best_matches(query, "nearest")[0][0] == "cup"    # not the cached watch


def test_a_damaged_or_foreign_backup_is_refused_and_nothing_is_replaced(tmp_path, embedder,
                                                                        sample_files):
    with Gallery.create(tmp_path / "g", embedder) as gallery:
        gallery.enroll("cup", sample_files["cup"])
    backup(tmp_path / "g", tmp_path / "b.sqlite")
    damaged = tmp_path / "damaged.sqlite"
    shutil.copy(tmp_path / "b.sqlite", damaged)
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2:len(data) // 2 + 4096] = b"\xff" * 4096
    damaged.write_bytes(bytes(data))
    (tmp_path / "notes.txt").write_text("not a database")
    for bad in (damaged, tmp_path / "notes.txt", tmp_path / "missing.sqlite"):
        with pytest.raises(GalleryError):
            restore(bad, tmp_path / "g")
    with Gallery.open(tmp_path / "g", embedder) as gallery:
        assert gallery.labels() == ["cup"]


def test_cli_backup_and_restore_round_trip(tmp_path, tiny_model, sample_files, capsys):
    from tledge.cli import main

    g = str(tmp_path / "g")
    assert main(["enroll", "-m", str(tiny_model), "-g", g, "--label", "cup",
                 *map(str, sample_files["cup"])]) == 0
    assert main(["enroll", "-m", str(tiny_model), "-g", g, "--label", "cup",
                 *map(str, sample_files["cup"])]) == 0
    assert f"cup: 0 samples ({len(sample_files['cup'])} already enrolled, skipped)" \
        in capsys.readouterr().out
    assert main(["gallery", "backup", "-g", g, str(tmp_path / "b.sqlite")]) == 0
    assert "1 classes" in capsys.readouterr().out
    assert main(["gallery", "remove", "-g", g, "cup"]) == 0
    assert main(["gallery", "restore", "-g", g, str(tmp_path / "b.sqlite")]) == 0
    capsys.readouterr()
    assert main(["gallery", "list", "-g", g]) == 0
    assert capsys.readouterr().out.split() == ["cup", str(len(sample_files["cup"]))]
    assert main(["gallery", "restore", "-g", g, str(tmp_path / "missing.sqlite")]) == 1
