"""Training data: instance-mask sources (COCO, SA-1B, synthetic) and the model-ready torch dataset.

A *source* is a sequence of :class:`Item` (an image as the runtime sees it plus its instance masks).
:class:`PromptDataset` turns a source into model inputs exactly as inference does (resize the
longest side, normalise, zero-pad; :mod:`unisam.runtime.transforms`), rescales the masks to match
and keeps a seeded random subset of at most ``max_instances`` instances per image.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch.nn import functional as F

from ..data.synthetic import KINDS, Sample, SyntheticDataset
from ..images import load_image
from ..registry import PIXEL_MEAN, PIXEL_STD
from ..runtime.transforms import normalize_and_pad, preprocess_shape, resize_longest_side


@dataclass(frozen=True)
class Item:
    """One image and its instances: ``image (H, W, 3)`` uint8 RGB, ``masks (N, H, W)`` bool."""

    image: np.ndarray
    masks: np.ndarray


class Source(Protocol):
    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Item: ...


def _check_index(index: int, n: int) -> None:
    if not 0 <= index < n:
        raise IndexError(f"index {index} out of range for {n} images")


def _decode_rle(segmentation: dict, height: int, width: int) -> np.ndarray:
    """COCO RLE (compressed string/bytes counts, or an uncompressed count list) -> ``(H, W)`` bool."""
    from pycocotools import mask as mask_utils

    rle = segmentation
    if isinstance(rle.get("counts"), list):
        rle = mask_utils.frPyObjects(rle, height, width)
    return mask_utils.decode(rle).astype(bool)


class CocoSource:
    """COCO instances JSON (polygon or RLE segmentations) with its image folder.

    Only images with at least one annotation (crowd regions excluded unless ``include_crowd``) are
    listed, in the JSON's order.
    """

    def __init__(self, annotations: str | Path, images: str | Path, include_crowd: bool = False):
        from pycocotools.coco import COCO

        path = Path(annotations)
        if not path.is_file():
            raise ValueError(f"COCO annotation file not found: {path}")
        self.images_dir = Path(images)
        if not self.images_dir.is_dir():
            raise ValueError(f"image folder not found: {self.images_dir}")
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            self.coco = COCO(str(path))
        self.include_crowd = include_crowd
        self.image_ids = [i for i in self.coco.getImgIds() if self._annotations(i)]

    def _annotations(self, image_id: int) -> list[dict]:
        iscrowd = None if self.include_crowd else False
        ids = self.coco.getAnnIds(imgIds=[image_id], iscrowd=iscrowd)
        return [a for a in self.coco.loadAnns(ids) if a.get("segmentation")]

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> Item:
        _check_index(index, len(self))
        info = self.coco.loadImgs([self.image_ids[index]])[0]
        image = load_image(self.images_dir / info["file_name"])
        h, w = image.shape[:2]
        if (h, w) != (info["height"], info["width"]):
            raise ValueError(
                f"{info['file_name']}: image is {h}x{w} but the annotations say {info['height']}x{info['width']}"
            )
        masks = [self.coco.annToMask(a).astype(bool) for a in self._annotations(self.image_ids[index])]
        return Item(image, np.stack(masks))


class SA1BSource:
    """SA-1B layout: a folder of ``<name>.json`` files, one per image, each with ``"image"``
    (``file_name``, ``height``, ``width``) and ``"annotations"`` (``segmentation`` as COCO RLE); the
    image file is looked up next to its JSON."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise ValueError(f"SA-1B folder not found: {self.directory}")
        self.files = sorted(self.directory.glob("*.json"))
        if not self.files:
            raise ValueError(f"no per-image JSON files in {self.directory}")

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Item:
        _check_index(index, len(self))
        record = json.loads(self.files[index].read_text())
        try:
            info, annotations = record["image"], record["annotations"]
            h, w = int(info["height"]), int(info["width"])
            image = load_image(self.files[index].parent / info["file_name"])
        except KeyError as exc:
            raise ValueError(f"{self.files[index]}: not an SA-1B record (missing {exc})") from None
        if image.shape[:2] != (h, w):
            raise ValueError(f"{self.files[index]}: image is {image.shape[:2]} but the record says {(h, w)}")
        if not annotations:
            return Item(image, np.zeros((0, h, w), bool))
        return Item(image, np.stack([_decode_rle(a["segmentation"], h, w) for a in annotations]))


class SyntheticSource:
    """Synthetic images (:mod:`unisam.data.synthetic`) as a source.

    Item ``i`` has frame size ``sizes[i % len(sizes)]`` and depends only on ``(seed, i)``; kinds
    cycle with ``i`` as in :class:`~unisam.data.synthetic.SyntheticDataset`. Several frame sizes
    vary the object scale seen by a fixed-input model (microscopy objects have sizes in pixels).
    Images go through :func:`unisam.images.load_image` (uint16 / grey -> RGB uint8), as at inference.
    """

    def __init__(self, n: int, sizes: Sequence[tuple[int, int]] = ((256, 256),), seed: int = 0,
                 kinds: Sequence[str] = KINDS):
        if not sizes:
            raise ValueError("sizes must not be empty")
        self.n = n
        self.data = [SyntheticDataset(n, tuple(size), seed, kinds) for size in sizes]

    def __len__(self) -> int:
        return self.n

    def sample(self, index: int) -> Sample:
        """The raw synthetic sample behind item ``index`` (image as a camera would store it)."""
        return self.data[index % len(self.data)][index]

    def __getitem__(self, index: int) -> Item:
        sample = self.sample(index)
        return Item(load_image(sample.image), sample.masks)


class SimpleScenes:
    """A warm-up curriculum: 1-5 flat-coloured ellipses and rectangles (occluding each other) on a
    plain, slightly noisy background. Item ``i`` depends only on ``(seed, i)``.

    Few, large, clearly separated objects let a decoder trained from scratch learn to localise the
    prompted object quickly; the rich synthetic scenes follow once it does.
    """

    def __init__(self, n: int, size: tuple[int, int] = (256, 256), seed: int = 0):
        self.n, self.size, self.seed = n, tuple(size), seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> Item:
        _check_index(index, self.n)
        rng = np.random.default_rng([self.seed, index])
        h, w = self.size
        yy, xx = np.mgrid[:h, :w].astype(np.float32)
        image = np.empty((h, w, 3), np.float32)
        image[:] = rng.uniform(0, 255, 3)
        label = np.zeros((h, w), np.int32)
        count = int(rng.integers(1, 6))
        for k in range(1, count + 1):
            ry, rx = rng.uniform(0.06, 0.3, 2) * min(h, w)
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            a = rng.uniform(0, np.pi)
            u = ((xx - cx) * np.cos(a) + (yy - cy) * np.sin(a)) / rx
            v = (-(xx - cx) * np.sin(a) + (yy - cy) * np.cos(a)) / ry
            inside = (u * u + v * v < 1) if rng.random() < 0.6 else ((np.abs(u) < 1) & (np.abs(v) < 1))
            label[inside] = k
            image[inside] = rng.uniform(0, 255, 3)
        image += rng.normal(0, rng.uniform(0, 12), image.shape).astype(np.float32)
        ids = [k for k in range(1, count + 1) if (label == k).sum() >= 16]
        masks = np.stack([label == k for k in ids]) if ids else np.zeros((0, h, w), bool)
        return Item(np.clip(image, 0, 255).astype(np.uint8), masks)


def open_source(
    coco: str | Path | None = None,
    images: str | Path | None = None,
    sa1b: str | Path | None = None,
    synthetic: int | None = None,
    seed: int = 0,
    size: int = 256,
) -> Source:
    """Exactly one of: ``coco`` (JSON) + ``images`` (folder), ``sa1b`` (folder), ``synthetic`` (count,
    square images of side ``size`` generated from ``seed``)."""
    given = [coco is not None, sa1b is not None, synthetic is not None]
    if sum(given) != 1:
        raise ValueError(
            "give exactly one dataset: a COCO JSON with its image folder, an SA-1B folder, or a synthetic count"
        )
    if coco is not None:
        if images is None:
            raise ValueError("a COCO dataset needs its image folder as well")
        return CocoSource(coco, images)
    if sa1b is not None:
        return SA1BSource(sa1b)
    if synthetic <= 0:
        raise ValueError(f"the synthetic image count must be positive, got {synthetic}")
    return SyntheticSource(synthetic, ((size, size),), seed)


@dataclass
class Example:
    """One model-ready image with its chosen instances.

    image: ``(3, S, S)`` float32 normalised, zero-padded; masks: ``(K, S, S)`` bool in the same frame
    (zero in the padding); input_size: ``(h, w)`` of the resized image inside the square;
    original: the source item (original resolution), index: its index in the source; occupied:
    ``(S, S)`` bool, pixels of any annotated instance (chosen or not).
    """

    image: torch.Tensor
    masks: torch.Tensor
    input_size: tuple[int, int]
    original: Item
    index: int
    occupied: torch.Tensor


def rescale_masks(masks: np.ndarray, image_size: int) -> torch.Tensor:
    """``(N, H, W)`` bool -> ``(N, S, S)`` bool: resized like the image (longest side ``S``; bilinear
    with antialiasing, thresholded at 0.5) and zero-padded at the bottom and right."""
    n, h, w = masks.shape
    new_h, new_w = preprocess_shape(h, w, image_size)
    out = torch.zeros((n, image_size, image_size), dtype=torch.bool)
    m = torch.from_numpy(np.ascontiguousarray(masks))
    if (new_h, new_w) != (h, w) and n:
        resized = F.interpolate(m[:, None].float(), (new_h, new_w), mode="bilinear", align_corners=False,
                                antialias=True)
        m = resized[:, 0] >= 0.5
    out[:, :new_h, :new_w] = m
    return out


class PromptDataset(torch.utils.data.Dataset):
    """Model inputs from a source: :meth:`example` ``(index, epoch)`` keeps a random subset of at most
    ``max_instances`` instances, fixed by ``(seed, epoch, index)``; instances that vanish when
    rescaled (fewer than ``min_area`` pixels at the model's scale) are dropped first."""

    def __init__(
        self,
        source: Source,
        image_size: int,
        max_instances: int = 16,
        seed: int = 0,
        pixel_mean: Sequence[float] = PIXEL_MEAN,
        pixel_std: Sequence[float] = PIXEL_STD,
        min_area: int = 4,
    ):
        if max_instances < 1:
            raise ValueError(f"max_instances must be >= 1, got {max_instances}")
        self.source = source
        self.image_size = image_size
        self.max_instances = max_instances
        self.seed = seed
        self.pixel_mean, self.pixel_std = tuple(pixel_mean), tuple(pixel_std)
        self.min_area = min_area

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> Example:
        return self.example(index, 0)

    def example(self, index: int, epoch: int = 0) -> Example:
        item = self.source[index]
        resized = resize_longest_side(item.image, self.image_size)
        image = normalize_and_pad(resized, self.image_size, self.pixel_mean, self.pixel_std)[0]
        masks = rescale_masks(item.masks, self.image_size)
        keep = np.flatnonzero(masks.sum((1, 2)).numpy() >= self.min_area)
        rng = np.random.default_rng([self.seed, epoch, index])
        chosen = np.sort(rng.permutation(keep)[: self.max_instances])
        return Example(torch.from_numpy(image), masks[chosen], resized.shape[:2], item, index, masks.any(0))
