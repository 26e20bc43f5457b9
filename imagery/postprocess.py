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
    land = drop_small_blobs(ndimage.binary_opening(land, iterations=1), pixel_m)
    if not land.any():
        return np.zeros_like(land)
    return ndimage.distance_transform_edt(~land) * pixel_m <= distance_m


def drop_small_blobs(land: np.ndarray, pixel_m: float) -> np.ndarray:
    """`land` without its connected blobs (4-connected) under MIN_LAND_AREA_M2 that do not
    touch the chip edge. Both implementations share it: labelling is sequential work."""
    labels, count = ndimage.label(land)
    if not count:
        return land
    sizes = ndimage.sum_labels(land, labels, index=np.arange(1, count + 1)) * pixel_m**2
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    keep = sizes >= MIN_LAND_AREA_M2
    keep[edge[edge > 0] - 1] = True
    return np.concatenate([[False], keep])[labels]



def chip_detections(
    out: torch.Tensor, peaks: list[Peak], chip, info: SceneInfo, scale: float
) -> list[Detection]:
    """Peaks of one chip mapped to scene pixels; keeps only those in the chip's core."""
    win = chip.window
    owned = owned_peaks(peaks, chip, scale)
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
    return [_detection(p, col, row, model_m, bool(near_land[_native_pixel(chip, col, row)]))
            for p, col, row in owned]


def owned_peaks(peaks: list[Peak], chip, scale: float) -> list[tuple[Peak, float, float]]:
    """(peak, scene column, scene row) of the peaks in the chip's core (cores partition the
    scene, so each vessel is reported by one chip)."""
    win, core = chip.window, chip.core
    owned = []
    for p in peaks:
        col, row = win.col_off + p.x * scale, win.row_off + p.y * scale
        if (core.col_off <= col < core.col_off + core.width
                and core.row_off <= row < core.row_off + core.height):
            owned.append((p, col, row))
    return owned


def _native_pixel(chip, col: float, row: float) -> tuple[int, int]:
    """The chip pixel (row, column) holding scene point (col, row)."""
    win = chip.window
    return (min(int(row - win.row_off), int(win.height) - 1),
            min(int(col - win.col_off), int(win.width) - 1))


def _detection(p: Peak, col: float, row: float, model_m: float, berthed: bool) -> Detection:
    return Detection(px_x=col, px_y=row, score=p.score, length_m=p.length_px * model_m,
                     width_m=p.width_px * model_m, heading_deg=heading_from_angle(p.angle),
                     berthed=berthed)



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




# --------------------------------------------------------------------------------------------
# Batched torch path (the model's device): what detector.detect runs
# --------------------------------------------------------------------------------------------


def batch_detections(
    out: torch.Tensor,
    raw: torch.Tensor,
    scl: torch.Tensor | None,
    chips: list,
    pixel_m: float,
    scale: float,
    threshold: float,
    kernel: int = 3,
) -> list[Detection]:
    """`chip_detections` of a whole batch, on the device of `out`: the model output (B, 6,
    S, S), `raw` the chips' native reflectance (B, C, h, w) with NaN past the scene edge and
    `scl` their SCL classes (B, h, w) or None. Only the peaks above `threshold` come back to
    the host; the masks are made only for the chips that own one of them."""
    peaks = decode_peaks_batch(out, threshold, kernel)
    owned = [owned_peaks(p, chip, scale) for p, chip in zip(peaks, chips, strict=True)]
    busy = [i for i, o in enumerate(owned) if o]
    if not busy:
        return []  # most batches of a tile
    pixels = [(k, *_native_pixel(chips[i], col, row))
              for k, i in enumerate(busy) for _, col, row in owned[i]]
    near = land_distance_at(out[busy, 1:2], raw[busy], None if scl is None else scl[busy],
                            pixel_m, pixels)
    model_m = pixel_m * scale
    flags = iter(near)
    return [_detection(p, col, row, model_m, next(flags))
            for i in busy for p, col, row in owned[i]]


def decode_peaks_batch(output: torch.Tensor, threshold: float, kernel: int = 3) -> list[list[Peak]]:
    """`decode_peaks` for a batch on the output's device: heat maxima found and their
    regression values gathered as tensors, one transfer of the (few) peaks to the host."""
    heat = torch.sigmoid(output[:, 0:1])
    is_peak = (heat == window_max(heat, kernel)) & (heat >= threshold)
    b, _, y, x = torch.nonzero(is_peak, as_tuple=True)  # row-major, as decode_peaks
    values = output[b, 2:6, y, x].reshape(-1, 4)
    table = torch.cat([torch.stack([b, y, x], 1).to(values.dtype), heat[b, 0, y, x][:, None],
                       values], 1).cpu().numpy().astype(np.float64)
    result: list[list[Peak]] = [[] for _ in range(output.shape[0])]
    angle = (0.5 * np.arctan2(table[:, 6], table[:, 7])) % math.pi
    length, width = np.exp(table[:, 4]), np.exp(table[:, 5])
    # Scores as float32 values, as decode_peaks reads them.
    scores = table[:, 3].astype(np.float32).tolist()
    for k, (bi, yi, xi) in enumerate(table[:, :3].astype(int).tolist()):
        result[bi].append(Peak(xi + 0.5, yi + 0.5, scores[k], float(length[k]),
                               float(width[k]), float(angle[k])))
    return merge_ridges_batch(result, heat[:, 0])


def window_max(x: torch.Tensor, kernel: int) -> torch.Tensor:
    """F.max_pool2d(x, kernel, 1, kernel // 2) for an odd kernel, as maxima of shifted views
    along rows then columns: the same values (a maximum is exact), and 30x faster on a CPU,
    where max_pool2d of one channel is not vectorised (0.2 against 6.2 ms a 512 px chip)."""
    if kernel % 2 == 0:
        return F.max_pool2d(x, kernel, 1, kernel // 2)
    r, (h, w) = kernel // 2, x.shape[-2:]
    padded = F.pad(x, (r, r, r, r), value=float("-inf"))
    rows = padded[..., :, 0:w]
    for k in range(1, kernel):
        rows = torch.maximum(rows, padded[..., :, k : k + w])
    out = rows[..., 0:h, :]
    for k in range(1, kernel):
        out = torch.maximum(out, rows[..., k : k + h, :])
    return out


def merge_ridges_batch(
    peaks: list[list[Peak]], heat: torch.Tensor, ratio: float = RIDGE_RATIO
) -> list[list[Peak]]:
    """`_merge_ridge_peaks` for a batch: every (stronger, weaker) pair close enough to be one
    hull is tested at once, sampling the heat along the segment on its device; the greedy
    pass then runs over the few peaks above RIDGE_MIN_SCORE only."""
    order = [sorted(p, key=lambda q: -q.score) for p in peaks]
    pairs = [(b, i, j) for b, chip in enumerate(order) for i, j in _ridge_candidates(chip)]
    joined: dict[tuple[int, int], list[int]] = {}  # (chip, weaker) -> stronger partners
    if pairs:
        for (b, i, j), hit in zip(pairs, _ridge_test(pairs, order, heat, ratio), strict=True):
            if hit:
                joined.setdefault((b, j), []).append(i)
    merged = []
    for b, chip in enumerate(order):
        kept, checked = [], set()  # checked: kept peaks that can absorb weaker ones
        for j, p in enumerate(chip):
            if p.score >= RIDGE_MIN_SCORE:
                if any(i in checked for i in joined.get((b, j), ())):
                    continue
                checked.add(j)
            kept.append(p)
        merged.append(kept)
    return merged


def _ridge_candidates(chip: list[Peak]) -> list[tuple[int, int]]:
    """(stronger, weaker) index pairs, both at least RIDGE_MIN_SCORE, within the stronger's
    reach (half its length, at least 1.5 px, at most RIDGE_REACH_PX)."""
    idx = [k for k, p in enumerate(chip) if p.score >= RIDGE_MIN_SCORE]
    if len(idx) < 2:
        return []
    xy = np.array([(chip[k].x, chip[k].y) for k in idx])
    found = []
    for a, c in cKDTree(xy).query_pairs(RIDGE_REACH_PX):
        i, j = sorted((idx[a], idx[c]))
        strong, weak = chip[i], chip[j]
        dist = math.hypot(weak.x - strong.x, weak.y - strong.y)
        if dist <= min(max(strong.length_px / 2, 1.5), RIDGE_REACH_PX):
            found.append((i, j))
    return found


def _ridge_test(pairs, order, heat: torch.Tensor, ratio: float) -> list[bool]:
    """Whether the heat stays at or above `ratio` of the weaker peak all along each pair's
    segment; the sample points are computed as `_on_ridge` computes them (float32 on the
    host, same linspace), so that both pick the same pixels."""
    most = 2 * RIDGE_REACH_PX + 1
    tables = {s: torch.linspace(0, 1, s + 1) for s in range(2, most + 1)}
    ts, sx, dx, sy, dy, floor = [], [], [], [], [], []
    for b, i, j in pairs:
        strong, weak = order[b][i], order[b][j]
        steps = max(2, math.ceil(math.hypot(weak.x - strong.x, weak.y - strong.y) * 2))
        t = tables[steps]
        ts.append(torch.cat([t, t[-1:].expand(most + 1 - len(t))]))  # pad: repeat the end
        sx.append(strong.x), dx.append(weak.x - strong.x)
        sy.append(strong.y), dy.append(weak.y - strong.y)
        floor.append(ratio * weak.score)
    t = torch.stack(ts)
    col = lambda v: torch.tensor(v, dtype=torch.float32)[:, None]  # noqa: E731
    cols = (col(sx) + t * col(dx)).floor().long()
    rows = (col(sy) + t * col(dy)).floor().long()
    batch = torch.tensor([b for b, _, _ in pairs])[:, None].expand_as(cols)
    lowest = heat[batch.to(heat.device), rows.to(heat.device), cols.to(heat.device)].amin(1)
    return (lowest >= col(floor)[:, 0].to(heat.device)).cpu().tolist()


def water_mask_batch(raw: torch.Tensor, scl: torch.Tensor | None) -> torch.Tensor:
    """`water_mask` per chip of a batch (B, h, w): SCL class 6 where a chip has any, else
    NDWI(B03, B08) > 0 where it has optical data, else dark NIR."""
    green, nir = raw[:, 1], raw[:, 3]
    ndwi = torch.nan_to_num((green - nir) / (green + nir + 1e-6), nan=1.0) > 0.0
    dark = torch.nan_to_num(nir, nan=0.0) < 0.08
    optical = torch.isfinite(green).flatten(1).any(1) & torch.isfinite(nir).flatten(1).any(1)
    water = torch.where(optical[:, None, None], ndwi, dark)
    if scl is not None:
        classed = scl == SCL_WATER
        water = torch.where(classed.flatten(1).any(1)[:, None, None], classed, water)
    return water


def binary_opening_batch(mask: torch.Tensor) -> torch.Tensor:
    """ndimage.binary_opening with its default cross and border 0, on a batch (B, h, w): the
    cross's sums by a 3x3 convolution with zero padding (exact on 0/1 values)."""
    cross = torch.tensor([[0.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 0.0]],
                         device=mask.device)[None, None]
    eroded = (F.conv2d(mask[:, None].float(), cross, padding=1) > 4.5).float()
    return F.conv2d(eroded, cross, padding=1)[:, 0] > 0.5


def disk_offsets(pixel_m: float, distance_m: float) -> dict[int, int]:
    """Half-width of each row of the disk of pixels whose centres lie within `distance_m`
    (the test distance_transform_edt's mask makes: sqrt(dy^2 + dx^2) * pixel_m <= d)."""
    reach = int(distance_m // pixel_m) + 1
    rows = {}
    for dy in range(-reach, reach + 1):
        dxs = [dx for dx in range(reach + 1)
               if math.sqrt(dy * dy + dx * dx) * pixel_m <= distance_m]
        if dxs:
            rows[dy] = max(dxs)
    return rows


def near_land_at(
    land: torch.Tensor, pixels: torch.Tensor, pixel_m: float, distance_m: float
) -> torch.Tensor:
    """Whether each of `pixels` (N, 3: chip, row, col) lies within `distance_m` of a True
    pixel of `land` (B, h, w): the disk-shaped dilation of the land read at those pixels
    only, a gather of the disk's offsets around each on the land's device. It equals
    distance_transform_edt(~land) * pixel_m <= distance_m there, without a whole-chip
    transform (a full dilation costs as much as the model's first layer on a CPU)."""
    offsets = torch.tensor([(dy, dx) for dy, half in disk_offsets(pixel_m, distance_m).items()
                            for dx in range(-half, half + 1)], device=land.device)
    rows = pixels[:, 1:2] + offsets[None, :, 0]
    cols = pixels[:, 2:3] + offsets[None, :, 1]
    inside = (rows >= 0) & (rows < land.shape[1]) & (cols >= 0) & (cols < land.shape[2])
    chips = pixels[:, 0:1].expand_as(rows)
    hits = land[chips, rows.clamp(0, land.shape[1] - 1), cols.clamp(0, land.shape[2] - 1)]
    return (hits & inside).any(1)


def land_distance_at(
    vessel_logits: torch.Tensor,
    raw: torch.Tensor,
    scl: torch.Tensor | None,
    pixel_m: float,
    pixels: list[tuple[int, int, int]],
    distance_m: float = BERTHED_DISTANCE_M,
) -> list[bool]:
    """`land_distance_mask` of each chip of a batch, read at `pixels` (chip, row, col).
    Water, vessels, the opening and the disk test run on the device; dropping the small
    blobs needs connected components, done on the host (scipy, as the reference) for these
    chips only: the opened land goes there and back, a bit per pixel of the few chips that
    own a peak."""
    native = raw.shape[-2:]
    vessels = torch.sigmoid(vessel_logits)
    if vessels.shape[-2:] != native:
        vessels = F.interpolate(vessels, size=native, mode="bilinear")
    land = binary_opening_batch(~(water_mask_batch(raw, scl) | (vessels[:, 0] > 0.5)))
    host = land.cpu().numpy()
    kept = torch.from_numpy(np.stack([drop_small_blobs(m, pixel_m) for m in host]))
    where = torch.tensor(pixels, dtype=torch.long, device=land.device).reshape(-1, 3)
    return near_land_at(kept.to(land.device), where, pixel_m, distance_m).cpu().tolist()
