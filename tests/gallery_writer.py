"""Helper process for the crash and concurrency tests: enrolls classes in a loop.

usage: python gallery_writer.py MODEL GALLERY PREFIX COUNT
Each class gets exactly SHOTS samples, so a class with any other count was half-written.
"""

import sys
from pathlib import Path

from tledge.runtime import Embedder, Gallery
from tledge.samples import enroll_dir

SHOTS = 3


def main() -> None:
    model, gallery_path, prefix, count = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    files = sorted(enroll_dir().rglob("*.jpg"))
    embedder = Embedder(model, providers="cpu", threads=1)
    with Gallery.open(gallery_path, embedder) as gallery:
        print("ready", flush=True)
        for i in range(count):
            shots = [files[(i * SHOTS + k) % len(files)] for k in range(SHOTS)]
            gallery.enroll(f"{prefix}{i}", shots)
            if i % 5 == 4:
                gallery.remove(f"{prefix}{i - 2}")  # deletes are transactions too


if __name__ == "__main__":
    main()
