"""Port calls of one port and period, read from the workspace, with their tanker evidence,
the rule's decision and barrels; and what each month's scenes could see.

Two kinds of call, built from every reconciled scene in time order:
- declared: an AIS vessel placed at a berth (matched to a detection, or placed and not seen)
  in consecutive scenes; a scene where AIS no longer places it there ends the call, a scene
  where that berth was hidden by cloud neither starts, ends nor extends it. Counted when at
  least one scene saw it (matched to a detection).
- undeclared: alerts (berthed detections no AIS vessel explains) at the same spot of the same
  berth with lengths that agree, in consecutive scenes, ended and kept the same way.
"""

from __future__ import annotations

import math
import sqlite3
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from statistics import median

from imagery.ports import Port
from imagery.tankers import (
    DEFAULT_CONFIG,
    BarrelRange,
    TankerConfig,
    TankerEvidence,
    barrels_range,
    gather_evidence,
    tanker_decision,
)
from imagery.vessel_types import latest_vessel_types
from imagery.workspace import Workspace

SAME_SPOT_M = 100.0  # an alert this close to a call's last position continues it
LENGTH_RATIO_MAX = 1.5  # ... when the two length estimates agree within this factor
LITTLE_VISIBILITY_SCENES = 2  # a month whose berths fewer scenes saw is shown as such


class ReportError(ValueError):
    """A report that cannot be made as asked; the message is one line for the user."""


@dataclass
class PortCall:
    call_id: str
    port: str
    zone: str
    first_seen: datetime
    last_seen: datetime
    lon: float
    lat: float
    declared: bool
    scene_ids: list[str] = field(default_factory=list)
    lengths_m: list[float] = field(default_factory=list)
    alert_ids: list[str] = field(default_factory=list)
    mmsi: int | None = None
    ais_name: str | None = None
    ais_ship_type: int | None = None
    seen: bool = False  # at least one scene saw a vessel (declared calls may be AIS-only)
    status: str = "declared"  # declared | open | confirmed | rejected | unsure
    evidence: TankerEvidence | None = None
    tanker: bool = False
    rule: str = ""
    barrels: BarrelRange | None = None

    @property
    def length_m(self) -> float | None:
        return round(median(self.lengths_m), 1) if self.lengths_m else None

    @property
    def month(self) -> str:
        return self.first_seen.strftime("%Y-%m")

    @property
    def confirmed_tanker(self) -> bool:
        """A tanker call that rests on the analyst's own vessel-type call."""
        return self.tanker and self.rule == "analyst"


@dataclass
class MonthVisibility:
    month: str  # YYYY-MM
    scenes: int = 0  # every scene of the catalog acquired in the month
    cloud_blocked: int = 0  # skipped as all cloud, or stored with every berth hidden
    seen: int = 0  # processed scenes in which at least one berth was visible

    @property
    def state(self) -> str:
        if self.seen == 0:
            return "not seen"
        return "little visibility" if self.seen < LITTLE_VISIBILITY_SCENES else "seen"


@dataclass
class CallsResult:
    port: Port
    start: datetime
    end: datetime
    calls: list[PortCall]
    months: list[MonthVisibility]
    simulated: bool
    models: list[tuple[str, str]]  # (model, weights sha256) the scenes were processed with
    config: TankerConfig


def _time(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def month_keys(start: datetime, end: datetime) -> list[str]:
    """Every YYYY-MM from start's month to end's month."""
    keys, y, m = [], start.year, start.month
    while (y, m) <= (end.year, end.month):
        keys.append(f"{y:04d}-{m:02d}")
        y, m = (y + 1, 1) if m == 12 else (y, m + 1)
    return keys


def build_calls(ws: Workspace, port: Port, start: datetime | None, end: datetime | None,
                config: TankerConfig = DEFAULT_CONFIG) -> CallsResult:
    """Calls and month visibility of `port` between `start` and `end` (default: the span of
    the port's scenes). Raises ReportError for reversed dates or a period with no scenes."""
    if start and end and start > end:
        raise ReportError(f"--from {start:%Y-%m-%d} is after --to {end:%Y-%m-%d}")
    conn = ws.connect()
    try:
        scenes = _scenes(conn, port, start, end)
        if not scenes:
            raise ReportError(f"no scenes of port {port.name!r}{_period(start, end)} "
                              f"in workspace {ws.root}")
        # A call already under way at --from began before the period: it is that earlier
        # month's call (by first seen), so the scenes before the period are read too, and such
        # a call is left out rather than counted again as new on the period's first scene.
        history = _scenes(conn, port, None, end) if start else scenes
        start = start or _time(scenes[0]["acquisition_time"])
        end = end or _time(scenes[-1]["acquisition_time"])
        berths = {z.name for z in port.zones if z.kind == "berth"}
        oil = {z.name for z in port.zones if z.oil_berth}
        done = [s for s in history if s["done"]]
        observed = [_scene_state(conn, s["scene_id"], berths) for s in done]
        declared = _declared_calls(conn, port, done, observed)
        undeclared = _undeclared_calls(conn, port, done, observed)
        verdicts = latest_verdicts(conn)
        types = latest_vessel_types(conn)
        models = sorted({(s["model"] or "?", s["weights_sha256"] or "?")
                         for s in scenes if s["done"]})
    finally:
        conn.close()
    in_period = {s["scene_id"] for s in scenes}
    calls = sorted((c for c in declared + undeclared if c.scene_ids[0] in in_period),
                   key=lambda c: (c.first_seen, c.zone, c.call_id))
    for call in calls:
        _review_status(call, verdicts, types)
        _decide(call, oil, config)
    months = _months(scenes, berths, start, end, ws)
    simulated = any(s["simulated"] for s in scenes)
    return CallsResult(port, start, end, calls, months, simulated, models, config)


def _period(start: datetime | None, end: datetime | None) -> str:
    if start and end:
        return f" between {start:%Y-%m-%d} and {end:%Y-%m-%d}"
    if start:
        return f" from {start:%Y-%m-%d}"
    return f" until {end:%Y-%m-%d}" if end else ""


def _scenes(conn: sqlite3.Connection, port: Port, start, end) -> list[dict]:
    sql = ("SELECT s.*, p.status AS processing, p.model, p.weights_sha256 FROM scenes s"
           " LEFT JOIN processing p ON p.scene_id = s.scene_id"
           " WHERE s.port = ? AND s.acquisition_time IS NOT NULL")
    args: list = [port.name]
    if start:
        sql += " AND s.acquisition_time >= ?"
        args.append(_iso(start))
    if end:
        sql += " AND s.acquisition_time <= ?"
        args.append(_iso(end))
    rows = [dict(r) for r in conn.execute(sql + " ORDER BY s.acquisition_time, s.scene_id", args)]
    for row in rows:
        row["done"] = row["status"] == "stored" and row["processing"] == "done"
        row["time"] = _time(row["acquisition_time"])
    return rows


def _scene_state(conn: sqlite3.Connection, scene_id: str, berths: set[str]) -> dict:
    """Which berths the scene saw, what AIS placed there, and its alerts."""
    zones = {z["zone"]: z["detected"] for z in conn.execute(
        "SELECT zone, detected FROM zone_counts WHERE scene_id = ?", (scene_id,))}
    unknown = {z for z, detected in zones.items() if detected is None}
    matched = [dict(r) for r in conn.execute(
        "SELECT m.mmsi, d.det_id, d.lon, d.lat, d.length_m, d.zone FROM matches m"
        " JOIN detections d ON d.scene_id = m.scene_id AND d.det_id = m.det_id"
        " WHERE m.scene_id = ?", (scene_id,)) if r["zone"] in berths]
    ais_only = [dict(r) for r in conn.execute(
        "SELECT mmsi, zone, lon, lat, reason FROM ais_only WHERE scene_id = ?", (scene_id,))
        if r["zone"] in berths]
    for row in ais_only:  # AIS places it where cloud hid the berth, or its very spot
        row["hidden"] = (row["zone"] in unknown
                         or (row["reason"] or "").startswith("hidden by cloud"))
    alerts = [dict(r) for r in conn.execute(
        "SELECT alert_id, det_id, lon, lat, length_m, zone FROM alerts WHERE scene_id = ?"
        " ORDER BY det_id", (scene_id,)) if r["zone"] in berths]
    seen_berths = {z for z in zones if z in berths and z not in unknown}
    return {"unknown": unknown, "matched": matched, "ais_only": ais_only, "alerts": alerts,
            "seen_berths": seen_berths}


def _declared_calls(conn, port: Port, done: list[dict], observed: list[dict]) -> list[PortCall]:
    open_calls: dict[int, PortCall] = {}
    calls: list[PortCall] = []
    for scene, state in zip(done, observed, strict=True):
        here: dict[int, tuple[dict, bool]] = {}
        hidden = set()  # placed by AIS where cloud hid it: neither starts, ends nor extends
        for row in state["ais_only"]:
            if row["hidden"]:
                hidden.add(row["mmsi"])
            else:
                here[row["mmsi"]] = (row, False)
        for row in state["matched"]:
            here[row["mmsi"]] = (row, True)
        for mmsi, (row, seen) in here.items():
            call = open_calls.get(mmsi)
            if call is None or call.zone != row["zone"]:
                call = PortCall(f"{port.name}/{row['zone']}/mmsi{mmsi}/{scene['scene_id']}",
                                port.name, row["zone"], scene["time"], scene["time"],
                                row["lon"], row["lat"], True, mmsi=mmsi)
                calls.append(call)
                open_calls[mmsi] = call
            call.last_seen = scene["time"]
            call.scene_ids.append(scene["scene_id"])
            if seen:
                call.seen = True
                if row["length_m"] is not None:
                    call.lengths_m.append(float(row["length_m"]))
        for mmsi in [m for m in open_calls if m not in here and m not in hidden]:
            if open_calls[mmsi].zone not in state["unknown"]:
                del open_calls[mmsi]  # AIS no longer places it at the berth it could see
    for call in calls:
        info = conn.execute("SELECT name, ship_type FROM ais_vessels WHERE mmsi = ?",
                            (call.mmsi,)).fetchone()
        if info is not None:
            call.ais_name, call.ais_ship_type = info["name"], info["ship_type"]
    return [c for c in calls if c.seen]


def _undeclared_calls(conn, port: Port, done: list[dict], observed: list[dict]) -> list[PortCall]:
    open_calls: dict[str, list[PortCall]] = defaultdict(list)
    calls: list[PortCall] = []
    for scene, state in zip(done, observed, strict=True):
        extended: dict[str, list[PortCall]] = defaultdict(list)
        for alert in state["alerts"]:
            zone = alert["zone"]
            call = _continuing(open_calls[zone], extended[zone], alert)
            if call is None:
                call = PortCall(f"{port.name}/{zone}/{alert['alert_id']}", port.name, zone,
                                scene["time"], scene["time"], alert["lon"], alert["lat"], False,
                                status="open")
                calls.append(call)
            call.last_seen = scene["time"]
            call.lon, call.lat = alert["lon"], alert["lat"]
            call.scene_ids.append(scene["scene_id"])
            call.alert_ids.append(alert["alert_id"])
            call.seen = True
            if alert["length_m"] is not None:
                call.lengths_m.append(float(alert["length_m"]))
            extended[zone].append(call)
        for zone in set(open_calls) | set(extended):
            if zone in state["unknown"]:
                open_calls[zone] = open_calls[zone] + [
                    c for c in extended[zone] if c not in open_calls[zone]]
            else:
                open_calls[zone] = extended[zone]
    return calls


def _continuing(candidates: list[PortCall], taken: list[PortCall], alert: dict) -> PortCall | None:
    best, best_d = None, SAME_SPOT_M
    for call in candidates:
        if call in taken:
            continue
        d = _distance_m(call.lon, call.lat, alert["lon"], alert["lat"])
        if d <= best_d and _lengths_agree(call.length_m, alert["length_m"]):
            best, best_d = call, d
    return best


def _lengths_agree(a: float | None, b: float | None) -> bool:
    if not a or not b:
        return True
    return max(a, b) / min(a, b) <= LENGTH_RATIO_MAX


def _distance_m(lon1: float, lat1: float, lon2: float, lat2: float) -> float:
    k = 111_320.0
    return math.hypot((lon1 - lon2) * k * math.cos(math.radians((lat1 + lat2) / 2)),
                      (lat1 - lat2) * k)


def latest_verdicts(conn: sqlite3.Connection) -> dict[str, dict]:
    """alert_id -> its latest verdict row; {} where no review was ever recorded. (Read here,
    not through the review app's modules, so that a report never creates review tables.)"""
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'reviews'"
                    ).fetchone() is None:
        return {}
    rows = conn.execute(
        "SELECT r.* FROM reviews r JOIN (SELECT alert_id, MAX(id) AS id FROM reviews"
        " WHERE action = 'verdict' AND alert_id IS NOT NULL GROUP BY alert_id) last"
        " ON last.id = r.id")
    return {r["alert_id"]: dict(r) for r in rows}


def _review_status(call: PortCall, verdicts: dict, types: dict) -> None:
    """An undeclared call's status from its alerts' latest verdicts: confirmed if any is;
    rejected (not a vessel) only if every one was rejected; else unsure if any is; else open.
    Its analyst vessel type: the latest call on any of its alerts."""
    if call.declared:
        return
    states = [verdicts.get(a, {}).get("verdict") for a in call.alert_ids]
    if "confirmed" in states:
        call.status = "confirmed"
    elif states and all(s == "rejected" for s in states):
        call.status = "rejected"
    elif "unsure" in states:
        call.status = "unsure"
    latest = max((types[a] for a in call.alert_ids if a in types), key=lambda r: r["id"],
                 default=None)
    call.evidence = gather_evidence(at_oil_berth=False, length_m=None, ais_ship_type=None,
                                    analyst_type=latest["vessel_type"] if latest else None)


def _decide(call: PortCall, oil: set[str], config: TankerConfig) -> None:
    analyst = call.evidence.analyst_type if call.evidence else None
    call.evidence = gather_evidence(at_oil_berth=call.zone in oil, length_m=call.length_m,
                                    ais_ship_type=call.ais_ship_type, analyst_type=analyst,
                                    config=config)
    call.tanker, call.rule = tanker_decision(call.evidence)
    if call.status == "rejected":
        call.tanker = False  # the analyst said there was no vessel
    if call.tanker and call.length_m is not None:
        call.barrels = barrels_range(call.length_m, config)


def _months(scenes: list[dict], berths: set[str], start: datetime, end: datetime,
            ws: Workspace) -> list[MonthVisibility]:
    months = {key: MonthVisibility(key) for key in month_keys(start, end)}
    conn = ws.connect()
    try:
        for s in scenes:
            month = months.get(s["time"].strftime("%Y-%m"))
            if month is None:
                continue
            month.scenes += 1
            if s["status"] == "skipped" and "cloud" in (s["reason"] or ""):
                month.cloud_blocked += 1
            elif s["done"]:  # scenes not (yet) reconciled count as neither seen nor blocked
                seen = [z["zone"] for z in conn.execute(
                    "SELECT zone FROM zone_counts WHERE scene_id = ? AND detected IS NOT NULL",
                    (s["scene_id"],)) if z["zone"] in berths]
                if seen:
                    month.seen += 1
                else:
                    month.cloud_blocked += 1
    finally:
        conn.close()
    return list(months.values())


def monthly_counts(result: CallsResult) -> dict[str, dict[str, int]]:
    """month -> tanker calls: detected (seen in imagery), declared (AIS), undeclared,
    confirmed (resting on the analyst's vessel-type call)."""
    out = {m.month: {"detected": 0, "declared": 0, "undeclared": 0, "confirmed": 0}
           for m in result.months}
    for call in result.calls:
        if not call.tanker or call.month not in out:
            continue
        row = out[call.month]
        row["detected"] += 1
        row["declared" if call.declared else "undeclared"] += 1
        row["confirmed"] += int(call.confirmed_tanker)
    return out
