"""Label-model cards (issue #16): OpenAI's CLIP releases, loaded from their TorchScript archive, give
open_clip's embeddings through unisam's ONNX path; weights under a non-permissive licence are neither
downloaded nor used until the user accepts the licence by name.

No pretrained weights can be downloaded here: tests/clip/make_openai_reference.py (in the CLIP
virtualenv) writes a TorchScript archive in the layout of OpenAI's ``ViT-B-32.pt`` from seeded random
weights, what ``open_clip.load_openai_model`` computes from it, and unisam's export of it. Cards whose
URL serves that archive (``file://``) stand in for the network. The archive is of open_clip's
``ViT-S-32`` (OpenAI's layout; CI time); ``UNISAM_OPENAI_TEST_ARCH=ViT-B-32`` runs the released model's
shape (about 25 s more on 2 cores).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from clip_venv import run_clip_script

import unisam
from unisam import registry
from unisam.cli import main
from unisam.registry import LabelModelCard, LicenseNotAcceptedError, WeightFile
from unisam.weights import sha256_file

ARCH = os.environ.get("UNISAM_OPENAI_TEST_ARCH", "ViT-S-32")


@pytest.fixture(scope="module")
def openai_reference(tmp_path_factory) -> Path:
    """``archive.pt``, ``reference.npz`` (open_clip's embeddings), ``reference.json`` (names, open_clip's
    URLs for pretrained="openai") and ``cache/`` (unisam's export of the archive)."""
    return run_clip_script("make_openai_reference.py", tmp_path_factory.mktemp("openai-reference"), ARCH)


@pytest.fixture
def in_reference_cache(openai_reference, monkeypatch) -> Path:
    monkeypatch.setenv("UNISAM_CACHE_DIR", str(openai_reference / "cache"))
    monkeypatch.delenv(registry.ACCEPT_LICENSES_ENV, raising=False)
    return openai_reference


def served_card(reference: Path, pretrained: str, license: str = "MIT", url: str | None = None) -> LabelModelCard:
    """A card whose file is the reference archive, served from ``file://`` under a name of its own."""
    archive = reference / "archive.pt"
    weights = WeightFile(f"{pretrained}.pt", archive.as_uri(), sha256_file(archive), None)
    return LabelModelCard(ARCH, pretrained, weights, license, "test card", license_url=url)


def assert_gives_open_clips_embeddings(model, reference: Path) -> None:
    ref = dict(np.load(reference / "reference.npz"))
    names = json.loads((reference / "reference.json").read_text())["names"]
    text = model.encode_text(names)
    image = model.encode_image([ref[f"picture{i}"] for i in range(3)])  # two non-square, one square
    assert (text * ref["text"]).sum(axis=1).min() > 0.9999
    assert (image * ref["image"]).sum(axis=1).min() > 0.9999
    # tighter than the cosine: on these random weights GELU in place of OpenAI's QuickGELU still gives
    # cosines above 0.9999 but moves the unit-length embeddings by 1e-3 (measured; QuickGELU: 2e-7)
    np.testing.assert_allclose(text, ref["text"], atol=1e-4)
    np.testing.assert_allclose(image, ref["image"], atol=1e-4)
    np.testing.assert_array_equal((image @ text.T).argmax(axis=1), (ref["image"] @ ref["text"].T).argmax(axis=1))
    np.testing.assert_array_equal((text @ image.T).argmax(axis=1), (ref["text"] @ ref["image"].T).argmax(axis=1))
    assert model.logit_scale == pytest.approx(float(ref["logit_scale"]))


def test_openai_cards_pin_the_sha256_of_openais_url(openai_reference):
    open_clips_urls = json.loads((openai_reference / "reference.json").read_text())["openai_url"]
    for arch in ("ViT-B-32", "ViT-B-16"):
        card = registry.get_label_card(arch, "openai")
        assert card.weights.url == open_clips_urls[arch]  # the URL open_clip itself lists for the tag
        assert card.weights.url.split("/")[-2] == card.weights.sha256 and len(card.weights.sha256) == 64
        assert card.license == "MIT" and not card.opt_in and "github.com/openai/CLIP" in card.license_url


def test_an_openai_archive_by_path_gives_open_clips_embeddings(in_reference_cache):
    model = unisam.load_label_model(ARCH, weights=in_reference_cache / "archive.pt")
    meta = json.loads((model.directory / "model.json").read_text())
    assert meta["arch"] == ARCH and meta["image_size"] == 224
    assert_gives_open_clips_embeddings(model, in_reference_cache)


def test_a_card_downloads_verifies_and_caches_an_openai_archive(in_reference_cache, monkeypatch):
    card = served_card(in_reference_cache, "openai-served")
    monkeypatch.setitem(registry._LABEL_REGISTRY, (ARCH, card.pretrained), card)
    with pytest.raises(unisam.WeightsNotFoundError, match=f"unisam weights pull {ARCH}/openai-served"):
        unisam.load_label_model(ARCH, pretrained=card.pretrained, download=False)
    model = unisam.load_label_model(ARCH, pretrained=card.pretrained)  # fetched from its URL, sha256-checked
    assert (in_reference_cache / "cache" / "openai-served.pt").is_file() and model.name == f"{ARCH}/openai-served"
    assert_gives_open_clips_embeddings(model, in_reference_cache)


def test_a_file_that_is_not_openais_is_refused_under_the_cards_name(openai_reference, tmp_path, monkeypatch):
    monkeypatch.setenv("UNISAM_CACHE_DIR", str(tmp_path))
    card = registry.get_label_card("ViT-B-32", "openai")
    (tmp_path / card.weights.filename).symlink_to(openai_reference / "archive.pt")
    with pytest.raises(ValueError, match=f"has SHA-256 [0-9a-f]{{64}}, expected {card.weights.sha256}"):
        unisam.load_label_model("ViT-B-32", pretrained="openai", download=False)
    assert not (tmp_path / "onnx-clip").exists()


def test_no_registered_card_needs_a_licence_opt_in_by_default():
    for name in registry.list_label_models():
        card = registry.get_label_card(*name.split("/", 1))
        assert not card.opt_in, name
        registry.require_license(card)  # returns: nothing to accept


def test_research_only_weights_need_their_licence_accepted_by_name(in_reference_cache, monkeypatch, capsys):
    # no official sha256 of a MobileCLIP file was found, so the gate is shown on a card registered here
    url = "https://huggingface.co/apple/MobileCLIP-S1-OpenCLIP/blob/main/LICENSE"
    card = served_card(in_reference_cache, "research-only", license="apple-amlr", url=url)
    monkeypatch.setitem(registry._LABEL_REGISTRY, (ARCH, card.pretrained), card)
    downloaded = in_reference_cache / "cache" / card.weights.filename
    message = (r"under the 'apple-amlr' licence, not a permissive one: read it at .*MobileCLIP-S1-OpenCLIP.*"
               r"accept_license='apple-amlr'.*--accept-license apple-amlr.*UNISAM_ACCEPT_LICENSES=apple-amlr")
    for accepted in (None, "MIT"):
        with pytest.raises(LicenseNotAcceptedError, match=message):
            unisam.load_label_model(ARCH, pretrained=card.pretrained, accept_license=accepted)
    monkeypatch.setenv(registry.ACCEPT_LICENSES_ENV, "MIT,cc-by-nc")
    with pytest.raises(LicenseNotAcceptedError):
        unisam.load_label_model(ARCH, pretrained=card.pretrained)
    assert main(["weights", "pull", card.name]) == 2
    assert "'apple-amlr' licence" in capsys.readouterr().err
    assert not downloaded.exists()  # refused before any download

    assert main(["weights", "list"]) == 0
    (line,) = [row for row in capsys.readouterr().out.splitlines() if card.name in row]
    assert f"apple-amlr (opt-in: {url})" in line

    model = unisam.load_label_model(ARCH, pretrained=card.pretrained, accept_license="apple-amlr")
    assert downloaded.is_file() and model.name == card.name
    downloaded.unlink()
    monkeypatch.setenv(registry.ACCEPT_LICENSES_ENV, "MIT, apple-amlr")
    assert main(["weights", "pull", card.name]) == 0 and downloaded.is_file()
    monkeypatch.delenv(registry.ACCEPT_LICENSES_ENV)
    downloaded.unlink()
    assert main(["weights", "pull", card.name, "--accept-license", "apple-amlr"]) == 0 and downloaded.is_file()


def test_a_torchscript_archive_gives_its_tensors_and_a_damaged_one_a_clear_error(tmp_path):
    import zipfile

    import torch

    from unisam.models.checkpoint import is_torchscript_archive, read_state_dict

    layer = torch.nn.Linear(3, 2).half()
    good = tmp_path / "archive.pt"
    torch.jit.script(layer).save(str(good))
    state = read_state_dict(good)
    assert is_torchscript_archive(good) and set(state) == {"weight", "bias"}
    torch.testing.assert_close(state["weight"], layer.weight.detach())
    plain = tmp_path / "state.pt"
    torch.save(layer.state_dict(), plain)
    assert not is_torchscript_archive(plain)
    damaged = tmp_path / "damaged.pt"
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(damaged, "w") as out:
        for item in source.infolist():
            data = source.read(item)
            out.writestr(item, data[: len(data) // 2] if item.filename.endswith("/data.pkl") else data)
    with pytest.raises(ValueError, match="could not be read as a TorchScript archive"):
        read_state_dict(damaged)
