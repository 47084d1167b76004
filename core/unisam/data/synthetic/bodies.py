"""Objects of every kind of scene: star-shaped outlines, rods and noise blobs, their pose and motion
(:class:`Body`), and where a scene puts them (:func:`scatter_bodies`). Lengths are in pixels."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .noise import BANK, TAU, lookup

ANGLES = 256  # samples of a radial outline over one turn
PHI = np.linspace(0, 2 * np.pi, ANGLES, endpoint=False)
RAY = np.stack([np.cos(PHI), np.sin(PHI)], 1)  # (ANGLES, 2) unit directions x, y
MARGIN = 0.2  # sequences start objects in the frame widened by this fraction of its side


# ----------------------------------------------------------------------------- outlines


def ellipse(a: float, b: float) -> np.ndarray:
    """(ANGLES,) radii of an ellipse with semi-axes a (along x) and b."""
    return a * b / np.hypot(b * RAY[:, 0], a * RAY[:, 1])


def polygon(vertices: np.ndarray) -> np.ndarray:
    """(ANGLES,) radii of a polygon star-shaped about the origin; vertices (V, 2) x, y in angle order."""
    d = RAY[:, None, :]  # (A, 1, 2)
    a = vertices[None]  # (1, V, 2)
    e = np.roll(vertices, -1, axis=0)[None] - a
    den = d[..., 0] * e[..., 1] - d[..., 1] * e[..., 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        r = (a[..., 0] * e[..., 1] - a[..., 1] * e[..., 0]) / den  # ray length to the edge's line
        s = (a[..., 0] * d[..., 1] - a[..., 1] * d[..., 0]) / den  # where on the edge it lands
    r = np.where((s >= -1e-9) & (s <= 1 + 1e-9) & (r > 0), r, np.inf)
    return r.min(axis=1)


def random_polygon(rng: np.random.Generator, radius: float, n: int, jitter: float) -> np.ndarray:
    """Outline of a random polygon with n vertices around a circle, angles and radii jittered
    (angle gaps stay below pi so that the polygon is star-shaped about its centre)."""
    jitter = min(jitter, 0.4) if n == 3 else jitter
    phi = np.sort((np.arange(n) + rng.uniform(-jitter, jitter, n) * 0.5) / n * TAU + rng.uniform(0, TAU))
    rad = radius * rng.uniform(1 - jitter * 0.5, 1, n)
    return polygon(np.stack([rad * np.cos(phi), rad * np.sin(phi)], 1))


def star(rng: np.random.Generator, radius: float) -> np.ndarray:
    n = int(rng.integers(4, 10))
    phi = np.arange(2 * n) / (2 * n) * TAU
    rad = np.where(np.arange(2 * n) % 2 == 0, radius, radius * rng.uniform(0.35, 0.7))
    return polygon(np.stack([rad * np.cos(phi), rad * np.sin(phi)], 1))


def wobble(rng: np.random.Generator, amount: float, harmonics: int = 6) -> np.ndarray:
    """(ANGLES,) multiplicative radial perturbation, low harmonics dominate."""
    k = np.arange(2, harmonics + 1)[:, None]
    amp = rng.normal(0, amount, (len(k), 1)) / k
    return np.maximum(1 + (amp * np.cos(k * PHI + rng.uniform(0, TAU, (len(k), 1)))).sum(0), 0.4)


def stretched(rng: np.random.Generator, r: float, elongation: float) -> np.ndarray:
    """(ANGLES,) radii of an ellipse of mean radius r px, axis ratio exp(2 |normal(0, elongation)|)."""
    e = math.exp(abs(rng.normal(0, elongation)))
    return ellipse(r * e, r / e)


# ----------------------------------------------------------------------------- shapes


class Radial:
    """Star-shaped outline r(phi) (px at scale 1), optionally with a hole at ``hole * r(phi)``."""

    def __init__(self, outline: np.ndarray, hole: float = 0.0):
        self.outline = np.append(outline, outline[0]).astype(np.float32)  # closed for interpolation
        self.hole = hole
        self.extent = float(outline.max())

    def distance(self, x: np.ndarray, y: np.ndarray, bank: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Normalised distance n (< 1 inside) and px per unit of n, at local coordinates x, y (px)."""
        t = np.arctan2(y, x) * np.float32(ANGLES / TAU)
        t[t < 0] += ANGLES
        i = np.minimum(t.astype(np.intp), ANGLES - 1)
        r = self.outline[i]
        r += (self.outline[i + 1] - r) * (t - i)
        rho = np.hypot(x, y)
        n = rho / r
        if self.hole > 0:
            inner = self.hole * r / np.maximum(rho, 1e-3)
            return np.maximum(n, inner), np.where(inner > n, rho, r)
        return n, r


class Capsule:
    """A rod along x: half axis length ``half`` and radius ``radius`` (px at scale 1)."""

    def __init__(self, half: float, radius: float):
        self.half, self.radius = half, radius
        self.extent = half + radius

    def distance(self, x, y, bank):
        d = np.hypot(np.maximum(np.abs(x) - np.float32(self.half), 0), y)
        return d * np.float32(1 / self.radius), np.float32(self.radius)


class NoiseBlob:
    """Thresholded smooth noise inside a disc of radius ``extent``: irregular, possibly with holes."""

    def __init__(self, rng: np.random.Generator, extent: float):
        self.extent = extent
        self.freq = rng.uniform(3, 9)
        self.offset = rng.uniform(0, BANK, 2)
        self.level = rng.uniform(-0.2, 0.5)

    def distance(self, x, y, bank):
        u, v = x * np.float32(1 / self.extent), y * np.float32(1 / self.extent)
        f = np.float32(self.freq)
        f = 0.6 * lookup(bank[1], v * f + self.offset[0], u * f + self.offset[1])
        f = np.minimum(f + np.float32(self.level) + 0.9 * (1 - u * u - v * v), 1 - np.hypot(u, v))
        return 1 - f, np.float32(self.extent / 3)


Shape = Radial | Capsule | NoiseBlob


# ----------------------------------------------------------------------------- pose and motion


class Patch(NamedTuple):
    """An object's footprint in its bounding box: coverage and local coordinates."""

    rows: slice
    cols: slice
    alpha: np.ndarray  # (h, w) float32 coverage in [0, 1]; >= 0.5 is inside
    n: np.ndarray  # (h, w) normalised distance, < 1 inside
    u: np.ndarray  # (h, w) local x / extent, rotates and moves with the object
    v: np.ndarray  # (h, w) local y / extent


@dataclass
class Body:
    """An object's shape and pose; its pose at frame t is linear in t (scale exponential)."""

    shape: Shape
    center: tuple[float, float]  # y, x in px at frame 0
    angle: float = 0.0
    scale: float = 1.0
    softness: float = 1.0  # edge width in px
    velocity: tuple[float, float] = (0.0, 0.0)  # px / frame
    spin: float = 0.0  # rad / frame
    growth: float = 0.0  # log-scale / frame

    def footprint(self, t: float, size: tuple[int, int], bank: np.ndarray, pad: float = 0.0,
                  shift: tuple[float, float] = (0.0, 0.0)) -> Patch | None:
        """Coverage and local coordinates in the object's bounding box at frame t (None when off the
        image); ``pad`` widens the box and ``shift`` moves the object (px; both for cast shadows)."""
        cy = self.center[0] + self.velocity[0] * t + shift[0]
        cx = self.center[1] + self.velocity[1] * t + shift[1]
        a, s = self.angle + self.spin * t, self.scale * math.exp(self.growth * t)
        reach = self.shape.extent * s + self.softness + pad + 1
        y0, y1 = max(math.floor(cy - reach), 0), min(math.ceil(cy + reach) + 1, size[0])
        x0, x1 = max(math.floor(cx - reach), 0), min(math.ceil(cx + reach) + 1, size[1])
        if y0 >= y1 or x0 >= x1:
            return None
        dy = (np.arange(y1 - y0, dtype=np.float32) + np.float32(y0 - cy))[:, None]
        dx = (np.arange(x1 - x0, dtype=np.float32) + np.float32(x0 - cx))[None, :]
        c, sn = np.float32(math.cos(a) / s), np.float32(math.sin(a) / s)
        x, y = c * dx + sn * dy, c * dy - sn * dx
        n, px = self.shape.distance(x, y, bank)
        alpha = np.clip(0.5 + (1 - n) * px * np.float32(s / self.softness), 0, 1)
        e = np.float32(1 / self.shape.extent)
        return Patch(slice(y0, y1), slice(x0, x1), alpha, n, x * e, y * e)


def animate(bodies: list[Body], rng: np.random.Generator, size: tuple[int, int], speed: float) -> None:
    """Give bodies a constant drift (up to ``speed`` * image side per frame), spin and growth."""
    for b in bodies:
        a, v = rng.uniform(0, TAU), rng.uniform(0.3, 1.0) * speed * min(size)
        b.velocity = (v * math.sin(a), v * math.cos(a))
        b.spin = rng.normal(0, 0.03)
        b.growth = rng.normal(0, 0.005)


# ----------------------------------------------------------------------------- placement


def count(coverage: float, radius: float, size: tuple[int, int], margin: float, cap: int) -> int:
    """How many discs of ``radius`` cover ``coverage`` of the frame widened by ``margin`` * side (>= 1)."""
    grow = 2 * margin * min(size)
    area = (size[0] + grow) * (size[1] + grow)
    return int(np.clip(coverage * area / (math.pi * radius**2), 1, cap * area / (size[0] * size[1])))


def place(rng: np.random.Generator, radii: np.ndarray, size: tuple[int, int], margin: float,
          cluster: float, gap: float) -> list[tuple[tuple[float, float], float]]:
    """Centres for discs of the given radii: uniform over the frame (widened by ``margin`` * side) or,
    with probability ``cluster``, next to an earlier disc; centre distances stay >= ``gap`` * (r1 + r2).
    Returns the (centre, radius) pairs kept (a disc is dropped after 8 failed tries)."""
    lo = -margin * min(size)
    hi = (size[0] - lo, size[1] - lo)
    centres, rs = np.zeros((len(radii), 2)), np.zeros(len(radii))
    k = 0
    for r in radii:
        for _ in range(8):
            if k and rng.random() < cluster:
                j = int(rng.integers(k))
                a, d = rng.uniform(0, TAU), (rs[j] + r) * rng.uniform(0.8, 1.05)
                c = (centres[j, 0] + d * math.sin(a), centres[j, 1] + d * math.cos(a))
            else:
                c = (rng.uniform(lo, hi[0]), rng.uniform(lo, hi[1]))
            d2 = (centres[:k, 0] - c[0]) ** 2 + (centres[:k, 1] - c[1]) ** 2
            if np.all(d2 >= (gap * (rs[:k] + r)) ** 2):
                centres[k], rs[k] = c, r
                k += 1
                break
    return [((float(centres[i, 0]), float(centres[i, 1])), float(rs[i])) for i in range(k)]


def _margin(moving: bool) -> float:
    return MARGIN if moving else 0.0


def scene_radii(rng: np.random.Generator, size: tuple[int, int], moving: bool, r_mean: float,
                coverage: float, spread: float, cap: int) -> np.ndarray:
    """Radii (px) of a scene's objects: log-normal about ``r_mean`` (log std ``spread``), as many as
    cover ``coverage`` of the frame (:func:`count`; widened by :data:`MARGIN` for moving scenes)."""
    n = count(coverage, r_mean, size, _margin(moving), cap)
    return r_mean * np.exp(rng.normal(0, spread, n))


def scatter_bodies(rng: np.random.Generator, radii: np.ndarray, size: tuple[int, int], moving: bool,
                   cluster: float, gap: float, make: Callable[[tuple[float, float], float], Body],
                   speed: float) -> list[Body]:
    """``make(centre, radius)`` at each place :func:`place` finds, then, for moving scenes, motion
    of up to ``speed`` * side per frame (:func:`animate`)."""
    bodies = [make(c, r) for c, r in place(rng, radii, size, _margin(moving), cluster, gap)]
    if moving:
        animate(bodies, rng, size, speed)
    return bodies
