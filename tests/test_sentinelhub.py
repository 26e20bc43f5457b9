"""Sentinel Hub source against hand-built HTTP responses (token, catalog, process).

No test reaches the network: requests_mock answers every call, and an unmatched URL fails the
test. Every source is built with max_download_attempts=1 (the 429 test uses 2 with a tiny
sleep), so nothing waits on backoff.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import rasterio
import requests
from rasterio import features as rio_features
from rasterio.io import MemoryFile
from rasterio.warp import transform_geom
from sentinelhub import SentinelHubDownloadClient

from imagery.cli import main
from imagery.config import (
    CDSE_BASE_URL,
    CDSE_TOKEN_URL,
    COMMERCIAL_BASE_URL,
    COMMERCIAL_TOKEN_URL,
    README_SECTION,
    Credentials,
    CredentialsMissing,
    berthwatch_sh_config,
    credentials_from_env,
    endpoint_from_env,
)
from imagery.ports import get_port
from imagery.scene import SCL_OBSCURED, open_scene, read_scl
from imagery.sentinelhub_source import (
    FETCH_BANDS,
    SentinelHubAuthError,
    SentinelHubError,
    SentinelHubSource,
    aoi_grid,
)
from imagery.sources import SceneRef, fetch_into_workspace
from imagery.workspace import Workspace

SECRET = "s3cr3t-Never-Leak-7f4c2e9b"
CLIENT_ID = "sh-test-client"
CATALOG_URL = f"{CDSE_BASE_URL}/api/v1/catalog/1.0.0/search"
PROCESS_URL = f"{CDSE_BASE_URL}/api/v1/process"
TILE_A = "S2A_MSIL2A_20240105T021341_N0510_R060_T52TEL_20240105T045521.SAFE"
TILE_B = "S2A_MSIL2A_20240105T021341_N0510_R060_T52TFL_20240105T045521.SAFE"
ACQUIRED = datetime(2024, 1, 5, 2, 17, 34, tzinfo=UTC)


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _fresh_sentinelhub_sessions():
    # SentinelHubDownloadClient caches OAuth sessions at class level, keyed by client id and
    # base URL: without a reset, one test's token would spare the next its token request.
    SentinelHubDownloadClient.clear_cache()
    yield
    SentinelHubDownloadClient.clear_cache()


@pytest.fixture
def sh_env(monkeypatch):
    monkeypatch.setenv("SH_CLIENT_ID", CLIENT_ID)
    monkeypatch.setenv("SH_CLIENT_SECRET", SECRET)
    monkeypatch.delenv("SH_BASE_URL", raising=False)
    monkeypatch.delenv("SH_TOKEN_URL", raising=False)


@pytest.fixture
def source(sh_env) -> SentinelHubSource:
    return SentinelHubSource.from_env(max_download_attempts=1, download_sleep_time=0.001)


@pytest.fixture
def port():
    return get_port("chongjin")


@pytest.fixture
def token(requests_mock):
    return requests_mock.post(CDSE_TOKEN_URL, json={
        "access_token": "header.eyJhenAiOiJzaC10ZXN0LWNsaWVudCJ9.sig",
        "token_type": "Bearer", "expires_in": 3600,
    })


def _item(scene_id: str, when: datetime, cloud: float) -> dict:
    return {
        "type": "Feature", "stac_version": "1.0.0", "id": scene_id,
        "geometry": {"type": "Polygon", "coordinates": [[[129, 41], [130, 41], [130, 42],
                                                         [129, 42], [129, 41]]]},
        "bbox": [129, 41, 130, 42],
        "properties": {"datetime": when.strftime("%Y-%m-%dT%H:%M:%S.024Z"),
                       "eo:cloud_cover": cloud},
    }


@pytest.fixture
def catalog(requests_mock):
    # The server already dropped the third item of the month (tile cloud 78% > 30%).
    body = {"type": "FeatureCollection",
            "features": [_item(TILE_B, ACQUIRED, 12.5), _item(TILE_A, ACQUIRED, 4.0)],
            "links": [], "context": {"limit": 100, "returned": 2}}
    return requests_mock.post(CATALOG_URL, json=body)


def _scl(height: int, width: int) -> np.ndarray:
    """Water, with a cloud band across the top, a cloud shadow and a strip of land."""
    scl = np.full((height, width), 6, dtype=np.uint16)
    scl[: height // 4] = 9
    scl[height // 2: height // 2 + 20, 10:60] = 3
    scl[:, -width // 5:] = 5
    return scl


def _process_tiff(port, with_georef: bool = True) -> bytes:
    """What the Process API returns: a GeoTIFF of 6 UINT16 bands over the AOI grid."""
    grid = aoi_grid(port)
    rng = np.random.default_rng(7)
    data = rng.integers(200, 3000, (6, grid.height, grid.width), dtype=np.uint16)
    data[5] = _scl(grid.height, grid.width)
    profile = dict(driver="GTiff", width=grid.width, height=grid.height, count=6,
                   dtype="uint16")
    if with_georef:
        profile.update(crs=f"EPSG:{grid.epsg}", transform=grid.transform)
    with MemoryFile() as memfile:
        with memfile.open(**profile) as dst:
            dst.write(data)
        return memfile.read()


def _expected_aoi_cloud(port) -> float:
    grid = aoi_grid(port)
    geom = transform_geom("EPSG:4326", f"EPSG:{grid.epsg}", port.aoi.__geo_interface__)
    inside = rio_features.geometry_mask([geom], (grid.height, grid.width), grid.transform,
                                        invert=True)
    return float(np.isin(_scl(grid.height, grid.width)[inside], SCL_OBSCURED).mean())


def _tiff_response(port) -> dict:
    return {"content": _process_tiff(port), "headers": {"Content-Type": "image/tiff"}}


def _ref(scene_id: str = TILE_A, when: datetime = ACQUIRED, cloud: float = 4.0) -> SceneRef:
    return SceneRef(scene_id, "chongjin", when, "sentinelhub", cloud)


# --- configuration -----------------------------------------------------------------------------


def test_endpoint_defaults_to_cdse_and_environment_wins():
    default = endpoint_from_env({})
    assert (default.base_url, default.token_url) == (CDSE_BASE_URL, CDSE_TOKEN_URL)
    commercial = endpoint_from_env({"SH_BASE_URL": COMMERCIAL_BASE_URL + "/"})
    assert (commercial.base_url, commercial.token_url) == (COMMERCIAL_BASE_URL,
                                                           COMMERCIAL_TOKEN_URL)
    custom = endpoint_from_env({"SH_BASE_URL": "https://x.example", "SH_TOKEN_URL": "https://t"})
    assert (custom.base_url, custom.token_url) == ("https://x.example", "https://t")


def test_config_is_built_without_touching_a_config_file(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    env = {"SH_CLIENT_ID": CLIENT_ID, "SH_CLIENT_SECRET": SECRET}
    config = berthwatch_sh_config(env=env, max_download_attempts=1, download_sleep_time=0.5)
    assert (config.sh_client_id, config.sh_client_secret) == (CLIENT_ID, SECRET)
    assert config.sh_base_url == CDSE_BASE_URL and config.sh_token_url == CDSE_TOKEN_URL
    assert config.max_download_attempts == 1 and config.download_sleep_time == 0.5
    assert config.max_retries == 1
    assert not (tmp_path / "sentinelhub").exists()


def test_credentials_are_masked_in_repr():
    creds = credentials_from_env({"SH_CLIENT_ID": CLIENT_ID, "SH_CLIENT_SECRET": SECRET})
    assert creds == Credentials(CLIENT_ID, SECRET)
    for text in (repr(creds), str(creds)):
        assert "SH_CLIENT_SECRET=****" in text and SECRET not in text


@pytest.mark.parametrize("env, missing", [
    ({}, ("SH_CLIENT_ID", "SH_CLIENT_SECRET")),
    ({"SH_CLIENT_ID": CLIENT_ID, "SH_CLIENT_SECRET": "  "}, ("SH_CLIENT_SECRET",)),
])
def test_missing_credentials_name_the_variables_and_the_readme(env, missing):
    with pytest.raises(CredentialsMissing) as info:
        credentials_from_env(env)
    assert info.value.missing == missing
    for name in missing:
        assert name in str(info.value)
    assert README_SECTION in str(info.value)


def test_cli_search_without_credentials_exits_2_without_traceback(monkeypatch, capsys):
    for name in ("SH_CLIENT_ID", "SH_CLIENT_SECRET", "SH_BASE_URL", "SH_TOKEN_URL"):
        monkeypatch.delenv(name, raising=False)
    code = main(["search", "--port", "chongjin", "--start", "2024-01-01", "--end", "2024-01-31"])
    err = capsys.readouterr().err
    assert code == 2
    assert "SH_CLIENT_ID" in err and README_SECTION in err
    assert "Traceback" not in err


@pytest.mark.parametrize("base_url", [CDSE_BASE_URL, COMMERCIAL_BASE_URL])
def test_the_collection_is_bound_to_the_configured_deployment(monkeypatch, sh_env, base_url):
    monkeypatch.setenv("SH_BASE_URL", base_url)
    first = SentinelHubSource.from_env(max_download_attempts=1)
    second = SentinelHubSource.from_env(max_download_attempts=1)  # defining it twice is fine
    assert first.collection is second.collection
    assert first.collection.service_url == base_url
    assert first.collection.api_id == first.collection.catalog_id == "sentinel-2-l2a"


# --- search ------------------------------------------------------------------------------------


def test_search_posts_filter_bbox_and_time_and_keeps_same_day_tiles(source, port, token,
                                                                    catalog):
    start, end = datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 31, 23, 59, 59, tzinfo=UTC)
    refs = source.search(port, start, end, max_cloud=30)

    body = catalog.last_request.json()
    assert body["collections"] == ["sentinel-2-l2a"]
    assert "eo:cloud_cover <= 30" in body["filter"]
    assert body["datetime"] == "2024-01-01T00:00:00Z/2024-01-31T23:59:59Z"
    assert body["bbox"] == pytest.approx(list(port.aoi.bounds))
    assert catalog.last_request.headers["Authorization"].startswith("Bearer ")
    assert token.call_count == 1

    assert [r.scene_id for r in refs] == [TILE_A, TILE_B]  # same pass, two tiles, two scenes
    assert {r.cloud_cover for r in refs} == {4.0, 12.5}
    assert all(r.acquisition_time == ACQUIRED + timedelta(microseconds=24000) for r in refs)
    assert all(r.source == "sentinelhub" and r.port == "chongjin" for r in refs)


def test_cli_search_lists_the_catalog_items(sh_env, token, catalog, capsys):
    code = main(["search", "--port", "chongjin", "--start", "2024-01-01", "--end", "2024-01-31",
                 "--max-cloud", "30"])
    out = capsys.readouterr().out
    assert code == 0
    assert TILE_A in out and TILE_B in out



@pytest.mark.parametrize("answer, expected", [
    ({"text": "<html>down for maintenance</html>"}, "JSONDecodeError"),
    ({"json": {"type": "FeatureCollection", "features": []}}, "KeyError"),  # no "context"
])
def test_a_catalog_answer_that_is_not_the_api_s_is_one_line(sh_env, token, requests_mock, capsys,
                                                            answer, expected):
    requests_mock.post(CATALOG_URL, **answer)
    code = main(["search", "--port", "chongjin", "--start", "2024-01-01", "--end", "2024-01-31"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "catalog search for chongjin" in err and "unexpected response" in err
    assert expected in err and SECRET not in err


def test_a_catalog_item_with_a_time_outside_utc_is_a_sentinelhub_error(source, port, token,
                                                                       requests_mock):
    item = _item(TILE_A, ACQUIRED, 4.0)
    item["properties"]["datetime"] = "0001-01-01T00:00:00+01:00"
    requests_mock.post(CATALOG_URL, json={"type": "FeatureCollection", "features": [item],
                                          "links": [], "context": {"limit": 100, "returned": 1}})
    with pytest.raises(SentinelHubError, match=f"unexpected catalog item '{TILE_A}'"):
        source.search(port, datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 2, tzinfo=UTC))

# --- fetch -------------------------------------------------------------------------------------


def test_fetch_stores_a_scene_and_records_the_aoi_cloud_fraction(source, port, token,
                                                                  requests_mock, tmp_path):
    process = requests_mock.post(PROCESS_URL, **_tiff_response(port))
    ws = Workspace.open(tmp_path / "ws")
    ref = _ref()

    outcome = fetch_into_workspace(source, ref, port, ws, max_cloud=100)

    assert outcome.status == "stored", outcome.reason
    body = process.last_request.json()
    grid = aoi_grid(port)
    assert body["input"]["bounds"]["properties"]["crs"].endswith(f"EPSG/0/{port.epsg}")
    assert body["input"]["bounds"]["bbox"] == pytest.approx(list(grid.bbox))
    assert (body["output"]["width"], body["output"]["height"]) == (grid.width, grid.height)
    data = body["input"]["data"][0]
    assert data["type"] == "sentinel-2-l2a"
    assert data["dataFilter"]["mosaickingOrder"] == "leastRecent"
    assert data["dataFilter"]["timeRange"] == {"from": "2024-01-05T01:47:34Z",
                                               "to": "2024-01-05T02:47:34Z"}
    assert body["output"]["responses"][0]["format"]["type"] == "image/tiff"
    assert "UINT16" in body["evalscript"] and "SCL" in body["evalscript"]

    info = open_scene(outcome.path)
    assert info.bands == FETCH_BANDS
    assert info.crs.to_epsg() == port.epsg
    assert info.pixel_size_m == pytest.approx(10.0)
    assert (info.width, info.height) == (grid.width, grid.height)
    assert info.scene_id == TILE_A and info.port == "chongjin" and info.source == "sentinelhub"
    assert info.acquisition_time == ACQUIRED and info.reflectance_scale == 10000
    assert info.tags["TILE_CLOUD_COVER"] == "4"
    np.testing.assert_array_equal(read_scl(info), _scl(grid.height, grid.width))

    record = ws.scene(TILE_A)
    expected = _expected_aoi_cloud(port)
    assert record.status == "stored" and record.source == "sentinelhub"
    assert record.cloud_fraction == pytest.approx(expected)
    assert abs(record.cloud_fraction * 100 - ref.cloud_cover) > 5  # not the tile-wide figure

    again = fetch_into_workspace(source, ref, port, ws, max_cloud=100)
    assert again.status == "exists" and again.path == outcome.path
    assert process.call_count == 1  # the second fetch made no Process API call


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_fetch_uses_the_requested_grid_when_the_tiff_has_no_georeferencing(source, port, token,
                                                                          requests_mock,
                                                                          tmp_path):
    requests_mock.post(PROCESS_URL, content=_process_tiff(port, with_georef=False))
    path = source.fetch(_ref(), port, tmp_path / "scene.tif")
    with rasterio.open(path) as src:
        assert src.crs.to_epsg() == port.epsg
        assert src.transform == aoi_grid(port).transform


def test_429_then_success_is_retried(sh_env, port, token, requests_mock, tmp_path):
    source = SentinelHubSource.from_env(max_download_attempts=2, download_sleep_time=0.001)
    process = requests_mock.post(PROCESS_URL, [
        {"status_code": 429, "json": {"error": {"status": 429, "reason": "Too Many Requests"}}},
        _tiff_response(port),
    ])
    ws = Workspace.open(tmp_path / "ws")
    with pytest.warns(Warning, match="rate limit"):
        outcome = fetch_into_workspace(source, _ref(), port, ws, max_cloud=100)
    assert outcome.status == "stored", outcome.reason
    assert process.call_count == 2


def test_persistent_429_gives_up_with_a_clear_error(source, port, token, requests_mock,
                                                    tmp_path):
    requests_mock.post(PROCESS_URL, status_code=429, headers={"Retry-After": "1"})
    with pytest.warns(Warning, match="rate limit"), \
            pytest.raises(SentinelHubError, match="429") as info:
        source.fetch(_ref(), port, tmp_path / "scene.tif")
    assert info.value.status == 429
    assert not (tmp_path / "scene.tif").exists()


def test_500_is_recorded_as_failed_and_the_batch_goes_on(source, port, token, requests_mock,
                                                         tmp_path):
    bad, good = _ref("S2B_BAD", ACQUIRED), _ref("S2B_GOOD", ACQUIRED + timedelta(days=3))

    def asks_for(ref):
        stamp = (ref.acquisition_time - timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
        return lambda request: request.json()["input"]["data"][0]["dataFilter"][
            "timeRange"]["from"] == stamp

    requests_mock.post(PROCESS_URL, status_code=500, additional_matcher=asks_for(bad),
                       json={"error": {"status": 500, "reason": "Internal Server Error",
                                       "message": "renderer crashed"}})
    requests_mock.post(PROCESS_URL, additional_matcher=asks_for(good), **_tiff_response(port))
    ws = Workspace.open(tmp_path / "ws")

    outcomes = [fetch_into_workspace(source, ref, port, ws, max_cloud=100)
                for ref in (bad, good)]

    assert [o.status for o in outcomes] == ["failed", "stored"]
    reason = outcomes[0].reason
    assert "SentinelHubError" in reason and "HTTP 500" in reason and "S2B_BAD" in reason
    assert "Process API" in reason and "renderer crashed" in reason
    assert ws.scene("S2B_BAD").status == "failed"
    assert ws.scene("S2B_GOOD").status == "stored"
    assert not ws.scene_path("chongjin", bad.acquisition_time, bad.scene_id).exists()


def test_500_raises_sentinelhub_error_naming_request_and_status(source, port, token,
                                                                requests_mock, tmp_path):
    requests_mock.post(PROCESS_URL, status_code=500, text="oops")
    with pytest.raises(SentinelHubError) as info:
        source.fetch(_ref(), port, tmp_path / "scene.tif")
    assert info.value.status == 500
    assert f"Process API request for scene {TILE_A}" in str(info.value)
    assert PROCESS_URL in str(info.value)


def test_a_response_without_data_is_skipped_with_a_reason(source, port, token, requests_mock,
                                                          tmp_path):
    grid = aoi_grid(port)
    with MemoryFile() as memfile:
        with memfile.open(driver="GTiff", width=grid.width, height=grid.height, count=6,
                          dtype="uint16", crs=f"EPSG:{grid.epsg}", transform=grid.transform):
            pass  # all zeros: no acquisition in the window
        empty = memfile.read()
    requests_mock.post(PROCESS_URL, content=empty)
    ws = Workspace.open(tmp_path / "ws")
    outcome = fetch_into_workspace(source, _ref(), port, ws, max_cloud=100)
    assert outcome.status == "skipped" and "no data" in outcome.reason



def test_an_empty_process_response_is_a_failure_saying_so(source, port, token, requests_mock,
                                                          tmp_path):
    requests_mock.post(PROCESS_URL, content=b"", headers={"Content-Type": "image/tiff"})
    ws = Workspace.open(tmp_path / "ws")
    outcome = fetch_into_workspace(source, _ref(), port, ws, max_cloud=100)
    assert outcome.status == "failed"
    assert f"Process API request for scene {TILE_A}" in outcome.reason
    assert "response is empty" in outcome.reason
    assert ws.scene(TILE_A).status == "failed"

# --- credentials: refused, and never leaked ----------------------------------------------------


@pytest.mark.parametrize("response", [
    {"status_code": 401, "json": {"error": "invalid_client",
                                  "error_description": "Invalid client credentials"}},
    {"status_code": 401, "text": "Unauthorized"},
])
def test_refused_credentials_give_a_clear_error_without_the_secret(source, port, requests_mock,
                                                                   catalog, response):
    requests_mock.post(CDSE_TOKEN_URL, **response)
    with pytest.raises(SentinelHubAuthError) as info:
        source.search(port, datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 2, tzinfo=UTC))
    message = str(info.value)
    assert "SH_CLIENT_ID" in message and "SH_CLIENT_SECRET" in message
    assert CDSE_TOKEN_URL in message and SECRET not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert catalog.call_count == 0


@pytest.mark.parametrize("response, expected", [
    ({"status_code": 503, "text": "maintenance"}, "HTTP 503 from " + CDSE_TOKEN_URL),
    ({"exc": requests.ConnectionError("no route to host")}, "ConnectionError"),
])
def test_token_service_outage_is_not_blamed_on_credentials(source, port, requests_mock,
                                                           catalog, response, expected):
    requests_mock.post(CDSE_TOKEN_URL, **response)
    with pytest.raises(SentinelHubError) as info:
        source.search(port, datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 2, tzinfo=UTC))
    assert not isinstance(info.value, SentinelHubAuthError)
    assert expected in str(info.value) and "catalog search for chongjin" in str(info.value)


def test_the_secret_never_reaches_logs_output_or_workspace(source, port, token, catalog,
                                                           requests_mock, tmp_path, caplog,
                                                           capsys):
    caplog.set_level(logging.DEBUG)
    requests_mock.post(PROCESS_URL, **_tiff_response(port))
    ws = Workspace.open(tmp_path / "ws")
    print(repr(source), source.config)
    refs = source.search(port, datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 31, tzinfo=UTC))
    outcomes = [fetch_into_workspace(source, ref, port, ws) for ref in refs]
    assert [o.status for o in outcomes] == ["stored", "stored"]
    assert token.call_count == 1 and SECRET in token.last_request.text  # it was sent...

    captured = capsys.readouterr()
    assert caplog.records  # ...and DEBUG logging of the token exchange was on
    assert SECRET not in caplog.text
    assert SECRET not in captured.out + captured.err
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    with ws.connect() as conn:
        rows = conn.execute("SELECT * FROM scenes").fetchall()
    assert SECRET not in json.dumps([list(r) for r in rows], default=str)


# --- the real service --------------------------------------------------------------------------


@pytest.mark.credentials
def test_real_catalog_search(port):
    if not (os.environ.get("SH_CLIENT_ID") and os.environ.get("SH_CLIENT_SECRET")):
        pytest.skip("set SH_CLIENT_ID and SH_CLIENT_SECRET to search the real catalog")
    source = SentinelHubSource.from_env(max_download_attempts=2, download_sleep_time=1.0)
    refs = source.search(port, datetime(2024, 3, 1, tzinfo=UTC),
                         datetime(2024, 3, 31, 23, 59, tzinfo=UTC), max_cloud=100)
    assert refs, "Sentinel-2 images Chongjin every few days; a month without items is wrong"
    assert all(r.acquisition_time.month == 3 and 0 <= r.cloud_cover <= 100 for r in refs)


def test_cli_search_with_refused_credentials_exits_2_without_traceback(sh_env, requests_mock,
                                                                     capsys):
    requests_mock.post(CDSE_TOKEN_URL, status_code=401, json={"error": "invalid_client"})
    code = main(["search", "--port", "chongjin", "--start", "2024-01-01", "--end", "2024-01-31"])
    err = capsys.readouterr().err
    assert code == 2
    assert "SH_CLIENT_ID" in err and "Traceback" not in err and SECRET not in err
