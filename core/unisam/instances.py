"""``Instances``: the one result type of unisam: N instance masks of one image with boxes, scores and,
where a function fills them, class names with their confidences and object (track) ids.

Boxes follow unisam's one convention (see :mod:`unisam.masks`): pixel-edge ``(x1, y1, x2, y2)``, so a
mask covering columns ``a..b`` has ``x1 = a, x2 = b + 1`` and ``x2 - x1`` is its width in pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .masks import masks_to_boxes, masks_to_rle, rles_to_masks


@dataclass
class Instances:
    """Instance masks of one ``H x W`` image.

    masks: ``(N, H, W)`` bool. boxes: ``(N, 4)`` float32 pixel-edge ``(x1, y1, x2, y2)`` (see the
    module docstring). scores: ``(N,)`` float32 mask quality (e.g. predicted IoU). labels: N class
    names (None for an unnamed one) or None. label_scores: ``(N,)`` float32 label confidences or None.
    ids: ``(N,)`` int64 instance/track ids or None. label_topk: per instance the best few
    ``(name, probability)`` pairs, best first (what :func:`unisam.label` considered), or None.
    """

    masks: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    labels: list[str | None] | None = None
    label_scores: np.ndarray | None = None
    ids: np.ndarray | None = None
    label_topk: list[list[tuple[str, float]]] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.masks, np.ndarray) or self.masks.dtype != bool or self.masks.ndim != 3:
            got = getattr(self.masks, "shape", None), getattr(self.masks, "dtype", type(self.masks))
            raise ValueError(f"masks must be an (N, H, W) bool array, got shape/dtype {got}")
        n = self.masks.shape[0]
        self.boxes = np.asarray(self.boxes, dtype=np.float32)
        if self.boxes.shape != (n, 4):
            raise ValueError(f"boxes must have shape ({n}, 4), got {self.boxes.shape}")
        self.scores = np.asarray(self.scores, dtype=np.float32)
        if self.scores.shape != (n,):
            raise ValueError(f"scores must have shape ({n},), got {self.scores.shape}")
        if self.labels is not None:
            self.labels = [None if label is None else str(label) for label in self.labels]
            if len(self.labels) != n:
                raise ValueError(f"labels must have {n} entries, got {len(self.labels)}")
        if self.label_scores is not None:
            self.label_scores = np.asarray(self.label_scores, dtype=np.float32)
            if self.label_scores.shape != (n,):
                raise ValueError(f"label_scores must have shape ({n},), got {self.label_scores.shape}")
        if self.ids is not None:
            self.ids = np.asarray(self.ids, dtype=np.int64)
            if self.ids.shape != (n,):
                raise ValueError(f"ids must have shape ({n},), got {self.ids.shape}")
        if self.label_topk is not None:
            self.label_topk = [[(str(name), float(p)) for name, p in ranked] for ranked in self.label_topk]
            if len(self.label_topk) != n:
                raise ValueError(f"label_topk must have {n} entries, got {len(self.label_topk)}")

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` of the image the masks belong to."""
        return int(self.masks.shape[1]), int(self.masks.shape[2])

    def __len__(self) -> int:
        return int(self.masks.shape[0])

    def __getitem__(self, index: int | slice | np.ndarray | Sequence[int]) -> Instances:
        """A subset: an int keeps one instance (length 1); slices, bool masks and index arrays as NumPy."""
        if isinstance(index, (int, np.integer)):
            n = len(self)
            if not -n <= index < n:
                raise IndexError(f"index {index} out of range for {n} instances")
            index = slice(int(index), int(index) + 1 if index != -1 else None)
        elif not isinstance(index, slice):
            index = np.asarray(index)
            if index.dtype == bool:
                if index.shape != (len(self),):
                    raise IndexError(f"boolean index must have shape ({len(self)},), got {index.shape}")
                index = np.flatnonzero(index)
            elif index.size == 0:
                index = index.astype(np.int64)
        positions = np.arange(len(self))[index]
        return Instances(
            masks=self.masks[index],
            boxes=self.boxes[index],
            scores=self.scores[index],
            labels=None if self.labels is None else [self.labels[i] for i in positions.reshape(-1)],
            label_scores=None if self.label_scores is None else self.label_scores[index],
            ids=None if self.ids is None else self.ids[index],
            label_topk=None if self.label_topk is None else [self.label_topk[i] for i in positions.reshape(-1)],
        )

    @classmethod
    def empty(cls, height: int, width: int) -> Instances:
        """No instances in an ``height x width`` image."""
        return cls(
            masks=np.zeros((0, height, width), dtype=bool),
            boxes=np.zeros((0, 4), dtype=np.float32),
            scores=np.zeros((0,), dtype=np.float32),
        )

    @classmethod
    def from_masks(cls, masks: np.ndarray, scores: np.ndarray | None = None, **optional: Any) -> Instances:
        """Instances from ``(N, H, W)`` bool masks; boxes are computed, scores default to 1."""
        masks = np.asarray(masks)
        if masks.dtype != bool:
            raise ValueError(f"masks must be bool, got {masks.dtype}; threshold them first (e.g. logits > 0)")
        if scores is None:
            scores = np.ones(masks.shape[0] if masks.ndim == 3 else 0, dtype=np.float32)
        return cls(masks=masks, boxes=masks_to_boxes(masks), scores=scores, **optional)

    @classmethod
    def concat(cls, parts: Sequence[Instances]) -> Instances:
        """Instances of one image stacked in order. An optional field is kept when every non-empty part
        has it (a ``ValueError`` when only some do)."""
        if not parts:
            raise ValueError("concat needs at least one Instances (the image size comes from them)")
        sizes = {p.image_size for p in parts}
        if len(sizes) != 1:
            raise ValueError(f"cannot concatenate instances of different image sizes {sorted(sizes)}")
        filled = [p for p in parts if len(p)]
        if not filled:
            return cls.empty(*sizes.pop())

        def optional(name: str) -> list[Any] | None:
            values = [getattr(p, name) for p in filled]
            present = sum(v is not None for v in values)
            if 0 < present < len(values):
                raise ValueError(f"cannot concatenate: only some of the instances have {name}")
            return values if present else None

        labels, label_scores, ids = optional("labels"), optional("label_scores"), optional("ids")
        topk = optional("label_topk")
        return cls(
            masks=np.concatenate([p.masks for p in filled]),
            boxes=np.concatenate([p.boxes for p in filled]),
            scores=np.concatenate([p.scores for p in filled]),
            labels=None if labels is None else [label for part in labels for label in part],
            label_scores=None if label_scores is None else np.concatenate(label_scores),
            ids=None if ids is None else np.concatenate(ids),
            label_topk=None if topk is None else [ranked for part in topk for ranked in part],
        )

    def to_rle(self) -> list[dict[str, Any]]:
        """COCO compressed RLEs, one per mask: ``{"size": [H, W], "counts": str}`` (JSON-serialisable)."""
        return masks_to_rle(self.masks)

    @classmethod
    def from_rle(
        cls,
        rles: Sequence[dict[str, Any]],
        scores: np.ndarray | None = None,
        *,
        image_size: tuple[int, int] | None = None,
        **optional: Any,
    ) -> Instances:
        """Instances from COCO RLEs (compressed, counts str or bytes, or uncompressed, counts a list).

        ``image_size`` ``(H, W)`` is needed only when ``rles`` is empty; boxes are recomputed.
        """
        if not rles:
            if image_size is None:
                raise ValueError("from_rle of an empty list needs image_size=(H, W)")
            empty = cls.empty(*image_size)
            return cls.from_masks(empty.masks, scores, **optional)
        masks = rles_to_masks(rles)
        if image_size is not None and masks.shape[1:] != tuple(image_size):
            raise ValueError(f"RLE size {masks.shape[1:]} differs from image_size {tuple(image_size)}")
        return cls.from_masks(masks, scores, **optional)

    def to_label_image(self) -> np.ndarray:
        """``(H, W)`` int32 label image: 0 is background, instance i gets ``ids[i]`` (ids must be > 0)
        or ``i + 1`` without ids. Where masks overlap the highest-scoring instance wins (on equal
        scores, the later one)."""
        if self.ids is not None:
            if len(self) and (self.ids.min() <= 0 or self.ids.max() > np.iinfo(np.int32).max):
                raise ValueError("ids must be in 1..2**31-1 to draw a label image (0 is the background)")
            values = self.ids.astype(np.int32)
        else:
            values = np.arange(1, len(self) + 1, dtype=np.int32)
        out = np.zeros(self.image_size, dtype=np.int32)
        for i in np.argsort(self.scores, kind="stable"):
            out[self.masks[i]] = values[i]
        return out

    def crop_masks_to_boxes(self) -> list[np.ndarray]:
        """Each mask cropped to its box (rounded): ``masks[i][y1:y2, x1:x2]``, bool.

        This is FiftyOne's instance-mask layout (the mask covers exactly its bounding box). An empty
        mask gives a 1x1 crop at (0, 0).
        """
        h, w = self.image_size
        crops = []
        for mask, box in zip(self.masks, np.rint(self.boxes).astype(np.int64)):
            x1, y1 = np.clip(box[:2], 0, [w - 1, h - 1])
            x2, y2 = np.clip(box[2:], [x1 + 1, y1 + 1], [w, h])
            crops.append(mask[y1:y2, x1:x2].copy())
        return crops
