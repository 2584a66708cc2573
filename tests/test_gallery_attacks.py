"""Attacks on a hardened gallery (issue 12, second round): damaged stored vectors, a model
change under an open gallery, restores and backups that lose data or permissions, crafted
caches, odd file names, a full disk."""

from __future__ import annotations

import io
import logging
import os
import shutil
import sqlite3
import stat
import tracemalloc
import zipfile

import numpy as np
import pytest

from tests.test_gallery_disk import small_fs  # noqa: F401  (a fixture)
from tledge.errors import GalleryError
from tledge.runtime import Embedder, Gallery, ModelChangedError
from tledge.runtime.gallery_backup import backup, restore
from tledge.runtime.gallery_cache import CacheKey, load_cache


def _gallery(path, embedder, sample_files, labels=("cup", "watch")) -> None:
    with Gallery.create(path, embedder) as g:
        for label in labels:
            g.enroll(label, sample_files[label])


def _first_sample(db_path, label: str) -> int:
    with sqlite3.connect(db_path) as db:
        return db.execute("SELECT s.id FROM samples s JOIN classes c ON c.id = s.class_id "
                          "WHERE c.label = ? ORDER BY s.id", (label,)).fetchone()[0]


def _poke(db_path, sample_id: int, damage: str) -> None:
    """Change one stored embedding behind tledge's back (its vector_digest stays)."""
    db = sqlite3.connect(db_path)
    blob = bytearray(db.execute("SELECT embedding FROM samples WHERE id = ?",
                                (sample_id,)).fetchone()[0])
    if damage == "bit":
        blob[3] ^= 0x40                    # the top exponent bit of element 0: ~1e38 scale
    else:
        blob[0:4] = np.float32("nan").tobytes()
    db.execute("UPDATE samples SET embedding = ? WHERE id = ?", (bytes(blob), sample_id))
    db.commit()
    db.close()


@pytest.mark.parametrize("damage", ["bit", "nan"])
def test_a_damaged_stored_embedding_is_left_out_and_reported(tmp_path, embedder, sample_files,
                                                              caplog, damage):
    _gallery(tmp_path / "g", embedder, sample_files)
    (tmp_path / "g" / "index.npz").unlink(missing_ok=True)
    bad = _first_sample(tmp_path / "g" / "gallery.sqlite", "cup")
    _poke(tmp_path / "g" / "gallery.sqlite", bad, damage)
    queries = embedder.embed([sample_files["watch"][1], sample_files["cup"][1]])  # enrolled
    caplog.set_level(logging.WARNING)
    with Gallery.open(tmp_path / "g", embedder) as g:
        for mode in ("prototype", "nearest"):
            best = g.best_matches(queries, mode)
            assert all(np.isfinite(s) and s <= 1.0 + 1e-5 for _, s in best)
        assert [label for label, _ in g.best_matches(queries, "nearest")] == ["watch", "cup"]
        hits = [m for row in g.search(queries, k=50) for m in row]
        assert bad not in {m.sample_id for m in hits} and max(m.score for m in hits) <= 1.00001
        assert g.info()["damaged_samples"] == [bad]
    warnings = [r.getMessage() for r in caplog.records if "damaged sample" in r.getMessage()]
    assert len(warnings) == 1 and str(bad) in warnings[0] and "reembed" in warnings[0]


def test_a_reembed_by_another_process_stops_the_old_models_queries(tmp_path, embedder,
                                                                   sample_files, other_model):
    _gallery(tmp_path / "g", embedder, sample_files)
    query = embedder.embed(sample_files["cup"][:1])
    with Gallery.open(tmp_path / "g", embedder) as kiosk, \
            Gallery.open(tmp_path / "g", embedder) as admin:
        kiosk.mode = "nearest"
        assert kiosk.classify(query[0])[0] == "cup"           # an enrolled picture
        other = Embedder(other_model, providers="cpu")
        admin.reembed(other)
        with pytest.raises(ModelChangedError, match="re-embedded for another model") as err:
            kiosk.best_matches(query)
        assert err.value.fingerprint == other.fingerprint
        with pytest.raises(ModelChangedError):
            kiosk.classify(query[0])
        admin.mode = "nearest"
        assert admin.classify(other.embed(sample_files["cup"][:1])[0])[0] == "cup"


def _backup_with_wal(tmp_path, embedder, sample_files):
    """A copied backup file whose last enrollments live only in the -wal beside it."""
    g = Gallery.create(tmp_path / "g", embedder)
    g.store.db.execute("PRAGMA wal_autocheckpoint=0")
    g.enroll("cup", sample_files["cup"])
    g.enroll("watch", sample_files["watch"])
    (tmp_path / "bk").mkdir()
    for suffix in ("", "-wal"):
        shutil.copy(tmp_path / "g" / f"gallery.sqlite{suffix}",
                    tmp_path / "bk" / f"copy.sqlite{suffix}")
    g.close()
    return tmp_path / "bk" / "copy.sqlite"


def test_restore_includes_the_backups_write_ahead_log(tmp_path, embedder, sample_files):
    source = _backup_with_wal(tmp_path, embedder, sample_files)
    assert (source.parent / "copy.sqlite-wal").stat().st_size > 0
    out = restore(source, tmp_path / "r")
    assert (out["classes"], out["samples"]) == (2, len(sample_files["cup"]) +
                                                len(sample_files["watch"]))
    shutil.rmtree(tmp_path / "bk")                     # the restored file stands alone
    with Gallery.open(tmp_path / "r", embedder) as g:
        assert g.labels() == ["cup", "watch"] and g.info()["samples"] == out["samples"]


def test_backup_and_restore_refuse_the_galleries_own_database(tmp_path, embedder, sample_files):
    _gallery(tmp_path / "g", embedder, sample_files, ["cup"])
    with pytest.raises(GalleryError, match="own database"):
        backup(tmp_path / "g", tmp_path / "g")
    with pytest.raises(GalleryError, match="own database"):
        restore(tmp_path / "g" / "gallery.sqlite", tmp_path / "g")
    with Gallery.open(tmp_path / "g", embedder) as g:
        assert g.labels() == ["cup"] and g.store.integrity_ok()


@pytest.mark.parametrize("name", ["b%41.sqlite", "b#1.sqlite", "b?x.sqlite"])
def test_backup_names_with_uri_characters(tmp_path, embedder, sample_files, name):
    _gallery(tmp_path / "g", embedder, sample_files, ["cup"])
    saved = backup(tmp_path / "g", tmp_path / name)
    assert saved["classes"] == 1 and saved["path"] == str(tmp_path / name)
    assert restore(tmp_path / name, tmp_path / "r")["classes"] == 1


def test_restored_and_backed_up_files_get_usable_modes(tmp_path, embedder, sample_files):
    _gallery(tmp_path / "g", embedder, sample_files, ["cup"])
    old = os.umask(0o022)
    try:
        saved = backup(tmp_path / "g", tmp_path / "b.sqlite")
        assert stat.S_IMODE(os.stat(saved["path"]).st_mode) == 0o644
        (tmp_path / "g" / "gallery.sqlite").chmod(0o664)      # a kiosk's group may write
        restore(saved["path"], tmp_path / "g")
        assert stat.S_IMODE((tmp_path / "g" / "gallery.sqlite").stat().st_mode) == 0o664
        (tmp_path / "new").mkdir(mode=0o750)
        restore(saved["path"], tmp_path / "new")              # no database yet: the folder's
        assert stat.S_IMODE((tmp_path / "new" / "gallery.sqlite").stat().st_mode) == 0o640
    finally:
        os.umask(old)


def test_restore_refuses_a_gallery_another_process_holds_open(tmp_path, embedder, sample_files):
    _gallery(tmp_path / "g", embedder, sample_files, ["cup"])
    saved = backup(tmp_path / "g", tmp_path / "b.sqlite")
    with Gallery.open(tmp_path / "g", embedder) as kiosk:
        kiosk.enroll("watch", sample_files["watch"])
        with pytest.raises(GalleryError, match="in use by another process"):
            restore(saved["path"], tmp_path / "g")
        assert kiosk.labels() == ["cup", "watch"]
    with Gallery.open(tmp_path / "g", embedder) as g:             # nothing was lost
        assert g.labels() == ["cup", "watch"]
    restore(saved["path"], tmp_path / "g")                          # free now: it works
    with Gallery.open(tmp_path / "g", embedder) as g:
        assert g.labels() == ["cup"]


def test_restore_replaces_a_database_that_is_not_one(tmp_path, embedder, sample_files):
    _gallery(tmp_path / "g", embedder, sample_files, ["cup"])
    saved = backup(tmp_path / "g", tmp_path / "b.sqlite")
    (tmp_path / "g" / "gallery.sqlite").write_bytes(b"garbage " * 4096)
    assert restore(saved["path"], tmp_path / "g")["classes"] == 1
    with Gallery.open(tmp_path / "g", embedder) as g:
        assert g.labels() == ["cup"]


def _bomb(cache, member: str, size: int) -> None:
    """Rewrite the cache with ``member`` replaced by a ``size``-byte array of zeros (tiny
    once deflated)."""
    with zipfile.ZipFile(cache) as z:
        members = {n: z.read(n) for n in z.namelist()}
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.zeros(size, np.uint8))
    members[member] = buf.getvalue()
    with zipfile.ZipFile(cache, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)


@pytest.mark.parametrize("member", ["index.npy", "checksum.npy"])
def test_a_deflate_bomb_cache_is_refused_before_it_is_unpacked(tmp_path, embedder,
                                                                sample_files, member):
    _gallery(tmp_path / "g", embedder, sample_files, ["cup"])
    with Gallery.open(tmp_path / "g", embedder) as g:
        g.best_matches(embedder.embed(sample_files["cup"][:1]))
        g.close()
        cache = tmp_path / "g" / "index.npz"
        assert cache.is_file()
        _bomb(cache, member, 96 * 2**20)
        assert cache.stat().st_size < 2**20
        g = Gallery.open(tmp_path / "g", embedder)
        snap = g.store.snapshot(g.dim)
        tracemalloc.start()
        try:
            got = load_cache(cache, CacheKey(snap.gallery_id, snap.content), snap.sample_ids,
                             snap.class_ids, g.dim)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert got is None and peak < 16 * 2**20
        assert g.classify(embedder.embed(sample_files["cup"][:1])[0])[0] == "cup"


def test_a_file_name_that_is_not_utf8_is_enrolled(tmp_path, embedder, sample_files):
    odd = tmp_path / os.fsdecode(b"caf\xe9.jpg")
    shutil.copy(sample_files["cup"][0], odd)
    with Gallery.create(tmp_path / "g", embedder) as g:
        result = g.enroll("cup", [odd, *sample_files["cup"][1:]])
        assert result.added == len(sample_files["cup"])
    with sqlite3.connect(tmp_path / "g" / "gallery.sqlite") as db:
        sources = [r[0] for r in db.execute("SELECT source FROM samples")]
    assert any(s.endswith("caf\ufffd.jpg") for s in sources)


def test_an_empty_or_folder_database_says_what_it_is(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "gallery.sqlite").write_bytes(b"")
    with pytest.raises(GalleryError, match="is empty .*restore"):
        Gallery.open(tmp_path / "empty")
    (tmp_path / "dir" / "gallery.sqlite").mkdir(parents=True)
    with pytest.raises(GalleryError, match="is a folder, not a gallery database file"):
        Gallery.open(tmp_path / "dir")


def _fill(folder) -> None:
    """Write zeros until the file system is full (unbuffered, smaller and smaller)."""
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for chunk in (65536, 4096, 512, 1):
            try:
                while True:
                    os.write(fd, b"\0" * chunk)
            except OSError:
                pass
    finally:
        os.close(fd)


def test_a_full_disk_still_recognises_read_only(small_fs, embedder, sample_files,  # noqa: F811
                                                caplog):
    where, _ = small_fs
    _gallery(where / "g", embedder, sample_files, ["cup"])
    for name in ("index.npz", "gallery.sqlite-wal", "gallery.sqlite-shm"):
        (where / "g" / name).unlink(missing_ok=True)
    _fill(where)
    caplog.set_level(logging.WARNING)
    with Gallery.open(where / "g", embedder) as g:
        assert g.read_only
        assert g.classify(embedder.embed(sample_files["cup"][:1])[0])[0] == "cup"
        with pytest.raises(GalleryError, match="disk full"):
            g.enroll("watch", sample_files["watch"])
    assert any("disk full: opened read-only" in r.getMessage() for r in caplog.records)
