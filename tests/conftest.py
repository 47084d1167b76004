"""Shared pytest setup: make tests/ importable (tests/reference.py) and keep torch single-threaded."""

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

# Ray Data 2.60 logs a malformed DEBUG record ('Data Context for dataset ...:\n%s'). Ray hands its
# loggers the root logger's handlers of the moment, which under pytest are a test's capture
# handlers; a later test's Ray job then died in one with "not all arguments converted during
# string formatting". At INFO the record is never made (outside pytest it is harmless).
os.environ.setdefault("RAY_DATA_LOG_LEVEL", "INFO")


@pytest.fixture(scope="session")
def clip_reference(tmp_path_factory) -> Path:
    """open_clip's own outputs and unisam's exports of two random open_clip models (ViT-S-32,
    convnext_tiny), made by tests/clip/make_reference.py in the CLIP virtualenv (torch 2.14 +
    torchvision + open_clip, which cannot share this venv's torch 2.13; .ci/setup-clip.sh builds it).
    Returns the folder: ``<arch>.npz``, ``<arch>.pt`` and ``cache/`` (a UNISAM_CACHE_DIR holding the
    exports)."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    python = Path(os.environ.get("UNISAM_CLIP_PYTHON", root / ".venv-clip" / "bin" / "python"))
    if not python.is_file():
        pytest.fail(f"no CLIP virtualenv at {python}: run `bash .ci/setup-clip.sh` (or set UNISAM_CLIP_PYTHON)")
    out = tmp_path_factory.mktemp("clip-reference")
    done = subprocess.run(
        [str(python), str(root / "tests" / "clip" / "make_reference.py"), str(out)],
        capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    if done.returncode:
        sys.stderr.write(done.stderr[-4000:])
        pytest.fail(f"tests/clip/make_reference.py failed ({done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
    return out


@pytest.fixture(scope="session")
def clip_export(clip_reference) -> Path:
    """The export directory of the random convnext_tiny open_clip model (a label model for host tests)."""
    (directory,) = (clip_reference / "cache" / "onnx-clip").glob("convnext_tiny-*")
    return directory



@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray cluster of 2 CPUs for one test module (the ray extra; CI installs it)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
