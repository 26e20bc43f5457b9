"""One simulated scene, assembled: place the fleet, paint the surface and the vessels, add
clouds, pass it all through the sensor and work out the truth (how much of each hull and each
zone the clouds hide). `simulate_scene_file` writes the scene with its truth sidecar."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from pathlib import Path

import numpy as np
from affine import Affine
from rasterio import features as rio_features
from rasterio.crs import CRS
from shapely.geometry import Polygon

from imagery.ports import Port
from imagery.scene import SCL_OBSCURED, write_scene
from imagery.simulate.constants import BAND_NAMES, PIXEL_M
from imagery.simulate.fleet import _as_spec, _Placed, _Placer, _to_wgs84, random_fleet
from imagery.simulate.layout import PortLayout, SimulationError, port_layout
from imagery.simulate.noise import _key, _rng
from imagery.simulate.pixels import (
    _apply_clouds,
    _clouds,
    _scl,
    _sensor,
    _surface,
    _vessel_look,
    render_vessel,
)
from imagery.simulate.timing import acquisition_time, solar_position
from imagery.simulate.truth import (
    SimulationTruth,
    TruthVessel,
    VesselSpec,
    truth_path_for,
    write_truth,
)

log = logging.getLogger(__name__)


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
