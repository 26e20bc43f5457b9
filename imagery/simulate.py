"""SIMULATED Sentinel-2 L2A scenes of a port, with the true vessel list.

Everything made here is synthetic and tagged so (`SOURCE=simulated`, `SIMULATED=true`, and
`simulated: true` on every truth feature). It exists for the tests and the offline demo:
a scene whose truth is known exactly, in the same scene format the real sources deliver.

The picture, built in the port's UTM zone at 10 m:
- a coastline fixed per port (the land does not move between scenes): land on the side away
  from the anchorages, a straight quay through every berth zone and piers reaching into the
  water, a concrete apron behind the quays, town near the port, forest and fields inland;
- per scene: vessels (bright hulls, some dark decks, white superstructure) alongside quay
  faces and at anchor, water texture and glint, clouds from a fractal field with their
  shadows thrown away from the sun, a Gaussian point-spread function and sensor noise;
- an SCL band from the same fields (6 water, 4 vegetation, 5 bare/urban and vessels,
  3 cloud shadow, 8/9 cloud, 10 thin cirrus).

Randomness: a scene is a pure function of (port, date, seed, cloud fraction, vessel specs).
A vessel the caller specifies without a position is placed from its id alone, so the same
vessel keeps its berth in consecutive scenes; feed a truth vessel back (`as_spec()`) to pin
it exactly.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from pyproj import Transformer
from rasterio import features as rio_features
from rasterio.crs import CRS
from rasterio.windows import Window
from scipy import ndimage
from shapely import union_all
from shapely.geometry import Point, Polygon, box
from shapely.geometry.base import BaseGeometry

from imagery.ports import Port
from imagery.scene import SCENE_BANDS, SCL_BAND, SCL_OBSCURED, parse_time, write_scene
from imagery.sources import SceneRef

log = logging.getLogger(__name__)

PIXEL_M = 10.0
BAND_NAMES: tuple[str, ...] = SCENE_BANDS + (SCL_BAND,)
SCALE = 10000.0

# Surface classes of the layout raster.
WATER, FOREST, URBAN, BARE, CONCRETE = 0, 1, 2, 3, 4
SCL_OF_CLASS = np.array([6, 4, 5, 5, 5], dtype=np.uint16)
SCL_SHADOW, SCL_CLOUD_MED, SCL_CLOUD_HIGH, SCL_CIRRUS, SCL_VESSEL = 3, 8, 9, 10, 5

# L2A surface reflectance per class, bands B02 B03 B04 B08 B11 (typical values: clear sea
# is dark and darkest in NIR/SWIR; vegetation has the red edge; concrete is flat and bright).
CLASS_SPECTRA = np.array(
    [
        [0.050, 0.040, 0.025, 0.010, 0.005],  # open sea
        [0.030, 0.055, 0.035, 0.300, 0.150],  # forest (summer; see _season)
        [0.090, 0.100, 0.110, 0.170, 0.200],  # town
        [0.100, 0.130, 0.170, 0.230, 0.300],  # fields, bare soil
        [0.190, 0.205, 0.215, 0.235, 0.260],  # concrete quays and piers
    ],
    dtype=np.float32,
)
HARBOUR_WATER = np.array([0.055, 0.052, 0.036, 0.016, 0.007], dtype=np.float32)  # turbid
# Relative texture strength per class: water is smooth, towns are patchy.
CLASS_TEXTURE = np.array([0.04, 0.15, 0.28, 0.15, 0.08], dtype=np.float32)
# Gaussian PSF sigma in 10 m pixels: the 10 m bands' MTF, and B11 resampled from 20 m.
PSF_SIGMA = (0.55, 0.55, 0.55, 0.55, 1.05)
NOISE_SIGMA = np.array([0.0025, 0.002, 0.002, 0.002, 0.0015], dtype=np.float32)

QUAY_AT = 0.4  # quay line this far into a berth zone from its landward side
FENDER_GAP_M = 4.0  # hull to quay face
EPOCH = date(2024, 1, 1)  # revisit pattern anchor


class SimulationError(ValueError):
    """A simulation request that cannot be met (unknown zone, bad size)."""


# --------------------------------------------------------------------------------------------
# Vessels and truth
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VesselSpec:
    """A vessel a caller puts in a scene. Unset fields are drawn from the vessel's id, so the
    same spec gives the same vessel (and, space allowing, the same berth) in every scene."""

    id: str
    length_m: float
    width_m: float
    zone: str | None = None  # a berth or anchorage zone of the port; None: any
    berthed: bool | None = None  # None: follows the zone kind (berth zones berth)
    lon: float | None = None  # pin the centre; otherwise placed
    lat: float | None = None
    heading_deg: float | None = None  # bow direction, clockwise from north
    mmsi: int | None = None  # identity hooks for a simulated AIS feed
    name: str | None = None


@dataclass(frozen=True)
class TruthVessel:
    """A vessel as simulated. px_x/px_y are continuous pixel coordinates of the centre
    (`~transform * (x, y)`; the pixel index is their floor). `hidden_by_cloud`: half or more
    of the hull's pixels are cloud, cirrus or cloud shadow in the scene's SCL, the same rule
    that makes a zone `unknown`; `zone` is `Port.zone_at` of the centre."""

    id: str
    lon: float
    lat: float
    px_x: float
    px_y: float
    length_m: float
    width_m: float
    heading_deg: float
    berthed: bool
    zone: str | None
    hidden_by_cloud: bool
    mmsi: int | None = None
    name: str | None = None
    obscured_fraction: float = 0.0  # share of the hull under cloud, shadow or cirrus

    def as_spec(self) -> VesselSpec:
        """The spec that puts this vessel back exactly here in another scene."""
        return VesselSpec(self.id, self.length_m, self.width_m, self.zone, self.berthed,
                          self.lon, self.lat, self.heading_deg, self.mmsi, self.name)


@dataclass
class SimulationTruth:
    scene_id: str
    port: str
    acquisition_time: datetime
    seed: int
    cloud_fraction: float  # as requested: share of the scene under cloud
    vessels: list[TruthVessel]
    crs: str
    transform: tuple[float, ...]
    width: int
    height: int
    obscured_fraction: float = 0.0  # share of the scene SCL marks hidden (cloud + shadow)
    zone_visible_fraction: dict[str, float] = field(default_factory=dict)
    unplaced: list[str] = field(default_factory=list)  # spec ids there was no room for
    truth_path: Path | None = None
    simulated: bool = True


# --------------------------------------------------------------------------------------------
# Noise and seeds
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Port layout (fixed per port: the coast does not move between scenes)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QuayFace:
    """A straight berthing face: vessels lie along p0-p1 on the side `normal` points to."""

    zone: str
    p0: tuple[float, float]  # UTM x, y
    p1: tuple[float, float]
    normal: tuple[float, float]

    @property
    def length(self) -> float:
        return math.dist(self.p0, self.p1)


@dataclass(frozen=True)
class PortLayout:
    port: str
    epsg: int
    transform: Affine
    width: int
    height: int
    classes: np.ndarray  # (H, W) uint8 surface class
    texture: np.ndarray  # (H, W) float32 static texture, unit variance
    turbid: np.ndarray  # (H, W) float32 0..1, harbour water weight
    water_distance_m: np.ndarray  # (H, W) float32 distance of water pixels to land
    land_shape: BaseGeometry  # UTM land incl. piers
    faces: tuple[QuayFace, ...]
    sea_direction: tuple[float, float]

    @property
    def land(self) -> np.ndarray:
        return self.classes != WATER

    @property
    def crs(self) -> CRS:
        return CRS.from_epsg(self.epsg)


def scene_grid(port: Port, size: tuple[int, int] | int | None = None) -> tuple[Affine, int, int]:
    """The 10 m UTM grid of a port scene: the AOI's bounding box snapped to 10 m, or a
    width x height grid centred on the AOI."""
    aoi = port.to_utm(port.aoi)
    if size is None:
        minx, miny, maxx, maxy = aoi.bounds
        left, top = math.floor(minx / PIXEL_M) * PIXEL_M, math.ceil(maxy / PIXEL_M) * PIXEL_M
        width = math.ceil((maxx - left) / PIXEL_M)
        height = math.ceil((top - miny) / PIXEL_M)
    else:
        width, height = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        if width < 8 or height < 8:
            raise SimulationError(f"scene size {width}x{height} is too small (8 px minimum)")
        centre = aoi.centroid
        left = round((centre.x - width * PIXEL_M / 2) / PIXEL_M) * PIXEL_M
        top = round((centre.y + height * PIXEL_M / 2) / PIXEL_M) * PIXEL_M
    return Affine(PIXEL_M, 0, left, 0, -PIXEL_M, top), width, height


def port_layout(port: Port, size: tuple[int, int] | int | None = None) -> PortLayout:
    """The port's fixed geography on its scene grid (cached: the demo makes many scenes)."""
    size_key = size if size is None or isinstance(size, int) else (int(size[0]), int(size[1]))
    return _build_layout(port, size_key)


def _zone_utm(port: Port, kind: str) -> list[tuple[str, BaseGeometry]]:
    return [(z.name, port.to_utm(z.geometry)) for z in port.zones if z.kind == kind]


def _sea_direction(berths: list, anchorages: list) -> np.ndarray:
    """Unit vector pointing from the berths out to sea: towards the anchorages (else south),
    snapped to a cardinal direction so that quays run straight through box-shaped zones."""
    d = np.array([0.0, -1.0])
    if berths and anchorages:
        b = np.mean([g.centroid.coords[0] for _, g in berths], axis=0)
        a = np.mean([g.centroid.coords[0] for _, g in anchorages], axis=0)
        d = a - b
    if abs(d[0]) > abs(d[1]):
        return np.array([math.copysign(1.0, d[0]), 0.0])
    return np.array([0.0, math.copysign(1.0, d[1] or -1.0)])


@lru_cache(maxsize=8)
def _build_layout(port: Port, size) -> PortLayout:
    transform, width, height = scene_grid(port, size)
    rng = _rng(_key(port.name), 1)
    berths, anchorages = _zone_utm(port, "berth"), _zone_utm(port, "anchorage")
    sea = _sea_direction(berths, anchorages)
    frame = _Frame(transform, width, height, sea)
    quays = [_quay(name, g, frame) for name, g in berths]
    land_line = _coastline(frame, quays, anchorages, rng)
    piers, faces = _piers_and_faces(quays, frame, rng)
    land_shape = land_line.union(piers) if not piers.is_empty else land_line
    classes, texture, turbid, water_dist = _rasterize_land(
        frame, land_shape, piers, quays, rng)
    for shared in (classes, texture, turbid, water_dist):
        shared.flags.writeable = False  # cached and shared by every scene of the port
    return PortLayout(port.name, port.epsg, transform, width, height, classes, texture, turbid,
                      water_dist, land_shape, tuple(faces), (float(sea[0]), float(sea[1])))


@dataclass(frozen=True)
class _Frame:
    """Coast-aligned coordinates: v grows out to sea, u runs along the coast."""

    transform: Affine
    width: int
    height: int
    sea: np.ndarray

    @property
    def along(self) -> np.ndarray:
        return np.array([self.sea[1], -self.sea[0]])

    @property
    def origin(self) -> np.ndarray:
        x, y = self.transform * (self.width / 2, self.height / 2)
        return np.array([x, y])

    def uv(self, xy: np.ndarray) -> np.ndarray:
        d = np.asarray(xy, dtype=float) - self.origin
        return np.stack([d @ self.along, d @ self.sea], axis=-1)

    def xy(self, uv: np.ndarray) -> np.ndarray:
        uv = np.asarray(uv, dtype=float)
        return self.origin + uv[..., :1] * self.along + uv[..., 1:] * self.sea

    def extent(self) -> tuple[float, float, float, float]:
        corners = np.array([self.transform * c for c in
                            ((0, 0), (self.width, 0), (0, self.height), (self.width, self.height))])
        uv = self.uv(corners)
        return uv[:, 0].min(), uv[:, 0].max(), uv[:, 1].min(), uv[:, 1].max()


@dataclass(frozen=True)
class _Quay:
    zone: str
    geometry: BaseGeometry  # the zone, UTM
    u0: float
    u1: float
    v_quay: float
    v_sea: float  # the zone's seaward limit


def _quay(name: str, zone: BaseGeometry, frame: _Frame) -> _Quay:
    uv = frame.uv(np.array(zone.convex_hull.exterior.coords))
    (u0, v0), (u1, v1) = uv.min(axis=0), uv.max(axis=0)
    return _Quay(name, zone, u0, u1, v0 + QUAY_AT * (v1 - v0), v1)


def _coastline(frame: _Frame, quays: list[_Quay], anchorages: list,
               rng: np.random.Generator) -> BaseGeometry:
    """Land polygon: straight quays through the berth zones, a wandering natural shore
    elsewhere that bends out into headlands but keeps clear of the anchorages."""
    umin, umax, vmin, vmax = frame.extent()
    us = np.arange(umin - 500, umax + 500, 20.0)
    coast = _shore_profile(us, quays, vmin, vmax, rng)
    for _, geom in anchorages:
        auv = frame.uv(np.array(geom.convex_hull.exterior.coords))
        near = (us > auv[:, 0].min() - 400) & (us < auv[:, 0].max() + 400)
        coast[near] = np.minimum(coast[near], auv[:, 1].min() - 300)
    far = vmin - 2000
    ring = np.vstack([np.column_stack([us, coast]), [[us[-1], far], [us[0], far]]])
    return Polygon(frame.xy(ring)).buffer(0)


def _shore_profile(us: np.ndarray, quays: list[_Quay], vmin: float, vmax: float,
                   rng: np.random.Generator) -> np.ndarray:
    if not quays:
        return vmin + 0.3 * (vmax - vmin) + 250 * fractal_noise((1, us.size), 2.0, rng)[0]
    knots = sorted((u, q.v_quay) for q in quays for u in (q.u0, q.u1))
    coast = np.interp(us, [k[0] for k in knots], [k[1] for k in knots])
    quay_v = np.full(us.shape, np.inf)
    gap = np.full(us.shape, np.inf)
    for q in quays:
        inside = (us >= q.u0) & (us <= q.u1)
        quay_v[inside] = np.minimum(quay_v[inside], q.v_quay)  # overlapping zones: keep water
        gap = np.minimum(gap, np.maximum(0.0, np.maximum(q.u0 - us, us - q.u1)))
    coast = np.where(np.isfinite(quay_v), quay_v, coast)
    wiggle = 250 * fractal_noise((1, us.size), 2.0, rng)[0]
    ramp = np.clip(gap / 800.0, 0, 1)
    return coast + ramp * wiggle + np.minimum(0.3 * gap, 1500.0)


def _piers_and_faces(quays: list[_Quay], frame: _Frame,
                     rng: np.random.Generator) -> tuple[BaseGeometry, list[QuayFace]]:
    """Piers reaching out from each quay, and the faces vessels can lie against."""
    piers, faces = [], []
    for q in quays:
        width = q.u1 - q.u0
        count = min(2, int(width // 900))
        depth = q.v_sea - q.v_quay
        spans = []
        for k in range(count):
            uc = q.u0 + width * (k + 1) / (count + 1) + rng.uniform(-60, 60)
            pw, pl = rng.uniform(60, 90), min(rng.uniform(320, 560), 0.75 * depth)
            if pl < 120:
                continue
            spans.append((uc - pw / 2, uc + pw / 2))
            piers.append(Polygon(frame.xy(np.array(
                [[uc - pw / 2, q.v_quay - 40], [uc + pw / 2, q.v_quay - 40],
                 [uc + pw / 2, q.v_quay + pl], [uc - pw / 2, q.v_quay + pl]]))))
            faces += _pier_faces(q, uc, pw, pl, frame)
        faces += _quay_faces(q, spans, frame)
    return (union_all(piers) if piers else Polygon()), faces


def _face(zone: str, frame: _Frame, a: tuple[float, float], b: tuple[float, float],
          normal: np.ndarray) -> QuayFace:
    p0, p1 = frame.xy(np.array(a)), frame.xy(np.array(b))
    return QuayFace(zone, (float(p0[0]), float(p0[1])), (float(p1[0]), float(p1[1])),
                    (float(normal[0]), float(normal[1])))


def _quay_faces(q: _Quay, spans: list[tuple[float, float]], frame: _Frame) -> list[QuayFace]:
    """The main quay front, cut where piers leave it."""
    cuts = [q.u0 + 20]
    for a, b in sorted(spans):
        cuts += [a - 5, b + 5]
    cuts.append(q.u1 - 20)
    return [_face(q.zone, frame, (a, q.v_quay), (b, q.v_quay), frame.sea)
            for a, b in zip(cuts[::2], cuts[1::2], strict=True) if b - a > 40]


def _pier_faces(q: _Quay, uc: float, pw: float, pl: float, frame: _Frame) -> list[QuayFace]:
    v0, v1 = q.v_quay + 15, q.v_quay + pl
    return [_face(q.zone, frame, (uc - pw / 2, v0), (uc - pw / 2, v1), -frame.along),
            _face(q.zone, frame, (uc + pw / 2, v0), (uc + pw / 2, v1), frame.along)]


def _pixel_u(frame: _Frame) -> np.ndarray:
    """The along-coast coordinate of every pixel centre."""
    t = frame.transform
    xs = (t.c + (np.arange(frame.width) + 0.5) * t.a - frame.origin[0]).astype(np.float32)
    ys = (t.f + (np.arange(frame.height) + 0.5) * t.e - frame.origin[1]).astype(np.float32)
    ax, ay = frame.along
    return xs[None, :] * np.float32(ax) + ys[:, None] * np.float32(ay)


def _rasterize_land(frame: _Frame, land_shape: BaseGeometry, piers: BaseGeometry,
                    quays: list[_Quay], rng: np.random.Generator):
    """Surface classes, static texture, harbour turbidity and distance to land per pixel."""
    shape = (frame.height, frame.width)
    land, pier_px = _burn(land_shape, frame, shape), _burn(piers, frame, shape)
    to_water = ndimage.distance_transform_edt(land).astype(np.float32) * PIXEL_M
    to_land = ndimage.distance_transform_edt(~land).astype(np.float32) * PIXEL_M
    port_gap = _port_gap(_pixel_u(frame), quays)
    classes = np.full(shape, FOREST, dtype=np.uint8)
    # The town hugs the port and thins out inland and along the coast.
    town = np.exp(-port_gap / 1500.0 - to_water / 1500.0) + 0.3 * fractal_noise(shape, 2.6, rng)
    classes[town > 0.45] = URBAN
    classes[(classes == FOREST) & (fractal_noise(shape, 2.8, rng) > 1.0)] = BARE
    classes[((to_water <= 150) & (port_gap <= 100)) | pier_px] = CONCRETE
    classes[~land] = WATER
    texture = fractal_noise(shape, 2.0, rng)
    turbid = np.where(land, 0.0, np.exp(-to_land / 600.0)).astype(np.float32)
    return classes, texture, turbid, np.where(land, 0.0, to_land).astype(np.float32)


def _port_gap(u: np.ndarray, quays: list[_Quay]) -> np.ndarray:
    """Distance along the coast from the nearest berth zone (0 inside)."""
    if not quays:
        return np.full(u.shape, 1e6, dtype=np.float32)
    gap = np.full(u.shape, np.inf, dtype=np.float32)
    for q in quays:
        gap = np.minimum(gap, np.maximum(0, np.maximum(q.u0 - u, u - q.u1)))
    return gap


def _burn(geom: BaseGeometry, frame: _Frame, shape: tuple[int, int]) -> np.ndarray:
    if geom.is_empty:
        return np.zeros(shape, dtype=bool)
    return rio_features.rasterize([(geom, 1)], out_shape=shape, transform=frame.transform,
                                  fill=0, dtype="uint8").astype(bool)


# --------------------------------------------------------------------------------------------
# Time and sun
# --------------------------------------------------------------------------------------------


def _phase(port_name: str) -> int:
    return _key(port_name) % 5


def satellite_on(port: Port, day: date) -> str | None:
    """Which Sentinel-2 unit images the port on `day` in the simulated revisit, or None.
    Two satellites 180 degrees apart, each back every 10 days, and the port lying in the
    overlap of neighbouring orbits at this latitude: a scene every 2 then 3 days."""
    slot = ((day - EPOCH).days - _phase(port.name)) % 5
    return {0: "S2A", 2: "S2B"}.get(slot)


def overpass_time(port: Port, day: date, satellite: str | None = None) -> datetime:
    """Sentinel-2 crosses at about 10:30 local mean solar time, ~01:40-01:55 UTC at 130-133 E;
    the two units' ground tracks differ by a few minutes over one place."""
    lon = port.aoi.centroid.x
    minutes = (10.5 - lon / 15.0) * 60 + (4 if satellite == "S2B" else -3)
    return datetime.combine(day, time(0), UTC) + timedelta(seconds=round(minutes * 60))


def acquisition_time(port: Port, when: date | datetime | str) -> datetime:
    """A bare date (or midnight) becomes that day's overpass; an explicit time is kept."""
    if isinstance(when, str):
        when = parse_time(when)
    if isinstance(when, datetime):
        moment = (when if when.tzinfo else when.replace(tzinfo=UTC)).astimezone(UTC)
        if moment.time() != time(0):
            return moment.replace(microsecond=0)
        when = moment.date()
    return overpass_time(port, when, satellite_on(port, when))


def solar_position(lon: float, lat: float, when: datetime) -> tuple[float, float]:
    """(elevation, azimuth clockwise from north) in degrees; a textbook approximation, plenty
    for placing cloud shadows."""
    doy = when.timetuple().tm_yday
    decl = math.radians(23.44 * math.sin(2 * math.pi * (284 + doy) / 365))
    hours = when.hour + when.minute / 60 + lon / 15.0
    hour_angle = math.radians(15 * (hours - 12))
    phi = math.radians(lat)
    sin_el = (math.sin(phi) * math.sin(decl)
              + math.cos(phi) * math.cos(decl) * math.cos(hour_angle))
    azimuth = math.degrees(math.atan2(math.sin(hour_angle), math.cos(hour_angle) * math.sin(phi)
                                      - math.tan(decl) * math.cos(phi))) + 180
    return math.degrees(math.asin(sin_el)), azimuth % 360


# --------------------------------------------------------------------------------------------
# Vessel placement
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=16)
def _to_wgs84(epsg: int) -> Transformer:
    return Transformer.from_crs(f"EPSG:{epsg}", "EPSG:4326", always_xy=True)


@lru_cache(maxsize=16)
def _to_utm(epsg: int) -> Transformer:
    return Transformer.from_crs("EPSG:4326", f"EPSG:{epsg}", always_xy=True)


@dataclass(frozen=True)
class _Placed:
    spec: VesselSpec
    x: float
    y: float
    heading: float
    berthed: bool
    footprint: Polygon
    look_key: int


def footprint(x: float, y: float, heading_deg: float, length_m: float,
              width_m: float) -> Polygon:
    """The hull rectangle of a vessel centred at (x, y), bow towards `heading_deg`."""
    h = math.radians(heading_deg)
    bow = np.array([math.sin(h), math.cos(h)]) * length_m / 2
    side = np.array([math.cos(h), -math.sin(h)]) * width_m / 2
    c = np.array([x, y])
    return Polygon([c + bow + side, c + bow - side, c - bow - side, c - bow + side])


def random_fleet(port: Port, seed: int, *, n_berthed: int | None = None,
                 n_anchored: int | None = None, identities: bool = False) -> list[VesselSpec]:
    """A plausible mix of vessels for a port: 3-12 berthed and 2-6 anchored unless given.
    With `identities`, each gets a simulated MMSI and name (for a simulated AIS feed)."""
    rng = _rng(seed, _key(port.name), 2)
    berths = [z.name for z in port.zones if z.kind == "berth"]
    anchorages = [z.name for z in port.zones if z.kind == "anchorage"]
    nb = int(rng.integers(3, 13)) if n_berthed is None else n_berthed
    na = int(rng.integers(2, 7)) if n_anchored is None else n_anchored
    specs = []
    for i in range(nb + na):
        berthed = i < nb
        names = berths if berthed else anchorages
        zone = str(rng.choice(names)) if names and (berthed or rng.random() < 0.8) else None
        length = float(np.exp(rng.uniform(math.log(40), math.log(300))))
        width = float(np.clip(length / rng.uniform(5.5, 7.5), 8, 50))
        mmsi = name = None
        if identities:
            mid = int(rng.choice([445, 273, 351, 636, 477, 412]))
            mmsi, name = mid * 1_000_000 + int(rng.integers(0, 1_000_000)), f"SIMULATED {i:02d}"
        specs.append(VesselSpec(f"V{i:02d}", round(length, 1), round(width, 1), zone, berthed,
                                mmsi=mmsi, name=name))
    return specs


class _Placer:
    """Puts vessels where they can lie: alongside free quay faces, or at anchor with swing
    room, never on land, on each other or outside the AOI and the scene."""

    def __init__(self, port: Port, layout: PortLayout, wind_deg: float):
        self.port, self.layout, self.wind = port, layout, wind_deg
        self.placed: list[_Placed] = []
        self.aoi = port.to_utm(port.aoi)
        left, top = layout.transform.c, layout.transform.f
        self.grid = box(left, top - layout.height * PIXEL_M, left + layout.width * PIXEL_M,
                        top).buffer(-2 * PIXEL_M)

    def place(self, spec: VesselSpec, rng: np.random.Generator, look_key: int) -> _Placed | None:
        if spec.lon is not None and spec.lat is not None:
            found = self._pinned(spec, rng)
        elif self._berths(spec):
            found = self._alongside(spec, rng)
        else:
            found = self._at_anchor(spec, rng)
        if found is None:
            return None
        x, y, heading, berthed = found
        placed = _Placed(spec, x, y, heading, berthed,
                         footprint(x, y, heading, spec.length_m, spec.width_m), look_key)
        self.placed.append(placed)
        return placed

    def _zone(self, spec: VesselSpec):
        if spec.zone is None:
            return None
        try:
            return self.port.zone(spec.zone)
        except KeyError:
            raise SimulationError(f"vessel {spec.id}: port {self.port.name} has no zone "
                                  f"{spec.zone!r}") from None

    def _berths(self, spec: VesselSpec) -> bool:
        zone = self._zone(spec)
        if spec.berthed is not None:
            return spec.berthed and (zone is None or zone.kind == "berth")
        return zone is not None and zone.kind == "berth"

    def _pinned(self, spec: VesselSpec, rng: np.random.Generator):
        x, y = _to_utm(self.port.epsg).transform(spec.lon, spec.lat)
        face, distance = self._nearest_face(x, y)
        alongside = face is not None and distance <= spec.width_m / 2 + 30
        berthed = alongside if spec.berthed is None else spec.berthed
        heading = spec.heading_deg
        if heading is None:
            heading = _face_heading(face, rng) if alongside else self._swing(rng)
        return x, y, heading, berthed

    def _nearest_face(self, x: float, y: float) -> tuple[QuayFace | None, float]:
        best, best_d = None, math.inf
        for face in self.layout.faces:
            d = _segment_distance((x, y), face.p0, face.p1)
            if d < best_d:
                best, best_d = face, d
        return best, best_d

    def _alongside(self, spec: VesselSpec, rng: np.random.Generator):
        zone = self._zone(spec)
        faces = [f for f in self.layout.faces if (zone is None or f.zone == zone.name)
                 and f.length >= spec.length_m + 10]
        for _ in range(60 if faces else 0):
            face = faces[int(rng.integers(len(faces)))]
            t = rng.uniform(spec.length_m / 2 + 5, face.length - spec.length_m / 2 - 5)
            x, y = _along(face, t, spec.width_m / 2 + FENDER_GAP_M)
            heading = _face_heading(face, rng)
            if self._fits(spec, x, y, heading, clearance=8.0, zone=zone):
                return x, y, heading, True
        return None

    def _at_anchor(self, spec: VesselSpec, rng: np.random.Generator):
        region = self._anchor_region(spec, rng)
        minx, miny, maxx, maxy = region.bounds
        zone = self._zone(spec)
        for _ in range(300):
            x, y = rng.uniform(minx, maxx), rng.uniform(miny, maxy)
            if not region.contains(Point(x, y)) or not self._open_water(x, y, spec.length_m):
                continue
            heading = self._swing(rng)
            swing_room = spec.length_m / 2 + 60  # anchored ships swing round their anchor
            if self._fits(spec, x, y, heading, clearance=swing_room, zone=zone):
                return x, y, heading, False
        return None

    def _anchor_region(self, spec: VesselSpec, rng: np.random.Generator) -> BaseGeometry:
        zone = self._zone(spec)
        if zone is not None:
            return self.port.to_utm(zone.geometry).intersection(self.aoi)
        anchorages = [z for z in self.port.zones if z.kind == "anchorage"]
        if spec.berthed is None and anchorages:
            pick = anchorages[int(rng.integers(len(anchorages)))]
            return self.port.to_utm(pick.geometry).intersection(self.aoi)
        return self.aoi

    def _open_water(self, x: float, y: float, length_m: float) -> bool:
        col, row = ~self.layout.transform * (x, y)
        r, c = int(row), int(col)
        if not (0 <= r < self.layout.height and 0 <= c < self.layout.width):
            return False
        return float(self.layout.water_distance_m[r, c]) >= length_m / 2 + 120

    def _swing(self, rng: np.random.Generator) -> float:
        """Anchored vessels weathervane: all roughly head into the wind."""
        return float((self.wind + rng.normal(0, 12)) % 360)

    def _fits(self, spec: VesselSpec, x: float, y: float, heading: float, clearance: float,
              zone) -> bool:
        hull = footprint(x, y, heading, spec.length_m, spec.width_m)
        if not self.grid.contains(hull) or not self.aoi.contains(Point(x, y)):
            return False
        if hull.intersects(self.layout.land_shape):
            return False
        if zone is not None:
            lon, lat = _to_wgs84(self.port.epsg).transform(x, y)
            if not zone.geometry.covers(Point(lon, lat)):
                return False
        return all(hull.distance(p.footprint) > clearance for p in self.placed)


def _along(face: QuayFace, t: float, offset: float) -> tuple[float, float]:
    p0, p1, n = np.array(face.p0), np.array(face.p1), np.array(face.normal)
    point = p0 + (p1 - p0) / face.length * t + n * offset
    return float(point[0]), float(point[1])


def _face_heading(face: QuayFace, rng: np.random.Generator) -> float:
    """Parallel to the quay, bow either way."""
    dx, dy = face.p1[0] - face.p0[0], face.p1[1] - face.p0[1]
    heading = math.degrees(math.atan2(dx, dy))
    return float((heading + (180 if rng.random() < 0.5 else 0)) % 360)


def _segment_distance(p, a, b) -> float:
    p, a, b = np.array(p), np.array(a), np.array(b)
    ab = b - a
    t = np.clip(np.dot(p - a, ab) / max(np.dot(ab, ab), 1e-9), 0, 1)
    return float(np.linalg.norm(p - (a + t * ab)))


def _as_spec(item: VesselSpec | TruthVessel | Mapping) -> VesselSpec:
    if isinstance(item, VesselSpec):
        return item
    if isinstance(item, TruthVessel):
        return item.as_spec()
    known = {f for f in VesselSpec.__dataclass_fields__}
    return VesselSpec(**{k: v for k, v in dict(item).items() if k in known})


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Scenes
# --------------------------------------------------------------------------------------------


def scene_id_for(port: Port, moment: datetime, seed: int) -> str:
    return f"SIM_{port.name}_{moment:%Y%m%d}_{seed}"


def simulate_scene(
    port: Port,
    when: date | datetime | str,
    *,
    seed: int,
    cloud_fraction: float = 0.0,
    vessels: Sequence[VesselSpec | TruthVessel | Mapping] | None = None,
    size: tuple[int, int] | int | None = None,
) -> tuple[np.ndarray, tuple[str, ...], CRS, Affine, SimulationTruth]:
    """One SIMULATED L2A scene of `port`: uint16 (6, H, W) B02 B03 B04 B08 B11 SCL, its CRS
    and transform, and the truth. Same arguments, same bytes. `vessels` dictates the fleet
    (otherwise 3-12 berthed and 2-6 anchored, drawn from the seed); `size` (width, height)
    replaces the AOI's extent with a grid centred on it."""
    if not 0.0 <= cloud_fraction <= 1.0:
        raise SimulationError(f"cloud_fraction {cloud_fraction} must lie in 0..1")
    layout = port_layout(port, size)
    moment = acquisition_time(port, when)
    scene_key = _key(scene_id_for(port, moment, seed))
    rng = _rng(scene_key, 0)
    placed, unplaced = _place_fleet(port, layout, vessels, scene_key, rng.uniform(0, 360))
    surface = _surface(layout, moment, rng)
    cover = np.zeros((layout.height, layout.width), dtype=np.float32)
    shadow = _vessel_shadow(port, moment)
    for p in placed:
        _render_placed(surface, cover, p, layout, shadow)
    cloud, shadow = _clouds(layout, port, moment, cloud_fraction, rng)
    scl = _scl(layout, cover, cloud, shadow)
    _apply_clouds(surface, cloud, shadow, rng)
    data = np.concatenate([_sensor(surface, rng), scl[None]])
    truth = _truth(port, layout, moment, seed, cloud_fraction, placed, unplaced, scl)
    return data, BAND_NAMES, layout.crs, layout.transform, truth


def _place_fleet(port: Port, layout: PortLayout, vessels, scene_key: int,
                 wind: float) -> tuple[list[_Placed], list[str]]:
    # A caller's vessel is placed from its id alone (key 0), so it keeps its berth from one
    # scene to the next; a random fleet is placed from the scene.
    if vessels is None:
        specs, key = random_fleet(port, scene_key), scene_key
    else:
        specs, key = [_as_spec(v) for v in vessels], 0
    placer = _Placer(port, layout, wind)
    placed, unplaced = [], []
    for spec in specs:
        found = placer.place(spec, _rng(key, _key(port.name), _key(spec.id)), key)
        if found is None:
            # A random fleet may simply not fit a small grid; a caller's vessel should.
            report = log.debug if vessels is None else log.warning
            report("simulated vessel %s (%.0f m) found no room in %s", spec.id, spec.length_m,
                   spec.zone or port.name)
            unplaced.append(spec.id)
        else:
            placed.append(found)
    return placed, unplaced


def _vessel_shadow(port: Port, moment: datetime, height_m: float = 12.0) -> tuple[float, float]:
    """Where a hull's shadow falls, in pixels (columns, rows): away from the sun, by freeboard
    over the tangent of the sun's elevation (two pixels in winter, half of one in summer)."""
    centre = port.aoi.centroid
    elevation, azimuth = solar_position(centre.x, centre.y, moment)
    reach = min(height_m / math.tan(math.radians(max(elevation, 10))), 40.0) / PIXEL_M
    a = math.radians(azimuth)
    return -reach * math.sin(a), reach * math.cos(a)


def _render_placed(surface: np.ndarray, cover: np.ndarray, p: _Placed, layout: PortLayout,
                   shadow: tuple[float, float]) -> None:
    col, row = ~layout.transform * (p.x, p.y)
    render_vessel(surface, cover, col, row, p.heading, p.spec.length_m / PIXEL_M,
                  p.spec.width_m / PIXEL_M, _vessel_look(p.spec.id, p.look_key),
                  shadow_px=shadow)


def _truth(port: Port, layout: PortLayout, moment: datetime, seed: int, cloud_fraction: float,
           placed: list[_Placed], unplaced: list[str], scl: np.ndarray) -> SimulationTruth:
    obscured = np.isin(scl, SCL_OBSCURED)
    vessels = [_truth_vessel(port, layout, p, obscured) for p in placed]
    return SimulationTruth(
        scene_id=scene_id_for(port, moment, seed), port=port.name, acquisition_time=moment,
        seed=seed, cloud_fraction=cloud_fraction, vessels=vessels,
        crs=f"EPSG:{layout.epsg}", transform=tuple(layout.transform)[:6], width=layout.width,
        height=layout.height, obscured_fraction=round(float(obscured.mean()), 4),
        zone_visible_fraction=_zone_visibility(port, layout, obscured), unplaced=unplaced,
    )


def _truth_vessel(port: Port, layout: PortLayout, p: _Placed,
                  obscured: np.ndarray) -> TruthVessel:
    col, row = ~layout.transform * (p.x, p.y)
    lon, lat = _to_wgs84(layout.epsg).transform(p.x, p.y)
    share = _footprint_share(p.footprint, layout, obscured)
    return TruthVessel(
        id=p.spec.id, lon=round(lon, 7), lat=round(lat, 7), px_x=round(col, 2),
        px_y=round(row, 2), length_m=p.spec.length_m, width_m=p.spec.width_m,
        heading_deg=round(p.heading, 1), berthed=p.berthed, zone=port.zone_at(lon, lat),
        hidden_by_cloud=share >= 0.5, mmsi=p.spec.mmsi, name=p.spec.name,
        obscured_fraction=round(share, 3),
    )


def _footprint_share(hull: Polygon, layout: PortLayout, mask: np.ndarray) -> float:
    """Share of the hull's pixels where `mask` holds (the centre pixel for tiny hulls)."""
    window = _hull_window(hull, layout)
    if window is None:
        return 0.0
    r0, r1, c0, c1 = window
    hit = rio_features.rasterize(
        [(hull, 1)], out_shape=(r1 - r0, c1 - c0), dtype="uint8",
        transform=layout.transform * Affine.translation(c0, r0)).astype(bool)
    sub = mask[r0:r1, c0:c1]
    if not hit.any():
        cx, cy = ~layout.transform * (hull.centroid.x, hull.centroid.y)
        return float(mask[min(int(cy), layout.height - 1), min(int(cx), layout.width - 1)])
    return float(sub[hit].mean())


def _hull_window(hull: Polygon, layout: PortLayout) -> tuple[int, int, int, int] | None:
    minx, miny, maxx, maxy = hull.bounds
    c0, r0 = ~layout.transform * (minx, maxy)
    c1, r1 = ~layout.transform * (maxx, miny)
    r0, c0 = max(0, int(r0)), max(0, int(c0))
    r1, c1 = min(layout.height, int(r1) + 1), min(layout.width, int(c1) + 1)
    return (r0, r1, c0, c1) if r0 < r1 and c0 < c1 else None


def _zone_visibility(port: Port, layout: PortLayout, obscured: np.ndarray) -> dict[str, float]:
    out = {}
    for zone in port.zones:
        inside = rio_features.geometry_mask([port.to_utm(zone.geometry)], out_shape=obscured.shape,
                                            transform=layout.transform, invert=True)
        if inside.any():
            out[zone.name] = round(1.0 - float(obscured[inside].mean()), 4)
    return out


# --------------------------------------------------------------------------------------------
# Files: the scene and its truth sidecar
# --------------------------------------------------------------------------------------------


def truth_path_for(scene_path: str | os.PathLike) -> Path:
    """`harbour.tif` -> `harbour.truth.geojson`, beside the scene."""
    path = Path(scene_path)
    return path.with_name(f"{path.stem}.truth.geojson")


def truth_to_geojson(truth: SimulationTruth) -> dict:
    meta = {k: v for k, v in asdict(truth).items() if k not in ("vessels", "truth_path")}
    meta["acquisition_time"] = truth.acquisition_time.strftime("%Y-%m-%dT%H:%M:%SZ")
    meta["note"] = "SIMULATED: synthetic vessels of a synthetic scene, not observations"
    features = [
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [v.lon, v.lat]},
         "properties": {**asdict(v), "simulated": True}}
        for v in truth.vessels
    ]
    return {"type": "FeatureCollection", "properties": meta, "features": features}


def write_truth(truth: SimulationTruth, path: str | os.PathLike) -> Path:
    """Write the truth sidecar atomically and remember where it went."""
    path = Path(path)
    _atomic_write_text(path, json.dumps(truth_to_geojson(truth), indent=1))
    truth.truth_path = path
    return path


def load_truth(path: str | os.PathLike) -> SimulationTruth:
    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    meta = dict(doc["properties"])
    meta.pop("note", None)
    meta["acquisition_time"] = parse_time(meta["acquisition_time"])
    meta["transform"] = tuple(meta["transform"])
    vessels = [TruthVessel(**{k: v for k, v in f["properties"].items() if k != "simulated"})
               for f in doc["features"]]
    return SimulationTruth(vessels=vessels, truth_path=Path(path), **meta)


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=path.suffix, dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a sidecar is for everyone
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def simulate_scene_file(
    port: Port,
    when: date | datetime | str,
    out_path: str | os.PathLike,
    *,
    seed: int = 0,
    cloud_fraction: float = 0.0,
    vessels: Sequence[VesselSpec | TruthVessel | Mapping] | None = None,
    size: tuple[int, int] | int | None = None,
) -> SimulationTruth:
    """Simulate and write a scene (scene format, tagged SIMULATED) and its truth sidecar.
    The truth goes first: wherever a scene exists, its truth exists too."""
    data, bands, crs, transform, truth = simulate_scene(
        port, when, seed=seed, cloud_fraction=cloud_fraction, vessels=vessels, size=size)
    out_path = Path(out_path)
    write_truth(truth, truth_path_for(out_path))
    write_scene(
        out_path, data, bands, crs, transform, scene_id=truth.scene_id, port=port.name,
        source="simulated", acquisition_time=truth.acquisition_time,
        extra_tags={"SIMULATED": "true", "SIM_SEED": str(seed),
                    "SIM_CLOUD_FRACTION": f"{cloud_fraction:g}",
                    "SIM_NOTE": "SIMULATED scene: synthetic, not a Sentinel-2 observation"},
    )
    return truth


# --------------------------------------------------------------------------------------------
# A scene source
# --------------------------------------------------------------------------------------------

CloudSchedule = Mapping | Callable[[str, datetime], float | None]
FleetHook = Callable[[Port, datetime], Sequence[VesselSpec] | None]


class SimulatedSource:
    """Scenes on a Sentinel-2-like revisit (every 2 then 3 days, ~01:45 UTC), with simulated
    weather: a tile-wide cloud cover for search and the AOI's own cover for the scene.
    `cloud_schedule` overrides the AOI cover: a mapping of date (or 'YYYY-MM-DD') to a
    fraction, or a function (port name, acquisition time) -> fraction or None. `fleet`
    (port, acquisition time) -> vessel specs dictates the vessels of each scene."""

    name = "simulated"

    def __init__(self, seed: int = 0, cloud_schedule: CloudSchedule | None = None,
                 fleet: FleetHook | None = None):
        self.seed = seed
        self.cloud_schedule = cloud_schedule
        self.fleet = fleet

    def acquisitions(self, port: Port, start: datetime, end: datetime) -> list[datetime]:
        day, last = start.astimezone(UTC).date() - timedelta(days=1), end.astimezone(UTC).date()
        times = []
        while day <= last:
            if satellite_on(port, day):
                moment = acquisition_time(port, day)
                if start <= moment <= end:
                    times.append(moment)
            day += timedelta(days=1)
        return times

    def aoi_cloud(self, port: Port, moment: datetime) -> float:
        """The simulated cloud cover over the AOI (0-1) at one acquisition."""
        scheduled = self._scheduled(port, moment)
        if scheduled is not None:
            return float(np.clip(scheduled, 0.0, 1.0))
        return _weather(port.name, moment, self.seed)

    def _scheduled(self, port: Port, moment: datetime) -> float | None:
        schedule = self.cloud_schedule
        if schedule is None:
            return None
        if callable(schedule):
            return schedule(port.name, moment)
        for key in (moment, moment.date(), moment.strftime("%Y-%m-%d")):
            if key in schedule:
                return schedule[key]
        return None

    def search(self, port: Port, start: datetime, end: datetime,
               max_cloud: float = 100.0) -> list[SceneRef]:
        refs = []
        for moment in self.acquisitions(port, start, end):
            aoi_cloud = self.aoi_cloud(port, moment)
            tile = _tile_cover(port.name, moment, self.seed, aoi_cloud)
            if tile <= max_cloud:
                refs.append(SceneRef(
                    scene_id_for(port, moment, self.seed), port.name, moment, self.name,
                    cloud_cover=tile,
                    extra={"aoi_cloud_fraction": aoi_cloud, "seed": self.seed,
                           "satellite": satellite_on(port, moment.date()), "simulated": True}))
        return refs

    def fetch(self, ref: SceneRef, port: Port, dest: Path) -> Path:
        moment = ref.acquisition_time
        vessels = self.fleet(port, moment) if self.fleet else None
        simulate_scene_file(port, moment, dest, seed=self.seed,
                            cloud_fraction=self.aoi_cloud(port, moment), vessels=vessels)
        return Path(dest)


def _weather(port_name: str, moment: datetime, seed: int) -> float:
    """AOI cloud cover that persists for days like weather systems do: slow waves plus a
    per-day draw, squashed to 0-1 with clear and overcast days both common."""
    rng = _rng(seed, _key(port_name), 5)
    periods, phases = rng.uniform(4, 13, 3), rng.uniform(0, 2 * math.pi, 3)
    t = (moment.date() - EPOCH).days
    slow = float(np.sum(np.sin(2 * math.pi * t / periods + phases)) / 1.5)
    day = _rng(seed, _key(port_name), t, 6).normal()
    level = 1 / (1 + math.exp(-(1.6 * slow + 0.9 * day - 0.4)))
    return float(np.clip((level - 0.2) / 0.6, 0.0, 1.0).round(3))


def _tile_cover(port_name: str, moment: datetime, seed: int, aoi_cloud: float) -> float:
    """The provider's tile-wide figure: related to, but not the same as, the AOI's."""
    noise = _rng(seed, _key(port_name), (moment.date() - EPOCH).days, 7).normal(0, 12)
    return round(float(np.clip(aoi_cloud * 100 + noise, 0, 100)), 1)


# --------------------------------------------------------------------------------------------
# A full-size tile for benchmarks, written strip by strip
# --------------------------------------------------------------------------------------------

LARGE_CELL = 32  # the big scene's land and land-cover fields live on a 320 m grid


def write_large_scene(
    path: str | os.PathLike,
    width: int = 10980,
    height: int = 10980,
    *,
    seed: int,
    strip_rows: int = 512,
    epsg: int = 32652,
) -> Path:
    """Write a SIMULATED 5-band scene of any size (a whole 10980 x 10980 Sentinel-2 tile by
    default) in strips, so memory stays bounded by one strip (~150 MB for 512 rows of a full
    tile) whatever the size. Tiled 512 px, ZSTD, atomic like `write_scene`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = _rng(seed, 11)
    cells = (height // LARGE_CELL + 2, width // LARGE_CELL + 2)
    coast = fractal_noise(cells, 3.2, rng) + np.linspace(1.5, -1.5, cells[0])[:, None]
    cover = fractal_noise(cells, 2.6, rng)
    hulls = _large_fleet(coast, width, height, rng)
    profile = _large_profile(width, height, epsg)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".tif", dir=path.parent)
    os.close(fd)
    try:
        # A small GDAL cache: finished tiles go to disk instead of piling up in memory.
        with rasterio.Env(GDAL_CACHEMAX=64), rasterio.open(tmp, "w", **profile) as dst:
            for row0 in range(0, height, strip_rows):
                rows = min(strip_rows, height - row0)
                strip = _large_strip(coast, cover, hulls, row0, rows, width, seed)
                dst.write(strip, window=Window(0, row0, width, rows))
            _tag_large(dst, width, height, seed)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _large_profile(width: int, height: int, epsg: int) -> dict:
    block = 512 if min(width, height) >= 512 else 256
    tiled = min(width, height) >= block
    profile = dict(driver="GTiff", width=width, height=height, count=5, dtype="uint16",
                   crs=CRS.from_epsg(epsg), transform=Affine(PIXEL_M, 0, 600000.0, 0,
                                                             -PIXEL_M, 4700040.0),
                   compress="zstd", zstd_level=1, predictor=2, interleave="pixel",
                   tiled=tiled, bigtiff="if_safer")
    if tiled:
        profile.update(blockxsize=block, blockysize=block)
    return profile


def _tag_large(dst, width: int, height: int, seed: int) -> None:
    dst.update_tags(REFLECTANCE_SCALE=f"{SCALE:g}", SCENE_ID=f"SIM_LARGE_{width}x{height}_{seed}",
                    SOURCE="simulated", SIMULATED="true", PORT="",
                    ACQUISITION_TIME="2024-06-15T01:50:00Z",
                    SIM_NOTE="SIMULATED benchmark scene: synthetic, not an observation")
    for i, name in enumerate(SCENE_BANDS, start=1):
        dst.set_band_description(i, name)


def _large_fleet(coast: np.ndarray, width: int, height: int,
                 rng: np.random.Generator) -> np.ndarray:
    """Vessels (x, y, heading, length px, width px) scattered over open water."""
    count = max(1, width * height // 200_000)
    xs, ys = rng.uniform(20, width - 20, count), rng.uniform(20, height - 20, count)
    water = coast[(ys // LARGE_CELL).astype(int), (xs // LARGE_CELL).astype(int)] < -0.3
    lengths = np.exp(rng.uniform(math.log(4), math.log(30), count))
    widths = np.clip(lengths / rng.uniform(5.5, 7.5, count), 0.8, 5)
    return np.column_stack([xs, ys, rng.uniform(0, 360, count), lengths, widths])[water]


def _row_noise(seed: int, stream: int, row0: int, shape: tuple[int, ...]) -> np.ndarray:
    """Noise drawn row by row from the row's own seed: the same pixels get the same noise
    whichever strip (or halo) they are drawn in, so strips join without a seam."""
    rows, rest = shape[-2], shape[:-2]
    out = np.empty(shape, dtype=np.float32)
    for i in range(rows):
        out[..., i, :] = _rng(seed, stream, row0 + i).standard_normal(
            (*rest, shape[-1]), dtype=np.float32)
    return out


def _large_strip(coast: np.ndarray, cover: np.ndarray, hulls: np.ndarray, row0: int, rows: int,
                 width: int, seed: int) -> np.ndarray:
    """Rows row0..row0+rows of the big scene as uint16 (5, rows, width). A halo of rows
    around the strip keeps the PSF blur seamless across strips."""
    halo = 4
    top = max(0, row0 - halo)
    shape = (rows + (row0 - top) + halo, width)
    land = _upsample(coast, LARGE_CELL, shape, top) > 0
    kind = _upsample(cover, LARGE_CELL, shape, top)
    classes = np.where(land, np.where(kind > 0.8, URBAN, np.where(kind < -1.0, BARE, FOREST)),
                       WATER).astype(np.uint8)
    del land, kind
    texture = _row_noise(seed, 12, top, shape) * CLASS_TEXTURE[classes]
    image = np.empty((5, *shape), dtype=np.float32)
    for b in range(5):
        image[b] = CLASS_SPECTRA[:, b][classes] * (1 + texture)
    del texture, classes
    near = hulls[(hulls[:, 1] > top - 20) & (hulls[:, 1] < top + shape[0] + 20)]
    for x, y, heading, length, beam in near:
        look = _vessel_look(f"large-{x:.0f}-{y:.0f}", seed)
        render_vessel(image, None, x, y - top, heading, length, beam, look, supersample=3)
    _blur(image)
    for b in range(5):
        image[b] += _row_noise(seed, 13 + b, top, shape) * NOISE_SIGMA[b]
    return _quantize(image)[:, row0 - top: row0 - top + rows]
