"""Tanker evidence, the tanker-call rule and the barrels arithmetic, checked against figures
worked out by hand (in the comments)."""

from __future__ import annotations

import json

import pytest

from imagery.ports import PortsError, get_port, load_port_file
from imagery.tankers import (
    BARRELS_PER_M3,
    DEFAULT_CONFIG,
    TankerConfig,
    barrels_for_length,
    barrels_range,
    config_with,
    deadweight_t,
    gather_evidence,
    tanker_decision,
)


def test_a_barrel_is_42_us_gallons():
    # 1 m3 / (42 x 3.785411784 L) = 1000 / 158.987294928 = 6.28981 barrels.
    assert BARRELS_PER_M3 == pytest.approx(6.28981, abs=1e-5)


def test_barrels_with_round_constants():
    # k = 1: dwt = 10^3 = 1000 t; x 0.5 load = 500 t; / 0.5 t/m3 = 1000 m3; x 6.28981 bbl.
    config = TankerConfig(length_per_cube_root_dwt=1.0, load_factor=0.5, density_t_per_m3=0.5,
                          length_error_m=5.0, min_length_m=1.0)
    assert deadweight_t(10.0, config) == pytest.approx(1000.0)
    assert barrels_for_length(10.0, config) == pytest.approx(6289.81, abs=0.01)
    # low: 5 m -> 125 t -> 62.5 t cargo -> 125 m3 -> 786.23 bbl;
    # high: 15 m -> 3375 t -> 1687.5 t -> 3375 m3 -> 21228.11 bbl.
    r = barrels_range(10.0, config)
    assert (r.low, r.central, r.high) == pytest.approx((786.23, 6289.81, 21228.11), abs=0.01)


def test_barrels_of_an_80_m_tanker_with_the_default_constants():
    # The README's example. dwt = (80 / 5.7)^3 = 14.0351^3 = 2764.70 t; cargo 0.9 x 2764.70 =
    # 2488.23 t; / 0.84 = 2962.18 m3; x 6.28981 = 18631.5 bbl.
    # low: 80 - 28.3 = 51.7 m -> (51.7 / 5.7)^3 = 746.20 t -> 671.58 t -> 799.50 m3 -> 5028.7;
    # high: 108.3 m -> 19^3 = 6859 t -> 6173.1 t -> 7348.93 m3 -> 46223.4.
    r = barrels_range(80.0, DEFAULT_CONFIG)
    assert r.central == pytest.approx(18631.5, abs=0.5)
    assert r.low == pytest.approx(5028.7, abs=0.5)
    assert r.high == pytest.approx(46223.4, abs=0.5)


def test_the_low_case_never_goes_below_the_floor_length():
    config = TankerConfig(length_error_m=100.0)
    assert barrels_range(50.0, config).low == pytest.approx(
        barrels_for_length(config.min_length_m, config))


@pytest.mark.parametrize("oil, length, ais, analyst, expected", [
    (True, 80.0, None, None, (True, "oil-berth+length")),
    (True, 150.0, None, None, (False, "oil-berth+length")),  # outside the band
    (False, 80.0, None, None, (False, "oil-berth+length")),  # not at an oil berth
    (True, None, None, None, (False, "oil-berth+length")),  # no length: no evidence
    (False, 150.0, 84, None, (True, "ais-type")),  # AIS says tanker wherever it lies
    (True, 80.0, 70, None, (False, "ais-type")),  # AIS says cargo
    (True, 80.0, 84, "cargo", (False, "analyst")),  # the analyst overrides AIS
    (False, 200.0, None, "tanker", (True, "analyst")),
    (True, 80.0, None, "unknown", (True, "oil-berth+length")),  # unknown is no call
])
def test_the_tanker_rule(oil, length, ais, analyst, expected):
    evidence = gather_evidence(at_oil_berth=oil, length_m=length, ais_ship_type=ais,
                               analyst_type=analyst)
    assert tanker_decision(evidence) == expected


def test_shipped_ports_mark_an_oil_berth_that_stays_a_berth():
    for name, zone in (("vostochny", "oil-terminal"), ("chongjin", "west-harbour")):
        z = get_port(name).zone(zone)
        assert z.oil_berth and z.kind == "berth" and z.approximate
        assert z.declared_kind == "oil-berth"


def _doc(kind: str) -> dict:
    box = [[[0, 0], [0.1, 0], [0.1, 0.1], [0, 0.1], [0, 0]]]
    small = [[[0.01, 0.01], [0.02, 0.01], [0.02, 0.02], [0.01, 0.02], [0.01, 0.01]]]
    return {"type": "FeatureCollection", "properties": {"name": "t", "epsg": 32652},
            "features": [
                {"type": "Feature", "properties": {"kind": "aoi"},
                 "geometry": {"type": "Polygon", "coordinates": box}},
                {"type": "Feature", "properties": {"kind": kind, "name": "q"},
                 "geometry": {"type": "Polygon", "coordinates": small}}]}


def test_an_oil_berth_kind_loads_and_an_unknown_kind_is_named(tmp_path):
    good = tmp_path / "good.geojson"
    good.write_text(json.dumps(_doc("oil-berth")))
    assert load_port_file(good).zone("q").oil_berth
    bad = tmp_path / "bad.geojson"
    bad.write_text(json.dumps(_doc("oil_jetty")))
    with pytest.raises(PortsError, match=r"bad.geojson: feature 1 \(q\): property 'kind' is "
                                         r"'oil_jetty'; expected .*'oil-berth'"):
        load_port_file(bad)


def test_constants_are_configurable_and_bad_settings_are_named():
    config = config_with(["load_factor=0.33", "band_max_m = 120"])
    assert (config.load_factor, config.band_max_m) == (0.33, 120.0)
    # One third of the load: one third of the barrels (18631.5 x 0.33 / 0.9 = 6831.5).
    assert barrels_for_length(80.0, config) == pytest.approx(6831.5, abs=0.5)
    for bad, message in (("load=1", "NAME one of"), ("load_factor=x", "not a number"),
                         ("density_t_per_m3=0", "positive"), ("band_min_m=200", "above")):
        with pytest.raises(ValueError, match=message):
            config_with([bad])
