"""The public functions: one per job, each taking ``model=`` (resolved by :mod:`unisam.hub`) and
returning :class:`Instances`.

- :func:`segment`: one instance per prompt (points, box, mask logits);
- :func:`segment_everything`: automatic instances for prelabeling;
- :func:`propagate`: one object through the slices of a z-stack or the frames of a time-lapse;
- :func:`embed`: run the image encoder ahead of time (it is cached, so later calls only decode).

Large images: ``tiles=True`` (or a :class:`Tiling`) works in overlapping tiles near the model's input
size instead of one downscaled pass.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from .hub import ModelArg, get_model, model_name
from .images import load_image
from .instances import Instances
from .prompts import _UNSET, Prompt, collect_prompts, renamed_argument
from .registry import get_card, list_models
from .runtime.cache import Embedding
from .runtime.everything import EverythingParams
from .runtime.everything import segment_everything as _segment_everything
from .runtime.propagate import StopRules, check_start, propagate_object
from .runtime.track import merge
from .runtime.tiling import Tiling, embed_tiles, segment_everything_tiled, segment_prompts_tiled

Tiles = bool | Tiling | None


def segment(
    image,
    prompts: Prompt | Sequence[Prompt] | None = None,
    *,
    points=None,
    point_labels=None,
    box=None,
    model: ModelArg = None,
    multimask: bool | None = None,
    tiles: Tiles = None,
    labels: Any = _UNSET,
) -> Instances:
    """One instance per prompt, at the image's original size.

    Give ``prompts`` (one or many :class:`Prompt`), or the fields of a single prompt as keywords:
    ``points`` (N, 2) xy pixels, ``point_labels`` (N,) 1 = foreground / 0 = background click, ``box``
    pixel-edge x1, y1, x2, y2. The image is encoded once for all prompts. ``multimask`` (default: only
    for a lone click, SAM's advice for ambiguous prompts) picks the best of three candidate masks by
    predicted IoU. ``tiles``: decode each prompt in the tile of a large image that holds it.
    ``labels=`` is the deprecated name of ``point_labels``.
    """
    point_labels = renamed_argument("labels", labels, "point_labels", point_labels)
    predictor = get_model(model)
    tiling = _tiling(tiles)
    array = load_image(image)
    items = collect_prompts(prompts, points, point_labels, box, image_size=array.shape[:2])
    if tiling is not None:
        return segment_prompts_tiled(array, predictor, items, tiling, multimask)
    return predictor.segment_prompts(predictor.embed(array), items, multimask)


def everything_defaults(model: ModelArg = None) -> EverythingParams:
    """The options :func:`segment_everything` uses for ``model`` when none are given: SAM's automatic
    mask generator's, with the model card's own thresholds where it has them."""
    name = model_name(model)
    card = get_card(name) if name in list_models() else None
    return EverythingParams(**(card.everything if card else {}))


def segment_everything(
    image,
    *,
    model: ModelArg = None,
    params: EverythingParams | None = None,
    tiles: Tiles = None,
    progress: bool = False,
    **changes: Any,
) -> Instances:
    """Automatic instance masks for the whole image (SAM's automatic mask generator recipe), sorted by
    predicted IoU (``scores``).

    ``params`` (default :func:`everything_defaults` of the model) with ``changes`` applied by name
    (``points_per_side=16``, ...; see :class:`EverythingParams`). ``tiles``: cut a large image into
    overlapping tiles (:class:`Tiling`). ``progress``: show a progress bar.
    """
    predictor = get_model(model)
    options = (params or everything_defaults(predictor)).replace(**changes)
    tiling = _tiling(tiles)
    array = load_image(image)
    if tiling is not None:
        return segment_everything_tiled(array, predictor, options, tiling, progress)
    return _segment_everything(array, predictor, options, progress=progress)


def embed(image, *, model: ModelArg = None, tiles: Tiles = None) -> list[Embedding]:
    """Run the image encoder on ``image`` now (one embedding, or one per tile with ``tiles``), so that
    later calls on the same image and model only decode. Embeddings are cached by image content."""
    predictor = get_model(model)
    tiling = _tiling(tiles)
    array = load_image(image)
    return [predictor.embed(array)] if tiling is None else embed_tiles(array, predictor, tiling)


def propagate(
    frames: Sequence,
    start: int,
    mask: np.ndarray,
    *,
    model: ModelArg = None,
    object_id: int = 1,
    stream: bool = False,
    **rules: Any,
) -> list[Instances] | Iterator[tuple[int, Instances]]:
    """Follow the object of ``mask`` (H, W) bool on slice ``start`` through ``frames`` in both directions
    (the one-object case of :func:`unisam.track`).

    frames: a (Z, H, W) or (Z, H, W, C) array, or a sequence of Z images of one size (read lazily, one
    at a time). Returns one :class:`Instances` per frame: the object with ``ids == [object_id]`` where it
    was found (score: predicted IoU, 1.0 on the start slice), empty elsewhere. ``stream=True`` instead
    yields ``(frame index, Instances)`` as frames are reached (start, upwards, then downwards), for
    progress and early stopping. ``rules``: :class:`~unisam.runtime.track.StopRules` by name
    (score_threshold 0.75, min_overlap 0.3, min_area 1, n_points 1, use_mask_input False, patience 0,
    max_area_change inf, motion 0).
    """
    predictor = get_model(model)
    stop = StopRules.from_options(**rules)
    mask = check_start(len(frames), start, mask)
    steps = propagate_object(frames, start, mask, predictor, stop, object_id)
    return steps if stream else merge(steps, len(frames), mask.shape)


def _tiling(tiles: Tiles) -> Tiling | None:
    if tiles is None or tiles is False:
        return None
    if tiles is True:
        return Tiling()
    if isinstance(tiles, Tiling):
        return tiles
    raise ValueError(f"tiles must be True, False, None or a unisam.Tiling; got {tiles!r}")
