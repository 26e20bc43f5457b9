"""A tiny review workspace for the review tests: three 128x128 scenes of Vostochny's oil
terminal five days apart, detections, alerts, an episode, and AIS imported from a
MarineCadastre CSV in which one vessel is named `<script>alert(1)</script>`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from affine import Affine
from pyproj import Transformer

from imagery import ais
from imagery.pipeline import open_workspace
from imagery.ports import get_port
from imagery.scene import SCENE_BANDS, write_scene
from imagery.workspace import Workspace

EVIL = "<script>alert(1)</script>"
EVIL_MMSI, STAR_MMSI = 273000001, 273000002
SIZE = 128
EPSG = 32653
T0 = datetime(2024, 3, 1, 1, 50, tzinfo=UTC)
MODEL, SHA = "berthnet-test", "ab" * 32
# Scene pixel centres of the vessels in every scene: (x, y, length px, horizontal?)
ALERT_PX, MATCHED_PX, FALSE_PX, MISSED_PX = (64.5, 64.5), (40.5, 90.5), (100.5, 30.5), (20.5, 20.5)


@dataclass
class Demo:
    ws: Workspace
    scenes: list[str]
    alert: str  # the dark vessel in the middle scene
    false_alert: str  # a bright patch the analyst will reject
    earlier_alert: str  # the same berth, previous scene
    transform: Affine


def _grid() -> Affine:
    berth = get_port("vostochny").zone("oil-terminal").geometry.centroid
    x, y = Transformer.from_crs("EPSG:4326", f"EPSG:{EPSG}", always_xy=True).transform(
        berth.x, berth.y)
    return Affine(10.0, 0, round(x) - SIZE * 5, 0, -10.0, round(y) + SIZE * 5)


def lonlat(transform: Affine, px: float, py: float) -> tuple[float, float]:
    x, y = transform * (px, py)
    lon, lat = Transformer.from_crs(f"EPSG:{EPSG}", "EPSG:4326", always_xy=True).transform(x, y)
    return float(lon), float(lat)


def _pixels(rng: np.random.Generator) -> np.ndarray:
    """Dark water, a bright quay along the top, and three bright hulls."""
    data = np.empty((len(SCENE_BANDS), SIZE, SIZE), dtype=np.uint16)
    water = (420, 380, 260, 120, 60)
    for b, value in enumerate(water):
        data[b] = value + rng.integers(0, 30, (SIZE, SIZE))
    data[:, :12, :] = np.array([1400, 1500, 1600, 2400, 2600])[:, None, None]
    for (x, y), length in ((ALERT_PX, 10), (MATCHED_PX, 8), (FALSE_PX, 4), (MISSED_PX, 6)):
        r, c = int(y), int(x)
        data[:, r - 1 : r + 2, c - length // 2 : c + length // 2] = np.array(
            [1800, 2000, 2100, 3000, 2200])[:, None, None]
    return data


def _ais_csv(path: Path, transform: Affine, acquired: datetime) -> Path:
    """MarineCadastre columns; the evil name is moored on the matched vessel, a second vessel
    is moored 600 m from the dark one."""
    head = ("MMSI,BaseDateTime,LAT,LON,SOG,COG,Heading,VesselName,IMO,CallSign,VesselType,"
            "Status,Length,Width,Cargo,TransceiverClass")
    lines = [head]
    for mmsi, name, (px, py), imo in ((EVIL_MMSI, EVIL, MATCHED_PX, "IMO9000001"),
                                      (STAR_MMSI, "KOREA STAR", (ALERT_PX[0], 4.5), "")):
        lon, lat = lonlat(transform, px, py)
        for hours in (3, 1):
            when = (acquired - timedelta(hours=hours)).strftime("%Y-%m-%dT%H:%M:%S")
            lines.append(f"{mmsi},{when},{lat:.6f},{lon:.6f},0.0,0.0,511,\"{name}\",{imo},"
                         f"CALL{mmsi % 100},80,5,80,14,80,A")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def build(root: Path, prefix: str = "S2TEST_vostochny_", simulated: bool = True) -> Demo:
    """The workspace under `root`; scene ids are `prefix` + the date (a prefix with a space or
    a `/` makes ids as some catalogues name scenes); `simulated=False` stores the same pixels
    as observed scenes (source `sentinel-2`), for what differs between the two."""
    ws = open_workspace(root)
    source = "simulated" if simulated else "sentinel-2"
    transform = _grid()
    rng = np.random.default_rng(0)
    scenes = []
    for k in range(3):
        when = T0 + timedelta(days=5 * k)
        sid = f"{prefix}{when:%Y%m%d}"
        path = ws.scene_path("vostochny", when, sid)
        write_scene(path, _pixels(rng), SCENE_BANDS, f"EPSG:{EPSG}", transform, scene_id=sid,
                    port="vostochny", source=source, acquisition_time=when,
                    extra_tags={"SIMULATED": "true"} if simulated else None)
        ws.record_scene(scene_id=sid, port="vostochny", source=source,
                        acquisition_time=when, status="stored", path=path,
                        cloud_fraction=0.05 * k, simulated=simulated)
        scenes.append(sid)
    ais.import_file(ws, _ais_csv(root / "ais.csv", transform, T0 + timedelta(days=5)))
    _insert_rows(ws, scenes, transform, simulated)
    return Demo(ws, scenes, f"{scenes[1]}#0", f"{scenes[1]}#2", f"{scenes[0]}#0", transform)


def _insert_rows(ws: Workspace, scenes: list[str], transform: Affine, simulated: bool) -> None:
    with ws.transaction() as conn:
        for k, sid in enumerate(scenes):
            when = (T0 + timedelta(days=5 * k)).strftime("%Y-%m-%dT%H:%M:%SZ")
            conn.execute("INSERT INTO processing (scene_id, status, stage, model, weights_sha256)"
                         " VALUES (?, 'done', 'alert', ?, ?)", (sid, MODEL, SHA))
            dets = [(ALERT_PX, 0.91, 100.0), (MATCHED_PX, 0.88, 80.0), (FALSE_PX, 0.52, 40.0)]
            for det_id, ((px, py), score, length) in enumerate(dets):
                lon, lat = lonlat(transform, px, py)
                conn.execute("INSERT INTO detections VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                             (sid, det_id, lon, lat, px, py, score, length, 14.0, 90.0, 1,
                              "oil-terminal"))
                if det_id != 1 and (k == 1 or det_id == 0):
                    _alert(conn, sid, det_id, when, lon, lat, px, py, score, length,
                           simulated)
            conn.execute("INSERT INTO matches VALUES (?, 1, ?, 12.0, 'held-moored')",
                         (sid, EVIL_MMSI))
            conn.execute("INSERT INTO zone_counts VALUES (?, 'vostochny', 'oil-terminal', 'berth',"
                         " 1.0, ?, 1, 'observed')", (sid, 3 if k == 1 else 2))
        conn.execute("INSERT INTO episodes VALUES (?, 'vostochny', 'oil-terminal', ?, ?, 2, ?, ?)",
                     (f"vostochny/oil-terminal/{scenes[0]}", "2024-03-01T01:50:00Z",
                      "2024-03-06T01:50:00Z", *lonlat(transform, *ALERT_PX)))
        conn.execute("UPDATE alerts SET episode_id = ? WHERE det_id = 0 AND scene_id IN (?, ?)",
                     (f"vostochny/oil-terminal/{scenes[0]}", scenes[0], scenes[1]))


def _alert(conn, sid, det_id, when, lon, lat, px, py, score, length, simulated) -> None:
    considered = [{"mmsi": STAR_MMSI, "name": "KOREA STAR", "distance_m": 600.0,
                   "length_m": 80.0, "refused": "beyond the 300 m gate"},
                  {"mmsi": EVIL_MMSI, "name": EVIL, "distance_m": 330.0, "length_m": 80.0,
                   "refused": "paired with another detection"}]
    reasons = ["unmatched berthed detection", f"no AIS vessel within 300 m ({EVIL})"]
    conn.execute(
        "INSERT INTO alerts (alert_id, scene_id, det_id, port, zone, acquisition_time, lon, lat,"
        " px_x, px_y, score, length_m, reasons, considered, chip_path, model, weights_sha256,"
        " simulated) VALUES (?, ?, ?, 'vostochny', 'oil-terminal', ?, ?, ?, ?, ?, ?, ?, ?, ?,"
        " NULL, ?, ?, ?)",
        (f"{sid}#{det_id}", sid, det_id, when, lon, lat, px, py, score, length,
         json.dumps(reasons), json.dumps(considered), MODEL, SHA, int(simulated)))
