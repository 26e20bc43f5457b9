"""The unattended pass: search new scenes, fetch, detect, reconcile, alert.

Named stages run per scene, and each scene's results land in the database in ONE transaction
together with the mark that the scene is done; files (detections GeoJSON, evidence chips) are
written atomically before it under names derived from the scene, so a run killed at any point
leaves either nothing or a complete scene, and the next run redoes exactly what is missing.
A lock file keeps two runs from overlapping. A scene that fails is recorded with its reason and
retried on a later run without blocking the others; a scene whose file cannot be read is
unusable, not transient, and is recorded as skipped. A stored file is checked against its
sha256 before use. When the workspace itself cannot be written (a full disk), the pass stops
with one line and the database stays as it was.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

import rasterio
from pyproj import Transformer

from imagery.ports import Port
from imagery.reconcile import (
    NO_AIS_COVERAGE,
    AisFix,
    AisVessel,
    Detection,
    Episode,
    Gates,
    SceneReconciliation,
    Unmatched,
    ZoneCount,
    merge_episodes,
    reconcile_scene,
)
from imagery.scene import SCL_OBSCURED, SceneError, open_scene, read_scl
from imagery.sources import SceneSource, fetch_into_workspace
from imagery.workspace import Workspace, WorkspaceError, file_stem, sha256_file, utc_now

PIPELINE_SCHEMA = """
CREATE TABLE IF NOT EXISTS processing (
    scene_id TEXT PRIMARY KEY REFERENCES scenes(scene_id),
    status TEXT NOT NULL CHECK (status IN ('done', 'failed')),
    stage TEXT,
    reason TEXT,
    attempts INTEGER NOT NULL DEFAULT 1,
    model TEXT,
    weights_sha256 TEXT,
    detections_path TEXT,        -- relative to the workspace root
    ais_coverage INTEGER,        -- 1 covered, 0 no AIS fix around the acquisition (no alerts)
    ais_fixes INTEGER            -- AIS fixes in the coverage box and window
);
CREATE TABLE IF NOT EXISTS detections (
    scene_id TEXT NOT NULL REFERENCES scenes(scene_id),
    det_id INTEGER NOT NULL,
    lon REAL NOT NULL, lat REAL NOT NULL, px_x REAL, px_y REAL,
    score REAL NOT NULL, length_m REAL, width_m REAL, heading_deg REAL,
    berthed INTEGER NOT NULL, zone TEXT,
    PRIMARY KEY (scene_id, det_id)
);
CREATE TABLE IF NOT EXISTS zone_counts (
    scene_id TEXT NOT NULL REFERENCES scenes(scene_id),
    port TEXT NOT NULL, zone TEXT NOT NULL, kind TEXT NOT NULL,
    visible_fraction REAL NOT NULL,
    detected INTEGER,            -- NULL = unknown (hidden by cloud), never 0 for cloud
    ais INTEGER NOT NULL,
    status TEXT NOT NULL,
    PRIMARY KEY (scene_id, zone)
);
CREATE TABLE IF NOT EXISTS matches (
    scene_id TEXT NOT NULL, det_id INTEGER NOT NULL, mmsi INTEGER NOT NULL,
    distance_m REAL NOT NULL, method TEXT NOT NULL,
    PRIMARY KEY (scene_id, det_id)
);
CREATE TABLE IF NOT EXISTS ais_only (
    scene_id TEXT NOT NULL, mmsi INTEGER NOT NULL, zone TEXT, lon REAL, lat REAL,
    method TEXT, reason TEXT NOT NULL,
    PRIMARY KEY (scene_id, mmsi)
);
CREATE TABLE IF NOT EXISTS alerts (
    alert_id TEXT PRIMARY KEY,          -- <scene_id>#<det_id>: stable across reruns
    scene_id TEXT NOT NULL, det_id INTEGER NOT NULL,
    port TEXT NOT NULL, zone TEXT, acquisition_time TEXT NOT NULL,
    lon REAL NOT NULL, lat REAL NOT NULL, px_x REAL, px_y REAL,
    score REAL NOT NULL, length_m REAL,
    reasons TEXT NOT NULL,              -- JSON list
    considered TEXT NOT NULL,           -- JSON list of AIS vessels considered, with distances
    chip_path TEXT,                     -- relative to the workspace root
    model TEXT, weights_sha256 TEXT,
    episode_id TEXT,
    simulated INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS alerts_port_time ON alerts(port, acquisition_time);
CREATE TABLE IF NOT EXISTS episodes (
    episode_id TEXT PRIMARY KEY,        -- <port>/<zone>/<first alert id>
    port TEXT NOT NULL, zone TEXT NOT NULL,
    first_seen TEXT NOT NULL, last_seen TEXT NOT NULL,
    scenes INTEGER NOT NULL, lon REAL, lat REAL
);
"""

# Columns added after the first release: added to older workspaces when they are opened.
ADDED_COLUMNS = (("processing", "ais_coverage", "INTEGER"), ("processing", "ais_fixes", "INTEGER"))
DEFAULT_GATES = Gates()


class RunLocked(RuntimeError):
    """Another run holds the workspace lock."""


class WorkspaceWriteError(RuntimeError):
    """The workspace could not record something (a full disk): the pass stops there."""


class StoredFileChanged(RuntimeError):
    """A stored scene file is missing or no longer matches its recorded sha256."""


@contextmanager
def run_lock(ws: Workspace) -> Iterator[None]:
    """An exclusive, non-blocking lock; the kernel releases it if the process dies."""
    path = ws.root / "run.lock"
    try:
        handle = open(path, "a+")
    except OSError as exc:
        raise WorkspaceError(f"cannot open the run lock {path} ({exc.strerror or exc})") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise RunLocked(f"another berthwatch run holds {path}; try again when it ends") from None
    try:
        try:  # the pid is for people; the lock is the flock. A full disk must not stop here.
            os.ftruncate(handle.fileno(), 0)
            os.write(handle.fileno(), f"{os.getpid()}\n".encode())
        except OSError:
            pass
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


@dataclass
class RunReport:
    fetched: dict[str, int] = field(default_factory=dict)
    processed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    alerts: int = 0
    under_cloud: int = 0  # unmatched berthed detections set aside: SCL cloud/shadow/cirrus
    skipped: dict[str, str] = field(default_factory=dict)  # newly found unusable: why
    no_ais_coverage: int = 0  # scenes processed with no AIS fix around their time
    no_coverage_detections: int = 0  # their unmatched berthed detections: no alerts

    def count(self, status: str) -> None:
        self.fetched[status] = self.fetched.get(status, 0) + 1


def open_workspace(path=None) -> Workspace:
    ws = Workspace.open(path)
    from imagery import ais

    with ws.failing_in_one_line():
        ais.ensure_schema(ws)
        ws.ensure_schema(PIPELINE_SCHEMA)
        _add_columns(ws)
        ws.relativise_column("processing", "scene_id", "detections_path")
        ws.relativise_column("alerts", "alert_id", "chip_path")
    return ws


def _add_columns(ws: Workspace) -> None:
    conn = ws.connect()
    try:
        for table, column, kind in ADDED_COLUMNS:
            have = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
            if column not in have:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
    except sqlite3.OperationalError:
        pass  # a read-only workspace: readers select these columns only where they exist
    finally:
        conn.close()


# --- the pass ---------------------------------------------------------------------------------


def run_pass(
    ws: Workspace,
    ports: list[Port],
    source: SceneSource | None,
    start: datetime,
    end: datetime,
    *,
    max_cloud: float = 30.0,
    weights: str | None = None,
    threshold: float | None = None,
    gates: Gates = DEFAULT_GATES,
    progress: bool = True,
    tta: bool = False,
    device: str = "cpu",
    precision: str | None = None,
) -> RunReport:
    """One pass over `ports`: fetch what is new, then process every stored scene not done
    (`tta`: detect with the eight orientations of each chip averaged; `device`: where the
    model and its post-processing run, a torch device name already checked; `precision`:
    the model's, as detector.resolve_precision takes it)."""
    from imagery.models import resolve_weights

    report = RunReport()
    with run_lock(ws):
        try:
            weights = resolve_weights(ws, weights)  # the workspace's promoted model by default
            for port in ports:
                if source is not None:
                    _fetch_new(ws, port, source, start, end, max_cloud, report, progress)
                _process_pending(ws, port, weights, threshold, gates, report, progress, tta,
                                 device, precision)
                rebuild_episodes(ws, port)
        except WorkspaceWriteError as exc:
            report.failed["workspace"] = str(exc)
        except (sqlite3.Error, OSError) as exc:  # e.g. the episodes rebuild on a full disk
            report.failed["workspace"] = (f"cannot write the workspace {ws.root} ({exc}); "
                                          "the pass stopped, nothing half-written was kept")
    return report


def _fetch_new(ws, port, source, start, end, max_cloud, report, progress) -> None:
    from tqdm import tqdm

    try:
        refs = source.search(port, start, end, max_cloud)
    except Exception as exc:  # a network failure must not end the pass for other ports
        report.failed[f"search:{port.name}"] = f"{type(exc).__name__}: {exc}"
        return
    for ref in tqdm(refs, desc=f"fetch {port.name}", unit="scene", disable=not progress):
        outcome = fetch_into_workspace(source, ref, port, ws, max_cloud)
        report.count(outcome.status)
        if outcome.status == "failed":
            report.failed[ref.scene_id] = outcome.reason or "failed"
        elif outcome.status == "skipped" and not (outcome.reason or "").endswith("earlier)"):
            report.skipped[ref.scene_id] = outcome.reason or "skipped"


def pending_scenes(ws: Workspace, port: Port, gates: Gates = DEFAULT_GATES) -> list[dict]:
    """Stored scenes not done, then done scenes that had no AIS coverage when processed but
    have it now (AIS imported since): those are reconciled again. Paths come resolved."""
    conn = ws.connect()
    try:
        rows = conn.execute(
            """SELECT s.* FROM scenes s LEFT JOIN processing p ON p.scene_id = s.scene_id
               WHERE s.port = ? AND s.status = 'stored' AND (p.status IS NULL OR p.status != 'done')
               ORDER BY s.acquisition_time, s.scene_id""",
            (port.name,),
        ).fetchall()
        uncovered = conn.execute(
            """SELECT s.* FROM scenes s JOIN processing p ON p.scene_id = s.scene_id
               WHERE s.port = ? AND s.status = 'stored' AND p.status = 'done'
                 AND p.ais_coverage = 0 ORDER BY s.acquisition_time, s.scene_id""",
            (port.name,),
        ).fetchall()
        rows += [r for r in uncovered
                 if ais_fix_count(conn, port, _as_time(r["acquisition_time"]), gates) > 0]
    finally:
        conn.close()
    scenes = [dict(r) for r in rows]
    for scene in scenes:
        scene["path"] = str(ws.resolve(scene["path"])) if scene["path"] else None
    return scenes


def ais_fix_count(conn: sqlite3.Connection, port: Port, when: datetime, gates: Gates) -> int:
    """AIS fixes from any vessel inside the port's AOI padded by `gates.coverage_pad_deg`
    within `gates.coverage_window` of `when`: 0 means the scene has no AIS coverage."""
    west, south, east, north = port.aoi.bounds
    pad, window = gates.coverage_pad_deg, gates.coverage_window
    row = conn.execute(
        """SELECT COUNT(*) FROM ais_positions WHERE t_epoch BETWEEN ? AND ?
           AND lat BETWEEN ? AND ? AND lon BETWEEN ? AND ?""",
        ((when - window).timestamp(), (when + window).timestamp(), south - pad, north + pad,
         west - pad, east + pad),
    ).fetchone()
    return int(row[0])


def _process_pending(ws, port, weights, threshold, gates, report, progress, tta,
                     device="cpu", precision=None) -> None:
    from tqdm import tqdm

    scenes = pending_scenes(ws, port, gates)
    for scene in tqdm(scenes, desc=f"detect+reconcile {port.name}", unit="scene",
                      disable=not progress):
        sid = scene["scene_id"]
        try:
            result = process_scene(ws, port, scene, weights, threshold, gates, tta,
                                   device=device, precision=precision)
        except Exception as exc:
            kind, reason = classify_scene_error(exc, scene["path"])
            record_scene_error(ws, sid, kind, reason, report)
            continue
        finally:
            remove_temp_files(ws, port, sid)
        count_processed(report, sid, result)


def classify_scene_error(exc: Exception, path: str | None) -> tuple[str, str]:
    """What a scene's processing error means: `unusable` (a file that cannot be read is
    unusable, not transient: retrying cannot help), `changed` (the stored file is not the one
    fetched) or `failed` (recorded and retried next run; the others go on); and the reason."""
    if isinstance(exc, SceneError | rasterio.errors.RasterioError):
        return "unusable", f"unusable scene: {_naming(exc, path)}"
    if isinstance(exc, StoredFileChanged):
        return "changed", str(exc)
    return "failed", f"{type(exc).__name__}: {exc}"


def record_scene_error(ws: Workspace, scene_id: str, kind: str, reason: str,
                       report: RunReport) -> None:
    record = {"unusable": _record_unusable, "changed": _record_changed,
              "failed": _record_failure}[kind]
    _record_or_stop(ws, scene_id, reason, record)
    (report.skipped if kind == "unusable" else report.failed)[scene_id] = reason


def count_processed(report: RunReport, scene_id: str, result: SceneReconciliation) -> None:
    report.processed.append(scene_id)
    report.alerts += len(result.unmatched)
    report.under_cloud += len(result.under_cloud)
    if not result.ais_covered:
        report.no_ais_coverage += 1
        report.no_coverage_detections += len(result.no_coverage)


def _naming(exc: Exception, path: str | None) -> str:
    """What is wrong, then the file: `<reason> (file <path>)`."""
    text = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
    return f"{text.splitlines()[0][:300]} (file {path})"


def _record_or_stop(ws: Workspace, scene_id: str, reason: str, record) -> None:
    """Record a scene's failure; when even that cannot be written (a full disk), stop the
    pass with one line saying so. The failed transaction rolled back: the database is as it
    was before this scene."""
    try:
        record(ws, scene_id, reason)
    except (sqlite3.Error, OSError) as exc:
        raise WorkspaceWriteError(
            f"{scene_id}: {reason}; recording that failed too ({exc}): the pass stopped and "
            f"the workspace {ws.root} is as it was before this scene; free space and run again"
        ) from None


def _record_failure(ws: Workspace, scene_id: str, reason: str) -> None:
    with ws.transaction() as conn:
        conn.execute(
            """INSERT INTO processing (scene_id, status, reason) VALUES (?, 'failed', ?)
               ON CONFLICT(scene_id) DO UPDATE SET status='failed', reason=excluded.reason,
               attempts = processing.attempts + 1""",
            (scene_id, reason[:500]),
        )


def _record_unusable(ws: Workspace, scene_id: str, reason: str) -> None:
    """The catalog marks the scene skipped (not pending, not retried, `scenes` shows why)."""
    with ws.transaction() as conn:
        conn.execute("UPDATE scenes SET status = 'skipped', reason = ?, fetched_at = ? "
                     "WHERE scene_id = ?", (reason[:500], utc_now(), scene_id))
        # An earlier failure of it is no longer pending either.
        conn.execute("DELETE FROM processing WHERE scene_id = ? AND status = 'failed'",
                     (scene_id,))


def _record_changed(ws: Workspace, scene_id: str, reason: str) -> None:
    """The catalog marks the scene failed, so the next fetch replaces the file."""
    with ws.transaction() as conn:
        conn.execute("UPDATE scenes SET status = 'failed', reason = ? WHERE scene_id = ?",
                     (reason[:500], scene_id))
    _record_failure(ws, scene_id, reason)


def remove_temp_files(ws: Workspace, port: Port, scene_id: str) -> None:
    """Temporary files of this scene's outputs (written then renamed) that a failure, such as
    a full disk, left behind. The run lock keeps any other writer out of these folders."""
    stem = file_stem(scene_id)
    for folder in (ws.root / "detections" / port.name, ws.root / "evidence" / port.name):
        for leftover in folder.glob(f".{stem}*.tmp*"):
            leftover.unlink(missing_ok=True)


# --- one scene -------------------------------------------------------------------------------


def process_scene(ws: Workspace, port: Port, scene: dict, weights, threshold,
                  gates: Gates, tta: bool = False,
                  number: Callable[[dict], None] | None = None,
                  device: str = "cpu", precision: str | None = None) -> SceneReconciliation:
    """Detect, reconcile and store one scene; returns the reconciliation (its `unmatched`
    are the alerts). `number` may set each feature's `det_id` (re-detection keeps the ids of
    vessels found again, so verdicts stay attached); by default they are numbered in order."""
    from imagery.detector import detect_scene

    scene_id = scene["scene_id"]
    verify_stored_file(ws, scene)
    geojson_path = detections_file(ws, port, scene_id)
    collection = detect_scene(scene["path"], geojson_path, port=port, threshold=threshold,
                              weights=weights, progress=False, tta=tta, device=device,
                              precision=precision)
    if number is not None:
        number(collection)
    return store_detections(ws, port, scene, collection, geojson_path, gates)


def detections_file(ws: Workspace, port: Port, scene_id: str):
    return ws.root / "detections" / port.name / f"{file_stem(scene_id)}.geojson"


def store_detections(ws: Workspace, port: Port, scene: dict, collection: dict, geojson_path,
                     gates: Gates) -> SceneReconciliation:
    """The second half of `process_scene`, given the scene's detections (a FeatureCollection
    as `detect_scene` returns it, its GeoJSON already written): reconcile with AIS, write the
    evidence chips and store it all in one transaction. A backfill's coordinator runs this on
    the detections its workers return."""
    scene_id = scene["scene_id"]
    top = collection["properties"]
    when = datetime.fromisoformat(scene["acquisition_time"].replace("Z", "+00:00"))
    detections = _detections(collection)
    fixes, vessels, fix_count = load_ais(ws, port, when, gates)
    info = open_scene(scene["path"], require_bands=None)
    visible = {name: z["visible_fraction"] for name, z in top.get("zones", {}).items()}
    result = reconcile_scene(
        scene_id=scene_id, port=port, acquisition_time=when, detections=detections,
        fixes=fixes, vessels=vessels, zone_visible=visible,
        point_visible=_point_visibility(info), gates=gates, ais_covered=fix_count > 0,
    )
    chips = {u.detection.det_id: write_evidence_chip(ws, info, u.detection, result)
             for u in result.unmatched}
    _store(ws, port, scene, result, collection, chips, geojson_path, fix_count)
    return result


def verify_stored_file(ws: Workspace, scene: dict) -> None:
    """A stored scene is used only while its file is the one fetched: same sha256."""
    path, recorded = scene["path"], scene.get("sha256")
    if not path or not os.path.exists(path):
        raise StoredFileChanged(f"{scene['scene_id']}: its stored file {path} is missing; "
                                "the next fetch stores it again")
    if recorded and sha256_file(path) != recorded:
        raise StoredFileChanged(f"{scene['scene_id']}: stored file {path} no longer matches "
                                f"its recorded sha256 {recorded[:12]}...; not used, the next "
                                "fetch stores it again")


def _detections(collection: dict) -> list[Detection]:
    out = []
    for i, feature in enumerate(collection["features"]):
        p = feature["properties"]
        lon, lat = feature["geometry"]["coordinates"][:2]
        out.append(Detection(p.get("det_id", i), lon, lat, p["score"], p.get("length_m"),
                             bool(p["berthed"]), p.get("zone"), p.get("px_x"), p.get("px_y")))
    return out


def load_ais(ws: Workspace, port: Port, when: datetime,
             gates: Gates) -> tuple[list[AisFix], dict[int, AisVessel], int]:
    """AIS fixes around the port in the window the placement rules can use, the vessels, and
    how many fixes the coverage box and window hold (0: the scene has no AIS coverage). The
    box reaches beyond the AOI so that a vessel arriving from outside can still be
    interpolated."""
    from imagery import ais

    west, south, east, north = port.aoi.bounds
    pad = 0.2  # degrees, about 20 km: two hours at 5 knots
    margin = max(gates.moored_hold, gates.interpolate_max_gap)
    conn = ws.connect()
    try:
        rows = ais.positions_near(conn, west - pad, south - pad, east + pad, north + pad,
                                  when - margin, when + margin)
        fixes = [AisFix(r.mmsi, _as_time(r.time), r.lon, r.lat, r.sog_kn, r.nav_status)
                 for r in rows]
        vessels = {}
        for mmsi in {f.mmsi for f in fixes}:
            info = ais.vessel_info(conn, mmsi)
            if info is None:
                vessels[mmsi] = AisVessel(mmsi, watchlisted=_watchlisted(ais, conn, mmsi))
                continue
            vessels[mmsi] = AisVessel(mmsi, info.name, info.length_m, info.ship_type,
                                      info.watchlist is not None)
        coverage = ais_fix_count(conn, port, when, gates)
    finally:
        conn.close()
    return fixes, vessels, coverage


def _watchlisted(ais, conn, mmsi: int) -> bool:
    return ais.watchlist_match(conn, mmsi, None, None) is not None


def _as_time(value) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _point_visibility(info):
    """lon, lat -> True when the scene saw that point (in the scene, not cloud per SCL)."""
    scl = read_scl(info)
    to_scene = Transformer.from_crs("EPSG:4326", info.crs, always_xy=True)
    inverse = ~info.transform

    def visible(lon: float, lat: float) -> bool:
        col, row = inverse * to_scene.transform(lon, lat)
        r, c = int(row), int(col)
        if not (0 <= r < info.height and 0 <= c < info.width):
            return False
        return scl is None or int(scl[r, c]) not in SCL_OBSCURED

    return visible


# --- evidence -------------------------------------------------------------------------------


CHIP_HALF = 48  # px either side: a 960 m square at 10 m, a berth and its neighbours


def write_evidence_chip(ws: Workspace, info, det: Detection,
                        result: SceneReconciliation) -> str:
    """A true-colour PNG of the berth around a detection, the detection ringed in red and AIS
    positions in cyan; written atomically, named by scene and detection. A simulated scene's
    chip gets a SIMULATED band and says so in its PNG text chunks, as every chip does its
    scene id."""
    from PIL import Image, ImageDraw

    from imagery.render import mark_simulated, png_with_provenance, true_colour

    x, y = int(round(det.px_x or 0)), int(round(det.px_y or 0))
    rgb = true_colour(info, x - CHIP_HALF, y - CHIP_HALF, 2 * CHIP_HALF)
    scale = 4  # upsample so a 10 px vessel is visible on screen
    image = Image.fromarray(rgb).resize((rgb.shape[1] * scale,) * 2, Image.NEAREST)
    draw = ImageDraw.Draw(image)
    to_scene = Transformer.from_crs("EPSG:4326", info.crs, always_xy=True)
    inverse = ~info.transform
    for placed in result.placements:
        col, row = inverse * to_scene.transform(placed.lon, placed.lat)
        px, py = (col - x + CHIP_HALF) * scale, (row - y + CHIP_HALF) * scale
        draw.rectangle((px - 5, py - 5, px + 5, py + 5), outline=(0, 255, 255), width=2)
    c = CHIP_HALF * scale
    draw.ellipse((c - 18, c - 18, c + 18, c + 18), outline=(255, 40, 40), width=3)
    path = ws.root / "evidence" / result.port / f"{file_stem(result.scene_id)}_{det.det_id}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    image = mark_simulated(image, info.simulated)
    try:
        tmp.write_bytes(png_with_provenance(image, result.scene_id, info.simulated))
        os.replace(tmp, path)
    finally:  # a full disk must not leave a partial PNG behind
        tmp.unlink(missing_ok=True)
    return str(path)


# --- storing ----------------------------------------------------------------------------------


def _store(ws, port, scene, result: SceneReconciliation, collection, chips,
           geojson_path, fix_count: int) -> None:
    sid = scene["scene_id"]
    top = collection["properties"]
    when = scene["acquisition_time"]
    with ws.transaction() as conn:
        for table in ("detections", "zone_counts", "matches", "ais_only", "alerts"):
            conn.execute(f"DELETE FROM {table} WHERE scene_id = ?", (sid,))
        conn.executemany(
            "INSERT INTO detections VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [_detection_row(sid, f["properties"].get("det_id", i), f)
             for i, f in enumerate(collection["features"])],
        )
        conn.executemany(
            "INSERT INTO zone_counts VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [(sid, port.name, z.zone, z.kind, z.visible_fraction, z.detected, z.ais, z.status)
             for z in result.zones],
        )
        conn.executemany(
            "INSERT INTO matches VALUES (?, ?, ?, ?, ?)",
            [(sid, d.det_id, p.mmsi, round(dist, 1), p.method) for d, p, dist in result.matched],
        )
        conn.executemany(
            "INSERT INTO ais_only VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(sid, a.placement.mmsi, a.placement.zone, a.placement.lon, a.placement.lat,
              a.placement.method, a.reason) for a in result.ais_only],
        )
        conn.executemany(
            """INSERT INTO alerts (alert_id, scene_id, det_id, port, zone, acquisition_time,
                   lon, lat, px_x, px_y, score, length_m, reasons, considered, chip_path,
                   model, weights_sha256, simulated)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            [_alert_row(sid, port, when, u, {k: ws.relative(v) for k, v in chips.items()}, top)
             for u in result.unmatched],
        )
        conn.execute(
            """INSERT INTO processing (scene_id, status, stage, reason, model, weights_sha256,
                   detections_path, ais_coverage, ais_fixes)
                   VALUES (?, 'done', 'alert', NULL, ?, ?, ?, ?, ?)
               ON CONFLICT(scene_id) DO UPDATE SET status='done', stage='alert', reason=NULL,
                   model=excluded.model, weights_sha256=excluded.weights_sha256,
                   detections_path=excluded.detections_path,
                   ais_coverage=excluded.ais_coverage, ais_fixes=excluded.ais_fixes""",
            (sid, top.get("model"), top.get("weights_sha256"), ws.relative(geojson_path),
             int(result.ais_covered), fix_count),
        )


def _detection_row(sid: str, det_id: int, feature: dict) -> tuple:
    p = feature["properties"]
    lon, lat = feature["geometry"]["coordinates"][:2]
    return (sid, det_id, lon, lat, p.get("px_x"), p.get("px_y"), p["score"], p.get("length_m"),
            p.get("width_m"), p.get("heading_deg"), int(bool(p.get("berthed"))), p.get("zone"))


def _alert_row(sid, port, when, u: Unmatched, chips, top) -> tuple:
    d = u.detection
    considered = [
        {"mmsi": c.mmsi, "name": c.name, "distance_m": c.distance_m, "length_m": c.length_m,
         "refused": c.refused, "watchlisted": c.watchlisted}
        for c in u.considered
    ]
    return (f"{sid}#{d.det_id}", sid, d.det_id, port.name, d.zone, when, d.lon, d.lat, d.px_x,
            d.px_y, d.score, d.length_m, json.dumps(u.reasons), json.dumps(considered),
            chips.get(d.det_id), top.get("model"), top.get("weights_sha256"),
            int(bool(top.get("simulated"))))


# --- episodes ---------------------------------------------------------------------------------


def rebuild_episodes(ws: Workspace, port: Port) -> list[Episode]:
    """Episodes are derived from every reconciled scene of the port, recomputed whole (so a
    rerun or a late scene gives the same answer as one clean pass)."""
    scenes = _stored_reconciliations(ws, port)
    episodes = merge_episodes(scenes)
    with ws.transaction() as conn:
        conn.execute("DELETE FROM episodes WHERE port = ?", (port.name,))
        conn.execute("UPDATE alerts SET episode_id = NULL WHERE port = ?", (port.name,))
        for e in episodes:
            first_scene, first_det = e.members[0]
            eid = f"{e.port}/{e.zone}/{first_scene}#{first_det}"
            conn.execute("INSERT INTO episodes VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                         (eid, e.port, e.zone, _iso(e.first_seen), _iso(e.last_seen),
                          len(e.scene_ids), e.lon, e.lat))
            for sid, det_id in e.members:
                conn.execute("UPDATE alerts SET episode_id = ? WHERE alert_id = ?",
                             (eid, f"{sid}#{det_id}"))
    return episodes


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _stored_reconciliations(ws: Workspace, port: Port) -> list[SceneReconciliation]:
    conn = ws.connect()
    try:
        done = conn.execute(
            """SELECT s.scene_id, s.acquisition_time FROM scenes s
               JOIN processing p ON p.scene_id = s.scene_id
               WHERE s.port = ? AND p.status = 'done' ORDER BY s.acquisition_time""",
            (port.name,),
        ).fetchall()
        out = []
        for row in done:
            sid = row["scene_id"]
            zones = [ZoneCount(z["zone"], z["kind"], z["visible_fraction"], z["detected"],
                               z["ais"], z["status"] != NO_AIS_COVERAGE)
                     for z in conn.execute("SELECT * FROM zone_counts WHERE scene_id = ?", (sid,))]
            unmatched = [
                Unmatched(Detection(a["det_id"], a["lon"], a["lat"], a["score"], a["length_m"],
                                    True, a["zone"]), [], [])
                for a in conn.execute("SELECT * FROM alerts WHERE scene_id = ? ORDER BY det_id",
                                      (sid,))
            ]
            out.append(SceneReconciliation(sid, port.name, _as_time(row["acquisition_time"]),
                                           zones, [], unmatched, []))
    finally:
        conn.close()
    return out
