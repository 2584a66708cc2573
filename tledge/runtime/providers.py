"""Choose the ONNX Runtime execution provider that can really run here.

ONNX Runtime lists CUDAExecutionProvider whenever the GPU package is installed, even on a
machine without a driver, and then silently falls back to the CPU. So ``auto`` asks for CUDA
only when the driver library loads, and every session reports the provider it really got.
"""

from __future__ import annotations

import ctypes
import logging
import sys

from tledge.errors import ProviderError, suggest

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
ALIASES = {"cpu": CPU, "cuda": CUDA}
CHOICES = ("auto", "cpu", "cuda")


def available() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def cuda_unavailable_reason() -> str | None:
    """None when the CUDA provider can plausibly load, else why it cannot."""
    if CUDA not in available():
        return "this onnxruntime build has no CUDA provider (install onnxruntime-gpu)"
    lib = "nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1"
    try:
        ctypes.CDLL(lib)
    except OSError as exc:
        return f"the NVIDIA driver library {lib} cannot be loaded ({exc})"
    return None


def requested(providers: str | list[str]) -> tuple[list[str], bool]:
    """Map ``auto``/``cpu``/``cuda`` or explicit ORT names to (provider list, strict).

    ``strict`` means the first provider was asked for by name and must really run.
    """
    if isinstance(providers, str):
        key = providers.lower()
        if key == "auto":
            reason = cuda_unavailable_reason()
            if reason is None:
                return [CUDA, CPU], False
            log.info("CUDA not used: %s; running on %s", reason, CPU)
            return [CPU], False
        if key not in ALIASES:
            raise ProviderError(f"unknown provider {providers!r}." + suggest(key, CHOICES))
        providers = [ALIASES[key]] if key == "cpu" else [ALIASES[key], CPU]
    names = [ALIASES.get(p.lower(), p) for p in providers]
    have = available()
    missing = [p for p in names if p not in have]
    if missing:
        raise ProviderError(
            f"provider {missing[0]} is not in this onnxruntime build (have: {', '.join(have)})"
        )
    if names[0] == CUDA:
        reason = cuda_unavailable_reason()
        if reason:
            raise ProviderError(f"CUDA was requested but cannot run: {reason}; use --providers cpu")
    return names, True


def check_active(session_providers: list[str], wanted: list[str], strict: bool) -> str:
    """Return the provider that really runs; raise if a strictly requested one fell back."""
    active = session_providers[0] if session_providers else CPU
    if strict and active != wanted[0]:
        raise ProviderError(
            f"{wanted[0]} was requested but ONNX Runtime fell back to {active} "
            "(see the onnxruntime log above for why)"
        )
    if active != wanted[0]:
        log.warning("%s failed to start; running on %s", wanted[0], active)
    return active
