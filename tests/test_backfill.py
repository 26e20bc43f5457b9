"""`berthwatch backfill`: on a LocalCluster, killed and resumed, and without a cluster, it
stores exactly what `run` stores over the same simulated scenes; bad cluster input gets one
line and leaves the workspace as it was; a worker lost mid-run only delays its scene.

Compared row by row: every pipeline table (scenes, processing, detections, zone_counts,
matches, ais_only, alerts, episodes) except `scenes.fetched_at`, the wall-clock time a scene
was cataloged (the only timestamp in them; none holds a duration), with the workspace's own
folder written as <WS>; and the files: detections GeoJSON, evidence chips and stored scenes,
byte for byte.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from workspace_tables import table_rows

from imagery.cli import main
from imagery.ports import get_port
from imagery.simulate import SimulatedSource

START = datetime(2024, 3, 1, tzinfo=UTC)
END = datetime(2024, 3, 5, tzinfo=UTC)  # --end takes the whole day
PORTS = ("chongjin", "vostochny")
TABLES = ("scenes", "processing", "detections", "zone_counts", "matches", "ais_only", "alerts",
          "episodes")
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def dump(workspace: Path) -> dict:
    """Every row of the pipeline tables (less `fetched_at`) and every file they point at."""
    out = table_rows(workspace, TABLES, lambda key: key == "fetched_at")
    files = {}
    for folder in ("detections", "evidence"):
        for path in sorted((workspace / folder).rglob("*")):
            if path.is_file():
                files[path.relative_to(workspace).as_posix()] = _digest(path)
    for row in out["scenes"]:
        stored = dict(row).get("path")
        if stored:
            files[stored] = _digest(workspace / stored)
    out["files"] = files
    return out


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _feed(path: Path) -> Path:
    """One vessel moored in a berth of each port all week: both ports have AIS coverage."""
    from imagery.demo import _nmea

    lines = []
    for mmsi, (port, zone) in enumerate((("chongjin", "east-harbour"),
                                         ("vostochny", None)), start=445000001):
        p = get_port(port)
        c = (p.zone(zone) if zone else p.zones[0]).geometry.centroid
        t = START - timedelta(days=1)
        while t < END + timedelta(days=2):
            lines += _nmea({"type": 1, "mmsi": mmsi, "lon": c.x, "lat": c.y, "speed": 0.0,
                            "course": 0, "heading": 511, "status": 5}, int(t.timestamp()))
            t += timedelta(hours=3)
    path.write_text("\n".join(lines) + "\n")
    return path


def _workspace(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    assert main(["ais", "import", str(_feed(root / "feed.nm4")), "--workspace", str(root)]) == 0
    return root


def _options(ws: Path, weights: Path) -> list[str]:
    return ["--source", "simulated", "--seed", "7", "--max-cloud", "100", "--weights",
            str(weights), "--threshold", "0.1", "--workspace", str(ws)]


def _backfill(ws: Path, weights: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "imagery.cli", "backfill", "--port", *PORTS, "--start",
            START.strftime("%Y-%m-%d"), "--end", END.strftime("%Y-%m-%d"), *extra,
            *_options(ws, weights)]


def _done(cmd: list[str]) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def by_run(tiny_weights, tmp_path_factory) -> dict:
    """`run` over both ports, in a fresh process as cron would start it."""
    ws = _workspace(tmp_path_factory.mktemp("run"))
    _done([sys.executable, "-m", "imagery.cli", "run", "--since", START.strftime("%Y-%m-%d"),
           "--until", END.strftime("%Y-%m-%d"), *_options(ws, tiny_weights)])
    expected = dump(ws)
    processed = [r for r in expected["processing"] if ("status", "done") in r]
    assert len({dict(r)["port"] for r in expected["scenes"]}) == 2 and len(processed) >= 4
    assert expected["detections"] and expected["alerts"]
    return {"ws": ws, "dump": expected}


def test_backfill_on_a_local_cluster_equals_run(by_run, tiny_weights, tmp_path):
    ws = _workspace(tmp_path / "bf")
    # Chongjin's scenes are fetched beforehand, unprocessed: the workers detect in the stored
    # files the coordinator sends them; Vostochny's they fetch themselves.
    assert main(["fetch", "--port", "chongjin", "--start", START.strftime("%Y-%m-%d"),
                 "--end", END.strftime("%Y-%m-%d"), *_options(ws, tiny_weights)[:6],
                 "--workspace", str(ws)]) == 0
    done = _done(_backfill(ws, tiny_weights, "--cluster", "local:2"))
    assert "2 exists" in done.stdout
    assert "failed: 0" in done.stdout
    assert dump(ws) == by_run["dump"]
    again = _done(_backfill(ws, tiny_weights))
    assert "processed: 0; alerts: 0" in again.stdout  # a second backfill adds nothing


def test_backfill_without_a_cluster_equals_run(by_run, tiny_weights, tmp_path):
    ws = _workspace(tmp_path / "bf")
    _done(_backfill(ws, tiny_weights))
    assert dump(ws) == by_run["dump"]


def _done_rows(ws: Path) -> int:
    try:
        conn = sqlite3.connect(f"file:{ws / 'berthwatch.sqlite'}?mode=ro", uri=True, timeout=1)
        try:
            return conn.execute("SELECT COUNT(*) FROM processing WHERE status = 'done'"
                                ).fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error:
        return 0  # not created yet


def test_a_backfill_killed_then_restarted_loses_and_doubles_nothing(by_run, tiny_weights,
                                                                      tmp_path):
    expected = by_run["dump"]
    total = sum(("status", "done") in r for r in expected["processing"])
    ws = _workspace(tmp_path / "bf")
    proc = subprocess.Popen(_backfill(ws, tiny_weights, "--cluster", "local:2"), env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while _done_rows(ws) < 1 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)  # the coordinator only
        proc.wait()
    finally:
        try:  # its worker processes exit with it; make sure of it
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    killed_at = _done_rows(ws)
    assert 1 <= killed_at < total, f"killed with {killed_at} of {total} scenes done"
    _done(_backfill(ws, tiny_weights))  # resumed here (the cluster path is the same planning)
    assert dump(ws) == expected
    assert not list(ws.rglob("*.backfill-part")) and not list(ws.rglob("*.tmp"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_cluster_is_one_line_and_changes_nothing(by_run, tiny_weights,
                                                                tmp_path):
    ws = tmp_path / "copy"
    shutil.copytree(by_run["ws"], ws)
    before = dump(ws), sorted(p.as_posix() for p in ws.rglob("*"))
    address = f"tcp://127.0.0.1:{_free_port()}"
    cmd = _backfill(ws, tiny_weights, "--cluster", address)
    cmd[cmd.index("--end") + 1] = "2024-03-12"  # scenes it would fetch, were it reachable
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and address in lines[0] and "cannot reach" in lines[0], done.stderr
    assert (dump(ws), sorted(p.as_posix() for p in ws.rglob("*"))) == before


class DiesOnceSource(SimulatedSource):
    """Kills the worker process fetching its first scene, once (a flag file remembers)."""

    def __init__(self, seed: int, flag: str):
        super().__init__(seed=seed)
        self.flag = flag

    def fetch(self, ref, port, dest):
        try:
            fd = os.open(self.flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return super().fetch(ref, port, dest)
        os.write(fd, f"{ref.scene_id} {os.getpid()}".encode())
        os.close(fd)
        os.kill(os.getpid(), signal.SIGKILL)


def test_a_worker_lost_mid_run_only_delays_its_scene(by_run, tiny_weights, tmp_path):
    import cloudpickle

    from imagery.backfill import backfill, cluster_client
    from imagery.pipeline import open_workspace

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests
    ws_path = _workspace(tmp_path / "bf")
    flag = tmp_path / "died"
    source = DiesOnceSource(7, str(flag))
    ports = [get_port(p) for p in PORTS]
    with cluster_client("local:2") as client:
        report = backfill(open_workspace(ws_path), ports, source, START,
                          END + timedelta(days=1) - timedelta(seconds=1), client=client,
                          max_cloud=100, weights=str(tiny_weights), threshold=0.1,
                          progress=False)
    assert flag.exists(), "no worker was killed: the test did not test anything"
    assert report.failed == {}
    assert dump(ws_path) == by_run["dump"]


def test_a_worker_without_berthwatch_is_one_clear_line(tmp_path):
    from distributed import LocalCluster

    from imagery.backfill import BackfillError, cluster_client

    preload = tmp_path / "no_berthwatch.py"  # as if the package were not installed there
    preload.write_text("import sys\nsys.modules['imagery'] = None\n")
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                      dashboard_address=None, preload=[str(preload)]) as cluster:
        with pytest.raises(BackfillError) as caught:
            with cluster_client(cluster.scheduler_address):
                pass
    message = str(caught.value)
    assert "\n" not in message and "cannot run berthwatch" in message
    assert "ModuleNotFoundError" in message or "ImportError" in message


def test_sentinelhub_credentials_never_travel_to_workers(monkeypatch):
    import pickle

    from imagery.backfill import shippable_source
    from imagery.sentinelhub_source import SentinelHubSource

    secret = "s3cret-never-on-the-wire-0123456789"
    monkeypatch.setenv("SH_CLIENT_ID", "client-id")
    monkeypatch.setenv("SH_CLIENT_SECRET", secret)
    shipped = pickle.dumps(shippable_source(SentinelHubSource.from_env()))
    assert secret.encode() not in shipped and b"client-id" not in shipped


def test_the_model_is_loaded_once_for_many_scenes(tiny_weights, tmp_path, monkeypatch):
    import imagery.backfill as bf
    import imagery.detector as detector
    from imagery.pipeline import open_workspace

    loads = []
    real = detector.load_model
    monkeypatch.setattr(detector, "load_model", lambda *a, **k: loads.append(a) or real(*a, **k))
    monkeypatch.setattr(bf, "_MODELS", {})
    ws = open_workspace(tmp_path / "bf")
    report = bf.backfill(ws, [get_port("chongjin")], SimulatedSource(seed=7), START,
                         END + timedelta(days=1) - timedelta(seconds=1), max_cloud=100,
                         weights=str(tiny_weights), threshold=0.1, progress=False)
    assert len(report.processed) >= 2 and report.failed == {}
    assert len(loads) == 1
    assert list(bf._MODELS) == [(detector.get_weights(tiny_weights).sha256, "cpu",
                                 detector.resolve_precision(None, "cpu"))]


def test_a_local_folder_with_an_unreadable_file_gives_what_run_gives(tiny_weights, tmp_path):
    from imagery.backfill import backfill
    from imagery.pipeline import open_workspace, run_pass
    from imagery.simulate import acquisition_time, simulate_scene_file
    from imagery.sources import LocalFolderSource

    port = get_port("chongjin")
    folder = tmp_path / "scenes"
    for day in (2, 4):
        simulate_scene_file(port, acquisition_time(port, f"2024-03-0{day}"),
                            folder / f"chongjin-{day}.tif", seed=7, size=192)
    (folder / "broken.tif").write_bytes(b"not a GeoTIFF")
    got = {}
    for name, one_pass in (("run", run_pass), ("backfill", backfill)):
        ws = _workspace(tmp_path / name)
        report = one_pass(open_workspace(ws), [port], LocalFolderSource(folder), START,
                          END + timedelta(days=1), max_cloud=100, weights=str(tiny_weights),
                          threshold=0.1, progress=False)
        got[name] = dump(ws), report.fetched, sorted(report.skipped), len(report.processed)
    assert got["backfill"] == got["run"]
    assert got["run"][2] == ["file:broken.tif"] and got["run"][3] == 2
