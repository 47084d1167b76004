"""Strict, safe loading of official-layout checkpoints written from the official model code."""

import logging
import pickle

import pytest
import torch
from reference import install_reference_stubs

from unisam.models.checkpoint import load_checkpoint, read_state_dict, save_checkpoint
from unisam.models.sam import build_sam
from unisam.registry import EDGE_SAM, MOBILE_SAM, SAM_VIT_B

install_reference_stubs()
from edge_sam.build_sam import build_edge_sam  # noqa: E402
from mobile_sam import build_sam_vit_t  # noqa: E402
from segment_anything import build_sam_vit_b  # noqa: E402


def _randomised_state(builder) -> dict[str, torch.Tensor]:
    """An official model's state dict with every floating tensor random (so loading is observable)."""
    torch.manual_seed(0)
    state = builder().state_dict()
    return {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in state.items()}


@pytest.fixture(scope="module")
def edge_sam_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "edge_sam.pth"
    torch.save(_randomised_state(build_edge_sam), path)
    return path


def _assert_loaded_exactly(model, state):
    ours = model.state_dict()
    assert set(ours) <= set(state)
    differing = [k for k, v in ours.items() if not torch.equal(v, state[k])]
    assert not differing, f"{len(differing)} tensors differ from the file, e.g. {differing[:3]}"


@pytest.mark.parametrize(
    "builder, spec",
    [(build_edge_sam, EDGE_SAM), (build_sam_vit_b, SAM_VIT_B), (build_sam_vit_t, MOBILE_SAM)],
    ids=["edge_sam", "sam_vit_b", "mobile_sam"],
)
def test_official_layout_loads_strictly(tmp_path, builder, spec):
    state = _randomised_state(builder)
    path = tmp_path / "official.pth"
    torch.save(state, path)
    model = build_sam(spec)
    report = load_checkpoint(model, path)
    assert report.unexpected == []
    assert report.loaded == len(model.state_dict()) == len(state)
    _assert_loaded_exactly(model, state)


def test_extra_keys_are_reported_and_logged(tmp_path, edge_sam_file, caplog):
    state = torch.load(edge_sam_file, weights_only=True)
    state["rpn_head.conv.weight"] = torch.zeros(3)
    path = tmp_path / "extra.pth"
    torch.save(state, path)
    model = build_sam(EDGE_SAM)
    with caplog.at_level(logging.WARNING):
        report = load_checkpoint(model, path)
    assert report.unexpected == ["rpn_head.conv.weight"]
    assert "rpn_head.conv.weight" in caplog.text
    _assert_loaded_exactly(model, state)


def test_missing_key_raises(tmp_path, edge_sam_file):
    state = torch.load(edge_sam_file, weights_only=True)
    del state["mask_decoder.iou_token.weight"]
    del state["image_encoder.neck.0.weight"]
    path = tmp_path / "missing.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"2 missing keys: .*image_encoder\.neck\.0\.weight"):
        load_checkpoint(build_sam(EDGE_SAM), path)


def test_wrong_shape_raises(tmp_path, edge_sam_file):
    state = torch.load(edge_sam_file, weights_only=True)
    state["prompt_encoder.no_mask_embed.weight"] = torch.zeros(1, 128)
    path = tmp_path / "shape.pth"
    torch.save(state, path)
    expected = r"1 keys with wrong shape: prompt_encoder\.no_mask_embed\.weight: file \(1, 128\) vs model \(1, 256\)"
    with pytest.raises(ValueError, match=expected):
        load_checkpoint(build_sam(EDGE_SAM), path)


class _Payload:
    """Unpickling this would run code: weights_only loading must refuse it."""

    def __reduce__(self):
        return (exec, ("raise SystemExit('arbitrary code ran')",))


def test_pickle_with_arbitrary_object_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"mask_decoder.iou_token.weight": torch.zeros(1, 256), "x": _Payload()}, path)
    with pytest.raises(ValueError, match="weights_only"):
        load_checkpoint(build_sam(EDGE_SAM), path)


def test_pickle_with_arbitrary_object_is_refused_and_named(tmp_path):
    """Both torch.save's zip and a bare pickle: the callable is named, and it did not run."""
    state = {"mask_decoder.iou_token.weight": torch.zeros(1, 256), "x": _Payload()}
    torch.save(state, tmp_path / "zip.pth")
    with (tmp_path / "bare.pth").open("wb") as f:
        pickle.dump(state, f)
    for name in ("zip.pth", "bare.pth"):
        with pytest.raises(ValueError) as info:
            read_state_dict(tmp_path / name)
        message = str(info.value)
        assert "not a plain tensor checkpoint" in message and "refers to builtins.exec" in message
        assert "not executed" in message and info.value.__cause__ is None


def test_damaged_files_are_clear_errors(tmp_path, edge_sam_file):
    data = edge_sam_file.read_bytes()
    save_checkpoint(build_sam(EDGE_SAM), tmp_path / "whole.safetensors")
    tensors = (tmp_path / "whole.safetensors").read_bytes()
    for name, content in {
        "half.pth": data[: len(data) // 2],
        "cut.pth": data[:-64],
        "empty.pth": b"",
        "noise.pth": bytes(range(256)) * 4,
        "half.safetensors": tensors[: len(tensors) // 2],
        "tiny.safetensors": b"abc",
    }.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match="truncated or corrupt") as info:
            read_state_dict(tmp_path / name)
        assert name in str(info.value) and info.value.__cause__ is None
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        read_state_dict(tmp_path / "nope.pth")


def test_missing_keys_error_names_the_extra_keys_too(tmp_path, edge_sam_file):
    state = torch.load(edge_sam_file, weights_only=True)
    state["mask_decoder.iou_tokens.weight"] = state.pop("mask_decoder.iou_token.weight")  # a renamed key
    path = tmp_path / "renamed.pth"
    torch.save(state, path)
    expected = (r"does not fit EdgeSAM: 1 missing keys: mask_decoder\.iou_token\.weight; "
                r"1 keys the model does not have: mask_decoder\.iou_tokens\.weight")
    with pytest.raises(ValueError, match=expected):
        load_checkpoint(build_sam(EDGE_SAM), path, what="EdgeSAM")


def test_wrapped_and_safetensors_round_trip(tmp_path, edge_sam_file):
    state = torch.load(edge_sam_file, weights_only=True)
    wrapped = tmp_path / "train.pth"
    torch.save({"model": state}, wrapped)
    model = build_sam(EDGE_SAM)
    assert load_checkpoint(model, wrapped).unexpected == []
    _assert_loaded_exactly(model, state)

    for name in ("again.pth", "again.safetensors"):
        written = save_checkpoint(model, tmp_path / name)
        assert read_state_dict(written).keys() == model.state_dict().keys()  # flat, official prefixes
        fresh = build_sam(EDGE_SAM)
        assert load_checkpoint(fresh, written).unexpected == []
        _assert_loaded_exactly(fresh, state)
