"""``"shapes"`` scenes: textured, shaded shapes that touch, occlude and cast shadows, over 1/f-noise
backgrounds with unlabeled clutter. Image (H, W, 3) uint8 (colour or grey)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .bodies import Body, Capsule, NoiseBlob, Radial, Shape, ellipse, polygon, random_polygon, scene_radii, \
    scatter_bodies, star, wobble
from .camera import blur, interleave, to_uint8
from .noise import BANK, TAU, illumination, log_uniform, lookup, pick, pink_noise, random_colour, sign, texture_bank
from .render import Scene

PATTERNS = ("flat", "gradient", "stripes", "checker", "noise", "spots", "rings")


@dataclass
class Paint:
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
            t = 0.5 + 0.5 * np.tanh(3 * np.sin(TAU * f * (u * self.direction[0] + v * self.direction[1]) + self.phase))
        elif self.pattern == "checker":
            t = (np.floor(f * u + self.phase) + np.floor(f * v + self.phase)) % 2
        elif self.pattern == "noise":
            t = 0.5 + 0.3 * lookup(bank[0], v * (3 * f) + oy, u * (3 * f) + ox)
        elif self.pattern == "spots":
            t = 2 * lookup(bank[1], v * (2 * f) + oy, u * (2 * f) + ox) - 1.5
        elif self.pattern == "rings":
            t = 0.5 + 0.5 * np.sin(TAU * f * np.hypot(u, v) + self.phase)
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
            col *= 1 + self.grain * lookup(bank[1], v * 40 + ox, u * 40 + oy)
        return col

    @classmethod
    def random(cls, rng: np.random.Generator, base: np.ndarray, low_contrast: bool) -> Paint:
        """Random paint; ``low_contrast`` makes its colour close to ``base`` (3, 1, 1)."""
        if low_contrast:
            c0 = np.clip(base * (1 + sign(rng) * rng.uniform(0.08, 0.25)) + rng.normal(0, 0.02, (3, 1, 1)), 0, 1)
        else:
            c0 = random_colour(rng)
        c1 = np.clip(c0 + rng.normal(0, pick(rng, (0.05, 0.3), (1, 1)), (3, 1, 1)), 0, 1) if rng.random() < 0.7 \
            else random_colour(rng)
        a = rng.uniform(0, TAU)
        light = rng.normal(0, 1, 3)
        light[2] = abs(light[2]) + 0.5
        light /= np.linalg.norm(light)
        return cls(
            c0=c0.astype(np.float32), c1=c1.astype(np.float32),
            pattern=pick(rng, PATTERNS, (0.3, 0.2, 0.1, 0.05, 0.2, 0.08, 0.07)),
            freq=rng.uniform(1, 5), direction=(math.cos(a), math.sin(a)), phase=rng.uniform(0, TAU),
            offset=(rng.uniform(0, BANK), rng.uniform(0, BANK)),
            shading=pick(rng, ("none", "planar", "sphere"), (0.4, 0.3, 0.3)),
            light=tuple(float(c) for c in light), ambient=rng.uniform(0.2, 0.6),
            specular=rng.uniform(0, 0.4) if rng.random() < 0.4 else 0.0,
            grain=rng.uniform(0, 0.15) if rng.random() < 0.5 else 0.0, shadow=rng.uniform(0.2, 0.55),
        )


def random_shape(rng: np.random.Generator, r: float) -> tuple[Shape, float]:
    """A random shape of radius about r px, and a softness (edge width, px) for it."""
    k = pick(rng, ("ellipse", "polygon", "rect", "star", "blob", "ring", "capsule", "noise"),
             (0.18, 0.16, 0.1, 0.06, 0.18, 0.08, 0.12, 0.12))
    e = math.exp(rng.normal(0, 0.3))
    if k == "ellipse":
        shape = Radial(ellipse(r * e, r / e))
    elif k == "polygon":
        shape = Radial(random_polygon(rng, r, int(rng.integers(3, 9)), rng.uniform(0, 0.8)))
    elif k == "rect":
        w, h = r * e, r / e * rng.uniform(0.3, 1)
        shape = Radial(polygon(np.array([[w, h], [-w, h], [-w, -h], [w, -h]])))
    elif k == "star":
        shape = Radial(star(rng, r))
    elif k == "blob":
        shape = Radial(ellipse(r * e, r / e) * wobble(rng, rng.uniform(0.1, 0.35)))
    elif k == "ring":
        shape = Radial(ellipse(r * e, r / e) * wobble(rng, rng.uniform(0, 0.15)), hole=rng.uniform(0.3, 0.7))
    elif k == "capsule":
        rad = r * rng.uniform(0.15, 0.5)
        shape = Capsule(max(r - rad, 0.0), rad)
    else:
        shape = NoiseBlob(rng, r * 1.2)
    return shape, rng.uniform(0.5, 1.2) if rng.random() < 0.7 else rng.uniform(1.2, 3.0)


def natural_background(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """(3, H, W) float32: 1/f-textured mix of two muted colours, sometimes split into large regions."""
    h, w = size
    f = pink_noise(rng, size, rng.uniform(1.6, 2.8), 2)
    ca, cb = random_colour(rng, 4.0), random_colour(rng, 4.0)
    bg = ca + (cb - ca) * np.clip(0.5 + rng.uniform(0.1, 0.35) * f[0], 0, 1)
    bg += rng.uniform(0, 0.08) * rng.uniform(0.5, 1.5, (3, 1, 1)).astype(np.float32) * f[1]
    yy = np.arange(h, dtype=np.float32)[:, None]
    xx = np.arange(w, dtype=np.float32)[None, :]
    for _ in range(pick(rng, (0, 1, 2), (0.45, 0.35, 0.2))):
        a, py, px = rng.uniform(0, TAU), rng.uniform(0, h), rng.uniform(0, w)
        d = math.cos(a) * (xx - px) + math.sin(a) * (yy - py) + rng.uniform(0, 0.1) * min(size) * f[1]
        m = np.clip(0.5 + d / rng.uniform(0.5, 3), 0, 1)
        region = random_colour(rng, 3.0) * (1 + rng.uniform(0, 0.2) * f[0])
        bg += m * (region - bg)
    return bg


def cluttered_background(rng: np.random.Generator, size: tuple[int, int], bank: np.ndarray) -> np.ndarray:
    """(3, H, W) float32 :func:`natural_background` with unlabeled clutter (low-contrast small shapes
    and thin lines), then sometimes defocused."""
    h, w = size
    side = min(size)
    background = natural_background(rng, size)
    for _ in range(int(rng.integers(0, 16))):
        shape = Capsule(rng.uniform(0.1, 0.6) * side, rng.uniform(0.5, 1.5)) if rng.random() < 0.3 \
            else random_shape(rng, rng.uniform(2, 0.04 * side + 2))[0]
        body = Body(shape, (rng.uniform(0, h), rng.uniform(0, w)), rng.uniform(0, TAU), softness=rng.uniform(0.6, 2))
        p = body.footprint(0, size, bank)
        if p is not None:
            background[:, p.rows, p.cols] *= 1 + sign(rng) * rng.uniform(0.03, 0.15) * p.alpha
    return blur(background, rng.uniform(0.5, 2.5) if rng.random() < 0.5 else 0.0)


class Painted(NamedTuple):
    """A frame of shapes before the camera: ``label`` (H, W) int32 and ``image`` (3, H, W) float32."""

    label: np.ndarray
    image: np.ndarray


def shapes(rng: np.random.Generator, size: tuple[int, int], moving: bool) -> Scene:
    """A random shapes scene (objects moving when ``moving``)."""
    h, w = size
    side = min(size)
    bank = texture_bank(rng)
    background = cluttered_background(rng, size, bank)

    # objects: sizes log-normal about a scene-wide typical radius, count from coverage
    r_mid = log_uniform(rng, 4, max(side / 4, 5))
    radii = scene_radii(rng, size, moving, r_mid, rng.uniform(0.1, 0.7), rng.uniform(0.2, 0.8), 40)
    radii = np.clip(radii, 4, max(side / 4, 4))
    paints = []
    low = rng.uniform(0, 0.5)  # fraction of low-contrast objects

    def make(c: tuple[float, float], r: float) -> Body:
        shape, soft = random_shape(rng, r)
        body = Body(shape, c, rng.uniform(0, TAU), softness=soft)
        y, x = min(max(int(c[0]), 0), h - 1), min(max(int(c[1]), 0), w - 1)
        paints.append(Paint.random(rng, background[:, y:y + 1, x:x + 1], rng.random() < low))
        return body

    bodies = scatter_bodies(rng, radii, size, moving, rng.uniform(0, 0.5), pick(rng, (0.0, 0.7), (1, 1)), make, 0.02)

    shadows = rng.random() < 0.4
    a, d = rng.uniform(0, TAU), rng.uniform(1, 0.03 * side + 1)
    cast, shadow_blur = (d * math.sin(a), d * math.cos(a)), rng.uniform(1, 4)
    light = illumination(rng, size, 0.3, 0.5)
    grey = rng.random() < 0.15
    defocus = rng.uniform(0.3, 1.0) if rng.random() < 0.5 else 0.0
    noise = (rng.uniform(0, 0.002), rng.uniform(0, 0.003))  # variance: constant, per unit intensity
    gamma = ((np.arange(256) / 255) ** math.exp(rng.normal(0, 0.15)) * 255 + 0.5).astype(np.uint8)  # as a LUT
    quality = int(rng.integers(30, 95)) if rng.random() < 0.35 else 0

    def paint(bodies: list[Body], t: float, size: tuple[int, int], bank: np.ndarray) -> Painted:
        """Painter's algorithm: each body (after its cast shadow) over the earlier ones."""
        img = background.copy()
        label = np.zeros(size, np.int32)
        for i, (body, colouring) in enumerate(zip(bodies, paints), 1):
            if shadows:
                s = body.footprint(t, size, bank, pad=3 * shadow_blur, shift=cast)
                if s is not None:
                    img[:, s.rows, s.cols] *= 1 - colouring.shadow * blur(s.alpha, shadow_blur)
            p = body.footprint(t, size, bank)
            if p is None:
                continue
            patch = img[:, p.rows, p.cols]
            patch += p.alpha * (colouring.texture(p.u, p.v, bank) - patch)
            label[p.rows, p.cols][p.alpha >= 0.5] = i
        return Painted(label, img)

    def photograph(frame: Painted, rng: np.random.Generator) -> np.ndarray:
        """Uneven light, defocus, optional grey, signal-dependent noise, gamma: (H, W, 3) uint8."""
        img = blur(frame.image * light, defocus)
        if grey:
            img = np.tensordot(np.array([0.299, 0.587, 0.114], np.float32), img, 1)[None]
        img = np.clip(img, 0, 1)
        img += np.sqrt(noise[0] + noise[1] * img) * rng.standard_normal(img.shape, np.float32)
        return interleave(np.broadcast_to(gamma[to_uint8(img)], (3, h, w)))

    return Scene(bodies, size, bank, photograph, compose=paint, quality=quality)
