#!/usr/bin/env bash
# Add tledge to the desktop's application menu for the current user.
# Usage: packaging/desktop/install-desktop-entry.sh [PATH_TO_tledge-gui]
# (default: the frozen build in dist/, else the tledge-gui of the repo's .venv)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
exe="${1:-}"
if [[ -z "$exe" ]]; then
  for candidate in "$repo/dist/tledge-gui/tledge-gui" "$repo/.venv/bin/tledge-gui"; do
    [[ -x "$candidate" ]] && exe="$candidate" && break
  done
fi
[[ -x "$exe" ]] || { echo "no tledge-gui executable found; build it or pass its path" >&2; exit 1; }
apps="${XDG_DATA_HOME:-$HOME/.local/share}/applications"
icons="${XDG_DATA_HOME:-$HOME/.local/share}/icons/hicolor/scalable/apps"
mkdir -p "$apps" "$icons"
install -m 644 "$here/tledge.svg" "$icons/tledge.svg"
sed "s|^Exec=.*|Exec=\"$exe\" %F|" "$here/tledge.desktop" > "$apps/tledge.desktop"
command -v update-desktop-database >/dev/null && update-desktop-database "$apps" || true
echo "installed $apps/tledge.desktop -> $exe"
