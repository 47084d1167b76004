"""From light to pixels: blur, JPEG, 8-bit conversion and fluorescence cameras (NumPy + SciPy + Pillow)."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from .noise import illumination, log_uniform, pick


def blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur over the last two axes (sigma in px; skipped when tiny)."""
    if sigma < 0.3:
        return img
    return ndimage.gaussian_filter(img, (0,) * (img.ndim - 2) + (sigma, sigma), truncate=3.0)


def jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    """``img`` (uint8) after a round trip through JPEG at ``quality``; 0 leaves it as it is."""
    if not quality:
        return img
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())))


def to_uint8(img: np.ndarray) -> np.ndarray:
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def interleave(planes: np.ndarray) -> np.ndarray:
    """(C, H, W) -> (H, W, C) contiguous."""
    return np.ascontiguousarray(planes.transpose(1, 2, 0))


def pseudo_colour(rng: np.random.Generator) -> np.ndarray:
    """(3, 1, 1) channel colour of a one-channel composite: blue, green, red, magenta, cyan or white."""
    cols = [(0.1, 0.3, 1), (0, 1, 0), (1, 0, 0), (1, 0, 1), (0, 1, 1), (1, 1, 1)]
    return np.asarray(cols[int(rng.integers(len(cols)))], np.float32).reshape(3, 1, 1)


@dataclass
class FluorescenceCamera:
    """Photon counting: signal in [0, ~1] -> counts with shot noise, gain, offset, read noise."""

    bits: int
    peak: float  # photons at signal 1
    gain: float  # ADU per photon
    offset: float  # ADU
    read: float  # ADU read noise std
    background: float  # photons per pixel of stray light

    @classmethod
    def random(cls, rng: np.random.Generator, bits: int) -> FluorescenceCamera:
        if bits == 16:
            return cls(16, log_uniform(rng, 200, 3000), rng.uniform(1.0, 2.0), rng.uniform(100, 500),
                       rng.uniform(1, 8), rng.uniform(1, 40))
        peak = log_uniform(rng, 15, 400)
        return cls(8, peak, rng.uniform(0.6, 1.2) * 255 / peak, rng.uniform(0, 15), rng.uniform(0.5, 3),
                   rng.uniform(0, 0.05) * peak)

    def __call__(self, signal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        photons = np.maximum(signal, 0) * np.float32(self.peak) + np.float32(self.background)
        noise = rng.standard_normal((2, *signal.shape), np.float32)
        counts = photons + np.sqrt(photons) * noise[0]  # shot noise (Gaussian approximation of Poisson)
        adu = counts * np.float32(self.gain) + np.float32(self.offset) + np.float32(self.read) * noise[1]
        top = 65535 if self.bits == 16 else 255
        return np.clip(adu + 0.5, 0, top).astype(np.uint16 if self.bits == 16 else np.uint8)


FORMATS = ("u16", "u8", "rgb")  # fluorescence image formats: (H, W) uint16, (H, W) uint8, (H, W, 3) uint8


@dataclass
class Microscope:
    """A fluorescence microscope: PSF blur (px), an uneven light field and one camera per channel;
    ``fmt`` (one of :data:`FORMATS`) is how the image is stored."""

    psf: float
    light: np.ndarray  # (H, W) float32
    fmt: str
    cameras: list[FluorescenceCamera]

    @classmethod
    def random(cls, rng: np.random.Generator, size: tuple[int, int], psf: tuple[float, float],
               formats: tuple[float, float, float], channels: int = 1) -> Microscope:
        """PSF sigma uniform in ``psf``, format drawn with weights ``formats``, 16-bit cameras for
        ``"u16"`` and 8-bit ones otherwise."""
        sigma = rng.uniform(*psf)
        light = illumination(rng, size, 0.3, 0.8)
        fmt = pick(rng, FORMATS, formats)
        cameras = [FluorescenceCamera.random(rng, 16 if fmt == "u16" else 8) for _ in range(channels)]
        return cls(sigma, light, fmt, cameras)

    def __call__(self, signal: np.ndarray, rng: np.random.Generator, channel: int = 0) -> np.ndarray:
        """(H, W) float32 emitted signal -> (H, W) camera counts of ``channel`` (uint16 or uint8)."""
        return self.cameras[channel](blur(signal, self.psf) * self.light, rng)
