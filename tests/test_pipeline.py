"""The unattended pass: idempotent, resumable after SIGKILL, failures recorded and retried."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from workspace_tables import table_rows

from imagery.cli import main
from imagery.pipeline import RunLocked, open_workspace, run_lock, run_pass
from imagery.ports import get_port
from imagery.simulate import SimulatedSource

START = datetime(2024, 3, 1, tzinfo=UTC)
END = datetime(2024, 3, 8, tzinfo=UTC)  # --until takes the whole day: three acquisitions
TABLES = ("scenes", "processing", "detections", "zone_counts", "matches", "ais_only", "alerts",
          "episodes", "ais_positions", "ais_vessels")


def dump(workspace: Path) -> dict[str, list[tuple]]:
    """Every row of every pipeline table, with what legitimately differs between two
    workspaces (their location, wall-clock times) normalised away."""
    return table_rows(workspace, TABLES, lambda key: key.endswith("_at") or key == "import_id")


def _feed(path: Path) -> Path:
    """A small NMEA feed: one vessel moored in Chongjin's east harbour all week."""
    from imagery.demo import _nmea

    port = get_port("chongjin")
    c = port.zone("east-harbour").geometry.centroid
    lines = []
    t = START
    while t < END:
        lines += _nmea({"type": 1, "mmsi": 445000001, "lon": c.x, "lat": c.y, "speed": 0.0,
                        "course": 0, "heading": 511, "status": 5}, int(t.timestamp()))
        t += timedelta(hours=3)
    path.write_text("\n".join(lines) + "\n")
    return path


def _args(ws: Path, weights: Path) -> list[str]:
    return ["run", "--port", "chongjin", "--source", "simulated", "--seed", "3",
            "--since", START.strftime("%Y-%m-%d"), "--until", END.strftime("%Y-%m-%d"),
            "--max-cloud", "100", "--weights", str(weights), "--threshold", "0.1",
            "--workspace", str(ws)]


def _cli(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "imagery.cli", *args]


ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def clean_run(tiny_weights, tmp_path_factory) -> Path:
    # Runs go through the CLI in fresh processes, as cron would start them: a process that
    # trained a model first may pick other float kernels, and a tiny model's borderline peaks
    # would then differ for reasons unrelated to resuming.
    ws = tmp_path_factory.mktemp("clean")
    assert main(["ais", "import", str(_feed(ws / "feed.nm4")), "--workspace", str(ws)]) == 0
    done = subprocess.run(_cli(_args(ws, tiny_weights)), env=ENV, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return ws


def test_one_pass_stores_counts_and_a_second_pass_adds_nothing(clean_run, tiny_weights):
    first = dump(clean_run)
    stored = [r for r in first["scenes"] if ("status", "stored") in r]
    assert len(first["scenes"]) == 3 and len(stored) == len(first["processing"]) >= 2
    assert first["zone_counts"] and first["detections"]
    again = subprocess.run(_cli(_args(clean_run, tiny_weights)), env=ENV, capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert "processed: 0; alerts: 0" in again.stdout
    assert dump(clean_run) == first


def test_sigkill_at_any_point_then_rerun_equals_one_clean_run(clean_run, tiny_weights, tmp_path):
    expected = dump(clean_run)
    ws = tmp_path / "killed"
    ws.mkdir()
    assert main(["ais", "import", str(_feed(ws / "feed.nm4")), "--workspace", str(ws)]) == 0
    cmd = _cli(_args(ws, tiny_weights))
    # Kill it three times at growing delays: in the fetch, the detection and the store stages.
    for delay in (1.5, 3.0, 4.5):
        proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    final = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr
    assert dump(ws) == expected


def test_a_failing_scene_is_recorded_and_retried_without_blocking(clean_run, tiny_weights,
                                                                 tmp_path, monkeypatch):
    ws = open_workspace(tmp_path / "ws")
    port = get_port("chongjin")
    source = SimulatedSource(seed=3)
    report = run_pass(ws, [port], source, START, END, max_cloud=100, weights=str(tiny_weights),
                      threshold=0.1, progress=False)
    processed = len(report.processed)
    assert processed >= 2
    # A transient failure of one scene (its detection raises) and forget it was processed:
    # the next pass fails it alone, and the one after retries it.
    conn = ws.connect()
    sid = conn.execute("SELECT scene_id FROM scenes WHERE status = 'stored' LIMIT 1").fetchone()[0]
    conn.execute("DELETE FROM processing WHERE scene_id = ?", (sid,))
    conn.close()
    import imagery.detector

    real = imagery.detector.detect_scene

    def flaky(path, *args, **kwargs):
        if Path(path).name.startswith(sid):
            raise RuntimeError("the model server went away")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(imagery.detector, "detect_scene", flaky)
    report = run_pass(ws, [port], None, START, END, weights=str(tiny_weights), threshold=0.1,
                      progress=False)
    assert list(report.failed) == [sid] and "went away" in report.failed[sid]
    conn = ws.connect()
    status, reason, attempts = conn.execute(
        "SELECT status, reason, attempts FROM processing WHERE scene_id = ?", (sid,)).fetchone()
    conn.close()
    assert status == "failed" and attempts == 1
    report = run_pass(ws, [port], None, START, END, weights=str(tiny_weights), threshold=0.1,
                      progress=False)
    assert list(report.failed) == [sid]  # retried, still failing, others untouched
    conn = ws.connect()
    assert conn.execute("SELECT attempts FROM processing WHERE scene_id = ?",
                        (sid,)).fetchone()[0] == 2
    done = conn.execute("SELECT COUNT(*) FROM processing WHERE status = 'done'").fetchone()[0]
    assert done == processed - 1
    conn.close()
    monkeypatch.setattr(imagery.detector, "detect_scene", real)
    report = run_pass(ws, [port], None, START, END, weights=str(tiny_weights), threshold=0.1,
                      progress=False)
    assert report.processed == [sid] and not report.failed


def test_a_stored_file_that_no_longer_matches_its_hash_is_not_used(tiny_weights, tmp_path):
    """Issue 25 item 4: a stored scene is used only while it is the file fetched."""
    from imagery.workspace import sha256_file

    ws = open_workspace(tmp_path / "ws")
    port = get_port("chongjin")
    source = SimulatedSource(seed=3)
    run_pass(ws, [port], source, START, END, max_cloud=100, weights=str(tiny_weights),
             threshold=0.1, progress=False)
    victim = next(r for r in ws.list_scenes() if r.status == "stored")
    conn = ws.connect()
    conn.execute("DELETE FROM processing WHERE scene_id = ?", (victim.scene_id,))
    conn.close()
    Path(victim.path).write_bytes(Path(victim.path).read_bytes()[:-10] + b"x" * 10)
    report = run_pass(ws, [port], None, START, END, weights=str(tiny_weights), threshold=0.1,
                      progress=False)
    assert list(report.failed) == [victim.scene_id]
    assert "no longer matches its recorded sha256" in report.failed[victim.scene_id]
    assert victim.path in report.failed[victim.scene_id]
    assert ws.scene(victim.scene_id).status == "failed"
    conn = ws.connect()
    assert conn.execute("SELECT status FROM processing WHERE scene_id = ?",
                        (victim.scene_id,)).fetchone()[0] == "failed"
    conn.close()
    # The next pass with a source fetches it again and processes the file it now holds.
    report = run_pass(ws, [port], source, START, END, max_cloud=100, weights=str(tiny_weights),
                      threshold=0.1, progress=False)
    assert report.processed == [victim.scene_id] and not report.failed
    again = ws.scene(victim.scene_id)
    assert again.status == "stored" and sha256_file(again.path) == again.sha256


def test_no_ais_coverage_raises_no_alert_until_ais_arrives(clean_run, tiny_weights, tmp_path,
                                                           capsys):
    """Issue 25 item 2: the same scenes without any AIS make no alert, say so in `run` and
    `alerts`, and are reconciled again once AIS for their time is imported."""
    conn = sqlite3.connect(clean_run / "berthwatch.sqlite")
    covered_alerts = conn.execute("SELECT COUNT(*) FROM alerts").fetchone()[0]
    conn.close()
    ws = tmp_path / "bare"
    assert main(_args(ws, tiny_weights)) == 0
    out = capsys.readouterr().out
    conn = sqlite3.connect(ws / "berthwatch.sqlite")
    scenes = conn.execute("SELECT COUNT(*) FROM processing WHERE status = 'done'").fetchone()[0]
    assert conn.execute("SELECT COUNT(*) FROM alerts").fetchone()[0] == 0
    assert conn.execute("SELECT COUNT(*) FROM processing WHERE ais_coverage = 0").fetchone()[0] \
        == scenes >= 2
    assert {r[0] for r in conn.execute("SELECT status FROM zone_counts WHERE detected IS NOT "
                                       "NULL")} == {"no_ais_coverage"}
    conn.close()
    assert "alerts: 0" in out and f"no AIS coverage: {scenes} scene(s)" in out
    assert main(["alerts", "--workspace", str(ws)]) == 0
    listing = capsys.readouterr().out
    assert listing.startswith("no undeclared port calls")
    assert f"chongjin: {scenes} scene(s) from 2024-03-0" in listing and "no AIS coverage" in listing
    # AIS imported later: the next run reconciles those scenes as the covered run did.
    assert main(["ais", "import", str(_feed(tmp_path / "feed.nm4")), "--workspace", str(ws)]) == 0
    assert main(_args(ws, tiny_weights)) == 0
    assert f"processed: {scenes}" in capsys.readouterr().out
    conn = sqlite3.connect(ws / "berthwatch.sqlite")
    assert conn.execute("SELECT COUNT(*) FROM processing WHERE ais_coverage = 1").fetchone()[0] \
        == scenes
    assert conn.execute("SELECT COUNT(*) FROM alerts").fetchone()[0] == covered_alerts > 0
    conn.close()


def test_a_moved_workspace_keeps_its_alerts_and_files(clean_run, tmp_path, capsys):
    """Issue 25 item 14: paths are stored relative to the workspace; a copy elsewhere opens
    every scene, detections file and chip, and processes nothing again."""
    import shutil

    from imagery.alerts import query_alerts
    from imagery.pipeline import pending_scenes

    copy = Path(shutil.copytree(clean_run, tmp_path / "copied"))
    conn = sqlite3.connect(copy / "berthwatch.sqlite")
    stored = [r[0] for r in conn.execute(
        "SELECT path FROM scenes WHERE path IS NOT NULL UNION ALL "
        "SELECT detections_path FROM processing WHERE detections_path IS NOT NULL UNION ALL "
        "SELECT chip_path FROM alerts WHERE chip_path IS NOT NULL")]
    conn.close()
    assert stored and not any(p.startswith("/") for p in stored)
    ws = open_workspace(copy)
    alerts = query_alerts(ws)
    assert alerts and all(Path(a["chip_path"]).is_file() and
                          Path(a["chip_path"]).is_relative_to(copy.resolve()) for a in alerts)
    assert all(Path(r.path).is_file() for r in ws.list_scenes() if r.status == "stored")
    assert pending_scenes(ws, get_port("chongjin")) == []
    assert main(["alerts", "--workspace", str(copy), "--format", "csv"]) == 0
    assert str(copy.resolve()) in capsys.readouterr().out


def test_run_with_tta_records_it_in_every_scenes_detections(clean_run, tiny_weights,
                                                             tmp_path):
    """`run --tta` detects with the eight orientations averaged: each scene's detections say
    so, while the plain pass's say they were not."""
    import json

    assert main([*_args(tmp_path, tiny_weights), "--tta"]) == 0
    for ws, expected in ((tmp_path, True), (clean_run, False)):
        docs = [json.loads(p.read_text()) for p in (ws / "detections").rglob("*.geojson")]
        assert len(docs) >= 2 and {d["properties"]["tta"] for d in docs} == {expected}


def test_two_runs_never_overlap(tmp_path):
    ws = open_workspace(tmp_path)
    with run_lock(ws):
        with pytest.raises(RunLocked, match="another berthwatch run"):
            with run_lock(ws):
                pass
    with run_lock(ws):  # released after the first one ends
        pass


def test_alerts_command_formats(clean_run, capsys):
    for fmt in ("table", "csv", "geojson"):
        assert main(["alerts", "--workspace", str(clean_run), "--format", fmt]) == 0
    out = capsys.readouterr().out
    assert "FeatureCollection" in out and "alert_id" in out


def test_watch_repeats_run(tmp_path, capsys):
    ws = str(tmp_path / "ws")
    assert main(["watch", "--every", "1s", "--max-passes", "2", "--no-fetch",
                 "--workspace", ws]) == 0
    out = capsys.readouterr().out
    assert out.count("berthwatch run") == 2 and out.count("processed: 0") == 2
