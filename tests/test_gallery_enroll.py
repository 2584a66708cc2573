"""Enrollment in the field (issue 12, items 3, 6 and 11): idempotent by image content, one
decoded image in memory at a time, safe beside a recognising thread, labels in one canonical
form, old galleries migrated, bad classes reported file by file."""

from __future__ import annotations

import base64
import hashlib
import random
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from tledge.errors import GalleryError, TledgeError
from tledge.runtime import Gallery, Recognizer
from tledge.runtime.batch import enroll_folder, recognize_sources
from tledge.runtime.gallery import DB_NAME, validate_label
from tledge.runtime.images import decode_image, load_image
from tledge.samples import enroll_dir

from .test_gallery_faults import assert_answers_like_reference


def test_the_same_picture_from_a_path_an_array_or_an_upload_is_enrolled_once(
        tmp_path, embedder, sample_files):
    path = sample_files["cup"][0]
    upload = decode_image(base64.b64decode(base64.b64encode(path.read_bytes())))
    with Gallery.create(tmp_path / "g", embedder) as g:
        first = g.enroll("cup", [path])
        assert (first.label, first.added, first.failed, first.duplicates) == ("cup", 1, [], 0)
        assert len(first.sample_ids) == 1
        for again in ([path], [load_image(path)], [upload], [path, upload]):
            res = g.enroll("cup", again)
            assert (res.added, res.duplicates, res.sample_ids) == (0, len(again), [])
        both = g.enroll("cup", [sample_files["cup"][1], sample_files["cup"][1]])
        assert (both.added, both.duplicates) == (1, 1)  # repeated within one call too
        assert g.enroll("mug", [path]).added == 1       # another class may hold it
        forced = g.enroll("cup", [path, path], allow_duplicates=True)
        assert (forced.added, forced.duplicates) == (2, 0)
        assert {c.label: c.samples for c in g.classes()} == {"cup": 4, "mug": 1}


def _cli_enroll(model, gallery, folder) -> subprocess.Popen:
    code = "import sys; from tledge.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.Popen([sys.executable, "-c", code, "enroll", "--model", str(model),
                             "--gallery", str(gallery), "--folder", str(folder)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_enroll_folder_killed_half_way_and_run_again_doubles_nothing(tmp_path, tiny_model):
    from tledge.cli import main

    folder = tmp_path / "classes"
    shutil.copytree(enroll_dir(), folder)
    gallery = tmp_path / "g"
    rng = random.Random(0)
    for _ in range(2):  # real SIGKILLs at random moments of a real `tledge enroll --folder`
        proc = _cli_enroll(tiny_model, gallery, folder)
        time.sleep(rng.uniform(2.0, 6.0))
        proc.kill()
        proc.wait(timeout=60)
    assert main(["enroll", "--model", str(tiny_model), "--gallery", str(gallery),
                 "--folder", str(folder)]) == 0
    assert main(["enroll", "--model", str(tiny_model), "--gallery", str(gallery),
                 "--folder", str(folder)]) == 0
    with Gallery.open(gallery) as g:
        counts = {c.label: c.samples for c in g.classes()}
    expected = {d.name: len(list(d.glob("*.jpg"))) for d in folder.iterdir()}
    assert counts == expected


def test_enrollment_holds_one_decoded_image_at_a_time(tmp_path, embedder):
    side, n = 1600, 6  # 7.7 MB per decoded image
    files = []
    for i in range(n):
        ramp = np.linspace(0, 255, side, dtype=np.float32)
        img = np.stack([np.add.outer(ramp, ramp * i / n) % 256] * 3, axis=2).astype(np.uint8)
        files.append(tmp_path / f"big{i}.png")
        Image.fromarray(img).save(files[-1], compress_level=1)
    one = side * side * 3
    with Gallery.create(tmp_path / "g", embedder) as g:
        tracemalloc.start()
        try:
            res = g.enroll("big", files)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert res.added == n
    assert peak < 2.5 * one, f"peak {peak / 1e6:.0f} MB for {n} images of {one / 1e6:.1f} MB"


def test_a_worker_enrolling_beside_a_recognising_loop(tmp_path, embedder, sample_files,
                                                      query_files):
    """The kiosk's pattern: one Gallery, enroll on a worker, best_matches on the loop."""
    g = Gallery.create(tmp_path / "g", embedder)
    g.enroll("cup", sample_files["cup"])
    queries = embedder.embed(query_files["cup"] + query_files["pizza"])
    started, locked, embedded = threading.Event(), threading.Event(), threading.Event()
    labels = ["pizza", "watch", "sunflower", "headphone"]

    def first_shots():
        started.set()
        locked.wait(timeout=30)  # the loop holds the gallery's lock from here on
        yield from sample_files["pizza"]

    def work():
        g.enroll("pizza", first_shots(), progress=lambda k: embedded.set())
        for label in labels[1:]:
            g.enroll(label, sample_files[label])

    worker = threading.Thread(target=work)
    worker.start()
    assert started.wait(timeout=30)
    with g.store.lock:  # decoding and embedding go on while a query holds the lock
        locked.set()
        assert embedded.wait(timeout=30), "enrollment embedded nothing while the lock was held"
    errors, answers = [], 0
    while worker.is_alive() or answers == 0:
        try:
            got = g.best_matches(queries)
            assert all(lab in ["cup", *labels] for lab, _ in got)
            answers += 1
        except Exception as exc:  # noqa: BLE001 - any failure here is the finding
            errors.append(exc)
            break
    worker.join(timeout=120)
    assert not errors
    assert sorted(g.labels()) == sorted(["cup", *labels])
    assert_answers_like_reference(g, queries)
    g.close()


# -- labels and batch work ---------------------------------------------------------------------
def test_labels_are_validated_and_stored_in_nfc_everywhere(tmp_path, embedder, sample_files):
    from tledge.runtime import gallery

    assert gallery.validate_label is validate_label
    with Gallery.create(tmp_path / "g", embedder) as g:
        res = g.enroll("cafe\u0301", sample_files["cup"][:1])
        assert res.label == "caf\u00e9" and g.labels() == ["caf\u00e9"]
        assert g.enroll("caf\u00e9", sample_files["cup"][:1]).duplicates == 1  # one class
        g.enroll_vectors("the\u0301", embedder.embed(sample_files["cup"][1:2]))
        g.rename("the\u0301", "te\u0301a")
        assert sorted(g.labels()) == ["caf\u00e9", "t\u00e9a"]
        for bad in ("cup\u202eputer", "c\u200bup", "cup\u2028", "cup\udc80"):
            with pytest.raises(GalleryError, match=r"U\+"):
                g.enroll(bad, sample_files["cup"][:1])
            with pytest.raises(GalleryError, match=r"U\+"):
                g.enroll_vectors(bad, embedder.embed(sample_files["cup"][:1]))
            with pytest.raises(GalleryError, match=r"U\+"):
                g.rename("t\u00e9a", bad)


def test_a_class_whose_every_image_is_bad_keeps_each_reason(tmp_path, embedder, sample_files):
    root = tmp_path / "classes"
    (root / "good").mkdir(parents=True)
    (root / "bad").mkdir()
    shutil.copy(sample_files["cup"][0], root / "good" / "a.jpg")
    (root / "bad" / "empty.jpg").write_bytes(b"")
    (root / "bad" / "text.png").write_text("not an image")
    with Gallery.create(tmp_path / "g", embedder) as g:
        results = {r.label: r for r in enroll_folder(g, root)}
    assert results["good"].added == 1 and results["bad"].added == 0
    failed = dict(results["bad"].failed)
    assert set(failed) == {str(root / "bad" / "empty.jpg"), str(root / "bad" / "text.png")}
    assert "empty" in failed[str(root / "bad" / "empty.jpg")]


@pytest.mark.parametrize("kwargs", [{"every": 0}, {"every": -2}, {"max_frames": 0},
                                    {"max_frames": -1}])
def test_recognize_sources_refuses_frame_counts_below_one(tmp_path, embedder, query_files,
                                                          kwargs):
    with Gallery.create(tmp_path / "g", embedder) as g:
        recognizer = Recognizer(embedder, g)
        with pytest.raises(TledgeError, match="every|max_frames"):
            list(recognize_sources(recognizer, [str(query_files["cup"][0])], **kwargs))


# -- galleries from the previous store format --------------------------------------------------
V1_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE classes (id INTEGER PRIMARY KEY, label TEXT NOT NULL UNIQUE,
    created REAL NOT NULL, updated REAL NOT NULL);
CREATE TABLE samples (id INTEGER PRIMARY KEY,
    class_id INTEGER NOT NULL REFERENCES classes(id) ON DELETE CASCADE,
    embedding BLOB NOT NULL, crop BLOB, source TEXT NOT NULL DEFAULT '', created REAL NOT NULL);
CREATE INDEX samples_class ON samples(class_id);
"""


def _format1_gallery(path, embedder, sample_files):
    """A gallery as tledge's store format 1 wrote it (schema and rows of that version)."""
    from tledge.runtime.gallery import _model_meta
    from tledge.runtime.images import encode_jpeg

    path.mkdir()
    db = sqlite3.connect(path / DB_NAME)
    db.executescript(V1_SCHEMA)
    meta = {**_model_meta(embedder), "threshold": "0.5", "created": "0", "store_format": "1",
            "generation": "2"}
    db.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
    for cid, label in enumerate(("cup", "pizza"), 1):
        db.execute("INSERT INTO classes VALUES (?, ?, 0, 0)", (cid, label))
        for f, v in zip(sample_files[label], embedder.embed(sample_files[label])):
            db.execute("INSERT INTO samples(class_id, embedding, crop, source, created) "
                       "VALUES (?, ?, ?, ?, 0)", (cid, v.tobytes(), encode_jpeg(load_image(f)),
                                                  str(f)))
    db.commit()
    db.close()


def test_a_format_1_gallery_is_read_as_is_read_only_and_migrated_for_writing(
        tmp_path, embedder, sample_files, query_files):
    path = tmp_path / "g"
    _format1_gallery(path, embedder, sample_files)
    queries = embedder.embed(query_files["cup"] + query_files["pizza"])
    before = (path / DB_NAME).read_bytes()
    with Gallery.open(path, embedder, read_only=True) as g:
        assert g.store.format == 1 and sorted(g.labels()) == ["cup", "pizza"]
        assert_answers_like_reference(g, queries)
    assert (path / DB_NAME).read_bytes() == before
    with Gallery.open(path, embedder) as g:
        assert g.store.format == 2 and g.store.meta()["gallery_id"]
        rows = g.store.db.execute("SELECT embedding, vector_digest FROM samples").fetchall()
        assert all(hashlib.sha256(e).digest() == d for e, d in rows)
        assert_answers_like_reference(g, queries)
        # old samples have no image digest: never deduplicated against, then known
        assert g.enroll("cup", sample_files["cup"][:1]).added == 1
        assert g.enroll("cup", sample_files["cup"][:1]).duplicates == 1


def test_class_folder_links_to_the_root_or_to_each_other_count_once(tmp_path, sample_files):
    from tledge.runtime.batch import class_folders

    root = tmp_path / "photos"
    for label in ("cup", "watch"):
        (root / label).mkdir(parents=True)
        for f in sample_files[label]:
            (root / label / f.name).write_bytes(f.read_bytes())
    (root / "all").symlink_to(root)                   # root/all -> root: every class again
    (root / "up").symlink_to(tmp_path)                # above the root
    (root / "mug").symlink_to(root / "cup")           # the same folder under a second name
    found = class_folders(root)
    assert set(found) == {"cup", "watch"} or set(found) == {"mug", "watch"}
    assert sum(len(v) for v in found.values()) == len(sample_files["cup"]) + len(sample_files["watch"])
