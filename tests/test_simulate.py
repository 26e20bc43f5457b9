"""The simulator: deterministic, in the scene format, and true to its own truth."""

import hashlib
import json
import os
import stat
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pytest
from rasterio.windows import Window
from scipy import ndimage
from shapely.geometry import Point

from imagery.cli import main
from imagery.ports import get_port
from imagery.scene import SCENE_BANDS, SCL_OBSCURED, open_scene, read_reflectance, read_scl
from imagery.simulate import (
    FENDER_GAP_M,
    SimulatedSource,
    SimulationError,
    VesselSpec,
    load_truth,
    port_layout,
    simulate_scene,
    simulate_scene_file,
    truth_path_for,
    write_large_scene,
)
from imagery.sources import fetch_into_workspace
from imagery.workspace import Workspace

DAY = "2024-03-05"


@pytest.fixture(scope="module")
def port():
    return get_port("chongjin")


@pytest.fixture(scope="module")
def clear(port, tmp_path_factory):
    path = tmp_path_factory.mktemp("sim") / "clear.tif"
    truth = simulate_scene_file(port, DAY, path, seed=0)
    return path, truth


@pytest.fixture(scope="module")
def cloudy(port, tmp_path_factory):
    path = tmp_path_factory.mktemp("sim") / "cloudy.tif"
    truth = simulate_scene_file(port, DAY, path, seed=0, cloud_fraction=0.5)
    return path, truth


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_same_seed_same_bytes_other_seed_or_day_differs(port, clear, tmp_path):
    path, truth = clear
    again = simulate_scene_file(port, DAY, tmp_path / "again.tif", seed=0)
    assert _sha(tmp_path / "again.tif") == _sha(path)
    assert again.vessels == truth.vessels
    a = simulate_scene(port, DAY, seed=0, size=(96, 64))[0]
    assert np.array_equal(a, simulate_scene(port, DAY, seed=0, size=(96, 64))[0])
    assert not np.array_equal(a, simulate_scene(port, DAY, seed=1, size=(96, 64))[0])
    assert not np.array_equal(a, simulate_scene(port, "2024-03-07", seed=0, size=(96, 64))[0])


def test_scene_format_tags_and_crs(port, clear):
    path, truth = clear
    info = open_scene(path)
    assert info.bands == SCENE_BANDS + ("SCL",) and info.dtype == "uint16"
    assert info.crs.to_epsg() == port.epsg and info.pixel_size_m == 10.0
    assert info.simulated and info.source == "simulated" and info.tags["SIMULATED"] == "true"
    assert info.scene_id == truth.scene_id == "SIM_chongjin_20240305_0"
    assert info.port == "chongjin" and info.reflectance_scale == 10000
    # Sentinel-2 passes at ~10:30 local solar time: ~01:50 UTC at 130 E.
    t = info.acquisition_time
    assert t.date() == date(2024, 3, 5) and time_between(t, "01:30", "02:15")
    # The grid covers the AOI.
    left, bottom, right, top = info.bounds
    aoi = port.to_utm(port.aoi).bounds
    assert left <= aoi[0] and bottom <= aoi[1] and right >= aoi[2] and top >= aoi[3]


def time_between(moment, start, end):
    return start <= moment.strftime("%H:%M") <= end


def test_truth_sidecar_is_complete_and_marked_simulated(clear):
    path, truth = clear
    assert truth.truth_path == truth_path_for(path) == path.with_name("clear.truth.geojson")
    doc = json.loads(truth.truth_path.read_text())
    assert doc["properties"]["simulated"] is True and "SIMULATED" in doc["properties"]["note"]
    assert len(doc["features"]) == len(truth.vessels)
    assert all(f["properties"]["simulated"] is True for f in doc["features"])
    assert load_truth(truth.truth_path).vessels == truth.vessels


def test_reflectances_are_l2a_like(clear):
    path, _ = clear
    refl, scl = read_reflectance(open_scene(path)), _scl(path)
    water = np.median(refl[:, scl == 6], axis=1)
    assert 0.03 < water[0] < 0.08 and water[3] < 0.03 and water[4] < 0.02
    forest_nir = np.median(refl[3, scl == 4])
    assert forest_nir > 0.12 and forest_nir > 2 * np.median(refl[2, scl == 4])
    assert set(np.unique(scl)) <= {4, 5, 6}


def _scl(path):
    return read_scl(open_scene(path))


def test_random_fleet_inside_the_aoi_and_bright_against_water(port, clear):
    path, truth = clear
    berthed = [v for v in truth.vessels if v.berthed]
    anchored = [v for v in truth.vessels if not v.berthed]
    assert 3 <= len(berthed) <= 12 and 2 <= len(anchored) <= 6 and not truth.unplaced
    info = open_scene(path)
    nir = read_reflectance(info, ("B08",))[0]
    water_nir = np.median(nir[_scl(path) == 6])
    for v in truth.vessels:
        assert port.aoi.contains(Point(v.lon, v.lat)) and not v.hidden_by_cloud
        assert 40 <= v.length_m <= 300 and 8 <= v.width_m <= 50
        x, y = info.transform * (v.px_x, v.px_y)
        assert np.allclose(port.to_utm(Point(v.lon, v.lat)).coords[0], (x, y), atol=0.5)
        r, c = int(v.px_y), int(v.px_x)
        assert nir[r - 1:r + 2, c - 1:c + 2].max() > max(0.05, 3 * water_nir), v.id


def test_berthed_vessels_lie_against_a_quay_and_anchored_ones_do_not(port, clear):
    _, truth = clear
    layout = port_layout(port)
    to_land = ndimage.distance_transform_edt(~layout.land) * 10.0
    for v in truth.vessels:
        gap = to_land[int(v.px_y), int(v.px_x)]
        if v.berthed:
            assert gap <= v.width_m / 2 + FENDER_GAP_M + 15, v
            assert port.zone(v.zone).kind == "berth"
        else:
            assert gap > v.length_m / 2 + 100, v


def test_clouded_scene_has_cloud_in_scl_and_flags_hidden_vessels(cloudy):
    path, truth = cloudy
    scl = _scl(path)
    assert np.isin(scl, (8, 9)).any() and (scl == 3).any()  # cloud and its shadow
    assert 0.45 < np.isin(scl, (8, 9, 10)).mean() < 0.55
    hidden = [v for v in truth.vessels if v.hidden_by_cloud]
    assert hidden and len(hidden) < len(truth.vessels)
    for v in truth.vessels:
        centre_hidden = scl[int(v.px_y), int(v.px_x)] in SCL_OBSCURED
        assert v.hidden_by_cloud == (v.obscured_fraction >= 0.5)
        if v.obscured_fraction in (0.0, 1.0):
            assert centre_hidden == v.hidden_by_cloud
    assert min(truth.zone_visible_fraction.values()) < 1.0


def test_all_cloud_hides_everything(port):
    data, bands, *_, truth = simulate_scene(port, DAY, seed=0, cloud_fraction=1.0)
    assert np.isin(data[bands.index("SCL")], (8, 9, 10)).all()
    assert all(v.hidden_by_cloud for v in truth.vessels)
    assert set(truth.zone_visible_fraction.values()) == {0.0}
    with pytest.raises(SimulationError):
        simulate_scene(port, DAY, seed=0, cloud_fraction=1.5)


def test_caller_vessels_keep_their_berth_from_scene_to_scene(port):
    fleet = [VesselSpec("TANKER-1", 180, 30, zone="east-harbour", mmsi=445123456,
                        name="SIM TANKER"),
             VesselSpec("BULK-2", 220, 32, zone="outer-anchorage"),
             VesselSpec("SMALL-3", 45, 9, berthed=True)]
    *_, first = simulate_scene(port, DAY, seed=1, vessels=fleet)
    *_, later = simulate_scene(port, "2024-03-10", seed=2, vessels=fleet, cloud_fraction=0.3)
    by_id = {v.id: v for v in first.vessels}
    assert set(by_id) == {"TANKER-1", "BULK-2", "SMALL-3"}
    tanker = by_id["TANKER-1"]
    assert tanker.berthed and tanker.zone == "east-harbour" and tanker.mmsi == 445123456
    assert by_id["BULK-2"].zone == "outer-anchorage" and not by_id["BULK-2"].berthed
    for v in later.vessels:
        if v.berthed:
            assert (v.lon, v.lat) == (by_id[v.id].lon, by_id[v.id].lat)
    # A truth vessel fed back pins it exactly.
    *_, pinned = simulate_scene(port, "2024-03-12", seed=3, vessels=[tanker])
    (again,) = pinned.vessels
    assert (again.lon, again.lat, again.heading_deg, again.berthed) == (
        tanker.lon, tanker.lat, tanker.heading_deg, True)
    with pytest.raises(SimulationError, match="no zone"):
        simulate_scene(port, DAY, seed=0, vessels=[VesselSpec("X", 50, 10, zone="nowhere")])


def test_simulated_source_revisit_weather_and_fetch(port, tmp_path):
    start, end = datetime(2024, 3, 1, tzinfo=UTC), datetime(2024, 3, 31, tzinfo=UTC)
    refs = SimulatedSource(seed=5).search(port, start, end)
    assert [r.scene_id for r in refs] == [r.scene_id for r in
                                          SimulatedSource(seed=5).search(port, start, end)]
    gaps = {(b.acquisition_time.date() - a.acquisition_time.date()).days
            for a, b in zip(refs, refs[1:], strict=False)}
    assert gaps == {2, 3} and len(refs) == 12
    assert all(r.scene_id == f"SIM_chongjin_{r.acquisition_time:%Y%m%d}_5" for r in refs)
    assert all(time_between(r.acquisition_time, "01:30", "02:15") for r in refs)
    assert len({r.cloud_cover for r in refs}) > 3  # the weather changes
    clear_only = SimulatedSource(seed=5).search(port, start, end, max_cloud=20)
    assert 0 < len(clear_only) < len(refs) and all(r.cloud_cover <= 20 for r in clear_only)
    # A schedule dictates the AOI's cloud: one clear day, one overcast day.
    clear_day, overcast_day = refs[0].acquisition_time, refs[1].acquisition_time
    source = SimulatedSource(seed=5, cloud_schedule={clear_day.date(): 0.0,
                                                     f"{overcast_day:%Y-%m-%d}": 1.0})
    chosen = source.search(port, clear_day, overcast_day)
    assert [r.extra["aoi_cloud_fraction"] for r in chosen] == [0.0, 1.0]
    ws = Workspace.open(tmp_path / "ws")
    stored, skipped = (fetch_into_workspace(source, r, port, ws) for r in chosen)
    assert stored.status == "stored" and ws.scene(chosen[0].scene_id).simulated
    assert truth_path_for(stored.path).exists() and stored.cloud_fraction == 0.0
    assert skipped.status == "skipped" and skipped.reason == "all cloud over the AOI"


def test_cli_simulate_writes_the_scene_and_says_simulated(tmp_path, capsys):
    out = tmp_path / "chongjin.tif"
    assert main(["simulate", "--port", "chongjin", "--date", DAY, "--out", str(out),
                 "--seed", "4", "--cloud", "0.2"]) == 0
    printed = capsys.readouterr().out
    assert "SIMULATED" in printed and str(out) in printed
    info = open_scene(out)
    assert info.simulated and info.scene_id == "SIM_chongjin_20240305_4"
    assert truth_path_for(out).exists() and str(truth_path_for(out)) in printed


def test_size_gives_a_grid_centred_on_the_aoi(port):
    data, bands, crs, transform, truth = simulate_scene(port, DAY, seed=0, size=(128, 96))
    assert data.shape == (6, 96, 128) and bands[-1] == "SCL" and crs.to_epsg() == 32652
    centre = port.to_utm(port.aoi).centroid
    x, y = transform * (64, 48)
    assert abs(x - centre.x) <= 10 and abs(y - centre.y) <= 10
    assert (truth.width, truth.height) == (128, 96)


def test_write_large_scene_is_a_valid_seamless_scene(tmp_path):
    path = write_large_scene(tmp_path / "big.tif", 300, 200, seed=1, strip_rows=64)
    info = open_scene(path)
    assert (info.width, info.height) == (300, 200) and info.bands == SCENE_BANDS
    assert info.simulated and info.crs.is_projected and info.scene_id == "SIM_LARGE_300x200_1"
    # Strips of any height give the same pixels: no seams where strips meet.
    again = write_large_scene(tmp_path / "big2.tif", 300, 200, seed=1, strip_rows=100)
    assert np.array_equal(read_reflectance(open_scene(again)), read_reflectance(info))
    refl = read_reflectance(info, window=Window(0, 0, 300, 200))
    assert 0 < refl.min() and refl.max() < 1
    # Readable as the umask allows, like every other scene (mkstemp's own mode is 0600).
    old = os.umask(0o022)
    try:
        shared = write_large_scene(tmp_path / "big3.tif", 64, 64, seed=1)
    finally:
        os.umask(old)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o644


def test_acquisition_time_defaults_to_the_overpass(port):
    *_, truth = simulate_scene(port, date(2024, 6, 1), seed=0, size=(32, 32))
    assert time_between(truth.acquisition_time, "01:30", "02:15")
    explicit = datetime(2024, 6, 1, 2, 5, tzinfo=UTC)
    *_, truth = simulate_scene(port, explicit, seed=0, size=(32, 32))
    assert truth.acquisition_time == explicit
    assert truth.acquisition_time - explicit == timedelta(0)


def _box(w, s, e, n):
    return {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}


@pytest.mark.parametrize("zones", [
    [],  # no zones: open water and coast only
    [("berth", "quay", _box(129.025, 41.005, 129.035, 41.015)),
     ("anchorage", "roads", _box(129.0, 41.0, 129.015, 41.02))],  # the sea lies west
])
def test_an_analysts_own_port_simulates_too(tmp_path, zones):
    features = [{"type": "Feature", "properties": {"kind": "aoi"},
                 "geometry": _box(129.0, 41.0, 129.04, 41.02)}]
    features += [{"type": "Feature", "properties": {"kind": k, "name": n}, "geometry": g}
                 for k, n, g in zones]
    path = tmp_path / "custom.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features,
                                "properties": {"name": "custom", "epsg": 32652}}))
    from imagery.ports import load_port_file

    custom = load_port_file(path)
    *_, truth = simulate_scene(custom, DAY, seed=2)
    assert truth.vessels and all(custom.aoi.contains(Point(v.lon, v.lat)) for v in truth.vessels)
    berthed = [v for v in truth.vessels if v.berthed]
    assert all(v.zone == "quay" for v in berthed) and (berthed or not zones)
