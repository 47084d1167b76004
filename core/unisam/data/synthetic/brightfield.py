"""``"brightfield"`` scenes: transmitted-light cells (defocused brightfield, phase contrast with halos,
DIC-like relief) on grey, with dust and debris. Image (H, W) uint8 or tinted (H, W, 3) uint8."""

from __future__ import annotations

import math

import numpy as np
from scipy import fft

from .bodies import Body, Capsule, Radial, Shape, scatter_bodies, scene_radii, stretched, wobble
from .camera import blur, interleave, to_uint8
from .noise import BANK, TAU, add_specks, illumination, pick, sign, table, texture_bank
from .render import Layers, Scene


def _optics(rng: np.random.Generator, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, float]:
    """Transfer functions on the rfft2 spectrum (H, W // 2 + 1) of the cells' optical thickness
    (``phase``) and absorption (``transfer``, a Gaussian PSF), and the edge contrast ``strength`` of
    defocus and DIC (a fraction of the background level; 0 for phase contrast)."""
    h, w = size
    mode = pick(rng, ("brightfield", "phase", "dic"), (0.45, 0.35, 0.2))
    fy, fx = np.fft.fftfreq(h).astype(np.float32)[:, None], np.fft.rfftfreq(w).astype(np.float32)[None, :]
    f2 = fy**2 + fx**2
    transfer = np.exp(-2 * math.pi**2 * rng.uniform(0.6, 1.5) ** 2 * f2)  # Gaussian PSF
    strength = 0.0
    if mode == "brightfield":  # defocus: intensity ~ Laplacian of the phase (transport of intensity)
        phase = transfer * (sign(rng) * 4 * math.pi**2) * f2
        strength = rng.uniform(0.1, 0.6)
    elif mode == "phase":  # high-pass of the phase: dark cells with bright halos
        halo = rng.uniform(3, 8)
        phase = -transfer * rng.uniform(0.3, 0.7) * (1 - np.exp(-2 * math.pi**2 * halo**2 * f2))
    else:  # DIC: derivative of the phase along a shear direction
        a = rng.uniform(0, TAU)
        phase = transfer * 2j * math.pi * (math.cos(a) * fx + math.sin(a) * fy)
        strength = rng.uniform(0.15, 0.5)
    return phase, transfer, strength


def _dust(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """(H, W) float32 out-of-focus dust (faint rings) and debris (small dark specks), blurred."""
    h, w = size
    dust = np.zeros(size, np.float32)
    yy, xx = np.arange(h, dtype=np.float32)[:, None], np.arange(w, dtype=np.float32)[None, :]
    for _ in range(int(rng.integers(0, 4))):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(5, 25)
        dust += rng.uniform(0.02, 0.08) * np.exp(-((np.hypot(yy - cy, xx - cx) - r) / rng.uniform(1, 3)) ** 2)
    add_specks(rng, dust, int(rng.poisson(rng.uniform(0, 6) * h * w / 65536)), 1, 5)
    return blur(dust, 0.8)


def brightfield(rng: np.random.Generator, size: tuple[int, int], moving: bool) -> Scene:
    """A random brightfield scene (objects moving when ``moving``)."""
    bank = texture_bank(rng)
    cell_type = pick(rng, ("round", "irregular", "rods"), (0.4, 0.35, 0.25))
    r_mean = {"round": rng.uniform(5, 16), "irregular": rng.uniform(12, 35), "rods": rng.uniform(6, 16)}[cell_type]
    radii = scene_radii(rng, size, moving, r_mean, rng.uniform(0.05, 0.6), rng.uniform(0.1, 0.3), 150)

    def make(c: tuple[float, float], r: float) -> Body:
        if cell_type == "rods":
            rad = rng.uniform(2.5, 5)
            shape: Shape = Capsule(max(r - rad, 1.0), rad)
        elif cell_type == "round":
            shape = Radial(stretched(rng, r, 0.12) * wobble(rng, 0.03))
        else:
            shape = Radial(stretched(rng, r, 0.4) * wobble(rng, rng.uniform(0.05, 0.25), 8))
        return Body(shape, c, rng.uniform(0, TAU), softness=rng.uniform(0.6, 1.3))

    bodies = scatter_bodies(rng, radii, size, moving, rng.uniform(0, 0.6), rng.uniform(0.7, 1.0), make, 0.012)
    m = len(bodies) + 1
    height = table(np.exp(rng.normal(0, 0.25, m)))
    absorb = table(rng.uniform(0, 0.25) * np.exp(rng.normal(0, 0.3, m)))
    granules = table(rng.uniform(0, 0.6, m))
    freq = table(rng.uniform(5, 15, m))
    offs = table(rng.uniform(0, BANK, (2, m)))
    phase, transfer, strength = _optics(rng, size)
    gain: list[float] = []  # normalisation of the edge contrast, fixed by the first frame (no flicker)
    level = rng.uniform(0.45, 0.8)
    light = level * illumination(rng, size, 0.25, 0.6)
    dust = _dust(rng, size)
    noise = rng.uniform(0.004, 0.025)
    tint = np.array([1, rng.uniform(0.88, 1.0), rng.uniform(0.7, 1.0)], np.float32)[:: int(sign(rng))]
    rgb = rng.random() < 0.5
    quality = int(rng.integers(40, 95)) if rng.random() < 0.2 else 0

    def draw(layers: Layers, rng: np.random.Generator) -> np.ndarray:
        owner, alpha, rho = layers.owner, layers.alpha, layers.n
        grain = np.clip(layers.texture(bank[1], freq, offs) - 0.8, 0, 1) * granules[owner]
        thickness = alpha * height[owner] * np.sqrt(np.clip(1 - rho, 0, 1)) * (1 + grain)
        spectra = fft.rfft2(np.stack([thickness, alpha * absorb[owner] * (1 + 2 * grain)]))
        contrast = fft.irfft2(np.stack([spectra[0] * phase, spectra[1] * transfer]), s=size)
        if strength:  # normalise the unbounded derivative filters to the chosen edge contrast
            if not gain:
                gain.append(strength / max(float(np.abs(contrast[0]).max()), 1e-3))
            contrast[0] *= gain[0]
        img = light * (1 + contrast[0] - contrast[1] - dust) + noise * rng.standard_normal(size, np.float32)
        return interleave(to_uint8(img * tint.reshape(3, 1, 1))) if rgb else to_uint8(img)

    return Scene(bodies, size, bank, draw, quality=quality)
