"""Analysts' verdicts as training data: `berthwatch chips export --out DIR`.

For each reviewed scene, `<out>/<scene_id>/` gets
- `scene.tif`: a crop of the scene in the scene format (every band, SCL included, the original
  DN and tags), around the reviewed vessels with CHIP_HALF pixels of context;
- `labels.geojson`: the layout of sen2ships: one WGS84 Polygon per vessel, a rotated rectangle
  from the detection's length, width and heading (a SQUARE_PX square when those are unknown),
  with properties `bbox_px` [x, y, w, h] and `area_px` in the crop's pixel grid, `category`
  "ship", `source` ("review", or "ais-matched" for a detection AIS corroborates), `verdict`.

Labels: confirmed alerts, vessels analysts added, and detections they moved (at the new
place). Detections AIS matched inside the crop are labels too, so a crop never teaches a
corroborated vessel as background. Negatives: rejected alerts and deleted detections, written
as Point features with `"negative": true` and `category` "not_ship" (training/chips.py samples
crops around them so the model learns what is not a vessel). Unsure and unreviewed alerts are
left out of both.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import rasterio
from affine import Affine
from pyproj import Transformer
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from imagery.pipeline import CHIP_HALF
from imagery.review import db as review_db
from imagery.review.db import Vessel
from imagery.review.media import MediaError, scene_info
from imagery.scene import SceneInfo, write_scene
from imagery.workspace import Workspace, utc_now

SQUARE_PX = 3.0  # side of the stand-in outline of a vessel whose size is unknown
MAX_FOLDER_BYTES = 200  # of a scene id in a folder name (file systems allow 255)
WIDTH_RATIO = 0.16  # beam / length of a typical small tanker, when only the length is known


@dataclass
class ExportedScene:
    scene_id: str
    folder: Path | None
    labels: int = 0
    negatives: int = 0
    skipped: str | None = None


def export_chips(ws: Workspace, out: str | os.PathLike, margin: int = CHIP_HALF
                 ) -> list[ExportedScene]:
    """Write every reviewed scene's crop and labels under `out`; returns what was written."""
    review_db.ensure_schema(ws)
    out = Path(out)
    return [export_scene(ws, sid, out, margin) for sid in review_db.reviewed_scene_ids(ws)]


def classify(ws: Workspace, scene_id: str) -> tuple[list[tuple[Vessel, str, str]],
                                                     list[tuple[Vessel, str]]]:
    """(labels as (vessel, source, verdict), negatives as (vessel, verdict)) of a scene."""
    matched = _matched(ws, scene_id)
    labels, negatives = [], []
    for v in review_db.scene_vessels(ws, scene_id):
        if v.state == "deleted":
            if v.origin == "model":
                negatives.append((v, "deleted"))
        elif v.origin == "added":
            labels.append((v, "review", "added"))
        elif v.state == "moved":
            labels.append((v, "review", "moved"))
        elif v.verdict == "confirmed":
            labels.append((v, "review", "confirmed"))
        elif v.verdict == "rejected":
            negatives.append((v, "rejected"))
        elif v.det_id in matched and v.alert_id is None:
            labels.append((v, "ais-matched", "ais-matched"))
    return labels, negatives


def _matched(ws: Workspace, scene_id: str) -> set[int]:
    conn = ws.connect()
    try:
        return {r[0] for r in conn.execute("SELECT det_id FROM matches WHERE scene_id = ?",
                                           (scene_id,))}
    finally:
        conn.close()


def export_scene(ws: Workspace, scene_id: str, out: Path, margin: int = CHIP_HALF
                 ) -> ExportedScene:
    try:
        info = scene_info(ws, scene_id)
    except MediaError as exc:
        return ExportedScene(scene_id, None, skipped=str(exc))
    labels, negatives = classify(ws, scene_id)
    reviewed = [v for v, source, _ in labels if source == "review"] + [v for v, _ in negatives]
    if not reviewed:
        return ExportedScene(scene_id, None, skipped="only unsure or unreviewed vessels")
    win = crop_window(info, reviewed, margin)
    labels = [item for item in labels if _inside(win, item[0])]
    folder = out / folder_name(scene_id)
    write_crop(info, win, folder / "scene.tif")
    doc = labels_geojson(info, win, labels, [n for n in negatives if _inside(win, n[0])])
    _write_json(folder / "labels.geojson", doc)
    return ExportedScene(scene_id, folder, len(doc["features"]) - doc["properties"]["negatives"],
                         doc["properties"]["negatives"])


def folder_name(scene_id: str) -> str:
    """A scene id as one safe path component (ids come from catalogues: never trusted). An
    id that had to be changed (or shortened) gets a digest of itself appended, so two ids that
    differ only in the characters replaced (`S2 A`, `S2_A`) never share, and overwrite, one
    folder."""
    name = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in scene_id)
    name = name.lstrip(".").encode()[:MAX_FOLDER_BYTES].decode("utf-8", "ignore") or "scene"
    if name != scene_id:
        name += "-" + hashlib.sha256(scene_id.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return name


def _inside(win: Window, v: Vessel) -> bool:
    return (win.col_off <= v.px_x < win.col_off + win.width
            and win.row_off <= v.px_y < win.row_off + win.height)


def crop_window(info: SceneInfo, vessels: list[Vessel], margin: int) -> Window:
    """The reviewed vessels' bounding box with `margin` pixels around, inside the scene."""
    col0 = max(0, math.floor(min(v.px_x for v in vessels)) - margin)
    row0 = max(0, math.floor(min(v.px_y for v in vessels)) - margin)
    col1 = min(info.width, math.ceil(max(v.px_x for v in vessels)) + margin)
    row1 = min(info.height, math.ceil(max(v.px_y for v in vessels)) + margin)
    return Window(col0, row0, col1 - col0, row1 - row0)


def write_crop(info: SceneInfo, win: Window, path: Path) -> Path:
    """The window of the scene, DN untouched, as a scene-format GeoTIFF."""
    with rasterio.open(info.path) as src:
        data = src.read(window=win)
        transform = src.window_transform(win)
        tags = src.tags()
    extra = {k: v for k, v in tags.items() if k not in ("REFLECTANCE_SCALE", "SCENE_ID",
                                                        "SOURCE", "PORT", "ACQUISITION_TIME")}
    extra["REVIEW_CROP"] = f"{int(win.col_off)},{int(win.row_off)},{int(win.width)},"\
        f"{int(win.height)}"
    return write_scene(path, data, info.bands, info.crs, transform, scene_id=info.scene_id,
                       port=info.port, source=info.source,
                       acquisition_time=info.acquisition_time,
                       reflectance_scale=info.reflectance_scale, extra_tags=extra)


# --- labels ----------------------------------------------------------------------------------


def outline(info: SceneInfo, v: Vessel) -> list[tuple[float, float]]:
    """The vessel's rotated rectangle (closed ring) in the scene CRS."""
    cx, cy = info.transform * (v.px_x, v.px_y)
    to_map = 1.0 / info.ground_scale  # ground metres -> map units (EPSG:3857 stretches)
    if v.length_m and v.heading_deg is not None:
        half_l = v.length_m / 2 * to_map
        half_w = (v.width_m or v.length_m * WIDTH_RATIO) / 2 * to_map
        h = math.radians(v.heading_deg)
        u, w = (math.sin(h), math.cos(h)), (math.cos(h), -math.sin(h))  # along, across (E, N)
    else:
        half_l = half_w = SQUARE_PX * info.pixel_size_map / 2
        u, w = (1.0, 0.0), (0.0, 1.0)
    ring = [(cx + a * half_l * u[0] + b * half_w * w[0],
             cy + a * half_l * u[1] + b * half_w * w[1])
            for a, b in ((1, 1), (1, -1), (-1, -1), (-1, 1))]
    return ring + ring[:1]


def _pixel_bbox(ring: list[tuple[float, float]], crop: Affine) -> tuple[list[float], float]:
    inverse = ~crop
    pts = [inverse * xy for xy in ring]
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    area = abs(sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(pts, pts[1:], strict=False)))
    bbox = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
    return [round(b, 2) for b in bbox], round(area / 2, 2)


def labels_geojson(info: SceneInfo, win: Window, labels: list[tuple[Vessel, str, str]],
                   negatives: list[tuple[Vessel, str]]) -> dict:
    crop = window_transform(win, info.transform)
    to_wgs84 = Transformer.from_crs(info.crs, "EPSG:4326", always_xy=True)
    features = []
    for v, source, verdict in labels:
        ring = outline(info, v)
        bbox, area = _pixel_bbox(ring, crop)
        lonlat = [[round(c, 8) for c in to_wgs84.transform(x, y)] for x, y in ring]
        features.append(_feature({"type": "Polygon", "coordinates": [lonlat]}, v, {
            "bbox_px": bbox, "area_px": area, "category": "ship", "source": source,
            "verdict": verdict}))
    for v, verdict in negatives:
        features.append(_feature({"type": "Point", "coordinates": [v.lon, v.lat]}, v, {
            "negative": True, "category": "not_ship", "source": "review", "verdict": verdict,
            "px": [round(v.px_x - win.col_off, 2), round(v.px_y - win.row_off, 2)]}))
    for i, f in enumerate(features, start=1):
        f["id"] = i
    return {"type": "FeatureCollection", "properties": {
        "scene_id": info.scene_id, "exported_at": utc_now(), "exported_by": "berthwatch review",
        "crop_px": [int(win.col_off), int(win.row_off), int(win.width), int(win.height)],
        "negatives": len(negatives), "simulated": info.simulated,
    }, "features": features}


def _feature(geometry: dict, v: Vessel, props: dict) -> dict:
    props.update(ref=v.ref, alert_id=v.alert_id)
    return {"type": "Feature", "geometry": geometry, "properties": props}


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)
