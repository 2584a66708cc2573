import pytest

from tledge.errors import TledgeError
from tledge.runtime import Gallery, Recognizer, open_source
from tledge.runtime.images import load_image


@pytest.fixture()
def gallery(tmp_path, embedder, query_files):
    with Gallery.create(tmp_path / "g", embedder) as g:
        g.enroll("cup", [query_files["cup"][0]])
        g.enroll("watch", [query_files["watch"][0]])
        yield g


def labels_over(recognizer, video):
    with open_source(video) as src:
        return [recognizer.recognize(f.image).candidate for f in src]


def test_video_frames_are_recognised(embedder, gallery, video):
    seen = labels_over(Recognizer(embedder, gallery), video)
    assert seen == ["cup"] * 5 + ["watch"] * 5


def test_smoothing_delays_a_change_of_label(embedder, gallery, video):
    seen = labels_over(Recognizer(embedder, gallery, smoothing=4), video)
    assert seen[:5] == ["cup"] * 5 and seen[-1] == "watch"
    assert seen.index("watch") > 5


def test_threshold_gives_unknown_with_candidate(embedder, gallery, query_files):
    image = load_image(query_files["cup"][2])  # not an enrolled image: a score below 0.99
    strict = Recognizer(embedder, gallery, threshold=0.99)
    res = strict.recognize(image)
    assert res.label is None and res.candidate == "cup" and res.latency_ms > 0
    assert res.to_dict()["known"] is False


def test_roi_is_used(embedder, gallery, query_files):
    image = load_image(query_files["cup"][0])
    whole = Recognizer(embedder, gallery).recognize(image)
    part = Recognizer(embedder, gallery).recognize(image, roi=(0, 0, 40, 40))
    assert whole.score != pytest.approx(part.score)


def test_bad_smoothing_is_refused(embedder, gallery):
    with pytest.raises(TledgeError, match="smoothing"):
        Recognizer(embedder, gallery, smoothing=0)


def test_recognizer_follows_the_galleries_mode_or_its_own(embedder, tmp_path, sample_files,
                                                         query_files):
    """A query enrolled as one sample of "near" amid far samples: nearest-sample matching says
    "near", class prototypes say "proto" (the class whose mean is closest)."""
    query = load_image(query_files["cup"][0])
    near, proto = split_for_modes(embedder, query, sample_files)
    with Gallery.create(tmp_path / "modes", embedder) as g:
        g.enroll_vectors("near", near)
        g.enroll_vectors("proto", proto)
        assert Recognizer(embedder, g).recognize(query).candidate == "proto"
        assert Recognizer(embedder, g, mode="nearest").recognize(query).candidate == "near"
        g.mode = "nearest"  # None follows the gallery
        assert Recognizer(embedder, g).recognize(query).candidate == "near"
        assert Recognizer(embedder, g, mode="prototype").recognize(query).candidate == "proto"


def split_for_modes(embedder, query, sample_files):
    """(vectors of "near", vectors of "proto"): the query's own embedding plus the two real
    samples least like it, and the five real samples most like it (asserted to disagree)."""
    import numpy as np

    files = [f for fs in sample_files.values() for f in fs]
    vectors, v = embedder.embed(files), embedder.embed([query])[0]
    order = np.argsort(vectors @ v)
    near, proto = np.vstack([v[None], vectors[order[:2]]]), vectors[order[-5:]]
    mean = [m / np.linalg.norm(m) for m in (near.mean(0), proto.mean(0))]
    assert (near @ v).max() > (proto @ v).max() + 0.01      # nearest sample: "near"
    assert mean[1] @ v > mean[0] @ v + 0.05                 # closest prototype: "proto"
    return near, proto
