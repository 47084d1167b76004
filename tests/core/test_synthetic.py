"""unisam.data.synthetic: deterministic samples with exact, disjoint masks; sequences; COCO export."""

import math
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from scipy import ndimage

from unisam.data.synthetic import bodies, noise, render
from unisam.data.synthetic import (
    KINDS,
    MIN_AREA,
    SyntheticDataset,
    contact_sheet,
    generate_sample,
    generate_sequence,
    write_coco,
)

SIZE = (96, 112)

# documented image formats per kind: (dtype, ndim) pairs
FORMATS = {
    "shapes": {(np.uint8, 3)},
    "nuclei": {(np.uint16, 2), (np.uint8, 2), (np.uint8, 3)},
    "cells": {(np.uint16, 2), (np.uint8, 2), (np.uint8, 3)},
    "brightfield": {(np.uint8, 2), (np.uint8, 3)},
}


def _samples(kind: str, n: int = 12, size=SIZE):
    return [generate_sample(np.random.default_rng([7, i]), size, kind) for i in range(n)]


def _assert_valid(s, size=SIZE):
    h, w = size
    assert s.image.shape[:2] == (h, w)
    assert s.masks.dtype == bool and s.masks.shape == (len(s.ids), h, w)
    assert s.ids.dtype == np.int64
    assert np.all(s.ids >= 1) and np.all(np.diff(s.ids) > 0)  # unique
    if len(s.ids):
        assert s.masks.sum(axis=(1, 2)).min() >= MIN_AREA
        assert s.masks.sum(axis=0).max() <= 1  # visible parts never overlap


def test_dataset_is_deterministic_and_independent_of_access_order():
    a = SyntheticDataset(8, SIZE, seed=3)
    b = SyntheticDataset(8, SIZE, seed=3)
    first = a[5]
    _ = [a[i] for i in (0, 7, 2)]  # other accesses in between must not matter
    for s in (a[5], b[5]):
        assert s.kind == first.kind
        np.testing.assert_array_equal(s.image, first.image)
        np.testing.assert_array_equal(s.masks, first.masks)
        np.testing.assert_array_equal(s.ids, first.ids)
    other_index = a[1]  # same kind as index 5 (kinds cycle with period 4)
    assert other_index.kind == first.kind
    assert not np.array_equal(other_index.image, first.image)
    assert not np.array_equal(SyntheticDataset(8, SIZE, seed=4)[5].image, first.image)
    assert [a[i].kind for i in range(8)] == list(KINDS) * 2
    with pytest.raises(IndexError):
        a[8]
    assert generate_sample(np.random.default_rng(0), SIZE).kind in KINDS  # kind=None picks one


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_has_documented_format_and_valid_disjoint_masks(kind):
    samples = _samples(kind)
    formats = set()
    for s in samples:
        _assert_valid(s)
        assert s.kind == kind
        formats.add((s.image.dtype.type, s.image.ndim))
        if s.image.ndim == 3:
            assert s.image.shape[2] == 3
    assert formats <= FORMATS[kind]
    assert sum(len(s.ids) for s in samples) >= len(samples)  # objects are generated (not all empty)


@pytest.mark.parametrize("kind", ["nuclei", "cells"])
def test_fluorescence_masks_sit_on_the_signal(kind):
    # bright-on-dark: the annotated pixels must be brighter than the rest on average
    for s in _samples(kind, 8):
        if not len(s.ids):
            continue
        img = s.image.astype(np.float64)
        img = img.sum(axis=2) if img.ndim == 3 else img
        inside = s.masks.any(axis=0)
        assert img[inside].mean() > img[~inside].mean()


def _edge_contrast(samples, shift=0, grow=0):
    """Mean image gradient on the masks' outlines over the mean elsewhere (masks moved/grown first)."""
    on, off = [], []
    for s in samples:
        img = s.image.astype(np.float64)
        img = img.mean(axis=2) if img.ndim == 3 else img
        grad = ndimage.gaussian_gradient_magnitude((img - img.mean()) / (img.std() + 1e-9), 1.0)
        outline = np.zeros(img.shape, bool)
        for m in s.masks:
            m = np.roll(m, shift, axis=1)
            m = ndimage.binary_dilation(m, iterations=grow) if grow else m
            outline |= m & ~ndimage.binary_erosion(m)
        on.append(grad[outline])
        off.append(grad[~outline])
    return np.concatenate(on).mean() / np.concatenate(off).mean()


@pytest.mark.parametrize("kind", KINDS)
def test_mask_outlines_follow_image_edges(kind):
    # independent of how the images are drawn: the true outlines sit on stronger image edges than
    # the same outlines moved by 2 px or grown by 2 px
    samples = _samples(kind, 8)
    true = _edge_contrast(samples)
    assert true > 1.5
    assert true > _edge_contrast(samples, shift=2)
    assert true > _edge_contrast(samples, grow=2)


def test_sixteen_bit_samples_use_more_than_eight_bits():
    found = [s for s in _samples("nuclei", 16) + _samples("cells", 16) if s.image.dtype == np.uint16]
    assert found, "expected some 16-bit samples"
    for s in found:
        assert s.bit_depth == 16
        assert s.image.max() > 255
        assert 50 <= np.median(s.image) <= 5000  # a camera offset, not a zero background
    assert _samples("shapes", 1)[0].bit_depth == 8


def _local(yy, xx, cy, cx, angle):
    """Pixel centres in the frame of an object centred at (cy, cx) and rotated by angle (x = its axis)."""
    dy, dx = yy - cy, xx - cx
    return math.cos(angle) * dx + math.sin(angle) * dy, -math.sin(angle) * dx + math.cos(angle) * dy


def _mask_of(body, size, bank):
    p = body.footprint(0.0, size, bank)
    inside = np.zeros(size, bool)
    inside[p.rows, p.cols] = p.alpha >= 0.5
    return inside


@pytest.mark.parametrize("angle,scale", [(0.0, 1.0), (0.7, 1.3), (2.5, 0.6)])
def test_footprint_matches_analytic_shapes(angle, scale):
    """The coverage >= 0.5 rule that defines masks reproduces ellipses, rectangles and rods, also when
    rotated, scaled and cut by the image border."""
    size = (60, 70)
    yy, xx = np.mgrid[: size[0], : size[1]].astype(np.float64)
    bank = noise.texture_bank(np.random.default_rng(0))
    cy, cx = 25.3, 63.6  # near the right border: the shape is clipped
    a, b = 14.0, 8.0
    x, y = _local(yy, xx, cy, cx, angle)

    ellipse = _mask_of(bodies.Body(bodies.Radial(bodies.ellipse(a, b)), (cy, cx), angle, scale), size, bank)
    q = np.sqrt((x / (a * scale)) ** 2 + (y / (b * scale)) ** 2)
    sure = np.abs(q - 1) > 0.03  # skip pixels within ~0.3 px of the outline (interpolated outline)
    np.testing.assert_array_equal(ellipse[sure], (q < 1)[sure])
    assert ellipse[:, -1].any()  # the clipped case is exercised

    rect = bodies.polygon(np.array([[a, b], [-a, b], [-a, -b], [a, -b]]))
    rect = _mask_of(bodies.Body(bodies.Radial(rect), (cy, cx), angle, scale), size, bank)
    margin = np.minimum(a * scale - np.abs(x), b * scale - np.abs(y))
    sure = np.abs(margin) > 0.5
    np.testing.assert_array_equal(rect[sure], (margin > 0)[sure])

    rod = _mask_of(bodies.Body(bodies.Capsule(10.0, 4.0), (cy, cx), angle, scale), size, bank)
    dist = np.hypot(np.maximum(np.abs(x) - 10 * scale, 0), y) - 4 * scale
    sure = np.abs(dist) > 0.05
    np.testing.assert_array_equal(rod[sure], (dist < 0)[sure])


def test_touching_bodies_split_by_nearest_relative_distance():
    """Where discs overlap, a pixel belongs to the disc whose centre is nearer relative to its radius;
    outside every disc it is background."""
    size = (50, 60)
    yy, xx = np.mgrid[: size[0], : size[1]].astype(np.float64)
    discs = [((20.0, 22.0), 12.0), ((27.0, 38.0), 9.0), ((45.0, 10.0), 7.0)]  # 1-2 overlap, 3 clipped
    objects = [bodies.Body(bodies.Radial(bodies.ellipse(r, r)), c, 0.3) for c, r in discs]
    label = render.zbuffer(objects, 0.0, size, noise.texture_bank(np.random.default_rng(0)))[0]
    rel = np.stack([np.hypot(yy - c[0], xx - c[1]) / r for c, r in discs])
    expected = np.where(rel.min(0) < 1, rel.argmin(0) + 1, 0)
    order = np.sort(rel, axis=0)
    sure = (np.abs(order[0] - 1) > 0.02) & (order[1] - order[0] > 0.02)  # off outlines and seams
    np.testing.assert_array_equal(label[sure], expected[sure])
    assert {1, 2, 3} <= set(np.unique(label[sure]))
    assert ((label[:, :-1] == 1) & (label[:, 1:] == 2)).any()  # the two discs touch


def _iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


@pytest.mark.parametrize("kind", KINDS)
def test_sequence_keeps_ids_objects_move_and_enter_or_leave(kind):
    frames = generate_sequence(np.random.default_rng(11), 40, SIZE, kind)
    assert len(frames) == 40
    same_id, other_id, track = [], [], {}
    for f0, f1 in zip(frames, frames[1:]):
        _assert_valid(f0)
        for i, obj in enumerate(f0.ids):
            track.setdefault(obj, []).append(np.argwhere(f0.masks[i]).mean(0))
            for j, obj1 in enumerate(f1.ids):
                (same_id if obj == obj1 else other_id).append(_iou(f0.masks[i], f1.masks[j]))
    assert len(same_id) > 10
    # the same id is the same object: it overlaps itself frame to frame far more than any other object
    assert np.median(same_id) > 0.5
    assert np.median(same_id) > 5 * np.mean(other_id)
    travel = [np.hypot(*(c[-1] - c[0])) for c in track.values()]
    assert max(travel) > 5.0  # objects move: centroids shift by pixels between first and last sighting
    ids = [set(f.ids.tolist()) for f in frames]
    assert len(set().union(*ids)) > len(ids[0] & ids[-1])  # some objects enter or leave


def test_coco_export_round_trips_images_and_masks(tmp_path):
    samples = _samples("nuclei", 6) + _samples("shapes", 2) + _samples("cells", 2)
    assert any(s.bit_depth == 16 for s in samples)
    coco = COCO(str(write_coco(samples, tmp_path)))  # the reference loader reads it
    assert sorted(coco.getImgIds()) == list(range(1, len(samples) + 1))
    assert len(coco.getAnnIds()) == sum(len(s.ids) for s in samples)
    for image_id, s in enumerate(samples, 1):
        info = coco.loadImgs(image_id)[0]
        assert info["kind"] == s.kind and (info["height"], info["width"]) == s.image.shape[:2]
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / info["file_name"])), s.image)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
        assert [a["object_id"] for a in anns] == s.ids.tolist()
        for a, mask in zip(anns, s.masks):
            np.testing.assert_array_equal(coco.annToMask(a).astype(bool), mask)
            assert a["area"] == mask.sum() and a["iscrowd"] == 0
            ys, xs = np.nonzero(mask)
            assert a["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]


def test_contact_sheet_tiles_and_outlines():
    samples = _samples("nuclei", 3)
    sheet = contact_sheet(samples, cols=2, outlines=True)
    assert sheet.shape == (2 * (SIZE[0] + 2), 2 * (SIZE[1] + 2), 3) and sheet.dtype == np.uint8


def test_generator_imports_no_torch():
    code = "import sys, unisam.data.synthetic; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_bad_arguments_raise_value_error():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="kind"):
        generate_sample(rng, SIZE, "galaxies")
    with pytest.raises(ValueError, match="size"):
        generate_sample(rng, (8, 300))
    with pytest.raises(ValueError, match="n_frames"):
        generate_sequence(rng, 0, SIZE)
    with pytest.raises(ValueError, match="kind"):
        SyntheticDataset(4, SIZE, kinds=("shapes", "stars"))


def test_print_generation_speed():
    """Timings are printed, not asserted (shared CPUs make them noisy); the 256x256 samples must be valid."""
    for kind in KINDS:
        start = time.perf_counter()
        samples = [generate_sample(np.random.default_rng(i), (256, 256), kind) for i in range(5)]
        print(f"{kind}: {(time.perf_counter() - start) / 5 * 1e3:.1f} ms / 256x256 sample")
        for s in samples:
            _assert_valid(s, (256, 256))
