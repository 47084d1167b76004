"""Tiled segmentation (``tiles=`` of unisam.segment, segment_everything, embed): tile layout, equality with the untiled calls where one tile suffices, and, with
the bundled model on synthetic nuclei, more objects found than one downscaled pass."""

import numpy as np
import pytest

import unisam
from unisam import load_image, masks_to_boxes
from unisam.runtime.everything import box_iou
from unisam.runtime.tiling import tile_boxes
from unisam.data.synthetic import generate_sample

EVERYTHING = dict(points_per_side=16, pred_iou_thresh=0.4, stability_score_thresh=0.9)


@pytest.fixture(scope="module")
def model():
    return unisam.load_model("unisam-tiny")


def matched(found: unisam.Instances, truth: np.ndarray) -> int:
    """Ground-truth masks (N, H, W) matched by some found mask with IoU > 0.5."""
    if not len(found):
        return 0
    areas = found.masks.sum(axis=(1, 2))
    hits = 0
    for mask in truth:
        inter = found.masks[:, mask].sum(axis=1)
        hits += bool((inter / (areas + mask.sum() - inter)).max() > 0.5)
    return hits


@pytest.mark.parametrize(
    "size, tile, overlap", [((384, 384), 256, 64), ((300, 1000), 256, 32), ((256, 256), 256, 64), ((100, 50), 256, 0)]
)
def test_tiles_cover_the_image_with_the_overlap(size, tile, overlap):
    boxes = np.array(tile_boxes(size, tile, overlap))
    height, width = size
    covered = np.zeros(size, int)
    for x0, y0, x1, y1 in boxes:
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
        assert x1 - x0 == min(tile, width) and y1 - y0 == min(tile, height)
        covered[y0:y1, x0:x1] += 1
    assert covered.min() >= 1
    for axis in (0, 1):  # neighbours along each axis overlap by at least `overlap`
        starts = np.unique(boxes[:, axis])
        ends = np.unique(boxes[:, axis + 2])
        assert starts[0] == 0 and ends[-1] == size[1 - axis]
        assert (ends[:-1] - starts[1:] >= overlap).all()
    if max(size) <= tile:
        assert boxes.tolist() == [[0, 0, width, height]]


def test_tile_layout_is_validated():
    with pytest.raises(ValueError, match="overlap"):
        tile_boxes((512, 512), 256, 256)
    with pytest.raises(ValueError, match="tile_size"):
        tile_boxes((512, 512), 0, 0)


def test_one_tile_equals_the_untiled_calls(model):
    sample = generate_sample(np.random.default_rng(1), (192, 256), "nuclei")
    tiled = unisam.segment_everything(sample.image, model=model, tiles=True, **EVERYTHING)
    plain = unisam.segment_everything(sample.image, model=model, **EVERYTHING)
    assert len(plain) > 0
    np.testing.assert_array_equal(tiled.masks, plain.masks)
    np.testing.assert_array_equal(tiled.scores, plain.scores)
    prompts = [unisam.Prompt(points=[[60.5, 40.5]], point_labels=[1]), unisam.Prompt(box=[10, 20, 90, 70])]
    a = unisam.segment(sample.image, prompts, model=model, tiles=True)
    b = unisam.segment(sample.image, prompts, model=model)
    np.testing.assert_array_equal(a.masks, b.masks)
    np.testing.assert_array_equal(a.scores, b.scores)


def test_tiles_find_more_nuclei_than_one_downscaled_pass(model):
    tiled_hits = single_hits = 0
    for seed in (0, 1):
        sample = generate_sample(np.random.default_rng(seed), (384, 384), "nuclei")
        tiled = unisam.segment_everything(sample.image, model=model, tiles=True, **EVERYTHING)
        single = unisam.segment_everything(sample.image, model=model, **EVERYTHING)
        tiled_hits += matched(tiled, sample.masks)
        single_hits += matched(single, sample.masks)
        # well-formed result: boxes of the masks, sorted by score, no two masks boxing the same object
        np.testing.assert_array_equal(tiled.boxes, masks_to_boxes(tiled.masks))
        assert (np.diff(tiled.scores) <= 0).all()
        overlap = box_iou(tiled.boxes, tiled.boxes)
        np.fill_diagonal(overlap, 0)
        assert overlap.max() <= 0.7
    assert tiled_hits >= 2 * single_hits and tiled_hits >= single_hits + 20, (tiled_hits, single_hits)


def test_a_click_is_decoded_in_the_tile_that_holds_it(model):
    sample = generate_sample(np.random.default_rng(3), (512, 512), "nuclei")
    image = load_image(sample.image)
    tiled_iou, plain_iou = [], []
    for truth in sample.masks[:: max(1, len(sample.masks) // 8)]:
        rows, cols = np.nonzero(truth)
        box = [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
        tiled = unisam.segment(sample.image, box=box, model=model, tiles=True)
        plain = unisam.segment(sample.image, box=box, model=model)
        tiled_iou.append((tiled.masks[0] & truth).sum() / (tiled.masks[0] | truth).sum())
        plain_iou.append((plain.masks[0] & truth).sum() / (plain.masks[0] | truth).sum())
    assert np.mean(tiled_iou) > 0.5 and np.mean(tiled_iou) > np.mean(plain_iou) + 0.05, (tiled_iou, plain_iou)
    # the mechanics: the mask is the tile's own result, shifted back into the full image
    click = unisam.Prompt(points=[[300.5, 200.5]], point_labels=[1])
    full = unisam.segment(sample.image, click, model=model, tiles=True)
    holding = [t for t in tile_boxes((512, 512), 256, 64) if t[0] <= 300.5 <= t[2] and t[1] <= 200.5 <= t[3]]
    x0, y0, x1, y1 = min(holding, key=lambda t: np.hypot((t[0] + t[2]) / 2 - 300.5, (t[1] + t[3]) / 2 - 200.5))
    local = unisam.segment(image[y0:y1, x0:x1], points=[[300.5 - x0, 200.5 - y0]], point_labels=[1], model=model)
    expected = np.zeros((512, 512), bool)
    expected[y0:y1, x0:x1] = local.masks[0]
    np.testing.assert_array_equal(full.masks[0], expected)
    assert not full.masks[0][:y0].any() and not full.masks[0][:, :x0].any()


def test_embedded_tiles_are_reused(model):
    sample = generate_sample(np.random.default_rng(2), (320, 400), "nuclei")
    embedded = unisam.embed(sample.image, model=model, tiles=True)
    assert len(embedded) == len(tile_boxes((320, 400), 256, 64)) == 4
    runs = model.encoder_runs
    unisam.segment_everything(sample.image, model=model, tiles=unisam.Tiling(whole_image=False), points_per_side=4)
    unisam.segment(sample.image, points=[[390, 310]], model=model, tiles=True)
    assert model.encoder_runs == runs


def test_bad_prompts_are_rejected(model):
    image = np.zeros((300, 600), np.uint8)
    with pytest.raises(ValueError, match="outside the image"):
        unisam.segment(image, points=[[700, 10]], model=model, tiles=True)
    with pytest.raises(ValueError, match="mask prompts"):
        unisam.segment(image, unisam.Prompt(mask=np.zeros((64, 64), np.float32)), model=model, tiles=True)
    with pytest.raises(ValueError, match="either prompts"):
        unisam.segment(image, unisam.Prompt(points=[[1, 1]]), points=[[1, 1]], model=model, tiles=True)
    with pytest.raises(ValueError, match="tiles must be"):
        unisam.segment(image, points=[[1, 1]], model=model, tiles="yes")
