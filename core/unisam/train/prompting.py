"""SAM-style prompt sampling from masks, batched in torch.

Points are ``(x, y)`` pixel indices of the mask grid (column, row), as in unisam's prompts. Boxes
are ``x1, y1, x2, y2`` with COCO's extent (``x2 = x1 + width``: one past the last column / row), the
boxes of COCO and SA-1B annotations that SAM and EdgeSAM are evaluated with. ``generator``
arguments make sampling reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..masks import deepest_point
from ..prompts import BOX_BOTTOM_RIGHT, BOX_TOP_LEFT, NEGATIVE, PAD, POSITIVE

ERROR_MODES = ("uniform", "center")


def _check_masks(masks: torch.Tensor, name: str = "masks") -> None:
    if masks.ndim != 3:
        raise ValueError(f"{name} must be (B, H, W), got {tuple(masks.shape)}")


def boxes_from_masks(masks: torch.Tensor) -> torch.Tensor:
    """``(B, H, W)`` bool -> ``(B, 4)`` float32 ``x1, y1, x2, y2`` (``x2``, ``y2`` one past the last
    column / row); an empty mask raises."""
    _check_masks(masks)
    rows, cols = masks.any(2), masks.any(1)
    if not rows.any(1).all():
        raise ValueError("cannot take the box of an empty mask")
    h, w = masks.shape[1:]
    x1 = cols.float().argmax(1)
    y1 = rows.float().argmax(1)
    x2 = w - cols.flip(1).float().argmax(1)
    y2 = h - rows.flip(1).float().argmax(1)
    return torch.stack([x1, y1, x2, y2], 1).float()


def jitter_boxes(
    boxes: torch.Tensor,
    size: tuple[int, int],
    generator: torch.Generator | None = None,
    scale: float = 0.1,
    max_px: float = 20.0,
) -> torch.Tensor:
    """SAM's box noise: each coordinate moves by a normal with std ``scale`` x the box side (at most
    ``max_px`` pixels either way); boxes stay inside the ``(H, W)`` frame, at least one pixel wide."""
    h, w = size
    side = torch.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]] * 2, 1)
    noise = torch.randn(boxes.shape, generator=generator) * scale * side
    out = boxes + noise.clamp(-max_px, max_px)
    limit = boxes.new_tensor([w, h])
    lo = torch.minimum(out[:, :2], out[:, 2:]).clamp(min=0)
    lo = torch.minimum(lo, limit - 1)
    hi = torch.minimum(torch.maximum(torch.maximum(out[:, :2], out[:, 2:]), lo + 1), limit)
    return torch.cat([lo, hi], 1)


def loosen_boxes(
    boxes: torch.Tensor,
    size: tuple[int, int],
    generator: torch.Generator | None,
    rate: float,
    growth: float = 0.4,
) -> torch.Tensor:
    """Boxes drawn around something larger than the object, as z-propagation sends where an object
    shrinks from one slice to the next: with chance ``rate`` per box, each of its four sides moves
    outwards by a uniform fraction in ``[0, growth)`` of the box's width (left, right) or height (top,
    bottom); boxes stay inside the ``(H, W)`` frame. ``rate <= 0`` returns ``boxes`` and draws nothing."""
    if rate <= 0:
        return boxes
    h, w = size
    chosen = torch.rand(boxes.shape[0], generator=generator) < rate
    side = torch.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]] * 2, 1)
    grow = torch.rand(boxes.shape, generator=generator) * growth * side * chosen[:, None]
    out = boxes + grow * boxes.new_tensor([-1, -1, 1, 1])
    return torch.minimum(out.clamp(min=0), boxes.new_tensor([w, h, w, h]))


def random_points(masks: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One uniformly random pixel of each mask: ``(B, H, W)`` bool -> ``(B, 2)`` float32 xy."""
    _check_masks(masks)
    flat = masks.flatten(1).float()
    if not (flat.sum(1) > 0).all():
        raise ValueError("cannot sample a point in an empty mask")
    index = torch.multinomial(flat, 1, generator=generator)[:, 0]
    w = masks.shape[2]
    return torch.stack([index % w, index // w], 1).float()


def center_points(masks: torch.Tensor) -> torch.Tensor:
    """Each mask's centre point: the in-mask pixel farthest from the mask boundary (Euclidean distance
    transform; ties go to the first pixel in row-major order). ``(B, H, W)`` bool -> ``(B, 2)`` xy."""
    _check_masks(masks)
    out = torch.zeros(masks.shape[0], 2)
    for i, m in enumerate(masks.cpu().numpy()):
        if not m.any():
            raise ValueError("cannot take the centre of an empty mask")
        out[i] = torch.tensor(deepest_point(m)[1], dtype=torch.float32)
    return out


def error_points(
    pred: torch.Tensor,
    target: torch.Tensor,
    mode: str = "uniform",
    generator: torch.Generator | None = None,
    valid: torch.Tensor | None = None,
    min_pixels: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A correction click per mask where ``pred`` is wrong with respect to ``target``.

    False negatives (``target & ~pred``) give a positive point (label 1), false positives
    (``pred & ~target``) a negative point (label 0). Used against the ground truth (iterative
    training, evaluation) and against a teacher's mask (distillation: where teacher and student
    disagree). ``mode``:

    - ``"uniform"``: a pixel drawn uniformly from all wrong pixels (SAM's training, EdgeSAM's loop);
    - ``"center"``: deterministic; of the two error maps the one whose deepest pixel lies farthest
      from its boundary, clicked at that pixel (the centre of the largest error region, as
      :func:`center_points`).

    ``pred``, ``target``: ``(B, H, W)`` bool; ``valid``: optional ``(B, H, W)`` bool where points may
    go (e.g. outside the padding). Rows with fewer than ``min_pixels`` wrong pixels get a padding
    point (label -1, coordinates 0). Returns coords ``(B, 2)`` float32 xy and labels ``(B,)``.
    """
    _check_masks(pred, "pred")
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    if mode not in ERROR_MODES:
        raise ValueError(f"mode must be one of {ERROR_MODES}, got {mode!r}")
    fn = target & ~pred
    fp = pred & ~target
    if valid is not None:
        fn, fp = fn & valid, fp & valid
    wrong = fn | fp
    enough = wrong.flatten(1).sum(1) >= max(min_pixels, 1)
    coords = torch.zeros(pred.shape[0], 2)
    labels = torch.full((pred.shape[0],), PAD)
    w = pred.shape[2]
    if mode == "uniform":
        if enough.any():
            weights = wrong[enough].flatten(1).float()
            index = torch.multinomial(weights, 1, generator=generator)[:, 0]
            coords[enough] = torch.stack([index % w, index // w], 1).float()
            labels[enough] = fn[enough].flatten(1).gather(1, index[:, None])[:, 0].float()
        return coords, labels
    fn_np, fp_np = fn.cpu().numpy(), fp.cpu().numpy()
    for i in torch.nonzero(enough)[:, 0].tolist():
        depth_fn, xy_fn = deepest_point(fn_np[i])
        depth_fp, xy_fp = deepest_point(fp_np[i])
        positive = depth_fn >= depth_fp
        coords[i] = torch.tensor(xy_fn if positive else xy_fp, dtype=torch.float32)
        labels[i] = POSITIVE if positive else NEGATIVE
    return coords, labels


@dataclass(frozen=True)
class Prompts:
    """B prompts in one frame: clicks ``points (B, P, 2)`` xy with ``labels (B, P)`` (1 positive,
    0 negative, -1 padding) and optional ``boxes (B, 4)`` xyxy."""

    points: torch.Tensor
    labels: torch.Tensor
    boxes: torch.Tensor | None = None

    @classmethod
    def from_boxes(cls, boxes: torch.Tensor) -> Prompts:
        return cls(boxes.new_zeros(boxes.shape[0], 0, 2), boxes.new_zeros(boxes.shape[0], 0), boxes)

    @classmethod
    def from_points(cls, xy: torch.Tensor) -> Prompts:
        """One positive click per prompt, ``xy (B, 2)``."""
        return cls(xy[:, None].float(), xy.new_ones(xy.shape[0], 1).float())

    def cat(self, other: Prompts) -> Prompts:
        """These prompts followed by ``other``'s (same click count, both with or both without boxes)."""
        if (self.boxes is None) != (other.boxes is None) or self.points.shape[1] != other.points.shape[1]:
            raise ValueError("can only concatenate prompts of the same kind (clicks per prompt, with or without box)")
        boxes = None if self.boxes is None else torch.cat([self.boxes, other.boxes.to(self.boxes)])
        return Prompts(torch.cat([self.points, other.points.to(self.points)]),
                       torch.cat([self.labels, other.labels.to(self.labels)]), boxes)

    def subset(self, rows: torch.Tensor) -> Prompts:
        """The prompts of ``rows`` (a ``(B,)`` bool mask or an index tensor)."""
        return Prompts(self.points[rows], self.labels[rows], None if self.boxes is None else self.boxes[rows])

    def add(self, xy: torch.Tensor, labels: torch.Tensor) -> Prompts:
        """These prompts with one more click each: ``xy (B, 2)``, ``labels (B,)``."""
        return Prompts(
            torch.cat([self.points, xy[:, None].to(self.points)], 1),
            torch.cat([self.labels, labels[:, None].to(self.labels)], 1),
            self.boxes,
        )

    def scaled(self, sx: float, sy: float) -> Prompts:
        """The same prompts with x multiplied by ``sx`` and y by ``sy`` (e.g. into the model frame)."""
        factor = self.points.new_tensor([sx, sy])
        boxes = None if self.boxes is None else self.boxes * factor.repeat(2)
        return Prompts(self.points * factor, self.labels, boxes)

    def tokens(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoder inputs in SAM's layout: the clicks, then the two box corners (labels 2, 3) or one
        padding point. Returns coords ``(B, T, 2)`` and labels ``(B, T)``."""
        b = self.points.shape[0]
        if self.boxes is not None:
            extra = self.boxes.reshape(b, 2, 2)
            extra_labels = self.labels.new_tensor([BOX_TOP_LEFT, BOX_BOTTOM_RIGHT]).expand(b, 2)
        else:
            extra = self.points.new_zeros(b, 1, 2)
            extra_labels = self.labels.new_full((b, 1), PAD)
        return torch.cat([self.points, extra], 1), torch.cat([self.labels, extra_labels], 1)
