"""The scene format against every bad input of issue 2, and against the real scenes."""

import shutil
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.windows import Window

from imagery.cli import main
from imagery.detector import check_reflectance_scale, detect_scene
from imagery.ports import get_port
from imagery.scene import (
    MAX_SCENE_PIXELS,
    SCENE_BANDS,
    SceneError,
    open_scene,
    read_reflectance,
    read_scl,
    read_valid,
    write_scene,
)
from imagery.sources import LocalFolderSource, SceneRef, fetch_into_workspace
from imagery.workspace import Workspace, sha256_file

DATA = Path(__file__).parent / "data"
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
WHEN = datetime(2024, 3, 1, 1, 47, tzinfo=UTC)
UTM = Affine(10, 0, 600000, 0, -10, 4630000)


def _shared_scenes(folder: str) -> list[Path]:
    root = SHARED / folder
    return sorted(root.glob("*/scene.tif")) if root.is_dir() else []


def _write(path, data, bands=SCENE_BANDS, crs="EPSG:32652", tags=None):
    """A GeoTIFF with exactly these tags (write_scene would add its defaults)."""
    profile = dict(driver="GTiff", width=data.shape[2], height=data.shape[1],
                   count=data.shape[0], dtype=str(data.dtype), crs=crs, transform=UTM)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        dst.update_tags(**(tags or {}))
        for i, name in enumerate(bands, start=1):
            dst.set_band_description(i, name)
    return path


# --- open_scene ----------------------------------------------------------------------------


def test_a_good_scene_opens_with_its_contract():
    info = open_scene(DATA / "chongjin_64.tif")
    assert info.bands == SCENE_BANDS + ("SCL",) and info.has_scl
    assert info.scene_id == "FIXTURE_CHONGJIN" and info.port == "chongjin"
    assert info.acquisition_time == WHEN and info.reflectance_scale == 10000
    assert info.crs.to_epsg() == 32652 and info.pixel_size_m == 10
    assert info.dtype == "uint16" and not info.simulated


@pytest.mark.parametrize("name, reason", [
    ("corrupt.tif", "not a readable GeoTIFF"),
    ("truncated.tif", "GeoTIFF"),
    ("missing_b11.tif", "missing bands B11"),
    ("uint8.tif", "dtype uint8 is not reflectance"),
    ("int8.tif", "dtype int8 is not reflectance"),
    ("wgs84.tif", "CRS EPSG:4326 is not in metres"),
])
def test_each_bad_file_gets_a_clear_error_naming_it(name, reason):
    with pytest.raises(SceneError) as caught:
        open_scene(DATA / name)
    assert reason in caught.value.reason
    assert str(DATA / name) in str(caught.value)


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.2])
def test_a_written_scene_cut_short_is_refused(tmp_path, keep):
    rng = np.random.default_rng(4)
    data = rng.integers(100, 3000, (5, 300, 300), dtype=np.uint16)
    whole = write_scene(tmp_path / "whole.tif", data, SCENE_BANDS, "EPSG:32652", UTM,
                        scene_id="W", port=None, source="local", acquisition_time=WHEN)
    cut = tmp_path / "cut.tif"
    cut.write_bytes(whole.read_bytes()[: int(whole.stat().st_size * keep)])
    with pytest.raises(SceneError, match="GeoTIFF"):
        open_scene(cut)


def test_missing_file_and_unnamed_or_duplicate_bands(tmp_path):
    with pytest.raises(SceneError, match="no such file"):
        open_scene(tmp_path / "nope.tif")
    data = np.ones((5, 8, 8), np.uint16)
    with pytest.raises(SceneError, match="must name every band"):
        open_scene(_write(tmp_path / "unnamed.tif", data, ("B02", "", "B04", "B08", "B11")))
    with pytest.raises(SceneError, match="duplicate band names"):
        open_scene(_write(tmp_path / "dup.tif", data, ("B02", "B02", "B04", "B08", "B11")))


def test_require_bands_none_accepts_a_named_subset():
    info = open_scene(DATA / "missing_b11.tif", require_bands=None)
    assert info.bands == ("B02", "B03", "B04", "B08")
    reflectance = read_reflectance(info)
    assert np.isnan(reflectance[4]).all() and np.isfinite(reflectance[:4]).all()
    assert read_scl(info) is None


@pytest.mark.parametrize("tag, dtype, scale", [
    ("65535", "uint16", 65535.0), ("10000", "uint16", 10000.0), (None, "uint16", 10000.0),
    (None, "float32", 1.0), ("1", "float32", 1.0),
])
def test_reflectance_scale_tag(tmp_path, tag, dtype, scale):
    data = np.full((5, 8, 8), 1000, dtype=dtype)
    tags = {"REFLECTANCE_SCALE": tag} if tag else {}
    info = open_scene(_write(tmp_path / "s.tif", data, tags=tags))
    assert info.reflectance_scale == scale
    assert read_reflectance(info)[0, 0, 0] == pytest.approx(1000 / scale)


@pytest.mark.parametrize("tag, message", [("abc", "is not a number"), ("0", "must be positive"),
                                          ("-5", "must be positive")])
def test_bad_reflectance_scale_is_refused(tmp_path, tag, message):
    path = _write(tmp_path / "s.tif", np.ones((5, 8, 8), np.uint16),
                  tags={"REFLECTANCE_SCALE": tag})
    with pytest.raises(SceneError, match=message):
        open_scene(path)


def test_acquisition_date_is_accepted_and_times_are_utc(tmp_path):
    info = open_scene(DATA / "acquisition_date.tif")
    assert info.acquisition_time == datetime(2023, 8, 17, tzinfo=UTC)
    assert info.reflectance_scale == 10000  # no tag: the L2A default
    path = _write(tmp_path / "t.tif", np.ones((5, 8, 8), np.uint16),
                  tags={"ACQUISITION_TIME": "2024-03-01T10:47:00+09:00"})
    assert open_scene(path).acquisition_time == WHEN
    bad = _write(tmp_path / "b.tif", np.ones((5, 8, 8), np.uint16),
                 tags={"ACQUISITION_TIME": "last tuesday"})
    with pytest.raises(SceneError, match="not ISO 8601"):
        open_scene(bad)


def test_windows_past_the_edge_read_as_fill():
    info = open_scene(DATA / "tile_20x13.tif")
    out = read_reflectance(info, window=Window(10, 5, 16, 16), fill=np.nan)
    assert np.isfinite(out[:, :8, :10]).all() and np.isnan(out[:, 8:, :]).all()
    assert (read_scl(info, Window(15, 10, 8, 8))[3:, :] == 0).all()


# --- fetch_into_workspace --------------------------------------------------------------------


def _ref(scene_id: str, name: str) -> SceneRef:
    return SceneRef(scene_id, "chongjin", WHEN, "local", extra={"path": str(DATA / name)})


@pytest.fixture
def stored(tmp_path):
    """A workspace holding one good scene, as it stood before the bad input arrives."""
    ws = Workspace.open(tmp_path / "ws")
    port, source = get_port("chongjin"), LocalFolderSource(DATA)
    outcome = fetch_into_workspace(source, _ref("GOOD", "chongjin_64.tif"), port, ws)
    assert outcome.status == "stored" and outcome.cloud_fraction == 0.0
    return ws, port, source, sha256_file(outcome.path)


@pytest.mark.parametrize("name, reason", [
    ("corrupt.tif", "unusable scene: not a readable GeoTIFF"),
    ("truncated.tif", "unusable scene:"),
    ("missing_b11.tif", "unusable scene: missing bands B11"),
    ("uint8.tif", "unusable scene: dtype uint8"),
    ("int8.tif", "unusable scene: dtype int8"),
    ("wgs84.tif", "unusable scene: CRS EPSG:4326 is not in metres"),
    ("vostochny_64.tif", "the AOI of port chongjin does not overlap the scene"),
    ("chongjin_all_cloud.tif", "all cloud over the AOI"),
])
def test_bad_input_is_skipped_recorded_and_loses_nothing(stored, name, reason):
    ws, port, source, good_sha = stored
    ref = _ref(f"BAD_{Path(name).stem}", name)
    outcome = fetch_into_workspace(source, ref, port, ws)
    assert outcome.status == "skipped" and reason in outcome.reason
    record = ws.scene(ref.scene_id)
    assert record.status == "skipped" and reason in record.reason
    assert not ws.scene_path("chongjin", WHEN, ref.scene_id).exists()
    again = fetch_into_workspace(source, ref, port, ws)
    assert again.status == "skipped" and "recorded earlier" in again.reason
    good = ws.scene("GOOD")
    assert good.status == "stored" and good.sha256 == good_sha == sha256_file(good.path)
    assert [r.scene_id for r in ws.list_scenes()] == sorted(["GOOD", ref.scene_id])


def test_a_bad_file_under_a_stored_scene_id_never_replaces_it(stored):
    ws, port, source, good_sha = stored
    outcome = fetch_into_workspace(source, _ref("GOOD", "corrupt.tif"), port, ws)
    assert outcome.status == "exists"
    assert sha256_file(ws.scene("GOOD").path) == good_sha


def test_local_search_reports_bad_files_for_the_catalog(tmp_path):
    """Bad files come back as refs named after the file and carrying the reason, so fetch
    records them as skipped (issue 25, item 7) instead of passing over them in silence."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("chongjin_64.tif", "corrupt.tif", "uint8.tif", "truncated.tif"):
        shutil.copy(DATA / name, folder / name)
    refs = LocalFolderSource(folder).search(get_port("chongjin"), datetime(2024, 1, 1, tzinfo=UTC),
                                            datetime(2024, 12, 31, tzinfo=UTC))
    assert [r.scene_id for r in refs] == ["FIXTURE_CHONGJIN", "file:corrupt.tif",
                                          "file:truncated.tif", "file:uint8.tif"]
    assert all(r.extra["unusable"] for r in refs[1:]) and "unusable" not in refs[0].extra


# --- the real scenes -------------------------------------------------------------------------

FULL, PARTIAL = _shared_scenes("sen2ships"), _shared_scenes("sen2ships-partial")


def _check_real(info, bands):
    assert info.crs.to_epsg() == 3857 and 5.0 < info.pixel_size_m <= 10.0
    assert info.acquisition_time is not None and info.reflectance_scale == 10000
    window = Window(info.width // 2 - 32, info.height // 2 - 32, 64, 64)
    reflectance = read_reflectance(info, bands, window=window)
    assert np.isfinite(reflectance).all() and 0 <= reflectance.min() < reflectance.max() < 2


@pytest.mark.parametrize("path", FULL or [None],
                         ids=[p.parent.name for p in FULL] or ["absent"])
def test_loading_every_scene_in_sen2ships(path):
    if path is None:
        pytest.skip("../shared/data/sen2ships not found: shared data is absent in this checkout")
    info = open_scene(path)
    assert info.bands == SCENE_BANDS and info.source != "simulated"
    _check_real(info, SCENE_BANDS)


@pytest.mark.parametrize("path", PARTIAL or [None],
                         ids=[p.parent.name for p in PARTIAL] or ["absent"])
def test_loading_the_partial_scenes_with_require_bands_none(path):
    if path is None:
        pytest.skip("../shared/data/sen2ships-partial not found: shared data is absent in this "
                    "checkout")
    info = open_scene(path, require_bands=None)
    assert set(info.bands) < set(SCENE_BANDS)
    _check_real(info, info.bands)
    with pytest.raises(SceneError, match="missing bands"):
        open_scene(path)


# --- no-data pixels (issue 25, item 3) -------------------------------------------------------


def write_blank_port_scene(path: Path, port_name: str = "chongjin", nodata: float | None = None,
                           fill: int = 0, scene_id: str = "BLANK") -> Path:
    """A scene over every berth zone of a port whose pixels are all `fill` (0: the no-data of a
    scene without SCL), optionally declaring a GeoTIFF nodata value."""
    port = get_port(port_name)
    left, bottom, right, top = port.to_utm(port.aoi).bounds
    width, height = int((right - left) // 10), int((top - bottom) // 10)
    data = np.full((5, height, width), fill, dtype=np.uint16)
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = dict(driver="GTiff", width=width, height=height, count=5, dtype="uint16",
                   crs=f"EPSG:{port.epsg}", transform=Affine(10, 0, left, 0, -10, top),
                   compress="deflate", tiled=True, nodata=nodata)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        dst.update_tags(REFLECTANCE_SCALE="10000", ACQUISITION_TIME="2024-03-05T01:47:00Z",
                        SCENE_ID=scene_id, PORT=port_name, SOURCE="local")
        for i, name in enumerate(SCENE_BANDS, start=1):
            dst.set_band_description(i, name)
    return path


def test_no_data_pixels_are_not_valid(tmp_path):
    data = np.full((5, 8, 10), 500, dtype=np.uint16)
    data[:, :, :4] = 0  # no data: zero in every band
    data[2, 5, 7] = 0  # one band at zero is still a pixel that holds data
    info = open_scene(_write(tmp_path / "half.tif", data, tags={"SCENE_ID": "HALF"}))
    valid = read_valid(info, Window(-2, 0, 14, 8))  # two columns past each edge
    assert not valid[:, :6].any() and valid[:, 6:12].all() and not valid[:, 12:].any()


def test_the_declared_nodata_value_is_not_valid(tmp_path):
    path = write_blank_port_scene(tmp_path / "nodata.tif", nodata=7, fill=7)
    assert not read_valid(open_scene(path)).any()


@pytest.mark.parametrize("nodata, fill", [(None, 0), (7, 7)])
def test_detect_reports_an_empty_scene_as_not_visible(tmp_path, nodata, fill):
    path = write_blank_port_scene(tmp_path / "blank.tif", nodata=nodata, fill=fill)
    collection = detect_scene(path, port="chongjin", threads=1, progress=False)
    zones = collection["properties"]["zones"]
    assert zones and all(z["visible_fraction"] == 0.0 for z in zones.values()), zones


def test_run_stores_no_zone_count_from_a_no_data_scene(tmp_path):
    write_blank_port_scene(tmp_path / "in" / "blank.tif")
    ws = tmp_path / "ws"
    assert main(["run", "--port", "chongjin", "--source", "local", "--from",
                 str(tmp_path / "in"), "--since", "2024-03-01", "--until", "2024-03-10",
                 "--workspace", str(ws)]) == 0
    conn = sqlite3.connect(ws / "berthwatch.sqlite")
    rows = conn.execute("SELECT zone, visible_fraction, detected, status FROM zone_counts "
                        "WHERE scene_id = 'BLANK'").fetchall()
    conn.close()
    assert len(rows) == 3 and all(r[1] == 0.0 and r[2] is None for r in rows), rows


# --- damaged bodies and oversized headers (issue 25, item 8) ---------------------------------


def write_corrupt_middle(path: Path) -> Path:
    """A valid tiled scene whose header and first tiles read, with garbage in the middle."""
    rng = np.random.default_rng(8)
    data = rng.integers(100, 3000, (5, 512, 512), dtype=np.uint16)
    write_scene(path, data, SCENE_BANDS, "EPSG:32652", UTM, scene_id="MIDDLE", port=None,
                source="test", acquisition_time=WHEN)
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.seek(size // 2)
        fh.write(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return path


def write_huge_header(path: Path, side: int = 200_000, port: str = "") -> Path:
    """A tiled GeoTIFF declaring side x side pixels; sparse, so no pixel is written."""
    profile = dict(driver="GTiff", width=side, height=side, count=5, dtype="uint16",
                   crs="EPSG:32652", transform=UTM, tiled=True, blockxsize=1024,
                   blockysize=1024, compress="deflate", sparse_ok=True)
    with rasterio.open(path, "w", **profile) as dst:
        dst.update_tags(REFLECTANCE_SCALE="10000", ACQUISITION_TIME="2024-03-01T01:47:00Z",
                        SCENE_ID="HUGE", PORT=port, SOURCE="local")
        for i, name in enumerate(SCENE_BANDS, start=1):
            dst.set_band_description(i, name)
    return path


def test_a_damaged_body_is_a_scene_error_naming_the_file(tmp_path):
    path = write_corrupt_middle(tmp_path / "middle.tif")
    info = open_scene(path)  # header, first block and last pixel are intact
    with pytest.raises(SceneError, match=r"middle\.tif: corrupt pixel data \(.*IReadBlock"):
        check_reflectance_scale(info)
    with pytest.raises(SceneError, match=r"middle\.tif: cannot read pixels"):
        read_reflectance(info)
    with pytest.raises(SceneError, match=r"middle\.tif: cannot read pixels"):
        read_valid(info)


def test_a_scene_over_the_size_limit_is_refused_before_reading(tmp_path, monkeypatch):
    path = write_huge_header(tmp_path / "huge.tif")
    assert path.stat().st_size < 2_000_000
    with pytest.raises(SceneError, match=r"huge\.tif: 200000 x 200000 pixels .* over the limit "
                                         r"of 400 MP"):
        open_scene(path)
    assert MAX_SCENE_PIXELS >= 3 * 10980 * 10980  # a full Sentinel-2 tile passes with room
    monkeypatch.setenv("BERTHWATCH_MAX_SCENE_PIXELS", str(64 * 64 - 1))
    with pytest.raises(SceneError, match="64 x 64 pixels"):
        open_scene(DATA / "chongjin_64.tif")


def test_fetch_records_an_oversized_scene_as_skipped(stored, tmp_path):
    ws, port, source, good_sha = stored
    huge = write_huge_header(tmp_path / "huge.tif", port="chongjin")
    ref = SceneRef("HUGE", "chongjin", WHEN, "local", extra={"path": str(huge)})
    outcome = fetch_into_workspace(source, ref, port, ws)
    assert outcome.status == "skipped" and "over the limit of 400 MP" in outcome.reason
    assert ws.scene("HUGE").status == "skipped"
    assert sha256_file(ws.scene("GOOD").path) == good_sha
