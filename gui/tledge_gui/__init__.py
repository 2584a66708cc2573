"""The tledge desktop app (PySide6). It holds no ML logic: it calls ``tledge.runtime``."""
