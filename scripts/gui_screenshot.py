"""Make docs/gui.png: the real app recognising real objects in a real camera clip.

usage: python scripts/gui_screenshot.py MODEL.onnx [VIDEO] [OUT.png]
Enrolls "bottle" and "empty table" from a region of the clip's frames (through the Gallery
API, as the app's Capture button does), then runs the app offscreen with --screenshot.
"""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from tledge.runtime import Embedder, Gallery, open_source
from tledge.runtime.recognizer import crop_roi

ROI = (40, 60, 130, 290)  # the left bottle's place in the 640x360 clip
# frames where that place holds a bottle, and where it is empty (looked up by eye)
BOTTLE, EMPTY = (0, 80, 400, 960), (260, 300, 600, 800)


def main() -> None:
    model = Path(sys.argv[1])
    video = Path(sys.argv[2] if len(sys.argv) > 2 else "../shared/data/video/bottle-detection.mp4")
    out = Path(sys.argv[3] if len(sys.argv) > 3 else "docs/gui.png").resolve()
    work = Path(tempfile.mkdtemp(prefix="tledge-shot-"))
    wanted = {i: "bottle" for i in BOTTLE} | {i: "empty table" for i in EMPTY}
    shots: dict[str, list] = {"bottle": [], "empty table": []}
    with open_source(video) as src:
        for frame in src:
            if frame.index in wanted:
                shots[wanted[frame.index]].append(crop_roi(frame.image, ROI))
            if frame.index > max(wanted):
                break
    with Gallery.create(work / "gallery", Embedder(model)) as gallery:
        for label, images in shots.items():
            gallery.enroll(label, images)
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "XDG_CONFIG_HOME": str(work)}
    subprocess.run([sys.executable, "-m", "tledge_gui.app", "--model", str(model), "--gallery",
                    str(work / "gallery"), "--source", str(video),
                    "--roi", ",".join(map(str, ROI)), "--screenshot", str(out),
                    "--exit-after", "8"], env=env, check=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
