import numpy as np
import pytest

from tledge.errors import GalleryError, ImageError
from tledge.runtime import Embedder, Gallery
from tledge.runtime.gallery import CACHE_NAME, DB_NAME


@pytest.fixture()
def gallery(tmp_path, embedder, sample_files):
    g = Gallery.create(tmp_path / "g", embedder)
    for label in ("cup", "watch", "pizza", "sunflower"):
        g.enroll(label, sample_files[label])
    yield g
    g.close()


def brute_force(g: Gallery, embedder, sample_files, labels):
    """(sample labels, sample vectors) re-embedded independently of the gallery code."""
    names, vecs = [], []
    for label in labels:
        v = embedder.embed(sample_files[label])
        names += [label] * len(v)
        vecs.append(v)
    return np.array(names), np.concatenate(vecs)


def test_classify_matches_brute_force_prototypes_and_nearest(gallery, embedder, sample_files, query_files):
    labels = ["cup", "watch", "pizza", "sunflower"]
    names, vecs = brute_force(gallery, embedder, sample_files, labels)
    protos = np.stack([vecs[names == lab].mean(0) for lab in labels])
    protos /= np.linalg.norm(protos, axis=1, keepdims=True)
    queries = embedder.embed([f for lab in labels for f in query_files[lab]])
    sims = queries @ protos.T
    got = gallery.classify_batch(queries, threshold=-1.0)
    assert [g[0] for g in got] == [labels[i] for i in sims.argmax(1)]
    np.testing.assert_allclose([g[1] for g in got], sims.max(1), atol=1e-5)
    near = gallery.classify_batch(queries, mode="nearest", threshold=-1.0)
    sample_sims = queries @ vecs.T
    assert [g[0] for g in near] == list(names[sample_sims.argmax(1)])
    np.testing.assert_allclose([g[1] for g in near], sample_sims.max(1), atol=1e-5)


def test_search_returns_k_nearest_like_numpy(gallery, embedder, sample_files, query_files):
    names, vecs = brute_force(gallery, embedder, sample_files, ["cup", "watch", "pizza", "sunflower"])
    q = embedder.embed(query_files["cup"])
    results = gallery.search(q, k=4)
    for row, qv in zip(results, q):
        order = np.argsort(-(vecs @ qv))[:4]
        assert [m.label for m in row] == list(names[order])
        assert row[0].score >= row[-1].score


def test_threshold_turns_weak_matches_into_unknown(gallery, embedder, query_files):
    q = embedder.embed(query_files["cup"][:1])[0]
    label, score = gallery.classify(q)
    gallery.threshold = min(1.0, score + 0.01)
    assert gallery.classify(q) == (None, pytest.approx(score, abs=1e-6))
    gallery.threshold = score - 0.01
    assert gallery.classify(q)[0] == label


def test_labels_are_data_not_paths(tmp_path, embedder, sample_files):
    odd = ["tasse à café ☕", "a/b\\c", "it's \"quoted\"", "../../etc", "杯子", "DROP TABLE classes;"]
    with Gallery.create(tmp_path / "g", embedder) as g:
        for label in odd:
            g.enroll(label, sample_files["cup"][:1])
        assert sorted(g.labels()) == sorted(odd)
    files = {p.name for p in (tmp_path / "g").iterdir()}
    assert files <= {DB_NAME, CACHE_NAME, DB_NAME + "-wal", DB_NAME + "-shm"}


@pytest.mark.parametrize("label", ["", "   ", " padded", "tab\there", "x" * 201])
def test_bad_labels_are_refused(gallery, sample_files, label):
    with pytest.raises(GalleryError):
        gallery.enroll(label, sample_files["cup"][:1])


def test_remove_rename_and_add_shots(gallery, sample_files):
    gallery.rename("cup", "mug")
    assert "mug" in gallery.labels() and "cup" not in gallery.labels()
    again = gallery.enroll("mug", sample_files["cup"][:1])  # the same picture: skipped
    assert (again.added, again.duplicates) == (0, 1)
    gallery.enroll("mug", sample_files["cup"][:1], allow_duplicates=True)
    assert {c.label: c.samples for c in gallery.classes()}["mug"] == 4
    gallery.remove("mug")
    assert "mug" not in gallery.labels()
    with pytest.raises(GalleryError, match="did you mean 'watch'"):
        gallery.remove("wach")
    with pytest.raises(GalleryError, match="already exists"):
        gallery.rename("watch", "pizza")


def test_failed_enrollment_writes_nothing(gallery, tmp_path, sample_files):
    bad = tmp_path / "bad.jpg"
    bad.write_text("nope")
    before = gallery.info()
    with pytest.raises(ImageError, match="bad.jpg"):
        gallery.enroll("new", [sample_files["cup"][0], bad])
    assert gallery.info() == before
    res = gallery.enroll("new", [sample_files["cup"][0], bad], skip_bad=True)
    assert res.added == 1 and res.failed[0][0] == str(bad)


def test_gallery_from_another_model_is_refused_with_reembed_hint(gallery, mobilenet_like):
    path = gallery.path
    gallery.close()
    with pytest.raises(GalleryError, match="another model.*tledge gallery reembed"):
        Gallery.open(path, mobilenet_like)


def test_reembed_moves_a_gallery_to_a_new_model(gallery, mobilenet_like, query_files):
    path = gallery.path
    counts = {c.label: c.samples for c in gallery.classes()}
    assert gallery.reembed(mobilenet_like) == sum(counts.values())
    gallery.close()
    with Gallery.open(path, mobilenet_like) as g:
        assert {c.label: c.samples for c in g.classes()} == counts
        assert g.search(mobilenet_like.embed(query_files["cup"][:1]), k=1)[0][0].score > 0


def test_index_cache_is_rebuilt_when_missing_stale_or_corrupt(gallery, embedder, query_files):
    path = gallery.path
    q = embedder.embed(query_files["pizza"])
    expected = gallery.classify_batch(q, threshold=-1)
    gallery.close()
    cache = path / CACHE_NAME
    assert cache.exists()
    for damage in ("delete", "corrupt", "stale"):
        if damage == "delete":
            cache.unlink()
        elif damage == "corrupt":
            cache.write_bytes(b"garbage")
        with Gallery.open(path, embedder) as g:
            if damage == "stale":
                other = Gallery.open(path, embedder)  # a second process adds a class
                other.enroll("extra", query_files["cup"][:1])
                other.close()
            got = g.classify_batch(q, threshold=-1)
            assert [x[0] for x in got] == [x[0] for x in expected] or damage == "stale"
            assert g._current().size == sum(c.samples for c in g.classes())


def test_open_missing_gallery_explains(tmp_path, embedder):
    with pytest.raises(GalleryError, match="no gallery at .*tledge enroll"):
        Gallery.open(tmp_path / "nothing", embedder)
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / DB_NAME).write_bytes(b"not sqlite at all, just some bytes" * 10)
    with pytest.raises(GalleryError):
        Gallery.open(tmp_path / "x", embedder)


def test_empty_gallery_answers_unknown(tmp_path, embedder):
    with Gallery.create(tmp_path / "g", embedder) as g:
        assert g.classify(np.ones(embedder.dim, np.float32) / np.sqrt(embedder.dim)) == (None, -1.0)
        assert g.search(np.zeros((1, embedder.dim), np.float32)) == [[]]


@pytest.fixture()
def mobilenet_like(tmp_path_factory):
    """A second real model with another fingerprint: the tiny backbone with other weights."""
    import torch

    from tledge.train.backbones import get_backbone
    from tledge.train.export import ExportOptions, export_model

    backbone, _, _ = get_backbone("tiny")
    state = {k: (v + 0.05 if v.is_floating_point() else v) for k, v in backbone.state_dict().items()}
    weights = tmp_path_factory.mktemp("w") / "tiny-shifted.pt"
    torch.save(state, weights)
    path = tmp_path_factory.mktemp("m") / "other.onnx"
    export_model(path, ExportOptions(backbone="tiny", weights=str(weights), parity_limit=4))
    return Embedder(path, providers="cpu")
