"""The pixels of a simulated scene: each vessel's look and its hull painted by area coverage,
the surface reflectance by class and season, clouds with their shadows, the SCL band, and the
sensor (PSF blur, noise, quantisation to L2A digital numbers)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from scipy import ndimage

from imagery.ports import Port
from imagery.simulate.constants import (
    CLASS_SPECTRA,
    CLASS_TEXTURE,
    FOREST,
    HARBOUR_WATER,
    NOISE_SIGMA,
    PIXEL_M,
    PSF_SIGMA,
    SCALE,
    SCL_CIRRUS,
    SCL_CLOUD_HIGH,
    SCL_CLOUD_MED,
    SCL_OF_CLASS,
    SCL_SHADOW,
    SCL_VESSEL,
    WATER,
)
from imagery.simulate.layout import PortLayout
from imagery.simulate.noise import _coarse_noise, _key, _rng
from imagery.simulate.timing import solar_position


@dataclass(frozen=True)
class _Look:
    deck: np.ndarray  # (5,) reflectance of the deck
    white: np.ndarray  # (5,) superstructure
    bridge: tuple[float, float]  # superstructure span, fractions of length from the stern
    bow: float  # fraction of length over which the bow tapers
    hatch_amp: float  # hatch-cover banding on bulk carriers and container ships
    hatch_period: float


def _vessel_look(vessel_id: str, look_key: int) -> _Look:
    """Deterministic per vessel: the same ship looks the same in every scene. Decks are
    mostly bright (0.18-0.38, a little redder in NIR as on real S2 ships), a third are dark
    or rusty tanker decks, with a white superstructure aft."""
    rng = _rng(_key(vessel_id), look_key, 3)
    if rng.random() < 0.3:
        deck = rng.uniform(0.06, 0.11) * np.array([0.75, 0.8, 1.05, 1.2, 1.1])
    else:
        deck = rng.uniform(0.18, 0.38) * np.array([0.85, 0.93, 1.0, 1.08, 0.9])
    white = rng.uniform(0.33, 0.45) * np.array([1.0, 1.0, 1.0, 1.02, 0.85])
    start = rng.uniform(0.04, 0.12)
    hatch = rng.uniform(0.1, 0.25) if rng.random() < 0.5 else 0.0
    return _Look(deck.astype(np.float32), white.astype(np.float32),
                 (start, start + rng.uniform(0.07, 0.14)), rng.uniform(0.1, 0.18), hatch,
                 rng.uniform(0.06, 0.1))


def render_vessel(image: np.ndarray, cover: np.ndarray | None, px_x: float, px_y: float,
                  heading_deg: float, length_px: float, width_px: float, look: _Look,
                  supersample: int = 5, shadow_px: tuple[float, float] | None = None) -> None:
    """Paint one hull into `image` (C, H, W) by area coverage: each pixel mixes water and hull
    in proportion to the hull area inside it, as a 10 m detector would integrate it. The hull
    is clipped at the image edges; `cover` (H, W) keeps the largest coverage seen.
    `shadow_px` (columns, rows) throws the hull's shadow that far first: the dark rim on the
    side away from the sun that separates a hull from a bright quay."""
    shift = shadow_px or (0.0, 0.0)
    reach = length_px / 2 + 2 + max(abs(shift[0]), abs(shift[1]))
    c0, c1 = max(0, int(px_x - reach)), min(image.shape[2], int(px_x + reach) + 1)
    r0, r1 = max(0, int(px_y - reach)), min(image.shape[1], int(px_y + reach) + 1)
    if c0 >= c1 or r0 >= r1:
        return
    offs = (np.arange(supersample) + 0.5) / supersample
    xs = (np.arange(c0, c1)[:, None] + offs).ravel() - px_x
    ys = (np.arange(r0, r1)[:, None] + offs).ravel() - px_y
    shape = (r1 - r0, supersample, c1 - c0, supersample)
    patch = image[:, r0:r1, c0:c1]
    if shadow_px:
        deck_s, white_s = _hull_samples(xs - shift[0], ys - shift[1], heading_deg, length_px,
                                        width_px, look)
        shade = ((deck_s > 0) | (white_s > 0)).reshape(shape).mean(axis=(1, 3))
        patch *= 1 - 0.6 * shade
    deck_w, white_w = _hull_samples(xs, ys, heading_deg, length_px, width_px, look)
    deck_cover = deck_w.reshape(shape).mean(axis=(1, 3))
    white_cover = white_w.reshape(shape).mean(axis=(1, 3))
    hull = ((deck_w > 0) | (white_w > 0)).reshape(shape).mean(axis=(1, 3))
    patch *= 1 - hull
    patch += look.deck[:, None, None] * deck_cover + look.white[:, None, None] * white_cover
    if cover is not None:
        np.maximum(cover[r0:r1, c0:c1], hull, out=cover[r0:r1, c0:c1])


def _hull_samples(xs: np.ndarray, ys: np.ndarray, heading_deg: float, length_px: float,
                  width_px: float, look: _Look) -> tuple[np.ndarray, np.ndarray]:
    h = math.radians(heading_deg)
    # Bow direction in pixel axes (rows grow southwards).
    along = xs[None, :] * math.sin(h) - ys[:, None] * math.cos(h)
    across = xs[None, :] * math.cos(h) + ys[:, None] * math.sin(h)
    return _hull_weights(along / length_px, np.abs(across) / (width_px / 2), look)


def _hull_weights(a: np.ndarray, b: np.ndarray, look: _Look) -> tuple[np.ndarray, np.ndarray]:
    """a: position along the hull in lengths (-0.5 stern .. 0.5 bow); b: |across| in half
    widths. Returns per-sample deck weight (with hatch banding) and superstructure mask."""
    taper = np.clip((0.5 - a) / look.bow, 0.2, 1.0)  # pointed bow
    inside = (np.abs(a) <= 0.5) & (b <= taper)
    from_stern = a + 0.5
    white = inside & (from_stern >= look.bridge[0]) & (from_stern <= look.bridge[1]) & (b <= 0.85)
    deck = (inside & ~white).astype(np.float32)
    if look.hatch_amp:
        cargo = (from_stern > look.bridge[1]) & (a < 0.5 - look.bow)
        band = np.sign(np.sin(2 * np.pi * from_stern / look.hatch_period))
        deck *= np.where(cargo, 1 + look.hatch_amp * band, 1.0).astype(np.float32)
    return deck, white.astype(np.float32)


def _season(moment: datetime) -> np.ndarray:
    """Forest spectrum through the year: leaf-off in winter (low NIR), full in July."""
    doy = moment.timetuple().tm_yday
    summer = 0.5 * (1 - math.cos(2 * math.pi * (doy - 20) / 365))
    winter = np.array([0.035, 0.050, 0.045, 0.170, 0.160], dtype=np.float32)
    return winter + summer * (CLASS_SPECTRA[FOREST] - winter)


def _surface(layout: PortLayout, moment: datetime, rng: np.random.Generator) -> np.ndarray:
    """Surface reflectance (5, H, W) before vessels, clouds and the sensor."""
    shape = (layout.height, layout.width)
    table = CLASS_SPECTRA.copy()
    table[FOREST] = _season(moment)
    water = layout.classes == WATER
    swell = 1 + 0.06 * _coarse_noise(shape, 8, 3.0, rng)  # slow variation of the sea surface
    glint = rng.uniform(0.0, 0.006) * np.clip(1 + _coarse_noise(shape, 4, 2.5, rng), 0, None)
    modulation = np.where(water, swell, 1 + layout.texture * CLASS_TEXTURE[layout.classes])
    out = np.empty((5, *shape), dtype=np.float32)
    for b in range(5):
        base = table[:, b][layout.classes]
        base = np.where(water, base * (1 - layout.turbid) + HARBOUR_WATER[b] * layout.turbid, base)
        out[b] = base * modulation + np.where(water, glint, 0)
    return out


def _clouds(layout: PortLayout, port: Port, moment: datetime, fraction: float,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Cloud opacity and shadow opacity (H, W). The cloud field covers exactly `fraction` of
    the scene; the shadow is the same field moved away from the sun by cloud height over the
    tangent of the sun's elevation (so clouds outside the scene may shade it)."""
    shape = (layout.height, layout.width)
    if fraction <= 0:
        zero = np.zeros(shape, dtype=np.float32)
        return zero, zero
    centre = port.aoi.centroid
    elevation, azimuth = solar_position(centre.x, centre.y, moment)
    reach = min(rng.uniform(800, 2500) / math.tan(math.radians(max(elevation, 10))), 5000)
    east, north = -reach * math.sin(math.radians(azimuth)), -reach * math.cos(
        math.radians(azimuth))
    sx, sy = round(east / PIXEL_M), round(-north / PIXEL_M)
    big = _coarse_noise((shape[0] + abs(sy), shape[1] + abs(sx)), 2, 3.4, rng)
    oy, ox = max(sy, 0), max(sx, 0)
    inside = big[oy:oy + shape[0], ox:ox + shape[1]]
    threshold = inside.min() - 1 if fraction >= 1 else np.quantile(inside, 1 - fraction)
    alpha = np.where(big > threshold, 0.05 + 0.95 * np.clip(big - threshold, 0, 1), 0)
    alpha = alpha.astype(np.float32)
    cloud = alpha[oy:oy + shape[0], ox:ox + shape[1]]
    shadow = alpha[oy - sy:oy - sy + shape[0], ox - sx:ox - sx + shape[1]]
    return cloud, shadow


def _apply_clouds(surface: np.ndarray, cloud: np.ndarray, shadow: np.ndarray,
                  rng: np.random.Generator) -> None:
    if not cloud.any() and not shadow.any():
        return
    surface *= 1 - 0.7 * shadow  # diffuse skylight keeps about 30 % in the shadow
    brightness = rng.uniform(0.45, 0.75)
    spectrum = brightness * np.array([1.0, 0.98, 0.97, 0.99, 0.72], dtype=np.float32)
    thickness = cloud * (0.75 + 0.25 * cloud)
    surface *= 1 - cloud
    surface += spectrum[:, None, None] * thickness


def _scl(layout: PortLayout, cover: np.ndarray, cloud: np.ndarray,
         shadow: np.ndarray) -> np.ndarray:
    scl = SCL_OF_CLASS[layout.classes]
    scl[cover >= 0.5] = SCL_VESSEL  # Sen2Cor calls bright hulls non-vegetated, not water
    scl[shadow > 0.25] = SCL_SHADOW
    scl[cloud > 0] = SCL_CIRRUS  # thin, semi-transparent edges
    scl[cloud >= 0.25] = SCL_CLOUD_MED
    scl[cloud >= 0.6] = SCL_CLOUD_HIGH
    return scl


def _sensor(surface: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """PSF blur, noise and quantisation to L2A digital numbers (reflectance x 10000)."""
    _blur(surface)
    for b in range(surface.shape[0]):
        surface[b] += rng.standard_normal(surface.shape[1:], dtype=np.float32) * NOISE_SIGMA[b]
    return _quantize(surface)


def _blur(surface: np.ndarray) -> None:
    for b, sigma in enumerate(PSF_SIGMA):
        ndimage.gaussian_filter(surface[b], sigma, output=surface[b], mode="nearest",
                                truncate=3.0)


def _quantize(surface: np.ndarray) -> np.ndarray:
    surface *= SCALE  # in place: a strip of a full tile is 100+ MB per copy
    surface += 0.5
    np.clip(surface, 1, 65535, out=surface)
    return surface.astype(np.uint16)
