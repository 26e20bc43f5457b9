"""`berthwatch backfill`: the archive of many ports over a date range as one job, on this
machine or on a dask.distributed cluster.

What runs where. The workers (dask workers, or this process without a cluster) do the
expensive, pure part of each scene: fetch it into their own scratch folder, check it as `fetch`
does, detect vessels, and hand back the scene's file(s) as bytes with their sha256 and the
detections. They never touch the workspace, so they need no shared filesystem. The
coordinating process (the one running `berthwatch backfill`) searches, decides what is new, and
is the ONLY writer of the workspace: it writes each returned file under a temporary name,
checks its sha256 against the worker's, renames it into place and catalogs the scene (the
transaction `fetch` uses), then reconciles with AIS, writes the evidence chips and stores the
scene (the transaction `run` uses). Scenes stored earlier but not processed are read by the
coordinator, checked against their recorded sha256 and sent to a worker to detect.

Why it resumes. The coordinator holds the workspace's run lock, so nothing else writes. A file
is renamed into place only whole and verified; until its scene is cataloged it is not part of
the workspace (the next pass fetches it again and replaces it), and a scene is done only when
its results commit with the mark that it is done. So a coordinator killed at any point leaves
finished scenes, at most one cataloged scene still pending (finished next time) and temporary
files that the next backfill removes: nothing lost, nothing doubled. A worker that dies takes
nothing with it but its scratch folder; the scheduler reruns its scene elsewhere.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

from imagery.pipeline import (
    DEFAULT_GATES,
    RunReport,
    WorkspaceWriteError,
    ais_fix_count,
    classify_scene_error,
    count_processed,
    detections_file,
    pending_scenes,
    rebuild_episodes,
    record_scene_error,
    remove_temp_files,
    run_lock,
    store_detections,
    verify_stored_file,
)
from imagery.ports import Port
from imagery.reconcile import Gates
from imagery.sources import SceneRef, _fail, _skip, fetch_checked, record_stored
from imagery.workspace import Workspace, sha256_file

PARTIAL = ".backfill-part"  # suffix of a file the coordinator is still writing
CONNECT_TIMEOUT_S = 5.0  # reaching the scheduler
WORKERS_WAIT_S = 30.0  # for a first worker to join it
TASK_RETRIES = 2  # a task whose worker raised is rerun this many times elsewhere


class BackfillError(RuntimeError):
    """The backfill cannot go on as asked (cluster unreachable, a worker without berthwatch);
    the message is one line naming what is wrong. Scenes already stored stay stored."""


# --- what travels to a worker ------------------------------------------------------------------


@dataclass(frozen=True)
class WeightsBlob:
    """The detector's weights and metadata, shipped once to each worker (workers need no
    access to the workspace's models/ folder); a worker loads them once, keyed by sha256."""

    sha256: str
    metadata: dict
    data: bytes


@dataclass(frozen=True)
class SceneJob:
    """One scene for a worker: fetch it (`ref`), or detect in stored bytes (`stored`)."""

    scene_id: str
    port: Port
    file_name: str  # the scene's file name in the workspace (its sidecars share the stem)
    named_path: str  # the scene's path in the workspace, for messages only
    ref: SceneRef | None = None
    source: object = None
    max_cloud: float = 100.0
    stored: bytes | None = None
    threshold: float | None = None
    tta: bool = False
    device: str = "cpu"  # resolved on the worker: `auto` takes the worker's own GPU if any
    precision: str | None = None  # resolved on the worker too (detector.resolve_precision)


@dataclass
class SceneResult:
    """What a worker hands back: the fetch outcome (fetch jobs), the files fetched by name
    (the scene and any sidecar, e.g. a simulated scene's truth) with their sha256, and the
    detections or why detection failed (`error`: a classify_scene_error kind and reason)."""

    scene_id: str
    status: str = "stored"  # stored | skipped | failed (the fetch)
    reason: str | None = None
    cloud_fraction: float | None = None
    simulated: bool = False
    files: dict[str, bytes] = field(default_factory=dict)
    sha256: dict[str, str] = field(default_factory=dict)
    collection: dict | None = None
    error: tuple[str, str] | None = None


# --- the worker's side -----------------------------------------------------------------------

# (weights sha256, device, precision) -> (model, entry)
_MODELS: dict[tuple[str, str, str], tuple] = {}


def _model(blob: WeightsBlob, device: str = "cpu", precision: str | None = None):
    """The model, loaded once per worker process, device and precision."""
    from imagery.detector import resolve_device, resolve_precision

    device = resolve_device(device)
    precision = resolve_precision(precision, device)
    key = (blob.sha256, device, precision)
    if key not in _MODELS:
        from imagery.detector import load_model

        folder = Path(tempfile.mkdtemp(prefix="berthwatch-weights-"))
        try:
            weights = folder / blob.metadata["file"]
            weights.write_bytes(blob.data)
            (folder / f"{weights.stem}.json").write_text(json.dumps(blob.metadata))
            # load_model checks the sha256 before unpickling
            _MODELS[key] = load_model(weights, device, precision)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    return _MODELS[key]


def _scratch_root() -> str | None:
    """A dask worker's own local directory (dask purges those of dead workers), else /tmp."""
    try:
        from distributed import get_worker

        return get_worker().local_directory
    except (ImportError, ValueError):
        return None


def scene_task(job: SceneJob, blob: WeightsBlob) -> SceneResult:
    """Fetch (or take) one scene and detect in it, in a scratch folder of this process. Pure:
    it reads and writes nothing of the workspace; errors come back in the result."""
    scratch = Path(tempfile.mkdtemp(prefix="berthwatch-scene-", dir=_scratch_root()))
    try:
        path = scratch / job.file_name
        result = SceneResult(job.scene_id)
        if job.ref is not None:
            outcome = fetch_checked(job.source, job.ref, job.port, path, job.max_cloud)
            result.status, result.reason = outcome.status, outcome.reason
            result.cloud_fraction, result.simulated = outcome.cloud_fraction, outcome.simulated
            if outcome.status != "stored":
                return result
            for item in sorted(scratch.iterdir()):
                if item.is_file() and not item.name.startswith("."):
                    result.files[item.name] = item.read_bytes()
            result.sha256 = {name: _sha256(data) for name, data in result.files.items()}
        else:
            path.write_bytes(job.stored)
        _detect(job, blob, path, result)
        return result
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _detect(job: SceneJob, blob: WeightsBlob, path: Path, result: SceneResult) -> None:
    from imagery.detector import detect_scene

    try:
        result.collection = detect_scene(path, None, port=job.port, threshold=job.threshold,
                                         progress=False, tta=job.tta,
                                         loaded=_model(blob, job.device, job.precision))
    except Exception as exc:  # classified as `run` does; the coordinator records it
        result.error = classify_scene_error(exc, job.named_path)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class SentinelHubFromEnv:
    """Stands in for a SentinelHubSource on its way to a worker: the worker builds its own
    from ITS SH_CLIENT_ID / SH_CLIENT_SECRET, so the secret never crosses the network."""

    name = "sentinelhub"
    _built = None

    def fetch(self, ref: SceneRef, port: Port, dest: Path) -> Path:
        from imagery.sentinelhub_source import SentinelHubSource

        if SentinelHubFromEnv._built is None:
            SentinelHubFromEnv._built = SentinelHubSource.from_env()
        return SentinelHubFromEnv._built.fetch(ref, port, dest)


def shippable_source(source):
    """The source as a worker gets it (a Sentinel Hub source without its credentials)."""
    return SentinelHubFromEnv() if getattr(source, "name", "") == "sentinelhub" else source


# --- the coordinator's side --------------------------------------------------------------------


def weights_blob(weights: str | None) -> WeightsBlob:
    from imagery.detector import DetectorError, get_weights

    entry = get_weights(weights)
    data = entry.path.read_bytes()
    if _sha256(data) != entry.sha256:
        raise DetectorError(f"{entry.path}: sha256 mismatch with its metadata; refusing to use "
                            "the weights")
    return WeightsBlob(entry.sha256, entry.to_json(), data)


def backfill(ws: Workspace, ports: list[Port], source, start: datetime, end: datetime, *,
             client=None, max_cloud: float = 30.0, weights: str | None = None,
             threshold: float | None = None, gates: Gates = DEFAULT_GATES, tta: bool = False,
             progress: bool = True, device: str = "cpu",
             precision: str | None = None) -> RunReport:
    """Fetch, detect, reconcile and store every scene of `ports` between `start` and `end`
    that the workspace does not have done; per-scene work on `client`'s workers (a
    distributed.Client), or in this process when `client` is None. `device` is resolved
    where the detection runs (`auto`: each worker's GPU when it has one), and so is
    `precision` (`auto`: bf16 on a worker whose CPU computes it natively)."""
    from imagery.models import resolve_weights

    report = RunReport()
    with run_lock(ws):
        blob = weights_blob(resolve_weights(ws, weights))
        remove_partial_files(ws)
        try:
            jobs = []
            for port in ports:
                jobs += _plan(ws, port, source, start, end, max_cloud, gates, report)
            jobs = [replace(j, threshold=threshold, tta=tta, device=device,
                            precision=precision) for j in jobs]
            _run_jobs(ws, client, jobs, blob, gates, report, progress)
            for port in ports:
                rebuild_episodes(ws, port)
        except WorkspaceWriteError as exc:
            report.failed["workspace"] = str(exc)
        except (sqlite3.Error, OSError) as exc:
            report.failed["workspace"] = (f"cannot write the workspace {ws.root} ({exc}); "
                                          "the backfill stopped, nothing half-written was kept")
    return report


def remove_partial_files(ws: Workspace) -> int:
    """Files a killed coordinator was writing (never cataloged): removed under the lock."""
    removed = 0
    for leftover in ws.scenes_dir.glob(f"*/*/.*{PARTIAL}"):
        leftover.unlink(missing_ok=True)
        removed += 1
    return removed


def _plan(ws, port, source, start, end, max_cloud, gates, report) -> list[SceneJob]:
    """The scenes to fetch (new to the catalog, failed, or stored with their file gone),
    then the stored scenes still to process; the trivial outcomes (skipped earlier, already
    stored, unreadable local files) are recorded here as `fetch` records them."""
    jobs = []
    if source is not None:
        try:
            refs = source.search(port, start, end, max_cloud)
        except Exception as exc:  # a network failure must not end the backfill of other ports
            report.failed[f"search:{port.name}"] = f"{type(exc).__name__}: {exc}"
            refs = []
        shipped = shippable_source(source)
        for ref in refs:
            known = ws.scene(ref.scene_id)
            if known and known.status == "skipped":
                report.count("skipped")
                continue
            if known and known.status == "stored" and known.path and Path(known.path).exists():
                report.count("exists")
                continue
            if "unusable" in ref.extra:
                outcome = _skip(ws, ref, port, None, f"unusable scene: {ref.extra['unusable']} "
                                f"(file {ref.extra['path']})")
                _count_fetch(report, outcome)
                continue
            dest = ws.scene_path(port.name, ref.acquisition_time, ref.scene_id)
            jobs.append(SceneJob(ref.scene_id, port, dest.name, str(dest), ref=ref,
                                 source=shipped, max_cloud=max_cloud))
    fetching = {j.scene_id for j in jobs}
    for scene in pending_scenes(ws, port, gates):
        if scene["scene_id"] in fetching:
            continue  # its file is fetched again first, as `run` does
        # Its bytes are read when it is sent (a whole archive must not sit in memory).
        path = scene["path"] or ""  # none: _ready records it as changed, as `run` would
        jobs.append(SceneJob(scene["scene_id"], port, Path(path).name, path))
    return jobs


@dataclass(frozen=True)
class NotSent:
    """A stored scene that failed its checks before it could be sent (changed, unreadable)."""

    kind: str
    reason: str


def _ready(ws, job: SceneJob) -> SceneJob | NotSent:
    """A job as it is sent: a stored scene's bytes read now, once checked against the sha256
    recorded when it was fetched (as `run` checks before it processes)."""
    if job.ref is not None:
        return job
    try:
        scene = _scene_row(ws, job.scene_id)
        verify_stored_file(ws, scene)
        return replace(job, stored=Path(scene["path"]).read_bytes())
    except Exception as exc:
        return NotSent(*classify_scene_error(exc, job.named_path))


def _count_fetch(report: RunReport, outcome) -> None:
    report.count(outcome.status)
    if outcome.status == "failed":
        report.failed[outcome.ref.scene_id] = outcome.reason or "failed"
    elif outcome.status == "skipped" and not (outcome.reason or "").endswith("earlier)"):
        report.skipped[outcome.ref.scene_id] = outcome.reason or "skipped"


def _run_jobs(ws, client, jobs, blob, gates, report, progress) -> None:
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), desc="backfill", unit="scene", disable=not progress)
    done = failed = 0
    with bar:
        for job, result in _results(ws, client, jobs, blob):
            before = len(report.failed)
            _finish(ws, job, result, gates, report)
            failed += len(report.failed) > before
            done += len(report.failed) == before
            bar.set_postfix_str(f"done {done} failed {failed} left {len(jobs) - done - failed}",
                                refresh=False)
            bar.update()


def _results(ws, client, jobs: list[SceneJob], blob: WeightsBlob
             ) -> Iterator[tuple[SceneJob, SceneResult | NotSent | BaseException]]:
    """(job, result) as each finishes: in this process one by one, or on the cluster with a
    bounded number in flight (results carry scene bytes; the coordinator takes them as they
    come instead of letting the whole archive pile up)."""
    if client is None:
        for job in jobs:
            ready = _ready(ws, job)
            yield job, ready if isinstance(ready, NotSent) else scene_task(ready, blob)
        return
    from distributed import as_completed

    shipped = client.scatter(blob, broadcast=True)
    window = max(2, 2 * sum(client.nthreads().values()))  # keeps every worker busy
    queue, pending, unsent = iter(jobs), {}, []
    running = as_completed()

    def submit_next() -> None:
        for job in queue:
            ready = _ready(ws, job)
            if isinstance(ready, NotSent):
                unsent.append((job, ready))
                continue
            future = client.submit(scene_task, ready, shipped, pure=False, retries=TASK_RETRIES)
            pending[future] = job
            running.add(future)
            return

    for _ in range(window):
        submit_next()
    yield from _drain(unsent)
    for future in running:
        job = pending.pop(future)
        try:
            outcome = future.result()
        except Exception as exc:  # the task failed on every try, or its worker kept dying
            outcome = exc
        future.release()
        yield job, outcome
        submit_next()
        yield from _drain(unsent)


def _drain(unsent: list) -> Iterator:
    while unsent:
        yield unsent.pop(0)


def _finish(ws, job: SceneJob, result, gates, report) -> None:
    """Record one scene's result: its files and catalog entry (fetch jobs), then its
    detections reconciled and stored, as `run` would have."""
    if isinstance(result, BaseException):
        _task_failed(ws, job, result, report)
        return
    if isinstance(result, NotSent):
        record_scene_error(ws, job.scene_id, result.kind, result.reason, report)
        return
    port = job.port
    if job.ref is not None:
        outcome = _store_fetched(ws, job, result)
        _count_fetch(report, outcome)
        if outcome.status != "stored" or not _still_pending(ws, port, job.scene_id, gates):
            return
    scene = _scene_row(ws, job.scene_id)
    try:
        if result.error is not None:
            record_scene_error(ws, job.scene_id, *result.error, report)
            return
        try:
            verify_stored_file(ws, scene)
            geojson = detections_file(ws, port, job.scene_id)
            _write_json(result.collection, geojson)
            reconciled = store_detections(ws, port, scene, result.collection, geojson, gates)
        except WorkspaceWriteError:
            raise
        except Exception as exc:
            kind, reason = classify_scene_error(exc, scene["path"])
            record_scene_error(ws, job.scene_id, kind, reason, report)
            return
        count_processed(report, job.scene_id, reconciled)
    finally:
        remove_temp_files(ws, port, job.scene_id)


def _write_json(collection: dict, path: Path) -> None:
    from imagery.detector import _write_json as write  # the same bytes `detect_scene` writes

    write(collection, path)


def _task_failed(ws, job: SceneJob, exc: BaseException, report) -> None:
    if isinstance(exc, ImportError):
        raise BackfillError(f"a worker cannot import berthwatch ({type(exc).__name__}: "
                            f"{exc}); install the same berthwatch version on every worker")
    reason = f"worker task failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
    if job.ref is not None:
        dest = ws.scene_path(job.port.name, job.ref.acquisition_time, job.scene_id)
        _count_fetch(report, _fail(ws, job.ref, job.port, dest, reason))
    else:
        record_scene_error(ws, job.scene_id, "failed", reason, report)


def _store_fetched(ws, job: SceneJob, result: SceneResult):
    """The coordinator's half of `fetch_into_workspace`: the worker's outcome recorded, and
    for a usable scene its files written, verified and renamed into place, then cataloged."""
    ref, port = job.ref, job.port
    dest = ws.scene_path(port.name, ref.acquisition_time, ref.scene_id)
    if result.status == "skipped":
        return _skip(ws, ref, port, None, result.reason, result.cloud_fraction)
    if result.status == "failed":
        return _fail(ws, ref, port, dest, result.reason)
    if dest.name not in result.files:
        return _fail(ws, ref, port, dest, f"the worker returned no file {dest.name}")
    try:
        # Sidecars first (a simulated scene's truth): wherever a scene is, they are too.
        for name in sorted(result.files, key=lambda n: n == dest.name):
            _place(result.files[name], result.sha256[name], dest.parent / name)
    except (OSError, ValueError) as exc:
        return _fail(ws, ref, port, dest, f"cannot store {dest} ({exc})")
    return record_stored(ws, ref, port, dest, result.cloud_fraction, result.simulated)


def _place(data: bytes, digest: str, path: Path) -> None:
    """Write `data` under a temporary name, check its sha256, rename it into place."""
    if Path(path.name).name != path.name or path.name.startswith("."):
        raise ValueError(f"refusing the file name {path.name!r} from a worker")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{PARTIAL}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if sha256_file(tmp) != digest:
            raise ValueError(f"{path.name} arrived corrupted (sha256 differs from the worker's)")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _still_pending(ws, port, scene_id: str, gates: Gates) -> bool:
    """Whether `run` would process this scene now: not done, or done without AIS coverage
    that AIS imported since now gives."""
    conn = ws.connect()
    try:
        row = conn.execute("SELECT p.status, p.ais_coverage, s.acquisition_time FROM scenes s "
                           "LEFT JOIN processing p ON p.scene_id = s.scene_id "
                           "WHERE s.scene_id = ?", (scene_id,)).fetchone()
        if row is None or row["status"] != "done":
            return True
        if row["ais_coverage"] != 0:
            return False
        from imagery.pipeline import _as_time

        return ais_fix_count(conn, port, _as_time(row["acquisition_time"]), gates) > 0
    finally:
        conn.close()


def _scene_row(ws, scene_id: str) -> dict:
    conn = ws.connect()
    try:
        scene = dict(conn.execute("SELECT * FROM scenes WHERE scene_id = ?",
                                  (scene_id,)).fetchone())
    finally:
        conn.close()
    scene["path"] = str(ws.resolve(scene["path"])) if scene["path"] else None
    return scene


# --- the cluster -------------------------------------------------------------------------------


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("berthwatch")
    except PackageNotFoundError:
        return "unknown"


# Evaluated on each worker by `client.run(eval, ...)`: the builtin travels by name, so the probe
# itself needs nothing installed there, and a worker without berthwatch says so with its own
# ImportError instead of failing to unpickle the probe.
_PROBE = "__import__('imagery.backfill', fromlist=['package_version']).package_version()"


@contextmanager
def cluster_client(address: str, timeout_s: float = CONNECT_TIMEOUT_S):
    """A distributed.Client on `address` (a scheduler, e.g. tcp://host:8786) or on a new
    LocalCluster for `local:N` (N worker processes, one thread each), with every worker
    checked to run the same berthwatch; BackfillError in one line when it cannot be."""
    from distributed import Client, LocalCluster

    # dask's INFO lines (scheduler, nannies, comms) would bury the progress bar and summary.
    logging.getLogger("distributed").setLevel(logging.WARNING)
    cluster = None
    if address.startswith("local:"):
        count = address.removeprefix("local:")
        if not count.isdigit() or int(count) < 1:
            raise BackfillError(f"--cluster {address}: local:N needs a worker count N >= 1")
        # Its HTTP server on localhost and any free port: nothing listens beyond this machine.
        cluster = LocalCluster(n_workers=int(count), threads_per_worker=1, processes=True,
                               dashboard_address="127.0.0.1:0")
        address = cluster.scheduler_address
    try:
        try:
            client = Client(address, timeout=timeout_s)
        except (OSError, TimeoutError, ValueError, TypeError) as exc:
            first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
            raise BackfillError(f"cannot reach the dask scheduler at {address} within "
                                f"{timeout_s:g} s ({first})") from None
        try:
            _check_workers(client, address, WORKERS_WAIT_S)
            yield client
        finally:
            client.close()
    finally:
        if cluster is not None:
            cluster.close()


def _check_workers(client, address: str, timeout_s: float) -> None:
    try:
        client.wait_for_workers(1, timeout=timeout_s)
    except TimeoutError:
        raise BackfillError(f"the dask scheduler at {address} has no worker (waited "
                            f"{timeout_s:g} s); start some with `dask worker {address}`") from None
    ours = package_version()
    for worker, answer in client.run(eval, _PROBE, on_error="return").items():
        if isinstance(answer, BaseException):
            raise BackfillError(f"worker {worker} cannot run berthwatch ({type(answer).__name__}"
                                f": {answer}); install berthwatch {ours} on every worker")
        if answer != ours:
            raise BackfillError(f"worker {worker} runs berthwatch {answer}, this process {ours}; "
                                "install the same version on every worker")
