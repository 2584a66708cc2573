#!/usr/bin/env bash
# Build the desktop app with PyInstaller into dist/tledge-gui/ (Linux; the same spec works on
# Windows and macOS from their own machines). Run from anywhere after scripts/bootstrap.sh.
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
py="${PYTHON:-$repo/.venv/bin/python}"
"$py" -m pip install --quiet "pyinstaller>=6.10"
cd "$repo"
"$py" -m PyInstaller --noconfirm --clean --distpath dist --workpath build/pyinstaller \
    packaging/desktop/tledge-gui.spec
echo "built: $repo/dist/tledge-gui/tledge-gui"
echo "try:   QT_QPA_PLATFORM=offscreen dist/tledge-gui/tledge-gui --help"
