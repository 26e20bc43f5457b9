from datetime import UTC, datetime, timedelta

import pytest

from imagery.ports import get_port
from imagery.reconcile import (
    AisFix,
    AisVessel,
    Detection,
    Gates,
    merge_episodes,
    place_vessels,
    reconcile_scene,
)

T0 = datetime(2024, 3, 1, 2, 0, tzinfo=UTC)
PORT = get_port("vostochny")
BERTH = PORT.zone("oil-terminal").geometry.centroid
LEN_PER_DEG_LAT = 111_320.0


def _offset(lon, lat, north_m=0.0):
    return lon, lat + north_m / LEN_PER_DEG_LAT


def _det(det_id, north_m=0.0, length=100.0, zone="oil-terminal", score=0.9):
    lon, lat = _offset(BERTH.x, BERTH.y, north_m)
    return Detection(det_id, lon, lat, score, length, True, zone)


def _moored_fix(mmsi, north_m=0.0, hours_before=3.0):
    lon, lat = _offset(BERTH.x, BERTH.y, north_m)
    return AisFix(mmsi, T0 - timedelta(hours=hours_before), lon, lat, sog_kn=0.1, nav_status=5)


def _run(dets, fixes, vessels=None, visible=None, point_visible=None):
    return reconcile_scene(
        scene_id="S1", port=PORT, acquisition_time=T0, detections=dets, fixes=fixes,
        vessels=vessels or {}, zone_visible=visible or {}, point_visible=point_visible,
    )


def test_interpolates_between_bracketing_fixes():
    fixes = [AisFix(1, T0 - timedelta(minutes=30), 133.0, 42.70, 10.0),
             AisFix(1, T0 + timedelta(minutes=90), 133.1, 42.74, 10.0)]
    (p,) = place_vessels(fixes, T0)
    assert p.method == "interpolated"
    assert p.lon == pytest.approx(133.025) and p.lat == pytest.approx(42.71)


def test_moored_vessel_is_held_but_a_moving_one_is_not_guessed():
    held = place_vessels([_moored_fix(7, hours_before=20)], T0)
    assert held and held[0].method == "held-moored"
    moving = AisFix(8, T0 - timedelta(hours=5), BERTH.x, BERTH.y, sog_kn=9.0, nav_status=0)
    assert place_vessels([moving], T0) == []
    too_old = place_vessels([_moored_fix(9, hours_before=48)], T0)
    assert too_old == []


def test_moored_vessel_that_left_before_next_fix_is_not_held():
    fixes = [_moored_fix(3, hours_before=10),
             AisFix(3, T0 + timedelta(hours=5), BERTH.x + 0.1, BERTH.y, 8.0)]
    assert place_vessels(fixes, T0, Gates()) == []


def test_matched_detection_and_ais_vessel():
    result = _run([_det(1, north_m=40)], [_moored_fix(111)],
                  vessels={111: AisVessel(111, "KOREA STAR", 105.0)})
    assert len(result.matched) == 1 and not result.unmatched and not result.ais_only
    det, placed, dist = result.matched[0]
    assert placed.mmsi == 111 and dist == pytest.approx(40, abs=1)
    zone = next(z for z in result.zones if z.zone == "oil-terminal")
    assert (zone.detected, zone.ais, zone.status) == (1, 1, "observed")


def test_dark_vessel_is_an_unmatched_detection_with_reasons():
    far_fix = _moored_fix(222, north_m=600)
    result = _run([_det(1), _det(2, north_m=700)], [far_fix])
    # det 2 sits 100 m from the AIS vessel and pairs; det 1 is 600 m away: a dark vessel.
    assert [m[0].det_id for m in result.matched] == [2]
    (dark,) = result.unmatched
    assert dark.detection.det_id == 1
    assert dark.considered and dark.considered[0].mmsi == 222
    assert "beyond the 300 m gate" in dark.reasons[0]


def test_watchlisted_vessels_are_flagged_in_the_evidence():
    vessel = AisVessel(777, "DESIGNATED TANKER", 250.0, 80, watchlisted=True)
    result = _run([_det(1, length=60)], [_moored_fix(777, north_m=30)], vessels={777: vessel})
    assert result.unmatched[0].considered[0].watchlisted


def test_length_disagreement_refuses_the_pair():
    result = _run([_det(1, length=60)], [_moored_fix(333, north_m=30)],
                  vessels={333: AisVessel(333, "BIG ONE", 250.0)})
    assert not result.matched
    assert result.unmatched[0].considered[0].refused == "length disagrees"
    assert result.ais_only[0].placement.mmsi == 333


def test_ais_only_vessel_not_seen_in_clear_sky():
    result = _run([], [_moored_fix(444)], vessels={444: AisVessel(444, "GHOST", 90.0)})
    (only,) = result.ais_only
    assert only.placement.mmsi == 444 and "possible spoofing" in only.reason


def test_zone_hidden_by_cloud_is_unknown_not_zero():
    result = _run([], [_moored_fix(555)], visible={"oil-terminal": 0.1},
                  point_visible=lambda lon, lat: False)
    zone = next(z for z in result.zones if z.zone == "oil-terminal")
    assert zone.detected is None and zone.status == "unknown" and zone.ais == 1
    assert result.ais_only[0].reason == "hidden by cloud at its AIS position"


def test_detections_outside_berth_zones_are_not_alerts():
    result = _run([_det(1, zone=None), _det(2, zone="vrangel-bay-anchorage")], [])
    assert result.unmatched == []
    anchorage = next(z for z in result.zones if z.zone == "vrangel-bay-anchorage")
    assert anchorage.detected == 1


def _scene(scene_id, hours, dets, visible=None):
    when = T0 + timedelta(hours=hours)
    return reconcile_scene(scene_id=scene_id, port=PORT, acquisition_time=when, detections=dets,
                           fixes=[], vessels={}, zone_visible=visible or {})


def test_consecutive_scenes_merge_into_one_episode_and_cloud_does_not_break_it():
    scenes = [
        _scene("A", 0, [_det(1)]),
        _scene("B", 72, [], visible={"oil-terminal": 0.0}),  # cloud: unknown
        _scene("C", 120, [_det(1, north_m=50)]),
        _scene("D", 240, []),  # clear and empty: the call is over
        _scene("E", 300, [_det(1)]),
    ]
    episodes = merge_episodes(scenes)
    assert [e.scene_ids for e in episodes] == [["A", "C"], ["E"]]
    assert episodes[0].first_seen == T0 and episodes[0].last_seen == T0 + timedelta(hours=120)


def test_two_vessels_at_one_berth_are_two_episodes():
    scenes = [_scene("A", 0, [_det(1), _det(2, north_m=600)]),
              _scene("B", 48, [_det(1), _det(2, north_m=600)])]
    episodes = merge_episodes(scenes)
    assert sorted(len(e.scene_ids) for e in episodes) == [2, 2]


def test_unmatched_detection_under_cloud_is_set_aside_not_alerted():
    clear, clouded = _det(1), _det(2, north_m=400.0)
    cloud_lat = clouded.lat

    def seen(lon, lat):  # SCL: cloud or shadow over the second detection only
        return abs(lat - cloud_lat) > 1e-6

    result = _run([clear, clouded], [], point_visible=seen)
    assert [u.detection.det_id for u in result.unmatched] == [1]
    assert [u.detection.det_id for u in result.under_cloud] == [2]
    # Matching is unchanged: a clouded detection still accounts for an AIS vessel there.
    matched = _run([clouded], [_moored_fix(5, north_m=400.0)], point_visible=seen)
    assert len(matched.matched) == 1 and matched.under_cloud == [] and matched.ais_only == []


def test_no_ais_coverage_raises_no_alert_and_marks_the_zones():
    """Issue 25 item 2: without AIS around its time a scene cannot show a call undeclared."""
    result = reconcile_scene(
        scene_id="S1", port=PORT, acquisition_time=T0, detections=[_det(0), _det(1, 400)],
        fixes=[], vessels={}, zone_visible={}, ais_covered=False)
    assert result.unmatched == [] and len(result.no_coverage) == 2 and not result.ais_covered
    zone = next(z for z in result.zones if z.zone == "oil-terminal")
    assert zone.detected == 2 and zone.status == "no_ais_coverage"
    covered = _run([_det(0)], [])
    assert len(covered.unmatched) == 1 and covered.no_coverage == []
    assert next(z for z in covered.zones if z.zone == "oil-terminal").status == "observed"


def test_no_coverage_scene_neither_ends_nor_extends_an_episode():
    t1, t2, t3 = T0, T0 + timedelta(days=5), T0 + timedelta(days=10)
    scenes = [reconcile_scene(scene_id=sid, port=PORT, acquisition_time=t, detections=[_det(0)],
                              fixes=[], vessels={}, zone_visible={}, ais_covered=covered)
              for sid, t, covered in (("A", t1, True), ("B", t2, False), ("C", t3, True))]
    (episode,) = merge_episodes(scenes)
    assert episode.scene_ids == ["A", "C"] and episode.last_seen == t3


def test_reason_names_the_pairing_gate_the_readme_states():
    from pathlib import Path

    (item,) = _run([_det(0)], []).unmatched
    assert item.reasons == ["no AIS vessel placed within the 300 m pairing gate "
                            "(none within 900 m)"]
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    assert f"| pair a detection with an AIS vessel within | {Gates().match_distance_m:g} m |" \
        in readme
    assert f"within {Gates().consider_distance_m:g} m" in readme
    assert (f"placed outside every zone only within | {Gates().outside_zone_match_m:g} m |"
            in readme)


def _berthed_and_ais_north_of_it(ais_off_m: float, length_m: float, nav_status: int,
                                 name: str):
    """A ship detected 20 m inside the oil terminal's northern edge, and AIS placing a vessel
    `ais_off_m` metres north of that detection, outside every zone."""
    west, _, east, north = PORT.zone("oil-terminal").geometry.bounds
    lon = (west + east) / 2
    det = Detection(1, lon, north - 20 / LEN_PER_DEG_LAT, 0.9, length_m, True, "oil-terminal")
    fix = AisFix(9, T0 - timedelta(hours=1), lon, det.lat + ais_off_m / LEN_PER_DEG_LAT, 0.0,
                 nav_status)
    assert PORT.zone_at(fix.lon, fix.lat) is None
    return _run([det], [fix], vessels={9: AisVessel(9, name, length_m)})


def test_ais_vessel_just_outside_the_berth_polygon_still_accounts_for_the_detection():
    # The ship is detected inside the berth zone; its AIS antenna reports 60 m away, just over
    # the polygon's edge. AIS accounts for it: no alert, and no "none within 900 m" evidence.
    result = _berthed_and_ais_north_of_it(60.0, 150.0, 5, "ALONGSIDE")
    assert result.unmatched == [] and [m[1].mmsi for m in result.matched] == [9]
    assert result.ais_only == []  # placed outside every zone: never an "AIS but not seen"


def test_a_vessel_anchored_off_the_berth_does_not_explain_a_dark_tanker_at_it():
    # A tanker at the berth with AIS off; a vessel at anchor 250 m off, outside every zone and
    # missed by the detector. Within the 300 m gate, but it is not the berthed ship: an alert,
    # whose evidence names the anchored vessel and why it did not pair.
    result = _berthed_and_ais_north_of_it(250.0, 90.0, 1, "AT ANCHOR")
    assert result.matched == [] and len(result.unmatched) == 1
    (why,) = result.unmatched[0].reasons
    assert why.startswith("MMSI 9 at 250 m: outside the zones, beyond the 100 m gate")


def test_vessel_moored_on_the_antimeridian_is_placed_where_it_lies():
    # GPS jitter takes a moored vessel's fixes across +-180: it is about 100 m from where it
    # was, not on the other side of the planet.
    fixes = [AisFix(1, T0 - timedelta(minutes=30), 179.999, 65.0, 0.1, 5),
             AisFix(1, T0 + timedelta(minutes=30), -179.9994, 65.0, 0.1, 5)]
    (p,) = place_vessels(fixes, T0)
    assert p.method == "interpolated" and abs(abs(p.lon) - 179.9998) < 1e-6
    fixes = [AisFix(2, T0 - timedelta(hours=3), 179.999, 65.0, 0.1, 5),
             AisFix(2, T0 + timedelta(hours=3), -179.9994, 65.0, 0.1, 5)]
    (p,) = place_vessels(fixes, T0)  # the next fix is 75 m away: it stayed
    assert p.method == "held-moored" and p.lon == 179.999
