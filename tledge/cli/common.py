"""What every command group shares: the model options, progress bars, ``--version``.

Progress: bars go to stderr through tqdm with ``disable=None``, which tqdm turns off when
stderr is not a terminal (a log file, a pipe, a test). ``--quiet`` turns them off too by
showing the command a stderr that says it is not a terminal (``quiet_progress``), so the
library's own bars (training epochs, feature caches, evaluation) obey it without a flag.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.metadata as metadata
import sys
from collections.abc import Iterator
from pathlib import Path

from tqdm import tqdm

from tledge import __version__
from tledge.cli.types import threads


def model_args(p: argparse.ArgumentParser, required: bool = True,
               default_help: str = "required") -> None:
    """``--model/--providers/--threads``: the exported model and how ONNX Runtime runs it."""
    p.add_argument("--model", "-m", type=Path, required=required,
                   help="exported .onnx model" + ("" if required else f" ({default_help})"))
    p.add_argument("--providers", default="auto",
                   help="ONNX Runtime providers: auto (CUDA when available, else CPU), cpu "
                        "or cuda")
    p.add_argument("--threads", type=threads, default=None,
                   help="ONNX Runtime intra-op threads, 1 to 256 (default: ONNX Runtime's "
                        "choice, one per physical core)")


def embedder(args: argparse.Namespace):
    """The ``Embedder`` the model options describe."""
    from tledge.runtime import Embedder

    return Embedder(args.model, providers=args.providers, threads=args.threads)


def progress(total: int | None, desc: str, unit: str = "img", leave: bool = False) -> tqdm:
    """A progress bar on stderr: shown on a terminal, silent otherwise or under --quiet."""
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=None, leave=leave)


class _NotATerminal:
    """stderr as progress bars see it under --quiet: everything else passes through."""

    def __init__(self, stream) -> None:
        self._stream = stream

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


@contextlib.contextmanager
def quiet_progress(quiet: bool) -> Iterator[None]:
    """While the command runs with --quiet, no progress bar (ours or the library's) shows."""
    if not quiet:
        yield
        return
    real = sys.stderr
    sys.stderr = _NotATerminal(real)
    try:
        yield
    finally:
        sys.stderr = real


def _dist_version(*names: str) -> str | None:
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def versions() -> list[str]:
    """One line per component: tledge, Python, ONNX Runtime and its providers, FAISS, and
    PySide6 / torch when installed. Never fails on a missing optional package."""
    lines = [f"tledge {__version__}", f"Python {sys.version.split()[0]}"]
    try:
        ort = importlib.import_module("onnxruntime")
        lines.append(f"ONNX Runtime {ort.__version__} (providers: "
                     f"{', '.join(ort.get_available_providers())})")
    except ImportError:
        lines.append('ONNX Runtime: not installed (pip install "tledge[runtime]")')
    faiss = _dist_version("faiss-cpu", "faiss-gpu", "faiss")
    lines.append(f"FAISS {faiss}" if faiss else 'FAISS: not installed (pip install '
                 '"tledge[runtime]")')
    gui = _dist_version("PySide6", "PySide6-Essentials")
    lines.append(f"PySide6 {gui}" if gui else 'PySide6: not installed (desktop app: pip '
                 'install "tledge[gui]")')
    # torch's version from its metadata: importing torch takes seconds and is not needed
    torch = _dist_version("torch")
    lines.append(f"torch {torch}" if torch else 'torch: not installed (training: pip install '
                 '"tledge[train]")')
    return lines


class VersionAction(argparse.Action):
    """``--version``: print ``versions()`` and exit 0."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS,
                 help="print the versions of tledge, ONNX Runtime (and its providers), FAISS, "
                      "PySide6 and torch, then exit") -> None:
        super().__init__(option_strings, dest, nargs=0, default=default, help=help)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print("\n".join(versions()))
        parser.exit()
