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
