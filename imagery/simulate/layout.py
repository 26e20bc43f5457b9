"""A port's fixed geography on its 10 m UTM scene grid (the coast does not move between
scenes): land on the side away from the anchorages, straight quays through the berth zones,
piers, the quay faces vessels lie against, and per pixel the surface class, static texture,
harbour turbidity and distance to land. Built once per port and grid size (cached)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from affine import Affine
from rasterio import features as rio_features
from rasterio.crs import CRS
from scipy import ndimage
from shapely import union_all
from shapely.geometry import Polygon
from shapely.geometry.base import BaseGeometry

from imagery.ports import Port
from imagery.simulate.constants import BARE, CONCRETE, FOREST, PIXEL_M, URBAN, WATER
from imagery.simulate.noise import _key, _rng, fractal_noise

QUAY_AT = 0.4  # quay line this far into a berth zone from its landward side


class SimulationError(ValueError):
    """A simulation request that cannot be met (unknown zone, bad size)."""


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
