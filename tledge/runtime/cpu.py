"""Which fast 8-bit dot-product instructions this CPU has (read from /proc/cpuinfo).

Why it matters for int8: on x86 without VNNI, ONNX Runtime's U8S8 kernels multiply pairs of
uint8 x int8 with ``vpmaddubsw``, whose 16-bit sums saturate with full 8-bit weights (mean
cosine 0.89 measured on an AVX2 CPU), so tledge quantises weights to 7 bits there
(``reduce_range``). VNNI (``vpdpbusd``, AVX-512 or AVX), AMX and ARM's dot-product
instructions accumulate in 32 bits: full 8-bit weights are exact and faster.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

# Flags (as Linux names them in /proc/cpuinfo) of instructions that accumulate 8-bit
# products in 32 bits, best first.
FAST_INT8_FLAGS = ("amx_int8", "avx512_vnni", "avx_vnni", "asimddp")


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The feature flags of the first CPU in ``cpuinfo`` (default: /proc/cpuinfo; empty
    where it cannot be read, e.g. not Linux). x86 lists them as ``flags``, ARM as
    ``Features``."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            return set(value.split())
    return set()


def fast_int8_dot(flags: set[str] | None = None) -> str | None:
    """The best fast 8-bit dot-product flag this CPU has, or None (then int8 weights are
    kept to 7 bits). macOS on Apple silicon has no /proc/cpuinfo but always has ``asimddp``
    (ARMv8.4 dot product)."""
    if flags is None:
        flags = cpu_flags()
        if not flags and platform.system() == "Darwin" and platform.machine() == "arm64":
            return "asimddp"
    return next((f for f in FAST_INT8_FLAGS if f in flags), None)


def int8_weight_warning(extra: dict, provider: str, fast: str | None = None) -> str | None:
    """A warning when an int8 model built with full 8-bit weights (``--weight-bits 8`` or
    ``auto`` on a VNNI machine) runs on the CPU provider of a CPU without fast 8-bit dot
    products, where those weights saturate; None otherwise. ``extra``: the model's metadata
    ``extra``; ``fast``: this CPU's flag (None: detect; "" for none)."""
    try:
        recipe = json.loads(extra.get("quantization", "{}"))
    except (TypeError, ValueError):
        return None
    if not isinstance(recipe, dict) or recipe.get("reduce_range") is not False \
            or provider != "CPUExecutionProvider":
        return None
    # no /proc/cpuinfo (Windows, BSD): the features cannot be read, say so
    apple = platform.system() == "Darwin" and platform.machine() == "arm64"
    unknown = fast is None and not cpu_flags() and not apple
    if fast is None and not unknown:
        fast = fast_int8_dot() or ""
    if fast:
        return None
    built = recipe.get("built_on_fast_int8_dot") or "a CPU with fast 8-bit dot products"
    here = ("tledge cannot read this CPU's features; if it has no VNNI/AMX/dot-product "
            "instructions" if unknown else
            "this CPU has no VNNI/AMX/dot-product instructions, so")
    return (f"this int8 model has full 8-bit weights (built on {built}); {here} ONNX "
            "Runtime's int8 kernels can saturate and answers may be wrong: re-export it with "
            "`--weight-bits 7` (or quantise it on this machine with `--weight-bits auto`), or "
            "use the fp32 model")
