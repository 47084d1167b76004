"""napari layer data <-> unisam inputs, without Qt or napari: testable on their own.

Coordinates: napari puts pixel centres at integer data coordinates (pixel ``(r, c)`` spans
``r - 0.5 .. r + 0.5``); unisam's continuous pixel coordinates put pixel edges at integers (pixel
``(x, y) = (c, r)`` spans ``c .. c + 1``). So a napari point ``(row, col)`` is unisam ``(col + 0.5,
row + 0.5)``, and rectangle corners map the same way. Coordinates here are the image layer's *data*
coordinates; the widget maps clicks there through the layers' transforms, so ``scale`` is respected.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from unisam import Instances, Prompt, Tracks, load_image

MAX_CHANNELS = 3  # grey layers composed into the R, G and B planes the model sees


@dataclass(frozen=True)
class ImageSource:
    """The image to segment: one image layer's data, or 2-3 grey layers of one shape (a multichannel
    image that napari split into layers) composed into RGB, each channel stretched on its own.

    A 2D source has ``(H, W)`` (grey) or ``(H, W, 3|4)`` (RGB) data; a stack adds a leading slice axis
    (z or time): ``(Z, H, W)`` / ``(Z, H, W, 3|4)``.
    """

    planes: tuple[np.ndarray, ...]
    rgb: bool

    @property
    def is_stack(self) -> bool:
        return self.planes[0].ndim - self.rgb == 3

    @property
    def n_slices(self) -> int:
        return self.planes[0].shape[0] if self.is_stack else 1

    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W)`` of one slice."""
        spatial = self.planes[0].shape[: self.planes[0].ndim - self.rgb]
        return int(spatial[-2]), int(spatial[-1])

    @property
    def labels_shape(self) -> tuple[int, ...]:
        """Shape of a Labels layer aligned with the image: ``(Z, H, W)`` or ``(H, W)``."""
        return (self.n_slices, *self.shape) if self.is_stack else self.shape

    def image(self, z: int | None = None) -> np.ndarray:
        """Slice ``z`` (ignored for 2D) as an array :func:`unisam.images.load_image` accepts:
        ``(H, W)`` grey, ``(H, W, 3|4)`` RGB(A), or the ``(H, W, 3)`` uint8 channel composite."""
        if self.is_stack:
            if z is None or not 0 <= z < self.n_slices:
                raise ValueError(f"slice {z} is outside the stack of {self.n_slices} slices")
            planes = [np.asarray(p[z]) for p in self.planes]
        else:
            planes = [np.asarray(p) for p in self.planes]
        if len(planes) == 1:
            return planes[0]
        composite = np.zeros((*self.shape, 3), np.uint8)
        for i, plane in enumerate(planes):
            composite[..., i] = load_image(plane)[..., 0]
        return composite

    def frames(self) -> Sequence[np.ndarray]:
        """The stack as a lazy sequence of slices (for :func:`unisam.propagate`)."""
        return _Frames(self)


class _Frames(Sequence):
    def __init__(self, source: ImageSource) -> None:
        self._source = source

    def __len__(self) -> int:
        return self._source.n_slices

    def __getitem__(self, z):
        if isinstance(z, slice):
            return [self._source.image(i) for i in range(len(self))[z]]
        return self._source.image(range(len(self))[z])


def image_source(datas: Sequence[np.ndarray], rgb: Sequence[bool]) -> ImageSource:
    """Check napari image layers' ``data`` and ``rgb`` flags and combine them; ``ValueError`` with a
    message for the user when they cannot be segmented."""
    if not datas:
        raise ValueError("no image layer: open an image (or File > Open Sample > unisam) and select it")
    if len(datas) > MAX_CHANNELS:
        raise ValueError(f"select at most {MAX_CHANNELS} image layers (channels); got {len(datas)}")
    if len(datas) > 1 and any(rgb):
        raise ValueError("an RGB layer cannot be combined with other layers: select it alone")
    if len({tuple(d.shape) for d in datas}) > 1:
        shapes = ", ".join(str(tuple(d.shape)) for d in datas)
        raise ValueError(f"layers combined as channels must have one shape; got {shapes}")
    data, is_rgb = datas[0], bool(rgb[0])
    spatial = data.ndim - is_rgb
    if is_rgb and data.shape[-1] not in (3, 4):
        raise ValueError(f"an RGB layer needs 3 or 4 colour channels in its last axis; got shape {data.shape}")
    if spatial not in (2, 3):
        raise ValueError(
            f"image layer of shape {data.shape} has {spatial} spatial axes; unisam segments 2D images "
            "and 3D stacks (z or time): slice the data (e.g. one time point) first"
        )
    if spatial == 3 and not is_rgb and data.shape[-1] <= 4 < min(data.shape[:2]):
        raise ValueError(
            f"image layer of shape {data.shape} looks like a colour image (H, W, {data.shape[-1]}) shown as "
            f"{data.shape[0]} slices; open it with rgb=True, or split the channels (channel_axis=-1)"
        )
    if not (np.issubdtype(data.dtype, np.number) or data.dtype == bool):
        raise ValueError(f"image layer has data type {data.dtype}; expected integer, float or bool pixels")
    return ImageSource(tuple(datas), is_rgb)


def pixels_to_xy(coords: np.ndarray) -> np.ndarray:
    """``(N, 2)`` napari ``(row, col)`` data coordinates -> ``(N, 2)`` unisam ``(x, y)`` pixels."""
    coords = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    return coords[:, ::-1] + 0.5


def on_slice(coords: np.ndarray, z: int | None) -> np.ndarray:
    """``(N,)`` bool: which of the ``(N, D)`` data coordinates (first axis: slice) lie on slice ``z``
    (all of them when ``z`` is None)."""
    coords = np.asarray(coords, dtype=np.float64)
    if z is None:
        return np.ones(len(coords), dtype=bool)
    return np.round(coords[:, 0]).astype(np.int64) == z


def prompt_on_slice(
    points: np.ndarray,
    positive: np.ndarray,
    boxes: Sequence[np.ndarray],
    z: int | None,
    image_shape: tuple[int, int],
) -> Prompt | None:
    """The prompt for the current object on slice ``z`` (None for a 2D image), or None without prompts.

    points: ``(N, D)`` data coordinates (last two: row, col) with ``positive`` ``(N,)`` bool;
    boxes: shapes as ``(V, D)`` vertices (rectangles: 4 corners); the bounding box of the last one on the
    slice with a non-zero area is used (SAM takes one box per object), cut to the image where it was
    dragged past the border. Raises ``ValueError`` for a point outside the ``(H, W)`` image.
    """
    points = np.asarray(points, dtype=np.float64)
    here = on_slice(points, z)
    rows_cols = points[here][:, -2:]
    height, width = image_shape
    outside = (rows_cols < -0.5) | (rows_cols > np.array([height, width]) - 0.5)
    if outside.any():
        r, c = rows_cols[outside.any(axis=1)][0]
        raise ValueError(f"point at row {r:.1f}, column {c:.1f} is outside the image ({height} x {width} pixels)")
    box = None
    for corners in reversed(list(boxes)):
        corners = np.asarray(corners, dtype=np.float64)
        xy = pixels_to_xy(corners[:, -2:])
        if on_slice(corners, z).all() and (xy.max(axis=0) > xy.min(axis=0)).all():
            box = np.concatenate([xy.min(axis=0), xy.max(axis=0)])
            inside = np.clip(box, 0.0, [width, height, width, height])
            if inside[2] > inside[0] and inside[3] > inside[1]:
                box = inside  # a rectangle dragged past the border: its part on the image (unisam wants boxes inside)
            break
    if not here.any() and box is None:
        return None
    xy = pixels_to_xy(rows_cols) if here.any() else None
    labels = np.asarray(positive, dtype=bool)[here].astype(np.float64) if here.any() else None
    return Prompt(points=xy, point_labels=labels, box=box)


def keyframe_objects(labels: np.ndarray, keyframes: Mapping[int, Iterable[int]]) -> dict[int, Instances]:
    """The start of :func:`unisam.track` from a ``(T, H, W)`` Labels layer: ``{frame: Instances}``
    holding, with their ids, the objects ``keyframes`` names on each frame that are still drawn there
    (frames with none are left out)."""
    start = {}
    for frame, ids in sorted(keyframes.items()):
        present = [i for i in sorted(set(ids)) if i > 0 and (labels[frame] == i).any()]
        if present:
            masks = labels[frame][None] == np.array(present)[:, None, None]
            start[frame] = Instances.from_masks(masks, ids=np.array(present, np.int64))
    return start


def paint_tracks(labels: np.ndarray, tracks: Sequence[Instances], ids: Iterable[int]) -> None:
    """Write tracked objects into the ``(T, H, W)`` ``labels`` in place: on every frame each of ``ids``
    loses its old pixels and takes its tracked mask where no other object is (keyframes come back
    from :func:`unisam.track` as given, so they keep what the user drew). Other ids are never touched."""
    redone = sorted({int(i) for i in ids})
    for target, found in zip(labels, tracks):
        target[np.isin(target, redone)] = 0
        for object_id, mask in zip(found.ids.tolist(), found.masks):
            if object_id in redone:
                target[mask & (target == 0)] = object_id


def tracks_layer_data(tracks: Tracks) -> tuple[np.ndarray, dict[int, list[int]]]:
    """A napari ``Tracks`` layer's ``data`` ``(M, 4)`` rows ``(id, t, row, col)`` (mask centroids in data
    coordinates) and ``graph`` ``{child id: [parent id]}`` (divisions) for ``tracks``."""
    graph = {child: [parent] for parent, children in tracks.lineage.items() for child in children}
    return tracks.centroids(), graph


NAME_COLUMNS = ("index", "name", "name_score", "named_by")  # committed_objects.features


def objects_of(labels: np.ndarray, ids: Iterable[int] | None = None) -> Instances:
    """The objects of an ``(H, W)`` label image as ``Instances`` with ``ids`` (all ids > 0, or the given
    ones that are drawn), in id order."""
    present = np.unique(labels)
    present = present[present > 0] if ids is None else np.array(sorted(set(ids) & set(present.tolist())), np.int64)
    masks = labels[None] == present[:, None, None] if len(present) else np.zeros((0, *labels.shape), bool)
    return Instances.from_masks(masks, ids=present.astype(np.int64))


def object_names(features) -> dict[int, tuple[str, str]]:
    """``{object id: (name, named_by)}`` from a Labels layer's features table (no names: empty)."""
    if features is None or "name" not in getattr(features, "columns", ()):
        return {}
    rows = features.dropna(subset=["name"])
    return {int(i): (str(n), str(b)) for i, n, b in zip(rows["index"], rows["name"], rows["named_by"])}


def with_names(features, ids: Sequence[int], names: Sequence[str | None], scores: Sequence[float], by: str):
    """The features table with ``ids`` named (``name``, ``name_score``, ``named_by``), one row per
    object id (napari's ``index`` column), other rows kept. None names clear that object's name."""
    import pandas as pd

    table = {}
    if features is not None and "index" in getattr(features, "columns", ()):
        for row in features.to_dict("records"):
            table[int(row["index"])] = {c: row.get(c) for c in NAME_COLUMNS}
    for i, name, score in zip(ids, names, scores):
        table[int(i)] = {"index": int(i), "name": name, "name_score": float(score) if name else None,
                         "named_by": by if name else None}
    rows = [table[k] for k in sorted(table)]
    return pd.DataFrame(rows, columns=list(NAME_COLUMNS)).astype({"index": int})
