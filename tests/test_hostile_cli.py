"""Hostile use of the `berthwatch` command, end to end through `python -m imagery.cli`: each
case must fail (or succeed) the way an analyst can act on: non-zero exit where it must fail,
one error line naming the file or value, no traceback, and the workspace unchanged.

Read-only workspaces are made really read-only: a read-only bind mount inside a user and mount
namespace (`unshare -r -m`), which refuses writes even to root (tests run as root here, where
chmod stops nothing). Where `unshare` is unavailable those tests skip and say why.

Concurrency is tested with two processes: a helper process holds the database's write lock (or
the run lock) for a few seconds while the command under test runs.
"""

from __future__ import annotations

import hashlib
import http.cookiejar
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import review_workspace as rw

from imagery.workspace import DB_NAME

RO_MOUNT = 'mount --bind "$1" "$1" && mount -o remount,ro,bind "$1" "$1" && shift && exec "$@"'


def cli(*args: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "imagery.cli", *args], capture_output=True,
                          text=True, timeout=timeout, **kw)


def cli_read_only(root: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """The command with `root` mounted read-only (for it alone)."""
    return subprocess.run(["unshare", "-r", "-m", "sh", "-c", RO_MOUNT, "sh", str(root),
                           sys.executable, "-m", "imagery.cli", *args],
                          capture_output=True, text=True, timeout=timeout)


def _unshare_works() -> str | None:
    try:
        probe = subprocess.run(["unshare", "-r", "-m", "sh", "-c", RO_MOUNT, "sh", "/tmp",
                                "true"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unshare unavailable: {exc}"
    return None if probe.returncode == 0 else f"unshare -r -m refused: {probe.stderr.strip()}"


needs_unshare = pytest.mark.skipif(bool(_unshare_works()), reason=str(_unshare_works()))


def snapshot(root: Path) -> dict[str, str]:
    """Every file under the workspace with its sha256 (the database included)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def one_error_line(result: subprocess.CompletedProcess, *names: str) -> str:
    """The failure is one stderr line naming what is wrong; no traceback."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, result.stderr
    for name in names:
        assert name in errors[0], errors[0]
    return errors[0]


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return result.stdout


@pytest.fixture
def demo(tmp_path) -> rw.Demo:
    return rw.build(tmp_path / "ws")


# --- item 10: a read-only workspace ------------------------------------------------------------


@needs_unshare
def test_reading_commands_work_on_a_read_only_workspace(demo):
    root = demo.ws.root
    before = snapshot(root)
    scenes = ok(cli_read_only(root, "scenes", "--workspace", str(root)))
    assert all(sid in scenes for sid in demo.scenes)
    table = ok(cli_read_only(root, "alerts", "--workspace", str(root)))
    assert demo.alert in table and "open" in table
    csv_text = ok(cli_read_only(root, "alerts", "--format", "csv", "--workspace", str(root)))
    assert csv_text.splitlines()[0].startswith("alert_id,status,")
    ok(cli_read_only(root, "ports", "--workspace", str(root)))
    assert snapshot(root) == before


@needs_unshare
@pytest.mark.parametrize("command", [
    ["run", "--no-fetch"],
    ["fetch", "--port", "vostochny", "--start", "2024-03-01", "--end", "2024-03-02",
     "--source", "simulated"],
    ["ais", "import", "AIS_FILE"],
    ["watchlist", "import", "AIS_FILE"],
    ["watch", "--no-fetch", "--every", "1s"],
    ["demo"],
])
def test_writing_commands_refuse_a_read_only_workspace_in_one_line(demo, tmp_path, command):
    root = demo.ws.root
    other = tmp_path / "ais.csv"
    other.write_text("mmsi,name\n273000009,SOMEONE\n")
    args = [str(other) if a == "AIS_FILE" else a for a in command]
    before = snapshot(root)
    result = cli_read_only(root, *args, "--workspace", str(root))
    one_error_line(result, "read-only", str(root))
    assert snapshot(root) == before


@needs_unshare
def test_chips_export_reads_a_read_only_workspace(demo, tmp_path):
    """It writes only to --out, so a read-only workspace is no obstacle."""
    root = demo.ws.root
    before = snapshot(root)
    out = ok(cli_read_only(root, "chips", "export", "--out", str(tmp_path / "chips"),
                           "--workspace", str(root)))
    assert "exported" in out
    assert snapshot(root) == before


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(url: str, opener, proc: subprocess.Popen, seconds: float = 60) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"review exited: {proc.stderr.read()}")
        try:
            with opener.open(url, timeout=5) as response:
                return response.read().decode()
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.3)
    raise AssertionError(f"{url} did not answer")


@needs_unshare
def test_review_serves_a_read_only_workspace_and_refuses_verdicts(demo):
    root, port = demo.ws.root, _free_port()
    before = snapshot(root)
    proc = subprocess.Popen(["unshare", "-r", "-m", "sh", "-c", RO_MOUNT, "sh", str(root),
                             sys.executable, "-m", "imagery.cli", "review", "--workspace",
                             str(root), "--listen-port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    base = f"http://127.0.0.1:{port}"
    try:
        queue = _wait_for(base + "/", opener, proc)
        assert urllib.parse.quote(demo.alert, safe="") in queue
        alert_url = f"{base}/alerts/{urllib.parse.quote(demo.alert, safe='')}"
        assert demo.alert in _wait_for(alert_url, opener, proc)
        csrf = next(c.value for c in jar if c.name == "bw_csrf")
        form = urllib.parse.urlencode({"verdict": "confirmed", "analyst": "ana",
                                       "csrf": csrf}).encode()
        with pytest.raises(urllib.error.HTTPError) as refused:
            opener.open(alert_url + "/verdict", data=form, timeout=10)
        assert refused.value.code == 409
        assert "read-only" in refused.value.read().decode()
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert "Traceback" not in err, err
    assert "read-only" in err  # the server says so when it starts
    assert snapshot(root) == before


# --- item 13 and 18: options and values the CLI must refuse ------------------------------------


@pytest.mark.parametrize("args, named", [
    (["review", "--listen-port", "99999"], "99999"),
    (["review", "--listen-port", "0"], "0"),
    (["review", "--port", "99999"], "99999"),
    (["review", "--listen-port", "http"], "http"),
    (["alerts", "--port", "nowhere"], "nowhere"),
    (["scenes", "--port", "nowhere"], "nowhere"),
    (["alerts", "--status", "maybe"], "maybe"),
    (["search", "--port", "chongjin", "--start", "2024-05-01", "--end", "2024-03-01",
      "--source", "simulated"], "2024-05-01"),
    (["fetch", "--port", "chongjin", "--start", "2024-05-01", "--end", "2024-03-01",
      "--source", "simulated"], "2024-05-01"),
    (["run", "--since", "2024-05-01", "--until", "2024-03-01", "--no-fetch"], "2024-05-01"),
    (["watch", "--since", "2024-05-01", "--until", "2024-03-01", "--no-fetch"], "2024-05-01"),
    (["alerts", "--since", "2024-05-01", "--until", "2024-03-01"], "2024-05-01"),
])
def test_bad_values_get_one_line_and_change_nothing(demo, args, named):
    root = demo.ws.root
    before = snapshot(root)
    one_error_line(cli(*args, "--workspace", str(root)), named)
    assert snapshot(root) == before


@pytest.mark.parametrize("command", [["scenes"], ["alerts"], ["review"],
                                     ["chips", "export", "--out", "OUT"]])
def test_reading_commands_refuse_a_mistyped_workspace(tmp_path, command):
    missing = tmp_path / "workspaec"
    args = [str(tmp_path / "out") if a == "OUT" else a for a in command]
    one_error_line(cli(*args, "--workspace", str(missing)), str(missing), DB_NAME)
    assert not missing.exists() and not (tmp_path / "out").exists()


def test_review_port_is_deprecated_but_works(demo):
    """`--port` still sets the TCP port (a bad one proves it is read), with a warning."""
    result = cli("review", "--port", "70000", "--workspace", str(demo.ws.root))
    one_error_line(result, "70000")
    help_text = ok(cli("review", "--help"))
    assert "--listen-port" in help_text and "--port" not in help_text.replace("--ports", "")


def test_review_old_port_spelling_still_sets_the_tcp_port(demo, monkeypatch, capsys):
    from imagery import cli as berthwatch

    started = []
    monkeypatch.setattr("uvicorn.run", lambda *a, **k: started.append(k["port"]))
    root = str(demo.ws.root)
    assert berthwatch.main(["review", "--port", "8081", "--workspace", root]) == 0
    assert "--port is deprecated" in capsys.readouterr().err
    assert berthwatch.main(["review", "--listen-port", "8082", "--workspace", root]) == 0
    assert "deprecated" not in capsys.readouterr().err
    assert started == [8081, 8082]


def test_version():
    assert ok(cli("--version")).startswith("berthwatch ")


def _parsers(parser):
    """The parser and every subparser under it, however deep (`ais import`...)."""
    yield parser
    for action in parser._actions:
        if isinstance(getattr(action, "choices", None), dict):
            for sub in action.choices.values():
                yield from _parsers(sub)


@pytest.mark.parametrize("command", [None, "train", "evaluate"])
def test_every_option_has_help(command):
    from imagery.cli import build_parser

    missing = [f"{p.prog} {'/'.join(a.option_strings)}"
               for p in _parsers(build_parser(command)) for a in p._actions
               if a.option_strings and not a.help]
    assert not missing, missing


# --- item 18: alerts status --------------------------------------------------------------------


def test_alerts_show_and_filter_the_review_status(demo):
    from imagery.review import db as review_db

    review_db.ensure_schema(demo.ws)
    review_db.record(demo.ws, scene_id=demo.scenes[1], action="verdict", analyst="ana",
                     alert_id=demo.alert, verdict="unsure")
    review_db.record(demo.ws, scene_id=demo.scenes[1], action="verdict", analyst="ana",
                     alert_id=demo.alert, verdict="confirmed")  # the latest verdict counts
    root = str(demo.ws.root)
    confirmed = ok(cli("alerts", "--status", "confirmed", "--workspace", root))
    assert demo.alert in confirmed and demo.false_alert not in confirmed
    assert "confirmed" in confirmed.splitlines()[1]
    open_rows = ok(cli("alerts", "--status", "open", "--format", "csv", "--workspace", root))
    assert demo.alert not in open_rows and demo.false_alert in open_rows
    geojson = ok(cli("alerts", "--format", "geojson", "--workspace", root))
    import json

    status = {f["properties"]["alert_id"]: f["properties"]["status"]
              for f in json.loads(geojson)["features"]}
    assert status[demo.alert] == "confirmed" and status[demo.false_alert] == "open"

    # The last day a date can name: --until means the whole of it, with no day after it to
    # count back from (a traceback before); the same alerts as with no --until.
    last_day = ok(cli("alerts", "--until", "9999-12-31", "--format", "csv", "--workspace", root))
    assert last_day == ok(cli("alerts", "--format", "csv", "--workspace", root))
    # ... and a bare --until still takes in that whole day.
    day = demo.ws.connect().execute("SELECT substr(acquisition_time, 1, 10) FROM alerts "
                                    "WHERE alert_id = ?", (demo.alert,)).fetchone()[0]
    assert demo.alert in ok(cli("alerts", "--until", day, "--workspace", root))


# --- item 11: two processes --------------------------------------------------------------------

HOLD_DB = textwrap.dedent("""
    import sqlite3, sys, time
    conn = sqlite3.connect(sys.argv[1], isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("CREATE TABLE IF NOT EXISTS held (t REAL)")
    conn.execute("INSERT INTO held VALUES (?)", (time.time(),))
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
    conn.execute("COMMIT")
""")

HOLD_RUN_LOCK = textwrap.dedent("""
    import fcntl, sys, time
    handle = open(sys.argv[1], "a+")
    fcntl.flock(handle, fcntl.LOCK_EX)
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
""")


def _hold(script: str, path: Path, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", script, str(path), str(seconds)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_readers_and_a_run_get_through_while_another_process_writes(demo):
    """A writer holds the database for 4 s: `alerts` and `scenes` answer at once (WAL readers
    do not wait), `run` waits for the lock and then succeeds."""
    root = demo.ws.root
    holder = _hold(HOLD_DB, root / DB_NAME, 4)
    try:
        started = time.monotonic()
        assert demo.alert in ok(cli("alerts", "--workspace", str(root)))
        ok(cli("scenes", "--workspace", str(root)))
        assert time.monotonic() - started < 4  # they did not wait for the writer
        result = cli("run", "--no-fetch", "--port", "vostochny", "--workspace", str(root))
        assert holder.poll() is not None  # `run` finished after the writer let go
    finally:
        holder.wait(timeout=30)
    ok(result)
    assert "Traceback" not in result.stderr


def test_watch_retries_a_pass_while_another_run_holds_the_workspace(demo):
    """The holder keeps the run lock until watch reports its first pass failed, then lets go:
    the second pass runs."""
    root = demo.ws.root
    holder = _hold(HOLD_RUN_LOCK, root / "run.lock", 300)
    watch = subprocess.Popen([sys.executable, "-m", "imagery.cli", "watch", "--no-fetch",
                              "--port", "vostochny", "--every", "2s", "--max-passes", "2",
                              "--workspace", str(root)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    try:
        for line in watch.stdout:
            lines.append(line)
            if "pass failed" in line:
                break
    finally:
        holder.kill()
        holder.wait(timeout=30)
        rest, err = watch.communicate(timeout=300)
    out = "".join(lines) + rest
    assert watch.returncode == 0, err  # the second pass, after the holder let go, succeeded
    assert "Traceback" not in err, err
    assert out.count("] berthwatch run\n") == 2
    assert "pass failed" in out and "run.lock" in out


def _big_ais_csv(path: Path, rows: int) -> Path:
    head = "MMSI,BaseDateTime,LAT,LON,SOG,COG,Heading,VesselName,VesselType,Status,Length,Width"
    lines = [head]
    for i in range(rows):
        t = 1_709_251_200 + i
        when = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t))
        lines.append(f"{273000000 + i % 500},{when},{42.7 + (i % 997) * 1e-5:.6f},"
                     f"{133.07 + (i % 991) * 1e-5:.6f},0.1,0,511,SHIP {i % 500},80,5,100,20")
    path.write_text("\n".join(lines) + "\n")
    return path


def _import_state(root: Path) -> str | None:
    """'running' while the big file's import row is committed but unfinished."""
    import sqlite3

    conn = sqlite3.connect(root / DB_NAME)
    try:
        row = conn.execute("SELECT finished_at FROM ais_imports WHERE file LIKE '%big.csv'"
                           ).fetchone()
    finally:
        conn.close()
    return None if row is None else ("finished" if row[0] else "running")


def test_a_long_ais_import_lets_another_writer_in(demo, tmp_path):
    """An import of a large file commits in batches: a verdict written by another process
    while it runs is recorded before the import ends (with one transaction for the whole
    file, nothing of it is visible and every other writer waits until it ends)."""
    from imagery.review import db as review_db
    from imagery.workspace import Workspace

    feed = _big_ais_csv(tmp_path / "big.csv", 300_000)
    root = demo.ws.root
    ws = Workspace.open(root)
    review_db.ensure_schema(ws)
    importer = subprocess.Popen([sys.executable, "-m", "imagery.cli", "ais", "import",
                                 str(feed), "--workspace", str(root)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while _import_state(root) is None and importer.poll() is None:
            time.sleep(0.1)
        assert _import_state(root) == "running", "the import was never seen under way"
        review_db.record(ws, scene_id=demo.scenes[1], action="verdict", analyst="ana",
                         alert_id=demo.alert, verdict="confirmed")
        assert _import_state(root) == "running", "the verdict waited for the whole import"
    finally:
        out, err = importer.communicate(timeout=600)
    assert importer.returncode == 0, err
    assert _import_state(root) == "finished"
    conn = ws.connect()
    accepted = conn.execute("SELECT accepted FROM ais_imports WHERE file LIKE '%big.csv'"
                            ).fetchone()[0]
    conn.close()
    assert accepted == 300_000


# --- item 18: demo's set-aside count comes from the workspace, not the pass -------------------


def test_set_aside_count_is_read_from_the_stored_state(demo):
    """The review workspace's two unalerted, unmatched berthed detections (det 2 of the first
    and last scenes): a second `demo`, which processes nothing new, reports them again."""
    from imagery.demo import stored_set_aside

    assert stored_set_aside(demo.ws) == 2
