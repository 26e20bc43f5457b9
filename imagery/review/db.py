"""Analysts' decisions: an append-only audit table and what follows from it.

Table `reviews` (created by `ensure_schema`): one row per action, never updated or deleted
(triggers refuse both). Columns: id, alert_id (verdicts and edits made from an alert page),
scene_id, det_id (the model detection acted on, NULL for a vessel the analyst added), action
(`verdict` | `add` | `move` | `delete`), verdict (`confirmed` | `rejected` | `unsure`, for
`verdict` rows), note, analyst, at (UTC ISO 8601), payload (JSON: pixel and lon/lat positions,
`target` of an edit). An alert's status is its latest verdict, `open` when it has none.

Vessels the analyst adds are referred to as `a<review id>`; model detections as `d<det_id>`.
A scene's effective vessels are its detections with every edit applied in order.
"""

from __future__ import annotations

import json
import re
import sqlite3
from dataclasses import dataclass, replace

from imagery.alerts import query_alerts
from imagery.workspace import Workspace, utc_now

SCHEMA = """
CREATE TABLE IF NOT EXISTS reviews (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    alert_id TEXT,
    scene_id TEXT NOT NULL,
    det_id INTEGER,
    action TEXT NOT NULL CHECK (action IN ('verdict', 'add', 'move', 'delete')),
    verdict TEXT CHECK (verdict IN ('confirmed', 'rejected', 'unsure')),
    note TEXT,
    analyst TEXT NOT NULL,
    at TEXT NOT NULL,
    payload TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS reviews_alert ON reviews(alert_id, id);
CREATE INDEX IF NOT EXISTS reviews_scene ON reviews(scene_id, id);
CREATE TRIGGER IF NOT EXISTS reviews_no_update BEFORE UPDATE ON reviews
BEGIN SELECT RAISE(ABORT, 'reviews are an audit trail: append only'); END;
CREATE TRIGGER IF NOT EXISTS reviews_no_delete BEFORE DELETE ON reviews
BEGIN SELECT RAISE(ABORT, 'reviews are an audit trail: append only'); END;
"""

VERDICTS = ("confirmed", "rejected", "unsure")
STATUSES = ("open", *VERDICTS)
EDIT_ACTIONS = ("add", "move", "delete")
_REF = re.compile(r"^([da])(\d{1,9})$")


class ReviewError(ValueError):
    """An action that cannot be recorded as asked (unknown target, bad verdict)."""


@dataclass(frozen=True)
class Vessel:
    """One vessel of a scene as the analyst now sees it."""

    ref: str  # d<det_id> | a<review id>
    px_x: float
    px_y: float
    lon: float
    lat: float
    origin: str  # model | added
    state: str = "kept"  # kept | moved | deleted
    det_id: int | None = None
    score: float | None = None
    length_m: float | None = None
    width_m: float | None = None
    heading_deg: float | None = None
    zone: str | None = None
    alert_id: str | None = None
    verdict: str | None = None  # latest verdict of its alert, when it has one


def ensure_schema(ws: Workspace) -> None:
    ws.ensure_schema(SCHEMA)


def record(ws: Workspace, *, scene_id: str, action: str, analyst: str,
           alert_id: str | None = None, det_id: int | None = None, verdict: str | None = None,
           note: str | None = None, payload: dict | None = None) -> int:
    """Append one action to the audit trail; returns its id."""
    if action not in ("verdict", *EDIT_ACTIONS):
        raise ReviewError(f"unknown action {action!r}")
    if action == "verdict" and verdict not in VERDICTS:
        raise ReviewError(f"verdict must be one of {', '.join(VERDICTS)}")
    with ws.transaction() as conn:
        cur = conn.execute(
            "INSERT INTO reviews (alert_id, scene_id, det_id, action, verdict, note, analyst, at,"
            " payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (alert_id, scene_id, det_id, action, verdict if action == "verdict" else None,
             note or None, analyst, utc_now(), json.dumps(payload or {}, sort_keys=True)))
        return int(cur.lastrowid or 0)


def history(ws: Workspace, *, alert_id: str | None = None,
            scene_id: str | None = None) -> list[dict]:
    """Audit rows of an alert or a scene, oldest first, payload decoded."""
    column, value = ("alert_id", alert_id) if alert_id else ("scene_id", scene_id)
    conn = ws.connect()
    try:
        rows = [dict(r) for r in conn.execute(
            f"SELECT * FROM reviews WHERE {column} = ? ORDER BY id", (value,))]
    finally:
        conn.close()
    for row in rows:
        row["payload"] = json.loads(row["payload"] or "{}")
    return rows


def latest_verdicts(conn: sqlite3.Connection) -> dict[str, dict]:
    """alert_id -> its latest verdict row (verdict, analyst, at, note)."""
    rows = conn.execute(
        "SELECT r.* FROM reviews r JOIN (SELECT alert_id, MAX(id) AS id FROM reviews"
        " WHERE action = 'verdict' AND alert_id IS NOT NULL GROUP BY alert_id) last"
        " ON last.id = r.id")
    return {r["alert_id"]: dict(r) for r in rows}


def list_alerts(ws: Workspace, port: str | None = None, status: str | None = None,
                min_score: float | None = None, alert_id: str | None = None) -> list[dict]:
    """Alerts newest first (as `query_alerts`), each with `status` and `verdict_row`."""
    rows = query_alerts(ws, port=port, alert_id=alert_id)
    conn = ws.connect()
    try:
        verdicts = latest_verdicts(conn)
    finally:
        conn.close()
    out = []
    for row in rows:
        last = verdicts.get(row["alert_id"])
        row["status"] = last["verdict"] if last else "open"
        row["verdict_row"] = last
        if status and row["status"] != status:
            continue
        if min_score is not None and row["score"] < min_score:
            continue
        out.append(row)
    return out


def get_alert(ws: Workspace, alert_id: str) -> dict | None:
    rows = list_alerts(ws, alert_id=alert_id)
    return rows[0] if rows else None


# --- effective vessels of a scene -------------------------------------------------------------


def scene_vessels(ws: Workspace, scene_id: str, include_deleted: bool = True) -> list[Vessel]:
    """The scene's model detections with every add, move and delete applied in order."""
    conn = ws.connect()
    try:
        dets = conn.execute("SELECT * FROM detections WHERE scene_id = ? ORDER BY det_id",
                            (scene_id,)).fetchall()
        alerts = {r["det_id"]: r["alert_id"] for r in conn.execute(
            "SELECT det_id, alert_id FROM alerts WHERE scene_id = ?", (scene_id,))}
        verdicts = latest_verdicts(conn)
        edits = conn.execute("SELECT * FROM reviews WHERE scene_id = ? AND action != 'verdict'"
                             " ORDER BY id", (scene_id,)).fetchall()
    finally:
        conn.close()
    vessels: dict[str, Vessel] = {}
    for d in dets:
        alert_id = alerts.get(d["det_id"])
        verdict = verdicts.get(alert_id, {}).get("verdict") if alert_id else None
        vessels[f"d{d['det_id']}"] = Vessel(
            f"d{d['det_id']}", d["px_x"], d["px_y"], d["lon"], d["lat"], "model",
            det_id=d["det_id"], score=d["score"], length_m=d["length_m"], width_m=d["width_m"],
            heading_deg=d["heading_deg"], zone=d["zone"], alert_id=alert_id, verdict=verdict)
    for edit in edits:
        _apply_edit(vessels, edit)
    return [v for v in vessels.values() if include_deleted or v.state != "deleted"]


def _apply_edit(vessels: dict[str, Vessel], edit: sqlite3.Row) -> None:
    payload = json.loads(edit["payload"] or "{}")
    if edit["action"] == "add":
        ref = f"a{edit['id']}"
        vessels[ref] = Vessel(ref, payload["px_x"], payload["px_y"], payload["lon"],
                              payload["lat"], "added", length_m=payload.get("length_m"))
        return
    target = vessels.get(payload.get("target", ""))
    if target is None:  # an edit of a detection a later reprocessing removed: nothing to apply
        return
    if edit["action"] == "delete":
        vessels[target.ref] = replace(target, state="deleted")
    else:
        state = target.state if target.origin == "added" else "moved"
        vessels[target.ref] = replace(target, px_x=payload["px_x"], px_y=payload["px_y"],
                                      lon=payload["lon"], lat=payload["lat"], state=state)


def parse_ref(ref: str) -> tuple[str, int]:
    """'d3' -> ('d', 3); raises ReviewError for anything else."""
    match = _REF.match(ref or "")
    if not match:
        raise ReviewError(f"unknown vessel {ref!r}")
    return match.group(1), int(match.group(2))


# --- what the reviews add up to ---------------------------------------------------------------


def confirmed_calls(ws: Workspace) -> list[dict]:
    """Alerts whose latest verdict is `confirmed`, at the position the analyst left them."""
    rows = list_alerts(ws, status="confirmed")
    moved: dict[str, dict[str, Vessel]] = {}
    for row in rows:
        if row["scene_id"] not in moved:
            moved[row["scene_id"]] = {v.ref: v for v in scene_vessels(ws, row["scene_id"])}
        vessel = moved[row["scene_id"]].get(f"d{row['det_id']}")
        if vessel is not None:
            row["lon"], row["lat"] = vessel.lon, vessel.lat
        last = row["verdict_row"]
        row.update(analyst=last["analyst"], verdict_at=last["at"], note=last["note"])
    return rows


def reviewed_scene_ids(ws: Workspace) -> list[str]:
    conn = ws.connect()
    try:
        return [r[0] for r in conn.execute(
            "SELECT DISTINCT scene_id FROM reviews ORDER BY scene_id")]
    finally:
        conn.close()


def audit_trail(ws: Workspace, alert_id: str) -> list[dict]:
    """Everything analysts recorded on an alert, oldest first: its `reviews` rows and its
    vessel-type calls (kept append-only in their own table, shown here as action
    `vessel-type` with the type as the verdict), one trail for the page and the evidence."""
    from imagery.vessel_types import vessel_type_history

    calls = [{"id": f"t{r['id']}", "alert_id": r["alert_id"], "scene_id": r["scene_id"],
              "det_id": None, "action": "vessel-type", "verdict": r["vessel_type"],
              "note": r["note"], "analyst": r["analyst"], "at": r["at"], "payload": {}}
             for r in vessel_type_history(ws, alert_id)]
    rows = history(ws, alert_id=alert_id) + calls
    return sorted(rows, key=lambda r: r["at"])  # stable: same-second rows keep their order
