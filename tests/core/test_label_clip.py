"""unisam's CLIP path (ONNX Runtime + NumPy, no torch) gives what open_clip itself computes, for one
ViT and one convolutional open_clip architecture with random weights (see tests/clip/make_reference.py:
open_clip ran there, in its own virtualenv, independently of these tests)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import unisam
from unisam.runtime.clip import ClipModel
from unisam.runtime.tokenizer import ClipTokenizer

ARCHS = ("ViT-S-32", "convnext_tiny")
DENSE_SIZE = {"ViT-S-32": 224, "convnext_tiny": 448}


@pytest.fixture
def in_reference_cache(clip_reference, monkeypatch):
    monkeypatch.setenv("UNISAM_CACHE_DIR", str(clip_reference / "cache"))
    return clip_reference


def load(reference, arch: str, **options) -> ClipModel:
    """The export that ``load_label_model(arch, weights=<state dict>)`` wrote in the reference run."""
    (directory,) = (reference / "cache" / "onnx-clip").glob(f"{arch}-*")
    return ClipModel(directory, **options)


def expected(reference, arch: str) -> dict[str, np.ndarray]:
    return dict(np.load(reference / f"{arch}.npz"))


def names(reference) -> list[str]:
    return json.loads((reference / "reference.json").read_text())["names"]


def test_tokenizer_gives_open_clips_token_ids(clip_reference):
    model = load(clip_reference, "ViT-S-32")
    ref = expected(clip_reference, "ViT-S-32")["tokens"]
    ours = model.tokenizer(names(clip_reference))
    np.testing.assert_array_equal(ours, ref)  # unicode, HTML entities, punctuation, a name cut at 77 tokens
    assert ours[-1, -1] == model.tokenizer.end  # the over-long name keeps its end token


def test_tokenizer_refuses_a_file_that_is_not_clips_merges(tmp_path):
    bad = tmp_path / "merges.txt.gz"
    bad.write_bytes(b"not gzip")
    with pytest.raises(ValueError, match="not a gzipped CLIP BPE merges file"):
        ClipTokenizer(bad)


@pytest.mark.parametrize("arch", ARCHS)
def test_text_and_image_embeddings_match_open_clip(clip_reference, arch):
    model, ref = load(clip_reference, arch), expected(clip_reference, arch)
    text = model.encode_text(names(clip_reference))
    pictures = [ref[f"picture{i}"] for i in range(4)]  # non-square and square, open_clip's preprocess
    image = model.encode_image(pictures)
    assert text.dtype == image.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(text, axis=1), 1, atol=1e-5)
    assert (text * ref["text"]).sum(axis=1).min() > 0.9999
    assert (image * ref["image"]).sum(axis=1).min() > 0.9999
    np.testing.assert_array_equal((image @ text.T).argmax(axis=1), (ref["image"] @ ref["text"].T).argmax(axis=1))
    assert model.logit_scale == pytest.approx(float(ref["logit_scale"]))


@pytest.mark.parametrize("arch", ARCHS)
def test_dense_mask_embeddings_match_open_clips_modules(clip_reference, arch):
    model, ref = load(clip_reference, arch), expected(clip_reference, arch)
    assert model.dense_size == DENSE_SIZE[arch]
    pooled = model.pool_masks(model.dense(ref["dense_image"]), ref["dense_masks"])
    assert pooled.shape == ref["dense"].shape
    assert (pooled * ref["dense"]).sum(axis=1).min() > 0.9999
    text = model.encode_text(names(clip_reference))
    np.testing.assert_array_equal((pooled @ text.T).argmax(axis=1), (ref["dense"] @ ref["text"].T).argmax(axis=1))


def test_a_timm_towers_whole_image_average_is_its_image_embedding(clip_reference):
    """ConvNeXt's global pool is the mean of its dense features: pooling a full mask at the crop size
    must give encode_image (a property of the dense path, independent of the reference run)."""
    model = load(clip_reference, "convnext_tiny", dense_size=224)
    image = expected(clip_reference, "convnext_tiny")["picture2"]  # 224 x 224: no resize, no crop
    whole = model.pool_masks(model.dense(image), np.ones((1, 224, 224), bool))
    assert float(whole[0] @ model.encode_image([image])[0]) > 0.9999


def test_an_open_clip_state_dict_loads_by_path(in_reference_cache):
    """load_label_model(arch, weights=file) finds the export that the first load made (keyed by the
    file's sha256), so this venv, without torch's open_clip, loads it too."""
    model = unisam.load_label_model("convnext_tiny", weights=in_reference_cache / "convnext_tiny.pt")
    ref = expected(in_reference_cache, "convnext_tiny")
    assert model.arch == "convnext_tiny" and model.name == "convnext_tiny"
    assert (model.encode_image([ref["picture0"]]) * ref["image"][:1]).sum() > 0.9999


def test_load_label_model_errors_are_clear(in_reference_cache, tmp_path):
    with pytest.raises(ValueError, match="pretrained=<open_clip tag>"):
        unisam.load_label_model("ViT-S-32")
    with pytest.raises(ValueError, match="not both"):
        unisam.load_label_model("ViT-S-32", pretrained="x", weights="y")
    with pytest.raises(ValueError, match="no registered weights"):
        unisam.load_label_model("ViT-S-32", pretrained="nope")
    with pytest.raises(unisam.WeightsNotFoundError):
        unisam.load_label_model("ViT-S-32", weights=tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="not a CLIP model exported by unisam"):
        unisam.load_label_model(tmp_path)


def test_pretrained_tag_downloads_verifies_and_loads(in_reference_cache, monkeypatch, capsys):
    """``unisam weights pull arch/tag`` and ``load_label_model(arch, pretrained=tag)`` as a user runs them,
    with a card whose weights are served from 127.0.0.1 (the state dict open_clip saved); its size is
    left unknown (None), as for the Hub file whose page shows a rounded size: the SHA-256 decides."""
    import functools
    import http.server
    import threading

    from unisam import registry
    from unisam.cli import main
    from unisam.weights import sha256_file

    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(in_reference_cache))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/convnext_tiny.pt"
        digest = sha256_file(in_reference_cache / "convnext_tiny.pt")
        card = registry.LabelModelCard(
            "convnext_tiny", "served", registry.WeightFile("served-convnext_tiny.pt", url, digest, None), "MIT", "test"
        )
        monkeypatch.setitem(registry._LABEL_REGISTRY, ("convnext_tiny", "served"), card)
        with pytest.raises(unisam.WeightsNotFoundError, match="unisam weights pull convnext_tiny/served"):
            unisam.load_label_model("convnext_tiny", pretrained="served", download=False)
        assert main(["weights", "list"]) == 0 and "convnext_tiny/served" in capsys.readouterr().out
        assert main(["weights", "pull", "convnext_tiny/served"]) == 0
        assert "sha256 verified" in capsys.readouterr().out
        model = unisam.load_label_model("convnext_tiny", pretrained="served", download=False)
        assert model.name == "convnext_tiny/served"
        ref = expected(in_reference_cache, "convnext_tiny")
        assert (model.encode_image([ref["picture1"]]) * ref["image"][1:2]).sum() > 0.9999
        bad = registry.WeightFile("bad-convnext_tiny.pt", url, "0" * 64, None)
        monkeypatch.setitem(registry._LABEL_REGISTRY, ("convnext_tiny", "bad"),
                            registry.LabelModelCard("convnext_tiny", "bad", bad, "MIT", "wrong digest"))
        with pytest.raises(ValueError, match="SHA-256"):
            unisam.load_label_model("convnext_tiny", pretrained="bad")
        assert not (in_reference_cache / "cache" / "bad-convnext_tiny.pt").exists()
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_the_default_label_model_is_registered_with_a_permissive_licence():
    arch, tag = unisam.DEFAULT_LABEL_MODEL.split("/")
    card = unisam.registry.get_label_card(arch, tag)
    assert card.license == "MIT" and len(card.weights.sha256) == 64 and card.weights.url.startswith("https://")
