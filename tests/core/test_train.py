"""Training side of unisam: data loaders, prompt sampling, losses, supervised training, both EdgeSAM
distillation phases, resumable determinism, evaluation (torch vs exported ONNX) and the CLI wiring.

Models are tiny (input 128, a few thousand encoder weights) so that each test takes seconds.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from unisam.masks import masks_to_boxes
from unisam.models import build_sam
from unisam.registry import ArchSpec
from unisam.train.data import CocoSource, Item, PromptDataset, SA1BSource, SyntheticSource
from unisam.train.distill import (
    DecoderDistillConfig,
    EncoderDistillConfig,
    decoder_distill_loss,
    distill_decoder,
    distill_encoder,
    encoder_distill_loss,
    make_student,
)
from unisam.train.evaluate import evaluate, format_table
from unisam.train.losses import embedding_mse, iou_prediction_loss, mask_loss
from unisam.train.prompting import boxes_from_masks, center_points, error_points, loosen_boxes
from unisam.train.supervised import (
    SupervisedConfig,
    background_boxes,
    background_clicks,
    batch_indices,
    init_from_scratch,
    load_trained,
    make_batch,
    run_loop,
    start_prompts,
    step_generator,
    supervised_loss,
    train_supervised,
)

SIZE = 128
TINY = [[3, 2, 16, 0, 0, 1], [3, 2, 32, 0, 0, 2], [3, 2, 48, 0, 1, 2], [3, 2, 64, 0, 1, 2]]
TINIER = [[3, 2, 8, 0, 0, 1], [3, 2, 16, 0, 0, 2], [3, 2, 24, 0, 1, 2], [3, 2, 32, 0, 1, 2]]
SPEC = ArchSpec(
    encoder="repvit",
    encoder_kwargs={"cfgs": TINY, "upsample_mode": "bilinear"},
    image_size=SIZE,
    embed_dim=64,
    decoder_mlp_dim=128,
    decoder_heads=4,
    iou_head_hidden_dim=64,
    mask_in_chans=8,
)


class Discs:
    """Three flat-coloured, possibly overlapping discs on black: an easy, exact instance dataset."""

    def __init__(self, n: int, seed: int, size: tuple[int, int] = (SIZE, SIZE)):
        self.n, self.seed, self.size = n, seed, size

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> Item:
        rng = np.random.default_rng([self.seed, index])
        h, w = self.size
        yy, xx = np.mgrid[:h, :w]
        image = np.zeros((h, w, 3), np.uint8)
        masks = []
        for _ in range(3):
            r = rng.uniform(0.1, 0.25) * min(h, w)
            cy, cx = rng.uniform(r, h - r), rng.uniform(r, w - r)
            disc = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
            for m in masks:
                m &= ~disc
            masks.append(disc)
            image[disc] = rng.integers(60, 256, 3)
        return Item(image, np.stack(masks))


def tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    return init_from_scratch(build_sam(SPEC))


def config(**kw) -> SupervisedConfig:
    base = SupervisedConfig(steps=150, batch_images=4, max_instances=3, lr=3e-3, warmup_steps=10, log_every=10,
                            checkpoint_every=1000, eval_images=12)
    return replace(base, **kw)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained for a few seconds on discs; its log; the untrained model's val mIoU."""
    torch.set_num_threads(1)
    model = tiny_model()
    val = Discs(12, seed=99)
    before = evaluate(model, val, prompts=("box",), refine=0)["box"]
    out = tmp_path_factory.mktemp("supervised")
    train_supervised(model, Discs(10_000, seed=1), out, config(), val_source=val, progress=False)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return model, out, log, before


# ----------------------------------------------------------------------------- data


def test_coco_polygon_and_rle_annotations_are_read(tmp_path):
    h, w = 40, 60
    image = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "a.png")
    rect = np.zeros((h, w), bool)
    rect[10:20, 5:25] = True  # polygon below traces exactly these pixel squares
    blob = np.zeros((h, w), bool)
    blob[25:35, 30:58] = True
    blob[28:31, 40:45] = False
    rle = mask_utils.encode(np.asfortranarray(blob.astype(np.uint8)))
    uncompressed = {"size": [h, w], "counts": _uncompressed_counts(rect)}
    anns = [
        {"id": 1, "image_id": 7, "category_id": 1, "iscrowd": 0, "bbox": [5, 10, 20, 10], "area": 200,
         "segmentation": [[5, 10, 25, 10, 25, 20, 5, 20]]},
        {"id": 2, "image_id": 7, "category_id": 1, "iscrowd": 0, "bbox": [30, 25, 28, 10], "area": 265,
         "segmentation": {"size": [h, w], "counts": rle["counts"].decode()}},
        {"id": 3, "image_id": 7, "category_id": 1, "iscrowd": 0, "bbox": [5, 10, 20, 10], "area": 200,
         "segmentation": uncompressed},
        {"id": 4, "image_id": 8, "category_id": 1, "iscrowd": 1, "bbox": [0, 0, 5, 5], "area": 25,
         "segmentation": [[0, 0, 5, 0, 5, 5, 0, 5]]},
    ]
    coco = {"images": [{"id": 7, "file_name": "a.png", "height": h, "width": w},
                       {"id": 8, "file_name": "a.png", "height": h, "width": w}],
            "annotations": anns, "categories": [{"id": 1, "name": "thing"}]}
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    source = CocoSource(tmp_path / "ann.json", tmp_path)
    assert len(source) == 1  # the image with only a crowd region is skipped
    item = source[0]
    np.testing.assert_array_equal(item.image, image)
    assert item.masks.shape == (3, h, w)
    np.testing.assert_array_equal(item.masks[1], blob)
    np.testing.assert_array_equal(item.masks[2], rect)
    # a polygon rasterises up to its boundary pixels: compare areas and the interior
    assert abs(int(item.masks[0].sum()) - rect.sum()) <= 31
    assert item.masks[0][11:19, 6:24].all() and not item.masks[0][:9].any()


def _uncompressed_counts(mask: np.ndarray) -> list[int]:
    """COCO's uncompressed RLE: run lengths of the column-major flattening, starting with zeros."""
    flat = mask.flatten(order="F").astype(np.int8)
    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    return np.diff(np.concatenate([[0], changes])).tolist()


def test_sa1b_folder_is_read(tmp_path):
    h, w = 30, 50
    image = np.random.default_rng(1).integers(0, 256, (h, w), dtype=np.uint8)  # grey: becomes RGB
    Image.fromarray(image).save(tmp_path / "sa_1.png")
    masks = np.zeros((2, h, w), bool)
    masks[0, 3:9, 4:40] = True
    masks[1, 12:29, 20:23] = True
    anns = []
    for m in masks:
        rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        anns.append({"segmentation": {"size": [h, w], "counts": rle["counts"].decode()},
                     "bbox": [float(v) for v in mask_utils.toBbox(rle)], "area": int(m.sum()),
                     "point_coords": [[5.0, 5.0]]})
    record = {"image": {"image_id": 1, "file_name": "sa_1.png", "height": h, "width": w}, "annotations": anns}
    (tmp_path / "sa_1.json").write_text(json.dumps(record))
    item = SA1BSource(tmp_path)[0]
    np.testing.assert_array_equal(item.image, np.repeat(image[..., None], 3, axis=2))
    np.testing.assert_array_equal(item.masks, masks)


def test_prompt_dataset_resizes_masks_with_the_image_and_picks_seeded_instances():
    class Stripes:
        """A 100x200 image whose object pixels are white: masks must land on white after resizing."""

        def __len__(self):
            return 1

        def __getitem__(self, index):
            masks = np.zeros((12, 100, 200), bool)
            for k in range(12):
                masks[k, 10 + 7 * (k // 4): 14 + 7 * (k // 4), 20 + 45 * (k % 4): 50 + 45 * (k % 4)] = True
            image = np.zeros((100, 200, 3), np.uint8)
            image[masks.any(0)] = 255
            return Item(image, masks)

    data = PromptDataset(Stripes(), image_size=128, max_instances=5, seed=3)
    ex = data.example(0, epoch=0)
    assert ex.image.shape == (3, 128, 128) and ex.input_size == (64, 128)
    assert ex.masks.shape == (5, 128, 128) and not ex.masks[:, 64:].any()  # padding stays empty
    white = ex.image[0, :64] > 0  # normalised white is positive, black negative
    union = ex.masks.any(0)[:64]
    assert (union & white).sum() >= 0.9 * union.sum()
    again = data.example(0, epoch=0)
    other = data.example(0, epoch=1)
    assert torch.equal(ex.masks, again.masks)
    assert not torch.equal(ex.masks, other.masks)  # another epoch draws another subset


def test_synthetic_source_gives_rgb_images_and_exact_masks():
    source = SyntheticSource(4, sizes=((64, 96), (96, 64)), seed=0)
    for i in range(4):
        item = source[i]
        assert item.image.dtype == np.uint8 and item.image.shape == ((64, 96, 3) if i % 2 == 0 else (96, 64, 3))
        assert item.masks.shape[1:] == item.image.shape[:2] and item.masks.dtype == bool
        assert (item.masks.sum(0) <= 1).all()  # disjoint, as the generator promises


# ----------------------------------------------------------------------------- prompts and losses


def test_boxes_from_masks_have_coco_extent():
    rng = np.random.default_rng(0)
    masks = np.zeros((5, 30, 40), bool)
    for m in masks:
        y, x = rng.integers(0, 25), rng.integers(0, 35)
        m[y:y + rng.integers(1, 6), x:x + rng.integers(1, 6)] = True
    edges = masks_to_boxes(masks)  # unisam's pixel-edge boxes: x2 = last column + 1, as COCO's extent
    np.testing.assert_array_equal(boxes_from_masks(torch.from_numpy(masks)).numpy(), edges)


def test_loose_boxes_contain_the_tight_box_and_stay_in_the_frame():
    boxes = torch.tensor([[10.0, 10.0, 30.0, 40.0], [0.0, 0.0, 50.0, 40.0], [40.0, 30.0, 64.0, 48.0]] * 200)
    loose = loosen_boxes(boxes, (100, 64), torch.Generator().manual_seed(0), rate=0.5, growth=0.4)
    assert (loose[:, :2] <= boxes[:, :2]).all() and (loose[:, 2:] >= boxes[:, 2:]).all()  # tight box inside
    assert (loose >= 0).all() and (loose[:, [0, 2]] <= 64).all() and (loose[:, [1, 3]] <= 100).all()
    moved = (loose != boxes).any(1)
    assert 0.4 < moved.float().mean() < 0.6  # about `rate` of them
    side = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
    assert ((loose - boxes).abs() <= 0.4 * side + 1e-4).all()
    assert ((loose[0::3] - boxes[0::3]).abs().amax(0) > 0.3 * side[0]).all()  # each side grows (room: 10 px)
    generator = torch.Generator().manual_seed(0)
    assert loosen_boxes(boxes, (100, 64), generator, rate=0.0) is boxes
    assert torch.equal(generator.get_state(), torch.Generator().manual_seed(0).get_state())  # drew nothing
    batch = make_batch(PromptDataset(Discs(8, seed=5), SIZE, 3, 0), 0, 4)
    tight = boxes_from_masks(batch.masks)
    _, prompts, _ = start_prompts(batch, True, 0.0, 0.0, step_generator(0, 2), loose_rate=1.0)
    assert (prompts.boxes[:, :2] <= tight[:, :2]).all() and (prompts.boxes[:, 2:] >= tight[:, 2:]).all()
    assert (prompts.boxes != tight).any(1).all()


def test_center_point_is_inside_and_farthest_from_the_boundary():
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[:40, :50]
    masks = []
    for _ in range(4):  # union of two random ellipses, one touching the frame
        m = np.zeros((40, 50), bool)
        for _ in range(2):
            cy, cx, ry, rx = rng.uniform(0, 40), rng.uniform(0, 50), rng.uniform(4, 12), rng.uniform(4, 12)
            m |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
        masks.append(m)
    masks = np.stack(masks)
    points = center_points(torch.from_numpy(masks)).numpy().astype(int)
    for m, (x, y) in zip(masks, points):
        assert m[y, x]
        # brute force: distance from each mask pixel to the nearest pixel outside (frame = outside)
        padded = np.pad(m, 1)
        oy, ox = np.nonzero(~padded)
        iy, ix = np.nonzero(padded)
        dist = np.sqrt(((iy[:, None] - oy[None]) ** 2 + (ix[:, None] - ox[None]) ** 2).min(1))
        assert dist[(iy == y + 1) & (ix == x + 1)][0] == pytest.approx(dist.max())


def test_error_points_land_where_teacher_and_student_disagree():
    rng = np.random.default_rng(2)
    teacher = torch.from_numpy(rng.random((6, 32, 32)) < 0.4)
    student = torch.from_numpy(rng.random((6, 32, 32)) < 0.4)
    student[5] = teacher[5]  # full agreement -> no point
    valid = torch.ones(6, 32, 32, dtype=torch.bool)
    valid[:, :, 24:] = False
    seen = set()
    for seed in range(40):
        xy, labels = error_points(student, teacher, "uniform", torch.Generator().manual_seed(seed), valid)
        for i in range(6):
            x, y = int(xy[i, 0]), int(xy[i, 1])
            if i == 5:
                assert labels[i] == -1
                continue
            assert valid[i, y, x]
            t, s = bool(teacher[i, y, x]), bool(student[i, y, x])
            assert t != s  # never where the two agree
            assert labels[i] == (1 if t else 0)  # positive: teacher fg, student bg; negative: the reverse
            seen.add(int(labels[i]))
    assert seen == {0, 1}
    xy, labels = error_points(student, teacher, "center", valid=valid)
    for i in range(5):
        x, y = int(xy[i, 0]), int(xy[i, 1])
        assert bool(teacher[i, y, x]) != bool(student[i, y, x]) and labels[i] == float(teacher[i, y, x])


def test_centre_error_point_picks_the_larger_error_region():
    target = torch.zeros(1, 40, 40, dtype=torch.bool)
    target[0, 5:35, 5:35] = True
    pred = target.clone()
    pred[0, 10:20, 10:20] = False  # a 10x10 miss
    pred[0, 36:39, 0:3] = True  # a 3x3 spurious blob
    xy, labels = error_points(pred, target, "center")
    assert labels[0] == 1 and 10 <= xy[0, 0] < 20 and 10 <= xy[0, 1] < 20
    pred[0, 10:20, 10:20] = True
    xy, labels = error_points(pred, target, "center")
    assert labels[0] == 0 and (int(xy[0, 0]), int(xy[0, 1])) == (1, 37)


def test_losses_ignore_padding():
    teacher = torch.randn(2, 8, 6, 6)
    student = teacher.clone()
    valid = torch.zeros(2, 6, 6, dtype=torch.bool)
    valid[:, :4, :5] = True
    student[~valid.unsqueeze(1).expand_as(student)] += 100.0
    assert embedding_mse(student, teacher, valid) == 0
    assert embedding_mse(student, teacher) > 1
    target = (torch.rand(2, 1, 6, 6) > 0.5).float()
    logits = (target * 2 - 1) * 20
    logits_bad = logits.clone()
    logits_bad[..., 4:, :] *= -1  # wrong only in the padding rows
    v = valid[:, None].float()
    assert torch.allclose(mask_loss(logits_bad, target, v), mask_loss(logits, target, v))
    assert (mask_loss(logits_bad, target) > mask_loss(logits, target) + 0.1).all()


# ----------------------------------------------------------------------------- training


def test_supervised_training_lowers_the_loss_and_raises_val_miou(trained):
    model, out, log, before = trained
    train = [r for r in log if r["kind"] == "train"]
    val = [r for r in log if r["kind"] == "val"]
    assert np.mean([r["loss"] for r in train[-3:]]) < 0.6 * np.mean([r["loss"] for r in train[:2]])
    assert val[-1]["box"] > before + 0.3, (before, val[-1])
    assert load_trained(out).spec == SPEC  # the saved model reloads


def test_resume_continues_identically(tmp_path):
    torch.set_num_threads(1)
    data = Discs(50, seed=4)
    cfg = config(steps=4, log_every=1, checkpoint_every=2, eval_images=2)
    straight = tiny_model()
    train_supervised(straight, data, tmp_path / "a", cfg, progress=False)
    interrupted = tiny_model()
    result = train_supervised(interrupted, data, tmp_path / "b", cfg, stop_at=2, progress=False)
    assert result == {"step": 2, "finished": False}
    with pytest.raises(ValueError, match="resume"):
        train_supervised(tiny_model(), data, tmp_path / "b", cfg, progress=False)
    resumed = tiny_model(seed=123)  # different init: everything must come from the checkpoint
    train_supervised(resumed, data, tmp_path / "b", cfg, resume=True, progress=False)
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    logs = [[json.loads(x) for x in (tmp_path / d / "log.jsonl").read_text().splitlines()] for d in "ab"]
    drop = ("s_per_step", "images_per_s")
    assert [{k: v for k, v in r.items() if k not in drop} for r in logs[0]] == [
        {k: v for k, v in r.items() if k not in drop} for r in logs[1]]


def test_training_steps_run_with_deterministic_algorithms(tmp_path):
    """On the CPU the backward of advanced indexing (index_put with accumulate) adds in parallel with
    atomics unless deterministic algorithms are on: two runs of one seed then differ by rounding
    (seen with the recipe's warm-up: 3 of 9 pairs of runs differed, none of 8 with the setting)."""
    model = tiny_model()
    params = [p for p in model.parameters() if p.requires_grad]
    seen = []

    def loss_fn(step: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        seen.append(torch.are_deterministic_algorithms_enabled())
        weights = params[0].flatten()
        index = torch.randint(0, weights.numel(), (20000,), generator=generator)  # repeated indices
        return {"loss": (weights[index] ** 2).mean()}

    assert not torch.are_deterministic_algorithms_enabled()
    run_loop(model, params, loss_fn, config(steps=2, log_every=1), tmp_path, progress=False)
    assert seen == [True, True]
    assert not torch.are_deterministic_algorithms_enabled()  # the caller's setting is back


def test_iterative_rounds_add_correction_clicks_and_feed_back_masks():
    torch.set_num_threads(1)
    model = tiny_model()
    batch = make_batch(PromptDataset(Discs(8, seed=5), SIZE, 3, 0), 0, 2)
    calls = []
    original = model.forward_decoder

    def spy(emb, coords, labels, mask_input=None, num_outputs=3, image_index=None):
        calls.append((coords.shape, None if mask_input is None else mask_input.shape))
        return original(emb, coords, labels, mask_input, num_outputs, image_index)

    model.forward_decoder = spy
    cfg = config(decode_iters=3, box_prob=1.0, mask_input_prob=1.0)
    supervised_loss(model, batch, cfg, step_generator(0, 0))
    m = len(batch.masks)
    assert [c[0] for c in calls] == [(m, 2, 2), (m, 3, 2), (m, 4, 2)]  # box, then one click per round
    assert calls[0][1] is None and calls[1][1] == (m, 1, SIZE // 4, SIZE // 4)


def test_background_boxes_keep_clear_of_every_instance():
    # one instance chosen per image: the other two discs are not prompted but must still be avoided
    dataset = PromptDataset(Discs(16, seed=5, size=(96, SIZE)), SIZE, 1, 0)
    batch = make_batch(dataset, 0, 16)
    everything = [rescale(dataset.source[i].masks) for _, i in batch_indices(16, 0, 16, dataset.seed)]
    boxes, index = background_boxes(batch, 1.0, step_generator(0, 1))
    assert len(index) >= 12  # almost every image has room for one
    for (x1, y1, x2, y2), b in zip(boxes.int().tolist(), index.tolist()):
        assert (x2 - x1) * (y2 - y1) > 0
        assert not everything[b][:, y1:y2, x1:x2].any()
        assert y2 <= 96  # never in the padding below the 96-row image
    none, index = background_boxes(batch, 0.0, step_generator(0, 1))
    assert len(index) == 0 and none.shape == (0, 4)


def rescale(masks: np.ndarray) -> torch.Tensor:
    from unisam.train.data import rescale_masks

    return rescale_masks(masks, SIZE)


def test_background_boxes_get_empty_targets_zero_iou_and_a_click_inside():
    batch = make_batch(PromptDataset(Discs(8, seed=5), SIZE, 3, 0), 0, 4)
    m = len(batch.masks)
    unchanged = start_prompts(batch, False, 0.0, 1.0, step_generator(0, 2))  # click steps: none
    assert unchanged[0] is batch and unchanged[2].all()
    grown, prompts, present = start_prompts(batch, True, 0.0, 1.0, step_generator(0, 2))
    k = len(grown.masks) - m
    assert k >= 3 and prompts.boxes.shape == (m + k, 4)
    assert present.tolist() == [True] * m + [False] * k
    assert torch.equal(grown.masks[:m], batch.masks) and not grown.masks[m:].any()
    xy, labels = torch.zeros(m + k, 2), torch.zeros(m + k)  # error clicks: all negative
    xy1, labels1 = background_clicks(prompts, present, xy, labels, first_round=True)
    assert torch.equal(xy1[:m], xy[:m]) and torch.equal(labels1[:m], labels[:m])
    box = prompts.boxes[m:]
    assert torch.equal(xy1[m:], (box[:, :2] + box[:, 2:]) / 2) and (labels1[m:] == 1).all()  # as propagation asks
    assert (background_clicks(prompts, present, xy, labels, first_round=False)[1][m:] == -1).all()
    logits = torch.full((2, 1, 4, 4), -5.0)  # both rows predict nothing, both targets are empty
    empty = torch.zeros(2, 1, 4, 4)
    pred = torch.ones(2, 1)
    assert float(iou_prediction_loss(pred, logits, empty)) == 0.0  # empty vs empty is IoU 1 ...
    assert float(iou_prediction_loss(pred, logits, empty, present=torch.tensor([True, False]))) == 0.5  # ... unless no object


def empty_box_scores(model, n_images: int = 6) -> np.ndarray:
    """Predicted IoU of the single-mask output for 20 x 20 px boxes on empty background (discs held out)."""
    from unisam.prompts import BOX_BOTTOM_RIGHT, BOX_TOP_LEFT

    dataset = PromptDataset(Discs(n_images, seed=123), SIZE, 3, 0)
    scores = []
    with torch.no_grad():
        for i in range(n_images):
            example = dataset.example(i)
            emb = model.embed_image(example.image[None])
            corners = [[[x, y], [x + 20, y + 20]] for y in range(0, SIZE - 20, 6) for x in range(0, SIZE - 20, 6)
                       if not example.occupied[max(y - 2, 0):y + 22, max(x - 2, 0):x + 22].any()]
            labels = torch.tensor([[BOX_TOP_LEFT, BOX_BOTTOM_RIGHT]]).expand(len(corners), 2)
            _, iou = model.forward_decoder(emb, torch.tensor(corners).float(), labels, None, num_outputs=1,
                                           image_index=torch.zeros(len(corners), dtype=torch.long))
            scores.append(iou[:, 0].numpy())
    return np.concatenate(scores)


def test_background_prompts_teach_the_model_that_nothing_is_there(trained, tmp_path):
    torch.set_num_threads(1)
    model = tiny_model()
    train_supervised(model, Discs(10_000, seed=1), tmp_path, config(background_rate=0.5, box_prob=0.7), progress=False)
    without, with_background = empty_box_scores(trained[0].eval()), empty_box_scores(model.eval())
    assert len(without) > 200
    # the same training without background boxes is confident about a box on nothing (about 0.5);
    # measured 0.32 with them after these 150 steps
    assert with_background.mean() < 0.75 * without.mean(), (with_background.mean(), without.mean())


def test_distillation_phases_reduce_their_losses(trained, tmp_path):
    torch.set_num_threads(1)
    teacher = trained[0]
    torch.manual_seed(1)
    student = make_student(teacher, "repvit", {"cfgs": TINIER, "upsample_mode": "bilinear"})
    assert torch.equal(student.mask_decoder.iou_token.weight, teacher.mask_decoder.iou_token.weight)
    held_out = make_batch(PromptDataset(Discs(8, seed=77), SIZE, 3, 0), 0, 8)
    with torch.no_grad():
        mse_before = float(encoder_distill_loss(teacher, student.eval(), held_out)["loss"])
    cfg1 = EncoderDistillConfig(steps=60, batch_images=4, max_instances=3, lr=3e-3, warmup_steps=5,
                                checkpoint_every=1000)
    distill_encoder(teacher, student, Discs(1000, seed=2), tmp_path / "p1", cfg1, progress=False)
    with torch.no_grad():
        mse_after = float(encoder_distill_loss(teacher, student.eval(), held_out)["loss"])
    assert mse_after < 0.7 * mse_before, (mse_before, mse_after)

    cfg2 = DecoderDistillConfig(steps=40, batch_images=4, max_instances=3, lr=1e-3, warmup_steps=4,
                                checkpoint_every=1000, box_prob=0.5)

    def phase2_loss() -> float:
        with torch.no_grad():
            losses = [decoder_distill_loss(teacher, student.eval(), held_out, cfg2, step_generator(9, k))["mask"]
                      for k in range(4)]
        return float(np.mean(losses))

    loss_before = phase2_loss()
    prompt_encoder = {k: v.clone() for k, v in student.prompt_encoder.state_dict().items()}
    teacher_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    distill_decoder(teacher, student, Discs(1000, seed=3), tmp_path / "p2", cfg2, progress=False)
    assert phase2_loss() < 0.8 * loss_before
    for k, v in student.prompt_encoder.state_dict().items():  # frozen, as in EdgeSAM
        assert torch.equal(v, prompt_encoder[k])
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, teacher_state[k])


def test_evaluate_agrees_between_torch_and_the_exported_onnx_model(trained, tmp_path):
    import unisam
    from unisam.models import export_onnx

    model = trained[0]
    export_onnx(model, tmp_path / "onnx")
    predictor = unisam.load_model(weights=tmp_path / "onnx", threads=1)
    data = Discs(6, seed=42, size=(100, 140))  # non-square: resizing and padding on both paths
    with torch.no_grad():
        torch_result = evaluate(model, data, refine=2)
    onnx_result = evaluate(predictor, data, refine=2)
    assert set(torch_result) == {"box", "box+1", "box+2", "center", "center+1", "center+2", "images", "instances"}
    assert torch_result["instances"] == onnx_result["instances"] == 18
    for key in ("box", "box+1", "box+2", "center", "center+1", "center+2"):
        assert onnx_result[key] == pytest.approx(torch_result[key], abs=0.01), key
    assert torch_result["box"] > 0.5  # a trained model: agreement is not trivial
    table = format_table({"tiny": torch_result})
    assert "| tiny |" in table and "box+2" in table


def test_cli_commands_train_and_evaluate(trained, tmp_path, capsys):
    from unisam.train.commands import add_commands

    parser = argparse.ArgumentParser(prog="unisam")
    add_commands(parser.add_subparsers(dest="command", required=True))
    arch = tmp_path / "arch.json"
    arch.write_text(json.dumps(SPEC.to_dict()))
    args = parser.parse_args(["train", "--arch", str(arch), "--synthetic", "4", "--synthetic-size", "96",
                              "--steps", "2", "--batch-images", "2", "--max-instances", "2", "--decode-iters", "2",
                              "--out", str(tmp_path / "run"), "--no-progress", "--threads", "1"])
    args.func(args)
    assert load_trained(tmp_path / "run").spec == SPEC
    args = parser.parse_args(["evaluate", "--model", str(trained[1]), "--synthetic", "2", "--synthetic-size", "96",
                              "--refine", "1", "--json", str(tmp_path / "r.json"), "--no-progress"])
    args.func(args)
    result = json.loads((tmp_path / "r.json").read_text())
    assert set(result) >= {"box", "box+1", "center", "center+1"} and result["images"] == 2
    assert "| " in capsys.readouterr().out
