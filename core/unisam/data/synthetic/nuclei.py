"""``"nuclei"`` scenes: fluorescence nuclei, bright on dark, alone and in touching clusters, with
chromatin texture, PSF blur, shot + read noise and uneven illumination. Image (H, W) uint16 (camera
counts: offset 100-500, signal up to a few thousand), (H, W) uint8, or (H, W, 3) uint8 pseudo-colour."""

from __future__ import annotations

import numpy as np

from .bodies import Body, Radial, scatter_bodies, scene_radii, stretched, wobble
from .camera import Microscope, blur, interleave, pseudo_colour, to_uint8
from .noise import BANK, TAU, add_specks, lookup, pink_noise, table, texture_bank
from .render import Layers, Scene, seams


def _static(rng: np.random.Generator, size: tuple[int, int], r_mean: float) -> np.ndarray:
    """(H, W) float32 unlabeled signal: autofluorescence, out-of-focus nuclei and specks."""
    h, w = size
    static = rng.uniform(0.0, 0.06) * (1 + 0.3 * pink_noise(rng, size, 2.5)[0])
    ghosts = add_specks(rng, np.zeros(size, np.float32),
                        int(rng.poisson(3 * h * w / 65536)) if rng.random() < 0.5 else 0, 0.5, 4, r_mean**2)
    if ghosts.any():
        static += blur(ghosts, rng.uniform(1.5, 2.5) * r_mean)
    count = int(rng.poisson(rng.uniform(0, 8) * h * w / 65536))
    static += blur(add_specks(rng, np.zeros(size, np.float32), count, 1, 6), 1.0)
    return static


def nuclei(rng: np.random.Generator, size: tuple[int, int], moving: bool) -> Scene:
    """A random nuclei scene (objects moving when ``moving``)."""
    bank = texture_bank(rng)
    r_mean = rng.uniform(5, 14)
    radii = scene_radii(rng, size, moving, r_mean, rng.uniform(0.05, 0.45), rng.uniform(0.05, 0.25), 160)
    elong = rng.uniform(0, 0.25)

    def make(c: tuple[float, float], r: float) -> Body:
        outline = stretched(rng, r, elong) * wobble(rng, rng.uniform(0.01, 0.1))
        return Body(Radial(outline), c, rng.uniform(0, TAU), softness=rng.uniform(0.5, 1.2))

    bodies = scatter_bodies(rng, radii, size, moving, rng.uniform(0, 0.7), 0.8, make, 0.012)
    m = len(bodies) + 1  # per-body parameter tables, row 0 = no body
    mitotic = rng.random(m) < 0.04
    bright = table(np.exp(rng.normal(0, rng.uniform(0.1, 0.45), m)) * np.where(mitotic, 2.5, 1.0))
    chrom = table(rng.uniform(0.05, 0.45, m) * np.where(mitotic, 1.6, 1.0))
    freq = table(rng.uniform(6, 20, m))
    offs = table(rng.uniform(0, BANK, (2, m)))
    dome = table(rng.uniform(-0.1, 0.4, m))
    nucleoli = table(rng.uniform(0, 0.6, m) * (rng.random(m) < 0.5))
    seam = np.float32(rng.uniform(0, 0.5))
    static = _static(rng, size, r_mean)
    scope = Microscope.random(rng, size, (0.5, 2.0), (0.45, 0.3, 0.25))
    tint = pseudo_colour(rng)

    def draw(layers: Layers, rng: np.random.Generator) -> np.ndarray:
        owner, alpha, rho, u, v = layers[1:]
        f = freq[owner]
        texture = layers.texture(bank[1], freq, offs)
        spots = np.clip(lookup(bank[1], u * (2 * f) + 17, v * (2 * f) + 33) - 1.3, 0, 1)
        signal = bright[owner] * (1 - dome[owner] * np.minimum(rho, 1) ** 2) * (1 + chrom[owner] * texture)
        signal *= (1 - nucleoli[owner] * spots) * alpha
        signal *= 1 - seam * (seams(owner) & (owner > 0))  # dim line where nuclei touch
        img = scope(static + signal, rng)
        if scope.fmt == "rgb":
            img = interleave(to_uint8(img * (tint / np.float32(255))))
        return img

    return Scene(bodies, size, bank, draw)
