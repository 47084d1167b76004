"""The ONNX Runtime predictor: embed an image once, then decode prompts against it quickly."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..images import image_digest, load_image
from ..instances import Instances
from ..prompts import BOX_BOTTOM_RIGHT, BOX_TOP_LEFT, PAD, Prompt, make_prompt
from ..registry import INSTANCE_HEAD_FILE, ArchSpec
from .cache import DiskEmbeddingCache, Embedding, LRUCache
from .session import Upscaler, create_session
from .transforms import normalize_and_pad, resize_longest_side, scale_boxes, scale_coords

UNISAM_DECODER_INPUTS = {"image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input"}
EDGESAM_DECODER_INPUTS = {"image_embeddings", "point_coords", "point_labels"}


@dataclass
class Prediction:
    """Result of one prompt.

    masks: (K, H, W) bool at the original image size; scores: (K,) predicted IoU;
    low_res_logits: (K, s, s) float32 logits, s = image_size / 4 (feed one back as ``mask_input``).
    K = 3 with multimask output, else 1.
    """

    masks: np.ndarray
    scores: np.ndarray
    low_res_logits: np.ndarray

    @property
    def best(self) -> int:
        """Index of the mask with the highest predicted IoU."""
        return int(np.argmax(self.scores))


@dataclass
class MaskWindow:
    """A mask at the original image size stored as its window: ``crop`` (h, w) bool at rows
    ``top : top + h``, columns ``left : left + w``; no pixel outside it is set."""

    top: int
    left: int
    crop: np.ndarray

    @property
    def area(self) -> int:
        """Pixels set."""
        return int(np.count_nonzero(self.crop))

    def paste(self, size: tuple[int, int]) -> np.ndarray:
        """The (H, W) bool mask."""
        out = np.zeros(size, bool)
        out[self.top : self.top + self.crop.shape[0], self.left : self.left + self.crop.shape[1]] = self.crop
        return out

    def overlap(self, mask: np.ndarray) -> int:
        """Pixels set in both this and the (H, W) bool ``mask``."""
        h, w = self.crop.shape
        return int(np.count_nonzero(mask[self.top : self.top + h, self.left : self.left + w] & self.crop))


def _bilinear(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) float64 weights of 1-D bilinear resizing, PyTorch's ``align_corners=False``
    (ONNX ``half_pixel``; source coordinates clamped to the edges)."""
    src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0)
    lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = src - lo
    out = np.zeros((n_out, n_in))
    np.add.at(out, (np.arange(n_out), lo), 1 - frac)
    np.add.at(out, (np.arange(n_out), hi), frac)
    return out


class _WindowUpscaler:
    """The upscale graph (:func:`~unisam.runtime.session.build_upscale_graph`: bilinear x4, crop the
    padding, bilinear to the original size) as one separable linear map per axis, ``rows @ L @
    cols.T``, evaluated only on the original pixels whose support holds a positive logit (bilinear
    weights are convex: a pixel whose low-res neighbours are all negative is negative)."""

    def __init__(self, side: int, input_size: tuple[int, int], original_size: tuple[int, int]):
        self.original_size = original_size
        self.rows, self.cols = (
            (_bilinear(n, size) @ _bilinear(side, 4 * side)[:n]).astype(np.float32)
            for n, size in zip(input_size, original_size)
        )  # (H, s) and (W, s)
        # per low-res index: the first and last original pixel it weighs on; per original pixel: the
        # first and last low-res index it reads
        self.reach = [_span(m.T) for m in (self.rows, self.cols)]
        self.reads = [_span(m) for m in (self.rows, self.cols)]

    def __call__(self, logits: np.ndarray) -> MaskWindow:
        positive = logits > 0
        ys, xs = np.flatnonzero(positive.any(axis=1)), np.flatnonzero(positive.any(axis=0))
        if not len(ys):
            return MaskWindow(0, 0, np.zeros((0, 0), bool))
        (y0, y1), (x0, x1) = ((reach[0][i[0]], reach[1][i[-1]]) for reach, i in zip(self.reach, (ys, xs)))
        (a, b), (c, d) = ((reads[0][lo], reads[1][hi]) for reads, lo, hi in zip(self.reads, (y0, x0), (y1, x1)))
        crop = self.rows[y0 : y1 + 1, a : b + 1] @ logits[a : b + 1, c : d + 1] @ self.cols[x0 : x1 + 1, c : d + 1].T
        return MaskWindow(int(y0), int(x0), crop > 0)


def _span(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``weights`` (n, m), the first and last column with a non-zero weight."""
    nonzero = weights != 0
    return nonzero.argmax(axis=1), weights.shape[1] - 1 - nonzero[:, ::-1].argmax(axis=1)


class Predictor:
    """SAM-family model on ONNX Runtime: ``embed(image)`` once, ``predict(embedding, ...)`` per click.

    The encoder graph maps a normalised, zero-padded (1, 3, S, S) image to (1, C, S/16, S/16)
    features. Two decoder flavours are accepted, told apart by their input names: unisam's export
    (points + box corners + optional mask input -> all 4 mask outputs) and the official EdgeSAM
    ONNX decoder (points + box corners -> masks, no mask input).
    """

    def __init__(
        self,
        encoder: str | Path,
        decoder: str | Path,
        spec: ArchSpec,
        model_id: str,
        *,
        name: str | None = None,
        threads: int | None = None,
        cache: LRUCache | None = None,
        disk_cache: DiskEmbeddingCache | None = None,
        instance_head: str | Path | None = None,
    ):
        self.spec = spec
        self.model_id = model_id
        self.name = name or model_id
        self.cache = cache if cache is not None else LRUCache()
        self.disk_cache = disk_cache
        self._encoder = create_session(encoder, threads, arena=False)
        self._decoder = create_session(decoder, threads)
        self._upscale = Upscaler(threads)
        self._instances = create_session(instance_head, threads) if instance_head is not None else None
        self._windows: dict[tuple, _WindowUpscaler] = {}
        self._encode_lock = threading.Lock()
        self.encoder_runs = 0  # how often the image encoder actually ran (cache misses)
        inputs = {i.name for i in self._decoder.get_inputs()}
        if inputs == UNISAM_DECODER_INPUTS:
            self.accepts_mask_input = True
        elif inputs == EDGESAM_DECODER_INPUTS:
            self.accepts_mask_input = False
        else:
            raise ValueError(f"{decoder}: not a SAM decoder this runtime knows (inputs {sorted(inputs)})")
        self._decoder_outputs = [o.name for o in self._decoder.get_outputs()]

    # ------------------------------------------------------------------ image side
    def embed(self, image) -> Embedding:
        """Image features for ``image`` (path, PIL image or array; see :func:`unisam.images.load_image`).

        Looked up in the memory cache, then the disk cache, by image content and model; the encoder
        runs only on a miss, and at most once at a time (concurrent callers wait for the result).
        """
        array = load_image(image)
        digest = image_digest(array)
        cached = self._cached(digest)
        if cached is not None:
            return cached
        with self._encode_lock:
            cached = self._cached(digest)
            if cached is not None:
                return cached
            size = self.spec.image_size
            resized = resize_longest_side(array, size)
            tensor = normalize_and_pad(resized, size, self.spec.pixel_mean, self.spec.pixel_std)
            features = self._encoder.run(None, {"image": tensor})[0]
            self.encoder_runs += 1
            embedding = Embedding(
                features=features,
                original_size=(array.shape[0], array.shape[1]),
                input_size=(resized.shape[0], resized.shape[1]),
                model_id=self.model_id,
                image_digest=digest,
                extras={},
            )
            self.cache.put((self.model_id, digest), embedding)
            if self.disk_cache is not None:
                self.disk_cache.put(embedding)
            return embedding

    def _cached(self, digest: str) -> Embedding | None:
        hit = self.cache.get((self.model_id, digest))
        if hit is None and self.disk_cache is not None:
            hit = self.disk_cache.get(self.model_id, digest)
            if hit is not None:
                self.cache.put((self.model_id, digest), hit)
        return hit

    # ------------------------------------------------------------------ prompt side
    def predict(
        self,
        embedding: Embedding,
        points=None,
        point_labels=None,
        box=None,
        mask_input=None,
        multimask: bool = True,
    ) -> Prediction:
        """Masks for one prompt. Coordinates are original-image pixels (x, y); ``point_labels`` 1 =
        foreground, 0 = background; ``box`` = x1, y1, x2, y2; ``mask_input`` = low-res logits of an
        earlier prediction. Returns 3 masks with ``multimask`` (best = highest score), else 1."""
        prompt = make_prompt(points, point_labels, box, mask_input, image_size=embedding.original_size)
        return self.predict_prompts(embedding, [prompt], multimask=multimask)[0]

    def predict_prompts(
        self,
        embedding: Embedding,
        prompts: Sequence[Prompt],
        multimask: bool | Sequence[bool] = True,
        best_only: bool = False,
    ) -> list[Prediction]:
        """Predictions for many validated prompts on one image, in order (batched as
        :meth:`decode_prompts`). ``best_only`` keeps only the highest-scoring candidate of each
        prompt (K = 1), so only that mask is upscaled to full resolution.
        """
        results = []
        for logits, scores in self.decode_prompts(embedding, prompts, multimask):
            if best_only:
                best = int(np.argmax(scores))
                logits, scores = logits[best : best + 1], scores[best : best + 1]
            results.append(Prediction(masks=self.upscale(embedding, logits) > 0, scores=scores, low_res_logits=logits))
        return results

    def decode_prompts(
        self, embedding: Embedding, prompts: Sequence[Prompt], multimask: bool | Sequence[bool] = True
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per validated prompt, in order: low-res logits (K, s, s) and predicted IoU (K,), nothing
        upscaled (for callers that choose among the candidates first; :meth:`upscale` the chosen).

        Prompts with the same number of points, box presence and mask presence go to the decoder
        in one batched call (no padding tokens are added, so results equal one-by-one calls).
        """
        flags = [multimask] * len(prompts) if isinstance(multimask, bool) else list(multimask)
        groups: dict[tuple, list[int]] = {}
        for i, p in enumerate(prompts):
            groups.setdefault((p.num_points, p.box is not None, p.mask is not None), []).append(i)
        results: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(prompts)
        for (_, has_box, has_mask), idx in groups.items():
            coords, labels = self._encode_points([prompts[i] for i in idx], embedding, has_box)
            masks_in = np.stack([prompts[i].mask for i in idx]) if has_mask else None
            low_res, iou = self._run_decoder(embedding, coords, labels, masks_in)
            for row, i in enumerate(idx):
                sel = slice(1, 4) if flags[i] and low_res.shape[1] == 4 else slice(0, 1)
                results[i] = (low_res[row, sel], iou[row, sel])
        return results  # type: ignore[return-value]

    def segment_prompts(
        self, embedding: Embedding, prompts: Sequence[Prompt], multimask: bool | None = None
    ) -> Instances:
        """One instance per validated prompt: its best mask by predicted IoU, at the original size.

        ``multimask`` (default: only for a lone click, SAM's advice for ambiguous prompts) picks the
        best of three candidate masks; prompts' ``label`` become ``Instances.labels``.
        """
        flags = [p.is_single_point if multimask is None else multimask for p in prompts]
        predictions = self.predict_prompts(embedding, prompts, flags, best_only=True)
        names = [p.label for p in prompts]
        return Instances.from_masks(
            np.stack([p.masks[0] for p in predictions]),
            np.array([p.scores[0] for p in predictions], np.float32),
            labels=names if any(n is not None for n in names) else None,
        )

    def decode(
        self, embedding: Embedding, point_coords: np.ndarray, point_labels: np.ndarray, multimask: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """Raw batched decoding for point prompts (used by segment-everything).

        point_coords: (B, N, 2) original-image pixels; point_labels: (B, N).
        Returns low-res logits (B, K, s, s) and predicted IoU (B, K), K = 3 if multimask else 1.
        """
        coords = scale_coords(np.asarray(point_coords, np.float32), embedding.original_size, self.spec.image_size)
        labels = np.asarray(point_labels, np.float32)
        pad_xy = np.zeros((coords.shape[0], 1, 2), np.float32)
        pad_label = np.full((labels.shape[0], 1), PAD, np.float32)
        low_res, iou = self._run_decoder(
            embedding, np.concatenate([coords, pad_xy], 1), np.concatenate([labels, pad_label], 1), None
        )
        sel = slice(1, 4) if multimask and low_res.shape[1] == 4 else slice(0, 1)
        return low_res[:, sel], iou[:, sel]

    @property
    def has_instance_head(self) -> bool:
        """Whether :meth:`instance_maps` works (the export has an instance head, ``instances.onnx``)."""
        return self._instances is not None

    def instance_maps(self, embedding: Embedding) -> np.ndarray:
        """``(2, H, W)`` float32 in [0, 1] at the original image size, from the instance head: the
        foreground probability and the predicted distance to the object's edge (1 at its innermost
        pixel, relative to the object's own largest distance)."""
        if self._instances is None:
            raise ValueError(
                f"model {self.name} has no instance head ({INSTANCE_HEAD_FILE}), which watershed_seed_thresh needs; "
                "`unisam instance-head --model DIR` trains one for an export folder"
            )
        (maps,) = self._instances.run(None, {"image_embeddings": embedding.features})
        logits = self.upscale(embedding, maps[0])
        return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)

    def upscale(self, embedding: Embedding, low_res_logits: np.ndarray) -> np.ndarray:
        """(M, s, s) low-res logits -> (M, H, W) float32 logits at the original image size."""
        return self._upscale(low_res_logits, embedding.input_size, embedding.original_size)

    def upscale_windows(self, embedding: Embedding, low_res_logits: np.ndarray) -> list[MaskWindow]:
        """(M, s, s) low-res logits -> M masks at the original size, each computed only inside the
        window that can hold its pixels (:class:`MaskWindow`): the cost is the object's size, not
        the image's. The same masks as ``upscale(...) > 0`` up to float rounding of logits near 0."""
        side = low_res_logits.shape[-1]
        key = (embedding.input_size, embedding.original_size, side)
        if key not in self._windows:
            self._windows[key] = _WindowUpscaler(side, embedding.input_size, embedding.original_size)
        return [self._windows[key](logits) for logits in low_res_logits]

    # ------------------------------------------------------------------ internals
    def _encode_points(
        self, prompts: Sequence[Prompt], embedding: Embedding, has_box: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """Decoder point tokens (B, N', 2) in the model frame and labels (B, N'), SAM's layout:
        clicks, then the box corners (labels 2, 3), or one padding point when there is no box."""
        size, original = self.spec.image_size, embedding.original_size
        coords, labels = [], []
        for p in prompts:
            c = [] if p.points is None else [scale_coords(p.points.astype(np.float32), original, size)]
            lab = [] if p.point_labels is None else [p.point_labels.astype(np.float32)]
            if has_box:
                c.append(scale_boxes(p.box.astype(np.float32)[None], original, size).reshape(2, 2))
                lab.append(np.array([BOX_TOP_LEFT, BOX_BOTTOM_RIGHT], np.float32))
            else:
                c.append(np.zeros((1, 2), np.float32))
                lab.append(np.array([PAD], np.float32))
            coords.append(np.concatenate(c))
            labels.append(np.concatenate(lab))
        return np.stack(coords).astype(np.float32), np.stack(labels).astype(np.float32)

    def _run_decoder(
        self, embedding: Embedding, coords: np.ndarray, labels: np.ndarray, masks_in: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Run the decoder graph; returns low-res logits (B, K, s, s) and IoU (B, K)."""
        if embedding.model_id != self.model_id:
            raise ValueError(
                f"this embedding was made by model {embedding.model_id!r}, not {self.model_id!r}; "
                "embed the image with this model"
            )
        feeds = {"image_embeddings": embedding.features, "point_coords": coords, "point_labels": labels}
        if self.accepts_mask_input:
            s = self.spec.low_res_size
            b = coords.shape[0]
            if masks_in is None:
                feeds["mask_input"] = np.zeros((b, 1, s, s), np.float32)
                feeds["has_mask_input"] = np.zeros((b,), np.float32)
            else:
                if masks_in.shape[-2:] != (s, s):
                    raise ValueError(f"mask input must be ({s}, {s}) low-res logits; got {masks_in.shape[-2:]}")
                feeds["mask_input"] = masks_in.reshape(b, 1, s, s).astype(np.float32)
                feeds["has_mask_input"] = np.ones((b,), np.float32)
        elif masks_in is not None:
            raise ValueError(
                "this decoder (the official EdgeSAM ONNX export) takes no mask input; "
                "refine with more points instead, or use a unisam-exported model"
            )
        out = dict(zip(self._decoder_outputs, self._decoder.run(None, feeds)))
        if self.accepts_mask_input:
            return out["low_res_masks"], out["iou_predictions"]
        return out["masks"], out["scores"]

