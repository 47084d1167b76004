"""``"cells"`` scenes: fluorescence whole cells (cytoplasm or membrane stain) that touch and tile,
each with a nucleus. Image (H, W) uint16 or (H, W) uint8 for one channel, or (H, W, 3) uint8 for a
two-channel composite (cells in green, red or yellow, nuclei in blue)."""

from __future__ import annotations

import numpy as np

from .bodies import Body, Radial, scatter_bodies, scene_radii, stretched, wobble
from .camera import Microscope, blur, interleave
from .noise import BANK, TAU, lookup, pick, pink_noise, table, texture_bank
from .render import Layers, Scene, seams

_CELL_COLOURS = [(0, 1, 0), (1, 0, 0), (1, 1, 0)]


def cells(rng: np.random.Generator, size: tuple[int, int], moving: bool) -> Scene:
    """A random cells scene (objects moving when ``moving``)."""
    bank = texture_bank(rng)
    r_mean = rng.uniform(12, 32)
    radii = scene_radii(rng, size, moving, r_mean, rng.uniform(0.2, 1.4), rng.uniform(0.1, 0.3), 120)
    irregular, elong = rng.uniform(0.03, 0.25), rng.uniform(0, 0.5)

    def make(c: tuple[float, float], r: float) -> Body:
        outline = stretched(rng, r, elong) * wobble(rng, irregular, 8)
        return Body(Radial(outline), c, rng.uniform(0, TAU), softness=rng.uniform(0.6, 1.5))

    bodies = scatter_bodies(rng, radii, size, moving, rng.uniform(0, 0.6), rng.uniform(0.45, 0.9), make, 0.015)
    m = len(bodies) + 1
    bright = table(np.exp(rng.normal(0, rng.uniform(0.15, 0.5), m)))
    tex = table(rng.uniform(0.1, 0.5, m))
    freq = table(rng.uniform(3, 10, m))
    fibre = np.float32(rng.uniform(1, 2.5) if rng.random() < 0.25 else 1.0)  # anisotropic texture: streaks
    offs = table(rng.uniform(0, BANK, (2, m)))
    nuc_c = table(rng.uniform(-0.2, 0.2, (2, m)))  # nucleus centre and radii, in units of the extent
    nuc_r = table(rng.uniform(0.25, 0.45, m) * np.exp(rng.normal(0, 0.15, (2, m))))
    nuc_bright = table(np.exp(rng.normal(0, 0.3, m)))
    base = rng.uniform(0.2, 0.7)
    stain = pick(rng, ("cytoplasm", "membrane"), (0.65, 0.35))
    excluded = rng.uniform(-0.5, 0.3)  # nucleus dimmer (< 0) or brighter in the cell channel
    scope = Microscope.random(rng, size, (0.5, 1.8), (0.35, 0.25, 0.4), channels=2)
    cell_colour = np.asarray(_CELL_COLOURS[int(rng.integers(3))], np.float32).reshape(3, 1, 1)
    static = rng.uniform(0.0, 0.05) * (1 + 0.3 * pink_noise(rng, size, 2.5)[0])

    def draw(layers: Layers, rng: np.random.Generator) -> np.ndarray:
        label, owner, alpha, rho, u, v = layers
        texture = layers.texture(bank[0], freq, offs, fibre)
        nucleus = np.clip((1 - np.hypot((u - nuc_c[0][owner]) / nuc_r[0][owner],
                                        (v - nuc_c[1][owner]) / nuc_r[1][owner])) * 6, 0, 1) * (owner > 0)
        if stain == "membrane":
            ring = blur(seams(label).astype(np.float32), 0.7) * (owner > 0) * 2
            cell = bright[owner] * (ring + 0.15 * (1 + 0.5 * texture))
        else:
            inside = np.sqrt(np.clip(1 - rho, 0, 1))
            cell = bright[owner] * (base + (1 - base) * inside) * (1 + tex[owner] * texture) * (1 + excluded * nucleus)
        img = scope(static + alpha * cell, rng)
        if scope.fmt != "rgb":
            return img
        nuc = nuc_bright[owner] * nucleus * (1 + 0.3 * lookup(bank[1], v * 12, u * 12))
        rgb = img * cell_colour
        rgb[2] = np.maximum(rgb[2], scope(0.02 + nuc, rng, channel=1))
        return interleave(rgb.astype(np.uint8))

    return Scene(bodies, size, bank, draw)
