#!/usr/bin/env bash
# The CLIP virtualenv, .venv-clip: torch 2.14.1 + torchvision 0.29.1 (the only pair that installs here;
# the project venv keeps torch 2.13 without torchvision) and open_clip, which imports torchvision.
# tests/clip/make_reference.py runs in it: open_clip's own outputs for the label tests, and the export
# of its models through unisam (installed editable, with the clip extra). Run from the repo root.
set -euo pipefail

if [ ! -x .venv-clip/bin/python ]; then
    python3 -m venv .venv-clip
fi
.venv-clip/bin/python -m pip install -q --upgrade pip
.venv-clip/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
.venv-clip/bin/python -m pip install -q "open_clip_torch==3.3.0" -e ".[clip]"
