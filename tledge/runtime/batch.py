"""Batch work behind the CLI: enroll a class-per-folder tree, recognise many sources.

Bad images are reported and skipped; the rest of the batch goes on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tledge.errors import ImageError, SourceError, TledgeError
from tledge.runtime.gallery import EnrollResult, Gallery
from tledge.runtime.images import list_images
from tledge.runtime.recognizer import Recognition, Recognizer
from tledge.runtime.sources import open_source


def class_folders(root: Path) -> dict[str, list[Path]]:
    """``{class name: sorted image files}`` for each sub-folder of ``root`` that has images."""
    root = Path(root)
    if not root.is_dir():
        raise TledgeError(f"{root} is not a folder of class folders")
    found = {}
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = list_images(sub)
        if files:
            found[sub.name] = files
    if not found:
        raise TledgeError(f"{root} has no sub-folders with images; expected ROOT/<label>/*.jpg")
    return found


def enroll_folder(gallery: Gallery, root: Path, shots: int | None = None,
                  progress: Callable[[int], None] | None = None) -> list[EnrollResult]:
    """Enroll every class folder under ``root`` (the first ``shots`` images of each)."""
    if shots is not None and shots < 1:
        raise TledgeError(f"--shots must be at least 1, got {shots}")
    results = []
    for label, files in class_folders(root).items():
        chosen = files[:shots] if shots else files
        try:
            results.append(gallery.enroll(label, chosen, skip_bad=True, progress=progress))
        except ImageError as exc:  # every image of the class was unreadable
            results.append(EnrollResult(label, 0, [(str(root / label), str(exc))]))
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
    """Recognise each source in turn (images, folders, videos, webcams); errors are yielded."""
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
            if max_frames and done >= max_frames:
                return
    except SourceError as exc:
        yield SourceResult(spec, spec, -1, error=str(exc))
