"""What follows the network: peaks of the centre heatmap, water and land-distance masks,
the berthed flag, and suppression of duplicates.

Two implementations of the per-chip work:
- the reference (numpy/scipy on the CPU, one chip at a time): `decode_peaks`, `water_mask`,
  `land_distance_mask`, `chip_detections`; training and evaluation tools use them directly;
- the batched torch path (`batch_detections`) that `detector.detect` uses: it runs on the
  model's device on a whole batch of chips, and brings back to the host only the few peaks
  above the threshold. tests/test_device_parity.py holds the two to the same detections.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from scipy.spatial import cKDTree

from imagery.scene import SCL_WATER, SceneInfo

BERTHED_DISTANCE_M = 60.0
MIN_LAND_AREA_M2 = 50_000.0  # smaller non-water blobs are ships, buoys or noise, not land
# Two maxima of the heat joined by a ridge that stays above this fraction of the weaker are
# one vessel (leave-ports-out F1 0.617 with it and the two-way hull test, 0.615 without).
RIDGE_RATIO = 0.8
# The farthest two maxima of one hull can lie apart: half of a 400 m ship at 10 m pixels.
RIDGE_REACH_PX = 20
# Weaker maxima are noise at every threshold in use (mining 0.15, detection 0.25 and up).
RIDGE_MIN_SCORE = 0.1


# --------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------


@dataclass
class Peak:
    x: float  # model-grid pixel coordinates (pixel i spans [i, i + 1))
    y: float
    score: float
    length_px: float
    width_px: float
    angle: float  # axis angle in the grid, radians, x right / y down, in [0, pi)


def decode_peaks(output: torch.Tensor, threshold: float, kernel: int = 3) -> list[list[Peak]]:
    """Local maxima of the centre heatmap above `threshold`, per batch item."""
    heat = torch.sigmoid(output[:, 0:1])
    peaks = (heat == F.max_pool2d(heat, kernel, 1, kernel // 2)) & (heat >= threshold)
    result: list[list[Peak]] = []
    for b in range(output.shape[0]):
        ys, xs = torch.nonzero(peaks[b, 0], as_tuple=True)
        reg = output[b, 2:6, ys, xs].T.tolist()
        scores = heat[b, 0, ys, xs].tolist()
        items = []
        for y, x, s, (ll, lw, s2, c2) in zip(ys.tolist(), xs.tolist(), scores, reg, strict=True):
            angle = (0.5 * math.atan2(s2, c2)) % math.pi
            items.append(Peak(x + 0.5, y + 0.5, s, math.exp(ll), math.exp(lw), angle))
        result.append(_merge_ridge_peaks(items, heat[b, 0]))
    return result


def _merge_ridge_peaks(
    peaks: list[Peak], heat: torch.Tensor, ratio: float = RIDGE_RATIO
) -> list[Peak]:
    """Drop a peak joined to a stronger one, within that one's estimated half length, by a
    ridge of heat that never falls below `ratio` of the weaker peak. A long hull often gives
    a ridge with two near-equal maxima a few pixels apart (the demo's Vostochny scene of
    2024-03-19: 0.521 and 0.521, 2 px apart, a 3 % dip between); two vessels give two hills
    with a valley between. Kept peaks sit in a grid of RIDGE_REACH_PX cells, so each peak is
    checked against its neighbours only: an untrained model at threshold 0 (hard-negative
    mining) gives thousands of peaks a chip, and those under RIDGE_MIN_SCORE, below every
    operating threshold, are kept as they are rather than checked."""
    kept: list[Peak] = []
    grid: dict[tuple[int, int], list[Peak]] = {}
    cell = RIDGE_REACH_PX
    for p in sorted(peaks, key=lambda p: -p.score):
        if p.score < RIDGE_MIN_SCORE:
            kept.append(p)
            continue
        cx, cy = int(p.x // cell), int(p.y // cell)
        near = (q for dx in (-1, 0, 1) for dy in (-1, 0, 1)
                for q in grid.get((cx + dx, cy + dy), ()))
        if not any(_on_ridge(q, p, heat, ratio) for q in near):
            kept.append(p)
            grid.setdefault((cx, cy), []).append(p)
    return kept


def _on_ridge(strong: Peak, weak: Peak, heat: torch.Tensor, ratio: float) -> bool:
    dist = math.hypot(weak.x - strong.x, weak.y - strong.y)
    if dist > min(max(strong.length_px / 2, 1.5), RIDGE_REACH_PX):
        return False
    steps = max(2, math.ceil(dist * 2))
    t = torch.linspace(0, 1, steps + 1)
    cols = (strong.x + t * (weak.x - strong.x)).floor().long()
    rows = (strong.y + t * (weak.y - strong.y)).floor().long()
    return bool(heat[rows, cols].min() >= ratio * weak.score)


def heading_from_angle(angle: float) -> float:
    """Grid axis angle (x right, y down) to an axial heading in degrees clockwise from north."""
    return math.degrees(math.atan2(math.cos(angle), -math.sin(angle))) % 180.0



@dataclass
class Detection:
    px_x: float  # scene pixel coordinates (pixel i spans [i, i + 1))
    px_y: float
    score: float
    length_m: float
    width_m: float
    heading_deg: float
    berthed: bool = False
    lon: float = 0.0
    lat: float = 0.0
    zone: str | None = None



# --------------------------------------------------------------------------------------------
# Reference masks and per-chip detections (numpy/scipy, one chip)
# --------------------------------------------------------------------------------------------


def water_mask(chip_array: np.ndarray, scl: np.ndarray | None) -> np.ndarray:
    """Water from SCL class 6 when present, else NDWI(B03, B08) > 0, else dark NIR."""
    green, nir = chip_array[1], chip_array[3]
    if scl is not None and (scl == SCL_WATER).any():
        return scl == SCL_WATER
    if np.isfinite(green).any() and np.isfinite(nir).any():
        ndwi = (green - nir) / (green + nir + 1e-6)
        return np.nan_to_num(ndwi, nan=1.0) > 0.0
    return np.nan_to_num(nir, nan=0.0) < 0.08


def land_distance_mask(
    water: np.ndarray, vessels: np.ndarray, pixel_m: float, distance_m: float = BERTHED_DISTANCE_M
) -> np.ndarray:
    """Pixels within `distance_m` of land. Land is non-water minus the vessels themselves and
    minus small blobs that do not touch the chip edge (a cut-off coast may be anything)."""
    land = ~(water | vessels)
    land = ndimage.binary_opening(land, iterations=1)
    labels, count = ndimage.label(land)
    if count:
        sizes = ndimage.sum_labels(land, labels, index=np.arange(1, count + 1)) * pixel_m**2
        edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
        keep = sizes >= MIN_LAND_AREA_M2
        keep[edge[edge > 0] - 1] = True
        land = np.concatenate([[False], keep])[labels]
    if not land.any():
        return np.zeros_like(land)
    return ndimage.distance_transform_edt(~land) * pixel_m <= distance_m




def _chip_detections(
    out: torch.Tensor, peaks: list[Peak], chip, info: SceneInfo, scale: float
) -> list[Detection]:
    """Peaks of one chip mapped to scene pixels; keeps only those in the chip's core."""
    win, core = chip.window, chip.core
    owned = []
    for p in peaks:
        col, row = win.col_off + p.x * scale, win.row_off + p.y * scale
        if (core.col_off <= col < core.col_off + core.width
                and core.row_off <= row < core.row_off + core.height):
            owned.append((p, col, row))
    if not owned:
        return []  # most chips of a tile: skip the land mask
    native_size = (int(win.height), int(win.width))
    vessels = torch.sigmoid(out[1:2][None])
    if vessels.shape[-2:] != native_size:
        vessels = F.interpolate(vessels, size=native_size, mode="bilinear")
    near_land = land_distance_mask(
        water_mask(chip.array, chip.scl), vessels[0, 0].numpy() > 0.5, info.pixel_size_m
    )
    model_m = info.pixel_size_m * scale
    found = []
    for p, col, row in owned:
        r = min(int(row - win.row_off), native_size[0] - 1)
        c = min(int(col - win.col_off), native_size[1] - 1)
        found.append(
            Detection(
                px_x=col,
                px_y=row,
                score=p.score,
                length_m=p.length_px * model_m,
                width_m=p.width_px * model_m,
                heading_deg=heading_from_angle(p.angle),
                berthed=bool(near_land[r, c]),
            )
        )
    return found




def suppress(
    detections: list[Detection], pixel_m: float, radius_px: float, box_fraction: float = 0.0
) -> list[Detection]:
    """Greedy NMS in scene pixels: drop a detection within `radius_px` of a higher-scoring one
    (seam duplicates), or, with `box_fraction` > 0, when either centre lies inside the other's
    estimated hull scaled by that fraction (a second peak along one long vessel). Vessels side
    by side stay apart: their centres lie outside each other's hull across the beam."""
    if not detections:
        return []
    order = sorted(detections, key=lambda d: -d.score)
    xy = np.array([(d.px_x, d.px_y) for d in order])
    reach = max(radius_px, box_fraction * max(d.length_m for d in order) / pixel_m / 2)
    tree = cKDTree(xy)
    dropped = np.zeros(len(order), dtype=bool)
    for i, d in enumerate(order):
        if dropped[i]:
            continue
        for j in tree.query_ball_point(xy[i], reach):
            if j <= i or dropped[j]:
                continue
            off = xy[j] - xy[i]
            near = math.hypot(*off) <= radius_px
            # Either centre inside the other's hull: the size and heading estimates of two
            # peaks on one hull differ, and the narrower one may miss the other's centre.
            inside = box_fraction > 0 and (_in_hull(off, d, pixel_m, box_fraction)
                                           or _in_hull(-off, order[j], pixel_m, box_fraction))
            dropped[j] = near or inside
    return [d for d, gone in zip(order, dropped, strict=True) if not gone]


def _in_hull(offset: np.ndarray, d: Detection, pixel_m: float, fraction: float) -> bool:
    """Whether a point `offset` scene pixels from `d`'s centre lies in `d`'s estimated hull
    (its length x width rectangle along its heading) scaled by `fraction`."""
    h = math.radians(d.heading_deg)
    axis = (math.sin(h), -math.cos(h))  # heading (clockwise from north) in grid x right, y down
    along = offset[0] * axis[0] + offset[1] * axis[1]
    across = offset[0] * axis[1] - offset[1] * axis[0]
    return (abs(along) <= fraction * d.length_m / pixel_m / 2
            and abs(across) <= fraction * d.width_m / pixel_m / 2)


