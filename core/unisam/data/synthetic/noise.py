"""Random draws and noise textures shared by every kind of scene (NumPy + SciPy)."""

from __future__ import annotations

import colorsys
import math
from collections.abc import Sequence

import numpy as np
from scipy import fft

BANK = 128  # side of the periodic noise textures objects read from
TAU = 2 * math.pi


def pick(rng: np.random.Generator, options: Sequence, p: Sequence[float]):
    """One of ``options`` with weights ``p`` (cheaper than ``rng.choice`` for short lists)."""
    r = rng.random() * sum(p)
    for option, weight in zip(options, p):
        r -= weight
        if r < 0:
            return option
    return options[-1]


def sign(rng: np.random.Generator) -> float:
    return 1.0 if rng.random() < 0.5 else -1.0


def log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return math.exp(rng.uniform(math.log(lo), math.log(hi)))


def table(values) -> np.ndarray:
    """Per-body parameters as float32 (row 0 stands for 'no body')."""
    return np.asarray(values, np.float32)


def random_colour(rng: np.random.Generator, saturation: float = 2.2) -> np.ndarray:
    """(3, 1, 1) float32 RGB in [0, 1], mostly muted as in photographs (more so for larger ``saturation``)."""
    rgb = colorsys.hsv_to_rgb(rng.random(), rng.beta(1.2, saturation), rng.beta(2.0, 1.6))
    return np.asarray(rgb, np.float32).reshape(3, 1, 1)


def pink_noise(rng: np.random.Generator, size: tuple[int, int], beta: float, n: int = 1) -> np.ndarray:
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


def texture_bank(rng: np.random.Generator) -> np.ndarray:
    """(2, B, B) float32 periodic textures: [0] multi-scale 1/f**2 noise, [1] blobby noise of one scale."""
    f2 = np.fft.fftfreq(BANK)[:, None] ** 2 + np.fft.rfftfreq(BANK)[None, :] ** 2
    spec = rng.standard_normal((2, *f2.shape)) + 1j * rng.standard_normal((2, *f2.shape))
    blobs = fft.irfft2(spec[1] * np.exp(-2 * np.pi**2 * 2.0**2 * f2), s=(BANK, BANK))
    pink = pink_noise(rng, (BANK, BANK), 2.0)[0]
    return np.stack([pink, blobs / blobs.std()]).astype(np.float32)


def lookup(tex: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Bilinear read of a periodic (B, B) texture at float32 coordinates (any shape, wraps around)."""
    y0, x0 = np.floor(y), np.floor(x)
    fy, fx = y - y0, x - x0
    m = BANK - 1
    iy, ix = y0.astype(np.intp) & m, x0.astype(np.intp) & m
    iy1, ix1 = ((iy + 1) & m) * BANK, (ix + 1) & m
    iy *= BANK
    flat = tex.ravel()
    top = flat[iy + ix]
    top += (flat[iy + ix1] - top) * fx
    bottom = flat[iy1 + ix]
    bottom += (flat[iy1 + ix1] - bottom) * fx
    top += (bottom - top) * fy
    return top


def illumination(rng: np.random.Generator, size: tuple[int, int], tilt: float, vignette: float) -> np.ndarray:
    """(H, W) float32 smooth multiplicative light field: a tilt plus an off-centre vignette."""
    h, w = size
    y = (np.arange(h, dtype=np.float32)[:, None] - h / 2) / max(h, w)
    x = (np.arange(w, dtype=np.float32)[None, :] - w / 2) / max(h, w)
    a, cy, cx = rng.uniform(0, TAU), rng.uniform(-0.3, 0.3), rng.uniform(-0.3, 0.3)
    g = 2 * rng.uniform(0, tilt)
    vignette = 2 * rng.uniform(0, vignette) * ((x - cx) ** 2 + (y - cy) ** 2)
    light = 1 + g * math.cos(a) * x + g * math.sin(a) * y - vignette
    return np.maximum(light, 0.2)


def add_specks(rng: np.random.Generator, canvas: np.ndarray, count: int, lo: float, hi: float,
               scale: float = 1.0) -> np.ndarray:
    """Raise ``count`` random pixels of the (H, W) float32 ``canvas`` (in place, returned) by
    uniform(lo, hi) * ``scale`` each; blurred, they become dust, debris or out-of-focus spots."""
    h, w = canvas.shape
    for _ in range(count):
        canvas[int(rng.integers(0, h)), int(rng.integers(0, w))] += rng.uniform(lo, hi) * scale
    return canvas
