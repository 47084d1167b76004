"""Synthetic images with exact instance masks, for training, distillation and tracking tests.

NumPy + SciPy + Pillow only (pycocotools for :func:`write_coco`). Four kinds of scene:

``"shapes"``      polygons, rectangles, ellipses, stars, rings, blobs, capsules and noise blobs with
                  texture and shading, touching and occluding each other, with cast shadows, over
                  1/f-noise backgrounds with unlabeled clutter; colour or grey. Image (H, W, 3) uint8.
``"nuclei"``      fluorescence nuclei, bright on dark, alone and in touching clusters, with chromatin
                  texture, PSF blur, shot + read noise and uneven illumination. Image (H, W) uint16
                  (camera counts: offset 100-500, signal up to a few thousand), (H, W) uint8, or
                  (H, W, 3) uint8 pseudo-colour.
``"cells"``       fluorescence whole cells (cytoplasm or membrane stain) that touch and tile, each
                  with a nucleus. Image (H, W) uint16 or (H, W) uint8 for one channel, or (H, W, 3)
                  uint8 for a two-channel composite (cells in green, red or yellow, nuclei in blue).
``"brightfield"`` transmitted-light cells (defocused brightfield, phase contrast with halos, DIC-like
                  relief) on grey, with dust and debris. Image (H, W) uint8 or tinted (H, W, 3) uint8.

``Sample.image`` is what a user would load from a file; ``unisam.images.load_image`` turns any of
them into the RGB uint8 the model sees. ``Sample.masks`` holds the *visible* part of each object
(for shapes the later-painted object wins; where cells touch, the one whose centre is nearer
relative to its size wins): pairwise disjoint, each at least :data:`MIN_AREA` pixels. Objects
below that (fully occluded, mostly outside the frame) are left out of the annotations; the few
pixels they may leave stay in the image as clutter. Object ``ids`` start at 1 and are stable across
the frames of :func:`generate_sequence`. Sample sizes: at least 32 px a side; object sizes are in
pixels (not relative to the frame) for the microscopy kinds, so larger frames hold more objects.

Preview: ``python -m unisam.train.synthetic preview.png``.
"""

from __future__ import annotations

import colorsys
import io
import json
import math
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image
from scipy import fft, ndimage

from unisam.images import load_image

KINDS = ("shapes", "nuclei", "cells", "brightfield")
MIN_AREA = 16  # pixels; smaller visible parts are not annotated
_ANGLES = 256  # samples of a radial outline over one turn
_BANK = 128  # side of the periodic noise textures objects read from
_PHI = np.linspace(0, 2 * np.pi, _ANGLES, endpoint=False)
_RAY = np.stack([np.cos(_PHI), np.sin(_PHI)], 1)  # (_ANGLES, 2) unit directions x, y
_TAU = 2 * math.pi
_MARGIN = 0.2  # sequences start objects in the frame widened by this fraction of its side

Render = Callable[[float, np.random.Generator], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Sample:
    """One synthetic image and its instances.

    image: (H, W, 3) uint8 RGB, (H, W) uint8 grey or (H, W) uint16 grey (see the module docstring).
    masks: (N, H, W) bool, visible part of each object; disjoint, each >= MIN_AREA pixels.
    ids: (N,) int64 object identities (>= 1, increasing), stable across a sequence's frames.
    kind: one of :data:`KINDS`.
    """

    image: np.ndarray
    masks: np.ndarray
    ids: np.ndarray
    kind: str

    @property
    def bit_depth(self) -> int:
        """16 for uint16 images, else 8."""
        return 16 if self.image.dtype == np.uint16 else 8


# ----------------------------------------------------------------------------- randomness


def _pick(rng: np.random.Generator, options: Sequence, p: Sequence[float]):
    """One of ``options`` with weights ``p`` (cheaper than ``rng.choice`` for short lists)."""
    r = rng.random() * sum(p)
    for option, weight in zip(options, p):
        r -= weight
        if r < 0:
            return option
    return options[-1]


def _sign(rng: np.random.Generator) -> float:
    return 1.0 if rng.random() < 0.5 else -1.0


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return math.exp(rng.uniform(math.log(lo), math.log(hi)))


def _table(values) -> np.ndarray:
    """Per-body parameters as float32 (row 0 stands for 'no body')."""
    return np.asarray(values, np.float32)


def _colour(rng: np.random.Generator, saturation: float = 2.2) -> np.ndarray:
    """(3, 1, 1) float32 RGB in [0, 1], mostly muted as in photographs (more so for larger ``saturation``)."""
    rgb = colorsys.hsv_to_rgb(rng.random(), rng.beta(1.2, saturation), rng.beta(2.0, 1.6))
    return np.asarray(rgb, np.float32).reshape(3, 1, 1)


def _pink(rng: np.random.Generator, size: tuple[int, int], beta: float, n: int = 1) -> np.ndarray:
    """(n, H, W) float32 noise with power spectrum 1/f**beta, zero mean, unit std, periodic."""
    h, w = size
    f = np.hypot(np.fft.fftfreq(h)[:, None], np.fft.rfftfreq(w)[None, :]).astype(np.float32)
    f[0, 0] = 1.0
    amp = f ** np.float32(-beta / 2)
    amp[0, 0] = 0.0
    spec = rng.standard_normal((2, n, *amp.shape), np.float32)
    out = fft.irfft2((spec[0] + 1j * spec[1]) * amp, s=size)
    out /= out.std(axis=(1, 2), keepdims=True) + 1e-8  # the mean is already 0
    return out


def _bank(rng: np.random.Generator) -> np.ndarray:
    """(2, B, B) float32 periodic textures: [0] multi-scale 1/f**2 noise, [1] blobby noise of one scale."""
    f2 = np.fft.fftfreq(_BANK)[:, None] ** 2 + np.fft.rfftfreq(_BANK)[None, :] ** 2
    spec = rng.standard_normal((2, *f2.shape)) + 1j * rng.standard_normal((2, *f2.shape))
    blobs = fft.irfft2(spec[1] * np.exp(-2 * np.pi**2 * 2.0**2 * f2), s=(_BANK, _BANK))
    pink = _pink(rng, (_BANK, _BANK), 2.0)[0]
    return np.stack([pink, blobs / blobs.std()]).astype(np.float32)


def _lookup(tex: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Bilinear read of a periodic (B, B) texture at float32 coordinates (any shape, wraps around)."""
    y0, x0 = np.floor(y), np.floor(x)
    fy, fx = y - y0, x - x0
    m = _BANK - 1
    iy, ix = y0.astype(np.intp) & m, x0.astype(np.intp) & m
    iy1, ix1 = ((iy + 1) & m) * _BANK, (ix + 1) & m
    iy *= _BANK
    flat = tex.ravel()
    top = flat[iy + ix]
    top += (flat[iy + ix1] - top) * fx
    bottom = flat[iy1 + ix]
    bottom += (flat[iy1 + ix1] - bottom) * fx
    top += (bottom - top) * fy
    return top


def _illumination(rng: np.random.Generator, size: tuple[int, int], tilt: float, vignette: float) -> np.ndarray:
    """(H, W) float32 smooth multiplicative light field: a tilt plus an off-centre vignette."""
    h, w = size
    y = (np.arange(h, dtype=np.float32)[:, None] - h / 2) / max(h, w)
    x = (np.arange(w, dtype=np.float32)[None, :] - w / 2) / max(h, w)
    a, cy, cx = rng.uniform(0, _TAU), rng.uniform(-0.3, 0.3), rng.uniform(-0.3, 0.3)
    g = 2 * rng.uniform(0, tilt)
    vignette = 2 * rng.uniform(0, vignette) * ((x - cx) ** 2 + (y - cy) ** 2)
    light = 1 + g * math.cos(a) * x + g * math.sin(a) * y - vignette
    return np.maximum(light, 0.2)


# ----------------------------------------------------------------------------- geometry


def _ellipse(a: float, b: float) -> np.ndarray:
    """(_ANGLES,) radii of an ellipse with semi-axes a (along x) and b."""
    return a * b / np.hypot(b * _RAY[:, 0], a * _RAY[:, 1])


def _polygon(vertices: np.ndarray) -> np.ndarray:
    """(_ANGLES,) radii of a polygon star-shaped about the origin; vertices (V, 2) x, y in angle order."""
    d = _RAY[:, None, :]  # (A, 1, 2)
    a = vertices[None]  # (1, V, 2)
    e = np.roll(vertices, -1, axis=0)[None] - a
    den = d[..., 0] * e[..., 1] - d[..., 1] * e[..., 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        r = (a[..., 0] * e[..., 1] - a[..., 1] * e[..., 0]) / den  # ray length to the edge's line
        s = (a[..., 0] * d[..., 1] - a[..., 1] * d[..., 0]) / den  # where on the edge it lands
    r = np.where((s >= -1e-9) & (s <= 1 + 1e-9) & (r > 0), r, np.inf)
    return r.min(axis=1)


def _random_polygon(rng: np.random.Generator, radius: float, n: int, jitter: float) -> np.ndarray:
    """Outline of a random polygon with n vertices around a circle, angles and radii jittered
    (angle gaps stay below pi so that the polygon is star-shaped about its centre)."""
    jitter = min(jitter, 0.4) if n == 3 else jitter
    phi = np.sort((np.arange(n) + rng.uniform(-jitter, jitter, n) * 0.5) / n * _TAU + rng.uniform(0, _TAU))
    rad = radius * rng.uniform(1 - jitter * 0.5, 1, n)
    return _polygon(np.stack([rad * np.cos(phi), rad * np.sin(phi)], 1))


def _star(rng: np.random.Generator, radius: float) -> np.ndarray:
    n = int(rng.integers(4, 10))
    phi = np.arange(2 * n) / (2 * n) * _TAU
    rad = np.where(np.arange(2 * n) % 2 == 0, radius, radius * rng.uniform(0.35, 0.7))
    return _polygon(np.stack([rad * np.cos(phi), rad * np.sin(phi)], 1))


def _wobble(rng: np.random.Generator, amount: float, harmonics: int = 6) -> np.ndarray:
    """(_ANGLES,) multiplicative radial perturbation, low harmonics dominate."""
    k = np.arange(2, harmonics + 1)[:, None]
    amp = rng.normal(0, amount, (len(k), 1)) / k
    return np.maximum(1 + (amp * np.cos(k * _PHI + rng.uniform(0, _TAU, (len(k), 1)))).sum(0), 0.4)


class _Radial:
    """Star-shaped outline r(phi) (px at scale 1), optionally with a hole at ``hole * r(phi)``."""

    def __init__(self, outline: np.ndarray, hole: float = 0.0):
        self.outline = np.append(outline, outline[0]).astype(np.float32)  # closed for interpolation
        self.hole = hole
        self.extent = float(outline.max())

    def distance(self, x: np.ndarray, y: np.ndarray, bank: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Normalised distance n (< 1 inside) and px per unit of n, at local coordinates x, y (px)."""
        t = np.arctan2(y, x) * np.float32(_ANGLES / _TAU)
        t[t < 0] += _ANGLES
        i = np.minimum(t.astype(np.intp), _ANGLES - 1)
        r = self.outline[i]
        r += (self.outline[i + 1] - r) * (t - i)
        rho = np.hypot(x, y)
        n = rho / r
        if self.hole > 0:
            inner = self.hole * r / np.maximum(rho, 1e-3)
            return np.maximum(n, inner), np.where(inner > n, rho, r)
        return n, r


class _Capsule:
    """A rod along x: half axis length ``half`` and radius ``radius`` (px at scale 1)."""

    def __init__(self, half: float, radius: float):
        self.half, self.radius = half, radius
        self.extent = half + radius

    def distance(self, x, y, bank):
        d = np.hypot(np.maximum(np.abs(x) - np.float32(self.half), 0), y)
        return d * np.float32(1 / self.radius), np.float32(self.radius)


class _NoiseBlob:
    """Thresholded smooth noise inside a disc of radius ``extent``: irregular, possibly with holes."""

    def __init__(self, rng: np.random.Generator, extent: float):
        self.extent = extent
        self.freq = rng.uniform(3, 9)
        self.offset = rng.uniform(0, _BANK, 2)
        self.level = rng.uniform(-0.2, 0.5)

    def distance(self, x, y, bank):
        u, v = x * np.float32(1 / self.extent), y * np.float32(1 / self.extent)
        f = np.float32(self.freq)
        f = 0.6 * _lookup(bank[1], v * f + self.offset[0], u * f + self.offset[1])
        f = np.minimum(f + np.float32(self.level) + 0.9 * (1 - u * u - v * v), 1 - np.hypot(u, v))
        return 1 - f, np.float32(self.extent / 3)


Shape = _Radial | _Capsule | _NoiseBlob


class _Patch(NamedTuple):
    """An object's footprint in its bounding box: coverage and local coordinates."""

    rows: slice
    cols: slice
    alpha: np.ndarray  # (h, w) float32 coverage in [0, 1]; >= 0.5 is inside
    n: np.ndarray  # (h, w) normalised distance, < 1 inside
    u: np.ndarray  # (h, w) local x / extent, rotates and moves with the object
    v: np.ndarray  # (h, w) local y / extent


@dataclass
class _Body:
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
                  shift: tuple[float, float] = (0.0, 0.0)) -> _Patch | None:
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
        return _Patch(slice(y0, y1), slice(x0, x1), alpha, n, x * e, y * e)


def _animate(bodies: list[_Body], rng: np.random.Generator, size: tuple[int, int], speed: float) -> None:
    """Give bodies a constant drift (up to ``speed`` * image side per frame), spin and growth."""
    for b in bodies:
        a, v = rng.uniform(0, _TAU), rng.uniform(0.3, 1.0) * speed * min(size)
        b.velocity = (v * math.sin(a), v * math.cos(a))
        b.spin = rng.normal(0, 0.03)
        b.growth = rng.normal(0, 0.005)


def _count(coverage: float, radius: float, size: tuple[int, int], margin: float, cap: int) -> int:
    """How many discs of ``radius`` cover ``coverage`` of the frame widened by ``margin`` * side (>= 1)."""
    grow = 2 * margin * min(size)
    area = (size[0] + grow) * (size[1] + grow)
    return int(np.clip(coverage * area / (math.pi * radius**2), 1, cap * area / (size[0] * size[1])))


def _place(rng: np.random.Generator, radii: np.ndarray, size: tuple[int, int], margin: float,
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
                a, d = rng.uniform(0, _TAU), (rs[j] + r) * rng.uniform(0.8, 1.05)
                c = (centres[j, 0] + d * math.sin(a), centres[j, 1] + d * math.cos(a))
            else:
                c = (rng.uniform(lo, hi[0]), rng.uniform(lo, hi[1]))
            d2 = (centres[:k, 0] - c[0]) ** 2 + (centres[:k, 1] - c[1]) ** 2
            if np.all(d2 >= (gap * (rs[:k] + r)) ** 2):
                centres[k], rs[k] = c, r
                k += 1
                break
    return [((float(centres[i, 0]), float(centres[i, 1])), float(rs[i])) for i in range(k)]


def _zbuffer(bodies: list[_Body], t: float, size: tuple[int, int], bank: np.ndarray):
    """Tile touching bodies: each pixel goes to the body with the smallest normalised distance.

    Returns label (H, W) int (body index + 1 where its coverage >= 0.5, else 0), owner (H, W) int
    (the same but including soft fringes) and alpha, n, u, v (H, W) float32 of the owning body
    (n, u, v as in :class:`_Patch`).
    """
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
    return np.where(maps[0] >= 0.5, owner, 0), owner, *maps


def _seams(label: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels with a 4-neighbour of a different label."""
    edge = np.zeros(label.shape, bool)
    dy, dx = label[1:] != label[:-1], label[:, 1:] != label[:, :-1]
    edge[1:] |= dy
    edge[:-1] |= dy
    edge[:, 1:] |= dx
    edge[:, :-1] |= dx
    return edge


# ----------------------------------------------------------------------------- cameras


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur over the last two axes (sigma in px; skipped when tiny)."""
    if sigma < 0.3:
        return img
    return ndimage.gaussian_filter(img, (0,) * (img.ndim - 2) + (sigma, sigma), truncate=3.0)


def _jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())))


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def _interleave(planes: np.ndarray) -> np.ndarray:
    """(C, H, W) -> (H, W, C) contiguous."""
    return np.ascontiguousarray(planes.transpose(1, 2, 0))


@dataclass
class _FluorescenceCamera:
    """Photon counting: signal in [0, ~1] -> counts with shot noise, gain, offset, read noise."""

    bits: int
    peak: float  # photons at signal 1
    gain: float  # ADU per photon
    offset: float  # ADU
    read: float  # ADU read noise std
    background: float  # photons per pixel of stray light

    @classmethod
    def random(cls, rng: np.random.Generator, bits: int) -> _FluorescenceCamera:
        if bits == 16:
            return cls(16, _log_uniform(rng, 200, 3000), rng.uniform(1.0, 2.0), rng.uniform(100, 500),
                       rng.uniform(1, 8), rng.uniform(1, 40))
        peak = _log_uniform(rng, 15, 400)
        return cls(8, peak, rng.uniform(0.6, 1.2) * 255 / peak, rng.uniform(0, 15), rng.uniform(0.5, 3),
                   rng.uniform(0, 0.05) * peak)

    def __call__(self, signal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        photons = np.maximum(signal, 0) * np.float32(self.peak) + np.float32(self.background)
        noise = rng.standard_normal((2, *signal.shape), np.float32)
        counts = photons + np.sqrt(photons) * noise[0]  # shot noise (Gaussian approximation of Poisson)
        adu = counts * np.float32(self.gain) + np.float32(self.offset) + np.float32(self.read) * noise[1]
        top = 65535 if self.bits == 16 else 255
        return np.clip(adu + 0.5, 0, top).astype(np.uint16 if self.bits == 16 else np.uint8)


# ----------------------------------------------------------------------------- shapes


_PATTERNS = ("flat", "gradient", "stripes", "checker", "noise", "spots", "rings")


@dataclass
class _Paint:
    """How a shape is coloured: two colours mixed by a pattern, then shaded."""

    c0: np.ndarray  # (3, 1, 1)
    c1: np.ndarray  # (3, 1, 1)
    pattern: str
    freq: float
    direction: tuple[float, float]  # unit, in local u, v
    phase: float
    offset: tuple[float, float]  # where the pattern reads the noise bank
    shading: str  # "none" | "planar" | "sphere"
    light: tuple[float, float, float]  # unit
    ambient: float
    specular: float
    grain: float
    shadow: float  # darkening by the cast shadow

    def texture(self, u: np.ndarray, v: np.ndarray, bank: np.ndarray) -> np.ndarray:
        """(3, h, w) float32 colour at normalised local coordinates u, v (h, w)."""
        f, oy, ox = np.float32(self.freq), self.offset[0], self.offset[1]
        if self.pattern == "gradient":
            t = 0.5 + 0.5 * (u * self.direction[0] + v * self.direction[1])
        elif self.pattern == "stripes":
            t = 0.5 + 0.5 * np.tanh(3 * np.sin(_TAU * f * (u * self.direction[0] + v * self.direction[1]) + self.phase))
        elif self.pattern == "checker":
            t = (np.floor(f * u + self.phase) + np.floor(f * v + self.phase)) % 2
        elif self.pattern == "noise":
            t = 0.5 + 0.3 * _lookup(bank[0], v * (3 * f) + oy, u * (3 * f) + ox)
        elif self.pattern == "spots":
            t = 2 * _lookup(bank[1], v * (2 * f) + oy, u * (2 * f) + ox) - 1.5
        elif self.pattern == "rings":
            t = 0.5 + 0.5 * np.sin(_TAU * f * np.hypot(u, v) + self.phase)
        else:
            t = np.zeros_like(u)
        col = self.c0 + (self.c1 - self.c0) * np.clip(t, 0, 1)
        lx, ly, lz = self.light
        if self.shading == "planar":
            col *= 1 + self.ambient * (u * lx + v * ly)
        elif self.shading == "sphere":
            nz = np.sqrt(np.maximum(1 - u * u - v * v, 0))
            col *= self.ambient + (1 - self.ambient) * np.clip(u * lx + v * ly + nz * lz, 0, 1)
            if self.specular:
                col += self.specular * np.exp(-((u - lx * 0.5) ** 2 + (v - ly * 0.5) ** 2) * 33)
        if self.grain:
            col *= 1 + self.grain * _lookup(bank[1], v * 40 + ox, u * 40 + oy)
        return col

    @classmethod
    def random(cls, rng: np.random.Generator, base: np.ndarray, low_contrast: bool) -> _Paint:
        """Random paint; ``low_contrast`` makes its colour close to ``base`` (3, 1, 1)."""
        if low_contrast:
            c0 = np.clip(base * (1 + _sign(rng) * rng.uniform(0.08, 0.25)) + rng.normal(0, 0.02, (3, 1, 1)), 0, 1)
        else:
            c0 = _colour(rng)
        c1 = np.clip(c0 + rng.normal(0, _pick(rng, (0.05, 0.3), (1, 1)), (3, 1, 1)), 0, 1) if rng.random() < 0.7 \
            else _colour(rng)
        a = rng.uniform(0, _TAU)
        light = rng.normal(0, 1, 3)
        light[2] = abs(light[2]) + 0.5
        light /= np.linalg.norm(light)
        return cls(
            c0=c0.astype(np.float32), c1=c1.astype(np.float32),
            pattern=_pick(rng, _PATTERNS, (0.3, 0.2, 0.1, 0.05, 0.2, 0.08, 0.07)),
            freq=rng.uniform(1, 5), direction=(math.cos(a), math.sin(a)), phase=rng.uniform(0, _TAU),
            offset=(rng.uniform(0, _BANK), rng.uniform(0, _BANK)),
            shading=_pick(rng, ("none", "planar", "sphere"), (0.4, 0.3, 0.3)),
            light=tuple(float(c) for c in light), ambient=rng.uniform(0.2, 0.6),
            specular=rng.uniform(0, 0.4) if rng.random() < 0.4 else 0.0,
            grain=rng.uniform(0, 0.15) if rng.random() < 0.5 else 0.0, shadow=rng.uniform(0.2, 0.55),
        )


def _random_shape(rng: np.random.Generator, r: float) -> tuple[Shape, float]:
    """A random shape of radius about r px, and a softness (edge width, px) for it."""
    k = _pick(rng, ("ellipse", "polygon", "rect", "star", "blob", "ring", "capsule", "noise"),
              (0.18, 0.16, 0.1, 0.06, 0.18, 0.08, 0.12, 0.12))
    e = math.exp(rng.normal(0, 0.3))
    if k == "ellipse":
        shape = _Radial(_ellipse(r * e, r / e))
    elif k == "polygon":
        shape = _Radial(_random_polygon(rng, r, int(rng.integers(3, 9)), rng.uniform(0, 0.8)))
    elif k == "rect":
        w, h = r * e, r / e * rng.uniform(0.3, 1)
        shape = _Radial(_polygon(np.array([[w, h], [-w, h], [-w, -h], [w, -h]])))
    elif k == "star":
        shape = _Radial(_star(rng, r))
    elif k == "blob":
        shape = _Radial(_ellipse(r * e, r / e) * _wobble(rng, rng.uniform(0.1, 0.35)))
    elif k == "ring":
        shape = _Radial(_ellipse(r * e, r / e) * _wobble(rng, rng.uniform(0, 0.15)), hole=rng.uniform(0.3, 0.7))
    elif k == "capsule":
        rad = r * rng.uniform(0.15, 0.5)
        shape = _Capsule(max(r - rad, 0.0), rad)
    else:
        shape = _NoiseBlob(rng, r * 1.2)
    return shape, rng.uniform(0.5, 1.2) if rng.random() < 0.7 else rng.uniform(1.2, 3.0)


def _natural_background(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """(3, H, W) float32: 1/f-textured mix of two muted colours, sometimes split into large regions."""
    h, w = size
    f = _pink(rng, size, rng.uniform(1.6, 2.8), 2)
    ca, cb = _colour(rng, 4.0), _colour(rng, 4.0)
    bg = ca + (cb - ca) * np.clip(0.5 + rng.uniform(0.1, 0.35) * f[0], 0, 1)
    bg += rng.uniform(0, 0.08) * rng.uniform(0.5, 1.5, (3, 1, 1)).astype(np.float32) * f[1]
    yy = np.arange(h, dtype=np.float32)[:, None]
    xx = np.arange(w, dtype=np.float32)[None, :]
    for _ in range(_pick(rng, (0, 1, 2), (0.45, 0.35, 0.2))):
        a, py, px = rng.uniform(0, _TAU), rng.uniform(0, h), rng.uniform(0, w)
        d = math.cos(a) * (xx - px) + math.sin(a) * (yy - py) + rng.uniform(0, 0.1) * min(size) * f[1]
        m = np.clip(0.5 + d / rng.uniform(0.5, 3), 0, 1)
        region = _colour(rng, 3.0) * (1 + rng.uniform(0, 0.2) * f[0])
        bg += m * (region - bg)
    return bg


def _shapes(rng: np.random.Generator, size: tuple[int, int], moving: bool) -> Render:
    h, w = size
    side = min(size)
    bank = _bank(rng)
    background = _natural_background(rng, size)

    # unlabeled clutter: low-contrast small shapes and thin lines, then background defocus
    for _ in range(int(rng.integers(0, 16))):
        shape = _Capsule(rng.uniform(0.1, 0.6) * side, rng.uniform(0.5, 1.5)) if rng.random() < 0.3 \
            else _random_shape(rng, rng.uniform(2, 0.04 * side + 2))[0]
        body = _Body(shape, (rng.uniform(0, h), rng.uniform(0, w)), rng.uniform(0, _TAU), softness=rng.uniform(0.6, 2))
        p = body.footprint(0, size, bank)
        if p is not None:
            background[:, p.rows, p.cols] *= 1 + _sign(rng) * rng.uniform(0.03, 0.15) * p.alpha
    background = _blur(background, rng.uniform(0.5, 2.5) if rng.random() < 0.5 else 0.0)

    # objects: sizes log-normal about a scene-wide typical radius, count from coverage
    r_mid = _log_uniform(rng, 4, max(side / 4, 5))
    margin = _MARGIN if moving else 0.0
    n = _count(rng.uniform(0.1, 0.7), r_mid, size, margin, 40)
    radii = np.clip(r_mid * np.exp(rng.normal(0, rng.uniform(0.2, 0.8), n)), 4, max(side / 4, 4))
    bodies, paints = [], []
    low = rng.uniform(0, 0.5)  # fraction of low-contrast objects
    for c, r in _place(rng, radii, size, margin, rng.uniform(0, 0.5), _pick(rng, (0.0, 0.7), (1, 1))):
        shape, soft = _random_shape(rng, r)
        bodies.append(_Body(shape, c, rng.uniform(0, _TAU), softness=soft))
        y, x = min(max(int(c[0]), 0), h - 1), min(max(int(c[1]), 0), w - 1)
        paints.append(_Paint.random(rng, background[:, y:y + 1, x:x + 1], rng.random() < low))
    if moving:
        _animate(bodies, rng, size, 0.02)

    shadows = rng.random() < 0.4
    a, d = rng.uniform(0, _TAU), rng.uniform(1, 0.03 * side + 1)
    cast, shadow_blur = (d * math.sin(a), d * math.cos(a)), rng.uniform(1, 4)
    light = _illumination(rng, size, 0.3, 0.5)
    grey = rng.random() < 0.15
    blur = rng.uniform(0.3, 1.0) if rng.random() < 0.5 else 0.0
    noise = (rng.uniform(0, 0.002), rng.uniform(0, 0.003))  # variance: constant, per unit intensity
    gamma = ((np.arange(256) / 255) ** math.exp(rng.normal(0, 0.15)) * 255 + 0.5).astype(np.uint8)  # as a LUT
    quality = int(rng.integers(30, 95)) if rng.random() < 0.35 else 0

    def render(t: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        img = background.copy()
        label = np.zeros(size, np.int32)
        for i, (body, paint) in enumerate(zip(bodies, paints), 1):
            if shadows:
                s = body.footprint(t, size, bank, pad=3 * shadow_blur, shift=cast)
                if s is not None:
                    img[:, s.rows, s.cols] *= 1 - paint.shadow * _blur(s.alpha, shadow_blur)
            p = body.footprint(t, size, bank)
            if p is None:
                continue
            patch = img[:, p.rows, p.cols]
            patch += p.alpha * (paint.texture(p.u, p.v, bank) - patch)
            label[p.rows, p.cols][p.alpha >= 0.5] = i
        img = _blur(img * light, blur)
        if grey:
            img = np.tensordot(np.array([0.299, 0.587, 0.114], np.float32), img, 1)[None]
        img = np.clip(img, 0, 1)
        img += np.sqrt(noise[0] + noise[1] * img) * rng.standard_normal(img.shape, np.float32)
        img = _interleave(np.broadcast_to(gamma[_to_uint8(img)], (3, h, w)))
        return (_jpeg(img, quality) if quality else img), label

    return render


# ----------------------------------------------------------------------------- microscopy


def _pseudo_colour(rng: np.random.Generator) -> np.ndarray:
    """(3, 1, 1) channel colour of a one-channel composite: blue, green, red, magenta, cyan or white."""
    cols = [(0.1, 0.3, 1), (0, 1, 0), (1, 0, 0), (1, 0, 1), (0, 1, 1), (1, 1, 1)]
    return np.asarray(cols[int(rng.integers(len(cols)))], np.float32).reshape(3, 1, 1)


def _nuclei(rng: np.random.Generator, size: tuple[int, int], moving: bool) -> Render:
    h, w = size
    bank = _bank(rng)
    r_mean = rng.uniform(5, 14)
    margin = _MARGIN if moving else 0.0
    n = _count(rng.uniform(0.05, 0.45), r_mean, size, margin, 160)
    radii = r_mean * np.exp(rng.normal(0, rng.uniform(0.05, 0.25), n))
    elong = rng.uniform(0, 0.25)
    bodies = []
    for c, r in _place(rng, radii, size, margin, rng.uniform(0, 0.7), 0.8):
        e = math.exp(abs(rng.normal(0, elong)))
        outline = _ellipse(r * e, r / e) * _wobble(rng, rng.uniform(0.01, 0.1))
        bodies.append(_Body(_Radial(outline), c, rng.uniform(0, _TAU), softness=rng.uniform(0.5, 1.2)))
    if moving:
        _animate(bodies, rng, size, 0.012)
    m = len(bodies) + 1  # per-body parameter tables, row 0 = no body
    mitotic = rng.random(m) < 0.04
    bright = _table(np.exp(rng.normal(0, rng.uniform(0.1, 0.45), m)) * np.where(mitotic, 2.5, 1.0))
    chrom = _table(rng.uniform(0.05, 0.45, m) * np.where(mitotic, 1.6, 1.0))
    freq = _table(rng.uniform(6, 20, m))
    offs = _table(rng.uniform(0, _BANK, (2, m)))
    dome = _table(rng.uniform(-0.1, 0.4, m))
    nucleoli = _table(rng.uniform(0, 0.6, m) * (rng.random(m) < 0.5))
    seam = np.float32(rng.uniform(0, 0.5))

    # static signal: autofluorescence, out-of-focus nuclei and specks, none of them labeled
    static = rng.uniform(0.0, 0.06) * (1 + 0.3 * _pink(rng, size, 2.5)[0])
    ghosts = np.zeros(size, np.float32)
    for _ in range(int(rng.poisson(3 * h * w / 65536)) if rng.random() < 0.5 else 0):
        ghosts[int(rng.integers(0, h)), int(rng.integers(0, w))] += rng.uniform(0.5, 4) * r_mean**2
    if ghosts.any():
        static += _blur(ghosts, rng.uniform(1.5, 2.5) * r_mean)
    specks = np.zeros(size, np.float32)
    for _ in range(int(rng.poisson(rng.uniform(0, 8) * h * w / 65536))):
        specks[int(rng.integers(0, h)), int(rng.integers(0, w))] += rng.uniform(1, 6)
    static += _blur(specks, 1.0)

    psf = rng.uniform(0.5, 2.0)
    light = _illumination(rng, size, 0.3, 0.8)
    fmt = _pick(rng, ("u16", "u8", "rgb"), (0.45, 0.3, 0.25))
    camera = _FluorescenceCamera.random(rng, 16 if fmt == "u16" else 8)
    tint = _pseudo_colour(rng)

    def render(t: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        label, owner, alpha, rho, u, v = _zbuffer(bodies, t, size, bank)
        f = freq[owner]
        texture = _lookup(bank[1], v * f + offs[0][owner], u * f + offs[1][owner])
        spots = np.clip(_lookup(bank[1], u * (2 * f) + 17, v * (2 * f) + 33) - 1.3, 0, 1)
        signal = bright[owner] * (1 - dome[owner] * np.minimum(rho, 1) ** 2) * (1 + chrom[owner] * texture)
        signal *= (1 - nucleoli[owner] * spots) * alpha
        signal *= 1 - seam * (_seams(owner) & (owner > 0))  # dim line where nuclei touch
        img = camera(_blur(static + signal, psf) * light, rng)
        if fmt == "rgb":
            img = _interleave(_to_uint8(img * (tint / np.float32(255))))
        return img, label

    return render


def _cells(rng: np.random.Generator, size: tuple[int, int], moving: bool) -> Render:
    h, w = size
    bank = _bank(rng)
    r_mean = rng.uniform(12, 32)
    margin = _MARGIN if moving else 0.0
    n = _count(rng.uniform(0.2, 1.4), r_mean, size, margin, 120)
    radii = r_mean * np.exp(rng.normal(0, rng.uniform(0.1, 0.3), n))
    irregular, elong = rng.uniform(0.03, 0.25), rng.uniform(0, 0.5)
    bodies = []
    for c, r in _place(rng, radii, size, margin, rng.uniform(0, 0.6), rng.uniform(0.45, 0.9)):
        e = math.exp(abs(rng.normal(0, elong)))
        outline = _ellipse(r * e, r / e) * _wobble(rng, irregular, 8)
        bodies.append(_Body(_Radial(outline), c, rng.uniform(0, _TAU), softness=rng.uniform(0.6, 1.5)))
    if moving:
        _animate(bodies, rng, size, 0.015)
    m = len(bodies) + 1
    bright = _table(np.exp(rng.normal(0, rng.uniform(0.15, 0.5), m)))
    tex = _table(rng.uniform(0.1, 0.5, m))
    freq = _table(rng.uniform(3, 10, m))
    fibre = np.float32(rng.uniform(1, 2.5) if rng.random() < 0.25 else 1.0)  # anisotropic texture: streaks
    offs = _table(rng.uniform(0, _BANK, (2, m)))
    nuc_c = _table(rng.uniform(-0.2, 0.2, (2, m)))  # nucleus centre and radii, in units of the extent
    nuc_r = _table(rng.uniform(0.25, 0.45, m) * np.exp(rng.normal(0, 0.15, (2, m))))
    nuc_bright = _table(np.exp(rng.normal(0, 0.3, m)))
    base = rng.uniform(0.2, 0.7)
    stain = _pick(rng, ("cytoplasm", "membrane"), (0.65, 0.35))
    excluded = rng.uniform(-0.5, 0.3)  # nucleus dimmer (< 0) or brighter in the cell channel
    psf = rng.uniform(0.5, 1.8)
    light = _illumination(rng, size, 0.3, 0.8)
    fmt = _pick(rng, ("u16", "u8", "rgb"), (0.35, 0.25, 0.4))
    cams = [_FluorescenceCamera.random(rng, 16 if fmt == "u16" else 8) for _ in range(2)]
    cell_colour = np.asarray([(0, 1, 0), (1, 0, 0), (1, 1, 0)][int(rng.integers(3))], np.float32).reshape(3, 1, 1)
    static = rng.uniform(0.0, 0.05) * (1 + 0.3 * _pink(rng, size, 2.5)[0])

    def render(t: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        label, owner, alpha, rho, u, v = _zbuffer(bodies, t, size, bank)
        f = freq[owner]
        texture = _lookup(bank[0], v * f + offs[0][owner], u * (f * fibre) + offs[1][owner])
        nucleus = np.clip((1 - np.hypot((u - nuc_c[0][owner]) / nuc_r[0][owner],
                                        (v - nuc_c[1][owner]) / nuc_r[1][owner])) * 6, 0, 1) * (owner > 0)
        if stain == "membrane":
            ring = _blur(_seams(label).astype(np.float32), 0.7) * (owner > 0) * 2
            cell = bright[owner] * (ring + 0.15 * (1 + 0.5 * texture))
        else:
            inside = np.sqrt(np.clip(1 - rho, 0, 1))
            cell = bright[owner] * (base + (1 - base) * inside) * (1 + tex[owner] * texture) * (1 + excluded * nucleus)
        img = cams[0](_blur(static + alpha * cell, psf) * light, rng)
        if fmt != "rgb":
            return img, label
        nuc = nuc_bright[owner] * nucleus * (1 + 0.3 * _lookup(bank[1], v * 12, u * 12))
        rgb = img * cell_colour
        rgb[2] = np.maximum(rgb[2], cams[1](_blur(0.02 + nuc, psf) * light, rng))
        return _interleave(rgb.astype(np.uint8)), label

    return render


def _brightfield(rng: np.random.Generator, size: tuple[int, int], moving: bool) -> Render:
    h, w = size
    bank = _bank(rng)
    cell_type = _pick(rng, ("round", "irregular", "rods"), (0.4, 0.35, 0.25))
    r_mean = {"round": rng.uniform(5, 16), "irregular": rng.uniform(12, 35), "rods": rng.uniform(6, 16)}[cell_type]
    margin = _MARGIN if moving else 0.0
    n = _count(rng.uniform(0.05, 0.6), r_mean, size, margin, 150)
    radii = r_mean * np.exp(rng.normal(0, rng.uniform(0.1, 0.3), n))
    bodies = []
    for c, r in _place(rng, radii, size, margin, rng.uniform(0, 0.6), rng.uniform(0.7, 1.0)):
        if cell_type == "rods":
            rad = rng.uniform(2.5, 5)
            shape: Shape = _Capsule(max(r - rad, 1.0), rad)
        elif cell_type == "round":
            e = math.exp(abs(rng.normal(0, 0.12)))
            shape = _Radial(_ellipse(r * e, r / e) * _wobble(rng, 0.03))
        else:
            e = math.exp(abs(rng.normal(0, 0.4)))
            shape = _Radial(_ellipse(r * e, r / e) * _wobble(rng, rng.uniform(0.05, 0.25), 8))
        bodies.append(_Body(shape, c, rng.uniform(0, _TAU), softness=rng.uniform(0.6, 1.3)))
    if moving:
        _animate(bodies, rng, size, 0.012)
    m = len(bodies) + 1
    height = _table(np.exp(rng.normal(0, 0.25, m)))
    absorb = _table(rng.uniform(0, 0.25) * np.exp(rng.normal(0, 0.3, m)))
    granules = _table(rng.uniform(0, 0.6, m))
    freq = _table(rng.uniform(5, 15, m))
    offs = _table(rng.uniform(0, _BANK, (2, m)))

    # optics as a transfer function on the spectrum of the cells' optical thickness
    mode = _pick(rng, ("brightfield", "phase", "dic"), (0.45, 0.35, 0.2))
    fy, fx = np.fft.fftfreq(h).astype(np.float32)[:, None], np.fft.rfftfreq(w).astype(np.float32)[None, :]
    f2 = fy**2 + fx**2
    transfer = np.exp(-2 * math.pi**2 * rng.uniform(0.6, 1.5) ** 2 * f2)  # Gaussian PSF
    strength = 0.0  # edge contrast of defocus and DIC, as a fraction of the background level
    gain: list[float] = []  # their normalisation, fixed by the first frame so that sequences do not flicker
    if mode == "brightfield":  # defocus: intensity ~ Laplacian of the phase (transport of intensity)
        phase = transfer * (_sign(rng) * 4 * math.pi**2) * f2
        strength = rng.uniform(0.1, 0.6)
    elif mode == "phase":  # high-pass of the phase: dark cells with bright halos
        halo = rng.uniform(3, 8)
        phase = -transfer * rng.uniform(0.3, 0.7) * (1 - np.exp(-2 * math.pi**2 * halo**2 * f2))
    else:  # DIC: derivative of the phase along a shear direction
        a = rng.uniform(0, _TAU)
        phase = transfer * 2j * math.pi * (math.cos(a) * fx + math.sin(a) * fy)
        strength = rng.uniform(0.15, 0.5)
    level = rng.uniform(0.45, 0.8)
    light = level * _illumination(rng, size, 0.25, 0.6)
    dust = np.zeros(size, np.float32)  # out-of-focus dust: faint rings; debris: small dark specks
    yy, xx = np.arange(h, dtype=np.float32)[:, None], np.arange(w, dtype=np.float32)[None, :]
    for _ in range(int(rng.integers(0, 4))):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(5, 25)
        dust += rng.uniform(0.02, 0.08) * np.exp(-((np.hypot(yy - cy, xx - cx) - r) / rng.uniform(1, 3)) ** 2)
    for _ in range(int(rng.poisson(rng.uniform(0, 6) * h * w / 65536))):
        dust[int(rng.integers(0, h)), int(rng.integers(0, w))] += rng.uniform(1, 5)
    dust = _blur(dust, 0.8)
    noise = rng.uniform(0.004, 0.025)
    tint = np.array([1, rng.uniform(0.88, 1.0), rng.uniform(0.7, 1.0)], np.float32)[:: int(_sign(rng))]
    rgb = rng.random() < 0.5
    quality = int(rng.integers(40, 95)) if rng.random() < 0.2 else 0

    def render(t: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        label, owner, alpha, rho, u, v = _zbuffer(bodies, t, size, bank)
        f = freq[owner]
        grain = np.clip(_lookup(bank[1], v * f + offs[0][owner], u * f + offs[1][owner]) - 0.8, 0, 1) * granules[owner]
        thickness = alpha * height[owner] * np.sqrt(np.clip(1 - rho, 0, 1)) * (1 + grain)
        spectra = fft.rfft2(np.stack([thickness, alpha * absorb[owner] * (1 + 2 * grain)]))
        contrast = fft.irfft2(np.stack([spectra[0] * phase, spectra[1] * transfer]), s=size)
        if strength:  # normalise the unbounded derivative filters to the chosen edge contrast
            if not gain:
                gain.append(strength / max(float(np.abs(contrast[0]).max()), 1e-3))
            contrast[0] *= gain[0]
        img = light * (1 + contrast[0] - contrast[1] - dust) + noise * rng.standard_normal(size, np.float32)
        img = _interleave(_to_uint8(img * tint.reshape(3, 1, 1))) if rgb else _to_uint8(img)
        return (_jpeg(img, quality) if quality else img), label

    return render


_BUILDERS: dict[str, Callable[[np.random.Generator, tuple[int, int], bool], Render]] = {
    "shapes": _shapes, "nuclei": _nuclei, "cells": _cells, "brightfield": _brightfield,
}


# ----------------------------------------------------------------------------- public API


def _collect(image: np.ndarray, label: np.ndarray, kind: str) -> Sample:
    """Label map (0 background, id > 0) -> Sample with the ids covering >= MIN_AREA pixels."""
    counts = np.bincount(label.ravel())
    keep = np.flatnonzero(counts >= MIN_AREA)
    keep = keep[keep > 0]
    index = np.full(counts.size, -1, np.intp)
    index[keep] = np.arange(keep.size)
    flat = index[label.ravel()]
    where = np.flatnonzero(flat >= 0)
    masks = np.zeros((keep.size, label.size), bool)
    masks[flat[where], where] = True
    return Sample(image, masks.reshape(keep.size, *label.shape), keep.astype(np.int64), kind)


def _check(size: tuple[int, int], kind: str | None) -> tuple[int, int]:
    if len(size) != 2 or min(size) < 32:
        raise ValueError(f"size must be (H, W) with both sides >= 32, got {size}")
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return int(size[0]), int(size[1])


def generate_sample(rng: np.random.Generator, size: tuple[int, int] = (256, 256), kind: str | None = None) -> Sample:
    """One random image of ``kind`` (random kind when None) with its instance masks."""
    size = _check(size, kind)
    kind = kind or KINDS[int(rng.integers(len(KINDS)))]
    image, label = _BUILDERS[kind](rng, size, False)(0.0, rng)
    return _collect(image, label, kind)


def generate_sequence(rng: np.random.Generator, n_frames: int, size: tuple[int, int] = (256, 256),
                      kind: str = "shapes") -> list[Sample]:
    """``n_frames`` frames of one scene whose objects drift, spin and grow/shrink slightly, entering
    and leaving the frame; an object keeps its id in every frame where it is visible."""
    size = _check(size, kind)
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    render = _BUILDERS[kind](rng, size, True)
    return [_collect(*render(float(t), rng), kind) for t in range(n_frames)]


class SyntheticDataset:
    """``n`` deterministic samples: item i depends only on (seed, i); kinds cycle with i."""

    def __init__(self, n: int, size: tuple[int, int] = (256, 256), seed: int = 0, kinds: Sequence[str] = KINDS):
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        if not kinds:
            raise ValueError("kinds must not be empty")
        for k in kinds:
            _check(size, k)
        self.n, self.size, self.seed, self.kinds = n, tuple(size), seed, tuple(kinds)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Sample:
        if not 0 <= i < self.n:
            raise IndexError(f"index {i} out of range for {self.n} samples")
        rng = np.random.default_rng([self.seed, i])
        return generate_sample(rng, self.size, self.kinds[i % len(self.kinds)])


def contact_sheet(samples: Sequence[Sample], cols: int = 8, outlines: bool = False) -> np.ndarray:
    """(rows * (H + 2), cols * (W + 2), 3) uint8 grid of the samples' images (all of one size, shown
    as ``load_image`` converts them), optionally with each mask's outline in a colour set by its id."""
    h, w = samples[0].image.shape[:2]
    rows = -(-len(samples) // cols)
    sheet = np.full((rows * (h + 2), cols * (w + 2), 3), 255, np.uint8)
    for k, s in enumerate(samples):
        tile = load_image(s.image).copy()
        if outlines:
            for obj, mask in zip(s.ids, s.masks):
                edge = mask & ~ndimage.binary_erosion(mask)
                tile[edge] = (np.array(colorsys.hsv_to_rgb((obj * 0.618) % 1, 1, 1)) * 255).astype(np.uint8)
        r, c = divmod(k, cols)
        sheet[r * (h + 2):r * (h + 2) + h, c * (w + 2):c * (w + 2) + w] = tile
    return sheet


def write_coco(samples: Iterable[Sample], out_dir: str | Path) -> Path:
    """Write ``images/NNNNNN.png`` (uint16 grey stays 16-bit) and ``annotations.json``: COCO instances
    with compressed-RLE masks, one category ``object``; each annotation also keeps ``object_id``, each
    image its ``kind``. Returns the JSON path."""
    from pycocotools import mask as mask_utils

    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for image_id, s in enumerate(samples, 1):
        name = f"images/{image_id:06d}.png"
        Image.fromarray(s.image).save(out / name)
        h, w = s.image.shape[:2]
        images.append({"id": image_id, "file_name": name, "height": h, "width": w, "kind": s.kind})
        if not len(s.masks):
            continue
        rles = mask_utils.encode(np.asfortranarray(s.masks.transpose(1, 2, 0).astype(np.uint8)))
        for rle, area, box, obj in zip(rles, mask_utils.area(rles), mask_utils.toBbox(rles), s.ids):
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": 1,
                "segmentation": {"size": [h, w], "counts": rle["counts"].decode("ascii")},
                "area": int(area), "bbox": [float(b) for b in box], "iscrowd": 0, "object_id": int(obj),
            })
    path = out / "annotations.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 1, "name": "object"}]}))
    return path


if __name__ == "__main__":
    data = SyntheticDataset(16 * len(KINDS), seed=int(sys.argv[2]) if len(sys.argv) > 2 else 0)
    samples = sorted((data[i] for i in range(len(data))), key=lambda s: KINDS.index(s.kind))
    Image.fromarray(contact_sheet(samples, cols=8)).save(sys.argv[1] if len(sys.argv) > 1 else "preview.png")
