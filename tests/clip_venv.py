"""Run a script of tests/clip/ in the CLIP virtualenv (torch 2.14 + torchvision + open_clip, which cannot
share the project venv's torch 2.13; .ci/setup-clip.sh builds it, UNISAM_CLIP_PYTHON overrides it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_clip_script(script: str, out: Path, *args: str, timeout_s: float = 900) -> Path:
    """``<clip venv python> tests/clip/<script> <out> <args...>``; fails the test with the script's last error
    line when it fails. Returns ``out``."""
    python = Path(os.environ.get("UNISAM_CLIP_PYTHON", ROOT / ".venv-clip" / "bin" / "python"))
    if not python.is_file():
        pytest.fail(f"no CLIP virtualenv at {python}: run `bash .ci/setup-clip.sh` (or set UNISAM_CLIP_PYTHON)")
    done = subprocess.run(
        [str(python), str(ROOT / "tests" / "clip" / script), str(out), *args],
        capture_output=True, text=True, timeout=timeout_s, env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    if done.returncode:
        sys.stderr.write(done.stderr[-4000:])
        pytest.fail(f"tests/clip/{script} failed ({done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
    return out
