"""The analyst's vessel-type call on an alert (tanker, cargo, other, unknown).

Kept like every verdict: appended with who and when, never updated or deleted; the latest
call is the one the tanker rule reads. A table of its own beside `reviews`, so that the
verdict table's schema (and its CHECK on actions) stays as it is.
"""

from __future__ import annotations

import sqlite3

from imagery.tankers import VESSEL_TYPES
from imagery.workspace import Workspace, utc_now

SCHEMA = """
CREATE TABLE IF NOT EXISTS vessel_type_reviews (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    alert_id TEXT NOT NULL,
    scene_id TEXT NOT NULL,
    vessel_type TEXT NOT NULL CHECK (vessel_type IN ('tanker', 'cargo', 'other', 'unknown')),
    note TEXT,
    analyst TEXT NOT NULL,
    at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS vessel_type_reviews_alert ON vessel_type_reviews(alert_id, id);
CREATE TRIGGER IF NOT EXISTS vessel_type_reviews_no_update BEFORE UPDATE ON vessel_type_reviews
BEGIN SELECT RAISE(ABORT, 'vessel-type reviews are an audit trail: append only'); END;
CREATE TRIGGER IF NOT EXISTS vessel_type_reviews_no_delete BEFORE DELETE ON vessel_type_reviews
BEGIN SELECT RAISE(ABORT, 'vessel-type reviews are an audit trail: append only'); END;
"""


class VesselTypeError(ValueError):
    """A vessel type that is not one of the choices."""


def ensure_schema(ws: Workspace) -> None:
    ws.ensure_schema(SCHEMA)


def record_vessel_type(ws: Workspace, *, alert_id: str, scene_id: str, vessel_type: str,
                       analyst: str, note: str | None = None) -> int:
    """Append the analyst's vessel-type call on an alert; returns its id."""
    if vessel_type not in VESSEL_TYPES:
        raise VesselTypeError(f"vessel type {vessel_type!r}: choose one of "
                              f"{', '.join(VESSEL_TYPES)}")
    ensure_schema(ws)
    with ws.transaction() as conn:
        cur = conn.execute(
            "INSERT INTO vessel_type_reviews (alert_id, scene_id, vessel_type, note, analyst, at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (alert_id, scene_id, vessel_type, note or None, analyst, utc_now()))
        return int(cur.lastrowid or 0)


def _has_table(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table'"
                        " AND name = 'vessel_type_reviews'").fetchone() is not None


def latest_vessel_types(conn: sqlite3.Connection) -> dict[str, dict]:
    """alert_id -> its latest vessel-type row; {} where nobody has called one yet (reading
    never creates the table, so a report leaves the workspace as it found it)."""
    if not _has_table(conn):
        return {}
    rows = conn.execute(
        "SELECT r.* FROM vessel_type_reviews r JOIN (SELECT alert_id, MAX(id) AS id"
        " FROM vessel_type_reviews GROUP BY alert_id) last ON last.id = r.id")
    return {r["alert_id"]: dict(r) for r in rows}


def vessel_type_history(ws: Workspace, alert_id: str) -> list[dict]:
    """Every vessel-type call on an alert, oldest first."""
    conn = ws.connect()
    try:
        if not _has_table(conn):
            return []
        return [dict(r) for r in conn.execute(
            "SELECT * FROM vessel_type_reviews WHERE alert_id = ? ORDER BY id", (alert_id,))]
    finally:
        conn.close()
