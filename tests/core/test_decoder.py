"""Prompt encoder + mask decoder against the official SAM and EdgeSAM code (random seeded weights)."""

import dataclasses

import pytest
import torch
from reference import install_reference_stubs

from unisam.models.sam import build_sam
from unisam.registry import EDGE_SAM

install_reference_stubs()
from edge_sam.modeling import MaskDecoder as EdgeMaskDecoder  # noqa: E402
from edge_sam.modeling import PromptEncoder as EdgePromptEncoder  # noqa: E402
from edge_sam.modeling import TwoWayTransformer as EdgeTwoWayTransformer  # noqa: E402
from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer  # noqa: E402

SIZE = 256  # model input side; embedding grid 16x16, low-res masks 64x64
GRID = SIZE // 16
TOL = 1e-5  # relative to the largest reference value


def _max_rel_diff(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours - ref).abs().max() / ref.abs().max().clamp(min=1.0)).item()


def _reference(module_set: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    pe_cls, md_cls, tr_cls = {
        "sam": (PromptEncoder, MaskDecoder, TwoWayTransformer),
        "edge_sam": (EdgePromptEncoder, EdgeMaskDecoder, EdgeTwoWayTransformer),
    }[module_set]
    torch.manual_seed(0)
    prompt_encoder = pe_cls(
        embed_dim=256, image_embedding_size=(GRID, GRID), input_image_size=(SIZE, SIZE), mask_in_chans=16
    )
    mask_decoder = md_cls(
        num_multimask_outputs=3,
        transformer=tr_cls(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
        transformer_dim=256,
        iou_head_depth=3,
        iou_head_hidden_dim=256,
    )
    # LayerNorm2d starts at identity: give every parameter a random value so that all of them matter
    with torch.no_grad():
        for p in list(prompt_encoder.parameters()) + list(mask_decoder.parameters()):
            p.copy_(torch.randn_like(p) * 0.2)
    return prompt_encoder.eval(), mask_decoder.eval()


@pytest.fixture(scope="module")
def models():
    ref_pe, ref_md = _reference("sam")
    sam = build_sam(dataclasses.replace(EDGE_SAM, image_size=SIZE)).eval()
    sam.prompt_encoder.load_state_dict(ref_pe.state_dict(), strict=True)
    sam.mask_decoder.load_state_dict(ref_md.state_dict(), strict=True)
    return sam, ref_pe, ref_md


def _prompts(seed: int, batch: int = 3, points: int = 2):
    g = torch.Generator().manual_seed(seed)
    coords = torch.rand(batch, points, 2, generator=g) * SIZE
    labels = torch.randint(0, 2, (batch, points), generator=g)
    xy = torch.rand(batch, 2, 2, generator=g) * SIZE
    boxes = torch.cat([xy.min(1).values, xy.max(1).values], dim=1)  # (B, 4) xyxy
    masks = torch.randn(batch, 1, 4 * GRID, 4 * GRID, generator=g) * 5
    embedding = torch.randn(1, 256, GRID, GRID, generator=g)
    return embedding, coords, labels, boxes, masks


def _as_points(coords, labels, boxes):
    """Our single point-set input: points, then box corners (labels 2, 3) or a padding point (label -1)."""
    parts_xy, parts_lbl = [], []
    if coords is not None:
        parts_xy.append(coords)
        parts_lbl.append(labels.float())
    if boxes is not None:
        parts_xy.append(boxes.reshape(-1, 2, 2))
        parts_lbl.append(torch.tensor([[2.0, 3.0]]).expand(boxes.shape[0], 2))
    else:
        parts_xy.append(torch.zeros(coords.shape[0], 1, 2))
        parts_lbl.append(torch.full((coords.shape[0], 1), -1.0))
    return torch.cat(parts_xy, 1), torch.cat(parts_lbl, 1)


def test_state_dict_layout_matches_segment_anything_and_edge_sam(models):
    sam, ref_pe, ref_md = models
    edge_pe, edge_md = _reference("edge_sam")
    for ours, theirs in [
        (sam.prompt_encoder, ref_pe),
        (sam.mask_decoder, ref_md),
        (sam.prompt_encoder, edge_pe),
        (sam.mask_decoder, edge_md),
    ]:
        ours_shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
        assert ours_shapes == {k: tuple(v.shape) for k, v in theirs.state_dict().items()}


@pytest.mark.parametrize("case", ["points", "box", "points+box", "mask+points", "mask+box"])
@pytest.mark.parametrize("multimask", [False, True])
def test_decoder_matches_segment_anything(models, case, multimask):
    sam, ref_pe, ref_md = models
    embedding, coords, labels, boxes, masks = _prompts(seed=len(case) + 10 * multimask)
    use_points = "points" in case
    use_box = "box" in case
    use_mask = "mask" in case
    with torch.no_grad():
        sparse, dense = ref_pe(
            points=(coords, labels) if use_points else None,
            boxes=boxes if use_box else None,
            masks=masks if use_mask else None,
        )
        ref_masks, ref_iou = ref_md(embedding, ref_pe.get_dense_pe(), sparse, dense, multimask)

        # segment_anything's interface on our prompt encoder
        our_sparse, our_dense = sam.prompt_encoder(
            (coords, labels) if use_points else None, boxes if use_box else None, masks if use_mask else None
        )
        assert _max_rel_diff(our_sparse, sparse) <= TOL
        assert _max_rel_diff(our_dense, dense) <= TOL

        # the model's decoder entry point: one point set with box corners / padding point
        xy, lbl = _as_points(coords if use_points else None, labels, boxes if use_box else None)
        out_masks, out_iou = sam.forward_decoder(
            embedding, xy, lbl, masks if use_mask else None, num_outputs=3 if multimask else 1
        )
    assert out_masks.shape == ref_masks.shape == (3, 3 if multimask else 1, 4 * GRID, 4 * GRID)
    mask_diff = _max_rel_diff(out_masks, ref_masks)
    iou_diff = _max_rel_diff(out_iou, ref_iou)
    assert mask_diff <= TOL, f"max rel mask-logit diff {mask_diff:.3g} ({case}, multimask={multimask})"
    assert iou_diff <= TOL, f"max rel IoU diff {iou_diff:.3g} ({case}, multimask={multimask})"
    assert ref_masks.abs().max() > 0.1  # a meaningful comparison, not of zeros


@pytest.mark.parametrize("num_outputs", [1, 3, 4])
def test_decoder_output_selection_matches_edge_sam(num_outputs):
    edge_pe, edge_md = _reference("edge_sam")
    sam = build_sam(dataclasses.replace(EDGE_SAM, image_size=SIZE)).eval()
    sam.prompt_encoder.load_state_dict(edge_pe.state_dict(), strict=True)
    sam.mask_decoder.load_state_dict(edge_md.state_dict(), strict=True)
    embedding, coords, labels, _, _ = _prompts(seed=num_outputs)
    with torch.no_grad():
        sparse, dense = edge_pe(points=(coords, labels), boxes=None, masks=None)
        ref_masks, ref_iou = edge_md(embedding, edge_pe.get_dense_pe(), sparse, dense, num_outputs)
        xy, lbl = _as_points(coords, labels, None)
        out_masks, out_iou = sam.forward_decoder(embedding, xy, lbl, None, num_outputs=num_outputs)
    assert out_masks.shape == ref_masks.shape == (3, num_outputs, 4 * GRID, 4 * GRID)
    diff = _max_rel_diff(out_masks, ref_masks)
    assert diff <= TOL, f"max rel mask-logit diff {diff:.3g} with {num_outputs} outputs"
    assert _max_rel_diff(out_iou, ref_iou) <= TOL


def test_forward_decoder_batches_over_several_images(models):
    """E images, B prompts routed by image_index == each prompt decoded alone against its image."""
    sam, ref_pe, ref_md = models
    g = torch.Generator().manual_seed(3)
    embeddings = torch.randn(2, 256, GRID, GRID, generator=g)
    coords = torch.rand(4, 1, 2, generator=g) * SIZE
    labels = torch.ones(4, 1, dtype=torch.long)
    image_index = torch.tensor([1, 0, 1, 1])
    with torch.no_grad():
        xy, lbl = _as_points(coords, labels, None)
        out_masks, out_iou = sam.forward_decoder(embeddings, xy, lbl, None, num_outputs=3, image_index=image_index)
        for i in range(4):
            sparse, dense = ref_pe(points=(coords[i : i + 1], labels[i : i + 1]), boxes=None, masks=None)
            ref_masks, ref_iou = ref_md(embeddings[image_index[i]][None], ref_pe.get_dense_pe(), sparse, dense, True)
            diff = _max_rel_diff(out_masks[i : i + 1], ref_masks)
            assert diff <= TOL, f"prompt {i}: max rel mask-logit diff {diff:.3g}"
            assert _max_rel_diff(out_iou[i : i + 1], ref_iou) <= TOL


def test_forward_decoder_rejects_bad_inputs(models):
    sam = models[0]
    embedding, coords, labels, _, _ = _prompts(seed=0)
    with pytest.raises(ValueError, match="num_outputs"):
        sam.forward_decoder(embedding, coords, labels.float(), num_outputs=2)
    with pytest.raises(ValueError, match="point_labels"):
        sam.forward_decoder(embedding, coords, labels[:, :1].float())
    with pytest.raises(ValueError, match="image_index"):
        sam.forward_decoder(embedding.expand(2, -1, -1, -1), coords, labels.float())
