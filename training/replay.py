"""An analyst's work replayed on a labelled folder, through the functions the review page
calls (`review_db.record`): for tests of the learning loop and benchmarks/adapt_bench.py.

The folder's scene is copied into a workspace, the model's detections stored (each one an
alert, so each gets a verdict), then detections within 20 m of a labelled outline are
confirmed and moved onto it, the others rejected, and labelled vessels nothing found are
added.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import rasterio

from imagery.detector import detect_scene
from imagery.review.db import ensure_schema as ensure_review_schema
from imagery.review.db import record
from imagery.workspace import Workspace
from training.evaluate import _ship_outlines, match_pairs
from training.holdout import _pixel_geometries

ANALYST = "replay"


@dataclass
class Replayed:
    scene_id: str
    detections: int
    confirmed: int
    rejected: int
    added: int


def store_scene(ws: Workspace, folder: Path, scene_id: str, port: str,
                when: datetime) -> Path:
    """Copy the folder's scene into the workspace and record it as stored."""
    dest = ws.root / "scenes" / port / f"{scene_id}.tif"
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(folder / "scene.tif", dest)
    ws.record_scene(scene_id=scene_id, port=port, source="replay", acquisition_time=when,
                    status="stored", path=dest)
    return dest


def store_detections(ws: Workspace, scene_id: str, port: str, when: datetime,
                     collection: dict) -> int:
    """The detections as the pipeline stores them, each also an alert."""
    stamp = when.strftime("%Y-%m-%dT%H:%M:%SZ")
    top = collection["properties"]
    with ws.transaction() as conn:
        for i, f in enumerate(collection["features"]):
            p = f["properties"]
            lon, lat = f["geometry"]["coordinates"][:2]
            conn.execute("INSERT INTO detections VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (scene_id, i, lon, lat, p.get("px_x"), p.get("px_y"), p["score"],
                          p.get("length_m"), p.get("width_m"), p.get("heading_deg"), 1, None))
            conn.execute(
                """INSERT INTO alerts (alert_id, scene_id, det_id, port, zone, acquisition_time,
                       lon, lat, px_x, px_y, score, length_m, reasons, considered, model,
                       weights_sha256) VALUES (?, ?, ?, ?, NULL, ?, ?, ?, ?, ?, ?, ?, '[]',
                       '[]', ?, ?)""",
                (f"{scene_id}#{i}", scene_id, i, port, stamp, lon, lat, p.get("px_x"),
                 p.get("px_y"), p["score"], p.get("length_m"), top.get("model"),
                 top.get("weights_sha256")))
    return len(collection["features"])


def replay_folder(ws: Workspace, folder: Path, scene_id: str, port: str, when: datetime,
                  weights: str | None, threshold: float | None = None) -> Replayed:
    """Detect on the folder's scene with `weights` and review every detection as the labels
    say."""
    ensure_review_schema(ws)
    path = store_scene(ws, folder, scene_id, port, when)
    collection = detect_scene(path, weights=weights, threshold=threshold, progress=False)
    n = store_detections(ws, scene_id, port, when, collection)
    doc = json.loads((folder / "labels.geojson").read_text(encoding="utf-8"))
    ships = _ship_outlines(folder)
    with rasterio.open(path) as src:
        vessel_feats = [f for f in doc["features"]
                        if f["geometry"]["type"] in ("Polygon", "MultiPolygon")
                        and not (f.get("properties") or {}).get("negative")]
        pixel = _pixel_geometries({"features": vessel_feats}, src.crs, src.transform)
    feats = collection["features"]
    points = np.array([f["geometry"]["coordinates"][:2] for f in feats]).reshape(-1, 2)
    pairs = dict((j, i) for i, j in match_pairs(ships, points))
    for j in range(len(feats)):
        alert = f"{scene_id}#{j}"
        if j in pairs:
            i = pairs[j]
            c, g = ships[i].centroid, pixel[i].centroid
            record(ws, scene_id=scene_id, action="move", analyst=ANALYST, alert_id=alert,
                   det_id=j, payload={"target": f"d{j}", "px_x": g.x, "px_y": g.y,
                                      "lon": c.x, "lat": c.y})
            record(ws, scene_id=scene_id, action="verdict", analyst=ANALYST, alert_id=alert,
                   det_id=j, verdict="confirmed")
        else:
            record(ws, scene_id=scene_id, action="verdict", analyst=ANALYST, alert_id=alert,
                   det_id=j, verdict="rejected")
    found = set(pairs.values())
    for i, (ship, g) in enumerate(zip(ships, pixel, strict=True)):
        if i in found:
            continue
        c, cg = ship.centroid, g.centroid
        record(ws, scene_id=scene_id, action="add", analyst=ANALYST,
               payload={"px_x": cg.x, "px_y": cg.y, "lon": c.x, "lat": c.y})
    return Replayed(scene_id, n, len(pairs), n - len(pairs), len(ships) - len(found))


def adopt(ws: Workspace, weights: str | Path) -> str:
    """Copy weights (.pt + .json) into the workspace and make them its promoted model, as if
    a retrain had promoted them; returns the copy's path."""
    from imagery import models
    from imagery.detector import get_weights

    source = get_weights(weights)
    dest = ws.root / "models"
    dest.mkdir(parents=True, exist_ok=True)
    for suffix in (".pt", ".json"):
        shutil.copyfile(source.path.with_suffix(suffix), dest / f"{source.path.stem}{suffix}")
    entry = get_weights(dest / f"{source.path.stem}.pt")
    models.register(ws, name=entry.name, sha256=entry.sha256, path=entry.path,
                    parent=None, training_data={}, metrics={}, threshold=entry.threshold,
                    promote=True)
    return str(entry.path)
