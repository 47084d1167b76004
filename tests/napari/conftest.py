"""napari tests run under a virtual X display (pytest-xvfb) with napari's `make_napari_viewer` fixture;
embeddings go to a per-test cache directory."""

import pytest


@pytest.fixture(autouse=True)
def embedding_cache(tmp_path, monkeypatch):
    """UNISAM_CACHE_DIR for this test: the widget keeps embeddings under <it>/embeddings."""
    monkeypatch.setenv("UNISAM_CACHE_DIR", str(tmp_path / "unisam-cache"))
    return tmp_path / "unisam-cache" / "embeddings"
