"""The headless kiosk service: recognition loop, debounced JSON events, a local HTTP API.

Runtime only (no torch): ``pip install "tledge[runtime]"`` is enough.
"""

from tledge.kiosk.debounce import Debouncer
from tledge.kiosk.service import KioskConfig, KioskService

__all__ = ["Debouncer", "KioskConfig", "KioskService"]
