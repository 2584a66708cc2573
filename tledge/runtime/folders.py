"""Find the image files of a folder tree: each file once, every walk finite.

Symbolic links are followed (users link photo folders into class folders), but each folder is
visited once, by the (st_dev, st_ino) its path resolves to, and each file is listed once, by
its real path; folders above the root are never entered. So a self-link, two links into each
other or a link to a parent end instead of looping, and a class folder's link to its parent
does not pull in the other classes. Broken links, hidden entries and unreadable folders are
skipped. The walk is bounded: more than ``MAX_FOLDER_FILES`` images or folders deeper than
``MAX_FOLDER_DEPTH`` is an error that says so.
"""

from __future__ import annotations

import os
from collections import deque
from pathlib import Path

from tledge.errors import ImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
MAX_FOLDER_FILES = 100_000
MAX_FOLDER_DEPTH = 32


def is_image_file(path: Path) -> bool:
    hidden = path.name.startswith(".")
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not hidden


def list_images(root: str | os.PathLike, max_files: int | None = None,
                max_depth: int | None = None) -> list[Path]:
    """Image files under ``root`` (recursive, following symbolic links once), sorted by path.

    Files are named by the path they were first reached by (breadth first, sorted), so a
    file's folder is its shallowest one. Raises ImageError beyond ``max_files`` images or
    ``max_depth`` levels of folders (defaults MAX_FOLDER_FILES, MAX_FOLDER_DEPTH).
    """
    max_files = MAX_FOLDER_FILES if max_files is None else max_files
    max_depth = MAX_FOLDER_DEPTH if max_depth is None else max_depth
    root = Path(root)
    if root.is_file():
        return [root] if is_image_file(root) else []
    seen_dirs = _ancestors(root)  # a link up to a folder holding root is a loop, too
    seen_files: set[str] = set()
    found: list[Path] = []
    budget = max_files + 1
    queue: deque[tuple[Path, int]] = deque([(root, 0)])
    while queue:
        folder, depth = queue.popleft()
        real = _enter(folder, seen_dirs)
        if real is None:
            continue
        if depth > max_depth:
            raise ImageError(f"{folder}: folders nested deeper than {max_depth} levels under "
                             f"{root} (the limit); flatten the tree")
        subdirs, files = _scan(folder, budget)
        budget -= len(files)
        if budget <= 0:  # counted before de-duplication: a bound on the work, too
            raise ImageError(f"{root}: more than {max_files} images under this folder (the "
                             "limit); split it or pass a smaller folder")
        for file, is_link in files:
            key = os.path.realpath(file) if is_link else os.path.join(real, file.name)
            if key not in seen_files:
                seen_files.add(key)
                found.append(file)
        queue.extend((sub, depth + 1) for sub in subdirs)
    return sorted(found)


def _ancestors(root: Path) -> set[tuple[int, int]]:
    """(st_dev, st_ino) of the folders above ``root``'s real path."""
    keys = set()
    for folder in Path(os.path.realpath(root)).parents:
        try:
            info = folder.stat()
        except OSError:
            continue
        keys.add((info.st_dev, info.st_ino))
    return keys


def _enter(folder: Path, seen: set[tuple[int, int]]) -> str | None:
    """The real path of ``folder`` if it was not visited yet (and is readable), else None."""
    try:
        info = folder.stat()
    except OSError:  # vanished or a broken link
        return None
    key = (info.st_dev, info.st_ino)
    if key in seen:
        return None
    seen.add(key)
    return os.path.realpath(folder)


def _scan(folder: Path, limit: int) -> tuple[list[Path], list[tuple[Path, bool]]]:
    """(sub-folders, (image file, is a link)) of one folder, sorted, at most ``limit`` files.

    Hidden entries and broken links are skipped.
    """
    subdirs, files = [], []
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                try:
                    if entry.is_dir():
                        subdirs.append(folder / entry.name)
                    elif entry.is_file() and entry.name.lower().endswith(IMAGE_SUFFIXES):
                        files.append((folder / entry.name, entry.is_symlink()))
                        if len(files) >= limit:  # the caller reports the limit
                            break
                except OSError:  # a link we may not follow, a racing delete
                    continue
    except OSError:  # unreadable folder: skipped, as os.walk does
        return [], []
    return sorted(subdirs), sorted(files)
