"""Ports as configuration: one GeoJSON file per port.

A port file is a FeatureCollection whose top-level `properties` give `name`, `title` and
`epsg` (the port's UTM zone), with one feature of `kind: "aoi"` (the harbour polygon to fetch)
and any number of `kind: "berth"` features (named berth zones; `kind: "oil-berth"` marks a berth
public reporting associates with oil products: it is a berth everywhere, and the tanker rule
takes it as evidence). Analysts replace or extend the shipped ports by pointing `--ports DIR`
at their own files.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import shapely
from pyproj import CRS, Transformer
from shapely.geometry import Point, shape
from shapely.geometry.base import BaseGeometry


class PortsError(ValueError):
    """A malformed ports file; the message names the file and the feature."""


@dataclass(frozen=True)
class BerthZone:
    name: str
    geometry: BaseGeometry  # WGS84 lon/lat
    kind: str = "berth"
    approximate: bool = True
    properties: dict = field(default_factory=dict, compare=False)
    oil_berth: bool = False  # the file said kind "oil-berth" (kind stays "berth")

    @property
    def declared_kind(self) -> str:
        return "oil-berth" if self.oil_berth else self.kind


@dataclass(frozen=True)
class Port:
    name: str
    title: str
    epsg: int
    aoi: BaseGeometry  # WGS84 lon/lat polygon
    zones: tuple[BerthZone, ...]
    path: Path
    properties: dict = field(default_factory=dict, compare=False)

    def to_utm(self, geom: BaseGeometry) -> BaseGeometry:
        project = Transformer.from_crs("EPSG:4326", f"EPSG:{self.epsg}", always_xy=True)
        return shapely.transform(geom, lambda xy: np.column_stack(project.transform(*xy.T)))

    @property
    def aoi_area_km2(self) -> float:
        return self.to_utm(self.aoi).area / 1e6

    def zone_at(self, lon: float, lat: float) -> str | None:
        point = Point(lon, lat)
        for zone in self.zones:
            if zone.geometry.covers(point):
                return zone.name
        return None

    def zone(self, name: str) -> BerthZone:
        for zone in self.zones:
            if zone.name == name:
                return zone
        raise KeyError(f"port {self.name} has no zone {name!r}")


def default_ports_dir() -> Path:
    return Path(str(resources.files("imagery") / "ports_default"))


def load_ports(directory: str | os.PathLike | None = None) -> dict[str, Port]:
    """Every `*.geojson` port in `directory` (default: the shipped ports), by name."""
    folder = Path(directory) if directory else default_ports_dir()
    if not folder.is_dir():
        raise PortsError(f"{folder}: ports directory does not exist")
    ports: dict[str, Port] = {}
    for path in sorted(folder.glob("*.geojson")):
        port = load_port_file(path)
        if port.name in ports:
            other = ports[port.name].path
            raise PortsError(f"{path}: port {port.name!r} is also defined in {other}")
        ports[port.name] = port
    if not ports:
        raise PortsError(f"{folder}: no *.geojson port files found")
    return ports


def get_port(name: str, directory: str | os.PathLike | None = None) -> Port:
    ports = load_ports(directory)
    try:
        return ports[name.lower()]
    except KeyError:
        known = ", ".join(sorted(ports))
        raise PortsError(f"unknown port {name!r}; known ports: {known}") from None


def load_port_file(path: str | os.PathLike) -> Port:
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise PortsError(f"{path}: cannot read ({exc})") from None
    except json.JSONDecodeError as exc:
        raise PortsError(f"{path}: invalid JSON at line {exc.lineno} ({exc.msg})") from None
    if not isinstance(doc, dict) or doc.get("type") != "FeatureCollection":
        raise PortsError(f"{path}: not a GeoJSON FeatureCollection")
    meta = doc.get("properties") or {}
    name = str(meta.get("name") or path.stem).strip().lower()
    epsg = _epsg(path, meta.get("epsg"))
    aoi, zones = None, []
    features = doc.get("features")
    if not isinstance(features, list):
        raise PortsError(f"{path}: 'features' must be a list")
    for index, feature in enumerate(features):
        kind, geom, props = _feature(path, index, feature)
        if kind == "aoi":
            if aoi is not None:
                raise PortsError(f"{path}: feature {index}: a second 'aoi' feature")
            aoi = geom
        elif kind in ("berth", "oil-berth", "anchorage"):
            zone_name = str(props.get("name") or "").strip()
            if not zone_name:
                raise PortsError(f"{path}: feature {index}: berth zone has no 'name'")
            if any(z.name == zone_name for z in zones):
                raise PortsError(f"{path}: feature {index} ({zone_name}): duplicate zone name")
            approx = bool(props.get("approximate", True))
            # An oil berth is a berth to every stage; only the tanker rule reads `oil_berth`.
            zones.append(BerthZone(zone_name, geom, "berth" if kind == "oil-berth" else kind,
                                   approx, dict(props), oil_berth=kind == "oil-berth"))
        else:
            named = f" ({props['name']})" if props.get("name") else ""
            raise PortsError(
                f"{path}: feature {index}{named}: property 'kind' is {kind!r}; "
                "expected 'aoi', 'berth', 'oil-berth' or 'anchorage'"
            )
    if aoi is None:
        raise PortsError(f"{path}: no feature with kind 'aoi' (the harbour polygon)")
    for zone in zones:
        if not aoi.intersects(zone.geometry):
            raise PortsError(f"{path}: zone {zone.name!r} lies outside the port's AOI")
    title = str(meta.get("title") or name.title())
    return Port(name, title, epsg, aoi, tuple(zones), path, dict(meta))


def _epsg(path: Path, value) -> int:
    try:
        code = int(value)
        crs = CRS.from_epsg(code)
    except (TypeError, ValueError, Exception):
        raise PortsError(f"{path}: properties.epsg {value!r} is not a valid EPSG code") from None
    if not crs.is_projected:
        raise PortsError(f"{path}: EPSG:{code} is not a projected CRS in metres (use the UTM zone)")
    return code


def _feature(path: Path, index: int, feature) -> tuple[str, BaseGeometry, dict]:
    where = f"{path}: feature {index}"
    if not isinstance(feature, dict) or feature.get("type") != "Feature":
        raise PortsError(f"{where}: not a GeoJSON Feature")
    props = feature.get("properties") or {}
    if props.get("name"):
        where += f" ({props['name']})"
    try:
        geom = shape(feature.get("geometry"))
    except Exception as exc:
        raise PortsError(f"{where}: invalid geometry ({exc})") from None
    if geom.geom_type not in ("Polygon", "MultiPolygon"):
        raise PortsError(f"{where}: geometry must be a Polygon, got {geom.geom_type}")
    if not geom.is_valid or geom.is_empty:
        raise PortsError(f"{where}: polygon is empty or self-intersecting")
    minx, miny, maxx, maxy = geom.bounds
    if not (-180 <= minx <= maxx <= 180 and -90 <= miny <= maxy <= 90):
        raise PortsError(f"{where}: coordinates are not WGS84 lon/lat")
    return str(props.get("kind", "")).strip().lower(), geom, props
