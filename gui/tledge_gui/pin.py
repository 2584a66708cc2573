"""The kiosk's unlock PIN: where it comes from, and how guessing it is slowed down.

A PIN on the command line is readable by every user of the machine (``ps``, /proc), so it is
taken from a file or the environment. Wrong tries are free up to ``free_tries``; after that
the lock refuses every try for a delay that doubles with each further wrong PIN.
"""

from __future__ import annotations

import hmac
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

from tledge.errors import TledgeError

PIN_ENV = "TLEDGE_GUI_PIN"


def read_pin(pin_file: Path | None, environ: dict[str, str] | None = None) -> str | None:
    """The PIN from ``pin_file`` (first line) or ``$TLEDGE_GUI_PIN``; None when neither is set.

    A file that others may read is refused: it would leak the PIN as the command line did.
    """
    environ = os.environ if environ is None else environ
    if pin_file is None:
        return environ.get(PIN_ENV) or None
    try:
        mode = pin_file.stat().st_mode
        text = pin_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TledgeError(f"cannot read the PIN file {pin_file}: {exc}") from exc
    if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise TledgeError(f"the PIN file {pin_file} is readable by other users; "
                          f"restrict it with `chmod 600 {pin_file}`")
    pin = (text.splitlines() or [""])[0].strip()
    if not pin:
        raise TledgeError(f"the PIN file {pin_file} is empty; write the PIN on its first line")
    return pin


class PinLock:
    """Checks PINs in constant time and locks out after repeated wrong ones.

    ``clock`` returns seconds (monotonic); tests pass their own to skip the waiting.
    """

    def __init__(self, pin: str, clock: Callable[[], float] = time.monotonic,
                 free_tries: int = 3, first_delay: float = 30.0,
                 max_delay: float = 3600.0) -> None:
        if not pin:
            raise TledgeError("the kiosk PIN must not be empty")
        self._pin = pin.encode("utf-8")
        self.clock, self.free_tries = clock, free_tries
        self.first_delay, self.max_delay = first_delay, max_delay
        self.failures = 0
        self._until = 0.0

    def locked_for(self) -> float:
        """Seconds until the next try is accepted (0 when it is accepted now)."""
        return max(0.0, self._until - self.clock())

    def try_pin(self, text: str) -> bool:
        """True for the right PIN while not locked; a refused try while locked costs nothing,
        but does not count either (so waiting out the delay is the only way on)."""
        if self.locked_for() > 0:
            return False
        if hmac.compare_digest(text.encode("utf-8"), self._pin):
            self.failures = 0
            return True
        self.failures += 1
        extra = self.failures - self.free_tries
        if extra >= 0:
            delay = min(self.max_delay, self.first_delay * 2 ** min(extra, 32))
            self._until = self.clock() + delay
        return False
