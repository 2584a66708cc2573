"""Enrollment augmentation: recorded in the gallery, the same views at enrollment and query."""

from __future__ import annotations

import numpy as np
import pytest

from tledge.errors import GalleryError, TledgeError
from tledge.runtime import Gallery
from tledge.runtime.augment import AUGMENTS, pool_views, view_count, views
from tledge.runtime.images import load_image
from tledge.runtime.preprocess import preprocess_one


def manual_views_embedding(embedder, rgb: np.ndarray, augment: str) -> np.ndarray:
    """By hand: each view preprocessed and run alone, the unit vectors averaged, normalised."""
    rows = [embedder.embed_tensor(preprocess_one(v, embedder.info.preprocess)[None])[0]
            for v in views(rgb, augment)]
    mean = np.mean(rows, axis=0)
    return mean / np.linalg.norm(mean)


def test_views_are_the_picture_and_its_mirror_image(sample_files):
    rgb = load_image(sample_files["cup"][0])
    assert [view_count(a) for a in AUGMENTS] == [1, 2]
    plain, (same, mirror) = views(rgb, "none"), views(rgb, "flip")
    assert len(plain) == 1 and np.array_equal(plain[0], rgb) and np.array_equal(same, rgb)
    assert np.array_equal(mirror, rgb[:, ::-1]) and not np.array_equal(mirror, rgb)
    with pytest.raises(TledgeError, match="unknown augmentation"):
        views(rgb, "crops")


def test_pool_views_averages_each_pictures_views():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(6, 4)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    got = pool_views(v, 3)
    want = np.stack([v[:3].mean(0), v[3:].mean(0)])
    np.testing.assert_allclose(got, want / np.linalg.norm(want, axis=1, keepdims=True), atol=1e-6)
    with pytest.raises(TledgeError, match="whole groups"):
        pool_views(v[:5], 3)


def test_enrollment_and_query_use_identical_views(tmp_path, embedder, sample_files):
    augment = "flip"
    shots = sample_files["cup"] + sample_files["watch"]  # more views than one batch
    embedder.batch_size = 3
    with Gallery.create(tmp_path / "g", embedder, augment=augment,
                        augment_queries=True) as g:
        g.enroll("things", shots)
        labels, stored = g.vectors()
        assert g.info()["augment"] == augment and g.info()["augment_queries"] is True
        # stored shots: each the mean of its views, as computed by hand
        by_hand = np.stack([manual_views_embedding(embedder, load_image(f), augment)
                            for f in shots])
        np.testing.assert_allclose(stored, by_hand, atol=1e-5)
        # a query of the very same picture gets the very same views: the same vector
        np.testing.assert_allclose(g.embed_queries(shots), stored, atol=1e-6)
        np.testing.assert_allclose(embedder.embed(shots, augment=augment), stored, atol=1e-6)
        # query-time augmentation off: the picture alone
        g.augment_queries = False
        np.testing.assert_allclose(g.embed_queries(shots[:1]), embedder.embed(shots[:1]),
                                   atol=1e-6)
        assert not np.allclose(g.embed_queries(shots[:1]), stored[:1], atol=1e-4)
    with Gallery.open(tmp_path / "g", embedder) as g:  # the setting is the gallery's
        assert g.augment == augment and g.augment_queries is False


def test_default_gallery_stores_plain_embeddings(tmp_path, embedder, sample_files):
    with Gallery.create(tmp_path / "g", embedder) as g:
        g.enroll("cup", sample_files["cup"])
        assert g.augment == "none" and not g.augment_queries
        np.testing.assert_allclose(g.vectors()[1], embedder.embed(sample_files["cup"]),
                                   atol=1e-6)
        np.testing.assert_allclose(g.embed_queries(sample_files["cup"]), g.vectors()[1],
                                   atol=1e-6)


def test_reembed_changes_the_views_with_every_shot(tmp_path, embedder, sample_files):
    from tledge.runtime.images import decode_image

    with Gallery.create(tmp_path / "g", embedder) as g:
        g.enroll("cup", sample_files["cup"])
        g.reembed(embedder, augment="flip")
        assert g.augment == "flip"
        crops = [decode_image(c, "crop") for c in g.crops("cup")]
        np.testing.assert_allclose(g.vectors()[1], embedder.embed(crops, augment="flip"),
                                   atol=1e-6)
        with pytest.raises(GalleryError, match="unknown augmentation"):
            g.reembed(embedder, augment="mirror")
        assert g.augment == "flip"


def test_unknown_augmentation_is_refused_at_creation(tmp_path, embedder):
    with pytest.raises(GalleryError, match="unknown augmentation 'spin'"):
        Gallery.create(tmp_path / "g", embedder, augment="spin")
    assert not (tmp_path / "g").exists()


def test_live_recognition_follows_the_gallerys_query_views(tmp_path, embedder, sample_files):
    from tledge.runtime import Gallery, Recognizer
    from tledge.runtime.images import load_image

    with Gallery.create(tmp_path / "g", embedder, augment="flip",
                        augment_queries=True) as gallery:
        gallery.enroll("cup", sample_files["cup"][:1])
        image = load_image(sample_files["cup"][0])
        live = Recognizer(embedder, gallery, fast_resize=False).recognize(image)
        assert live.score == pytest.approx(1.0, abs=1e-5)          # same views as the shot
        gallery.augment_queries = False
        plain = Recognizer(embedder, gallery, fast_resize=False).recognize(image)
        assert plain.score < live.score


def test_cli_enroll_creates_an_augmented_gallery_and_keeps_its_views(tiny_model, sample_files,
                                                                      tmp_path, capsys):
    from tledge.cli import main

    label, files = next(iter(sample_files.items()))
    base = ["enroll", "-m", str(tiny_model), "-g", str(tmp_path / "g"), "--label", label]
    assert main(base + ["--augment", "flip", "--augment-queries", *map(str, files[:2])]) == 0
    with Gallery.open(tmp_path / "g") as gallery:
        assert gallery.augment == "flip" and gallery.augment_queries
    assert main(base + [str(files[2])]) == 0            # no flag: the gallery's own views
    assert main(base + ["--augment", "none", str(files[2])]) == 1
    assert "was created with augment 'flip'" in capsys.readouterr().err
    assert main(base + ["--augment", "flip", str(files[2])]) == 0   # the same views: fine
    with Gallery.open(tmp_path / "g") as gallery:
        assert gallery.vectors()[0].count(label) == 3    # the refused run stored nothing
    with pytest.raises(SystemExit) as exc:
        main(base + ["--augment-queries", str(files[0])])
    assert exc.value.code == 2
    from tledge.cli.enroll import AUGMENT_CHOICES

    assert AUGMENT_CHOICES == AUGMENTS
