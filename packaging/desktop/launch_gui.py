"""Entry point of the frozen desktop build (PyInstaller runs this file)."""

import sys

from tledge_gui.app import main

if __name__ == "__main__":
    sys.exit(main())
