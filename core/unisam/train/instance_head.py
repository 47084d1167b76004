"""Train an instance head (:mod:`unisam.models.instance_head`) for an ONNX export (``unisam instance-head``).

The export's image encoder stays frozen and runs on ONNX Runtime, so the head learns on exactly the
embeddings it will see at inference. Targets per synthetic image, on the decoder's low-res grid
(``image_size / 4``): foreground (the union of the instance masks) and, per object, its distance
transform divided by the object's own largest distance (1 at its innermost pixel, falling to 0 at its
edge), so that touching objects are separated by the dip between them. Loss: binary cross-entropy
on the foreground plus ``DISTANCE_WEIGHT`` x squared error of the sigmoid distance, both over the
pixels of the resized image (not its padding). Deterministic for a seed (one thread count).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import ndimage
from torch.nn import functional as F
from tqdm import tqdm

from ..hub import load_model
from ..models.export import export_instance_head
from ..models.instance_head import InstanceHead
from ..registry import INSTANCE_HEAD_FILE
from .data import SyntheticSource
from .supervised import deterministic

DISTANCE_WEIGHT = 2.0


@dataclass(frozen=True)
class InstanceHeadConfig:
    """Training budget: ``images`` synthetic images of ``sizes`` (pixels, H x W), embedded once, then
    ``steps`` AdamW steps of ``batch`` embeddings with a one-cycle schedule peaking at ``lr``."""

    steps: int = 1500
    images: int = 1200
    batch: int = 16
    lr: float = 2e-3
    seed: int = 0
    sizes: tuple[tuple[int, int], ...] = ((256, 256), (384, 384))


def instance_targets(masks: np.ndarray, input_size: tuple[int, int], side: int) -> tuple[np.ndarray, np.ndarray]:
    """``(N, H, W)`` bool instance masks of an image that the model resizes to ``input_size`` (h, w) ->
    targets ``(2, side, side)`` float32 (foreground, distance to the edge / the object's largest) on the
    low-res grid, and ``(side, side)`` float32 weights: 1 on the resized image, 0 on its padding."""
    shape = masks.shape[1:]
    foreground = np.zeros(shape, np.float32)
    distance = np.zeros(shape, np.float32)
    for mask in masks:
        edt = ndimage.distance_transform_edt(mask)
        if edt.max() > 0:
            distance = np.maximum(distance, (edt / edt.max()).astype(np.float32))
            foreground[mask] = 1.0
    h, w = max(1, round(input_size[0] / 4)), max(1, round(input_size[1] / 4))
    targets = np.zeros((2, side, side), np.float32)
    for channel, values in enumerate((foreground, distance)):
        targets[channel, :h, :w] = np.asarray(Image.fromarray(values).resize((w, h), Image.BILINEAR))
    valid = np.zeros((side, side), np.float32)
    valid[:h, :w] = 1.0
    return targets, valid


def _examples(export_dir: Path, config: InstanceHeadConfig, threads: int | None, progress: bool):
    """Embeddings ``(n, C, s, s)``, targets ``(n, 2, 4s, 4s)`` and weights ``(n, 4s, 4s)`` as tensors."""
    predictor = load_model(weights=export_dir, threads=threads)
    side = 4 * predictor.spec.embedding_size
    source = SyntheticSource(config.images, config.sizes, config.seed)
    features, targets, valid = [], [], []
    for i in tqdm(range(len(source)), desc="embed synthetic images", unit="image", disable=not progress):
        item = source[i]
        if not len(item.masks):
            continue
        embedding = predictor.embed(item.image)
        target, weight = instance_targets(np.asarray(item.masks, bool), embedding.input_size, side)
        features.append(embedding.features[0])
        targets.append(target)
        valid.append(weight)
        predictor.cache.clear()
    return tuple(torch.from_numpy(np.stack(a)) for a in (features, targets, valid))


def head_loss(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The training loss of ``(B, 2, s, s)`` logits against :func:`instance_targets` (batched)."""
    total = valid.sum().clamp(min=1)
    foreground = (F.binary_cross_entropy_with_logits(logits[:, 0], targets[:, 0], reduction="none") * valid).sum()
    distance = ((torch.sigmoid(logits[:, 1]) - targets[:, 1]) ** 2 * valid).sum()
    return (foreground + DISTANCE_WEIGHT * distance) / total


def train_instance_head(
    export_dir: str | Path,
    config: InstanceHeadConfig = InstanceHeadConfig(),
    *,
    threads: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Train a head for the export folder ``export_dir`` and write it there (``instances.onnx``, its
    sha256 and the config into ``model.json``). An existing head is replaced only with ``overwrite``.
    Returns ``{"loss_first", "loss_last", "config"}`` (mean loss of the first and last 50 steps, or quarter
    of the steps if fewer)."""
    export_dir = Path(export_dir)
    if (export_dir / INSTANCE_HEAD_FILE).exists() and not overwrite:  # before the work, not after
        raise FileExistsError(
            f"{export_dir / INSTANCE_HEAD_FILE} exists; pass overwrite=True (--overwrite) to replace it"
        )
    if threads is not None:
        torch.set_num_threads(threads)
    features, targets, valid = _examples(export_dir, config, threads, progress)
    torch.manual_seed(config.seed)
    head = InstanceHead(features.shape[1])
    optimizer = torch.optim.AdamW(head.parameters(), config.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.lr, total_steps=config.steps)
    generator = torch.Generator().manual_seed(config.seed)
    losses = []
    with deterministic():
        for _ in tqdm(range(config.steps), desc="train instance head", unit="step", disable=not progress):
            index = torch.randint(len(features), (config.batch,), generator=generator)
            loss = head_loss(head(features[index]), targets[index], valid[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(float(loss.detach()))
    export_instance_head(head, export_dir, overwrite=overwrite, info=asdict(config))
    window = max(1, min(50, len(losses) // 4))
    return {"loss_first": float(np.mean(losses[:window])), "loss_last": float(np.mean(losses[-window:])),
            "config": asdict(config)}

