"""Supervised training of a SAM-architecture model from ground-truth masks, and the training loop it
shares with distillation (AdamW, warmup + cosine LR, gradient clipping, resumable checkpoints, JSON
lines logs, tqdm progress).

Every step is a pure function of ``(seed, step)``: the images of a step come from a seeded
permutation of the dataset per epoch, the instances of an image from ``(seed, epoch, index)`` and
the prompts from a generator seeded by ``(seed, step)``. A checkpoint therefore only needs the
model, the optimizer and the step to continue exactly where an uninterrupted run would be. The
steps run with ``torch.use_deterministic_algorithms(True)`` (:func:`deterministic`): on the CPU the
backward of advanced indexing otherwise accumulates with atomic adds in parallel, and two runs of
one seed then drift apart by rounding.

Output folder: ``checkpoint.pt`` (model + optimizer + step + RNG state, resumable), ``log.jsonl``
(one record per logged step and per validation), ``model.safetensors`` + ``arch.json`` (the trained
model, loadable with :func:`load_trained`) and ``summary.json``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..models import Sam, build_sam, load_checkpoint, save_checkpoint
from ..prompts import PAD, POSITIVE
from ..registry import ArchSpec
from .data import PromptDataset, Source
from .losses import iou_prediction_loss, mask_loss
from .prompting import Prompts, boxes_from_masks, error_points, jitter_boxes, loosen_boxes, random_points

CHECKPOINT = "checkpoint.pt"
LOG = "log.jsonl"
WEIGHTS = "model.safetensors"
ARCH = "arch.json"
SUMMARY = "summary.json"


@dataclass
class LoopConfig:
    """Optimisation settings shared by every training phase (steps count optimizer updates)."""

    steps: int = 1000
    batch_images: int = 4
    max_instances: int = 16  # prompts (instances) per image per step
    min_area: int = 4  # instances smaller than this (pixels at the model's input scale) are not prompted
    lr: float = 1e-3
    min_lr: float = 1e-5  # end of the cosine schedule
    warmup_steps: int = 50
    weight_decay: float = 0.01
    clip_grad: float = 1.0  # max gradient norm; <= 0 disables clipping
    seed: int = 0
    log_every: int = 10
    eval_every: int = 0  # validate every this many steps (0: only at the end)
    eval_images: int = 32
    checkpoint_every: int = 100
    background_rate: float = 0.0  # box steps: chance per image of an extra box on empty background (target: no mask)
    loose_box_rate: float = 0.0  # box steps: chance per box that it is enlarged (prompting.loosen_boxes)


@dataclass
class SupervisedConfig(LoopConfig):
    """SAM-style interactive training: a box or a random point first, then ``decode_iters - 1``
    rounds that each add a click sampled in the error region of the previous prediction."""

    decode_iters: int = 3
    box_prob: float = 0.5  # chance that a step starts from boxes (else from one point)
    box_noise: float = 0.1  # std of the box corner noise, as a fraction of the box side
    mask_input_prob: float = 0.5  # chance that a refinement round also gets the previous logits
    dice_weight: float = 1.0
    bce_weight: float = 1.0
    iou_weight: float = 1.0
    loss_upscale: int = 1  # loss grid = this x the decoder's S/4 logits: 1, 2 or 4 (SAM: 4)


# ----------------------------------------------------------------------------- data for one step


BACKGROUND_MARGIN = 2  # px (model input frame) between a background prompt and any annotated instance


@dataclass
class Batch:
    """The inputs of one step: ``images (B, 3, S, S)``, the chosen instances of all images
    ``masks (M, S, S)`` bool, ``image_index (M,)`` (which image each instance belongs to),
    ``valid (B, S, S)`` bool (inside the resized image, not padding) and ``occupied (B, S, S)`` bool
    (pixels of any annotated instance, chosen or not)."""

    images: torch.Tensor
    masks: torch.Tensor
    image_index: torch.Tensor
    valid: torch.Tensor
    occupied: torch.Tensor


def step_generator(seed: int, step: int) -> torch.Generator:
    """The torch generator of one step, a function of ``(seed, step)`` only."""
    state = np.random.SeedSequence([seed, step]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def batch_indices(n: int, step: int, batch_images: int, seed: int) -> list[tuple[int, int]]:
    """``(epoch, index)`` of each image of ``step``: epochs walk seeded permutations of ``range(n)``."""
    if n <= 0:
        raise ValueError("the training dataset is empty")
    out = []
    for g in range(step * batch_images, (step + 1) * batch_images):
        epoch = g // n
        out.append((epoch, int(np.random.default_rng([seed, epoch]).permutation(n)[g % n])))
    return out


def make_batch(dataset: PromptDataset, step: int, batch_images: int) -> Batch:
    """The :class:`Batch` of ``step`` (deterministic given the dataset's seed)."""
    examples = [dataset.example(i, e) for e, i in batch_indices(len(dataset), step, batch_images, dataset.seed)]
    s = dataset.image_size
    valid = torch.zeros(len(examples), s, s, dtype=torch.bool)
    for b, ex in enumerate(examples):
        valid[b, : ex.input_size[0], : ex.input_size[1]] = True
    counts = torch.tensor([len(ex.masks) for ex in examples])
    return Batch(
        images=torch.stack([ex.image for ex in examples]),
        masks=torch.cat([ex.masks for ex in examples]),
        image_index=torch.repeat_interleave(torch.arange(len(examples)), counts),
        valid=valid,
        occupied=torch.stack([ex.occupied for ex in examples]),
    )


def first_prompts(
    masks: torch.Tensor, use_box: bool, box_noise: float, generator: torch.Generator, loose_rate: float = 0.0
) -> Prompts:
    """Start prompts for ``masks (M, S, S)``: jittered boxes (a ``loose_rate`` share of them enlarged,
    :func:`~unisam.train.prompting.loosen_boxes`), or one uniformly random point per mask."""
    if use_box:
        size = tuple(masks.shape[1:])
        boxes = boxes_from_masks(masks)
        if box_noise > 0:
            boxes = jitter_boxes(boxes, size, generator, scale=box_noise)
        return Prompts.from_boxes(loosen_boxes(boxes, size, generator, loose_rate))
    return Prompts.from_points(random_points(masks, generator))


def background_boxes(
    batch: Batch, rate: float, generator: torch.Generator, tries: int = 8
) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes where nothing annotated is, so that a model learns to answer "no object here".

    Each image gets one with chance ``rate``: a box the size of one of its instances (a random one;
    16 x 16 px if it has none) entirely on free pixels: inside the image and at least
    ``BACKGROUND_MARGIN`` px from every annotated instance (the first of ``tries`` centres drawn
    uniformly from them that fits). Images with no free place get none. Returns boxes ``(K, 4)``
    xyxy and their ``image_index (K,)``.
    """
    s = batch.occupied.shape[-1]
    near = F.max_pool2d(batch.occupied[:, None].float(), 2 * BACKGROUND_MARGIN + 1, stride=1,
                        padding=BACKGROUND_MARGIN)[:, 0] > 0
    free = batch.valid & ~near
    integral = F.pad(free.logical_not().float().cumsum(1).cumsum(2), (1, 0, 1, 0))  # (B, S+1, S+1)
    boxes, index = [], []
    for b in range(free.shape[0]):
        if not bool(torch.rand((), generator=generator) < rate) or not free[b].any():
            continue
        centres = torch.multinomial(free[b].flatten().float(), tries, replacement=True, generator=generator)
        own = torch.nonzero(batch.image_index == b)[:, 0]
        if len(own):
            pick = own[torch.randint(len(own), (), generator=generator)]
            x1, y1, x2, y2 = boxes_from_masks(batch.masks[pick][None])[0].tolist()
            w, h = x2 - x1, y2 - y1
        else:
            w = h = 16.0
        for c in centres.tolist():
            cx, cy = c % s, c // s
            lo_x, lo_y = max(int(cx - w / 2), 0), max(int(cy - h / 2), 0)
            hi_x, hi_y = min(lo_x + int(round(w)), s), min(lo_y + int(round(h)), s)
            blocked = (integral[b, hi_y, hi_x] - integral[b, lo_y, hi_x] - integral[b, hi_y, lo_x]
                       + integral[b, lo_y, lo_x])
            if blocked == 0 and hi_x > lo_x and hi_y > lo_y:
                boxes.append(torch.tensor([lo_x, lo_y, hi_x, hi_y], dtype=torch.float32))
                index.append(b)
                break
    return (torch.stack(boxes) if boxes else torch.zeros(0, 4)), torch.tensor(index, dtype=torch.long)


def start_prompts(
    batch: Batch, use_box: bool, box_noise: float, background_rate: float, generator: torch.Generator,
    loose_rate: float = 0.0,
) -> tuple[Batch, Prompts, torch.Tensor]:
    """The first prompts of a step: :func:`first_prompts` on every instance, then, on box steps,
    :func:`background_boxes`. Returns the batch with an empty target mask appended per background
    box, the prompts in the same order, and ``present (M,)`` bool (False for background).

    Only boxes go on background: single clicks there (tried) made the model timid on every lone or
    negative click, which cost centre-click mIoU and segment-everything recall.
    """
    prompts = first_prompts(batch.masks, use_box, box_noise, generator, loose_rate)
    present = torch.ones(len(batch.masks), dtype=torch.bool)
    if background_rate <= 0 or not use_box:
        return batch, prompts, present
    boxes, index = background_boxes(batch, background_rate, generator)
    if not len(index):
        return batch, prompts, present
    s = batch.masks.shape[-1]
    batch = replace(batch, masks=torch.cat([batch.masks, batch.masks.new_zeros(len(index), s, s)]),
                    image_index=torch.cat([batch.image_index, index]))
    return batch, prompts.cat(Prompts.from_boxes(boxes)), torch.cat([present, torch.zeros(len(index), dtype=torch.bool)])


def background_clicks(
    prompts: Prompts, present: torch.Tensor, xy: torch.Tensor, labels: torch.Tensor, first_round: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Correction clicks ``xy (M, 2)``, ``labels (M,)`` with the background rows replaced: a positive
    click at the centre of their box in the first refinement round (a box and a point inside it, what
    :func:`unisam.runtime.propagate.mask_to_prompt` sends on a slice where the object has ended), then
    padding. Error clicks on an empty target would all be negative and teach that negative clicks
    erase everything."""
    if present.all() or prompts.boxes is None:
        return xy, labels
    xy, labels = xy.clone(), labels.clone()
    bg = ~present
    xy[bg] = (prompts.boxes[bg, :2] + prompts.boxes[bg, 2:]) / 2 if first_round else 0.0
    labels[bg] = POSITIVE if first_round else PAD
    return xy, labels


def _pick(x: torch.Tensor, choice: torch.Tensor) -> torch.Tensor:
    """``x (M, K, ...)`` -> ``(M, ...)``, output ``choice[m]`` of row m."""
    return x[torch.arange(x.shape[0]), choice]


def grid_to_input(xy: torch.Tensor, grid: int, image_size: int) -> torch.Tensor:
    """Pixel indices ``(..., 2)`` of a ``grid``-square map covering the input frame -> input-frame
    pixel indices of the same point (the centre of the covered block)."""
    scale = image_size / grid
    return (xy + 0.5) * scale - 0.5


class PromptingConfig(Protocol):
    """The start-prompt settings that :class:`SupervisedConfig` and the phase-2 distillation config share."""

    box_prob: float
    box_noise: float
    background_rate: float
    loose_box_rate: float


def start_step(
    batch: Batch, config: PromptingConfig, generator: torch.Generator
) -> tuple[bool, Batch, Prompts, torch.Tensor]:
    """A step's start: boxes with chance ``config.box_prob`` (else points), then :func:`start_prompts`.
    Returns ``use_box`` and the batch, prompts and ``present (M,)`` of :func:`start_prompts`."""
    use_box = bool(torch.rand((), generator=generator) < config.box_prob)
    batch, prompts, present = start_prompts(batch, use_box, config.box_noise, config.background_rate, generator,
                                            config.loose_box_rate)
    return use_box, batch, prompts, present


def add_correction(
    prompts: Prompts, present: torch.Tensor, pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor,
    image_size: int, generator: torch.Generator, first_round: bool,
) -> Prompts:
    """``prompts`` with one more click each, drawn uniformly where ``pred`` and ``target`` (M, g, g) bool
    disagree inside ``valid`` (M, g, g) bool (:func:`~unisam.train.prompting.error_points`), moved from
    the g-square grid to the ``image_size`` input frame; background rows as :func:`background_clicks`."""
    grid = pred.shape[-1]
    xy, labels = error_points(pred, target, "uniform", generator, valid)
    xy, labels = background_clicks(prompts, present, grid_to_input(xy, grid, image_size), labels, first_round)
    return prompts.add(xy, labels)


class RoundLosses:
    """A step's losses summed over its ``rounds`` decode rounds, each weighted ``1 / rounds``:
    ``loss`` (mask + ``iou_weight`` x IoU, differentiable) and the detached ``mask`` and ``iou`` parts."""

    def __init__(self, rounds: int, iou_weight: float):
        self.rounds, self.iou_weight = rounds, iou_weight
        self.total = self.mask = self.iou = 0.0

    def add(self, l_mask: torch.Tensor, l_iou: torch.Tensor) -> None:
        self.total = self.total + (l_mask + self.iou_weight * l_iou) / self.rounds
        self.mask += float(l_mask.detach()) / self.rounds
        self.iou += float(l_iou.detach()) / self.rounds

    def result(self) -> dict[str, torch.Tensor]:
        return {"loss": self.total, "mask": torch.tensor(self.mask), "iou": torch.tensor(self.iou)}

    @staticmethod
    def zero(emb: torch.Tensor) -> dict[str, torch.Tensor]:
        """The losses of a batch without instances: 0, still attached to the graph of ``emb``."""
        zero = emb.sum() * 0
        return {"loss": zero, "mask": zero.detach(), "iou": zero.detach()}


def _loss_grid(batch: Batch, pool: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ground-truth coverage ``targets (M, 1, g, g)`` and ``valid (M, 1, g, g)`` (inside the image) of
    each instance on the grid of ``pool`` x ``pool`` px cells (g = S / pool), as float fractions."""
    idx = batch.image_index
    if pool <= 1:
        return batch.masks[:, None].float(), batch.valid[idx][:, None].float()
    return F.avg_pool2d(batch.masks[:, None].float(), pool), F.avg_pool2d(batch.valid[:, None].float(), pool)[idx]


def supervised_loss(
    model: Sam, batch: Batch, config: SupervisedConfig, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """Loss of one interactive-training step (averaged over the decode rounds).

    All four decoder outputs are computed in every round; the mask loss uses the single-mask output,
    except after a lone first click (ambiguous), where only the best of the three multimask outputs
    counts, as in SAM. The IoU head learns the actual IoU of all four outputs. Losses are taken at
    ``loss_upscale`` x the low-resolution logits (1: the decoder's own ``S/4`` grid, 4: the input
    frame as in SAM) against the ground truth's coverage of each cell (area fraction), over the
    unpadded area; correction clicks are sampled on that grid. Background prompts
    (``config.background_rate``) have an empty target and an IoU target of 0.
    """
    emb = model.embed_image(batch.images)
    if not len(batch.masks):
        return RoundLosses.zero(emb)
    s = model.image_size
    grid = model.spec.low_res_size * config.loss_upscale
    use_box, batch, prompts, present = start_step(batch, config, generator)
    idx = batch.image_index
    targets, valid = _loss_grid(batch, s // grid)
    mask_in = None

    def upscale(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, (grid, grid), mode="bilinear", align_corners=False) if grid != x.shape[-1] else x

    losses = RoundLosses(config.decode_iters, config.iou_weight)
    for it in range(config.decode_iters):
        coords, labels = prompts.tokens()
        low, iou = model.forward_decoder(emb, coords, labels, mask_in, num_outputs=4, image_index=idx)
        with torch.no_grad():  # all four outputs, for the choice and the IoU targets
            logits = upscale(low.detach())
            per_output = mask_loss(logits, targets, valid, config.dice_weight, config.bce_weight)  # (M, 4)
        if it == 0 and not use_box:
            choice = 1 + per_output[:, 1:].argmin(1)
        else:
            choice = torch.zeros(len(logits), dtype=torch.long)
        # gradients flow through the chosen output only, so only it is upscaled with autograd
        chosen = upscale(_pick(low, choice)[:, None])
        losses.add(mask_loss(chosen, targets, valid, config.dice_weight, config.bce_weight).mean(),
                   iou_prediction_loss(iou, logits, targets, valid, present))
        if it + 1 < config.decode_iters:
            pred = _pick(logits.detach(), choice) > 0
            prompts = add_correction(prompts, present, pred, targets[:, 0] > 0.5, valid[:, 0] > 0.5, s, generator,
                                     it == 0)
            feed = bool(torch.rand((), generator=generator) < config.mask_input_prob)
            mask_in = _pick(low.detach(), choice)[:, None] if feed else None
    return losses.result()


def init_from_scratch(model: Sam, gain: float = 2.0) -> Sam:
    """Prepare a randomly initialised model for training from scratch; returns ``model``.

    In every cross-attention of the mask decoder (prompt tokens <-> image), the key projection starts
    as a copy of the query projection and both are scaled by ``gain``. The attention logits then
    start as a positive-definite form of the two sides' positional encodings, whose dot product peaks
    where the positions coincide, so an image position attends to nearby prompts from the first step.
    With PyTorch's default (independent) initialisation the decoder sits for hundreds of steps on a
    plateau where it predicts the same mask wherever the prompt is.
    """
    from ..models.transformer import Attention

    with torch.no_grad():
        for name, module in model.mask_decoder.transformer.named_modules():
            if isinstance(module, Attention) and not name.endswith("self_attn"):
                module.q_proj.weight.mul_(gain)
                module.k_proj.weight.copy_(module.q_proj.weight)
    return model


# ----------------------------------------------------------------------------- the loop


def lr_at(step: int, config: LoopConfig) -> float:
    """Linear warmup to ``lr`` over ``warmup_steps``, then cosine decay to ``min_lr`` at ``steps``."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    span = max(config.steps - config.warmup_steps, 1)
    t = min((step - config.warmup_steps) / span, 1.0)
    return config.min_lr + 0.5 * (config.lr - config.min_lr) * (1 + math.cos(math.pi * t))


def make_optimizer(params: list[nn.Parameter], config: LoopConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on weight matrices / kernels only (not on norms and biases)."""
    decay = [p for p in params if p.ndim >= 2]
    rest = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr)


def save_trained(model: Sam, out_dir: str | Path) -> Path:
    """Write ``model.safetensors`` (official flat layout) and ``arch.json`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model, out / WEIGHTS)
    (out / ARCH).write_text(json.dumps(model.spec.to_dict(), indent=2) + "\n")
    return out


def load_trained(path: str | Path) -> Sam:
    """A model written by :func:`save_trained` (a folder with ``arch.json`` + ``model.safetensors``),
    in eval mode."""
    path = Path(path)
    if not (path / ARCH).is_file() or not (path / WEIGHTS).is_file():
        raise ValueError(f"{path} is not a trained-model folder (needs {ARCH} and {WEIGHTS})")
    model = build_sam(ArchSpec.from_dict(json.loads((path / ARCH).read_text())))
    load_checkpoint(model, path / WEIGHTS)
    return model.eval()


def _write_atomic(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def _restart_log(path: Path, upto: int) -> None:
    """Keep the log records up to step ``upto`` (a resumed run rewrites the later ones)."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= upto]
    path.write_text("".join(line + "\n" for line in keep))


def _append(path: Path, record: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def _save_checkpoint(path: Path, model: Sam, optimizer: torch.optim.Optimizer, step: int, config: LoopConfig) -> None:
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": step,
        "rng": {"torch": torch.get_rng_state()},
        "config": asdict(config),
    }
    _write_atomic(path, state)


def _load_checkpoint(path: Path, model: Sam, optimizer: torch.optim.Optimizer) -> int:
    """Restore model, optimizer and torch RNG from a checkpoint; returns its step."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"]["torch"])
    return int(state["step"])


def _validate(validate: Callable[[], dict[str, float]] | None, modules: list[nn.Module], log_path: Path,
              step: int) -> dict[str, float]:
    """``validate()`` (``{}`` when None) in eval mode without gradients, the modules' modes restored
    after; logged as a ``"val"`` record of ``step``."""
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    with torch.no_grad():
        result = validate() if validate else {}
    for m, mode in zip(modules, modes):
        m.train(mode)
    _append(log_path, {"step": step, "kind": "val", **result})
    return result


class _TrainLog:
    """``"train"`` records of log.jsonl: the mean of each loss over the steps since the last record,
    the learning rate, seconds per step and (given ``images_per_step``) images per second."""

    def __init__(self, path: Path, images_per_step: int | None):
        self.path, self.images_per_step = path, images_per_step
        self._reset()

    def _reset(self) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0
        self.start = time.perf_counter()

    def add(self, losses: dict[str, torch.Tensor]) -> None:
        for k, v in losses.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v.detach())
        self.count += 1

    def write(self, step: int, lr: float) -> dict:
        elapsed = time.perf_counter() - self.start
        record = {"step": step, "kind": "train", "lr": lr, **{k: v / self.count for k, v in self.sums.items()}}
        record["s_per_step"] = elapsed / self.count
        if self.images_per_step:
            record["images_per_s"] = self.images_per_step * self.count / elapsed
        _append(self.path, record)
        self._reset()
        return record


def _optimizer_step(
    params: list[nn.Parameter], optimizer: torch.optim.Optimizer, loss_fn: Callable, config: LoopConfig, step: int,
    train_modules: list[nn.Module],
) -> tuple[dict[str, torch.Tensor], float]:
    """One update: train mode, the step's learning rate, ``loss_fn(step, generator)``, backward, gradient
    clipping, optimizer step. Returns the losses and the learning rate."""
    for m in train_modules:
        m.train()
    lr = lr_at(step, config)
    for group in optimizer.param_groups:
        group["lr"] = lr
    losses = loss_fn(step, step_generator(config.seed, step))
    optimizer.zero_grad(set_to_none=True)
    losses["loss"].backward()
    if config.clip_grad > 0:
        torch.nn.utils.clip_grad_norm_(params, config.clip_grad)
    optimizer.step()
    return losses, lr


def _finish(model: Sam, train_modules: list[nn.Module], out: Path, config: LoopConfig, started: float,
            val: dict[str, float]) -> dict:
    """Eval mode, the trained model and ``summary.json`` written into ``out`` (``started``: the
    ``time.perf_counter()`` of the first step); returns the summary."""
    for m in train_modules:
        m.eval()
    save_trained(model, out)
    summary = {"step": config.steps, "finished": True, "seconds": time.perf_counter() - started, "val": val}
    (out / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


@contextmanager
def deterministic() -> Iterator[None]:
    """PyTorch's deterministic algorithms for the block, the caller's setting restored after it."""
    before, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=warn_only)


def run_loop(
    model: Sam,
    params: list[nn.Parameter],
    loss_fn: Callable[[int, torch.Generator], dict[str, torch.Tensor]],
    config: LoopConfig,
    out_dir: str | Path,
    *,
    validate: Callable[[], dict[str, float]] | None = None,
    train_modules: list[nn.Module] | None = None,
    images_per_step: int | None = None,
    resume: bool = False,
    stop_at: int | None = None,
    progress: bool = True,
    desc: str = "train",
) -> dict:
    """Optimise ``params`` of ``model`` for ``config.steps`` steps of ``loss_fn(step, generator)``
    (which returns a dict with a differentiable ``"loss"`` and other scalars to log).

    ``train_modules`` are put in train mode for the steps (default: ``model``); everything else stays
    as the caller left it. ``validate()`` runs in eval mode under ``no_grad`` every
    ``config.eval_every`` steps and at the end. ``resume`` continues from ``out_dir/checkpoint.pt``
    when it exists (otherwise starts afresh); without it an existing checkpoint is an error.
    ``stop_at`` ends this call after that step (a checkpoint is written), as an interruption would.
    Returns the summary (also written to ``summary.json`` when the run completes).
    """
    from tqdm.auto import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path, log_path = out / CHECKPOINT, out / LOG
    train_modules = train_modules or [model]
    optimizer = make_optimizer(params, config)
    start = 0
    if ckpt_path.exists():
        if not resume:
            raise ValueError(f"{ckpt_path} exists: pass resume=True (--resume) to continue it, or use a new folder")
        start = _load_checkpoint(ckpt_path, model, optimizer)
        if start >= config.steps and (out / SUMMARY).exists():
            return json.loads((out / SUMMARY).read_text())
    _restart_log(log_path, start)
    end = config.steps if stop_at is None else min(stop_at, config.steps)

    log = _TrainLog(log_path, images_per_step)
    started = time.perf_counter()
    val: dict[str, float] = {}
    bar = tqdm(range(start, end), desc=desc, initial=start, total=config.steps, disable=not progress, leave=False)
    for step in bar:
        with deterministic():
            losses, lr = _optimizer_step(params, optimizer, loss_fn, config, step, train_modules)
        log.add(losses)
        done = step + 1
        if done % config.log_every == 0 or done == end:
            bar.set_postfix(loss=f"{log.write(done, lr)['loss']:.4f}")
        if config.eval_every and done % config.eval_every == 0 and done < config.steps:
            val = _validate(validate, train_modules, log_path, done)
        if done % config.checkpoint_every == 0 or done == end:
            _save_checkpoint(ckpt_path, model, optimizer, done, config)
    bar.close()
    if end < config.steps:
        return {"step": end, "finished": False}
    if validate is not None:
        val = _validate(validate, train_modules, log_path, config.steps)
    return _finish(model, train_modules, out, config, started, val)


def validation_fn(model: Sam, source: Source | None, config: LoopConfig) -> Callable[[], dict[str, float]] | None:
    """Box and centre-point mIoU of ``model`` on the first ``config.eval_images`` images of ``source``."""
    if source is None:
        return None
    from .evaluate import evaluate

    def validate() -> dict[str, float]:
        result = evaluate(model, source, prompts=("box", "center"), refine=0, max_images=config.eval_images,
                          max_instances=config.max_instances, seed=config.seed)
        return {k: result[k] for k in ("box", "center")}

    return validate


def prompt_dataset(source: Source, model: Sam, config: LoopConfig) -> PromptDataset:
    """``source`` prepared for ``model``'s input size and normalisation, with ``config``'s instance
    sampling (``max_instances``, ``seed``, ``min_area``)."""
    return PromptDataset(source, model.image_size, config.max_instances, config.seed,
                         model.spec.pixel_mean, model.spec.pixel_std, config.min_area)


def run_phase(
    model: Sam,
    params: list[nn.Parameter],
    batch_loss: Callable[[Batch, torch.Generator], dict[str, torch.Tensor]],
    source: Source,
    config: LoopConfig,
    out_dir: str | Path,
    *,
    val_source: Source | None,
    resume: bool,
    stop_at: int | None,
    progress: bool,
    desc: str,
    train_modules: list[nn.Module] | None = None,
) -> dict:
    """:func:`run_loop` on batches of ``source`` (:func:`prompt_dataset` for ``model``): step s
    minimises ``batch_loss(make_batch(dataset, s, config.batch_images), generator)``; validation
    (:func:`validation_fn`) on ``val_source``."""
    dataset = prompt_dataset(source, model, config)

    def loss_fn(step: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return batch_loss(make_batch(dataset, step, config.batch_images), generator)

    return run_loop(model, params, loss_fn, config, out_dir, validate=validation_fn(model, val_source, config),
                    train_modules=train_modules, images_per_step=config.batch_images, resume=resume,
                    stop_at=stop_at, progress=progress, desc=desc)


def train_supervised(
    model: Sam,
    source: Source,
    out_dir: str | Path,
    config: SupervisedConfig,
    *,
    val_source: Source | None = None,
    resume: bool = False,
    stop_at: int | None = None,
    progress: bool = True,
) -> dict:
    """Train all of ``model`` on ``source`` (ground-truth masks) with interactive prompting; see
    :func:`run_loop` for the output folder, resuming and the returned summary."""
    if config.loss_upscale not in (1, 2, 4):
        raise ValueError(f"loss_upscale must be 1, 2 or 4, got {config.loss_upscale}")

    def batch_loss(batch: Batch, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return supervised_loss(model, batch, config, generator)

    params = [p for p in model.parameters() if p.requires_grad]
    return run_phase(model, params, batch_loss, source, config, out_dir, val_source=val_source, resume=resume,
                     stop_at=stop_at, progress=progress, desc="supervised")
