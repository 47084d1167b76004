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
    from clip_venv import run_clip_script

    return run_clip_script("make_reference.py", tmp_path_factory.mktemp("clip-reference"))


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
