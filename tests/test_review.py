"""The review app through FastAPI's test client, and the chips export through the training
loader. The workspace is built by tests/review_workspace.py (three tiny scenes, AIS from a
MarineCadastre CSV with a vessel named `<script>alert(1)</script>`)."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import html
import io
import json
import sqlite3
import warnings
import zipfile
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
import review_workspace as rw
from PIL import Image

from imagery.render import SIMULATED_BAND_PX, SIMULATED_COLOUR
from imagery.review import BindError, check_bind, create_app
from imagery.review import db as review_db
from imagery.review.media import CAPTION_PX
from imagery.workspace import Workspace

with warnings.catch_warnings():
    # This starlette release asks for `httpx2`; the test client works the same with httpx.
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"
LOCAL = "http://127.0.0.1"


@pytest.fixture
def demo(tmp_path) -> rw.Demo:
    return rw.build(tmp_path / "ws")


@pytest.fixture
def client(demo):
    with TestClient(create_app(demo.ws.root), base_url=LOCAL) as c:
        c.get("/")  # sets the CSRF cookie, as a browser's first visit does
        yield c


def url(alert_id: str, suffix: str = "") -> str:
    return f"/alerts/{quote(alert_id, safe='')}{suffix}"


def post(client, alert_id: str, what: str, data: dict, csrf: bool = True, **kw):
    form = dict(data)
    if csrf:
        form["csrf"] = client.cookies.get("bw_csrf")
    return client.post(url(alert_id, f"/{what}"), data=form, follow_redirects=False, **kw)


def verdict(client, alert_id: str, choice: str, note: str = "", analyst: str = "ana"):
    return post(client, alert_id, "verdict", {"verdict": choice, "note": note,
                                              "analyst": analyst})


def png(response) -> Image.Image:
    assert response.status_code == 200, response.text[:200]
    assert response.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(response.content))
    image.load()
    return image


def assert_marked_simulated(image: Image.Image, scene_id: str) -> None:
    """The PNG says SIMULATED in its text chunks and in an amber band along its bottom."""
    assert image.text["berthwatch:simulated"] == "true"
    assert image.text["berthwatch:scene_id"] == scene_id
    rgb = image.convert("RGB")
    band = [rgb.getpixel((x, y)) for x in range(0, image.width, 7)
            for y in range(image.height - SIMULATED_BAND_PX, image.height)]
    amber = sum(p == SIMULATED_COLOUR for p in band) / len(band)
    assert amber > 0.6, amber  # the rest is the black lettering
    assert any(p != SIMULATED_COLOUR for p in band)  # the text is there


# --- pages -----------------------------------------------------------------------------------


def test_queue_lists_alerts_newest_first_with_filters(client, demo):
    page = client.get("/")
    assert page.status_code == 200
    ids = [demo.scenes[2] + "#0", demo.alert, demo.false_alert, demo.earlier_alert]
    positions = [page.text.index(quote(i, safe="")) for i in ids]
    assert positions == sorted(positions)  # newest first
    assert "SIMULATED" in page.text and 'src="/timeline/vostochny.png"' in page.text
    assert demo.false_alert not in client.get("/?min_score=0.6").text
    assert quote(demo.alert, safe="") not in client.get("/?port=chongjin").text
    assert client.get("/?min_score=abc").status_code == 200  # a bad filter is ignored
    assert verdict(client, demo.alert, "confirmed").status_code == 303
    confirmed = client.get("/?status=confirmed").text
    assert quote(demo.alert, safe="") in confirmed
    assert quote(demo.false_alert, safe="") not in confirmed
    assert quote(demo.alert, safe="") not in client.get("/?status=open").text


def test_timeline_png_is_generated_once_and_cached(client, demo):
    image = png(client.get("/timeline/vostochny.png"))
    assert image.width > 400
    cached = list((demo.ws.root / "review" / "timeline").glob("vostochny-*.png"))
    assert len(cached) == 1
    mtime = cached[0].stat().st_mtime_ns
    png(client.get("/timeline/vostochny.png"))
    assert cached[0].stat().st_mtime_ns == mtime
    assert client.get("/timeline/chongjin.png").status_code == 404


def test_alert_page_shows_chips_metadata_ais_and_neighbours(client, demo):
    page = client.get(url(demo.alert))
    assert page.status_code == 200
    text = page.text
    for expected in (f'{url(demo.alert)}/chip.png?bands=true',
                     f'{url(demo.alert)}/chip.png?bands=false', demo.scenes[1], rw.MODEL,
                     rw.SHA, "simulated", "5 %", "KOREA STAR", str(rw.STAR_MMSI), "600",
                     "100 m", url(demo.earlier_alert), f"{url(demo.alert)}/neighbour/next.png",
                     f"{url(demo.alert)}/evidence.zip", 'data-col0="16"', "held-moored"):
        assert expected in text, expected
    assert ESCAPED in text and "<script>alert" not in text


# Below each picture: the caption strip (date, scale bar), then the SIMULATED band.
BELOW = CAPTION_PX + SIMULATED_BAND_PX


def test_chip_pngs_are_valid_images(client, demo):
    true = png(client.get(url(demo.alert, "/chip.png?bands=true")))
    false = png(client.get(url(demo.alert, "/chip.png?bands=false")))
    assert true.size == false.size == (384, 384 + BELOW)
    assert true.tobytes() != false.tobytes()
    assert png(client.get(url(demo.alert, "/chip.png"))).size == (384, 384 + BELOW)
    assert client.get(url(demo.alert, "/chip.png?bands=nir")).status_code == 400
    assert png(client.get(url(demo.alert, "/neighbour/previous.png"))).size == (192, 192 + BELOW)
    assert png(client.get(url(demo.alert, "/neighbour/next.png"))).size == (192, 192 + BELOW)
    last = demo.scenes[2] + "#0"
    assert client.get(url(last, "/neighbour/next.png")).status_code == 404
    assert client.get(url(demo.alert, "/neighbour/sideways.png")).status_code == 404


def test_alert_page_shows_when_where_why_before_the_form(client, demo):
    text = client.get(url(demo.alert)).text
    form, table = text.index('id="verdict-form"'), text.index('class="vessels"')
    facts = {"fact-time": "2024-03-06T01:50:00Z", "fact-port": "vostochny",
             "fact-berth": "oil-terminal", "fact-score": "0.91", "fact-length": "100 m",
             "fact-ais": "the nearest " + ESCAPED + " at 330 m: paired with another detection",
             "fact-reasons": "unmatched berthed detection"}
    for key, value in facts.items():
        start = text.index(f'id="{key}"')
        assert value in text[start:start + 300], key
        assert start < form and start < table, key
    for image in ('id="chip-true"', 'id="chip-clean"', f'src="{url(demo.alert)}/overview.png"'):
        assert text.index(image) < form, image


def test_clean_chip_and_overview_are_pngs(client, demo):
    marked = png(client.get(url(demo.alert, "/chip.png")))
    clean = png(client.get(url(demo.alert, "/clean.png")))
    assert clean.size == marked.size
    ring = (192 + 18, 192)  # on the red ring around the alert's vessel, in the chip's centre
    assert marked.convert("RGB").getpixel(ring) == (255, 40, 40)
    assert clean.convert("RGB").getpixel(ring) != (255, 40, 40)
    overview = png(client.get(url(demo.alert, "/overview.png")))
    assert overview.size == (640, 640 + BELOW)  # the 128 px scene, x5
    pixels = np.asarray(overview.convert("RGB")).reshape(-1, 3)
    colours = {tuple(int(v) for v in p) for p in np.unique(pixels, axis=0)}
    assert {(255, 230, 0), (255, 40, 40), (0, 255, 255)} <= colours  # berth, alert, AIS
    for image in (marked, clean, overview):
        assert_marked_simulated(image, demo.scenes[1])
    assert client.get(url("nope#1", "/overview.png")).status_code == 404


def test_pictures_of_observed_scenes_carry_no_simulated_band(tmp_path):
    demo = rw.build(tmp_path / "ws", simulated=False)
    with TestClient(create_app(demo.ws.root), base_url=LOCAL) as c:
        assert "SIMULATED" not in c.get(url(demo.alert)).text
        for suffix, scene in (("/chip.png", 1), ("/clean.png", 1), ("/overview.png", 1),
                              ("/neighbour/next.png", 2)):
            image = png(c.get(url(demo.alert, suffix)))
            assert image.text == {"berthwatch:scene_id": demo.scenes[scene],
                                  "berthwatch:simulated": "false"}
            assert image.height in (384 + CAPTION_PX, 640 + CAPTION_PX, 192 + CAPTION_PX)


def test_external_strings_are_escaped_everywhere(client, demo):
    evil = rw.EVIL
    assert verdict(client, demo.alert, "unsure", note=evil, analyst=evil).status_code == 303
    assert post(client, demo.alert, "vessels", {"op": "chip", "mode": "add", "px_x": "20.5",
                                                "px_y": "20.5", "note": evil,
                                                "analyst": evil}).status_code == 303
    for path in ("/", url(demo.alert), url(demo.alert, "?msg=" + quote(evil)), "/?port=" + evil):
        text = client.get(path).text
        assert "<script>alert" not in text, path
    page = client.get(url(demo.alert)).text
    assert page.count(ESCAPED) >= 4  # AIS name, reason, audit analyst and note
    assert client.get(url(evil)).headers["content-type"].startswith("text/plain")


def test_security_headers(client, demo):
    for path in ("/", url(demo.alert), url(demo.alert, "/chip.png"), "/static/review.js"):
        headers = client.get(path).headers
        assert "default-src 'self'" in headers["content-security-policy"]
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        assert headers["x-content-type-options"] == "nosniff"
    assert "script" not in client.get("/").text.split("</head>")[1]  # no inline script


def test_static_assets_are_local(client):
    page = client.get("/").text
    assert "http://" not in page and "https://" not in page
    assert client.get("/static/review.css").status_code == 200
    assert "addEventListener" in client.get("/static/review.js").text


# --- verdicts and edits ------------------------------------------------------------------------


def test_verdict_post_needs_csrf_token(client, demo):
    data = {"verdict": "confirmed", "analyst": "ana"}
    assert post(client, demo.alert, "verdict", data, csrf=False).status_code == 403
    assert post(client, demo.alert, "verdict", dict(data, csrf="x" * 43),
                csrf=False).status_code == 403
    cross = post(client, demo.alert, "verdict", data, headers={"Origin": "http://evil.example"})
    assert cross.status_code == 403
    assert review_db.history(demo.ws, alert_id=demo.alert) == []
    ok = post(client, demo.alert, "verdict", data, headers={"Origin": LOCAL})
    assert ok.status_code == 303 and ok.headers["location"].startswith(url(demo.alert))
    assert "ana" in client.cookies.get("bw_analyst")
    page = client.get(ok.headers["location"]).text
    assert 'id="status">confirmed' in page and 'value="ana"' in page
    assert "recorded: confirmed" in page
    crafted = client.get(url(demo.alert, "?msg=" + quote("call +1 555 0100 now"))).text
    assert "call +1 555" not in crafted  # only the app's own confirmations are shown


def test_bad_verdicts_are_refused(client, demo):
    assert verdict(client, demo.alert, "maybe").status_code == 400
    assert verdict(client, demo.alert, "confirmed", analyst="  ").status_code == 400
    assert post(client, "nope#1", "verdict", {"verdict": "confirmed",
                                              "analyst": "a"}).status_code == 404


def test_audit_trail_keeps_every_verdict(client, demo):
    verdict(client, demo.alert, "confirmed", note="tanker, hull matches", analyst="ana")
    verdict(client, demo.alert, "rejected", note="on second look: a barge", analyst="bo")
    rows = review_db.history(demo.ws, alert_id=demo.alert)
    assert [(r["verdict"], r["analyst"]) for r in rows] == [("confirmed", "ana"),
                                                           ("rejected", "bo")]
    assert review_db.get_alert(demo.ws, demo.alert)["status"] == "rejected"
    page = client.get(url(demo.alert)).text
    assert "tanker, hull matches" in page and "on second look: a barge" in page
    conn = demo.ws.connect()
    try:
        for sql in ("UPDATE reviews SET verdict = 'confirmed'", "DELETE FROM reviews"):
            with pytest.raises(sqlite3.DatabaseError, match="append only"):
                conn.execute(sql)
    finally:
        conn.close()


def test_add_move_and_delete_vessels(client, demo):
    edit = {"analyst": "ana", "op": "chip"}
    assert post(client, demo.alert, "vessels", dict(edit, mode="add", px_x="20.5", px_y="20.5",
                                                    length_m="60")).status_code == 303
    assert post(client, demo.alert, "vessels", dict(edit, mode="move:d0", px_x="66.0",
                                                    px_y="64.0")).status_code == 303
    assert post(client, demo.alert, "vessels", {"analyst": "ana",
                                                "op": "delete:d2"}).status_code == 303
    vessels = {v.ref: v for v in review_db.scene_vessels(demo.ws, demo.scenes[1])}
    added = next(v for v in vessels.values() if v.origin == "added")
    lon, lat = rw.lonlat(demo.transform, 20.5, 20.5)
    assert (added.px_x, added.px_y, added.length_m) == (20.5, 20.5, 60.0)
    assert added.lon == pytest.approx(lon, abs=1e-6) and added.lat == pytest.approx(lat, abs=1e-6)
    assert (vessels["d0"].state, vessels["d0"].px_x) == ("moved", 66.0)
    assert vessels["d2"].state == "deleted" and vessels["d1"].state == "kept"
    # the moved position was not overwritten: the original detection row is intact
    conn = demo.ws.connect()
    assert conn.execute("SELECT px_x FROM detections WHERE scene_id = ? AND det_id = 0",
                        (demo.scenes[1],)).fetchone()[0] == 64.5
    conn.close()
    actions = [r["action"] for r in review_db.history(demo.ws, scene_id=demo.scenes[1])]
    assert actions == ["add", "move", "delete"]
    png(client.get(url(demo.alert, "/chip.png")))
    assert post(client, demo.alert, "vessels", dict(edit, mode=f"move:{added.ref}", px_x="22",
                                                    px_y="21")).status_code == 303
    assert post(client, demo.alert, "vessels", {"analyst": "ana", "op": "delete:d2"}
                ).status_code == 400  # already deleted
    for bad in (dict(edit, mode="add", px_x="500", px_y="3"), dict(edit, mode="move:d9",
                px_x="3", px_y="3"), dict(edit, mode="add", px_x="x", px_y="1"),
                dict(edit, mode="explode", px_x="3", px_y="3")):
        assert post(client, demo.alert, "vessels", bad).status_code == 400, bad
    assert post(client, demo.alert, "vessels", dict(edit, mode="add", px_x="3", px_y="3"),
                csrf=False).status_code == 403


# --- evidence and exports ---------------------------------------------------------------------


def test_evidence_zip_manifest_hashes_match(client, demo):
    verdict(client, demo.alert, "confirmed", note="dark tanker")
    response = client.get(url(demo.alert, "/evidence.zip"))
    assert response.status_code == 200 and response.headers["content-type"] == "application/zip"
    bundle = zipfile.ZipFile(io.BytesIO(response.content))
    manifest = json.loads(bundle.read("manifest.json"))
    assert set(manifest["files"]) == {"chip_true.png", "chip_true_clean.png", "chip_false.png",
                                      "detections.geojson", "ais_positions.csv", "reviews.json"}
    for name, digest in manifest["files"].items():
        assert hashlib.sha256(bundle.read(name)).hexdigest() == digest, name
    assert manifest["scene_id"] == demo.scenes[1]
    assert manifest["acquisition_time"] == "2024-03-06T01:50:00Z"
    assert manifest["model"] == rw.MODEL and manifest["weights_sha256"] == rw.SHA
    assert manifest["reasons"][0] == "unmatched berthed detection"
    assert manifest["export_time"].endswith("Z") and manifest["status"] == "confirmed"
    for name in ("chip_true.png", "chip_true_clean.png", "chip_false.png"):
        image = Image.open(io.BytesIO(bundle.read(name)))
        assert image.size == (384, 384 + BELOW)
        assert_marked_simulated(image, demo.scenes[1])
    detections = json.loads(bundle.read("detections.geojson"))
    assert detections["type"] == "FeatureCollection" and len(detections["features"]) == 3
    rows = list(csv.DictReader(io.StringIO(bundle.read("ais_positions.csv").decode())))
    assert {int(r["mmsi"]) for r in rows} == {rw.EVIL_MMSI, rw.STAR_MMSI}
    assert rw.EVIL in {r["name"] for r in rows}  # CSV carries the data verbatim
    assert json.loads(bundle.read("reviews.json"))[0]["note"] == "dark tanker"


def test_confirmed_export_csv_and_geojson(client, demo):
    verdict(client, demo.alert, "confirmed", note="=HYPERLINK(\"x\")")
    verdict(client, demo.false_alert, "rejected")
    verdict(client, demo.earlier_alert, "confirmed")
    verdict(client, demo.earlier_alert, "unsure")
    post(client, demo.alert, "vessels", {"analyst": "ana", "op": "chip", "mode": "move:d0",
                                         "px_x": "70", "px_y": "64.5"})
    response = client.get("/export/confirmed.csv")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [r["alert_id"] for r in rows] == [demo.alert]
    assert rows[0]["analyst"] == "ana" and rows[0]["note"].startswith("'=")  # no formula
    moved_lon, _ = rw.lonlat(demo.transform, 70, 64.5)
    assert float(rows[0]["lon"]) == pytest.approx(moved_lon, abs=1e-6)
    doc = client.get("/export/confirmed.geojson").json()
    assert doc["type"] == "FeatureCollection" and len(doc["features"]) == 1
    feature = doc["features"][0]
    assert feature["geometry"]["type"] == "Point"
    assert feature["properties"]["alert_id"] == demo.alert


# --- scene ids with spaces and slashes, moved workspaces -----------------------------------


def test_alerts_of_scene_ids_with_space_and_slash_open(tmp_path):
    demo = rw.build(tmp_path / "ws", prefix="S2 TEST/vostochny ")
    assert " " in demo.alert and "/" in demo.alert
    with TestClient(create_app(demo.ws.root), base_url=LOCAL) as c:
        queue = c.get("/").text
        assert f'href="{url(demo.alert)}"' in queue  # quoted: %20 and %2F
        page = c.get(url(demo.alert))
        assert page.status_code == 200, page.text[:200]
        assert f"{url(demo.earlier_alert)}" in page.text  # the neighbour link
        png(c.get(url(demo.alert, "/chip.png?bands=false")))
        png(c.get(url(demo.alert, "/neighbour/previous.png")))
        assert c.get(url(demo.alert, "/evidence.zip")).status_code == 200
        done = verdict(c, demo.alert, "confirmed")
        assert done.status_code == 303 and c.get(done.headers["location"]).status_code == 200
        assert review_db.get_alert(demo.ws, demo.alert)["status"] == "confirmed"
        assert c.get(url(demo.alert, "/verdict")).status_code == 404  # not a page


def test_moved_workspace_with_relative_scene_paths_still_serves(tmp_path):
    import shutil

    demo = rw.build(tmp_path / "ws")
    conn = demo.ws.connect()
    for sid in demo.scenes:  # as workspaces store them now: relative to the root
        path = Path(demo.ws.scene(sid).path).relative_to(demo.ws.root)
        conn.execute("UPDATE scenes SET path = ? WHERE scene_id = ?", (str(path), sid))
    conn.commit()
    conn.close()
    moved = shutil.copytree(demo.ws.root, tmp_path / "elsewhere" / "ws")
    shutil.rmtree(demo.ws.root)
    with TestClient(create_app(moved), base_url=LOCAL) as c:
        assert c.get(url(demo.alert)).status_code == 200
        png(c.get(url(demo.alert, "/chip.png")))


# --- path traversal, auth ---------------------------------------------------------------------

TRAVERSALS = (
    "/alerts/..%2f..%2fberthwatch.sqlite",
    "/alerts/%2e%2e%2f%2e%2e%2fberthwatch.sqlite/chip.png",
    "/alerts/..%2Fberthwatch.sqlite%231/evidence.zip",
    "/alerts/%2Fetc%2Fpasswd",
    "/alerts/%2Fetc%2Fpasswd%231/chip.png",
    "/static/..%2fberthwatch.sqlite",
    "/static/%2e%2e%2f%2e%2e%2fberthwatch.sqlite",
    "/static/%2e%2e/%2e%2e/berthwatch.sqlite",
    "/static/%2Fetc%2Fpasswd",
    "/static//etc/passwd",
    "/timeline/..%2f..%2fberthwatch.sqlite.png",
    "/timeline/%2e%2e.png",
    "/timeline/%2Fetc%2Fpasswd.png",
    "/berthwatch.sqlite",
)


def _refused(status: int, body: bytes) -> bool:
    return status in (400, 404, 405) and b"SQLite format" not in body and b"root:" not in body


def test_path_traversal_is_refused(client, demo):
    for path in TRAVERSALS:
        response = client.get(path)
        assert _refused(response.status_code, response.content), path
    for path in ("/static/../berthwatch.sqlite", "/static/../../../../etc/passwd",
                 "/timeline/../../berthwatch.sqlite"):  # unnormalised, as a raw client sends
        status, body = asyncio.run(_raw_get(client.app, path))
        assert _refused(status, body), path


def test_scene_file_outside_the_workspace_is_not_served(client, demo, tmp_path):
    outside = tmp_path / "elsewhere.tif"
    outside.write_bytes(Path(demo.ws.scene(demo.scenes[1]).path).read_bytes())
    conn = demo.ws.connect()
    conn.execute("UPDATE scenes SET path = ? WHERE scene_id = ?", (str(outside), demo.scenes[1]))
    conn.close()
    assert client.get(url(demo.alert, "/chip.png")).status_code == 404
    assert client.get(url(demo.alert)).status_code == 404


async def _raw_get(app, path: str) -> tuple[int, bytes]:
    """One request straight through ASGI with the path exactly as given (test clients
    normalise `../` away before sending)."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "GET", "scheme": "http", "path": path, "raw_path": path.encode(),
             "root_path": "", "query_string": b"", "headers": [(b"host", b"127.0.0.1")],
             "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 80)}
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    await app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def test_non_loopback_host_header_is_refused_without_token(demo):
    with TestClient(create_app(demo.ws.root), base_url="http://rebound.example") as c:
        assert c.get("/").status_code == 400
    with TestClient(create_app(demo.ws.root), base_url="http://localhost:8000") as c:
        assert c.get("/").status_code == 200


def test_bind_beyond_loopback_needs_a_token(tmp_path, monkeypatch):
    from imagery import cli

    check_bind("127.0.0.1", None)
    check_bind("::1", None)
    check_bind("localhost", None)
    for host in ("0.0.0.0", "192.168.1.5", "::"):
        with pytest.raises(BindError, match="--token"):
            check_bind(host, None)
    check_bind("0.0.0.0", "s3cret-token-0123456789")
    with pytest.raises(BindError, match="too short"):
        check_bind("0.0.0.0", "short")
    monkeypatch.delenv("BERTHWATCH_REVIEW_TOKEN", raising=False)
    started = []
    monkeypatch.setattr("uvicorn.run", lambda *a, **k: started.append(a))
    Workspace.open(tmp_path)  # `review` refuses a folder without a workspace
    assert cli.main(["review", "--host", "0.0.0.0", "--workspace", str(tmp_path)]) == 2
    assert started == []
    monkeypatch.setenv("BERTHWATCH_REVIEW_TOKEN", "s3cret-token-0123456789")
    assert cli.main(["review", "--host", "0.0.0.0", "--workspace", str(tmp_path)]) == 0
    assert len(started) == 1


def test_token_auth(demo):
    token = "s3cret-token-0123456789"
    app = create_app(demo.ws.root, token=token)
    with TestClient(app, base_url="http://review.example:8000") as c:
        assert c.get("/").status_code == 401
        assert c.get("/?token=wrong-token-0123456789").status_code == 401
        assert c.get("/", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert c.get("/", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        assert "bw_session" not in c.cookies  # a header is not a login
        login = c.get(f"/?token={token}&port=vostochny", follow_redirects=False)
        assert login.status_code == 303 and login.headers["location"] == "/?port=vostochny"
        assert token not in c.cookies.get("bw_session")
        assert c.get("/").status_code == 200
        assert c.get(url(demo.alert, "/chip.png")).status_code == 200
        c.cookies.set("bw_session", "forged")
        assert c.get("/").status_code == 401


@pytest.mark.parametrize("weak, why", [(" " * 16, "whitespace"), ("\t" * 20, "whitespace"),
                                       ("a" * 16, "guessable"), ("ab" * 12, "guessable"),
                                       ("0123456789abcdef", "guessable"),
                                       ("password12345678", "guessable"),
                                       ("s3cret token with spaces", "whitespace"),
                                       ("short", "too short")])
def test_weak_tokens_are_refused(demo, weak, why):
    with pytest.raises(BindError, match=why):
        check_bind("0.0.0.0", weak)
    with pytest.raises(BindError, match=why):
        create_app(demo.ws.root, token=weak)


def test_strong_tokens_pass_the_entropy_estimate():
    import secrets

    from imagery.review.security import MIN_TOKEN_BITS, token_bits

    for _ in range(200):
        check_bind("0.0.0.0", secrets.token_urlsafe())
        check_bind("0.0.0.0", secrets.token_hex(16))
    assert token_bits("a" * 64) < 5 and token_bits("aX" * 20) < MIN_TOKEN_BITS
    assert token_bits("s3cret-token-0123456789") >= MIN_TOKEN_BITS


async def _raw_post(app, path: str, headers: dict[str, str], chunks: list[bytes]
                    ) -> tuple[int, bytes, int]:
    """One POST straight through ASGI, its body given in chunks; returns the status, the
    body and how many chunks the app asked for."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(),
             "root_path": "", "query_string": b"",
             "headers": [(b"host", b"127.0.0.1")] + [(k.lower().encode(), v.encode())
                                                    for k, v in headers.items()],
             "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 80)}
    served, sent = 0, []

    async def receive():
        nonlocal served
        if served >= len(chunks):
            return {"type": "http.disconnect"}
        served += 1
        return {"type": "http.request", "body": chunks[served - 1],
                "more_body": served < len(chunks)}

    async def send(message):
        sent.append(message)

    await app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, body, served


MIB = b"x" * (1024 * 1024)


def test_oversized_bodies_are_refused_before_they_are_read(client, demo, tmp_path,
                                                           monkeypatch):
    import tempfile

    spool = tmp_path / "spool"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))
    csrf = client.cookies.get("bw_csrf")
    form = {"content-type": "multipart/form-data; boundary=b", "cookie": f"bw_csrf={csrf}"}
    path = url(demo.alert, "/verdict")
    # 300 MB announced: refused from the header, not one byte read.
    status, body, served = asyncio.run(_raw_post(client.app, path, dict(
        form, **{"content-length": str(300 * 1024 * 1024)}), [MIB] * 300))
    assert (status, served) == (413, 0) and b"64 KiB" in body
    # Chunked (no length): refused as soon as the limit is passed.
    status, _, served = asyncio.run(_raw_post(client.app, path, form, [MIB] * 300))
    assert status == 413 and served == 1
    # A well-formed multipart note streaming in 16 KiB chunks: the fifth passes 64 KiB.
    part = b'--b\r\nContent-Disposition: form-data; name="note"\r\n\r\n'
    status, _, served = asyncio.run(_raw_post(client.app, path, form,
                                              [part] + [b"y" * 16 * 1024] * 300))
    assert status == 413 and served == 5
    response = client.post(path, content=iter([MIB] * 3),
                           headers={"content-type": "application/x-www-form-urlencoded"})
    assert response.status_code == 413
    assert list(spool.iterdir()) == [] and review_db.history(demo.ws, alert_id=demo.alert) == []
    assert verdict(client, demo.alert, "confirmed", note="n" * 2000).status_code == 303


def test_csrf_is_checked_before_the_body_is_parsed(client, demo):
    path = url(demo.alert, "/verdict")
    body = [b"verdict=confirmed&analyst=x&csrf=" + b"a" * 43]
    kind = {"content-type": "application/x-www-form-urlencoded", "content-length": "76"}
    status, _, served = asyncio.run(_raw_post(client.app, path, kind, body))  # no cookie
    assert (status, served) == (403, 0)
    csrf = client.cookies.get("bw_csrf")
    status, _, served = asyncio.run(_raw_post(client.app, path, {
        "content-type": "application/json", "cookie": f"bw_csrf={csrf}"}, [b"{}"]))
    assert (status, served) == (415, 0)
    files = post(client, demo.alert, "verdict", {"verdict": "confirmed", "analyst": "a"},
                 files={"upload": ("a.bin", b"z" * 1000)})
    assert files.status_code == 400  # no file parts
    assert review_db.history(demo.ws, alert_id=demo.alert) == []


# --- chips export ----------------------------------------------------------------------------


def _review_for_training(client, demo) -> None:
    verdict(client, demo.alert, "confirmed")
    verdict(client, demo.false_alert, "rejected")
    post(client, demo.alert, "vessels", {"analyst": "ana", "op": "chip", "mode": "add",
                                         "px_x": "20.5", "px_y": "20.5"})


def test_chips_export_writes_scene_and_labels(client, demo, tmp_path):
    from imagery import cli
    from imagery.scene import open_scene
    from training.chips import load_labelled_scene

    _review_for_training(client, demo)
    out = tmp_path / "chips"
    assert cli.main(["chips", "export", "--out", str(out),
                     "--workspace", str(demo.ws.root)]) == 0
    folders = sorted(p.name for p in out.iterdir())
    assert folders == [demo.scenes[1]]  # the only reviewed scene
    info = open_scene(out / demo.scenes[1] / "scene.tif")
    assert info.scene_id == demo.scenes[1] and info.simulated and info.crs.to_epsg() == rw.EPSG
    # reviewed vessels span rows 20.5-64.5: 48 px of context, clipped at the scene's edges
    assert (info.width, info.height) == (128, 65 + 48)
    doc = json.loads((out / demo.scenes[1] / "labels.geojson").read_text())
    assert doc["type"] == "FeatureCollection"
    ships = [f for f in doc["features"] if not f["properties"].get("negative")]
    negatives = [f for f in doc["features"] if f["properties"].get("negative")]
    assert sorted(f["properties"]["verdict"] for f in ships) == ["added", "ais-matched",
                                                                "confirmed"]
    assert [f["properties"]["verdict"] for f in negatives] == ["rejected"]
    for f in ships:
        ring = f["geometry"]["coordinates"][0]
        assert f["geometry"]["type"] == "Polygon" and ring[0] == ring[-1] and len(ring) == 5
        x, y, w, h = f["properties"]["bbox_px"]
        assert 0 <= x <= 128 and 0 <= y <= 128 and w > 0 and h > 0
        assert f["properties"]["category"] == "ship" and f["properties"]["area_px"] > 0
    confirmed = next(f for f in ships if f["properties"]["verdict"] == "confirmed")
    assert confirmed["properties"]["bbox_px"][2] == pytest.approx(10.0, abs=0.01)  # 100 m E-W
    assert negatives[0]["geometry"]["type"] == "Point"
    scene = load_labelled_scene(out / demo.scenes[1])
    assert len(scene.ships) == 3 and scene.negatives.shape == (1, 2)
    assert scene.negatives[0] == pytest.approx(rw.FALSE_PX, abs=0.01)


def test_chips_export_crops_large_scenes_around_reviewed_vessels(client, demo, tmp_path):
    from imagery.review.export import export_chips

    _review_for_training(client, demo)
    (result,) = export_chips(demo.ws, tmp_path / "chips", margin=8)
    assert not result.skipped and result.negatives == 1
    doc = json.loads((result.folder / "labels.geojson").read_text())
    col0, row0, width, height = doc["properties"]["crop_px"]
    assert (col0, row0, width, height) == (12, 12, 101 + 8 - 12, 65 + 8 - 12)
    assert "ais-matched" not in {f["properties"]["verdict"] for f in doc["features"]}
    confirmed = next(f for f in doc["features"] if f["properties"].get("verdict") == "confirmed")
    x, y, w, h = confirmed["properties"]["bbox_px"]
    assert x + w / 2 == pytest.approx(64.5 - col0, abs=0.01)
    assert y + h / 2 == pytest.approx(64.5 - row0, abs=0.01)


def test_unsure_only_scene_is_not_exported(client, demo, tmp_path):
    from imagery.review.export import export_chips

    verdict(client, demo.earlier_alert, "unsure")
    (result,) = export_chips(demo.ws, tmp_path / "chips")
    assert result.skipped and result.folder is None


def test_tiny_model_trains_on_exported_chips(client, demo, tmp_path):
    """The exported folders go straight into training/train.py beside other labelled data."""
    import torch

    from imagery.review.export import export_chips
    from training.chips import CropConfig
    from training.train import Recipe, train

    _review_for_training(client, demo)
    export_chips(demo.ws, tmp_path / "chips")
    recipe = Recipe(steps=3, mine_steps=0, batch=2, widths=(4, 8, 8, 8), warmup=1,
                    crop=CropConfig(size=64))
    entry = train([tmp_path / "chips"], tmp_path / "weights" / "review-tiny", recipe,
                  threads=1, progress=False)
    assert Path(entry.path).is_file() and len(entry.sha256) == 64
    state = torch.load(entry.path, weights_only=True)
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_queue_lists_scenes_without_ais_coverage(client, demo):
    """Issue 25 item 2: a scene with no AIS coverage raised no alert; the queue says so
    (its id escaped like every external string) instead of looking like a quiet port."""
    assert "Scenes without AIS coverage" not in client.get("/").text
    conn = demo.ws.connect()
    try:
        conn.execute("UPDATE processing SET ais_coverage = 0, ais_fixes = 0 WHERE scene_id = ?",
                     (demo.scenes[0],))
    finally:
        conn.close()
    page = client.get("/").text
    section = page[page.index('id="no-ais-coverage"'):]
    assert "Scenes without AIS coverage" in section
    assert html.escape(demo.scenes[0]) in section.split("</section>")[0]
