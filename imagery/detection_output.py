"""Detections to files: GeoJSON FeatureCollection (WGS84 points, per-zone counts with each
zone's visible fraction) and CSV, and the check that a scene's pixels read as reflectance."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import rasterio
import shapely
from pyproj import Transformer
from rasterio.features import geometry_mask
from rasterio.windows import Window, from_bounds
from rasterio.windows import transform as window_transform

from imagery.csv_cells import csv_row
from imagery.postprocess import Detection
from imagery.scene import (
    SCL_OBSCURED,
    SceneError,
    SceneInfo,
    describe_read_error,
    read_scl,
    read_valid,
)

if TYPE_CHECKING:
    from imagery.detector import WeightsEntry

# --------------------------------------------------------------------------------------------
# GeoJSON / CSV output
# --------------------------------------------------------------------------------------------


def _to_wgs84(info: SceneInfo, detections: list[Detection]) -> None:
    if not detections:
        return
    xs, ys = zip(*(info.transform * (d.px_x, d.px_y) for d in detections), strict=True)
    to_ll = Transformer.from_crs(info.crs, "EPSG:4326", always_xy=True)
    lons, lats = to_ll.transform(np.array(xs), np.array(ys))
    for d, lon, lat in zip(detections, lons, lats, strict=True):
        d.lon, d.lat = float(lon), float(lat)


def zone_visibility(info: SceneInfo, geometry_wgs84) -> float:
    """Fraction of a zone that is visible: inside the scene, holding data (`read_valid`: no
    nodata, no all-zero fill) and, when the scene has SCL, not obscured (SCL_OBSCURED). Zones
    smaller than a pixel are judged by their centre pixel."""
    to_scene = Transformer.from_crs("EPSG:4326", info.crs, always_xy=True)
    geom = shapely.transform(geometry_wgs84, lambda xy: np.column_stack(
        to_scene.transform(xy[:, 0], xy[:, 1])))
    win = from_bounds(*geom.bounds, transform=info.transform).round_offsets().round_lengths()
    win = Window(win.col_off, win.row_off, max(1, win.width), max(1, win.height))
    shape = (int(win.height), int(win.width))
    inside = ~geometry_mask([geom], shape, window_transform(win, info.transform))
    if not inside.any():
        inside[shape[0] // 2, shape[1] // 2] = True
    visible = read_valid(info, win)
    scl = read_scl(info, win)
    if scl is not None:
        visible &= ~np.isin(scl, SCL_OBSCURED)
    return round(float(visible[inside].mean()), 4)


def feature_collection(
    info: SceneInfo,
    detections: list[Detection],
    entry: WeightsEntry,
    threshold: float,
    port=None,
    min_length_m: float = 0.0,
    tta: bool = False,
    precision: str = "fp32",
) -> dict:
    """The design.md GeoJSON: WGS84 points with per-vessel and per-zone properties, and the
    model, threshold and precision that made them."""
    features = []
    for d in detections:
        props = {
            "score": round(d.score, 4),
            "length_m": round(d.length_m, 1),
            "width_m": round(d.width_m, 1),
            # An axial heading just under 180 rounds to 180.0, which is 0.0.
            "heading_deg": round(d.heading_deg, 1) % 180.0,
            "berthed": d.berthed,
            "zone": d.zone,
            "px_x": round(d.px_x, 2),
            "px_y": round(d.px_y, 2),
        }
        geometry = {"type": "Point", "coordinates": [round(d.lon, 7), round(d.lat, 7)]}
        features.append({"type": "Feature", "geometry": geometry, "properties": props})
    zones = {}
    for zone in port.zones if port is not None else ():
        zones[zone.name] = {
            "count": sum(d.zone == zone.name for d in detections),
            "visible_fraction": zone_visibility(info, zone.geometry),
        }
    when = info.acquisition_time
    properties = {
        "scene_id": info.scene_id,
        "acquisition_time": when.strftime("%Y-%m-%dT%H:%M:%SZ") if when else None,
        "port": port.name if port is not None else info.port,
        "model": entry.name,
        "weights_sha256": entry.sha256,
        "threshold": threshold,
        "min_length_m": min_length_m,
        "tta": tta,
        "precision": precision,
        "count": len(detections),
        "zones": zones,
        "simulated": info.simulated,
    }
    return {"type": "FeatureCollection", "properties": properties, "features": features}


CSV_FIELDS = ("lon", "lat", "score", "length_m", "width_m", "heading_deg", "berthed", "zone",
              "px_x", "px_y")


def write_csv(collection: dict, path: str | os.PathLike) -> Path:
    """One row per detection, with the scene id and time on every row."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    top = collection["properties"]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(("scene_id", "acquisition_time", *CSV_FIELDS))
        for f in collection["features"]:
            lon, lat = f["geometry"]["coordinates"]
            p = f["properties"]
            row = [lon, lat, *(p[k] for k in CSV_FIELDS[2:])]
            writer.writerow(csv_row((top["scene_id"], top["acquisition_time"], *row)))
    return path


def _write_json(doc: dict, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=1), encoding="utf-8")
    os.replace(tmp, path)
    return path


def check_reflectance_scale(info: SceneInfo) -> None:
    """Refuse a scene whose pixels do not read as reflectance (a missing or wrong
    REFLECTANCE_SCALE): its median, from a decimated read, must be below 1."""
    band = next((b for b in ("B08", "B04", "B11") if b in info.bands), info.bands[0])
    try:
        with rasterio.open(info.path) as src:
            sample = src.read(info.band_index(band), out_shape=(min(info.height, 128),
                                                                min(info.width, 128)))
    except rasterio.errors.RasterioError as exc:
        # A file whose header and first block read but whose body is damaged.
        raise SceneError(info.path, f"corrupt pixel data ({describe_read_error(exc)})") from None
    median = float(np.median(sample)) / info.reflectance_scale
    if not median < 1.0:
        raise SceneError(
            info.path, f"{band} reads as reflectance {median:.3g} (median) with "
            f"REFLECTANCE_SCALE={info.reflectance_scale:g}: the scale is wrong or unknown; "
            "set the REFLECTANCE_SCALE tag (10000 for Sentinel-2 L2A digital numbers)"
        )
