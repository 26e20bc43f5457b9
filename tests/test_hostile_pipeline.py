"""Hostile input to the pipeline, end to end through the CLI (issue 25 items 2, 4, 7, 9).

Every bad file is generated here in tmp_path. For each case: the exit status, one line that
names the file (or scene), no traceback, and the workspace's tables and files either
unchanged or recorded as the README says.
"""

from __future__ import annotations

import io
import os
import sqlite3
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from affine import Affine

from imagery.pipeline import open_workspace
from imagery.ports import get_port
from imagery.scene import SCENE_BANDS, write_scene
from imagery.workspace import Workspace, sha256_file

WHEN = datetime(2024, 3, 1, 2, 10, tzinfo=UTC)
DAY = ["--since", "2024-03-01", "--until", "2024-03-01"]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}
PORT = get_port("chongjin")


def _scene(path: Path, scene_id: str, size: int = 64, seed: int = 1, **overrides) -> Path:
    """A small scene over the middle of Chongjin's AOI, in the scene format unless
    `overrides` (bands, dtype, crs) say otherwise."""
    centre = PORT.to_utm(PORT.aoi).centroid
    bands = overrides.get("bands", SCENE_BANDS + ("SCL",))
    dtype = overrides.get("dtype", np.uint16)
    crs = overrides.get("crs", f"EPSG:{PORT.epsg}")
    transform = overrides.get(
        "transform", Affine(10, 0, centre.x - size * 5, 0, -10, centre.y + size * 5))
    data = np.random.default_rng(seed).integers(100, 250, (len(bands), size, size)).astype(dtype)
    if "SCL" in bands:
        data[bands.index("SCL")] = 6
    return write_scene(path, data, bands, crs, transform, scene_id=scene_id, port="chongjin",
                       source="local", acquisition_time=WHEN)


def _bad_files(folder: Path) -> dict[str, str]:
    """Each unusable file, with a word its skip reason must hold."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "random.tif").write_bytes(np.random.default_rng(0).bytes(5000))
    (folder / "empty.tif").write_bytes(b"")
    good = _scene(folder / "whole.tif", "WHOLE").read_bytes()
    (folder / "whole.tif").unlink()
    (folder / "truncated.tif").write_bytes(good[: len(good) // 2])
    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, format="PNG")
    (folder / "png.tif").write_bytes(png.getvalue())
    c = PORT.aoi.centroid
    _scene(folder / "wgs84.tif", "WGS84", crs="EPSG:4326",
           transform=Affine(0.0001, 0, c.x, 0, -0.0001, c.y))
    _scene(folder / "three_bands.tif", "THREE", bands=("B02", "B03", "B04"))
    _scene(folder / "uint8.tif", "UINT8", dtype=np.uint8)
    middle = _scene(folder / "middle.tif", "MIDDLE", size=512)
    data = bytearray(middle.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 4096] = bytes(4096)  # a tile in the middle
    middle.write_bytes(bytes(data))
    return {"random.tif": "not a readable GeoTIFF", "empty.tif": "unusable scene",
            "truncated.tif": "unusable scene", "png.tif": "unusable scene",
            "wgs84.tif": "not in metres", "three_bands.tif": "missing bands B08 B11",
            "uint8.tif": "dtype uint8", "middle.tif": "corrupt pixel data"}


def _cli(*args: str, bootstrap: str = "") -> subprocess.CompletedProcess:
    """The CLI in a fresh process; `bootstrap` runs first (to inject a fault)."""
    code = textwrap.dedent(bootstrap) + "\nimport sys\nfrom imagery.cli import main\n" \
        "sys.exit(main(sys.argv[1:]))\n"
    return subprocess.run([sys.executable, "-c", code, *args], env=ENV, capture_output=True,
                          text=True, timeout=600)


def _dump(ws: Path) -> dict[str, list[tuple]]:
    conn = sqlite3.connect(ws / "berthwatch.sqlite")
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    out = {t: sorted(map(tuple, conn.execute(f"SELECT * FROM {t}")), key=repr) for t in tables}
    conn.close()
    return out


def _files(ws: Path) -> dict[str, str]:
    return {p.relative_to(ws).as_posix(): sha256_file(p) for p in ws.rglob("*")
            if p.is_file() and not p.name.startswith("berthwatch.sqlite") and p.name != "run.lock"}


def _no_traceback(done: subprocess.CompletedProcess) -> str:
    text = done.stdout + done.stderr
    assert "Traceback" not in text, text
    return text


# --- item 7: unreadable scene files are recorded as skipped, naming the file ------------------


@pytest.mark.parametrize("command", ["fetch", "run"])
def test_unusable_local_files_are_recorded_as_skipped_naming_the_file(tmp_path, tiny_weights,
                                                                      command):
    incoming = tmp_path / "in"
    expected = _bad_files(incoming)
    _scene(incoming / "good.tif", "GOOD")
    ws = tmp_path / "ws"
    args = ["--port", "chongjin", "--source", "local", "--from", str(incoming),
            "--workspace", str(ws), "--max-cloud", "100"]
    if command == "fetch":
        args = ["fetch", *args, "--start", "2024-03-01", "--end", "2024-03-01"]
    else:
        args = ["run", *args, *DAY, "--weights", str(tiny_weights), "--threshold", "0.1"]
    done = _cli(*args)
    text = _no_traceback(done)
    assert done.returncode == 0, text  # skipped is counted and reported, not a failure
    conn = sqlite3.connect(ws / "berthwatch.sqlite")
    rows = dict(conn.execute("SELECT scene_id, reason FROM scenes WHERE status = 'skipped'"))
    stored = [r[0] for r in conn.execute("SELECT scene_id FROM scenes WHERE status = 'stored'")]
    conn.close()
    assert stored == ["GOOD"]
    for name, why in expected.items():
        # Unreadable files are catalogued by their name; readable-but-wrong ones too, since
        # the scene format check fails before their tags are trusted.
        reason = rows[f"file:{name}"] if f"file:{name}" in rows else next(
            r for r in rows.values() if name in r)
        assert why in reason and str(incoming / name) in reason, (name, reason)
        lines = [line for line in text.splitlines() if str(incoming / name) in line]
        assert len(lines) == 1, (name, lines)
    assert len(rows) == len(expected)
    # Nothing of the bad files was kept in the workspace.
    assert [p.name for p in (ws / "scenes").rglob("*.tif")] == [Path(_one(ws)).name]
    # A second pass records nothing new and still exits 0: skipped is not retried.
    before = _dump(ws)
    again = _cli(*args)
    _no_traceback(again)
    assert again.returncode == 0
    after = _dump(ws)
    assert {k: v for k, v in after.items() if k != "scenes"} == \
        {k: v for k, v in before.items() if k != "scenes"}
    assert [r[:6] for r in after["scenes"]] == [r[:6] for r in before["scenes"]]


def _one(ws: Path) -> str:
    conn = sqlite3.connect(ws / "berthwatch.sqlite")
    (path,) = conn.execute("SELECT path FROM scenes WHERE status = 'stored'").fetchone()
    conn.close()
    return path


def test_a_scene_corrupt_in_its_middle_found_at_processing_is_skipped_not_retried(
        tmp_path, tiny_weights):
    """A scene stored before every block was checked, corrupt in its middle: `run` records it
    as skipped (unusable, naming the file), exits 0, and does not try it again."""
    from imagery.pipeline import open_workspace

    ws = open_workspace(tmp_path / "ws")
    path = ws.scene_path("chongjin", WHEN, "MIDDLE")
    _scene(path, "MIDDLE", size=512)
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 4096] = bytes(4096)
    path.write_bytes(bytes(data))
    ws.record_scene(scene_id="MIDDLE", port="chongjin", source="local", acquisition_time=WHEN,
                    status="stored", path=path)
    args = ["run", "--port", "chongjin", "--no-fetch", *DAY, "--workspace", str(ws.root),
            "--weights", str(tiny_weights), "--threshold", "0.1"]
    done = _cli(*args)
    text = _no_traceback(done)
    assert done.returncode == 0, text
    record = ws.scene("MIDDLE")
    assert record.status == "skipped" and "unusable scene" in record.reason
    assert str(path) in record.reason
    assert [line for line in text.splitlines() if str(path) in line] == \
        [line for line in text.splitlines() if "skipped MIDDLE" in line]
    again = _cli(*args)
    assert again.returncode == 0 and "processed: 0" in again.stdout
    assert ws.scene("MIDDLE").attempts == record.attempts


# --- item 4: scene ids that sanitise alike ----------------------------------------------------


def test_ids_that_sanitise_alike_keep_their_own_files_detections_and_alerts(tmp_path,
                                                                            tiny_weights):
    incoming = tmp_path / "in"
    _scene(incoming / "a.tif", "COLLIDE A", seed=1)
    _scene(incoming / "b.tif", "COLLIDE_A", seed=2)
    ws = tmp_path / "ws"
    done = _cli("run", "--port", "chongjin", "--source", "local", "--from", str(incoming),
                *DAY, "--max-cloud", "100", "--weights", str(tiny_weights), "--threshold",
                "0.1", "--workspace", str(ws))
    _no_traceback(done)
    assert done.returncode == 0 and "2 stored" in done.stdout and "processed: 2" in done.stdout
    conn = sqlite3.connect(ws / "berthwatch.sqlite")
    scenes = conn.execute("SELECT scene_id, path, sha256 FROM scenes").fetchall()
    outputs = dict(conn.execute("SELECT scene_id, detections_path FROM processing"))
    alerts = [r[0] for r in conn.execute("SELECT alert_id FROM alerts")]
    chips = [r[0] for r in conn.execute("SELECT chip_path FROM alerts")]
    conn.close()
    assert {s[0] for s in scenes} == {"COLLIDE A", "COLLIDE_A"}
    assert len({s[1] for s in scenes}) == 2 and len(set(outputs.values())) == 2
    for _, path, digest in scenes:
        assert sha256_file(ws / path) == digest  # each file is the one its hash names
    for sid, det_path in outputs.items():
        import json

        assert json.loads((ws / det_path).read_text())["properties"]["scene_id"] == sid
    assert len(alerts) == len(set(alerts)) and len(chips) == len(set(chips))


# --- item 2: no AIS in the workspace ---------------------------------------------------------


def test_run_without_ais_raises_no_alert_and_says_why(tmp_path, tiny_weights):
    incoming = tmp_path / "in"
    _scene(incoming / "a.tif", "NOAIS_1")
    ws = tmp_path / "ws"
    done = _cli("run", "--port", "chongjin", "--source", "local", "--from", str(incoming),
                *DAY, "--max-cloud", "100", "--weights", str(tiny_weights), "--threshold",
                "0.05", "--workspace", str(ws))
    text = _no_traceback(done)
    assert done.returncode == 0 and "alerts: 0" in text
    assert "no AIS coverage: 1 scene(s)" in text
    listing = _cli("alerts", "--workspace", str(ws))
    assert listing.returncode == 0
    assert "chongjin: 1 scene(s) from 2024-03-01 to 2024-03-01 had no AIS coverage" \
        in listing.stdout
    conn = sqlite3.connect(ws / "berthwatch.sqlite")
    assert conn.execute("SELECT ais_coverage, ais_fixes FROM processing").fetchone() == (0, 0)
    assert conn.execute("SELECT COUNT(*) FROM alerts").fetchone()[0] == 0
    conn.close()


# --- item 9: a full disk ---------------------------------------------------------------------

# Faults injected into the CLI process: the disk fills while writing files (ENOSPC on the
# rename of any temporary file, after it was written) and SQLite cannot write either.
FULL_DISK = """
import errno, os, shutil, sqlite3
from contextlib import contextmanager
from imagery import sources, workspace

_replace = os.replace
def full_replace(src, dst, *a, **k):
    if ".tmp" in os.path.basename(str(src)):
        raise OSError(errno.ENOSPC, "No space left on device", str(dst))
    return _replace(src, dst, *a, **k)
os.replace = full_replace

def full_copy(src, dst, *a, **k):
    with open(dst, "wb") as out:
        out.write(b"II*\\0" + bytes(1000))  # half a copy on disk, then the disk is full
    raise OSError(errno.ENOSPC, "No space left on device", str(dst))
sources.shutil.copyfile = full_copy

@contextmanager
def full_transaction(self):
    raise sqlite3.OperationalError("disk I/O error")
    yield
workspace.Workspace.transaction = full_transaction
"""


def test_full_disk_during_fetch_leaves_nothing_behind_and_a_rerun_finishes(tmp_path):
    incoming = tmp_path / "in"
    _scene(incoming / "a.tif", "FULL_1")
    ws = tmp_path / "ws"
    args = ["fetch", "--port", "chongjin", "--start", "2024-03-01", "--end", "2024-03-01",
            "--source", "local", "--from", str(incoming), "--workspace", str(ws)]
    Workspace.open(ws)  # an empty workspace
    before, files = _dump(ws), _files(ws)
    done = _cli(*args, bootstrap=FULL_DISK)
    text = _no_traceback(done)
    assert done.returncode == 1
    lines = [line for line in text.splitlines() if "FULL_1" in line]
    assert len(lines) == 1 and "disk full" in lines[0] and "not recorded" in lines[0], text
    assert _dump(ws) == before and _files(ws) == files  # no temporary file, no new row
    again = _cli(*args)
    assert again.returncode == 0 and "1 stored" in again.stdout


def test_full_disk_during_processing_stops_cleanly_and_a_rerun_finishes(tmp_path,
                                                                        tiny_weights):
    incoming = tmp_path / "in"
    _scene(incoming / "a.tif", "FULL_2", seed=3)
    _scene(incoming / "b.tif", "FULL_3", seed=4)
    ws = tmp_path / "ws"
    fetched = _cli("fetch", "--port", "chongjin", "--start", "2024-03-01", "--end",
                   "2024-03-01", "--source", "local", "--from", str(incoming),
                   "--workspace", str(ws))
    assert fetched.returncode == 0, fetched.stderr
    args = ["run", "--port", "chongjin", "--no-fetch", *DAY, "--weights", str(tiny_weights),
            "--threshold", "0.1", "--workspace", str(ws)]
    open_workspace(ws)  # pipeline tables exist
    before, files = _dump(ws), _files(ws)
    done = _cli(*args, bootstrap=FULL_DISK)
    text = _no_traceback(done)
    assert done.returncode == 1
    lines = [line for line in text.splitlines() if "disk I/O error" in line]
    assert len(lines) == 1 and "pass stopped" in lines[0] and "FULL_2" in lines[0], text
    assert _dump(ws) == before
    assert not [p for p in ws.rglob("*") if ".tmp" in p.name]
    assert _files(ws) == files
    again = _cli(*args)
    assert again.returncode == 0 and "processed: 2" in again.stdout, again.stdout


def test_alert_and_detection_csvs_quote_what_a_spreadsheet_would_run(tmp_path):
    # Scene ids come from catalogues and zone names from port files: a cell starting with =
    # must reach a spreadsheet as text, while numbers (a negative longitude) stay numbers.
    import csv

    from imagery.alerts import ALERT_COLUMNS, format_alerts
    from imagery.detection_output import write_csv

    row = {c: None for c in ALERT_COLUMNS} | {
        "alert_id": '=HYPERLINK("http://evil.example","x")', "zone": "@SUM(1)", "lon": -12.5,
        "reasons": ["+cmd|' /C calc'!A0"], "simulated": 0}
    (cells,) = list(csv.reader(io.StringIO(format_alerts([row], "csv"))))[1:]
    named = dict(zip(ALERT_COLUMNS, cells, strict=False))
    assert named["alert_id"].startswith("'=") and named["zone"] == "'@SUM(1)"
    assert named["reasons"].startswith("'+") and named["lon"] == "-12.5"
    doc = {"properties": {"scene_id": "-2+3", "acquisition_time": "2024-03-01T02:00:00Z"},
           "features": [{"geometry": {"coordinates": [-1.5, 2.0]},
                         "properties": {"score": 0.9, "length_m": 90.0, "width_m": 15.0,
                                        "heading_deg": 10.0, "berthed": True, "zone": "=1+1",
                                        "px_x": 1.0, "px_y": 2.0}}]}
    out = write_csv(doc, tmp_path / "d.csv")
    (cells,) = list(csv.reader(out.open()))[1:]
    assert cells[0] == "'-2+3" and cells[2] == "-1.5" and "'=1+1" in cells
