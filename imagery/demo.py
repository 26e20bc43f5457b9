"""`berthwatch demo`: the whole pipeline offline, on SIMULATED scenes and a SIMULATED AIS feed.

Four weeks of Chongjin and Vostochny. Each port has a fleet with a schedule of port calls;
every vessel reports on AIS while it is in port, except the tankers that go dark from a day
before they arrive until a day after they leave (the behaviour berthwatch exists to expose),
and one vessel whose AIS claims a berth it is not at. The feed is written as raw NMEA with tag
blocks and imported through the real AIS importer; the scenes come through the real source
interface and the same `run` pass as production. At the end the alerts are scored against the
simulation's truth.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pyais import encode_dict
from scipy.optimize import linear_sum_assignment

from imagery.ports import Port, load_ports
from imagery.workspace import Workspace

DEMO_START = datetime(2024, 3, 4, tzinfo=UTC)
DEMO_DAYS = 28
DARK_MARGIN = timedelta(hours=24)  # dark tankers switch off this long before and after a call
CLOUDY = {"chongjin": {2: 0.55, 6: 1.0}, "vostochny": {3: 0.6, 8: 0.35}}  # scene index: cover
TRUTH_MATCH_M = 75.0  # an alert is a truth vessel's when its point is this close to the centre


@dataclass
class DemoVessel:
    id: str
    port: str
    mmsi: int
    name: str
    length_m: float
    width_m: float
    ship_type: int  # 80-89 tanker, 70-79 cargo
    zone: str
    berthed: bool
    calls: list[tuple[datetime, datetime]]  # in port between these times
    dark: bool = False  # AIS off around every call
    spoofer: bool = False  # AIS says at berth, vessel absent


def plan_fleet(port: Port, seed: int) -> list[DemoVessel]:
    """Tankers and cargo ships calling at the berths, a few vessels at anchor all month."""
    rng = random.Random(f"{seed}-{port.name}")
    berths = [z.name for z in port.zones if z.kind == "berth"]
    anchorages = [z.name for z in port.zones if z.kind == "anchorage"]
    mid = 445 if port.name == "chongjin" else 273  # DPRK / Russia MIDs
    fleet = []
    for i in range(9):
        tanker = i < 5
        length = rng.uniform(60, 110) if tanker else rng.uniform(90, 190)
        calls = _calls(rng)
        fleet.append(DemoVessel(
            f"{port.name[:3].upper()}-B{i}", port.name, mid * 1_000_000 + rng.randrange(10**6),
            f"SIM {'TANKER' if tanker else 'CARGO'} {port.name[:3].upper()}{i}",
            round(length, 1), round(max(10.0, length / 6.5), 1), 80 + i if tanker else 70,
            berths[i % len(berths)], True, calls, dark=tanker and i % 2 == 0))
    for i in range(3):
        fleet.append(DemoVessel(
            f"{port.name[:3].upper()}-A{i}", port.name, 636_000_000 + rng.randrange(10**6),
            f"SIM ANCHORED {i}", round(rng.uniform(120, 220), 1), 25.0, 70,
            anchorages[0] if anchorages else berths[0], False,
            [(DEMO_START - timedelta(days=2), DEMO_START + timedelta(days=DEMO_DAYS + 2))]))
    spoofer = fleet[5]  # a cargo ship whose AIS claims a berth call it never makes
    spoofer.spoofer = True
    return fleet


def _calls(rng: random.Random) -> list[tuple[datetime, datetime]]:
    calls, t = [], DEMO_START + timedelta(hours=rng.uniform(-48, 96))
    while t < DEMO_START + timedelta(days=DEMO_DAYS):
        stay = timedelta(hours=rng.uniform(60, 150))
        calls.append((t, t + stay))
        t += stay + timedelta(hours=rng.uniform(72, 200))
    return calls


def in_port(vessel: DemoVessel, when: datetime) -> bool:
    return any(a <= when <= b for a, b in vessel.calls)


# --- AIS feed ---------------------------------------------------------------------------------


def _nmea(fields: dict, epoch: int) -> list[str]:
    lines = encode_dict(fields, radio_channel="A", talker_id="AI", sentence_type="VDM")
    # A tag block with the receive time, as terrestrial AIS networks deliver it.
    return [_tag_block(epoch) + line for line in lines]


def _tag_block(epoch: int) -> str:
    body = f"s:berthwatch-demo,c:{epoch}"
    checksum = 0
    for ch in body:
        checksum ^= ord(ch)
    return f"\\{body}*{checksum:02X}\\"


def ais_feed(fleet: list[DemoVessel], berth_of: dict[str, tuple[float, float]],
             port: Port) -> list[str]:
    """Raw NMEA for a fleet: a static report a day and a position every 30 minutes in port;
    approach and departure tracks around each call; nothing while dark; the spoofer's fake
    call."""
    lines: list[str] = []
    sea = port.aoi.centroid
    for v in fleet:
        lon, lat = berth_of.get(v.id, (sea.x, sea.y))
        calls = v.calls if not v.spoofer else [(DEMO_START + timedelta(days=9),
                                                 DEMO_START + timedelta(days=14))]
        for arrive, depart in calls:
            if v.dark:
                continue
            # Approach, moored at the berth, then departure: a vessel that leaves is seen
            # leaving, so its last moored fix is not held as if it were still alongside.
            t = arrive - timedelta(hours=2)
            while t <= depart + timedelta(hours=2):
                if t < arrive:  # k: 1 two hours out at sea, 0 alongside
                    k, course = (arrive - t) / timedelta(hours=2), 310
                elif t > depart:
                    k, course = (t - depart) / timedelta(hours=2), 130
                else:
                    k, course = 0.0, 0
                moving = k > 0
                fix = {"type": 1, "mmsi": v.mmsi, "lon": lon + 0.12 * k, "lat": lat - 0.08 * k,
                       "speed": 9.5 if moving else 0.0, "course": course,
                       "heading": 511, "status": 0 if moving else 5}
                lines += _nmea(fix, int(t.timestamp()))
                t += timedelta(minutes=6 if moving else 30)
        for day in range(-3, DEMO_DAYS + 3):
            t = DEMO_START + timedelta(days=day, hours=5)
            if v.dark and any(a - DARK_MARGIN <= t <= b + DARK_MARGIN for a, b in v.calls):
                continue
            half = v.length_m / 2
            static = {"type": 5, "mmsi": v.mmsi, "shipname": v.name,
                      "callsign": f"S{v.mmsi % 9999}", "ship_type": v.ship_type,
                      "to_bow": math.ceil(half),
                      "to_stern": math.floor(half), "to_port": int(v.width_m // 2),
                      "to_starboard": int(v.width_m - v.width_m // 2), "imo": 0}
            lines += _nmea(static, int(t.timestamp()))
    return lines


# --- the run ----------------------------------------------------------------------------------


@dataclass
class DemoResult:
    workspace: Path
    alerts_by_port: dict[str, int]
    precision: float
    recall: float
    tp: int
    fp: int
    fn: int
    plot: Path
    scenes: int
    hidden_found: int = 0  # alerts on dark vessels the truth marks hidden by cloud
    under_cloud: int = 0  # unmatched detections set aside on cloud, shadow or cirrus pixels
    reports: dict[str, Path] = field(default_factory=dict)  # port -> its report page
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (scene id, why)


def run_demo(workspace: str | Path | None, seed: int = 7, progress: bool = True,
             weights: str | None = None, threshold: float | None = None,
             days: int = DEMO_DAYS) -> DemoResult:
    from imagery import ais
    from imagery.pipeline import open_workspace, run_pass
    from imagery.simulate import SimulatedSource, VesselSpec, simulate_scene

    ws = open_workspace(workspace or Path("berthwatch-demo"))
    ports = [p for name, p in load_ports().items() if name in ("chongjin", "vostochny")]
    fleets, berth_of = {}, {}
    for port in ports:
        fleet = plan_fleet(port, seed)
        specs = [VesselSpec(v.id, v.length_m, v.width_m, v.zone, v.berthed, mmsi=v.mmsi,
                            name=v.name) for v in fleet]
        # Where each vessel lies when in port: one placement of the whole fleet, pinned after.
        *_, truth = simulate_scene(port, DEMO_START, seed=seed, vessels=specs)
        pinned = {t.id: t.as_spec() for t in truth.vessels}
        for v in fleet:
            if v.id in pinned:
                berth_of[v.id] = (pinned[v.id].lon, pinned[v.id].lat)
        fleets[port.name] = (fleet, pinned)
        feed = ws.root / "demo" / f"ais_{port.name}.nm4"
        feed.parent.mkdir(parents=True, exist_ok=True)
        feed.write_text("\n".join(ais_feed(fleet, berth_of, port)) + "\n", encoding="ascii")
        ais.import_file(ws, feed, "nmea", None, None)

    def fleet_at(port: Port, when: datetime) -> list:
        fleet, pinned = fleets[port.name]
        return [pinned[v.id] for v in fleet
                if v.id in pinned and not v.spoofer and in_port(v, when)]

    index = {p.name: {} for p in ports}

    def clouds(port_name: str, when: datetime) -> float:
        order = index[port_name].setdefault(when, len(index[port_name]))
        return CLOUDY.get(port_name, {}).get(order, 0.0)

    source = SimulatedSource(seed=seed, cloud_schedule=clouds, fleet=fleet_at)
    end = DEMO_START + timedelta(days=days)
    run_pass(ws, ports, source, DEMO_START, end, max_cloud=100.0, weights=weights,
             threshold=threshold, progress=progress)
    score = score_against_truth(ws, fleets)
    plot = write_timeline(ws)
    # Both from the stored state, not this pass: a second demo processes nothing new and
    # must still report what the workspace holds.
    skipped = [(r.scene_id, r.reason or "") for r in ws.list_scenes() if r.status == "skipped"]
    return DemoResult(ws.root, score["alerts_by_port"], score["precision"], score["recall"],
                      score["tp"], score["fp"], score["fn"], plot, score["scenes"],
                      score["hidden_found"], stored_set_aside(ws),
                      reports=write_reports(ws, ports), skipped=skipped)


def write_reports(ws: Workspace, ports: list[Port]) -> dict[str, Path]:
    """Each port's tanker-call report over the demo's weeks (`berthwatch report`)."""
    from imagery.report import write_report

    return {port.name: write_report(ws, port).page for port in ports}


def truth_tanker_calls(ws: Workspace, port: Port, seed: int = 7) -> dict[str, int]:
    """month -> the simulation's tanker calls (AIS ship type 80-89) at `port` that a stored
    scene saw: the vessel at its berth in the scene's truth and not hidden by cloud; each
    counted once, in the month of the first scene that saw it."""
    from imagery.simulate import load_truth, truth_path_for

    conn = ws.connect()
    try:
        scenes = conn.execute("SELECT path FROM scenes WHERE port = ? AND status = 'stored'"
                              " ORDER BY acquisition_time", (port.name,)).fetchall()
    finally:
        conn.close()
    truths = [load_truth(truth_path_for(ws.resolve(s["path"]))) for s in scenes]
    months: dict[str, int] = {}
    for vessel in plan_fleet(port, seed):
        if not 80 <= vessel.ship_type <= 89:
            continue
        for arrive, depart in vessel.calls:
            seen = [t.acquisition_time for t in truths if arrive <= t.acquisition_time <= depart
                    and any(v.id == vessel.id and v.berthed and not v.hidden_by_cloud
                            for v in t.vessels)]
            if seen:
                month = min(seen).strftime("%Y-%m")
                months[month] = months.get(month, 0) + 1
    return months


def stored_set_aside(ws: Workspace) -> int:
    """Detections alongside a berth that no AIS vessel explains and that raised no alert, in
    scenes with AIS coverage: the reconciliation set these aside because their pixels were
    not seen clearly (those of scenes without AIS coverage are counted apart)."""
    conn = ws.connect()
    try:
        return conn.execute(
            """SELECT COUNT(*) FROM detections d
               JOIN processing p ON p.scene_id = d.scene_id AND p.status = 'done'
                    AND COALESCE(p.ais_coverage, 1) != 0
               JOIN zone_counts z ON z.scene_id = d.scene_id AND z.zone = d.zone
                    AND z.kind = 'berth'
               WHERE d.berthed = 1
                 AND NOT EXISTS (SELECT 1 FROM matches m
                                 WHERE m.scene_id = d.scene_id AND m.det_id = d.det_id)
                 AND NOT EXISTS (SELECT 1 FROM alerts a
                                 WHERE a.scene_id = d.scene_id AND a.det_id = d.det_id)""",
        ).fetchone()[0]
    finally:
        conn.close()


def _dark_at(fleet: list[DemoVessel], vessel_id: str, when: datetime) -> bool:
    v = next((v for v in fleet if v.id == vessel_id), None)
    return bool(v and v.dark and in_port(v, when))


def score_against_truth(ws: Workspace, fleets: dict) -> dict:
    """Alerts against the truth: the dark vessels at berth that a scene could see. A dark
    vessel under cloud need not be found, but an alert on it is not false either: such
    alerts are counted apart (`hidden_found`), as don't-care regions are in detection."""
    from imagery.simulate import load_truth, truth_path_for

    conn = ws.connect()
    try:
        scenes = conn.execute("SELECT scene_id, port, path FROM scenes "
                              "WHERE status = 'stored'").fetchall()
        tp = fp = fn = hidden_found = 0
        by_port: dict[str, int] = {}
        for s in scenes:
            fleet = fleets.get(s["port"], ([], {}))[0]
            truth = load_truth(truth_path_for(ws.resolve(s["path"])))
            dark = [v for v in truth.vessels
                    if v.berthed and _dark_at(fleet, v.id, truth.acquisition_time)]
            alerts = [(a["lon"], a["lat"]) for a in conn.execute(
                "SELECT lon, lat FROM alerts WHERE scene_id = ?", (s["scene_id"],))]
            by_port[s["port"]] = by_port.get(s["port"], 0) + len(alerts)
            counts = score_scene(alerts, dark)
            tp, fp, fn = tp + counts["tp"], fp + counts["fp"], fn + counts["fn"]
            hidden_found += counts["hidden_found"]
    finally:
        conn.close()
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    return {"tp": tp, "fp": fp, "fn": fn, "hidden_found": hidden_found,
            "precision": precision, "recall": recall,
            "alerts_by_port": by_port, "scenes": len(scenes)}


def score_scene(alerts: list[tuple[float, float]], dark: list) -> dict[str, int]:
    """tp/fp/fn of one scene's alerts (lon, lat) against its dark vessels at berth (truth
    vessels); alerts on dark vessels hidden by cloud count neither way."""
    paired = _pair(alerts, [(v.lon, v.lat) for v in dark])
    hits = sum(1 for j in paired if not dark[j].hidden_by_cloud)
    visible = sum(1 for v in dark if not v.hidden_by_cloud)
    return {"tp": hits, "fp": len(alerts) - len(paired), "fn": visible - hits,
            "hidden_found": len(paired) - hits}


def _pair(alerts: list[tuple[float, float]], truth: list[tuple[float, float]]) -> list[int]:
    """Indices of the truth points paired one-to-one with an alert within TRUTH_MATCH_M,
    minimising the total distance."""
    if not alerts or not truth:
        return []
    k = 111_320.0
    cost = [[math.hypot((a[0] - t[0]) * k * math.cos(math.radians(t[1])), (a[1] - t[1]) * k)
             for t in truth] for a in alerts]
    rows, cols = linear_sum_assignment(cost)
    return [int(c) for r, c in zip(rows, cols, strict=True) if cost[r][c] <= TRUTH_MATCH_M]


def write_timeline(ws: Workspace) -> Path:
    from imagery.render import timeline_plot

    conn = ws.connect()
    try:
        rows = conn.execute(
            """SELECT s.port, s.acquisition_time AS t,
                      SUM(CASE WHEN z.kind = 'berth' THEN z.detected END) AS detected,
                      SUM(CASE WHEN z.kind = 'berth' AND z.detected IS NULL THEN 1 ELSE 0 END)
                          AS unknown_zones,
                      SUM(CASE WHEN z.kind = 'berth' THEN z.ais ELSE 0 END) AS ais,
                      (SELECT COUNT(*) FROM alerts a WHERE a.scene_id = s.scene_id) AS alerts
               FROM scenes s JOIN zone_counts z ON z.scene_id = s.scene_id
               GROUP BY s.scene_id ORDER BY s.acquisition_time""").fetchall()
    finally:
        conn.close()
    points = [{"port": r["port"], "time": datetime.fromisoformat(r["t"].replace("Z", "+00:00")),
               "detected": None if r["unknown_zones"] else r["detected"], "ais": r["ais"],
               "alerts": r["alerts"]} for r in rows]
    return timeline_plot(points, ws.root / "timeline.png",
                         "SIMULATED: vessels at berths per scene, detected vs AIS")
