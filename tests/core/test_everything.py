"""unisam.runtime.everything: the pipeline on a deterministic fake predictor, and its parts vs SAM's amg."""

import numpy as np
import pytest
import torch
from reference import install_reference_stubs
from scipy import ndimage

import unisam.runtime.everything as everything
from unisam.images import image_digest
from unisam.runtime.cache import Embedding
from unisam.runtime.everything import (
    EverythingParams,
    box_iou,
    build_layer_point_grids,
    build_point_grid,
    generate_crop_boxes,
    is_box_near_crop_edge,
    nms,
    object_crops,
    remove_small_regions,
    segment_everything,
    stability_score,
)
from unisam.runtime.transforms import preprocess_shape

install_reference_stubs()
from segment_anything.utils import amg  # noqa: E402

H, W = 120, 160
BACKGROUND = (0, 0, 0)


class ColourPredictor:
    """A stand-in for SAM: clicking a pixel selects every pixel of that colour.

    Per point it returns three masks: the exact colour region (predicted IoU 0.95, or 0.96 when the
    embedded image is a crop, so we can tell which crop a result came from; 0.5 for the background),
    the region dilated by one pixel (IoU 0.9: a near-duplicate that NMS must remove) and a blurry
    region dilated by ~10 px whose logits are too flat to be stable (IoU 0.93).
    The low-resolution "logits" carry a code (colour, variant) that :meth:`upscale` turns into signed
    distance logits at the embedded image's size, so masks are exact and the bookkeeping is tested.
    """

    LOW_RES = (16, 20)

    def __init__(self) -> None:
        self.embedded: list[tuple[int, int]] = []
        self.decoded_points: list[np.ndarray] = []
        self.largest_upscale = 0

    def embed(self, image: np.ndarray) -> Embedding:
        assert image.dtype == np.uint8 and image.ndim == 3 and image.flags.c_contiguous
        h, w = image.shape[:2]
        self.embedded.append((h, w))
        colours, index = np.unique(image.reshape(-1, 3), axis=0, return_inverse=True)
        background = np.all(colours == BACKGROUND, axis=1)
        return Embedding(
            features=np.zeros((1, 1, 1, 1), np.float32),
            original_size=(h, w),
            input_size=preprocess_shape(h, w, 1024),
            model_id="fake",
            image_digest=image_digest(image),
            extras={"index": index.reshape(h, w).astype(np.int32), "background": background},
        )

    def decode(self, embedding, point_coords, point_labels, multimask):
        assert multimask and point_coords.dtype == np.float32 and point_coords.shape[1:] == (1, 2)
        assert np.all(point_labels == 1) and point_labels.shape == point_coords.shape[:2]
        self.decoded_points.append(point_coords[:, 0].copy())
        h, w = embedding.original_size
        x = np.clip(np.floor(point_coords[:, 0, 0]).astype(int), 0, w - 1)
        y = np.clip(np.floor(point_coords[:, 0, 1]).astype(int), 0, h - 1)
        colour = embedding.extras["index"][y, x]
        codes = colour[:, None] * 3 + np.arange(3)[None, :]  # (B, 3)
        low_res = np.broadcast_to(codes[:, :, None, None], (len(x), 3, *self.LOW_RES)).astype(np.float32)
        exact = 0.96 if embedding.original_size != self.embedded[0] else 0.95
        iou = np.where(embedding.extras["background"][colour], 0.5, exact)[:, None] * np.ones(3)
        iou[:, 1], iou[:, 2] = np.minimum(iou[:, 1], 0.9), np.minimum(iou[:, 2], 0.93)
        return low_res, iou.astype(np.float32)

    def upscale(self, embedding, low_res_logits):
        assert low_res_logits.shape[1:] == self.LOW_RES
        self.largest_upscale = max(self.largest_upscale, len(low_res_logits))
        out = np.empty((len(low_res_logits), *embedding.original_size), np.float32)
        for i, code in enumerate(low_res_logits[:, 0, 0].astype(int)):
            colour, variant = divmod(code, 3)
            region = embedding.extras["index"] == colour
            if variant == 1:
                region = ndimage.binary_dilation(region)
            signed = ndimage.distance_transform_edt(region) - ndimage.distance_transform_edt(~region)
            out[i] = 0.05 * signed + 0.5 if variant == 2 else 4.0 * signed
        return out


def _disk(cy: int, cx: int, r: int) -> np.ndarray:
    yy, xx = np.mgrid[:H, :W]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _scene() -> tuple[np.ndarray, list[np.ndarray]]:
    """An image with four flat-colour objects (one touching the border) and their true masks."""
    objects = [np.zeros((H, W), bool) for _ in range(4)]
    objects[0] = _disk(30, 40, 14)
    objects[1][60:100, 20:60] = True
    objects[2] = _disk(80, 120, 16)
    objects[3][0:20, 130:160] = True
    image = np.zeros((H, W, 3), np.uint8)
    for mask, colour in zip(objects, [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]):
        image[mask] = colour
    return image, objects


def _true_box(mask: np.ndarray) -> list[int]:
    """SAM's inclusive box of a mask (last column and row)."""
    ys, xs = np.nonzero(mask)
    return [xs.min(), ys.min(), xs.max(), ys.max()]


def _match(result, truths, scores=None) -> None:
    """Each true object found exactly once, with its exact mask and pixel-edge box (and its expected
    score, by default 0.95), and nothing else."""
    assert len(result) == len(truths)
    scores = [0.95] * len(truths) if scores is None else scores
    for truth, score in zip(truths, scores):
        same = [i for i in range(len(result)) if np.array_equal(result.masks[i], truth)]
        assert len(same) == 1
        np.testing.assert_array_equal(result.boxes[same[0]], np.add(_true_box(truth), [0, 0, 1, 1]))  # pixel edges
        assert result.scores[same[0]] == pytest.approx(score)


# --- the pipeline -------------------------------------------------------------------------------


def test_finds_each_object_once():
    image, truths = _scene()
    predictor = ColourPredictor()
    result = segment_everything(image, predictor, points_per_side=16)
    _match(result, truths)
    assert predictor.embedded == [(H, W)]
    ref_points = amg.build_point_grid(16) * np.array([W, H])
    np.testing.assert_allclose(np.concatenate(predictor.decoded_points), ref_points, rtol=1e-6)
    assert predictor.largest_upscale <= 64 * 3


def test_filters_are_what_removes_the_extras():
    image, truths = _scene()
    no_nms = segment_everything(image, ColourPredictor(), points_per_side=16, box_nms_thresh=1.0)
    assert len(no_nms) > 4 * 16  # one exact and one dilated mask per point inside an object
    no_iou = segment_everything(image, ColourPredictor(), points_per_side=16, pred_iou_thresh=0.0)
    background = ~np.any(truths, axis=0)
    assert len(no_iou) == 5 and any(np.array_equal(m, background) for m in no_iou.masks)
    unstable = segment_everything(image, ColourPredictor(), points_per_side=16, stability_score_thresh=0.0)
    assert len(unstable) == 8  # plus the blurry, ~10 px wider mask of each object


def test_crops_agree_with_whole_image():
    image, truths = _scene()
    predictor = ColourPredictor()
    result = segment_everything(image, predictor, points_per_side=16, crop_n_layers=1, progress=True)
    boxes, _ = amg.generate_crop_boxes((H, W), 1, 512 / 1500)
    assert predictor.embedded == [(y1 - y0, x1 - x0) for x0, y0, x1, y1 in boxes]
    assert len(predictor.embedded) == 5
    # An object that a crop holds clear of its inner edges must come from that crop (smaller crops
    # win the cross-crop NMS), the others from the whole image.
    expected = []
    for truth in truths:
        box = torch.tensor([_true_box(truth)], dtype=torch.float32)
        in_crop = [
            truth[y0:y1, x0:x1].sum() == truth.sum()
            and not amg.is_box_near_crop_edge(box - torch.tensor([x0, y0, x0, y0]), [x0, y0, x1, y1], [0, 0, W, H])
            for x0, y0, x1, y1 in boxes[1:]
        ]
        expected.append(0.96 if any(in_crop) else 0.95)
    assert 0.95 in expected and 0.96 in expected
    _match(result, truths, expected)


def test_crop_edge_filter_and_preference_for_small_crops():
    image, truths = _scene()
    with_crops = segment_everything(image, ColourPredictor(), points_per_side=16, crop_n_layers=2, crop_nms_thresh=1.0)
    # without cross-crop NMS each object appears once per crop that holds it fully, never cut by a crop edge
    for mask in with_crops.masks:
        assert any(np.array_equal(mask, t) for t in truths)
    assert len(with_crops) > 4


def test_upscale_in_small_chunks_gives_same_result(monkeypatch):
    image, _ = _scene()
    expected = segment_everything(image, ColourPredictor(), points_per_side=8, crop_n_layers=1)
    monkeypatch.setattr(everything, "UPSCALE_CHUNK_BYTES", 1)
    predictor = ColourPredictor()
    chunked = segment_everything(image, predictor, points_per_side=8, crop_n_layers=1)
    assert predictor.largest_upscale == 1
    np.testing.assert_array_equal(chunked.masks, expected.masks)
    np.testing.assert_array_equal(chunked.boxes, expected.boxes)


def test_min_mask_region_area_removes_islands_and_fills_holes():
    image, truths = _scene()
    disk = truths[0]
    image[disk & _disk(30, 40, 1)] = BACKGROUND  # a 5-pixel hole inside the red disk
    image[110:112, 5:7] = (255, 0, 0)  # a 4-pixel red island far away
    raw = segment_everything(image, ColourPredictor(), points_per_side=16)
    red = [m for m in raw.masks if m[30, 30]]
    assert len(red) == 1 and red[0][110, 5] and not red[0][30, 40]
    cleaned = segment_everything(image, ColourPredictor(), points_per_side=16, min_mask_region_area=20)
    _match(cleaned, truths)


def test_results_sorted_by_score():
    image, _ = _scene()
    result = segment_everything(image, ColourPredictor(), points_per_side=16, pred_iou_thresh=0.0)
    assert np.all(np.diff(result.scores) <= 0) and result.scores[-1] == pytest.approx(0.5)


def test_empty_image_gives_empty_instances():
    result = segment_everything(np.zeros((40, 50, 3), np.uint8), ColourPredictor(), points_per_side=4)
    assert len(result) == 0 and result.masks.shape == (0, 40, 50) and result.boxes.shape == (0, 4)


def test_options_are_one_dataclass_with_names_types_and_help():
    params = EverythingParams()
    assert params.points_per_side == 32 and params.pred_iou_thresh == 0.88  # SAM's defaults
    assert EverythingParams.names(common_only=True) == [
        "points_per_side", "pred_iou_thresh", "stability_score_thresh", "box_nms_thresh", "min_mask_region_area",
        "object_size", "watershed_seed_thresh",
    ]
    bounds = {o.name: (o.minimum, o.maximum) for o in EverythingParams.options()}
    assert bounds["points_per_side"] == (1, 64) and bounds["pred_iou_thresh"] == (0, 1)
    assert bounds["object_size"] == (0, None) and bounds["watershed_seed_thresh"] == (0, 1)
    assert all(o.help and o.kind in (int, float) for o in EverythingParams.options())
    changed = params.replace(points_per_side=np.int64(8), pred_iou_thresh=1)
    assert changed.points_per_side == 8 and type(changed.points_per_side) is int
    assert changed.pred_iou_thresh == 1.0 and type(changed.pred_iou_thresh) is float
    with pytest.raises(ValueError, match="unknown segment-everything options \\['points_per_sid'\\]"):
        params.replace(points_per_sid=8)
    with pytest.raises(ValueError, match="whole number"):
        params.replace(points_per_side=8.5)
    with pytest.raises(ValueError, match="must be a number"):
        EverythingParams(pred_iou_thresh="high")
    image, _ = _scene()
    via_params = segment_everything(image, ColourPredictor(), EverythingParams(points_per_side=16))
    via_names = segment_everything(image, ColourPredictor(), points_per_side=16)
    np.testing.assert_array_equal(via_params.masks, via_names.masks)


def test_parameter_validation():
    image, _ = _scene()
    with pytest.raises(ValueError):
        segment_everything(image, ColourPredictor(), points_per_side=0)
    with pytest.raises(ValueError):
        segment_everything(image, ColourPredictor(), crop_n_points_downscale_factor=0)
    with pytest.raises(ValueError, match="no points"):
        segment_everything(
            image, ColourPredictor(), points_per_side=8, crop_n_layers=2, crop_n_points_downscale_factor=3
        )
    for bad in ({"object_size": -1}, {"mask_nms_thresh": 1.5}):
        with pytest.raises(ValueError, match="object_size must be >= 0"):
            segment_everything(image, ColourPredictor(), **bad)


# --- dense small objects: object_size and mask NMS ------------------------------------------------


def test_object_crops_fit_the_object_size():
    crops = object_crops((700, 1100), 24)
    sides = {(x1 - x0, y1 - y0) for (x0, y0, x1, y1), _ in crops}
    assert sides == {(240, 240)}  # OBJECTS_PER_CROP object sizes a side
    xs = sorted({c[0][0] for c in crops})
    assert xs[0] == 0 and max(c[0][2] for c in crops) == 1100
    assert min(b - a for a, b in zip(xs, xs[1:])) <= 240 - 48  # neighbours share >= 2 object sizes
    for box, grid in crops:
        spacing = (box[2] - box[0]) * (grid[1, 0] - grid[0, 0])
        assert 10 <= spacing <= 12  # a point every half object size
    # objects as large as a tenth of the image: the whole image, one crop
    (whole, grid), = object_crops((303, 384), 45)
    assert whole == (0, 0, 384, 303) and len(grid) == 18 * 18


def test_mask_nms_merges_near_duplicates_that_box_nms_keeps():
    # two masks of one 13-px disk, the second two pixels larger all round: box IoU 0.56, mask IoU 0.6
    disk = _disk(20, 20, 6)[10:31, 10:31]
    grown = ndimage.binary_dilation(disk, iterations=2)
    other = np.zeros_like(disk)
    other[2:6, 2:6] = True
    pieces = [disk, grown, other]
    boxes = np.array([everything._inclusive_boxes(m[None])[0] + [10, 10, 10, 10] for m in pieces], np.float32)
    found = everything._Candidates(pieces, boxes, np.array([0.9, 0.8, 0.7], np.float32), np.ones(3))
    assert box_iou(boxes[:1], boxes[1:2])[0, 0] < 0.7 and len(nms(boxes, found.scores, 0.7)) == 3
    np.testing.assert_array_equal(found.mask_nms(0.3), [0, 2])
    np.testing.assert_array_equal(found.mask_nms(0.9), [0, 1, 2])


def test_object_size_finds_the_coins_of_a_real_photo():
    # scikit-image's coins photo, the Otsu reference of benchmarks/real_images.py (22 objects: 24 coins, two
    # touching pairs merged). Measured: 20 found, 52 masks; the defaults find 1 (predicted IoUs on real
    # photos run lower than on the synthetic scenes that set the model's thresholds)
    import sys
    from pathlib import Path

    from skimage import data as skimage_data  # installed with the cells extra (laptrack)

    sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
    from real_images import coin_masks, recall_precision

    import unisam

    coins = skimage_data.coins()
    reference = np.zeros(coins.shape, np.int32)
    for k, m in enumerate(coin_masks(coins), 1):
        reference[m] = k
    found = unisam.segment_everything(
        coins, object_size=45, pred_iou_thresh=0.35, stability_score_thresh=0.85, mask_nms_thresh=0.3
    )
    recall, precision = recall_precision(found.masks, reference)
    assert reference.max() == 22 and recall >= 18 / 22 and precision >= 0.25, (recall, precision, len(found))


# --- parts vs SAM's amg -------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 7, 32])
def test_point_grid_matches_reference(n):
    np.testing.assert_array_equal(build_point_grid(n), amg.build_point_grid(n))


def test_layer_grids_match_reference():
    for args in [(32, 0, 1), (32, 2, 2), (10, 2, 3)]:
        ours, ref = build_layer_point_grids(*args), amg.build_all_layer_point_grids(*args)
        assert len(ours) == len(ref)
        for a, b in zip(ours, ref):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("size", [(120, 160), (1500, 1000), (7, 999), (512, 512)])
@pytest.mark.parametrize("layers", [0, 1, 3])
@pytest.mark.parametrize("ratio", [512 / 1500, 0.0, 0.5])
def test_crop_boxes_match_reference(size, layers, ratio):
    ours, our_layers = generate_crop_boxes(size, layers, ratio)
    ref, ref_layers = amg.generate_crop_boxes(size, layers, ratio)
    assert [list(b) for b in ours] == ref and our_layers == ref_layers


def test_stability_score_matches_reference():
    logits = np.random.default_rng(0).normal(0, 3, (6, 30, 40)).astype(np.float32)
    logits[5] = -10  # empty mask: ours is 0, the reference 0/0 = nan (both fail any threshold)
    for offset in (1.0, 0.5):
        ref = amg.calculate_stability_score(torch.from_numpy(logits), 0.0, offset).numpy()
        ours = stability_score(logits, offset)
        assert ours.dtype == np.float32 and ours.shape == (6,)
        np.testing.assert_allclose(ours[:5], ref[:5], rtol=1e-6)
        assert ours[5] == 0 and np.isnan(ref[5])


def test_near_crop_edge_matches_reference():
    rng = np.random.default_rng(1)
    crop_box, image_box = [40, 30, 140, 110], [0, 0, 200, 150]
    local = rng.integers(0, 100, (200, 2, 2)).astype(np.float32)
    local = np.concatenate([local.min(axis=1), local.max(axis=1)], axis=1)  # (x1, y1, x2, y2) in the crop
    ref = amg.is_box_near_crop_edge(torch.from_numpy(local), crop_box, image_box).numpy()
    ours = is_box_near_crop_edge(local + np.array([40, 30, 40, 30]), tuple(crop_box), tuple(image_box))
    np.testing.assert_array_equal(ours, ref)
    assert ours.any() and not ours.all()


def test_box_iou_known_values():
    a = np.array([[0, 0, 10, 10], [0, 0, 0, 0]], np.float32)
    b = np.array([[5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 10, 10]], np.float32)
    np.testing.assert_allclose(box_iou(a, b), [[50 / 150, 0, 1], [0, 0, 0]])


def _greedy_nms(boxes, scores, thresh):
    """Textbook NMS with a Python loop, as an independent oracle."""

    def iou(p, q):
        iw = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
        ih = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
        union = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - iw * ih
        return iw * ih / union if union > 0 else 0.0

    keep = []
    for i in sorted(range(len(scores)), key=lambda i: -scores[i]):
        if all(iou(boxes[i], boxes[k]) <= thresh for k in keep):
            keep.append(i)
    return keep


def test_nms_matches_greedy_oracle():
    rng = np.random.default_rng(2)
    for trial in range(20):
        xy = rng.uniform(0, 50, (40, 2))
        wh = rng.uniform(1, 30, (40, 2))
        boxes = np.concatenate([xy, xy + wh], axis=1)
        scores = rng.permutation(40).astype(np.float32)  # distinct scores
        thresh = [0.3, 0.5, 0.7][trial % 3]
        assert nms(boxes, scores, thresh).tolist() == _greedy_nms(boxes, scores, thresh)
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).shape == (0,)
    tie = nms(np.array([[0, 0, 10, 10], [0, 0, 10, 10]]), np.array([1.0, 1.0]), 0.5)
    assert tie.tolist() == [0]


def test_remove_small_regions_known_cases():
    mask = np.zeros((20, 20), bool)
    mask[2:12, 2:12] = True
    mask[5:7, 5:7] = False  # 4-pixel hole
    mask[15:17, 15:17] = True  # 4-pixel island
    filled, changed = remove_small_regions(mask, 5, "holes")
    assert changed and filled[5:7, 5:7].all() and filled.sum() == mask.sum() + 4
    cleaned, changed = remove_small_regions(filled, 5, "islands")
    assert changed and not cleaned[15:17, 15:17].any() and cleaned.sum() == 100
    same, changed = remove_small_regions(cleaned, 5, "islands")
    assert not changed and np.array_equal(same, cleaned)
    diagonal = np.zeros((6, 6), bool)
    diagonal[1, 1] = diagonal[2, 2] = True  # one 8-connected region of 2 pixels
    kept, changed = remove_small_regions(diagonal, 5, "islands")  # all small: the largest is kept
    assert changed and np.array_equal(kept, diagonal)
    with pytest.raises(ValueError, match="mode"):
        remove_small_regions(mask, 5, "blobs")
