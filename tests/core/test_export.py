"""ONNX export: onnxruntime graphs against torch (and the official SAM decoder) on a small EdgeSAM."""

import dataclasses
import hashlib
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from reference import install_reference_stubs

from unisam.models.export import DECODER_INPUTS, DECODER_OUTPUTS, export_onnx
from unisam.models.sam import build_sam
from unisam.registry import EDGE_SAM, ArchSpec

install_reference_stubs()
from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer  # noqa: E402

SIZE = 256
GRID = SIZE // 16
LOGIT_TOL = 1e-5  # relative to the largest logit
ENCODER_TOL = 1e-5


def _randomise(sam: torch.nn.Module) -> None:
    """Random prompt-encoder/decoder weights and BatchNorm statistics, so that fusion is exercised."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in list(sam.prompt_encoder.parameters()) + list(sam.mask_decoder.parameters()):
            p.copy_(torch.randn_like(p) * 0.2)
        for m in sam.image_encoder.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.normal_(1, 0.1)
                m.bias.normal_(0, 0.1)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    spec = dataclasses.replace(EDGE_SAM, image_size=SIZE)
    sam = build_sam(spec).eval()
    _randomise(sam)
    paths = export_onnx(sam, tmp_path_factory.mktemp("onnx"))
    return sam, paths


def _session(path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _max_rel_diff(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(ours - ref).max() / max(1.0, float(np.abs(ref).max())))


def test_model_json_describes_the_export(exported):
    sam, paths = exported
    config = json.loads(paths.config.read_text())
    assert config["format"] == "unisam-onnx-v1"
    arch = {k: v for k, v in config.items() if not k.endswith("sha256") and k != "format"}
    assert ArchSpec.from_dict(arch) == sam.spec
    for key, path in (("encoder_sha256", paths.encoder), ("decoder_sha256", paths.decoder)):
        assert config[key] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_encoder_graph_is_fused_and_matches_torch(exported):
    sam, paths = exported
    graph = onnx.load(str(paths.encoder)).graph
    assert not [n for n in graph.node if n.op_type == "BatchNormalization"]
    image = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = sam.image_encoder(image).numpy()
    (out,) = _session(paths.encoder).run(["image_embeddings"], {"image": image.numpy()})
    assert out.shape == (1, 256, GRID, GRID)
    diff = _max_rel_diff(out, ref)
    assert diff <= ENCODER_TOL, f"encoder max rel diff {diff:.3g} (max |ref| {np.abs(ref).max():.3g})"


def _feed(embedding, coords, labels, masks=None, has_mask=None):
    bs = coords.shape[0]
    if masks is None:
        masks = torch.zeros(bs, 1, 4 * GRID, 4 * GRID)
        has_mask = torch.zeros(bs)
    return dict(zip(DECODER_INPUTS, (embedding, coords, labels, masks, has_mask)))


def _cases():
    g = torch.Generator().manual_seed(2)
    pts = torch.rand(1, 2, 2, generator=g) * SIZE
    box = torch.tensor([[[30.0, 40.0], [180.0, 220.0]]])
    pad = torch.zeros(1, 1, 2)
    mask = torch.randn(1, 1, 4 * GRID, 4 * GRID, generator=g) * 4
    return {
        "points": (torch.cat([pts, pad], 1), torch.tensor([[1.0, 0.0, -1.0]]), None),
        "box": (box, torch.tensor([[2.0, 3.0]]), None),
        "points+box": (torch.cat([pts, box], 1), torch.tensor([[1.0, 1.0, 2.0, 3.0]]), None),
        "mask+point": (torch.cat([pts[:, :1], pad], 1), torch.tensor([[1.0, -1.0]]), mask),
    }


@pytest.mark.parametrize("case", ["points", "box", "points+box", "mask+point"])
def test_decoder_graph_matches_torch(exported, case):
    sam, paths = exported
    coords, labels, mask = _cases()[case]
    embedding = torch.randn(1, 256, GRID, GRID, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref_masks, ref_iou = sam.forward_decoder(embedding, coords, labels, mask, num_outputs=4)
    feed = _feed(embedding, coords, labels, mask, None if mask is None else torch.ones(1))
    iou, masks = _session(paths.decoder).run(DECODER_OUTPUTS, {k: v.numpy() for k, v in feed.items()})
    assert masks.shape == (1, 4, 4 * GRID, 4 * GRID) and iou.shape == (1, 4)
    logit_diff = _max_rel_diff(masks, ref_masks.numpy())
    iou_diff = _max_rel_diff(iou, ref_iou.numpy())
    assert logit_diff <= LOGIT_TOL, f"{case}: max rel low-res logit diff {logit_diff:.3g}"
    assert iou_diff <= LOGIT_TOL, f"{case}: max rel IoU diff {iou_diff:.3g}"


def test_padded_prompt_batch_matches_official_decoder(exported):
    """A batch of prompts padded to one N (label -1), some with a mask input, against segment_anything's
    prompt encoder + mask decoder run prompt by prompt with our weights."""
    sam, paths = exported
    ref_pe = PromptEncoder(
        embed_dim=256, image_embedding_size=(GRID, GRID), input_image_size=(SIZE, SIZE), mask_in_chans=16
    )
    ref_md = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
        transformer_dim=256,
    )
    ref_pe.load_state_dict(sam.prompt_encoder.state_dict())
    ref_md.load_state_dict(sam.mask_decoder.state_dict())

    g = torch.Generator().manual_seed(4)
    embedding = torch.randn(1, 256, GRID, GRID, generator=g)
    n_points = [1, 3, 2, 3]  # real points per prompt; the rest is padding
    coords = torch.rand(4, 4, 2, generator=g) * SIZE
    labels = torch.full((4, 4), -1.0)
    for i, n in enumerate(n_points):
        labels[i, :n] = torch.randint(0, 2, (n,), generator=g).float()
    masks = torch.randn(4, 1, 4 * GRID, 4 * GRID, generator=g) * 4
    has_mask = torch.tensor([0.0, 1.0, 0.0, 1.0])

    feed = _feed(embedding, coords, labels, masks, has_mask)
    iou, low_res = _session(paths.decoder).run(DECODER_OUTPUTS, {k: v.numpy() for k, v in feed.items()})
    assert low_res.shape == (4, 4, 4 * GRID, 4 * GRID) and iou.shape == (4, 4)
    for i, n in enumerate(n_points):
        with torch.no_grad():
            sparse, dense = ref_pe(
                points=(coords[i : i + 1, :n], labels[i : i + 1, :n]),  # SAM appends one padding point
                boxes=None,
                masks=masks[i : i + 1] if has_mask[i] else None,
            )
            if n + 1 < coords.shape[1]:  # our extra padding points are "not a point" tokens too
                extra = ref_pe.not_a_point_embed.weight.expand(1, coords.shape[1] - n - 1, -1)
                sparse = torch.cat([sparse, extra], dim=1)
            single, single_iou = ref_md(embedding, ref_pe.get_dense_pe(), sparse, dense, False)
            multi, multi_iou = ref_md(embedding, ref_pe.get_dense_pe(), sparse, dense, True)
        ref_masks = torch.cat([single, multi], 1).numpy()
        ref_iou = torch.cat([single_iou, multi_iou], 1).numpy()
        logit_diff = _max_rel_diff(low_res[i : i + 1], ref_masks)
        assert logit_diff <= LOGIT_TOL, f"prompt {i} ({n} points): max rel low-res logit diff {logit_diff:.3g}"
        assert _max_rel_diff(iou[i : i + 1], ref_iou) <= LOGIT_TOL


@pytest.fixture(scope="module")
def exported_hires(tmp_path_factory):
    """unisam's small architecture with the high-resolution path (stride-4 features in the embedding)."""
    from unisam.train.recipe import STUDENT

    spec = dataclasses.replace(STUDENT, hires_chans=8)
    sam = build_sam(spec).eval()
    _randomise(sam)
    return sam, export_onnx(sam, tmp_path_factory.mktemp("onnx-hires"))


def test_hires_embedding_carries_stride4_features(exported_hires):
    sam, paths = exported_hires
    spec = sam.spec
    assert spec.embedding_chans == spec.embed_dim + 16 * 8
    image = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref = sam.image_encoder(image).numpy()
    (out,) = _session(paths.encoder).run(["image_embeddings"], {"image": image.numpy()})
    assert out.shape == (1, spec.embedding_chans, GRID, GRID)
    assert _max_rel_diff(out, ref) <= ENCODER_TOL
    # the extra channels are stride-4 features: changing one input pixel changes them near it
    # (squeeze-excite blocks spread a far smaller global change)
    bumped = image.clone()
    bumped[..., 100, 100] += 5
    with torch.no_grad():
        delta = sam.image_encoder(bumped) - sam.image_encoder(image)
    change = torch.nn.functional.pixel_shuffle(delta[:, spec.embed_dim:], 4)[0].abs().amax(0)  # (S/4, S/4)
    near = torch.zeros_like(change, dtype=torch.bool)
    near[21:30, 21:30] = True
    assert change[near].max() > 100 * change[~near].max()


@pytest.mark.parametrize("case", ["points", "box", "mask+point"])
def test_hires_decoder_graph_matches_torch(exported_hires, case):
    sam, paths = exported_hires
    coords, labels, mask = _cases()[case]
    embedding = torch.randn(1, sam.spec.embedding_chans, GRID, GRID, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref_masks, ref_iou = sam.forward_decoder(embedding, coords, labels, mask, num_outputs=4)
        # the high-res channels matter: zeroing them changes the masks
        flat = embedding.clone()
        flat[:, sam.spec.embed_dim:] = 0
        assert (sam.forward_decoder(flat, coords, labels, mask, num_outputs=4)[0] - ref_masks).abs().max() > 1e-3
    feed = _feed(embedding, coords, labels, mask, None if mask is None else torch.ones(1))
    iou, masks = _session(paths.decoder).run(DECODER_OUTPUTS, {k: v.numpy() for k, v in feed.items()})
    assert _max_rel_diff(masks, ref_masks.numpy()) <= LOGIT_TOL
    assert _max_rel_diff(iou, ref_iou.numpy()) <= LOGIT_TOL


def test_decoder_rejects_an_embedding_of_the_wrong_width(exported_hires):
    sam, _ = exported_hires
    coords, labels, _ = _cases()["box"]
    with pytest.raises(ValueError, match="channels"):
        sam.forward_decoder(torch.zeros(1, sam.spec.embed_dim, GRID, GRID), coords, labels)


def test_a_new_hires_path_starts_as_a_no_op():
    """Freshly built, the high-res path adds nothing, so a model with it decodes like one without
    (training from scratch or from a model without the path starts where that model is)."""
    from unisam.train.recipe import STUDENT

    torch.manual_seed(0)
    plain = build_sam(dataclasses.replace(STUDENT, hires_chans=0)).eval()
    hires = build_sam(dataclasses.replace(STUDENT, hires_chans=8)).eval()
    missing, unexpected = hires.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all("hires" in k for k in missing) and missing
    image = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(6))
    coords, labels, _ = _cases()["box"]
    with torch.no_grad():
        ref = plain(image, coords, labels, num_outputs=4)
        out = hires(image, coords, labels, num_outputs=4)
    assert torch.equal(out[0], ref[0]) and torch.equal(out[1], ref[1])


def test_hires_prompts_indexing_several_images_decode_as_one_by_one(exported_hires):
    """Training decodes prompts of several images at once (``image_index``); the high-res features
    are computed per image and must go to the right prompts."""
    sam, _ = exported_hires
    g = torch.Generator().manual_seed(7)
    embeddings = torch.randn(3, sam.spec.embedding_chans, GRID, GRID, generator=g)
    index = torch.tensor([0, 2, 2, 1, 0])
    coords = torch.rand(5, 2, 2, generator=g) * SIZE
    labels = torch.tensor([[2.0, 3.0]] * 5)
    with torch.no_grad():
        masks, iou = sam.forward_decoder(embeddings, coords, labels, num_outputs=4, image_index=index)
        for k, i in enumerate(index.tolist()):
            one_masks, one_iou = sam.forward_decoder(embeddings[i : i + 1], coords[k : k + 1], labels[k : k + 1],
                                                     num_outputs=4)
            assert _max_rel_diff(masks[k : k + 1].numpy(), one_masks.numpy()) <= LOGIT_TOL
            assert _max_rel_diff(iou[k : k + 1].numpy(), one_iou.numpy()) <= LOGIT_TOL
