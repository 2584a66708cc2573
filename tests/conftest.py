"""Shared fixtures: small real models exported once per session, real sample images."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from tledge.runtime.images import load_image
from tledge.samples import enroll_dir, query_dir, unknown_dir

SHARED = Path(os.environ.get("TLEDGE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test with the reason."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data {path} is not present (only in the project's CI and dev machines)")
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """The tiny backbone exported through the real exporter (seconds, not minutes)."""
    from tledge.train.export import ExportOptions, export_model

    path = tmp_path_factory.mktemp("models") / "tiny.onnx"
    export_model(path, ExportOptions(backbone="tiny", parity_limit=8))
    return path


@pytest.fixture(scope="session")
def mobilenet_model(tmp_path_factory) -> Path:
    """The real ImageNet MobileNetV2, exported once for the slow tests."""
    from tledge.train.export import ExportOptions, export_model

    path = tmp_path_factory.mktemp("models") / "mobilenet_v2.onnx"
    export_model(path, ExportOptions(backbone="mobilenet_v2", parity_limit=8))
    return path


@pytest.fixture(scope="session")
def default_model(tmp_path_factory) -> Path:
    """The default backbone (what `tledge demo` and `tledge export` use), exported once."""
    from tledge.artifact import DEFAULT_BACKBONE
    from tledge.train.export import ExportOptions, export_model

    path = tmp_path_factory.mktemp("models") / f"{DEFAULT_BACKBONE}.onnx"
    export_model(path, ExportOptions(parity_limit=8))
    return path


@pytest.fixture()
def embedder(tiny_model):
    from tledge.runtime import Embedder

    return Embedder(tiny_model, providers="cpu")


@pytest.fixture()
def sample_files() -> dict[str, list[Path]]:
    """The shipped enrollment shots, by class."""
    return {d.name: sorted(d.glob("*.jpg")) for d in sorted(enroll_dir().iterdir()) if d.is_dir()}


@pytest.fixture()
def query_files() -> dict[str, list[Path]]:
    return {d.name: sorted(d.glob("*.jpg")) for d in sorted(query_dir().iterdir()) if d.is_dir()}


@pytest.fixture()
def unknown_files() -> list[Path]:
    return sorted(unknown_dir().glob("*.jpg"))


def write_clip(path: Path, images: list[Path], frames_each: int) -> Path:
    """A real MJPG video (320x240, 10 FPS): each image held for ``frames_each`` frames."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (320, 240))
    for image in images:
        frame = cv2.resize(load_image(image)[:, :, ::-1], (320, 240))
        for _ in range(frames_each):
            writer.write(np.ascontiguousarray(frame))
    writer.release()
    return path


@pytest.fixture()
def video(tmp_path, query_files):
    """A real video made from real photos (cup then watch), 5 frames each."""
    return write_clip(tmp_path / "clip.avi", [query_files[c][0] for c in ("cup", "watch")], 5)


def perturbed_copy(model: Path, out: Path, delta: float = 0.05) -> Path:
    """``model`` with its first float weight tensor shifted by ``delta`` and the metadata
    re-stamped by tledge's own writer: a genuinely different, valid model file."""
    import onnx
    from onnx import numpy_helper

    from tledge.runtime.embedder import load_verified
    from tledge.train.metadata import write_model

    _, info = load_verified(model)
    proto = onnx.load(str(model))
    init = next(t for t in proto.graph.initializer
                if t.data_type == onnx.TensorProto.FLOAT and np.prod(t.dims) > 1)
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) + np.float32(delta),
                                          init.name))
    write_model(proto, info, out)
    return out


@pytest.fixture()
def other_model(tiny_model, tmp_path):
    """The tiny model with other weights, stamped by tledge: another valid fingerprint."""
    return perturbed_copy(tiny_model, tmp_path / "other.onnx")


@pytest.fixture(scope="session")
def classes(tmp_path_factory):
    """Ten classes of six real images each (the shipped enroll + query shots, linked):
    enough for 5-way 5-shot episodes with one query."""
    root = tmp_path_factory.mktemp("classes")
    for d in sorted(p for p in enroll_dir().iterdir() if p.is_dir()):
        (root / d.name).mkdir()
        for f in sorted(d.glob("*.jpg")) + sorted((query_dir() / d.name).glob("*.jpg")):
            (root / d.name / f"{f.parent.parent.name}-{f.name}").symlink_to(f)
    return root
