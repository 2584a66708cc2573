"""Batch work behind the CLI: enroll a class-per-folder tree, recognise many sources.

Bad images are reported and skipped; the rest of the batch goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tledge.errors import ImageError, SourceError, TledgeError
from tledge.runtime.gallery import EnrollResult, Gallery
from tledge.runtime.images import list_images
from tledge.runtime.recognizer import Recognition, Recognizer
from tledge.runtime.sources import open_source

log = logging.getLogger(__name__)


def class_folders(root: Path) -> dict[str, list[Path]]:
    """``{class name: sorted image files}`` for each sub-folder of ``root`` that has images."""
    root = Path(root)
    if not root.is_dir():
        raise TledgeError(f"{root} is not a folder of class folders")
    found, seen = {}, set()
    top = root.resolve()
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        real = sub.resolve()
        # A link to ROOT or above it (root/all -> .) would file every class under one label,
        # and two links to one folder would enroll it twice: each real folder counts once.
        if top.is_relative_to(real) or real in seen:
            log.warning("skipping %s: it links to %s, already walked", sub, real)
            continue
        seen.add(real)
        files = list_images(sub)
        if files:
            found[sub.name] = files
    if not found:
        raise TledgeError(f"{root} has no sub-folders with images; expected ROOT/<label>/*.jpg")
    return found


def enroll_folder(gallery: Gallery, root: Path, shots: int | None = None,
                  progress: Callable[[int], None] | None = None,
                  allow_duplicates: bool = False) -> list[EnrollResult]:
    """Enroll every class folder under ``root`` (the first ``shots`` images of each).

    Idempotent: pictures a class already holds are skipped (counted in ``duplicates``)
    unless ``allow_duplicates``, so a run killed half-way can simply be run again. Each
    class is one transaction; unreadable files are listed per class in ``failed``.
    """
    if shots is not None and shots < 1:
        raise TledgeError(f"--shots must be at least 1, got {shots}")
    results = []
    for label, files in class_folders(root).items():
        chosen = files[:shots] if shots else files
        results.append(gallery.enroll(label, chosen, skip_bad=True, progress=progress,
                                      allow_duplicates=allow_duplicates))
    return results


@dataclass(frozen=True)
class SourceResult:
    """One recognised frame or image, or the error that stopped it."""

    source: str
    name: str
    frame: int
    result: Recognition | None = None
    error: str | None = None

    def to_dict(self) -> dict:
        out = {"source": self.source, "name": self.name, "frame": self.frame}
        if self.result is not None:
            out.update(self.result.to_dict())
        if self.error is not None:
            out["error"] = self.error
        return out


def recognize_sources(recognizer: Recognizer, sources: Sequence[str],
                      max_frames: int | None = None, every: int = 1) -> Iterator[SourceResult]:
    """Recognise each source in turn (images, folders, videos, webcams); errors are yielded.

    ``every``: recognise every n-th frame (n >= 1); ``max_frames``: stop each source after
    that many recognised frames (>= 1; None for all).
    """
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise TledgeError(f"every must be a whole number of frames >= 1, got {every!r}")
    if max_frames is not None and (isinstance(max_frames, bool)
                                   or not isinstance(max_frames, int) or max_frames < 1):
        raise TledgeError(f"max_frames must be a whole number >= 1 (or None for all), "
                          f"got {max_frames!r}")
    return _recognize_all(recognizer, sources, max_frames, every)


def _recognize_all(recognizer: Recognizer, sources: Sequence[str], max_frames: int | None,
                   every: int) -> Iterator[SourceResult]:
    for spec in sources:
        try:
            source = open_source(spec)
        except (SourceError, ImageError) as exc:
            yield SourceResult(str(spec), str(spec), -1, error=str(exc))
            continue
        recognizer.reset()
        with source:
            yield from _frames(recognizer, source, str(spec), max_frames, every)
        for message in getattr(source, "errors", []):
            yield SourceResult(str(spec), message.split(":", 1)[0], -1, error=message)


def _frames(recognizer: Recognizer, source, spec: str, max_frames: int | None,
            every: int) -> Iterator[SourceResult]:
    done = 0
    try:
        for frame in source:
            if frame.index % every:
                continue
            yield SourceResult(spec, frame.name, frame.index, recognizer.recognize(frame.image))
            done += 1
            if max_frames is not None and done >= max_frames:
                return
    except SourceError as exc:
        yield SourceResult(spec, spec, -1, error=str(exc))
