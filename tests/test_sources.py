import cv2
import numpy as np
import pytest

from tledge.errors import SourceError
from tledge.runtime import open_source
from tledge.runtime.recognizer import crop_roi
from tledge.runtime.sources import CameraSource, FolderSource

from .conftest import shared_data


def test_video_file_yields_rgb_frames_and_loops(video):
    with open_source(str(video)) as src:
        frames = list(src)
    assert len(frames) == 10 and frames[0].image.shape == (240, 320, 3)
    assert [f.index for f in frames] == list(range(10))
    with open_source(video, loop=True) as src:
        assert len([f for f, _ in zip(src, range(25))]) == 25


def test_video_frames_are_rgb_not_bgr(tmp_path):
    path = tmp_path / "red.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5, (64, 64))
    for _ in range(3):
        writer.write(np.full((64, 64, 3), (0, 0, 255), np.uint8))  # red in BGR
    writer.release()
    with open_source(path) as src:
        r, g, b = next(iter(src)).image[32, 32]
    assert r > 200 and g < 50 and b < 50


def test_folder_source_reads_sorted_images_and_skips_bad_ones(tmp_path, sample_files):
    for i, f in enumerate(sample_files["cup"]):
        (tmp_path / f"{i}.jpg").write_bytes(f.read_bytes())
    (tmp_path / "1b.jpg").write_bytes(b"broken")
    src = open_source(tmp_path)
    assert isinstance(src, FolderSource)
    frames = list(src)
    assert [f.name.rsplit("/", 1)[-1] for f in frames] == ["0.jpg", "1.jpg", "2.jpg"]
    assert len(src.errors) == 1 and "1b.jpg" in src.errors[0]


def test_single_image_is_a_source(sample_files):
    with open_source(sample_files["cup"][0]) as src:
        assert len(list(src)) == 1


def test_missing_camera_says_what_to_do():
    with pytest.raises(SourceError, match="camera 97 could not be opened.*video file or folder"):
        open_source("97")


@pytest.mark.parametrize("spec,message", [("nope/missing.mp4", "not found"), ("pyproject.toml", "unknown source type")])
def test_bad_sources_explain(spec, message):
    with pytest.raises(SourceError, match=message):
        open_source(spec)


def test_corrupt_video_is_reported(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 1000)
    with pytest.raises(SourceError, match="could not be opened"):
        CameraSource(str(bad))


def test_shared_bottle_video_plays():
    path = shared_data("video", "bottle-detection.mp4")
    with open_source(path) as src:
        frames = [f for f, _ in zip(src, range(30))]
    assert frames[0].image.shape == (360, 640, 3)


def test_roi_crops_and_clips():
    img = np.arange(100 * 80 * 3, dtype=np.uint8).reshape(100, 80, 3)
    assert crop_roi(img, (10, 20, 30, 40)).shape == (40, 30, 3)
    assert crop_roi(img, (70, 90, 50, 50)).shape == (10, 10, 3)
    with pytest.raises(Exception, match="outside"):
        crop_roi(img, (200, 200, 10, 10))


def test_folder_beyond_the_walk_limit_is_a_source_error(tmp_path, sample_files, monkeypatch):
    from tledge.runtime import folders

    for i, f in enumerate(sample_files["cup"][:2]):
        (tmp_path / f"{i}.jpg").write_bytes(f.read_bytes())
    monkeypatch.setattr(folders, "MAX_FOLDER_FILES", 1)
    with pytest.raises(SourceError, match=r"more than 1 images under this folder"):
        open_source(tmp_path)


def test_folder_source_with_a_linked_loop_ends(tmp_path, sample_files):
    for i, f in enumerate(sample_files["cup"][:2]):
        (tmp_path / f"{i}.jpg").write_bytes(f.read_bytes())
    (tmp_path / "loop").symlink_to(".")
    with open_source(tmp_path) as src:
        assert [f.name.rsplit("/", 1)[-1] for f in src] == ["0.jpg", "1.jpg"]


@pytest.mark.parametrize("name", ["clip.mp4", "frames"])
def test_a_named_pipe_is_refused_instead_of_blocking_forever(tmp_path, name):
    """Issue 12 attack C5: a FIFO named like a video hung `tledge recognize` at the first read."""
    import os
    import threading

    fifo = tmp_path / name
    os.mkfifo(fifo)
    outcome: list[BaseException | object] = []

    def attempt() -> None:
        try:
            outcome.append(open_source(str(fifo)))
        except SourceError as exc:
            outcome.append(exc)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(timeout=20)
    if worker.is_alive():  # the bug: unblock the reader so the thread can end, then fail
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail(f"open_source({fifo}) blocked on a named pipe")
    assert len(outcome) == 1 and isinstance(outcome[0], SourceError), outcome
    assert "not a regular file or folder" in str(outcome[0]) and str(fifo) in str(outcome[0])
