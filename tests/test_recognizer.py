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
    image = load_image(query_files["cup"][0])
    strict = Recognizer(embedder, gallery, threshold=1.01)
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
