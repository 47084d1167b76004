"""Losses on mask logits (dice, BCE), on predicted IoU (SAM's MSE) and on image embeddings (EdgeSAM).

Mask functions take logits and float targets of any matching (broadcastable) shape ``(..., H, W)``
and an optional ``valid`` map of the same layout (1 inside the image, 0 in the padding); they
reduce the last two axes only, so ``(B, K, H, W)`` gives one value per prompt and output ``(B, K)``.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def _valid_like(logits: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    return torch.ones_like(logits) if valid is None else valid.to(logits.dtype).expand_as(logits)


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """``1 - (2 sum(p t) + 1) / (sum(p) + sum(t) + 1)`` with ``p = sigmoid(logits)``, over valid pixels."""
    v = _valid_like(logits, valid)
    p = logits.sigmoid() * v
    t = targets.expand_as(logits) * v
    return 1 - (2 * (p * t).sum((-2, -1)) + 1) / (p.sum((-2, -1)) + t.sum((-2, -1)) + 1)


def bce_loss(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Sigmoid binary cross-entropy averaged over the valid pixels."""
    v = _valid_like(logits, valid)
    bce = F.binary_cross_entropy_with_logits(logits, targets.expand_as(logits), reduction="none")
    return (bce * v).sum((-2, -1)) / v.sum((-2, -1)).clamp(min=1)


def mask_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    valid: torch.Tensor | None = None,
    dice_weight: float = 1.0,
    bce_weight: float = 1.0,
) -> torch.Tensor:
    """``dice_weight * dice + bce_weight * bce`` per mask (EdgeSAM's decoder distillation uses 5 and 5)."""
    return dice_weight * dice_loss(logits, targets, valid) + bce_weight * bce_loss(logits, targets, valid)


def mask_iou(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """IoU of ``logits > 0`` with ``targets > 0.5`` over the valid pixels (1 when both are empty)."""
    v = _valid_like(logits, valid) > 0
    pred = (logits > 0) & v
    gt = (targets.expand_as(logits) > 0.5) & v
    inter = (pred & gt).sum((-2, -1)).float()
    union = (pred | gt).sum((-2, -1)).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def iou_prediction_loss(
    pred_iou: torch.Tensor,
    logits: torch.Tensor,
    targets: torch.Tensor,
    valid: torch.Tensor | None = None,
    present: torch.Tensor | None = None,
) -> torch.Tensor:
    """SAM's IoU head loss: mean squared error between ``pred_iou (B, K)`` and the actual IoU of each
    output mask ``logits (B, K, H, W)`` with ``targets``. Rows where ``present (B,)`` bool is False
    prompt no object: their target is 0 (no mask is a good answer there, even an empty one)."""
    actual = mask_iou(logits.detach(), targets, valid)
    if present is not None:
        actual = actual * present[:, None].to(actual.dtype)
    return F.mse_loss(pred_iou, actual)


def embedding_mse(student: torch.Tensor, teacher: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """EdgeSAM's encoder distillation loss: squared error averaged over channels and over the valid
    cells of each image, then over the batch. ``student, teacher (B, C, h, w)``, ``valid (B, h, w)``."""
    if student.shape != teacher.shape:
        raise ValueError(f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)} embeddings differ")
    err = (student - teacher).square().mean(1)
    v = torch.ones_like(err) if valid is None else valid.to(err.dtype)
    return ((err * v).sum((-2, -1)) / v.sum((-2, -1)).clamp(min=1)).mean()
