"""``tledge demo``: export (or reuse) a model, enroll the shipped samples, recognise
held-back and unknown images, and report. No webcam, no network."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tledge.artifact import DEFAULT_BACKBONE
from tledge.errors import ArtifactError, TledgeError
from tledge.runtime.batch import enroll_folder
from tledge.runtime.embedder import Embedder
from tledge.runtime.gallery import DB_NAME, Gallery
from tledge.runtime.images import is_image_file, load_image
from tledge.runtime.recognizer import Recognizer
from tledge.samples import enroll_dir, query_dir, unknown_dir


@dataclass
class DemoRow:
    image: str
    expected: str | None
    got: str | None
    score: float
    candidate: str | None

    @property
    def ok(self) -> bool:
        return self.expected == self.got


@dataclass
class DemoReport:
    model: Path
    gallery: Path
    provider: str
    classes: int
    shots: int
    enroll_seconds: float
    rows: list[DemoRow] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)

    def accuracy(self, known: bool) -> float:
        rows = [r for r in self.rows if (r.expected is not None) == known]
        return sum(r.ok for r in rows) / max(1, len(rows))


def ensure_model(workdir: Path, backbone: str, say: Callable[[str], None]) -> Path:
    """The demo model in ``workdir``: reused when it is valid, exported otherwise."""
    path = workdir / f"{backbone}.onnx"
    if path.is_file():
        try:
            Embedder(path, providers="cpu")
            say(f"Reusing the exported model {path}")
            return path
        except TledgeError as exc:
            say(f"Re-exporting: the existing {path} is not usable ({exc})")
    try:
        from tledge.train.export import ExportOptions, export_model
    except ImportError as exc:
        raise TledgeError("the demo needs an exported model: install the training side "
                          "(`pip install \"tledge[train]\"`) or pass --model M.onnx") from exc
    say(f"Exporting {backbone} (ImageNet weights, offline) to {path} ...")
    report = export_model(path, ExportOptions(backbone=backbone))
    say(f"  parity PyTorch vs ONNX Runtime: min cosine {report.min_cosine:.6f} on "
        f"{report.parity_images} images; {report.size_bytes / 1e6:.1f} MB")
    return path


def run_demo(workdir: Path, backbone: str = DEFAULT_BACKBONE, model: Path | None = None,
             providers: str = "auto", threads: int | None = None,
             say: Callable[[str], None] = print) -> DemoReport:
    workdir.mkdir(parents=True, exist_ok=True)
    model = model or ensure_model(workdir, backbone, say)
    embedder = Embedder(model, providers=providers, threads=threads)
    embedder.warmup()
    gallery_dir = workdir / "gallery"
    if (gallery_dir / DB_NAME).exists():
        shutil.rmtree(gallery_dir)  # the demo gallery is rebuilt each run, from shipped data
    elif gallery_dir.exists():
        raise ArtifactError(f"{gallery_dir} exists and is not a gallery; move it away")
    start = time.perf_counter()
    with Gallery.create(gallery_dir, embedder) as gallery:
        results = enroll_folder(gallery, enroll_dir())
        enroll_s = time.perf_counter() - start
        report = DemoReport(model, gallery_dir, embedder.provider, len(results),
                            sum(r.added for r in results), enroll_s)
        say(f"Enrolled {report.classes} classes from {report.shots} shots in {enroll_s:.2f} s "
            f"(no training)")
        recognizer = Recognizer(embedder, gallery)
        for expected, path in _queries():
            res = recognizer.recognize(load_image(path))
            report.latencies_ms.append(res.latency_ms)
            report.rows.append(DemoRow(path.name if expected is None else f"{expected}/{path.name}",
                                       expected, res.label, res.score, res.candidate))
    return report


def _queries() -> list[tuple[str | None, Path]]:
    known = [(p.parent.name, p) for p in sorted(query_dir().rglob("*")) if is_image_file(p)]
    unknown = [(None, p) for p in sorted(unknown_dir().iterdir()) if is_image_file(p)]
    return known + unknown


def format_report(report: DemoReport) -> str:
    lines = [f"{'image':34} {'expected':12} {'recognised':24} {'score':>6}"]
    for r in report.rows:
        got = r.got or f"unknown ({r.candidate})"
        mark = "ok" if r.ok else "MISS"
        lines.append(f"{r.image[:34]:34} {r.expected or 'unknown':12} {got[:24]:24} "
                     f"{r.score:6.3f} {mark}")
    lat = sorted(report.latencies_ms)
    n_known = sum(r.expected is not None for r in report.rows)
    lines += [
        "",
        f"known images recognised correctly: {report.accuracy(True):.0%} of {n_known}",
        f"unknown images rejected:           {report.accuracy(False):.0%} of "
        f"{len(report.rows) - n_known}",
        f"provider: {report.provider}; latency per image (decode excluded): "
        f"median {lat[len(lat) // 2]:.1f} ms, max {lat[-1]:.1f} ms",
        "",
        f"Model:   {report.model}",
        f"Gallery: {report.gallery}",
        "Recognise your own images (files, folders, videos or a webcam index):",
        f"  tledge recognize --model {report.model} --gallery {report.gallery} PATH...",
        "Enroll your own objects (one folder per object):",
        f"  tledge enroll --model {report.model} --gallery {report.gallery} --folder DIR",
    ]
    return "\n".join(lines)
