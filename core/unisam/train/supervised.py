"""Supervised training of a SAM-architecture model from ground-truth masks, and the training loop it
shares with distillation (AdamW, warmup + cosine LR, gradient clipping, resumable checkpoints, JSON
lines logs, tqdm progress).

Every step is a pure function of ``(seed, step)``: the images of a step come from a seeded
permutation of the dataset per epoch, the instances of an image from ``(seed, epoch, index)`` and
the prompts from a generator seeded by ``(seed, step)``. A checkpoint therefore only needs the
model, the optimizer and the step to continue exactly where an uninterrupted run would be.

Output folder: ``checkpoint.pt`` (model + optimizer + step + RNG state, resumable), ``log.jsonl``
(one record per logged step and per validation), ``model.safetensors`` + ``arch.json`` (the trained
model, loadable with :func:`load_trained`) and ``summary.json``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

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
        zero = emb.sum() * 0
        return {"loss": zero, "mask": zero.detach(), "iou": zero.detach()}
    s = model.image_size
    grid = model.spec.low_res_size * config.loss_upscale
    use_box = bool(torch.rand((), generator=generator) < config.box_prob)
    batch, prompts, present = start_prompts(batch, use_box, config.box_noise, config.background_rate, generator,
                                            config.loose_box_rate)
    idx = batch.image_index
    pool = s // grid
    targets = F.avg_pool2d(batch.masks[:, None].float(), pool) if pool > 1 else batch.masks[:, None].float()
    valid = F.avg_pool2d(batch.valid[:, None].float(), pool)[idx] if pool > 1 else batch.valid[idx][:, None].float()
    mask_in = None

    def upscale(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, (grid, grid), mode="bilinear", align_corners=False) if grid != x.shape[-1] else x

    total = mask_total = iou_total = 0.0
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
        l_mask = mask_loss(chosen, targets, valid, config.dice_weight, config.bce_weight).mean()
        l_iou = iou_prediction_loss(iou, logits, targets, valid, present)
        total = total + (l_mask + config.iou_weight * l_iou) / config.decode_iters
        mask_total += float(l_mask.detach()) / config.decode_iters
        iou_total += float(l_iou.detach()) / config.decode_iters
        if it + 1 < config.decode_iters:
            pred = _pick(logits.detach(), choice) > 0
            xy, lab = error_points(pred, targets[:, 0] > 0.5, "uniform", generator, valid[:, 0] > 0.5)
            xy, lab = background_clicks(prompts, present, grid_to_input(xy, grid, s), lab, it == 0)
            prompts = prompts.add(xy, lab)
            feed = bool(torch.rand((), generator=generator) < config.mask_input_prob)
            mask_in = _pick(low.detach(), choice)[:, None] if feed else None
    return {"loss": total, "mask": torch.tensor(mask_total), "iou": torch.tensor(iou_total)}


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
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"]["torch"])
        start = int(state["step"])
        if start >= config.steps and (out / SUMMARY).exists():
            return json.loads((out / SUMMARY).read_text())
    _restart_log(log_path, start)
    end = config.steps if stop_at is None else min(stop_at, config.steps)

    def save(step: int) -> None:
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": step,
            "rng": {"torch": torch.get_rng_state()},
            "config": asdict(config),
        }
        _write_atomic(ckpt_path, state)

    def run_validation(step: int) -> dict[str, float]:
        modes = [m.training for m in train_modules]
        for m in train_modules:
            m.eval()
        with torch.no_grad():
            result = validate() if validate else {}
        for m, mode in zip(train_modules, modes):
            m.train(mode)
        with log_path.open("a") as f:
            f.write(json.dumps({"step": step, "kind": "val", **result}) + "\n")
        return result

    sums: dict[str, float] = {}
    count = 0
    window_start = time.perf_counter()
    started = time.perf_counter()
    val: dict[str, float] = {}
    bar = tqdm(range(start, end), desc=desc, initial=start, total=config.steps, disable=not progress, leave=False)
    for step in bar:
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
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach())
        count += 1
        done = step + 1
        if done % config.log_every == 0 or done == end:
            elapsed = time.perf_counter() - window_start
            record = {"step": done, "kind": "train", "lr": lr, **{k: v / count for k, v in sums.items()}}
            record["s_per_step"] = elapsed / count
            if images_per_step:
                record["images_per_s"] = images_per_step * count / elapsed
            with log_path.open("a") as f:
                f.write(json.dumps(record) + "\n")
            bar.set_postfix(loss=f"{record['loss']:.4f}")
            sums, count, window_start = {}, 0, time.perf_counter()
        if config.eval_every and done % config.eval_every == 0 and done < config.steps:
            val = run_validation(done)
        if done % config.checkpoint_every == 0 or done == end:
            save(done)
    bar.close()
    if end < config.steps:
        return {"step": end, "finished": False}
    if validate is not None:
        val = run_validation(config.steps)
    for m in train_modules:
        m.eval()
    save_trained(model, out)
    summary = {"step": config.steps, "finished": True, "seconds": time.perf_counter() - started, "val": val}
    (out / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


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
    dataset = PromptDataset(source, model.image_size, config.max_instances, config.seed,
                            model.spec.pixel_mean, model.spec.pixel_std, config.min_area)

    def loss_fn(step: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return supervised_loss(model, make_batch(dataset, step, config.batch_images), config, generator)

    params = [p for p in model.parameters() if p.requires_grad]
    return run_loop(model, params, loss_fn, config, out_dir, validate=validation_fn(model, val_source, config),
                    images_per_step=config.batch_images, resume=resume, stop_at=stop_at, progress=progress,
                    desc="supervised")
