"""CLIP on ONNX Runtime + NumPy: text and image embeddings, and one embedding per mask.

A :class:`ClipModel` runs a directory written by :func:`unisam.models.clip.export_clip` (see there
for the graphs). Images are preprocessed as open_clip's eval transform does (PIL resize of the
shortest side to ``S``, or a squash to ``S x S``, bicubic; centre crop; /255; mean/std), so
``encode_image`` gives open_clip's ``encode_image``. Per-mask embeddings come two ways:

- :meth:`ClipModel.encode_masks` ("crop"): each mask's box, enlarged to a square with context, pixels
  outside the mask dimmed towards the mean colour, all crops batched through the image encoder;
- :meth:`ClipModel.dense` + :meth:`ClipModel.pool_masks` ("dense"): one pass over the whole image
  (resized with its aspect kept, padded), the tower's features averaged inside each mask (weighted by
  the mask's area per feature cell), then the tower's head.

Embeddings are float32 and L2-normalised. Text embeddings of classes (prompt templates averaged) are
cached by (model, templates, class) in memory and, with ``text_cache``, on disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from PIL import Image

from ..registry import CLIP_MERGES_FILE, read_clip_export
from .pooling import mask_cover, normalise
from .session import session_options
from .tokenizer import ClipTokenizer

BATCH = 4  # images per encoder call: bounds activation memory; measured faster than 16 (ConvNeXt-B, 2 cores)
_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


@dataclass(frozen=True)
class DenseFeatures:
    """One image's dense CLIP features: ``features`` ``(C, gh, gw)`` float32 over a padded input in which
    the image, ``original_size`` ``(H, W)``, fills the top-left ``resized`` ``(h, w)`` pixels; one cell
    is ``stride`` input pixels."""

    features: np.ndarray
    original_size: tuple[int, int]
    resized: tuple[int, int]
    stride: int


class ClipModel:
    """An exported open_clip model: ``encode_text``, ``encode_image``, and per-mask embeddings."""

    def __init__(
        self, directory: str | Path, *, name: str | None = None, threads: int | None = None,
        text_cache: str | Path | None = None, dense_size: int | None = None,
    ) -> None:
        self.directory = Path(directory)
        meta = read_clip_export(self.directory)
        self.meta = meta
        self.arch: str = meta["arch"]
        self.pretrained: str | None = meta.get("pretrained")
        self.name = name or (f"{self.arch}/{self.pretrained}" if self.pretrained else self.arch)
        self.model_id = f"{self.name}:{meta['dense_sha256'][:12]}"
        self.embed_dim: int = int(meta["embed_dim"])
        self.image_size: int = int(meta["image_size"])
        self.logit_scale: float = float(meta["logit_scale"])
        dense = meta["dense"]
        self.stride: int = int(dense["stride"])
        if dense["fixed_size"] and dense_size not in (None, dense["fixed_size"]):
            raise ValueError(f"{self.arch}'s dense input is fixed at {dense['fixed_size']} px, not {dense_size}")
        # the longest side of the dense input: twice the crop size by default, for small objects
        self.dense_size: int = int(dense["fixed_size"] or dense_size or 2 * self.image_size)
        self._mean = np.asarray(meta["mean"], np.float32) * 255
        self._std = np.asarray(meta["std"], np.float32) * 255
        self._resample = _RESAMPLE[meta["interpolation"]]
        self.tokenizer = ClipTokenizer(self.directory / CLIP_MERGES_FILE, int(meta["context_length"]))
        opts = session_options(threads, arena=False)

        def session(file: str) -> ort.InferenceSession:
            return ort.InferenceSession(str(self.directory / file), opts, providers=["CPUExecutionProvider"])

        self._text = session("text.onnx")
        self._dense = session("dense.onnx")
        self._head = session("head.onnx")
        self._image = session("image.onnx") if (self.directory / "image.onnx").is_file() else None
        self._classes: dict[tuple[tuple[str, ...], tuple[str, ...]], np.ndarray] = {}
        self.text_cache = None if text_cache is None else Path(text_cache)

    def __repr__(self) -> str:
        return f"ClipModel({self.model_id!r}, embed_dim={self.embed_dim}, image_size={self.image_size})"

    # -- text ---------------------------------------------------------------------------------------
    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        """``(N, D)`` float32 L2-normalised embeddings of ``texts``, each as given (no template)."""
        if isinstance(texts, str):
            texts = [texts]
        if not texts:
            return np.zeros((0, self.embed_dim), np.float32)
        tokens = self.tokenizer(texts)
        out = [self._text.run(None, {"tokens": tokens[i : i + 64]})[0] for i in range(0, len(tokens), 64)]
        return normalise(np.concatenate(out))

    def class_embeddings(self, classes: Sequence[Sequence[str]], templates: Sequence[str]) -> np.ndarray:
        """``(K, D)``: for each class (its synonyms), the normalised mean of the normalised embeddings of
        every template filled with every synonym. Cached per class, so a repeated vocabulary encodes no
        text, and the classes not yet seen are encoded in one batch."""
        templates = tuple(templates)
        keys = [(tuple(c), templates) for c in classes]
        missing = [k for k in dict.fromkeys(keys) if k not in self._classes and not self._load_class(k)]
        if missing:
            texts = [t.format(s) for synonyms, _ in missing for s in synonyms for t in templates]
            embeddings = self.encode_text(texts)
            start = 0
            for key in missing:
                n = len(key[0]) * len(templates)
                self._classes[key] = normalise(embeddings[start : start + n].mean(axis=0, keepdims=True))[0]
                start += n
                self._save_class(key)
        if not keys:
            return np.zeros((0, self.embed_dim), np.float32)
        return np.stack([self._classes[k] for k in keys])

    def _class_file(self, key: tuple[tuple[str, ...], tuple[str, ...]]) -> Path | None:
        if self.text_cache is None:
            return None
        digest = hashlib.sha256(json.dumps(key, ensure_ascii=False).encode()).hexdigest()[:32]
        return self.text_cache / self.model_id.replace("/", "_").replace(":", "-") / f"{digest}.npy"

    def _load_class(self, key) -> bool:
        path = self._class_file(key)
        if path is None or not path.is_file():
            return False
        try:
            vector = np.load(path)
        except (OSError, ValueError):
            return False
        if vector.shape != (self.embed_dim,):
            return False
        self._classes[key] = vector.astype(np.float32)
        return True

    def _save_class(self, key) -> None:
        path = self._class_file(key)
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                np.save(f, self._classes[key])
            os.replace(tmp, path)
        except OSError:  # a read-only cache only costs encoding the text again next time
            pass

    # -- images -------------------------------------------------------------------------------------
    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """``(3, S, S)`` float32: open_clip's eval transform of an ``(H, W, 3)`` uint8 RGB image."""
        pil = Image.fromarray(_rgb(image))
        s = self.image_size
        w, h = pil.size
        if self.meta["resize_mode"] == "squash":
            size = (s, s)
        else:  # torchvision's Resize(s): the shortest side to s, the other int(s * long / short)
            size = (s, int(s * h / w)) if w <= h else (int(s * w / h), s)
        pil = pil.resize(size, self._resample)
        left, top = int(round((size[0] - s) / 2.0)), int(round((size[1] - s) / 2.0))
        crop = np.asarray(pil.crop((left, top, left + s, top + s)), np.float32)
        return ((crop - self._mean) / self._std).transpose(2, 0, 1)

    def encode_image(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """``(N, D)`` float32 L2-normalised embeddings of RGB uint8 images (any sizes)."""
        if isinstance(images, np.ndarray) and images.ndim == 3:
            images = [images]
        out = []
        for i in range(0, len(images), BATCH):
            batch = np.stack([self.preprocess(im) for im in images[i : i + BATCH]])
            if self._image is not None:
                out.append(self._image.run(None, {"image": batch})[0])
            else:  # a timm tower: its global pool is the mean of the dense features, then its head
                features = self._dense.run(None, {"image": batch})[0]
                out.append(self._head.run(None, {"pooled": features.mean(axis=(2, 3))})[0])
        if not out:
            return np.zeros((0, self.embed_dim), np.float32)
        return normalise(np.concatenate(out))

    def mask_crops(self, image: np.ndarray, masks: np.ndarray, *, context: float = 1.5, dim: float = 0.5
                   ) -> list[np.ndarray]:
        """One square ``(s, s, 3)`` uint8 crop per ``(N, H, W)`` mask: its box's longer side times
        ``context``, centred on the box, pixels outside the mask moved ``dim`` of the way to the mean
        colour, and the mean colour beyond the image border. An empty mask gives a crop of the image."""
        image = _rgb(image)
        h, w = image.shape[:2]
        fill = np.clip(np.rint(self._mean), 0, 255).astype(np.uint8)
        crops = []
        for mask in masks:
            ys, xs = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
            if len(ys) == 0:
                ys, xs, mask = np.array([0, h - 1]), np.array([0, w - 1]), np.ones((h, w), bool)
            y1, y2, x1, x2 = ys[0], ys[-1] + 1, xs[0], xs[-1] + 1
            side = max(int(np.ceil(max(y2 - y1, x2 - x1) * context)), 8)
            top, left = (y1 + y2 - side) // 2, (x1 + x2 - side) // 2
            crop = np.broadcast_to(fill, (side, side, 3)).copy()
            sy, sx = slice(max(top, 0), min(top + side, h)), slice(max(left, 0), min(left + side, w))
            region = image[sy, sx].astype(np.float32)
            outside = ~mask[sy, sx]
            region[outside] += dim * (fill.astype(np.float32) - region[outside])
            crop[sy.start - top : sy.stop - top, sx.start - left : sx.stop - left] = np.rint(region).astype(np.uint8)
            crops.append(crop)
        return crops

    def encode_masks(self, image: np.ndarray, masks: np.ndarray, **crop_options: Any) -> np.ndarray:
        """``(N, D)`` "crop" embeddings: :meth:`encode_image` of :meth:`mask_crops`."""
        return self.encode_image(self.mask_crops(image, masks, **crop_options))

    def dense(self, image: np.ndarray) -> DenseFeatures:
        """One pass of the image tower's dense graph over the whole image: the longest side resized to
        ``dense_size`` (aspect kept), padded with the mean colour to a multiple of the stride (ViT: to
        its fixed square input)."""
        image = _rgb(image)
        h, w = image.shape[:2]
        scale = self.dense_size / max(h, w)
        rh, rw = max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5))
        resized = np.asarray(Image.fromarray(image).resize((rw, rh), self._resample), np.float32)
        if self.meta["dense"]["fixed_size"]:
            ph = pw = self.dense_size
        else:
            ph, pw = (-(-n // self.stride) * self.stride for n in (rh, rw))
        canvas = np.zeros((1, 3, ph, pw), np.float32)  # zero = the mean colour after normalisation
        canvas[0, :, :rh, :rw] = ((resized - self._mean) / self._std).transpose(2, 0, 1)
        features = self._dense.run(None, {"image": canvas})[0][0]
        return DenseFeatures(features, (h, w), (rh, rw), self.stride)

    def pool_masks(self, dense: DenseFeatures, masks: np.ndarray) -> np.ndarray:
        """``(N, D)`` "dense" embeddings: the features averaged inside each ``(N, H, W)`` mask (each cell
        weighted by the mask's area in it), through the tower's head. An empty mask gives zeros."""
        masks = np.asarray(masks, bool)
        if masks.ndim != 3 or masks.shape[1:] != dense.original_size:
            raise ValueError(f"masks must be (N, H, W) with (H, W) = {dense.original_size}, got {masks.shape}")
        c, gh, gw = dense.features.shape
        if not len(masks):
            return np.zeros((0, self.embed_dim), np.float32)
        cover, _ = mask_cover(masks, dense.resized, (dense.stride, dense.stride), (gh, gw))
        area = cover.sum(axis=1, keepdims=True)
        pooled = cover @ dense.features.reshape(c, gh * gw).T / np.maximum(area, 1e-12)
        out = [self._head.run(None, {"pooled": pooled[i : i + 256].astype(np.float32)})[0]
               for i in range(0, len(pooled), 256)]
        return np.where(area > 0, normalise(np.concatenate(out)), 0).astype(np.float32)


def _rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"expected an (H, W, 3) uint8 RGB image, got {image.dtype} {image.shape}; "
            "unisam.load_image converts any image to that"
        )
    return np.ascontiguousarray(image)
