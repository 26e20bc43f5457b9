"""More hostile input to scene reading and the unattended pass: times out of range, scenes
without a time, a full disk while GDAL writes a scene or the run lock, a damaged database."""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from imagery import pipeline, scene
from imagery.cli import main
from imagery.ports import get_port
from imagery.scene import SCENE_BANDS, SceneError, open_scene, write_scene
from imagery.sources import LocalFolderSource, SceneRef, fetch_into_workspace
from imagery.workspace import Workspace, WorkspaceError

DATA = Path(__file__).parent / "data"
WHEN = datetime(2024, 3, 1, 1, 47, tzinfo=UTC)
UTM = Affine(10, 0, 600000, 0, -10, 4630000)
START, END = datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 12, 31, tzinfo=UTC)


def _retagged(path: Path, **tags: str) -> Path:
    """The good fixture scene with its tags changed ("" removes a tag)."""
    shutil.copy(DATA / "chongjin_64.tif", path)
    with rasterio.open(path, "r+") as dst:
        kept = {k: v for k, v in {**dst.tags(), **tags}.items() if v}
        # GDAL keeps tags it is not told to drop: rewrite the metadata domain whole.
        dst.update_tags(**{k: "" for k in dst.tags()})
        dst.update_tags(**kept)
    return path


@pytest.mark.parametrize("when", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:30:00-05:00"])
def test_an_acquisition_time_outside_utc_is_a_scene_error(tmp_path, when):
    path = _retagged(tmp_path / "s.tif", ACQUISITION_TIME=when)
    with pytest.raises(SceneError, match="acquisition time") as caught:
        open_scene(path)
    assert str(path) in str(caught.value)


def test_one_file_with_an_impossible_time_does_not_end_the_local_search(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(DATA / "chongjin_64.tif", folder / "good.tif")
    _retagged(folder / "odd.tif", ACQUISITION_TIME="0001-01-01T00:00:00+01:00", SCENE_ID="ODD")
    refs = LocalFolderSource(folder).search(get_port("chongjin"), START, END)
    assert [r.scene_id for r in refs] == ["FIXTURE_CHONGJIN", "file:odd.tif"]
    assert "acquisition time" in refs[1].extra["unusable"]


def test_a_local_scene_without_an_acquisition_time_is_reported_not_passed_over(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(DATA / "chongjin_64.tif", folder / "good.tif")
    _retagged(folder / "undated.tif", ACQUISITION_TIME="", SCENE_ID="UNDATED")
    _retagged(folder / "elsewhere.tif", ACQUISITION_TIME="", PORT="vostochny")
    assert open_scene(folder / "undated.tif").acquisition_time is None
    port, source = get_port("chongjin"), LocalFolderSource(folder)
    refs = source.search(port, START, END)
    # The undated file of another port is that port's business; this one's is reported.
    assert [r.scene_id for r in refs] == ["FIXTURE_CHONGJIN", "file:undated.tif"]
    ws = Workspace.open(tmp_path / "ws")
    outcome = fetch_into_workspace(source, refs[1], port, ws)
    assert outcome.status == "skipped" and "no acquisition time" in outcome.reason
    assert str(folder / "undated.tif") in outcome.reason


@pytest.mark.parametrize("tag", ["inf", "1e999"])
def test_an_infinite_reflectance_scale_is_refused(tmp_path, tag):
    path = _retagged(tmp_path / "s.tif", REFLECTANCE_SCALE=tag)
    with pytest.raises(SceneError, match="must be positive and finite"):
        open_scene(path)


# --- a full disk under GDAL ------------------------------------------------------------------


@pytest.fixture
def gdal_disk_full(monkeypatch):
    """GDAL's writes fail as they do on a full disk: "Write failed. See previous exception"
    (the ENOSPC stays inside GDAL), and the file system has no space left."""

    def failing_write(self, *args, **kwargs):
        raise rasterio.errors.RasterioIOError("Write failed. See previous exception for details.")

    monkeypatch.setattr(rasterio.io.DatasetWriter, "write", failing_write)
    monkeypatch.setattr(scene, "_space_left", lambda folder: 0)


def test_a_full_disk_while_gdal_writes_a_scene_is_an_enospc_and_leaves_nothing(
        tmp_path, gdal_disk_full):
    data = np.ones((5, 300, 300), np.uint16)
    with pytest.raises(OSError) as caught:
        write_scene(tmp_path / "s.tif", data, SCENE_BANDS, "EPSG:32652", UTM, scene_id="S",
                    port=None, source="test", acquisition_time=WHEN)
    assert caught.value.errno == errno.ENOSPC and "s.tif" in str(caught.value)
    assert list(tmp_path.iterdir()) == []


class _WritingSource:
    """A source that renders its scene with write_scene, as Sentinel Hub's does."""

    name = "test"

    def fetch(self, ref, port, dest):
        return write_scene(dest, np.ones((5, 64, 64), np.uint16), SCENE_BANDS, "EPSG:32652",
                           UTM, scene_id=ref.scene_id, port=port.name, source="test",
                           acquisition_time=ref.acquisition_time)


def test_fetch_records_a_full_disk_under_gdal_as_a_failure_to_retry(tmp_path, gdal_disk_full):
    ws = Workspace.open(tmp_path / "ws")
    ref = SceneRef("FULL", "chongjin", WHEN, "test")
    outcome = fetch_into_workspace(_WritingSource(), ref, get_port("chongjin"), ws)
    assert outcome.status == "failed" and outcome.reason.startswith("disk full writing ")
    assert ws.scene("FULL").status == "failed"  # retried by the next run
    assert not [p for p in ws.scenes_dir.rglob("*") if p.is_file()]


# --- a full disk or a damaged database before the pass starts --------------------------------


class _NoSpaceForWrites:
    """`os` for the pipeline module, with a disk that has no room left."""

    def __getattr__(self, name):
        return getattr(os, name)

    @staticmethod
    def write(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")


class _FullFile:
    """The run lock's file object on a full disk (how the pid was written before)."""

    def __init__(self, real):
        self._real = real

    def __getattr__(self, name):
        return getattr(self._real, name)

    def write(self, text):
        raise OSError(errno.ENOSPC, "No space left on device")

    def flush(self):
        pass


def test_a_full_disk_does_not_crash_the_run_lock(tmp_path, monkeypatch):
    ws = pipeline.open_workspace(tmp_path / "ws")
    monkeypatch.setattr(pipeline, "os", _NoSpaceForWrites())
    monkeypatch.setattr(pipeline, "open", lambda *a, **k: _FullFile(open(*a, **k)),
                        raising=False)
    with pipeline.run_lock(ws):
        pass
    report = pipeline.run_pass(ws, [], None, START, END, progress=False)
    assert report.failed == {}


def test_a_workspace_database_that_cannot_be_read_stops_the_pass_in_one_line(tmp_path,
                                                                            monkeypatch):
    ws = pipeline.open_workspace(tmp_path / "ws")

    def full(ws, weights):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr("imagery.models.resolve_weights", full)
    report = pipeline.run_pass(ws, [get_port("chongjin")], None, START, END, progress=False)
    assert "database or disk is full" in report.failed["workspace"]
    assert "pass stopped" in report.failed["workspace"]


@pytest.mark.parametrize("command", [["scenes"], ["run", "--no-fetch"]])
def test_a_damaged_database_is_one_line_not_a_traceback(tmp_path, capsys, command):
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "berthwatch.sqlite").write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(WorkspaceError, match="berthwatch.sqlite"):
        Workspace.open(ws)
    assert main([*command, "--workspace", str(ws)]) == 2
    err = capsys.readouterr().err
    assert "berthwatch.sqlite" in err and "file is not a database" in err
    assert len(err.strip().splitlines()) == 1
