import json
from pathlib import Path

import pytest

from imagery.cli import main
from imagery.ports import PortsError, get_port, load_port_file, load_ports

SHARED_PORTS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ports"


def _box(w, s, e, n):
    return {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}


def _port_doc(name="testport", epsg=32652, features=None):
    if features is None:
        features = [
            {"type": "Feature", "properties": {"kind": "aoi"}, "geometry": _box(0, 0, 0.1, 0.1)},
            {"type": "Feature", "properties": {"kind": "berth", "name": "quay-1"},
             "geometry": _box(0.01, 0.01, 0.02, 0.02)},
        ]
    return {"type": "FeatureCollection", "properties": {"name": name, "epsg": epsg},
            "features": features}


def test_shipped_ports_have_aoi_utm_and_zones():
    ports = load_ports()
    assert set(ports) >= {"chongjin", "vostochny"}
    assert ports["chongjin"].epsg == 32652 and ports["vostochny"].epsg == 32653
    for port in ports.values():
        assert 5 < port.aoi_area_km2 < 500
        assert port.zones and all(z.approximate for z in port.zones)


def test_shipped_ports_contain_world_port_index_reference_points():
    if not SHARED_PORTS.exists():
        pytest.skip(f"{SHARED_PORTS} not found: shared data is absent in this checkout")
    import csv

    rows = {r["UN/LOCODE"]: r for r in csv.DictReader(open(SHARED_PORTS /
                                                          "world_port_index_targets.csv"))}
    from shapely.geometry import Point

    for code, name in (("KP CHO", "chongjin"), ("RU VYP", "vostochny")):
        point = Point(float(rows[code]["Longitude"]), float(rows[code]["Latitude"]))
        assert get_port(name).aoi.contains(point)


def test_zone_lookup():
    port = get_port("vostochny")
    zone = port.zones[0]
    c = zone.geometry.representative_point()
    assert port.zone_at(c.x, c.y) == zone.name
    assert port.zone_at(0.0, 0.0) is None


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.update(features=[]), "no feature with kind 'aoi'"),
        (lambda d: d["features"][1]["properties"].pop("name"), "feature 1: berth zone has no"),
        (lambda d: d["features"][1].update(geometry={"type": "Point", "coordinates": [0, 0]}),
         "feature 1 (quay-1): geometry must be a Polygon"),
        (lambda d: d["features"][1].update(geometry={"type": "Polygon", "coordinates": [[1]]}),
         "feature 1 (quay-1): invalid geometry"),
        (lambda d: d["features"][1]["properties"].update(kind="dock"), "'kind' is 'dock'"),
        (lambda d: d["properties"].update(epsg=4326), "not a projected CRS"),
        (lambda d: d["properties"].update(epsg="utm"), "not a valid EPSG code"),
        (lambda d: d["features"][1].update(geometry=_box(5, 5, 5.1, 5.1)), "outside the port"),
        (lambda d: d["features"][0].update(geometry=_box(200, 0, 201, 1)), "not WGS84"),
    ],
)
def test_malformed_port_file_names_file_and_feature(tmp_path, mutate, message):
    doc = _port_doc()
    mutate(doc)
    path = tmp_path / "bad.geojson"
    path.write_text(json.dumps(doc))
    with pytest.raises(PortsError) as err:
        load_port_file(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_invalid_json_is_reported_with_line(tmp_path):
    path = tmp_path / "broken.geojson"
    path.write_text('{"type": "FeatureCollection",\n "features": [}')
    with pytest.raises(PortsError, match=r"broken.geojson: invalid JSON at line 2"):
        load_port_file(path)


def test_cli_ports_lists_custom_dir_and_reports_bad_file(tmp_path, capsys):
    (tmp_path / "testport.geojson").write_text(json.dumps(_port_doc()))
    assert main(["ports", "--ports", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "testport" in out and "quay-1" in out and "km2" in out
    (tmp_path / "zz.geojson").write_text(json.dumps(_port_doc(name="zz", features=[])))
    assert main(["ports", "--ports", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "zz.geojson" in err and "Traceback" not in err


def test_cli_ports_default_lists_both_ports(capsys):
    assert main(["ports"]) == 0
    out = capsys.readouterr().out
    assert "chongjin" in out and "vostochny" in out and "oil-terminal" in out


def test_unknown_port_lists_known_ones():
    with pytest.raises(PortsError, match="known ports: chongjin, vostochny"):
        get_port("atlantis")
