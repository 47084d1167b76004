"""Frames of a scene: the z-buffer that tiles touching bodies and :class:`Scene`, the one renderer
every kind uses (bodies -> layers -> image, label map)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from .bodies import Body
from .camera import jpeg
from .noise import lookup

Render = Callable[[float, np.random.Generator], tuple[np.ndarray, np.ndarray]]


class Layers(NamedTuple):
    """Per-pixel maps of one frame, (H, W) each: ``label`` int (body index + 1 where its coverage is
    >= 0.5, else 0), ``owner`` int (the same including soft fringes), and the owning body's ``alpha``,
    ``n``, ``u``, ``v`` float32 (as in :class:`~.bodies.Patch`)."""

    label: np.ndarray
    owner: np.ndarray
    alpha: np.ndarray
    n: np.ndarray
    u: np.ndarray
    v: np.ndarray

    def texture(self, tex: np.ndarray, freq: np.ndarray, offs: np.ndarray, stretch: float = 1.0) -> np.ndarray:
        """(H, W) float32 read of the (B, B) texture ``tex`` in each owner's own coordinates: per-body
        frequency ``freq (M,)`` (``stretch`` times more along u) and offsets ``offs (2, M)``."""
        f = freq[self.owner]
        g = f if stretch == 1.0 else f * stretch
        return lookup(tex, self.v * f + offs[0][self.owner], self.u * g + offs[1][self.owner])


def zbuffer(bodies: list[Body], t: float, size: tuple[int, int], bank: np.ndarray) -> Layers:
    """Tile touching bodies at frame t: each pixel goes to the body with the smallest normalised
    distance."""
    owner = np.zeros(size, np.intp)
    maps = np.zeros((4, *size), np.float32)  # alpha, n, u, v
    maps[1] = 2.0
    for i, b in enumerate(bodies, 1):
        p = b.footprint(t, size, bank)
        if p is None:
            continue
        win = (p.n < maps[1, p.rows, p.cols]) & (p.alpha > 0)
        np.copyto(owner[p.rows, p.cols], i, where=win)
        for k, m in enumerate((p.alpha, p.n, p.u, p.v)):
            np.copyto(maps[k, p.rows, p.cols], m, where=win)
    return Layers(np.where(maps[0] >= 0.5, owner, 0), owner, *maps)


def seams(label: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels with a 4-neighbour of a different label."""
    edge = np.zeros(label.shape, bool)
    dy, dx = label[1:] != label[:-1], label[:, 1:] != label[:, :-1]
    edge[1:] |= dy
    edge[:-1] |= dy
    edge[:, 1:] |= dx
    edge[:, :-1] |= dx
    return edge


@dataclass
class Scene:
    """One scene of any kind, callable as ``scene(t, rng) -> (image, label)`` for frame t.

    ``compose(bodies, t, size, bank)`` lays the bodies out for frame t (default :func:`zbuffer`; its
    result has a ``label`` (H, W) int map, 0 background, body index + 1 inside); ``draw(layers, rng)``
    turns that into the image (noise drawn from ``rng``), which is then JPEG-compressed at ``quality``
    (0: not).
    """

    bodies: list[Body]
    size: tuple[int, int]
    bank: np.ndarray
    draw: Callable[[Any, np.random.Generator], np.ndarray]
    compose: Callable[[list[Body], float, tuple[int, int], np.ndarray], Any] = zbuffer
    quality: int = 0

    def __call__(self, t: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        layers = self.compose(self.bodies, t, self.size, self.bank)
        return jpeg(self.draw(layers, rng), self.quality), layers.label
