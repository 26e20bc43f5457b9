"""Hostile input to the review app and its pictures (issue 25, items 14, 15, 17), through the
HTTP app (FastAPI's test client, and a real uvicorn server on a loopback port for what a test
client cannot send) and the CLI. Each case asserts the status, that no traceback reaches the
client or the terminal, and that nothing was written: the audit table and the workspace's
files are as they were."""

from __future__ import annotations

import csv
import io
import socket
import threading
import time
import warnings
import zipfile
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import pytest
import review_workspace as rw
from PIL import Image

from imagery import ais
from imagery.render import SIMULATED_BAND_PX, SIMULATED_COLOUR
from imagery.review import create_app
from imagery.review import db as review_db

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # this starlette asks for httpx2; httpx works the same
    from fastapi.testclient import TestClient

LOCAL = "http://127.0.0.1"
STRONG = "Zq7-vLw2_kP9xRt4mNb8sYc3"


def url(alert_id: str, suffix: str = "") -> str:
    return f"/alerts/{quote(alert_id, safe='')}{suffix}"


def files_of(root: Path) -> dict[str, int]:
    """Every file under the workspace with its size (the database's WAL files aside: reads
    touch them)."""
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*")
            if p.is_file() and "berthwatch.sqlite" not in p.name}


def no_traceback(text: str) -> None:
    assert "Traceback" not in text and 'File "' not in text, text[:400]


# --- item 14: scene ids with spaces, slashes and other characters ---------------------------

ODD_PREFIXES = ["S2 TEST vostochny ", "S2TEST/vostochny/", "../S2TEST ", "S2TEST%2F",
                "S2TEST#7 ", "S2TEST?x=1&y ", "港 S2TEST ", "S2TEST\\"]


@pytest.mark.parametrize("prefix", ODD_PREFIXES)
def test_odd_scene_ids_open_and_take_verdicts(tmp_path, prefix):
    """Through a real server: starlette's test client decodes `%25` twice, uvicorn once."""
    import httpx

    demo = rw.build(tmp_path / "ws", prefix=prefix)
    with serving(create_app(demo.ws.root)) as port, httpx.Client(
            base_url=f"http://127.0.0.1:{port}") as c:
        queue = c.get("/")
        assert f'href="{url(demo.alert)}"' in queue.text
        for suffix in ("", "/chip.png", "/clean.png", "/overview.png", "/evidence.zip",
                       "/neighbour/previous.png"):
            response = c.get(url(demo.alert, suffix))
            assert response.status_code == 200, (suffix, response.text[:200])
        done = c.post(url(demo.alert, "/verdict"), data={
            "verdict": "rejected", "analyst": "ana", "csrf": c.cookies.get("bw_csrf")})
        assert done.status_code == 303
        assert c.get(done.headers["location"]).status_code == 200
    assert review_db.get_alert(demo.ws, demo.alert)["status"] == "rejected"


@pytest.fixture
def demo(tmp_path) -> rw.Demo:
    return rw.build(tmp_path / "ws")


@pytest.fixture
def client(demo):
    with TestClient(create_app(demo.ws.root), base_url=LOCAL) as c:
        c.get("/")
        yield c


UNKNOWN_IDS = ["nope#1", "a b/c#2", "../../berthwatch.sqlite#1", "x" * 5000 + "#1", "#1",
               "a\x00b#1", "a\nb#1", "S2TEST_vostochny_20240306#99999999999", "<b>x</b>#1"]


def test_unknown_or_malformed_alert_ids_are_plain_404s(client, demo):
    before = files_of(demo.ws.root)
    for alert_id in UNKNOWN_IDS:
        for suffix in ("", "/chip.png", "/clean.png", "/overview.png", "/evidence.zip"):
            response = client.get(url(alert_id, suffix))
            assert response.status_code == 404, (alert_id[:40], suffix)
            assert response.headers["content-type"].startswith("text/plain")
            no_traceback(response.text)
        response = client.post(url(alert_id, "/verdict"), data={
            "verdict": "confirmed", "analyst": "a", "csrf": client.cookies.get("bw_csrf")})
        assert response.status_code == 404 and "<b>" not in response.text
    assert review_db.history(demo.ws, alert_id=demo.alert) == []
    assert files_of(demo.ws.root) == before


# --- item 15: tokens and bodies ----------------------------------------------------------------

WEAK_TOKENS = [" " * 16, " " * 40, "\t" * 16, "a" * 16, "a" * 64, "ab" * 16, "1234567890123456",
               "abcdefghijklmnop", "password12345678", "passwordpassword", "qwertyuiopasdfgh",
               STRONG[:12], STRONG + " ", "tökentökentökentöken", "token\x00" * 4]


@pytest.mark.parametrize("weak", WEAK_TOKENS)
def test_cli_refuses_a_weak_token_with_one_line(tmp_path, monkeypatch, capsys, weak):
    from imagery import cli

    started = []
    monkeypatch.setattr("uvicorn.run", lambda *a, **k: started.append(a))
    monkeypatch.delenv("BERTHWATCH_REVIEW_TOKEN", raising=False)
    code = cli.main(["review", "--host", "0.0.0.0", "--token", weak,
                     "--workspace", str(tmp_path / "ws")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and started == []
    assert len(err.splitlines()) == 1 and "token" in err, err
    no_traceback(err)
    if "\x00" in weak:
        return  # an environment variable cannot hold a NUL
    monkeypatch.setenv("BERTHWATCH_REVIEW_TOKEN", weak)  # the same from the environment
    assert cli.main(["review", "--host", "0.0.0.0", "--workspace", str(tmp_path / "ws")]) == 2
    assert started == []


def test_cli_accepts_a_strong_token(tmp_path, monkeypatch):
    from imagery import cli
    from imagery.workspace import Workspace

    started = []
    monkeypatch.setattr("uvicorn.run", lambda *a, **k: started.append(a))
    Workspace.open(tmp_path / "ws")  # `review` refuses a folder without a workspace
    assert cli.main(["review", "--host", "0.0.0.0", "--token", STRONG,
                     "--workspace", str(tmp_path / "ws")]) == 0
    assert len(started) == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(app):
    """The app behind a real uvicorn on a free loopback port, for the duration."""
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("uvicorn did not start within 20 s")
        time.sleep(0.05)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def server(demo, tmp_path, monkeypatch):
    """A served app, with Python's temporary files directed to a folder of the test's own
    (where a spooled upload would land), and a CSRF cookie of it."""
    import tempfile

    spool = tmp_path / "spool"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))
    app = create_app(demo.ws.root)
    with TestClient(app, base_url=LOCAL) as c:
        c.get("/")
        csrf = c.cookies.get("bw_csrf")
    with serving(app) as port:
        yield port, csrf, spool


def _raw(port: int, head: str, body_chunks, pause: float = 0.0) -> str:
    """Send a request over a socket, body in chunks, stopping when the server stops reading;
    returns what the server answered."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(head.encode())
        try:
            for chunk in body_chunks:
                s.sendall(chunk)
                time.sleep(pause)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before the body was read: what this test wants
        answer = b""
        try:
            while b"\r\n\r\n" not in answer:
                data = s.recv(65536)
                if not data:
                    break
                answer += data
        except ConnectionResetError:
            pass
    return answer.decode("latin-1")


def test_a_300_mb_multipart_post_is_refused_unread(server, demo):
    port, csrf, spool = server
    before = files_of(demo.ws.root)
    head = (f"POST {url(demo.alert, '/verdict')} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Cookie: bw_csrf={csrf}\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            f"Content-Length: {300 * 1024 * 1024}\r\n\r\n")
    part = b'--b\r\nContent-Disposition: form-data; name="upload"; filename="x"\r\n\r\n'
    answer = _raw(port, head, [part] + [b"z" * 1024 * 1024] * 4)
    assert answer.startswith("HTTP/1.1 413"), answer[:200]
    no_traceback(answer)
    assert list(spool.iterdir()) == []
    assert files_of(demo.ws.root) == before
    assert review_db.history(demo.ws, alert_id=demo.alert) == []


def test_a_chunked_post_is_cut_off_at_the_limit(server, demo):
    port, csrf, spool = server
    head = (f"POST {url(demo.alert, '/verdict')} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Cookie: bw_csrf={csrf}\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            "Transfer-Encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n%s\r\n" % (256 * 1024, b"n" * 256 * 1024)
    answer = _raw(port, head, [chunk] * 40, pause=0.01)  # 10 MB offered
    assert answer.startswith("HTTP/1.1 413"), answer[:200]
    assert list(spool.iterdir()) == []
    assert review_db.history(demo.ws, alert_id=demo.alert) == []


def test_posts_without_a_csrf_cookie_are_refused_before_the_body(server, demo):
    port, _, spool = server
    head = (f"POST {url(demo.alert, '/verdict')} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 60000\r\n\r\n")
    answer = _raw(port, head, [b"z" * 1000])  # 1 KB of the 60 KB announced: never waited for
    assert answer.startswith("HTTP/1.1 403"), answer[:200]
    assert review_db.history(demo.ws, alert_id=demo.alert) == []


def test_bad_content_lengths_and_types(client, demo):
    csrf = client.cookies.get("bw_csrf")
    path = url(demo.alert, "/verdict")
    form = {"verdict": "confirmed", "analyst": "a", "csrf": csrf}
    assert client.post(path, json=form).status_code == 415
    assert client.post(path, content=b"verdict=confirmed", headers={
        "content-type": "text/plain"}).status_code == 415
    assert client.post(path, data=form, files={"f": ("f.txt", b"x")}).status_code == 400
    big_note = dict(form, note="n" * 70_000)
    response = client.post(path, data=big_note)
    assert response.status_code == 413 and "64 KiB" in response.text
    assert review_db.history(demo.ws, alert_id=demo.alert) == []


def test_weak_token_cannot_be_used_with_the_app(demo):
    from imagery.review import BindError

    for weak in WEAK_TOKENS:
        with pytest.raises(BindError):
            create_app(demo.ws.root, token=weak)


# --- item 17: pictures of simulated scenes say so ------------------------------------------


def _simulated_mark(image: Image.Image) -> tuple[str | None, float]:
    """(the PNG's berthwatch:simulated text, the share of amber pixels in its bottom band)."""
    rgb = image.convert("RGB")
    band = [rgb.getpixel((x, y)) for x in range(0, image.width, 5)
            for y in range(image.height - SIMULATED_BAND_PX, image.height)]
    return image.text.get("berthwatch:simulated"), sum(
        p == SIMULATED_COLOUR for p in band) / len(band)


def test_every_picture_of_a_simulated_scene_is_marked(client, demo):
    for suffix in ("/chip.png", "/chip.png?bands=false", "/clean.png", "/overview.png",
                   "/neighbour/previous.png", "/neighbour/next.png"):
        image = Image.open(io.BytesIO(client.get(url(demo.alert, suffix)).content))
        text, amber = _simulated_mark(image)
        assert text == "true" and amber > 0.6, suffix
    timeline = Image.open(io.BytesIO(client.get("/timeline/vostochny.png").content))
    assert _simulated_mark(timeline)[0] == "true" and _simulated_mark(timeline)[1] > 0.6
    assert timeline.text["berthwatch:scene_id"] == "port:vostochny"
    bundle = zipfile.ZipFile(io.BytesIO(client.get(url(demo.alert, "/evidence.zip")).content))
    for name in bundle.namelist():
        if name.endswith(".png"):
            text, amber = _simulated_mark(Image.open(io.BytesIO(bundle.read(name))))
            assert text == "true" and amber > 0.6, name


@pytest.mark.parametrize("simulated", [True, False])
def test_pipeline_evidence_chip_marks_simulated_scenes(tmp_path, simulated):
    from datetime import UTC, datetime

    from imagery.pipeline import write_evidence_chip
    from imagery.reconcile import Detection, SceneReconciliation
    from imagery.scene import open_scene

    demo = rw.build(tmp_path / "ws", simulated=simulated)
    sid = demo.scenes[1]
    info = open_scene(demo.ws.scene(sid).path)
    lon, lat = rw.lonlat(demo.transform, *rw.ALERT_PX)
    det = Detection(0, lon, lat, 0.9, 100.0, True, "oil-terminal", *rw.ALERT_PX)
    result = SceneReconciliation(sid, "vostochny", datetime(2024, 3, 6, 1, 50, tzinfo=UTC),
                                 [], [], [], [])
    path = Path(write_evidence_chip(demo.ws, info, det, result))
    image = Image.open(path)
    assert image.text["berthwatch:scene_id"] == sid
    text, amber = _simulated_mark(image)
    if simulated:
        assert text == "true" and amber > 0.6
        assert image.size == (384, 384 + SIMULATED_BAND_PX)
    else:
        assert text == "false" and amber == 0.0 and image.size == (384, 384)


# --- formulas in file names, token links, folder names, add edits, port prefixes ---

FORMULA = '=HYPERLINK("evil.example","x")'  # a file name: no `/`


def test_evidence_ais_csv_quotes_a_formula_in_the_source_file_name(client, demo, tmp_path):
    """The AIS file's name is external text: in ais_positions.csv it must not run as a
    formula in a spreadsheet, like the vessel name beside it."""
    text = (demo.ws.root / "ais.csv").read_text(encoding="utf-8")
    evil = tmp_path / f"{FORMULA}.csv"
    evil.write_text(text.replace("T22:50:00", "T23:10:00"), encoding="utf-8")  # new fixes
    assert ais.import_file(demo.ws, evil).accepted > 0
    response = client.get(url(demo.alert, "/evidence.zip"))
    assert response.status_code == 200
    rows = list(csv.DictReader(io.StringIO(
        zipfile.ZipFile(io.BytesIO(response.content)).read("ais_positions.csv").decode())))
    files = {r["source_file"] for r in rows}
    assert f"'{FORMULA}.csv" in files
    for row in rows:
        for cell in row.values():
            assert cell[:1] not in ("=", "+", "-", "@", "\t", "\r"), row


@pytest.mark.parametrize("path", ["//evil.example/x", "//evil.example"])
def test_token_link_never_redirects_to_another_host(demo, path):
    with TestClient(create_app(demo.ws.root, token=STRONG), base_url=LOCAL) as c:
        response = c.get(f"{LOCAL}{path}?token={STRONG}", follow_redirects=False)
    assert response.status_code == 303
    location = response.headers["location"]
    assert location.startswith("/") and not location.startswith("//"), location


def test_token_link_still_returns_to_the_alert(demo):
    with TestClient(create_app(demo.ws.root, token=STRONG), base_url=LOCAL) as c:
        response = c.get(url(demo.alert) + f"?token={STRONG}&x=1", follow_redirects=False)
        assert response.headers["location"] == url(demo.alert) + "?x=1"
        assert c.get(response.headers["location"]).status_code == 200


def test_chips_export_keeps_scenes_whose_ids_differ_only_in_replaced_characters(tmp_path):
    """`S2TEST vostochny 20240306` and `S2TEST_vostochny_20240306` once shared one folder: the
    second export overwrote the first scene's crop and labels."""
    from imagery.review.export import export_chips, folder_name

    spaced = rw.build(tmp_path / "ws", prefix="S2TEST vostochny ")
    plain = rw.build(tmp_path / "ws", prefix="S2TEST_vostochny_")
    review_db.ensure_schema(spaced.ws)
    for d in (spaced, plain):
        review_db.record(d.ws, scene_id=d.scenes[1], action="verdict", analyst="ana",
                         alert_id=d.alert, det_id=0, verdict="confirmed")
    results = export_chips(spaced.ws, tmp_path / "chips")
    assert len(results) == 2 and not any(r.skipped for r in results)
    assert len({r.folder for r in results}) == 2
    assert len(list((tmp_path / "chips").iterdir())) == 2
    assert folder_name(plain.scenes[1]) == plain.scenes[1]  # a plain id keeps its name
    for long_id in ("x" * 400, "港" * 400):  # one folder name: under 255 bytes
        assert len(folder_name(long_id).encode()) < 255


@pytest.mark.parametrize("form", [{"op": "add:d0"}, {"op": "chip", "mode": "add:zzz"}])
def test_an_add_with_a_target_is_refused_and_not_recorded(client, demo, form):
    data = {"csrf": client.cookies.get("bw_csrf"), "analyst": "ana", "px_x": "5",
            "px_y": "5", **form}
    response = client.post(url(demo.alert, "/vessels"), data=data, follow_redirects=False)
    assert response.status_code == 400, response.text
    assert review_db.history(demo.ws, scene_id=demo.scenes[1]) == []


def test_a_timeline_never_deletes_the_cached_plot_of_another_port(client, demo):
    """Port `vostochny`'s old plots were found with `vostochny-*.png`, which also matches the
    plots of a port named `vostochny-oil`."""
    with demo.ws.transaction() as conn:
        conn.execute("INSERT INTO zone_counts VALUES (?, 'vostochny-oil', 'jetty', 'berth',"
                     " 1.0, 2, 1, 'observed')", (demo.scenes[0],))
    assert client.get("/timeline/vostochny-oil.png").status_code == 200
    folder = demo.ws.root / "review" / "timeline"
    (other,) = folder.glob("vostochny-oil-*.png")
    assert client.get("/timeline/vostochny.png").status_code == 200
    assert other.is_file()
    stale = folder / "vostochny-0123456789abcdef.png"  # this port's out-of-date plot still goes
    stale.write_bytes(b"old")
    with demo.ws.transaction() as conn:  # new data: a new plot
        conn.execute("INSERT INTO zone_counts VALUES (?, 'vostochny', 'east', 'berth', 1.0,"
                     " 1, 0, 'observed')", (demo.scenes[2],))
    assert client.get("/timeline/vostochny.png").status_code == 200
    assert not stale.exists() and other.is_file()
