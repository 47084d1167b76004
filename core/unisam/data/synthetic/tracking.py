"""Tracking scenes with exact ground truth: fluorescence nuclei that drift, touch, cross, leave and
enter the frame and divide, with optional frames of heavy noise or blur.

:func:`generate_tracking_scene` returns the frames, ``(T, H, W)`` uint8 (or ``(T, H, W, 3)`` uint8
with ``rgb``), and the truth as :class:`unisam.tracks.Tracks`: per frame the visible part of each
object (pairwise disjoint, each at least :data:`~.sample.MIN_AREA` pixels, as in every synthetic scene)
with its id, and ``lineage`` ``{parent: [child, child]}`` for each division (the parent is last
drawn on frame ``d - 1``, its children first on frame ``d``). An object whose visible part drops below
``MIN_AREA`` (crossing, off the edge) is absent there, so a truth track may have gaps. A pure function
of ``rng`` and the arguments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from ...instances import Instances
from ...tracks import Tracks
from .bodies import Body, Radial, place, stretched, wobble
from .camera import FluorescenceCamera, blur, to_uint8
from .noise import BANK, TAU, illumination, table, texture_bank
from .render import Layers, seams, zbuffer
from .sample import collect

EVENTS = ("touch", "cross", "leave", "enter", "divide")
PSF = 1.0  # px, the blur of every frame
BLURRED_PSF = 3.5  # px, the blur of the frames in ``blur_frames``
NOISE_FACTOR = 8  # ``noise_frames`` collect this many times fewer photons (same brightness)


@dataclass
class Living(Body):
    """A body drawn only on frames ``born <= t < dies``."""

    born: float = -math.inf
    dies: float = math.inf

    def footprint(self, t, size, bank, pad=0.0, shift=(0.0, 0.0)):
        if not self.born <= t < self.dies:
            return None
        return super().footprint(t, size, bank, pad, shift)


class TrackingScene(NamedTuple):
    """frames: (T, H, W) or (T, H, W, 3) uint8. truth: the objects' tracks and lineage."""

    frames: np.ndarray
    truth: Tracks


def generate_tracking_scene(
    rng: np.random.Generator,
    n_frames: int = 24,
    size: tuple[int, int] = (128, 128),
    *,
    objects: int = 4,
    events: tuple[str, ...] = EVENTS,
    radius: tuple[float, float] = (6.0, 9.0),
    speed: float = 1.0,
    noise_frames: tuple[int, ...] = (),
    blur_frames: tuple[int, ...] = (),
    rgb: bool = False,
) -> TrackingScene:
    """A scene of ``objects`` nuclei drifting at up to ``speed`` px / frame from separate places in
    the frame, plus one group of objects per entry of ``events`` (each one of :data:`EVENTS`):

    ``"touch"``  two nuclei side by side, touching, drifting together;
    ``"cross"``  two nuclei on opposite courses that meet (overlapping, half a radius apart) mid-way;
    ``"leave"``  one that starts a quarter of the frame in from an edge and is out through it (by
                 twice its radius) from 2/3 of the sequence on;
    ``"enter"``  the reverse: out of the frame until 1/3 of the sequence, then in to a quarter;
    ``"divide"`` one that divides on a frame in the middle third into two smaller daughters that
                 move apart.

    Radii (px) are uniform in ``radius``; ``noise_frames`` / ``blur_frames`` are frame indices drawn
    with :data:`NOISE_FACTOR` times fewer photons / a :data:`BLURRED_PSF` px blur.
    """
    h, w = size
    if min(size) < 32 or n_frames < 1:
        raise ValueError(f"need size (H, W) >= 32 px a side and n_frames >= 1; got {size}, {n_frames}")
    unknown = sorted(set(events) - set(EVENTS))
    if unknown:
        raise ValueError(f"unknown events {unknown}; known: {list(EVENTS)}")
    for name, frames in (("noise_frames", noise_frames), ("blur_frames", blur_frames)):
        if any(not 0 <= t < n_frames for t in frames):
            raise ValueError(f"{name} {list(frames)} must be frame indices in 0..{n_frames - 1}")
    bodies: list[Living] = []
    lineage: dict[int, list[int]] = {}

    def nucleus(r: float, at: tuple[float, float], velocity: tuple[float, float], t0: float = 0.0,
                **life: float) -> Living:
        """A nucleus of radius r at ``at`` (y, x) on frame ``t0``, moving at ``velocity`` px / frame."""
        outline = stretched(rng, r, 0.12) * wobble(rng, 0.04)
        centre = (at[0] - velocity[0] * t0, at[1] - velocity[1] * t0)
        body = Living(Radial(outline), centre, rng.uniform(0, TAU), softness=0.8, velocity=velocity,
                      spin=rng.normal(0, 0.02), **life)
        bodies.append(body)
        return body

    def drift(scale: float = 1.0) -> tuple[float, float]:
        a, v = rng.uniform(0, TAU), rng.uniform(0.3, 1.0) * speed * scale
        return v * math.sin(a), v * math.cos(a)

    def inside(margin: float) -> tuple[float, float]:
        return rng.uniform(margin, h - margin), rng.uniform(margin, w - margin)

    mid = (n_frames - 1) / 2
    for event in events:
        r = rng.uniform(*radius)
        if event == "touch":
            a, v = rng.uniform(0, TAU), drift(0.5)
            c, d = inside(3 * r), 0.95 * r
            for s in (1, -1):
                nucleus(r, (c[0] + s * d * math.sin(a), c[1] + s * d * math.cos(a)), v, mid)
        elif event == "cross":
            a, c, v = rng.uniform(0, TAU), inside(3 * r), 1.5 * max(speed, 0.5)
            along, across = (math.sin(a), math.cos(a)), (math.cos(a), -math.sin(a))
            for s in (1, -1):
                at = (c[0] + s * 0.25 * r * across[0], c[1] + s * 0.25 * r * across[1])
                nucleus(r, at, (s * v * along[0], s * v * along[1]), mid)
        elif event in ("leave", "enter"):
            edge = int(rng.integers(4))
            axis, out = edge % 2, (-2 * r if edge < 2 else size[edge % 2] + 2 * r)
            deep = inside(3 * r)
            start = list(deep)
            start[axis] = size[axis] / 4 if edge < 2 else size[axis] * 3 / 4
            step = (out - start[axis]) / max(2 * n_frames / 3, 1)
            v = [0.0, 0.0]
            v[axis] = step if event == "leave" else -step
            t0 = 0 if event == "leave" else n_frames - 1
            nucleus(r, tuple(start), tuple(v), t0)
        else:  # divide
            t_d = int(rng.integers(n_frames // 3, max(2 * n_frames // 3, n_frames // 3 + 1)))
            at, v = inside(3 * r), drift(0.5)
            nucleus(r, at, v, t_d, dies=t_d)
            parent = len(bodies)
            a = rng.uniform(0, TAU)
            for s in (1, -1):
                off = (s * math.sin(a), s * math.cos(a))
                nucleus(0.72 * r, (at[0] + 0.55 * r * off[0], at[1] + 0.55 * r * off[1]),
                        (v[0] + 0.6 * speed * off[0], v[1] + 0.6 * speed * off[1]), t_d, born=t_d)
            lineage[parent] = [parent + 1, parent + 2]
    shrink = -(radius[1] * 1.5) / min(size)  # a negative margin keeps the free nuclei inside
    for c, r in place(rng, rng.uniform(*radius, objects), size, shrink, 0.0, 1.6):
        nucleus(r, c, drift())
    return TrackingScene(*_render(rng, bodies, n_frames, size, set(noise_frames), set(blur_frames), rgb, lineage))


def _render(rng: np.random.Generator, bodies: list[Living], n_frames: int, size: tuple[int, int],
            noisy: set[int], blurred: set[int], rgb: bool, lineage: dict[int, list[int]]) -> tuple[np.ndarray, Tracks]:
    """Frames and truth of the bodies (ids = body index + 1) through a fluorescence microscope."""
    bank = texture_bank(rng)
    m = len(bodies) + 1  # per-body tables, row 0 = no body
    bright = table(rng.uniform(0.55, 1.0, m))
    freq = table(rng.uniform(6, 14, m))
    offs = table(rng.uniform(0, BANK, (2, m)))
    light = illumination(rng, size, 0.2, 0.4)
    camera = FluorescenceCamera(8, peak=150.0, gain=1.4, offset=12.0, read=1.5, background=4.0)
    dim = FluorescenceCamera(8, 150.0 / NOISE_FACTOR, 1.4 * NOISE_FACTOR, 12.0, 1.5, 4.0 / NOISE_FACTOR)
    tint = np.asarray([0.3, 1.0, 0.5], np.float32)  # a green nuclear stain
    frames, truth = [], []
    for t in range(n_frames):
        layers: Layers = zbuffer(bodies, float(t), size, bank)
        owner = layers.owner
        signal = bright[owner] * layers.alpha * (1 + 0.2 * layers.texture(bank[1], freq, offs))
        signal *= 1 - 0.45 * (seams(owner) & (owner > 0))  # dim line where nuclei touch
        signal = blur(0.03 + signal, BLURRED_PSF if t in blurred else PSF) * light
        image = (dim if t in noisy else camera)(signal, rng)
        if rgb:
            image = to_uint8(image[..., None] / np.float32(255) * tint)
        sample = collect(image, layers.label, "nuclei")
        frames.append(image)
        truth.append(Instances.from_masks(sample.masks, ids=sample.ids))
    return np.stack(frames), Tracks(truth, lineage)
