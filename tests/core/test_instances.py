"""unisam.instances.Instances: validation, indexing, boxes, RLE, label images, crops."""

import json

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from reference import install_reference_stubs

from unisam import Instances, masks_to_boxes

install_reference_stubs()
from segment_anything.utils.amg import batched_mask_to_box, coco_encode_rle, mask_to_rle_pytorch  # noqa: E402

H, W = 12, 15


def _masks() -> np.ndarray:
    masks = np.zeros((4, H, W), dtype=bool)
    masks[0, 2:5, 3:9] = True  # rows 2..4, cols 3..8
    masks[1, 7, 11] = True  # one pixel
    masks[2, 0:H, 0:2] = True  # touches the image border
    masks[2, 5, 14] = True  # and a far-away island
    # masks[3] stays empty
    return masks


def _instances(**kw) -> Instances:
    return Instances.from_masks(_masks(), np.array([0.9, 0.5, 0.7, 0.1]), **kw)


def _coco_boxes(masks: np.ndarray) -> np.ndarray:
    """pycocotools' bbox ``[x, y, w, h]`` of each mask as ``x1, y1, x1 + w, y1 + h`` (pixel edges)."""
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    xywh = mask_utils.toBbox(rles).reshape(-1, 4)
    return np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)


def test_masks_to_boxes_are_pixel_edges_as_coco_and_sam_plus_one():
    masks = _masks()
    ours = masks_to_boxes(masks)
    assert ours.dtype == np.float32
    np.testing.assert_array_equal(ours, _coco_boxes(masks))
    present = masks.any(axis=(1, 2))
    sam = batched_mask_to_box(torch.as_tensor(masks)).numpy()  # SAM's boxes are inclusive
    np.testing.assert_array_equal(ours[present], sam[present] + [0, 0, 1, 1])
    np.testing.assert_array_equal(ours[0], [3, 2, 9, 5])  # columns 3..8, rows 2..4
    np.testing.assert_array_equal(ours[1], [11, 7, 12, 8])  # one pixel
    np.testing.assert_array_equal(ours[3], [0, 0, 0, 0])
    rng = np.random.default_rng(0)
    random = rng.random((20, 9, 11)) > 0.97
    np.testing.assert_array_equal(masks_to_boxes(random), _coco_boxes(random))
    assert masks_to_boxes(np.zeros((0, 5, 5), bool)).shape == (0, 4)


def test_validation_errors():
    masks = _masks()
    with pytest.raises(ValueError, match="bool"):
        Instances(masks.astype(np.uint8), np.zeros((4, 4)), np.zeros(4))
    with pytest.raises(ValueError, match="boxes"):
        Instances(masks, np.zeros((3, 4)), np.zeros(4))
    with pytest.raises(ValueError, match="scores"):
        Instances(masks, np.zeros((4, 4)), np.zeros(5))
    with pytest.raises(ValueError, match="labels"):
        Instances(masks, np.zeros((4, 4)), np.zeros(4), labels=["a"])
    with pytest.raises(ValueError, match="label_scores"):
        Instances(masks, np.zeros((4, 4)), np.zeros(4), label_scores=np.zeros(2))
    with pytest.raises(ValueError, match="ids"):
        Instances(masks, np.zeros((4, 4)), np.zeros(4), ids=np.zeros((4, 1)))
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        Instances(masks[0], np.zeros((4, 4)), np.zeros(4))
    with pytest.raises(ValueError, match="threshold"):
        Instances.from_masks(np.zeros((2, 3, 3), np.float32))


def test_dtypes_are_normalised():
    inst = Instances(_masks(), np.zeros((4, 4), np.int64), [1, 2, 3, 4], ids=[1, 2, 3, 4], label_scores=[0, 0, 0, 1])
    assert inst.boxes.dtype == np.float32 and inst.scores.dtype == np.float32
    assert inst.ids.dtype == np.int64 and inst.label_scores.dtype == np.float32
    assert len(inst) == 4 and inst.image_size == (H, W)


def test_getitem_variants():
    inst = _instances(labels=["a", "b", "c", "d"], label_scores=np.arange(4), ids=np.arange(10, 14))
    one = inst[1]
    assert len(one) == 1 and one.labels == ["b"] and one.ids.tolist() == [11]
    np.testing.assert_array_equal(one.masks[0], inst.masks[1])
    last = inst[-1]
    assert last.labels == ["d"] and last.scores.tolist() == pytest.approx([0.1])
    assert inst[1:3].labels == ["b", "c"]
    picked = inst[np.array([3, 0])]
    assert picked.labels == ["d", "a"] and picked.ids.tolist() == [13, 10]
    np.testing.assert_array_equal(picked.boxes, inst.boxes[[3, 0]])
    by_mask = inst[inst.scores > 0.6]
    assert by_mask.labels == ["a", "c"] and by_mask.label_scores.tolist() == [0, 2]
    assert len(inst[np.array([], dtype=int)]) == 0
    assert len(inst[[]]) == 0
    with pytest.raises(IndexError):
        inst[4]
    with pytest.raises(IndexError):
        inst[np.array([True, False])]


def test_empty_and_concat():
    empty = Instances.empty(H, W)
    assert len(empty) == 0 and empty.masks.shape == (0, H, W) and empty.image_size == (H, W)
    a = _instances(labels=list("abcd"))
    both = Instances.concat([empty, a, a[1:3]])
    assert len(both) == 6 and both.labels == list("abcdbc")
    np.testing.assert_array_equal(both.masks[4:], a.masks[1:3])
    assert len(Instances.concat([empty, empty])) == 0
    with pytest.raises(ValueError, match="only some"):
        Instances.concat([a, _instances()])
    with pytest.raises(ValueError, match="image sizes"):
        Instances.concat([a, Instances.empty(3, 3)])
    with pytest.raises(ValueError, match="at least one"):
        Instances.concat([])


def test_rle_matches_sam_encoding_and_round_trips():
    inst = _instances()
    rles = inst.to_rle()
    json.dumps(rles)  # JSON-serialisable
    ref = [coco_encode_rle(r) for r in mask_to_rle_pytorch(torch.as_tensor(inst.masks))]
    assert [r["counts"] for r in rles] == [r["counts"] for r in ref]
    assert all(r["size"] == [H, W] for r in rles)
    areas = mask_utils.area([{"size": r["size"], "counts": r["counts"].encode()} for r in rles])
    np.testing.assert_array_equal(areas, inst.masks.sum(axis=(1, 2)))
    back = Instances.from_rle(rles, inst.scores)
    np.testing.assert_array_equal(back.masks, inst.masks)
    np.testing.assert_array_equal(back.boxes, inst.boxes)
    np.testing.assert_array_equal(back.scores, inst.scores)


def test_from_rle_accepts_bytes_and_uncompressed():
    masks = _masks()
    uncompressed = mask_to_rle_pytorch(torch.as_tensor(masks))  # SAM's uncompressed RLE (counts list)
    np.testing.assert_array_equal(Instances.from_rle(uncompressed).masks, masks)
    compressed = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    np.testing.assert_array_equal(Instances.from_rle(compressed).masks, masks)
    assert Instances.from_rle([], image_size=(H, W)).masks.shape == (0, H, W)
    with pytest.raises(ValueError, match="image_size"):
        Instances.from_rle([])
    with pytest.raises(ValueError, match="truncated"):
        Instances.from_rle([{"size": [2, 2], "counts": "1P"}])  # "P" announces a character that is missing
    assert Instances.empty(H, W).to_rle() == []


def test_label_image_highest_score_wins():
    masks = np.zeros((3, 4, 4), bool)
    masks[0, :2, :2] = True
    masks[1, 1:3, 1:3] = True
    masks[2, 3, 3] = True
    inst = Instances.from_masks(masks, np.array([0.2, 0.9, 0.5]))
    expected = np.array(
        [
            [1, 1, 0, 0],
            [1, 2, 2, 0],
            [0, 2, 2, 0],
            [0, 0, 0, 3],
        ]
    )
    out = inst.to_label_image()
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, expected)
    low_first = Instances.from_masks(masks, np.array([0.9, 0.2, 0.5])).to_label_image()
    assert low_first[1, 1] == 1  # now instance 1 (index 0) scores higher
    with_ids = Instances.from_masks(masks, np.array([0.2, 0.9, 0.5]), ids=np.array([7, 40, 5])).to_label_image()
    np.testing.assert_array_equal(with_ids, np.select([expected == 1, expected == 2, expected == 3], [7, 40, 5], 0))
    with pytest.raises(ValueError, match="ids"):
        Instances.from_masks(masks, ids=np.array([0, 1, 2])).to_label_image()
    assert not Instances.empty(3, 5).to_label_image().any()


def test_crop_masks_to_boxes():
    inst = _instances()
    crops = inst.crop_masks_to_boxes()
    assert [c.shape for c in crops] == [(3, 6), (1, 1), (H, W), (1, 1)]
    assert crops[0].all() and crops[1].all() and not crops[3].any()
    masks = inst.masks
    for crop, mask, box in zip(crops, masks, inst.boxes.astype(int)):
        x1, y1, x2, y2 = box
        if mask.any():  # the crop is the box's window and keeps every mask pixel
            assert crop.sum() == mask.sum() and crop.shape == (y2 - y1, x2 - x1)
            np.testing.assert_array_equal(crop, mask[y1:y2, x1:x2])


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools' decode under NumPy 2
def test_from_rle_decodes_like_pycocotools_on_random_masks():
    rng = np.random.default_rng(3)
    masks = np.zeros((6, 97, 131), dtype=bool)
    masks[0] = rng.random((97, 131)) > 0.5  # many short runs
    masks[1, 10:90, 5:120] = True  # long runs (multi-character counts)
    masks[2] = rng.random((97, 131)) > 0.995
    masks[3, :, :] = True
    masks[4, 0, 0] = True
    masks[5] = np.cumsum(rng.random((97, 131)) > 0.9, axis=1) % 3 == 0  # runs that grow and shrink
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    expected = mask_utils.decode(rles).transpose(2, 0, 1).astype(bool)
    np.testing.assert_array_equal(expected, masks)
    np.testing.assert_array_equal(Instances.from_rle(rles).masks, expected)
    with pytest.raises(ValueError, match="97x130"):
        Instances.from_rle([{"size": [97, 130], "counts": rles[0]["counts"]}])
