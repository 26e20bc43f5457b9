"""The demo's simulated AIS feed and its scoring against the simulation's truth."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from imagery import ais
from imagery.demo import DemoVessel, ais_feed, score_scene
from imagery.ports import get_port
from imagery.reconcile import AisFix, place_vessels
from imagery.simulate import TruthVessel
from imagery.workspace import Workspace

ARRIVE = datetime(2024, 3, 10, 6, tzinfo=UTC)
DEPART = ARRIVE + timedelta(hours=80)


def _placements(tmp_path, when: datetime):
    port = get_port("chongjin")
    berth = port.zone("west-harbour").geometry.centroid
    vessel = DemoVessel("CHO-B9", "chongjin", 445000009, "SIM CARGO", 120.0, 18.0, 70,
                        "west-harbour", True, [(ARRIVE, DEPART)])
    feed = tmp_path / "feed.nm4"
    feed.write_text("\n".join(ais_feed([vessel], {vessel.id: (berth.x, berth.y)}, port)) + "\n")
    ws = Workspace.open(tmp_path / "ws")
    ais.import_file(ws, feed, "nmea")
    conn = ws.connect()
    rows = ais.positions_near(conn, -180, -90, 180, 90, when - timedelta(days=3), when)
    conn.close()
    fixes = [AisFix(r.mmsi, r.time, r.lon, r.lat, r.sog_kn, r.nav_status) for r in rows]
    return place_vessels(fixes, when), berth


def test_a_vessel_at_berth_is_placed_there(tmp_path):
    placed, berth = _placements(tmp_path, ARRIVE + timedelta(hours=40))
    assert len(placed) == 1
    assert abs(placed[0].lon - berth.x) < 1e-5 and abs(placed[0].lat - berth.y) < 1e-5


def test_a_vessel_that_left_is_not_held_at_its_berth(tmp_path):
    # Without a departure track the last moored fix would be held for 36 h after it left,
    # and that phantom would pair with a dark vessel's detection nearby.
    placed, _ = _placements(tmp_path, DEPART + timedelta(hours=6))
    assert placed == []


def _truth(vid: str, lon: float, hidden: bool = False) -> TruthVessel:
    return TruthVessel(id=vid, lon=lon, lat=42.75, px_x=0.0, px_y=0.0, length_m=80.0,
                       width_m=12.0, heading_deg=0.0, berthed=True, zone="oil-terminal",
                       hidden_by_cloud=hidden)


def test_score_scene_counts_hidden_dark_vessels_neither_way():
    dark = [_truth("seen", 133.000), _truth("missed", 133.010),
            _truth("under-cloud", 133.020, hidden=True)]
    alerts = [(133.0002, 42.75), (133.0200, 42.75), (133.05, 42.75)]
    assert score_scene(alerts, dark) == {"tp": 1, "fp": 1, "fn": 1, "hidden_found": 1}
