"""Frame sources: a webcam index, a video file, a folder of images or one image, alike.

Each yields ``Frame`` objects whose ``image`` is RGB uint8 (H, W, 3).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tledge.errors import ImageError, SourceError
from tledge.runtime.images import IMAGE_SUFFIXES, list_images, load_image

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")


@dataclass(frozen=True)
class Frame:
    """One frame from a source: its ``index`` in the stream, an RGB ``uint8`` ``image`` of
    shape (H, W, 3), a ``timestamp`` (seconds, ``time.time()``) and a ``name`` (the image file, or
    ``<source>#<index>`` for a camera or video)."""

    index: int
    image: np.ndarray
    timestamp: float
    name: str


class FrameSource:
    """Iterate frames; ``close()`` releases the device. ``loop`` restarts files at the end."""

    description = "source"

    def __iter__(self) -> Iterator[Frame]:
        raise NotImplementedError

    def close(self) -> None:
        """Release the underlying device or file (no-op by default)."""

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _cv2():
    import cv2

    return cv2


class CameraSource(FrameSource):
    """An OpenCV video device (webcam index) or a video file."""

    def __init__(self, target: int | str, loop: bool = False) -> None:
        self.target, self.loop = target, loop
        self.is_camera = isinstance(target, int)
        self.description = f"camera {target}" if self.is_camera else f"video {target}"
        self.cap = self._open()

    def _open(self):
        cv2 = _cv2()
        cap = cv2.VideoCapture(self.target)
        if not cap.isOpened():
            cap.release()
            if self.is_camera:
                raise SourceError(
                    f"camera {self.target} could not be opened (no such device, or it is in use); "
                    "check the connection, try another index, or pass a video file or folder"
                )
            raise SourceError(f"video {self.target} could not be opened (unsupported or corrupt)")
        return cap

    def __iter__(self) -> Iterator[Frame]:
        cv2 = _cv2()
        index = 0
        while True:
            ok, bgr = self.cap.read()
            if not ok:
                if self.is_camera:
                    raise SourceError(f"camera {self.target} stopped delivering frames (lost?)")
                if not self.loop or index == 0:
                    return
                self.cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                continue
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            yield Frame(index, rgb, time.time(), f"{self.description}#{index}")
            index += 1

    def close(self) -> None:
        self.cap.release()


class FolderSource(FrameSource):
    """The images of a folder (sorted by name, recursively, each file once) or one image."""

    def __init__(self, path: Path, loop: bool = False, skip_bad: bool = True) -> None:
        self.path, self.loop, self.skip_bad = path, loop, skip_bad
        self.description = f"images {path}"
        try:  # list_images visits each folder once, so linked loops end, and bounds the walk
            self.files = [path] if path.is_file() else list_images(path)
        except ImageError as exc:
            raise SourceError(str(exc)) from exc
        if not self.files:
            raise SourceError(f"{path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        self.errors: list[str] = []

    def __iter__(self) -> Iterator[Frame]:
        index = 0
        while True:
            for file in self.files:
                try:
                    image = load_image(file)
                except ImageError as exc:
                    if not self.skip_bad:
                        raise
                    self.errors.append(str(exc))
                    continue
                yield Frame(index, image, time.time(), str(file))
                index += 1
            if not self.loop or index == 0:
                return


def open_source(spec: str | int | Path, loop: bool = False) -> FrameSource:
    """Open ``spec``: an int or digit string is a webcam index; else a video, folder or image."""
    if isinstance(spec, int) or (isinstance(spec, str) and spec.isdigit()):
        return CameraSource(int(spec), loop=False)
    path = Path(spec)
    if not path.exists():
        raise SourceError(f"source {spec} not found: pass a webcam index (0), a video file, "
                          "an image folder or an image")
    if not (path.is_dir() or path.is_file()):  # a FIFO or device would block the first read
        raise SourceError(f"source {spec} is not a regular file or folder (a pipe, device or "
                          "socket); pass a video file, an image folder, an image, or a webcam "
                          "by its index (0)")
    if path.is_dir() or path.suffix.lower() in IMAGE_SUFFIXES:
        return FolderSource(path, loop=loop)
    if path.suffix.lower() in VIDEO_SUFFIXES:
        return CameraSource(str(path), loop=loop)
    raise SourceError(f"{spec}: unknown source type; expected a video "
                      f"({', '.join(VIDEO_SUFFIXES)}), an image, a folder or a webcam index")
