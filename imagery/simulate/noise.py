"""Seeds and noise. Every random draw of the simulator comes from `_rng(...)` keyed by stable
integers (`_key` of a string): that is what makes a scene a pure function of its arguments.
`fractal_noise` shapes the coast, land cover, clouds and texture."""

from __future__ import annotations

import zlib

import numpy as np


def _key(text: str) -> int:
    """A stable integer for a string (Python's hash() changes between runs)."""
    return zlib.crc32(text.encode("utf-8"))


def _rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng([int(k) % (1 << 63) for k in keys])


def fractal_noise(shape: tuple[int, int], beta: float, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, unit-variance noise with a 1/f^beta power spectrum (beta 2 rough, 3+ smooth
    like clouds and terrain), by spectral synthesis."""
    h, w = shape
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    freq = np.hypot(fx, fy)
    freq[0, 0] = 1.0
    amplitude = freq ** (-beta / 2.0)
    amplitude[0, 0] = 0.0
    spectrum = amplitude * (rng.standard_normal(amplitude.shape)
                            + 1j * rng.standard_normal(amplitude.shape))
    field_ = np.fft.irfft2(spectrum, s=shape)
    field_ -= field_.mean()
    return (field_ / (field_.std() + 1e-12)).astype(np.float32)


def _coarse_noise(shape: tuple[int, int], factor: int, beta: float,
                  rng: np.random.Generator) -> np.ndarray:
    """Smooth noise made at 1/factor resolution and upsampled: cheap for large-scale fields."""
    small = (max(2, -(-shape[0] // factor) + 1), max(2, -(-shape[1] // factor) + 1))
    return _upsample(fractal_noise(small, beta, rng), factor, shape)


def _upsample(small: np.ndarray, factor: float, shape: tuple[int, int],
              row0: int = 0) -> np.ndarray:
    """Bilinear upsampling of a coarse grid (cell centres at (i + 0.5) * factor) to `shape`,
    starting at full-resolution row `row0` (so strips of a big raster line up seamlessly)."""
    rows = (np.arange(row0, row0 + shape[0]) + 0.5) / factor - 0.5
    cols = (np.arange(shape[1]) + 0.5) / factor - 0.5
    r = np.clip(rows, 0, small.shape[0] - 1.001)
    c = np.clip(cols, 0, small.shape[1] - 1.001)
    r0, c0 = r.astype(int), c.astype(int)
    fr, fc = (r - r0).astype(np.float32)[:, None], (c - c0).astype(np.float32)[None, :]
    top = small[r0][:, c0] * (1 - fc) + small[r0][:, c0 + 1] * fc
    bottom = small[r0 + 1][:, c0] * (1 - fc) + small[r0 + 1][:, c0 + 1] * fc
    return (top * (1 - fr) + bottom * fr).astype(np.float32)
