"""`berthwatch report`: months the scenes did not see, bad input, nothing written half-way (on
a small workspace written here row by row), and the offline demo's report against the
simulation's truth, its page opened in headless Chromium."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from imagery.cli import main
from imagery.pipeline import open_workspace
from imagery.ports import get_port
from imagery.report import write_report
from imagery.report.calls import build_calls, monthly_counts
from imagery.vessel_types import record_vessel_type

BERTHS = ("oil-terminal", "coal-and-container-berths")


def _scene(ws, sid: str, when: str, *, status: str = "stored", reason: str | None = None,
           visible: bool = True, alerts: list[tuple[int, float]] = ()) -> None:
    """One Vostochny scene: its catalog row, and when stored, processing, zone counts and
    alerts (det_id, length_m) at the oil berth."""
    moment = datetime.fromisoformat(when).replace(tzinfo=UTC)
    ws.record_scene(scene_id=sid, port="vostochny", source="test", acquisition_time=moment,
                    status=status, reason=reason, cloud_fraction=0.0 if visible else 1.0)
    if status != "stored":
        return
    with ws.transaction() as conn:
        conn.execute("INSERT INTO processing (scene_id, status, model, weights_sha256)"
                     " VALUES (?, 'done', 'test-model', 'ab12')", (sid,))
        for zone in BERTHS:
            detected = (len(alerts) if zone == "oil-terminal" else 0) if visible else None
            conn.execute("INSERT INTO zone_counts VALUES (?, 'vostochny', ?, 'berth', ?, ?, 0, ?)",
                         (sid, zone, 1.0 if visible else 0.1, detected,
                          "observed" if visible else "unknown"))
        for det_id, length in alerts:
            conn.execute(
                "INSERT INTO alerts (alert_id, scene_id, det_id, port, zone, acquisition_time,"
                " lon, lat, score, length_m, reasons, considered) VALUES"
                " (?, ?, ?, 'vostochny', 'oil-terminal', ?, ?, 42.75, 0.8, ?, '[]', '[]')",
                (f"{sid}#{det_id}", sid, det_id, when + "Z", 133.07 + 0.003 * det_id, length))


@pytest.fixture
def workspace(tmp_path):
    """February: two scenes with every berth under cloud and one skipped as all cloud;
    March: a tanker (80 m) at the oil berth in two scenes, a 150 m vessel in one; April: none."""
    ws = open_workspace(tmp_path / "ws")
    _scene(ws, "F1", "2024-02-05T02:00:00", visible=False)
    _scene(ws, "F2", "2024-02-15T02:00:00", visible=False)
    _scene(ws, "F3", "2024-02-25T02:00:00", status="skipped", reason="all cloud over the AOI")
    _scene(ws, "M1", "2024-03-05T02:00:00", alerts=[(0, 80.0), (1, 150.0)])
    _scene(ws, "M2", "2024-03-10T02:00:00", alerts=[(0, 82.0)])
    _scene(ws, "M3", "2024-03-15T02:00:00")
    return ws


def test_a_month_of_all_cloud_scenes_is_not_seen_and_never_zero(workspace):
    port = get_port("vostochny")
    result = build_calls(workspace, port, datetime(2024, 2, 1, tzinfo=UTC),
                         datetime(2024, 4, 30, tzinfo=UTC))
    months = {m.month: m for m in result.months}
    assert (months["2024-02"].scenes, months["2024-02"].cloud_blocked,
            months["2024-02"].seen) == (3, 3, 0)
    assert months["2024-02"].state == "not seen"
    assert months["2024-04"].state == "not seen" and months["2024-04"].scenes == 0
    assert months["2024-03"].state == "seen"
    # One tanker call (the 80 m vessel in two scenes), the 150 m one outside the band.
    assert monthly_counts(result)["2024-03"] == {"detected": 1, "declared": 0,
                                                 "undeclared": 1, "confirmed": 0}
    written = write_report(workspace, port, result.start, result.end)
    page = written.page.read_text()
    assert page.count("not seen: no scene saw the berths") == 2
    rows = list(csv.DictReader(io.StringIO((written.folder / "calls.csv").read_text())))
    tanker = [r for r in rows if r["tanker"] == "True"]
    assert len(tanker) == 1 and tanker[0]["scene_ids"] == "M1 M2"
    assert tanker[0]["length_m"] == "81.0"  # median of 80 and 82
    geo = json.loads((written.folder / "calls.geojson").read_text())
    assert len(geo["features"]) == 2 and not geo["properties"]["simulated"]


def test_the_analyst_vessel_type_decides_and_counts_as_confirmed(workspace):
    port = get_port("vostochny")
    record_vessel_type(workspace, alert_id="M1#1", scene_id="M1", vessel_type="tanker",
                       analyst="ana")
    record_vessel_type(workspace, alert_id="M1#0", scene_id="M1", vessel_type="tanker",
                       analyst="ana")
    record_vessel_type(workspace, alert_id="M1#0", scene_id="M1", vessel_type="cargo",
                       analyst="bob")  # the latest call wins
    counts = monthly_counts(build_calls(workspace, port, None, None))
    assert counts["2024-03"] == {"detected": 1, "declared": 0, "undeclared": 1, "confirmed": 1}


def _run(capsys, *argv) -> tuple[int, str]:
    code = main(list(argv))
    err = capsys.readouterr().err.strip()
    return code, err


def test_report_command_writes_the_folder(workspace, capsys, tmp_path):
    out = tmp_path / "out"
    code = main(["report", "--workspace", str(workspace.root), "--port", "vostochny",
                 "--from", "2024-02-01", "--to", "2024-03-31", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    assert "2024-02  not seen" in printed and f"report: {out / 'report.html'}" in printed
    assert "cargo = deadweight &times; 0.9 (load factor)" in (out / "report.html").read_text()
    assert main(["report", "--workspace", str(workspace.root), "--port", "vostochny",
                 "--out", str(out), "--set", "load_factor=0.33"]) == 0
    assert "cargo = deadweight &times; 0.33 (load factor)" in (out / "report.html").read_text()
    assert sorted(p.name for p in out.iterdir()) == [
        "calls.csv", "calls.geojson", "cumulative_barrels.png", "report.html",
        "tanker_calls_per_month.png"]


def test_bad_input_one_line_each_nothing_written(workspace, capsys, tmp_path):
    out = tmp_path / "out"
    ports = tmp_path / "ports"
    ports.mkdir()
    doc = json.loads(get_port("vostochny").path.read_text())
    doc["features"][1]["properties"]["kind"] = "oil-jetty"
    (ports / "vostochny.geojson").write_text(json.dumps(doc))
    base = ["report", "--workspace", str(workspace.root), "--out", str(out)]
    cases = {
        "unknown port 'atlantis'": base + ["--port", "atlantis"],
        "--from 2024-03-31 is after --to 2024-02-01": base + [
            "--port", "vostochny", "--from", "2024-03-31", "--to", "2024-02-01"],
        "no scenes of port 'vostochny' between 2023-01-01 and 2023-12-31": base + [
            "--port", "vostochny", "--from", "2023-01-01", "--to", "2023-12-31"],
        "property 'kind' is 'oil-jetty'": base + ["--port", "vostochny", "--ports", str(ports)],
        "--set 'load=1': expected NAME=NUMBER": base + ["--port", "vostochny", "--set", "load=1"],
        "not a berthwatch workspace": ["report", "--workspace", str(tmp_path / "none"),
                                       "--out", str(out), "--port", "vostochny"],
    }
    for expected, argv in cases.items():
        code, err = _run(capsys, *argv)
        assert code == 2 and len(err.splitlines()) == 1 and expected in err, err
        assert "Traceback" not in err
        assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []
    assert not (tmp_path / "none").exists()


def test_a_failure_half_way_leaves_the_old_report_and_no_debris(workspace, monkeypatch):
    port = get_port("vostochny")
    first = write_report(workspace, port)
    before = first.page.read_bytes()

    def broken(*_args, **_kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("imagery.report.page.calls_csv", broken)
    with pytest.raises(OSError, match="disk full"):
        write_report(workspace, port)
    assert first.page.read_bytes() == before
    assert sorted(p.name for p in first.folder.parent.iterdir()) == ["vostochny"]


# --- the offline demo ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The offline demo, whole (about 2.5 minutes on 2 cores)."""
    from imagery.demo import run_demo

    return run_demo(tmp_path_factory.mktemp("demo") / "ws", progress=False)


def test_demo_report_counts_equal_the_truth_where_the_scenes_saw_them(demo):
    from imagery.demo import truth_tanker_calls

    ws = open_workspace(demo.workspace)
    assert set(demo.reports) == {"chongjin", "vostochny"}
    for name, page in demo.reports.items():
        port = get_port(name)
        truth = truth_tanker_calls(ws, port)
        result = build_calls(ws, port, None, None)
        counts = monthly_counts(result)
        seen = {m.month for m in result.months if m.state != "not seen"}
        assert truth and set(truth) <= seen
        assert {m: counts[m]["detected"] for m in seen} == {m: truth.get(m, 0) for m in seen}
        text = page.read_text()
        assert text.count("SIMULATED") >= 2 and page.parent.name == name


CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def test_demo_report_page_in_chromium_loads_its_images_and_nothing_else(demo, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: `apt-get install -y chromium` to run this test")
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="the Playwright python package is not installed")
    page_path = demo.reports["vostochny"]
    requests: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        try:
            page = browser.new_context(viewport={"width": 1300, "height": 900}).new_page()
            page.on("request", lambda r: requests.append(r.url))
            page.goto(page_path.as_uri())
            page.wait_for_load_state("load")
            images = page.eval_on_selector_all(
                "img", "els => els.map(e => [e.complete, e.naturalWidth, e.src.slice(0, 22)])")
            assert len(images) == 2
            assert all(done and width > 300 and src == "data:image/png;base64,"
                       for done, width, src in images)
            assert "SIMULATED" in page.inner_text("h1")
            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    # The file itself and its inlined images; nothing over the network.
    assert [u for u in requests if not u.startswith(("file:", "data:"))] == []
    if os.environ.get("BERTHWATCH_SCREENSHOT_DIR"):
        shutil.copy(shot, Path(os.environ["BERTHWATCH_SCREENSHOT_DIR"]) / "report-page.png")
