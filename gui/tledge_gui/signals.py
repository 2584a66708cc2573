"""``emit``: Signal.emit that leaves Python's reference counts as they were.

PySide6 6.12.0 on CPython 3.11 returns ``True`` from ``Signal.emit`` without taking a
reference for it, so every emission drops one reference to ``True``. A worker that emits a
signal per frame brings ``True`` to zero within minutes and the interpreter aborts ("Fatal
Python error: bool_dealloc"). On CPython >= 3.12 ``True`` is immortal and nothing happens.
The defect is measured once at import; where present, ``emit`` gives the reference back.
"""

from __future__ import annotations

import ctypes
import sys

from PySide6.QtCore import QObject, Signal, SignalInstance


class _Probe(QObject):
    ping = Signal()


def _emit_drops_a_reference() -> bool:
    """True when an unconnected ``emit()`` lowers the reference count of its result."""
    probe = _Probe()
    before = sys.getrefcount(True)
    for _ in range(4):
        probe.ping.emit()
    dropped = before - sys.getrefcount(True)
    for _ in range(max(0, dropped)):
        _incref(True)  # give back what the probe itself took
    return dropped >= 4


_incref = ctypes.pythonapi.Py_IncRef
_incref.argtypes = [ctypes.py_object]
_incref.restype = None
_DROPS = _emit_drops_a_reference()


def emit(signal: SignalInstance, *args: object) -> None:
    """``signal.emit(*args)``, compensating the lost reference where the binding loses one."""
    result = signal.emit(*args)
    if _DROPS and isinstance(result, bool):
        _incref(result)
