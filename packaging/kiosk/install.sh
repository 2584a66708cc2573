#!/usr/bin/env bash
# Install the kiosk service on a Debian/Ubuntu/Raspberry Pi OS box (run as root from a checkout).
#   sudo packaging/kiosk/install.sh MODEL.onnx [GALLERY_DIR]
# Creates the "tledge" system user, a runtime-only virtual environment in /opt/tledge/venv
# (no torch), /etc/tledge/kiosk.env and /var/lib/tledge/{model.onnx,gallery}, then enables
# and starts tledge-kiosk.service.
set -euo pipefail
[[ $EUID -eq 0 ]] || { echo "run as root (sudo)" >&2; exit 1; }
model="${1:?usage: install.sh MODEL.onnx [GALLERY_DIR]}"
gallery="${2:-}"
repo="$(cd "$(dirname "$0")/../.." && pwd)"
id tledge >/dev/null 2>&1 || useradd --system --home-dir /var/lib/tledge --shell /usr/sbin/nologin \
    --groups video tledge
python3 -m venv /opt/tledge/venv
/opt/tledge/venv/bin/pip install --quiet --upgrade pip
/opt/tledge/venv/bin/pip install --quiet "$repo[runtime]"
install -d -o tledge -g tledge -m 750 /var/lib/tledge
install -o tledge -g tledge -m 640 "$model" /var/lib/tledge/model.onnx
if [[ -n "$gallery" ]]; then
  cp -r "$gallery" /var/lib/tledge/gallery && chown -R tledge:tledge /var/lib/tledge/gallery
fi
install -d -m 755 /etc/tledge
[[ -f /etc/tledge/kiosk.env ]] || install -m 644 "$repo/packaging/kiosk/kiosk.env" /etc/tledge/kiosk.env
install -m 644 "$repo/packaging/kiosk/tledge-kiosk.service" /etc/systemd/system/tledge-kiosk.service
if [[ ! -d /var/lib/tledge/gallery ]]; then
  echo "note: no gallery yet; enroll one, e.g.:"
  echo "  sudo -u tledge /opt/tledge/venv/bin/tledge enroll --model /var/lib/tledge/model.onnx \\"
  echo "       --gallery /var/lib/tledge/gallery --folder SHOTS_DIR"
fi
systemctl daemon-reload
systemctl enable --now tledge-kiosk.service
systemctl --no-pager status tledge-kiosk.service || true
echo "events: curl -N http://127.0.0.1:8765/events    health: curl http://127.0.0.1:8765/health"
