#!/usr/bin/env bash
# napari adapter tests: a virtual X display (Xvfb), the X/GL libraries that Qt5 and vispy need (software
# OpenGL through Mesa), then napari with PyQt5 and the pytest plugins (pytest-qt, pytest-xvfb).
# Run from the repo root with the venv active, as root on Debian; safe to run again.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
    xvfb xauth fonts-dejavu-core libglib2.0-0 libdbus-1-3 libfontconfig1 \
    libgl1 libegl1 libglx-mesa0 libgl1-mesa-dri \
    libx11-xcb1 libxkbcommon0 libxkbcommon-x11-0 libxcb1 libxcb-cursor0 libxcb-icccm4 libxcb-image0 \
    libxcb-keysyms1 libxcb-randr0 libxcb-render0 libxcb-render-util0 libxcb-shape0 libxcb-shm0 \
    libxcb-sync1 libxcb-xfixes0 libxcb-xinerama0 libxcb-xkb1 >/dev/null

python -m pip install -q "napari[pyqt5]>=0.5" "magicgui>=0.8" "npe2>=0.7" pytest-qt pytest-xvfb
