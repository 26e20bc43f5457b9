"""Labelled scenes and augmented training crops.

A labelled folder holds `scene.tif` (the scene format, any subset of the bands) and
`labels.geojson`: WGS84 Polygons (or MultiPolygons) outline vessels (the sen2ships layout);
analysts' exported chips use the same layout and may add Point features, either positive
(a vessel with no outline) or negative (`"negative": true`, or `label`/`category` naming a
non-vessel) to teach the model what is not a vessel, or `"ignore": true`: a detection nobody
reviewed, around which the loss is masked (it may be a vessel: never teach it as background).

Crops are sampled straight from the scene in memory with one affine `grid_sample`: pixel-size
jitter (8-10 m), any rotation and a flip in one resampling, so labels stay exact.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import shapely
import torch
import torch.nn.functional as F
from pyproj import Transformer
from rasterio.features import rasterize
from scipy import ndimage
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

from imagery.detector import PIXEL_RANGE_M, water_mask
from imagery.scene import SCENE_BANDS, SceneInfo, open_scene, read_reflectance

IGNORE_RADIUS_M = 60.0  # around an unreviewed detection: a large hull's half length and more
NEGATIVE_LABELS = {"negative", "not_ship", "not_vessel", "no_vessel", "false_positive", "none"}
# Haze adds most in the blue and least in the SWIR (Rayleigh and aerosol scattering).
HAZE_SPECTRUM = np.array([1.0, 0.8, 0.6, 0.4, 0.2], dtype=np.float32)


class LabelsError(ValueError):
    """A labelled folder that cannot be used; the message names the file."""


@dataclass
class Ship:
    x: float  # centre in scene pixel coordinates (pixel i spans [i, i + 1))
    y: float
    length: float  # pixels; 0 when unknown (point label)
    width: float
    angle: float  # long axis, radians, x right / y down


@dataclass
class LabelledScene:
    name: str
    info: SceneInfo
    image: torch.Tensor  # (5, H, W) reflectance, 0 where a band is missing or outside
    present: torch.Tensor  # (5,) bool
    mask: torch.Tensor  # (1, 1, H, W) float, 1 on vessel outlines
    ships: list[Ship]
    negatives: np.ndarray  # (M, 2) pixel x, y
    coast: np.ndarray  # (K, 2) pixel x, y near the water's edge: quays, piers, beaches
    # (J, 2) pixel x, y of unreviewed detections: no supervision within IGNORE_RADIUS_M of them
    ignore: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))

    @property
    def pixel_m(self) -> float:
        return self.info.pixel_size_m


def find_scene_dirs(data_dirs: list[str | os.PathLike]) -> list[Path]:
    """Each argument is a labelled folder or a folder of them (sorted, so runs repeat)."""
    found: list[Path] = []
    for d in data_dirs:
        d = Path(d)
        if (d / "scene.tif").exists():
            found.append(d)
        elif d.is_dir():
            found.extend(sorted(p.parent for p in d.glob("*/scene.tif")))
        else:
            raise LabelsError(f"{d}: no such directory")
    if not found:
        raise LabelsError(f"no labelled folders (scene.tif + labels.geojson) in {data_dirs}")
    return found


def _is_negative(props: dict) -> bool:
    if props.get("negative") is True:
        return True
    label = str(props.get("label") or props.get("category") or "").strip().lower()
    return label in NEGATIVE_LABELS


def ship_from_polygon(poly: BaseGeometry) -> Ship:
    """Centre (centroid, or a point inside when the centroid falls outside) and the minimum
    rotated rectangle's length, width and axis angle."""
    centre = poly.centroid
    if not poly.buffer(0.5).contains(centre):
        centre = poly.representative_point()
    rect = np.asarray(poly.minimum_rotated_rectangle.exterior.coords)[:4]
    edges = np.diff(np.vstack([rect, rect[:1]]), axis=0)[:2]
    lengths = np.hypot(edges[:, 0], edges[:, 1])
    major = int(np.argmax(lengths))
    angle = math.atan2(edges[major, 1], edges[major, 0]) % math.pi
    return Ship(centre.x, centre.y, float(lengths.max()), float(lengths.min()), angle)


def read_labels(path: Path, info: SceneInfo) -> tuple[list, list[Ship], np.ndarray, np.ndarray]:
    """Polygons (scene CRS), ships (pixel coordinates), negative points and ignored points
    (unreviewed detections) from a labels file."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise LabelsError(f"{path}: cannot read labels ({exc})") from None
    to_scene = Transformer.from_crs("EPSG:4326", info.crs, always_xy=True)
    inverse = ~info.transform

    def to_pixels(xy: np.ndarray) -> np.ndarray:
        x, y = to_scene.transform(xy[:, 0], xy[:, 1])
        col, row = inverse * (np.asarray(x), np.asarray(y))
        return np.column_stack([col, row])

    polygons, ships, negatives, ignore = [], [], [], []
    for i, feat in enumerate(doc.get("features") or []):
        props = feat.get("properties") or {}
        try:
            geom = shape(feat["geometry"])
        except Exception as exc:
            raise LabelsError(f"{path}: feature {i}: invalid geometry ({exc})") from None
        pixel_geom = shapely.transform(geom, to_pixels)
        if geom.geom_type == "Point":
            xy = (pixel_geom.x, pixel_geom.y)
            if props.get("ignore") is True:
                ignore.append(xy)
            elif _is_negative(props):
                negatives.append(xy)
            else:
                ships.append(Ship(xy[0], xy[1], 0.0, 0.0, 0.0))
        elif geom.geom_type in ("Polygon", "MultiPolygon") and not _is_negative(props):
            polygons.append(shapely.transform(geom, lambda xy: np.column_stack(
                to_scene.transform(xy[:, 0], xy[:, 1]))))
            ships.append(ship_from_polygon(pixel_geom))
    return (polygons, ships, np.asarray(negatives, dtype=np.float64).reshape(-1, 2),
            np.asarray(ignore, dtype=np.float64).reshape(-1, 2))


def load_labelled_scene(folder: str | os.PathLike) -> LabelledScene:
    folder = Path(folder)
    info = open_scene(folder / "scene.tif", require_bands=None)
    labels = folder / "labels.geojson"
    if not labels.exists():
        raise LabelsError(f"{labels}: missing (every labelled folder needs labels.geojson)")
    polygons, ships, negatives, ignore = read_labels(labels, info)
    reflectance = read_reflectance(info, SCENE_BANDS)
    coast = coast_pixels(reflectance)
    image = np.nan_to_num(reflectance, nan=0.0)
    mask = np.zeros((info.height, info.width), dtype=np.float32)
    if polygons:
        mask = rasterize([(p, 1.0) for p in polygons], out_shape=mask.shape,
                         transform=info.transform, dtype="float32")
    for s in ships:
        if s.length == 0:  # point label: a small blob stands in for the outline
            r, c = int(s.y), int(s.x)
            mask[max(r - 1, 0) : r + 2, max(c - 1, 0) : c + 2] = 1.0
    return LabelledScene(
        name=folder.name,
        info=info,
        image=torch.from_numpy(image),
        present=torch.tensor([b in info.bands for b in SCENE_BANDS]),
        mask=torch.from_numpy(mask)[None, None],
        ships=ships,
        negatives=negatives,
        coast=coast,
        ignore=ignore,
    )


def coast_pixels(reflectance: np.ndarray, step: int = 3) -> np.ndarray:
    """Pixels within ~3 px of the water's edge (every `step`-th), where quays and piers look
    most like vessels: crops centred there teach the model what is not a vessel."""
    water = water_mask(reflectance, None)
    band = ndimage.binary_dilation(water, iterations=3) & ~ndimage.binary_erosion(water,
                                                                                  iterations=3)
    rows, cols = np.nonzero(band[::step, ::step])
    return np.column_stack([cols * step + 0.5, rows * step + 0.5]).astype(np.float64)


def load_labelled(data_dirs: list[str | os.PathLike]) -> list[LabelledScene]:
    return [load_labelled_scene(d) for d in find_scene_dirs(data_dirs)]


# --------------------------------------------------------------------------------------------
# Augmented crops
# --------------------------------------------------------------------------------------------


@dataclass
class CropConfig:
    size: int = 128
    pixel_range: tuple[float, float] = PIXEL_RANGE_M
    p_ship: float = 0.55  # crops centred near a vessel
    p_negative: float = 0.1  # crops near an analyst's negative point, when there are any
    p_coast: float = 0.25  # crops centred on the water's edge (quays: the hard negatives)
    sigma_along: float = 0.2  # heat Gaussian: fraction of the vessel length (min 1 px)
    sigma_across: float = 0.3  # fraction of the vessel width (min 0.8 px)
    p_drop_blue: float = 0.15  # band dropout, so scenes missing bands still serve
    p_nir_swir_only: float = 0.1
    gain: float = 0.25  # log-uniform brightness gain range (+-)
    p_haze: float = 0.5
    haze: float = 0.12  # max added haze/glint reflectance
    noise: float = 0.004


def _affine(rng: np.random.Generator, scale: float) -> np.ndarray:
    """Model offset -> native offset: scale, any rotation, random flip."""
    phi = rng.uniform(0, 2 * math.pi)
    rot = np.array([[math.cos(phi), -math.sin(phi)], [math.sin(phi), math.cos(phi)]])
    flip = np.diag([-1.0, 1.0]) if rng.random() < 0.5 else np.eye(2)
    return scale * rot @ flip


def _pick_centre(rng: np.random.Generator, scenes: list[LabelledScene], cfg: CropConfig):
    u = rng.random()
    if u < cfg.p_ship:
        owners = [(i, s) for i, sc in enumerate(scenes) for s in sc.ships]
        i, ship = owners[rng.integers(len(owners))]
        jitter = rng.uniform(-0.35, 0.35, 2) * cfg.size * 9.0 / scenes[i].pixel_m
        return i, ship.x + jitter[0], ship.y + jitter[1]
    negs = [(i, p) for i, sc in enumerate(scenes) for p in sc.negatives]
    if negs and u < cfg.p_ship + cfg.p_negative:
        i, p = negs[rng.integers(len(negs))]
        jitter = rng.uniform(-0.35, 0.35, 2) * cfg.size * 9.0 / scenes[i].pixel_m
        return i, p[0] + jitter[0], p[1] + jitter[1]
    coasts = [i for i, sc in enumerate(scenes) if len(sc.coast)]
    if coasts and rng.random() < cfg.p_coast / max(1e-9, 1 - cfg.p_ship):
        i = coasts[rng.integers(len(coasts))]
        x, y = scenes[i].coast[rng.integers(len(scenes[i].coast))]
        return i, x, y
    areas = np.array([sc.info.width * sc.info.height for sc in scenes], dtype=float)
    i = int(rng.choice(len(scenes), p=areas / areas.sum()))
    return i, rng.uniform(0, scenes[i].info.width), rng.uniform(0, scenes[i].info.height)


def _sample_grid(scene: LabelledScene, centre: np.ndarray, lin: np.ndarray, size: int):
    """Normalised grid_sample coordinates of the model pixel centres of one crop."""
    d = torch.arange(size, dtype=torch.float64) + 0.5 - size / 2
    dv, du = torch.meshgrid(d, d, indexing="ij")
    lin_t = torch.from_numpy(lin)
    px = centre[0] + lin_t[0, 0] * du + lin_t[0, 1] * dv
    py = centre[1] + lin_t[1, 0] * du + lin_t[1, 1] * dv
    gx = 2 * px / scene.info.width - 1
    gy = 2 * py / scene.info.height - 1
    return torch.stack([gx, gy], dim=-1).float()[None]


def _photometric(rng: np.random.Generator, img: torch.Tensor, cfg: CropConfig) -> torch.Tensor:
    """Gain, then haze or sun glint: contrast lost (x t) and path radiance added, with a
    spectrum between Rayleigh-like (blue-heavy) and flat (glint), then sensor noise."""
    gain = math.exp(rng.uniform(-cfg.gain, cfg.gain)) * rng.uniform(0.92, 1.08, 5)
    img = img * torch.from_numpy(gain).float()[:, None, None]
    if rng.random() < cfg.p_haze:
        mix = rng.uniform()
        spectrum = mix * HAZE_SPECTRUM + (1 - mix) * np.ones(5, dtype=np.float32)
        offset = rng.uniform(0, cfg.haze) * spectrum
        img = img * rng.uniform(0.7, 1.0) + torch.from_numpy(offset).float()[:, None, None]
    noise = rng.standard_normal(img.shape, dtype=np.float32) * cfg.noise
    return img + torch.from_numpy(noise)


def _band_dropout(rng: np.random.Generator, present: torch.Tensor, cfg: CropConfig):
    present = present.clone()
    u = rng.random()
    if u < cfg.p_nir_swir_only:
        present[:3] = False
    elif u < cfg.p_nir_swir_only + cfg.p_drop_blue:
        present[0] = False
    return present


def _targets(ships: list[Ship], centre, lin: np.ndarray, size: int, cfg: CropConfig):
    """Heatmap (peak 1 at each centre pixel, anisotropic Gaussian around it) and size/angle
    regression targets with their weights, in the crop's model grid."""
    heat = np.zeros((size, size), dtype=np.float32)
    reg = np.zeros((4, size, size), dtype=np.float32)
    reg_w = np.zeros((size, size), dtype=np.float32)
    inv = np.linalg.inv(lin)
    scale = math.sqrt(abs(np.linalg.det(lin)))
    grid = np.arange(size, dtype=np.float32) + 0.5
    for s in ships:
        q = inv @ np.array([s.x - centre[0], s.y - centre[1]]) + size / 2
        if not (-8 <= q[0] < size + 8 and -8 <= q[1] < size + 8):
            continue
        direction = inv @ np.array([math.cos(s.angle), math.sin(s.angle)])
        theta = math.atan2(direction[1], direction[0])
        length, width = s.length / scale, s.width / scale
        peak = np.floor(q) + 0.5
        sa = max(1.0, cfg.sigma_along * length) if length else 1.0
        sc = max(0.8, cfg.sigma_across * width) if width else 1.0
        dx, dy = grid[None, :] - peak[0], grid[:, None] - peak[1]
        along = dx * math.cos(theta) + dy * math.sin(theta)
        across = -dx * math.sin(theta) + dy * math.cos(theta)
        g = np.exp(-0.5 * ((along / sa) ** 2 + (across / sc) ** 2))
        np.maximum(heat, g, out=heat)
        c, r = int(peak[0]), int(peak[1])
        if 0 <= c < size and 0 <= r < size and length > 0:
            r0, r1, c0, c1 = max(r - 1, 0), min(r + 2, size), max(c - 1, 0), min(c + 2, size)
            reg[:, r0:r1, c0:c1] = np.array(
                [math.log(max(length, 1.0)), math.log(max(width, 1.0)),
                 math.sin(2 * theta), math.cos(2 * theta)], dtype=np.float32)[:, None, None]
            reg_w[r0:r1, c0:c1] = 1.0
    heat[heat > 0.9999] = 1.0
    return heat, reg, reg_w


def _supervised(scene: LabelledScene, centre, lin: np.ndarray, size: int) -> np.ndarray:
    """1 where the loss applies, 0 within IGNORE_RADIUS_M of an unreviewed detection."""
    weight = np.ones((size, size), dtype=np.float32)
    inv = np.linalg.inv(lin)
    radius = IGNORE_RADIUS_M / scene.pixel_m / math.sqrt(abs(np.linalg.det(lin)))
    grid = np.arange(size, dtype=np.float32) + 0.5
    for x, y in scene.ignore:
        q = inv @ np.array([x - centre[0], y - centre[1]]) + size / 2
        near = (grid[None, :] - q[0]) ** 2 + (grid[:, None] - q[1]) ** 2 <= radius**2
        weight[near] = 0.0
    return weight


def sample_batch(
    rng: np.random.Generator, scenes: list[LabelledScene], batch: int, cfg: CropConfig
) -> dict[str, torch.Tensor]:
    """A batch of augmented crops with their targets; with a `weight` map (0: no loss there)
    when a scene has unreviewed detections."""
    images, presents, masks, heats, regs, reg_ws = [], [], [], [], [], []
    weights = []
    for _ in range(batch):
        i, cx, cy = _pick_centre(rng, scenes, cfg)
        scene = scenes[i]
        model_m = rng.uniform(*cfg.pixel_range)
        lin = _affine(rng, model_m / scene.pixel_m)
        centre = np.array([cx, cy])
        grid = _sample_grid(scene, centre, lin, cfg.size)
        img = F.grid_sample(scene.image[None], grid, mode="bilinear", align_corners=False)[0]
        mask = F.grid_sample(scene.mask, grid, mode="bilinear", align_corners=False)[0]
        present = _band_dropout(rng, scene.present, cfg)
        img = _photometric(rng, img, cfg) * present[:, None, None]
        heat, reg, reg_w = _targets(scene.ships, centre, lin, cfg.size, cfg)
        images.append(img)
        presents.append(present)
        masks.append((mask > 0.5).float())
        heats.append(torch.from_numpy(heat)[None])
        regs.append(torch.from_numpy(reg))
        reg_ws.append(torch.from_numpy(reg_w)[None])
        weight = _supervised(scene, centre, lin, cfg.size)
        weight[heat > 0.01] = 1.0  # a labelled vessel is always taught, whatever is near it
        weights.append(torch.from_numpy(weight)[None])
    out = {
        "image": torch.stack(images),
        "present": torch.stack(presents),
        "mask": torch.stack(masks),
        "heat": torch.stack(heats),
        "reg": torch.stack(regs),
        "reg_w": torch.stack(reg_ws),
    }
    # Only when needed, so that batches without unreviewed detections train bit for bit as
    # before (the shipped weights' recipe stays reproducible).
    if any(len(s.ignore) for s in scenes):
        out["weight"] = torch.stack(weights)
    return out
