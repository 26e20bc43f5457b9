"""`berthwatch report`: months the scenes did not see, bad input, nothing written half-way (on
a small workspace written here row by row), and the offline demo's report against the
simulation's truth, its page opened in headless Chromium; hostile and edge input: --set values
that are not finite or overflow, AIS placing a vessel where cloud hid it, a period cutting
through a call, a call first seen at the turn of a year, a port title matplotlib would read as
mathematics, AIS names a spreadsheet would run as formulas."""

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
from imagery.tankers import config_with
from imagery.vessel_types import record_vessel_type

BERTHS = ("oil-terminal", "coal-and-container-berths")


def _scene(ws, sid: str, when: str, *, status: str = "stored", reason: str | None = None,
           visible: bool = True, alerts: list[tuple[int, float]] = (),
           matched: list[tuple[int, int, float]] = (),
           ais_only: list[tuple[int, str]] = ()) -> None:
    """One Vostochny scene: its catalog row, and when stored, processing, zone counts (every
    berth seen, or every one hidden by cloud), alerts (det_id, length_m) and AIS-matched
    detections (det_id, mmsi, length_m) at the oil berth, and vessels AIS placed there unseen
    (mmsi, reason)."""
    moment = datetime.fromisoformat(when).replace(tzinfo=UTC)
    ws.record_scene(scene_id=sid, port="vostochny", source="test", acquisition_time=moment,
                    status=status, reason=reason, cloud_fraction=0.0 if visible else 1.0)
    if status != "stored":
        return
    with ws.transaction() as conn:
        conn.execute("INSERT INTO processing (scene_id, status, model, weights_sha256)"
                     " VALUES (?, 'done', 'test-model', 'ab12')", (sid,))
        for zone in BERTHS:
            detected = ((len(alerts) + len(matched) if zone == "oil-terminal" else 0)
                        if visible else None)
            conn.execute("INSERT INTO zone_counts VALUES (?, 'vostochny', ?, 'berth', ?, ?, 0, ?)",
                         (sid, zone, 1.0 if visible else 0.1, detected,
                          "observed" if visible else "unknown"))
        for det_id, length in alerts:
            conn.execute(
                "INSERT INTO alerts (alert_id, scene_id, det_id, port, zone, acquisition_time,"
                " lon, lat, score, length_m, reasons, considered) VALUES"
                " (?, ?, ?, 'vostochny', 'oil-terminal', ?, ?, 42.75, 0.8, ?, '[]', '[]')",
                (f"{sid}#{det_id}", sid, det_id, when + "Z", 133.07 + 0.003 * det_id, length))
        for det_id, mmsi, length in matched:
            conn.execute("INSERT INTO detections (scene_id, det_id, lon, lat, score, length_m,"
                         " berthed, zone) VALUES (?, ?, 133.08, 42.75, 0.9, ?, 1, 'oil-terminal')",
                         (sid, det_id, length))
            conn.execute("INSERT INTO matches VALUES (?, ?, ?, 20.0, 'interpolated')",
                         (sid, det_id, mmsi))
        for mmsi, reason in ais_only:
            conn.execute("INSERT INTO ais_only VALUES (?, ?, 'oil-terminal', 133.08, 42.75,"
                         " 'interpolated', ?)", (sid, mmsi, reason))


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


def test_barrels_are_summed_per_calendar_year_and_unsized_tankers_are_named():
    # Two years' calls summed against "500,000 barrels a year" would overstate the case; and a
    # tanker call with no length carries no barrels, which the summary must say.
    from imagery.report.calls import CallsResult, PortCall
    from imagery.report.page import barrels_summary
    from imagery.tankers import DEFAULT_CONFIG, barrels_range

    def call(when: datetime, length: float | None) -> PortCall:
        c = PortCall("c", "vostochny", "oil", when, when, 0.0, 0.0, False, tanker=True)
        c.barrels = barrels_range(length) if length else None
        return c

    calls = [call(datetime(2024, 12, 30, tzinfo=UTC), 80.0),
             call(datetime(2025, 1, 2, tzinfo=UTC), 80.0),
             call(datetime(2025, 1, 9, tzinfo=UTC), 80.0),
             call(datetime(2025, 2, 1, tzinfo=UTC), None)]
    result = CallsResult(get_port("vostochny"), calls[0].first_seen, calls[-1].first_seen,
                         calls, [], False, [], DEFAULT_CONFIG)
    text = barrels_summary(result)
    one = barrels_range(80.0).central
    assert f"2024: estimated <b>{one:,.0f}</b> barrels" in text
    assert f"2025: estimated <b>{2 * one:,.0f}</b> barrels" in text
    assert f"{100 * 2 * one / 500_000:.1f} % of the" in text
    assert "1 tanker call(s) have no length estimate" in text
    result.calls = []
    assert barrels_summary(result) == "No barrels estimated."


# --- hostile and edge input (--set, cloud, periods, titles, formulas) ---

TANKER = 273000001


def _tanker_vessel(ws, name: str = "SMALL TANKER") -> None:
    with ws.transaction() as conn:
        conn.execute("INSERT INTO ais_vessels (mmsi, name, ship_type, updated_at)"
                     " VALUES (?, ?, 80, '2024-01-01T00:00:00Z')", (TANKER, name))


# --- --set ---------------------------------------------------------------------------------


@pytest.mark.parametrize("setting", ["load_factor=nan", "load_factor=inf", "band_min_m=nan",
                                     "min_length_m=inf", "length_error_m=1e308",
                                     "length_per_cube_root_dwt=1e-300"])
def test_set_values_that_are_not_finite_or_overflow_are_refused(setting):
    with pytest.raises(ValueError, match="finite"):
        config_with([setting])


def test_report_with_a_nan_setting_is_one_line_and_writes_nothing(tmp_path, capsys):
    ws = open_workspace(tmp_path / "ws")
    _scene(ws, "M1", "2024-03-05T02:00:00", alerts=[(0, 80.0)])
    out = tmp_path / "out"
    for setting in ("load_factor=nan", "length_error_m=1e308"):
        code = main(["report", "--workspace", str(ws.root), "--port", "vostochny",
                     "--out", str(out), "--set", setting])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and "finite" in err, err
        assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


# --- calls -----------------------------------------------------------------------------------


def test_ais_placing_a_vessel_under_cloud_neither_starts_nor_extends_its_call(tmp_path):
    """31 Jan: every berth under cloud, AIS places the tanker at the oil berth; 2 Feb: seen;
    5 Feb: cloud again; 7 Feb: berth seen but the vessel's spot under cloud; 9 Feb: seen."""
    ws = open_workspace(tmp_path / "ws")
    _tanker_vessel(ws)
    _scene(ws, "J31", "2024-01-31T02:00:00", visible=False,
           ais_only=[(TANKER, "zone mostly hidden by cloud")])
    _scene(ws, "F02", "2024-02-02T02:00:00", matched=[(0, TANKER, 80.0)])
    _scene(ws, "F05", "2024-02-05T02:00:00", visible=False,
           ais_only=[(TANKER, "zone mostly hidden by cloud")])
    _scene(ws, "F07", "2024-02-07T02:00:00",
           ais_only=[(TANKER, "hidden by cloud at its AIS position")])
    _scene(ws, "F09", "2024-02-09T02:00:00", matched=[(0, TANKER, 82.0)])
    result = build_calls(ws, get_port("vostochny"), None, None)
    [call] = result.calls
    assert call.scene_ids == ["F02", "F09"] and call.month == "2024-02"
    assert call.first_seen == datetime(2024, 2, 2, 2, tzinfo=UTC)
    months = {m.month: m for m in result.months}
    assert months["2024-01"].state == "not seen"
    # The call is not put in a month no scene saw (where the chart and table show no figure).
    assert monthly_counts(result) == {
        "2024-01": {"detected": 0, "declared": 0, "undeclared": 0, "confirmed": 0},
        "2024-02": {"detected": 1, "declared": 1, "undeclared": 0, "confirmed": 0}}


def test_a_period_cutting_through_a_call_never_counts_it_twice(tmp_path):
    """One tanker at the oil berth from 31 Dec to 2 Jan: the December report counts it, a
    January report does not count it again as a new January call."""
    ws = open_workspace(tmp_path / "ws")
    _scene(ws, "D30", "2023-12-30T02:00:00")
    _scene(ws, "D31", "2023-12-31T02:00:00", alerts=[(0, 80.0)])
    _scene(ws, "J02", "2024-01-02T02:00:00", alerts=[(0, 81.0)])
    _scene(ws, "J05", "2024-01-05T02:00:00")
    _scene(ws, "J07", "2024-01-07T02:00:00", alerts=[(0, 90.0)])  # a new call
    port = get_port("vostochny")

    def tanker_calls(start, end):
        return {k: v["detected"] for k, v in
                monthly_counts(build_calls(ws, port, start, end)).items()}

    whole = tanker_calls(None, None)
    december = tanker_calls(None, datetime(2023, 12, 31, 23, 59, 59, tzinfo=UTC))
    january = tanker_calls(datetime(2024, 1, 1, tzinfo=UTC), None)
    assert whole == {"2023-12": 1, "2024-01": 1}
    assert december == {"2023-12": 1} and january == {"2024-01": 1}
    cut = build_calls(ws, port, datetime(2024, 1, 1, tzinfo=UTC), None)
    assert [c.scene_ids for c in cut.calls] == [["J07"]]


def test_a_call_first_seen_at_midnight_on_new_year_counts_in_the_new_year_only(tmp_path):
    from imagery.report.charts import cumulative_series

    ws = open_workspace(tmp_path / "ws")
    _scene(ws, "D20", "2023-12-20T02:00:00")
    _scene(ws, "NY", "2024-01-01T00:00:00", alerts=[(0, 80.0)])
    _scene(ws, "J10", "2024-01-10T02:00:00")
    result = build_calls(ws, get_port("vostochny"), None, None)
    [call] = result.calls
    assert call.barrels is not None and call.month == "2024-01"
    series = cumulative_series(result)
    assert series[2023][2][-1] == 0.0  # 2023's curve ends where it began
    assert series[2024][2][-1] == pytest.approx(call.barrels.central)


# --- external strings ------------------------------------------------------------------------


def test_a_port_title_with_dollar_signs_is_drawn_as_text(tmp_path):
    ws = open_workspace(tmp_path / "ws")
    _scene(ws, "M1", "2024-03-05T02:00:00", alerts=[(0, 80.0)])
    _scene(ws, "M2", "2024-03-10T02:00:00", alerts=[(0, 80.0)])
    ports = tmp_path / "ports"
    ports.mkdir()
    doc = json.loads(get_port("vostochny").path.read_text())
    doc["properties"]["title"] = r"Vostochny $\frac{1}{$ <b>x</b>"
    (ports / "vostochny.geojson").write_text(json.dumps(doc))
    written = write_report(ws, get_port("vostochny", ports), out=tmp_path / "out")
    assert "Vostochny $\\frac{1}{$ &lt;b&gt;x&lt;/b&gt;" in written.page.read_text()


def test_ais_names_that_are_formulas_are_quoted_in_the_csv(tmp_path):
    ws = open_workspace(tmp_path / "ws")
    name = '=HYPERLINK("http://evil.example","x")<img src=x onerror=alert(1)>'
    _tanker_vessel(ws, name)
    _scene(ws, "M1", "2024-03-05T02:00:00", matched=[(0, TANKER, 80.0)])
    written = write_report(ws, get_port("vostochny"), out=tmp_path / "out")
    [row] = list(csv.DictReader(io.StringIO((written.folder / "calls.csv").read_text())))
    assert row["ais_name"] == "'" + name and row["tanker"] == "True"
    page = written.page.read_text()
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    geo = json.loads((written.folder / "calls.geojson").read_text())
    assert geo["features"][0]["properties"]["ais_name"] == name


def test_an_out_path_that_is_or_lies_under_a_file_is_one_line(tmp_path, capsys):
    ws = open_workspace(tmp_path / "ws")
    _scene(ws, "M1", "2024-03-05T02:00:00", alerts=[(0, 80.0)])
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    for out, expected in ((afile, "is a file, not a folder"),
                          (afile / "sub", "cannot make the folder")):
        code = main(["report", "--workspace", str(ws.root), "--port", "vostochny",
                     "--out", str(out)])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and expected in err, err
    assert afile.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "ws"]
