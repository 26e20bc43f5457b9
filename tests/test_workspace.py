from datetime import UTC, datetime

import numpy as np
import pytest
from affine import Affine

from imagery.cli import main
from imagery.ports import get_port
from imagery.scene import SCENE_BANDS, write_scene
from imagery.sources import LocalFolderSource, fetch_into_workspace
from imagery.workspace import Workspace, default_home


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
    assert stored == ws.scenes_dir / "chongjin" / "2024-03-01" / "S2A_TEST_1.tif"
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
