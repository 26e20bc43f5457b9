"""Where the vessels go: a random fleet for a port, and the placer that puts each vessel
alongside a free quay face or at anchor with swing room, never on land, on another vessel or
outside the AOI and the grid. A caller's vessel is placed from its id alone, so it keeps its
berth from one scene to the next."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from pyproj import Transformer
from shapely.geometry import Point, Polygon, box
from shapely.geometry.base import BaseGeometry

from imagery.ports import Port
from imagery.simulate.constants import PIXEL_M
from imagery.simulate.layout import PortLayout, QuayFace, SimulationError
from imagery.simulate.noise import _key, _rng
from imagery.simulate.truth import TruthVessel, VesselSpec

FENDER_GAP_M = 4.0  # hull to quay face


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
