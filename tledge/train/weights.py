"""Find pretrained weights offline, verify their hash, load them with ``weights_only=True``.

Resolution order: an explicit file; the torch hub cache; a pip package that carries the
exact file; torchvision's download (only when the user allows network); else an error that
names the package to install.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from tledge.errors import WeightsError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WeightsSpec:
    """A published weights file: ``sha256_prefix`` is the hex prefix in its file name."""

    filename: str
    sha256_prefix: str
    description: str
    url: str = ""
    package: str = ""          # pip distribution that carries the file
    module: str = ""           # its import name
    package_path: str = ""     # the file's path inside that module
    install: str = ""          # the command that installs the package


@dataclass(frozen=True)
class LoadedWeights:
    state_dict: dict[str, torch.Tensor]
    source: str


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_file(path: Path, expected_prefix: str = "") -> dict[str, torch.Tensor]:
    """Load a state dict safely; with ``expected_prefix`` the sha256 must start with it."""
    if expected_prefix:
        actual = sha256_of(path)
        if not actual.startswith(expected_prefix):
            raise WeightsError(f"{path}: sha256 {actual[:16]}... does not start with "
                               f"{expected_prefix}; the file is corrupt or not the expected one")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError...
        raise WeightsError(f"{path} is not a loadable PyTorch state dict ({exc})") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path} does not hold a state dict of tensors")
    return state


def candidates(spec: WeightsSpec) -> list[tuple[Path, str]]:
    """Offline places the file may be, with a description of each, in resolution order."""
    found = [(Path(torch.hub.get_dir()) / "checkpoints" / spec.filename, "torch hub cache")]
    if spec.module and importlib.util.find_spec(spec.module) is not None:
        origin = importlib.util.find_spec(spec.module).origin
        if origin:
            found.append((Path(origin).parent / spec.package_path, f"pip package {spec.package}"))
    return found


def resolve(spec: WeightsSpec | None, explicit: str | Path | None = None,
            allow_download: bool = False) -> LoadedWeights:
    """Return the weights for ``spec`` from the first place that has them."""
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise WeightsError(f"weights file {path} not found")
        prefix = spec.sha256_prefix if spec and path.name == spec.filename else ""
        return LoadedWeights(load_file(path, prefix), f"file {path}")
    if spec is None:
        raise WeightsError("this backbone has no published weights; pass --weights FILE")
    for path, where in candidates(spec):
        if path.is_file():
            log.info("weights %s from %s", spec.filename, where)
            state = load_file(path, spec.sha256_prefix)
            return LoadedWeights(state, f"{spec.description} ({where})")
    if allow_download and spec.url:
        log.info("downloading %s", spec.url)
        state = torch.hub.load_state_dict_from_url(spec.url, map_location="cpu", check_hash=True,
                                                   weights_only=True)
        return LoadedWeights(state, f"{spec.description} (downloaded)")
    how = f"install it with `{spec.install}`" if spec.install else "pass --weights FILE"
    raise WeightsError(
        f"pretrained weights {spec.filename} are not available offline; {how}, put the file in "
        f"{Path(torch.hub.get_dir()) / 'checkpoints'}, or allow a download with --allow-download"
    )
