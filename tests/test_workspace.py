import os
import shutil
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from affine import Affine

from imagery.cli import main
from imagery.ports import get_port
from imagery.scene import SCENE_BANDS, write_scene
from imagery.sources import LocalFolderSource, fetch_into_workspace
from imagery.workspace import Workspace, default_home, file_stem, sha256_file


def _write_port_scene(path, port_name="chongjin", scene_id="S1", when=None, cloud=False):
    """A small UTM scene over the middle of the port's AOI, with an SCL band."""
    port = get_port(port_name)
    centre = port.to_utm(port.aoi).centroid
    size = 64
    transform = Affine(10, 0, centre.x - size * 5, 0, -10, centre.y + size * 5)
    rng = np.random.default_rng(1)
    data = rng.integers(100, 900, (6, size, size), dtype=np.uint16)
    data[5] = 9 if cloud else 6
    when = when or datetime(2024, 3, 1, 2, 10, tzinfo=UTC)
    write_scene(path, data, SCENE_BANDS + ("SCL",), f"EPSG:{port.epsg}", transform,
                scene_id=scene_id, port=port_name, source="local", acquisition_time=when)
    return port


def test_workspace_location_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("BERTHWATCH_HOME", str(tmp_path / "env"))
    assert default_home() == tmp_path / "env"
    assert Workspace.open(None).root == (tmp_path / "env").resolve()
    assert Workspace.open(tmp_path / "arg").root == (tmp_path / "arg").resolve()
    monkeypatch.delenv("BERTHWATCH_HOME")
    assert default_home().name == ".berthwatch"


def test_fetch_twice_is_a_noop_and_catalog_records_scene(tmp_path):
    src_dir = tmp_path / "incoming"
    port = _write_port_scene(src_dir / "a.tif", scene_id="S2A_TEST_1")
    ws = Workspace.open(tmp_path / "ws")
    source = LocalFolderSource(src_dir)
    refs = source.search(port, datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 12, 31, tzinfo=UTC))
    assert [r.scene_id for r in refs] == ["S2A_TEST_1"]
    first = fetch_into_workspace(source, refs[0], port, ws)
    assert first.status == "stored" and first.cloud_fraction == 0.0
    stored = first.path
    assert stored == ws.scenes_dir / "chongjin" / "2024-03-01" / f"{file_stem('S2A_TEST_1')}.tif"
    assert stored.name.startswith("S2A_TEST_1-")
    mtime = stored.stat().st_mtime_ns
    second = fetch_into_workspace(source, refs[0], port, ws)
    assert second.status == "exists" and stored.stat().st_mtime_ns == mtime
    (record,) = ws.list_scenes()
    assert record.status == "stored" and record.attempts == 1 and len(record.sha256) == 64


def test_search_respects_time_range_and_port(tmp_path):
    src_dir = tmp_path / "incoming"
    port = _write_port_scene(src_dir / "a.tif", scene_id="A",
                             when=datetime(2024, 3, 1, tzinfo=UTC))
    _write_port_scene(src_dir / "b.tif", scene_id="B", when=datetime(2024, 5, 1, tzinfo=UTC))
    _write_port_scene(src_dir / "c.tif", port_name="vostochny", scene_id="C")
    source = LocalFolderSource(src_dir)
    refs = source.search(port, datetime(2024, 2, 1, tzinfo=UTC), datetime(2024, 4, 1, tzinfo=UTC))
    assert [r.scene_id for r in refs] == ["A"]


def test_cli_fetch_local_then_scenes_lists_it(tmp_path, capsys):
    src_dir = tmp_path / "incoming"
    _write_port_scene(src_dir / "a.tif", scene_id="LOCAL_1")
    _write_port_scene(src_dir / "b.tif", scene_id="LOCAL_CLOUD", cloud=True)
    ws = str(tmp_path / "ws")
    args = ["fetch", "--port", "chongjin", "--start", "2024-03-01", "--end", "2024-03-01",
            "--source", "local", "--from", str(src_dir), "--workspace", ws]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "1 stored" in out and "1 skipped" in out
    assert main(args) == 0
    assert "1 exists" in capsys.readouterr().out
    assert main(["scenes", "--workspace", ws]) == 0
    listing = capsys.readouterr().out
    assert "LOCAL_1" in listing and "stored" in listing
    assert "LOCAL_CLOUD" in listing and "all cloud over the AOI" in listing


def test_cli_local_source_needs_folder(tmp_path, capsys):
    code = main(["search", "--port", "chongjin", "--start", "2024-01-01", "--end", "2024-01-02",
                 "--source", "local", "--from", str(tmp_path / "nope")])
    assert code == 2
    assert "does not exist" in capsys.readouterr().err


def test_bad_date_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["search", "--port", "chongjin", "--start", "yesterday", "--end", "2024-01-02"])
    assert exit_info.value.code == 2
    assert "'yesterday' is not an ISO 8601 date" in capsys.readouterr().err


# --- read-only and missing workspaces, waiting on another writer (issue 25, items 10, 11, 18) --


def test_a_reading_open_refuses_a_missing_workspace_and_creates_nothing(tmp_path):
    from imagery.workspace import WorkspaceMissing

    with pytest.raises(WorkspaceMissing, match="berthwatch.sqlite"):
        Workspace.open(tmp_path / "mistyped", must_exist=True)
    assert not (tmp_path / "mistyped").exists()
    Workspace.open(tmp_path / "real")
    assert Workspace.open(tmp_path / "real", must_exist=True).read_only is False


def _not_writable(monkeypatch, root):
    """What os.access says of a read-only mount or a folder of another user (as root, chmod
    alone changes nothing, so the check is simulated here; tests/test_hostile_cli.py mounts a
    workspace really read-only)."""
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, *a, **k: False if mode == os.W_OK and
                        str(p).startswith(str(root)) else real(p, mode, *a, **k))


def test_a_read_only_workspace_reads_and_refuses_writes(tmp_path, monkeypatch):
    import sqlite3

    from imagery.review import db as review_db
    from imagery.workspace import WorkspaceReadOnly

    src = tmp_path / "incoming"
    port = _write_port_scene(src / "a.tif", scene_id="S_RO")
    ws = Workspace.open(tmp_path / "ws")
    source = LocalFolderSource(src)
    fetch_into_workspace(source, source.search(port, datetime(2024, 1, 1, tzinfo=UTC),
                                               datetime(2024, 12, 31, tzinfo=UTC))[0], port, ws)
    db_bytes = ws.db_path.read_bytes()
    _not_writable(monkeypatch, ws.root)
    ro = Workspace.open(ws.root)
    assert ro.read_only
    assert [r.scene_id for r in ro.list_scenes()] == ["S_RO"]
    review_db.ensure_schema(ro)  # a table the database lacks reads as empty...
    assert review_db.reviewed_scene_ids(ro) == []
    assert not ro.has_table("reviews")  # ...and is not created
    with pytest.raises(WorkspaceReadOnly, match=str(ro.root)):
        with ro.transaction():
            pass
    with pytest.raises(WorkspaceReadOnly, match="read-only"):
        ro.require_writable("run")
    conn = ro.connect()  # the connection itself refuses writes
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        conn.execute("DELETE FROM scenes")
    conn.close()
    assert ws.db_path.read_bytes() == db_bytes


HOLD_DB = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
conn.execute("CREATE TABLE IF NOT EXISTS held (t REAL)")
print("held", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
"""


def _holder(ws, seconds):
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", HOLD_DB, str(ws.db_path), str(seconds)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_transaction_waits_for_another_process_then_gives_up_in_one_line(tmp_path,
                                                                           monkeypatch):
    import time

    from imagery import workspace
    from imagery.workspace import WorkspaceBusy

    ws = Workspace.open(tmp_path / "ws")
    holder = _holder(ws, 1.5)
    started = time.monotonic()
    with ws.transaction() as conn:  # waits for the other process's commit
        conn.execute("CREATE TABLE mine (x)")
    assert time.monotonic() - started > 0.5
    holder.wait(timeout=30)
    monkeypatch.setattr(workspace, "BUSY_TIMEOUT_S", 0.2)
    monkeypatch.setattr(workspace, "LOCK_PATIENCE_S", 1.0)
    holder = _holder(ws, 10)
    try:
        with pytest.raises(WorkspaceBusy, match="stayed locked"):
            with ws.transaction():
                pass
    finally:
        holder.kill()
        holder.wait(timeout=30)


def test_an_ais_import_cut_short_is_resumed(tmp_path):
    """An import commits in batches; one cut short (its row unfinished) is taken over by the
    next import of the same file rather than reported as already imported."""
    from imagery import ais
    from imagery.workspace import sha256_file

    feed = tmp_path / "feed.csv"
    feed.write_text("MMSI,BaseDateTime,LAT,LON\n273000001,2024-03-01T00:00:00,42.7,133.07\n"
                    "273000001,2024-03-01T00:10:00,42.7,133.07\n")
    ws = Workspace.open(tmp_path / "ws")
    ais.ensure_schema(ws)
    with ws.transaction() as conn:  # what a killed import leaves: its row, one batch
        import_id = conn.execute(
            "INSERT INTO ais_imports (file, sha256, format, started_at) VALUES (?, ?, 'csv',"
            " '2024-01-01T00:00:00Z')", (str(feed), sha256_file(feed))).lastrowid
        conn.execute("INSERT INTO ais_positions (mmsi, time, t_epoch, lon, lat, import_id)"
                     " VALUES (273000001, '2024-03-01T00:00:00Z', 1709251200, 133.07, 42.7, ?)",
                     (import_id,))
    report = ais.import_file(ws, feed)
    assert not report.already_imported
    assert (report.accepted, report.duplicates) == (1, 1)
    again = ais.import_file(ws, feed)
    assert again.already_imported
    conn = ws.connect()
    assert conn.execute("SELECT COUNT(*) FROM ais_positions").fetchone()[0] == 2
    assert conn.execute("SELECT COUNT(*) FROM ais_imports WHERE finished_at IS NOT NULL"
                        ).fetchone()[0] == 1
    conn.close()
def test_ids_that_sanitise_alike_get_their_own_files():
    ids = ["COLLIDE A", "COLLIDE_A", "collide_a", "COLLIDE/A", "x" * 400]
    stems = [file_stem(i) for i in ids]
    assert len(set(stems)) == len(ids) and len({s.lower() for s in stems}) == len(ids)
    assert all(len(s) < 100 and "/" not in s and not s.startswith(".") for s in stems)
    assert file_stem("COLLIDE A") == file_stem("COLLIDE A")  # stable across runs


def test_cli_fetch_keeps_colliding_ids_apart_and_each_file_matches_its_hash(tmp_path, capsys):
    src_dir = tmp_path / "incoming"
    _write_port_scene(src_dir / "a.tif", scene_id="COLLIDE A")
    _write_port_scene(src_dir / "b.tif", scene_id="COLLIDE_A", cloud=False)
    # Different pixels, so a shared file would show as a hash mismatch.
    import rasterio

    with rasterio.open(src_dir / "b.tif", "r+") as dst:
        dst.write(dst.read(1) + 1, 1)
    ws = tmp_path / "ws"
    assert main(["fetch", "--port", "chongjin", "--start", "2024-03-01", "--end", "2024-03-01",
                 "--source", "local", "--from", str(src_dir), "--workspace", str(ws)]) == 0
    assert "2 stored" in capsys.readouterr().out
    records = Workspace.open(ws).list_scenes()
    assert {r.scene_id for r in records} == {"COLLIDE A", "COLLIDE_A"}
    assert len({r.path for r in records}) == 2
    for r in records:
        assert sha256_file(r.path) == r.sha256


def test_paths_are_stored_relative_and_a_moved_workspace_still_resolves(tmp_path):
    src_dir = tmp_path / "incoming"
    port = _write_port_scene(src_dir / "a.tif", scene_id="MOVE 1")
    ws = Workspace.open(tmp_path / "ws")
    source = LocalFolderSource(src_dir)
    (ref,) = source.search(port, datetime(2024, 1, 1, tzinfo=UTC),
                           datetime(2024, 12, 31, tzinfo=UTC))
    assert fetch_into_workspace(source, ref, port, ws).status == "stored"
    conn = sqlite3.connect(ws.db_path)
    (stored,) = conn.execute("SELECT path FROM scenes").fetchone()
    conn.close()
    assert not stored.startswith("/") and stored.startswith("scenes/chongjin/2024-03-01/")
    moved = shutil.move(str(tmp_path / "ws"), str(tmp_path / "elsewhere"))
    again = Workspace.open(moved)
    (record,) = again.list_scenes()
    assert record.path == str(again.root / stored) and sha256_file(record.path) == record.sha256
    assert fetch_into_workspace(source, ref, port, again).status == "exists"


def test_old_absolute_paths_are_migrated_on_open_even_after_a_move(tmp_path):
    """Workspaces written before paths were relative hold absolute ones: opening one, even
    from a new folder, rewrites them relative to it."""
    src_dir = tmp_path / "incoming"
    port = _write_port_scene(src_dir / "a.tif", scene_id="OLD_1")
    ws = Workspace.open(tmp_path / "old")
    source = LocalFolderSource(src_dir)
    (ref,) = source.search(port, datetime(2024, 1, 1, tzinfo=UTC),
                           datetime(2024, 12, 31, tzinfo=UTC))
    fetch_into_workspace(source, ref, port, ws)
    conn = sqlite3.connect(ws.db_path)
    (relative,) = conn.execute("SELECT path FROM scenes").fetchone()
    conn.execute("UPDATE scenes SET path = ?", (str(ws.root / relative),))  # as older versions
    conn.commit()
    conn.close()
    moved = Workspace.open(shutil.move(str(ws.root), str(tmp_path / "new")))
    conn = sqlite3.connect(moved.db_path)
    assert conn.execute("SELECT path FROM scenes").fetchone()[0] == relative
    conn.close()
    assert moved.resolve(str(ws.root / relative)) == moved.root / relative
    assert moved.resolve(None) is None and moved.resolve("/nowhere/x.tif") == Path("/nowhere/x.tif")
