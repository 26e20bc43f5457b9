"""Undeclared port calls as analysts read them: a table, CSV or GeoJSON, and the scenes that
could not raise any because AIS did not cover their time (no alert there is no all-clear)."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime

from imagery.csv_cells import csv_row
from imagery.workspace import Workspace

ALERT_COLUMNS = ("alert_id", "status", "port", "zone", "acquisition_time", "lon", "lat", "score",
                 "length_m", "episode_id", "reasons", "chip_path", "model", "weights_sha256",
                 "simulated")


def _port_and_time(alias: str, port: str | None, since: datetime | None,
                   until: datetime | None = None) -> tuple[str, list]:
    """SQL clauses (each starting " AND") and their arguments for the filters given on
    `alias`'s port and acquisition time (stored as UTC ISO text, so text order is time)."""
    sql, args = "", []
    for clause, value in ((f" AND {alias}.port = ?", port),
                          (f" AND {alias}.acquisition_time >= ?", since),
                          (f" AND {alias}.acquisition_time <= ?", until)):
        if value:
            sql += clause
            args.append(value if isinstance(value, str)
                        else value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    return sql, args


def query_alerts(ws: Workspace, port: str | None = None, since: datetime | None = None,
                 alert_id: str | None = None, until: datetime | None = None,
                 status: str | None = None) -> list[dict]:
    """Alerts newest first, with their episode's first and last seen and their review
    `status`: the latest verdict (confirmed, rejected, unsure), `open` when there is none."""
    verdict = "'open'"
    if ws.has_table("reviews"):
        verdict = """COALESCE((SELECT r.verdict FROM reviews r WHERE r.alert_id = a.alert_id
                     AND r.action = 'verdict' ORDER BY r.id DESC LIMIT 1), 'open')"""
    sql = f"""SELECT * FROM (SELECT a.*, e.first_seen, e.last_seen,
                    e.scenes AS episode_scenes, {verdict} AS status
             FROM alerts a LEFT JOIN episodes e ON e.episode_id = a.episode_id) a WHERE 1=1"""
    where, args = _port_and_time("a", port, since, until)
    sql += where
    if status:
        sql += " AND a.status = ?"
        args.append(status)
    if alert_id:
        sql += " AND a.alert_id = ?"
        args.append(alert_id)
    sql += " ORDER BY a.acquisition_time DESC, a.alert_id"
    conn = ws.connect()
    try:
        rows = [dict(r) for r in conn.execute(sql, args)]
    finally:
        conn.close()
    for row in rows:
        row["reasons"] = json.loads(row["reasons"])
        row["considered"] = json.loads(row["considered"])
        row["simulated"] = bool(row["simulated"])
        chip = ws.resolve(row["chip_path"])
        row["chip_path"] = str(chip) if chip else None
    return rows


def no_coverage_scenes(ws: Workspace, port: str | None = None,
                       since: datetime | None = None,
                       until: datetime | None = None) -> list[dict]:
    """Processed scenes without AIS coverage (processing.ais_coverage = 0; their zones have
    zone_counts.status 'no_ais_coverage'), oldest first, with how many berthed detections
    each set aside instead of alerting: scene_id, port, acquisition_time, ais_fixes,
    berthed_detections."""
    sql = """SELECT s.scene_id, s.port, s.acquisition_time, p.ais_fixes,
                    (SELECT COUNT(*) FROM detections d JOIN zone_counts z
                       ON z.scene_id = d.scene_id AND z.zone = d.zone
                     WHERE d.scene_id = s.scene_id AND d.berthed = 1 AND z.kind = 'berth')
                        AS berthed_detections
             FROM processing p JOIN scenes s ON s.scene_id = p.scene_id
             WHERE p.status = 'done' AND p.ais_coverage = 0"""
    where, args = _port_and_time("s", port, since, until)
    sql += where
    conn = ws.connect()
    try:
        if "ais_coverage" not in {r[1] for r in conn.execute("PRAGMA table_info(processing)")}:
            return []  # a workspace from before coverage was recorded, opened read-only
        return [dict(r) for r in conn.execute(sql + " ORDER BY s.port, s.acquisition_time",
                                              args)]
    finally:
        conn.close()


def coverage_lines(scenes: list[dict]) -> list[str]:
    """One line per port: how many scenes had no AIS coverage, over which dates, and that
    no alert can come from them."""
    by_port: dict[str, list[dict]] = {}
    for scene in scenes:
        by_port.setdefault(scene["port"], []).append(scene)
    lines = []
    for port, group in by_port.items():
        first, last = group[0]["acquisition_time"][:10], group[-1]["acquisition_time"][:10]
        held = sum(s["berthed_detections"] for s in group)
        lines.append(f"{port}: {len(group)} scene(s) from {first} to {last} had no AIS "
                     f"coverage: no undeclared-call alert can come from them "
                     f"({held} berthed detection(s) not compared)")
    return lines


def format_alerts(rows: list[dict], fmt: str = "table",
                  no_coverage: list[dict] | None = None) -> str:
    """`no_coverage` (from `no_coverage_scenes`) adds its lines under the table and a
    `no_ais_coverage` member to the GeoJSON; CSV stays rows only."""
    if fmt == "geojson":
        doc = alerts_geojson(rows)
        if no_coverage is not None:
            doc["no_ais_coverage"] = no_coverage
        return json.dumps(doc, indent=1) + "\n"
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(ALERT_COLUMNS + ("first_seen", "last_seen"))
        for r in rows:
            writer.writerow(csv_row([("; ".join(r[c]) if c == "reasons" else r[c])
                                     for c in ALERT_COLUMNS]
                                    + [r.get("first_seen"), r.get("last_seen")]))
        return out.getvalue()
    notes = "".join(f"{line}\n" for line in coverage_lines(no_coverage or []))
    if not rows:
        return "no undeclared port calls\n" + notes
    lines = [f"{'acquired':20s} {'port':10s} {'zone':26s} {'score':>5s} {'len_m':>6s}  "
             f"{'status':9s} {'episode (first - last seen)':45s} alert"]
    for r in rows:
        episode = f"{(r.get('first_seen') or '')[:10]} - {(r.get('last_seen') or '')[:10]}"
        length = "" if r["length_m"] is None else f"{r['length_m']:.0f}"
        sim = "  SIMULATED" if r["simulated"] else ""
        lines.append(f"{r['acquisition_time']:20s} {r['port']:10s} {r['zone'] or '-':26s} "
                     f"{r['score']:5.2f} {length:>6s}  {r.get('status', 'open'):9s} "
                     f"{episode:45s} {r['alert_id']}{sim}")
    return "\n".join(lines) + "\n" + notes


def alerts_geojson(rows: list[dict]) -> dict:
    features = []
    for r in rows:
        props = {k: r[k] for k in ALERT_COLUMNS if k not in ("lon", "lat")}
        props.update(first_seen=r.get("first_seen"), last_seen=r.get("last_seen"),
                     ais_considered=r["considered"])
        features.append({"type": "Feature", "properties": props,
                         "geometry": {"type": "Point", "coordinates": [r["lon"], r["lat"]]}})
    return {"type": "FeatureCollection", "features": features}
