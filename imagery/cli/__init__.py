"""The `berthwatch` command: one subcommand per pipeline stage.

Each handler is short: it parses its options, calls the stage's module and prints. Expected
failures (bad input, missing credentials) leave as `UserError` with exit status 2 and one
clear line, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from imagery.ports import Port, PortsError, get_port, load_ports
from imagery.scene import SceneError, parse_time
from imagery.sources import SourceAuthError, SourceError
from imagery.workspace import WorkspaceError

# An alert's review status: its latest verdict (imagery/review/db.py), open when none.
STATUSES = ("open", "confirmed", "rejected", "unsure")


class UserError(Exception):
    """An error the user can fix; printed without a traceback, exit status 2."""


def _date(text: str) -> datetime:
    try:
        return parse_time(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 date or time") from None


def _end_date(text: str) -> datetime:
    moment = _date(text)
    # A bare date as --end means the whole of that day (its last second: 9999-12-31 has no
    # day after it to count back from).
    return moment.replace(hour=23, minute=59, second=59) if len(text.strip()) == 10 else moment


def _tcp_port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port number") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"TCP port {value} is outside 1-65535")
    return value


def _check_order(start: datetime | None, end: datetime | None, first: str, last: str) -> None:
    """Reversed dates select nothing: say so rather than report an empty result."""
    if start is not None and end is not None and start > end:
        raise UserError(f"{first} {start:%Y-%m-%dT%H:%M:%SZ} is after {last} "
                        f"{end:%Y-%m-%dT%H:%M:%SZ}")


def _reading_workspace(args: argparse.Namespace):
    """A reading command's workspace: it must exist (a mistyped --workspace is refused, never
    created empty); a read-only one is read as it is."""
    from imagery.workspace import Workspace

    return Workspace.open(args.workspace, must_exist=True)


def _writing_workspace(args: argparse.Namespace, command: str, full_schema: bool = False):
    """A writing command's workspace, refused up front when read-only (nothing fetched,
    nothing written); `full_schema` adds the AIS and pipeline tables."""
    from imagery.workspace import Workspace

    Workspace.open(args.workspace).require_writable(command)
    if full_schema:
        from imagery.pipeline import open_workspace

        return open_workspace(args.workspace)
    return Workspace.open(args.workspace)


def _ports(args: argparse.Namespace) -> dict[str, Port]:
    return load_ports(args.ports)


def _port(args: argparse.Namespace) -> Port:
    return get_port(args.port, args.ports)


# --- ports, scenes -------------------------------------------------------------------------


def cmd_ports(args: argparse.Namespace) -> int:
    for port in _ports(args).values():
        print(f"{port.name}  {port.title}  EPSG:{port.epsg}  AOI {port.aoi_area_km2:.1f} km2  "
              f"({port.path})")
        for zone in port.zones:
            area = port.to_utm(zone.geometry).area / 1e6
            flag = "  [approximate]" if zone.approximate else ""
            print(f"    {zone.declared_kind:9s} {zone.name:32s} {area:6.2f} km2{flag}")
    return 0


def cmd_scenes(args: argparse.Namespace) -> int:
    port = _port(args).name if args.port else None
    ws = _reading_workspace(args)
    records = ws.list_scenes(port)
    if not records:
        print(f"workspace {ws.root} holds no scenes yet")
        return 0
    print(f"{'scene_id':40s} {'port':10s} {'acquired':20s} {'status':8s} {'cloud':>6s}  note")
    for r in records:
        cloud = "" if r.cloud_fraction is None else f"{r.cloud_fraction:.0%}"
        note = r.reason or ("simulated" if r.simulated else r.source)
        print(f"{r.scene_id:40s} {r.port:10s} {r.acquisition_time or '-':20s} {r.status:8s} "
              f"{cloud:>6s}  {note}")
    return 0


# --- search, fetch ---------------------------------------------------------------------------


def _source(args: argparse.Namespace):
    if args.source == "local":
        from imagery.sources import LocalFolderSource

        if not args.from_dir:
            raise UserError("--source local needs --from DIR")
        try:
            return LocalFolderSource(args.from_dir)
        except FileNotFoundError as exc:
            raise UserError(str(exc)) from None
    if args.source == "simulated":
        from imagery.simulate import SimulatedSource

        return SimulatedSource(seed=args.seed)
    from imagery.sentinelhub_source import CredentialsMissing, SentinelHubSource

    try:
        return SentinelHubSource.from_env()
    except CredentialsMissing as exc:
        raise UserError(str(exc)) from None


def cmd_search(args: argparse.Namespace) -> int:
    _check_order(args.start, args.end, "--start", "--end")
    port, source = _port(args), _source(args)
    refs = source.search(port, args.start, args.end, args.max_cloud)
    print(f"{len(refs)} scene(s) of {port.name} from {source.name}, "
          f"{args.start:%Y-%m-%d} to {args.end:%Y-%m-%d}, tile cloud <= {args.max_cloud:g}%")
    for ref in refs:
        cloud = "" if ref.cloud_cover is None else f"{ref.cloud_cover:5.1f}%"
        print(f"  {ref.scene_id}  {ref.acquisition_time:%Y-%m-%dT%H:%M:%SZ}  {cloud}")
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from imagery.sources import fetch_into_workspace

    _check_order(args.start, args.end, "--start", "--end")
    port, source = _port(args), _source(args)
    ws = _writing_workspace(args, "fetch")
    refs = source.search(port, args.start, args.end, args.max_cloud)
    counts: dict[str, int] = {}
    for ref in tqdm(refs, desc=f"fetch {port.name}", unit="scene"):
        outcome = fetch_into_workspace(source, ref, port, ws, args.max_cloud)
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
        if outcome.reason:
            tqdm.write(f"  {outcome.status}: {ref.scene_id}: {outcome.reason}")
    summary = ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "nothing found"
    print(f"{port.name}: {summary} (workspace {ws.root})")
    return 1 if counts.get("failed") else 0


# --- simulate --------------------------------------------------------------------------------


def cmd_simulate(args: argparse.Namespace) -> int:
    from imagery.simulate import simulate_scene_file

    port = _port(args)
    truth = simulate_scene_file(port, args.date, Path(args.out), seed=args.seed,
                                cloud_fraction=args.cloud)
    when = truth.acquisition_time.strftime("%Y-%m-%dT%H:%M:%SZ")
    print(f"SIMULATED scene of {port.name} at {when} written to {args.out}"
          f" with {len(truth.vessels)} simulated vessels (truth: {truth.truth_path})")
    return 0


# --- detect ----------------------------------------------------------------------------------


def cmd_detect(args: argparse.Namespace) -> int:
    from imagery.detector import DetectorError, load_model, resolve_device, resolve_precision

    many = len(args.scene) > 1 or args.out_dir
    if many and (args.out or args.csv):
        raise UserError("several scenes (or --out-dir) write DIR/NAME.geojson and NAME.csv: "
                        "give --out-dir, not --out or --csv")
    if not many and not args.out:
        raise UserError("give --out FILE.geojson (or --out-dir DIR)")
    port = get_port(args.port, args.ports) if args.port else None
    try:
        # One load for every scene: the model, its sha256 check, device and precision.
        device = resolve_device(args.device)
        loaded = load_model(_weights(args), device, resolve_precision(args.precision, device))
    except DetectorError as exc:
        raise UserError(str(exc)) from None
    if not many:
        return _detect_one(args, port, loaded, args.scene[0], args.out, args.csv)
    return _detect_many(args, port, loaded)


def _detect_one(args, port, loaded, scene, out, csv) -> int:
    from imagery.detector import DetectorError, detect_scene

    try:
        collection = detect_scene(scene, out, port=port, csv_path=csv,
                                  threshold=args.threshold, threads=args.threads,
                                  min_length_m=args.min_length_m, tta=args.tta, loaded=loaded,
                                  progress=len(args.scene) == 1)
    except DetectorError as exc:
        raise UserError(str(exc)) from None
    top = collection["properties"]
    tta = ", 8 orientations averaged" if top["tta"] else ""
    print(f"{top['count']} vessel(s) in {top['scene_id']} (model {top['model']}, "
          f"threshold {top['threshold']:g}{tta}) -> {out}")
    for name, zone in top.get("zones", {}).items():
        print(f"    {name:32s} {zone['count']:3d} vessels, {zone['visible_fraction']:.0%} visible")
    if top.get("simulated"):
        print("    (SIMULATED scene)")
    return 0


def _detect_many(args, port, loaded) -> int:
    """Every scene with the one loaded model; a bad scene is reported and skipped, never the
    end of the batch."""
    from tqdm import tqdm

    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = _output_names([Path(s) for s in args.scene])
    skipped = 0
    for scene, name in tqdm(list(zip(args.scene, names, strict=True)), desc="detect",
                            unit="scene"):
        try:
            _detect_one(args, port, loaded, scene, out_dir / f"{name}.geojson",
                        out_dir / f"{name}.csv")
        except (UserError, SceneError) as exc:
            skipped += 1
            tqdm.write(f"berthwatch detect: skipped {scene}: {exc}", file=sys.stderr)
    print(f"{len(names) - skipped} of {len(names)} scene(s) detected into {out_dir}"
          + (f"; {skipped} skipped" if skipped else ""))
    return 1 if skipped else 0


def _output_names(paths: list[Path]) -> list[str]:
    """One output name per scene: its file stem (its folder's name for the sen2ships layout's
    scene.tif); names two scenes would share get the hash of their path (workspace.file_stem)."""
    from imagery.workspace import file_stem

    names = [p.parent.name if p.stem == "scene" else p.stem for p in paths]
    return [file_stem(str(p.resolve())) if names.count(n) > 1 else n
            for p, n in zip(paths, names, strict=True)]


def _weights(args: argparse.Namespace) -> str | None:
    """--weights, else with --workspace the workspace's promoted model (imagery/models.py)."""
    if args.weights or not args.workspace:
        return args.weights
    from imagery.models import resolve_weights
    from imagery.pipeline import open_workspace

    return resolve_weights(open_workspace(args.workspace), None)


# --- run, watch, alerts ----------------------------------------------------------------------


def set_aside_line(count: int) -> str:
    return (f"set aside, not alerted: {count} unmatched detection(s) at berths on pixels the "
            "SCL marks cloud, cloud shadow, cirrus, no data or saturated")


def _run_once(args: argparse.Namespace) -> int:
    from imagery.detector import DetectorError
    from imagery.pipeline import run_pass

    ports = [_port(args)] if args.port else list(_ports(args).values())
    source = None if args.no_fetch else _source(args)
    end = args.until or datetime.now(UTC)
    start = args.since or end - timedelta(days=14)
    _check_order(start, end, "--since", "--until" if args.until else "now")
    device, precision = _device(args)  # before the workspace is touched
    ws = _writing_workspace(args, args.command, full_schema=True)
    try:
        report = run_pass(ws, ports, source, start, end, max_cloud=args.max_cloud,
                          weights=args.weights, threshold=args.threshold, tta=args.tta,
                          device=device, precision=precision)
    except DetectorError as exc:  # e.g. a promoted model whose file was altered
        raise UserError(str(exc)) from None
    _print_report(report)
    return 1 if report.failed else 0


def _print_report(report) -> None:
    fetched = ", ".join(f"{v} {k}" for k, v in sorted(report.fetched.items())) or "none new"
    print(f"scenes fetched: {fetched}; processed: {len(report.processed)}; "
          f"alerts: {report.alerts}; failed: {len(report.failed)}")
    if report.under_cloud:
        print(f"    {set_aside_line(report.under_cloud)}")
    if report.no_ais_coverage:
        print(f"    no AIS coverage: {report.no_ais_coverage} scene(s) had no AIS fix near their "
              f"time, so no alert; {report.no_coverage_detections} berthed detection(s) not "
              "compared (import AIS for that time and run again)")
    for what, reason in report.skipped.items():
        print(f"    skipped {what}: {reason}")
    for what, reason in report.failed.items():
        print(f"    failed {what}: {reason}")


def cmd_run(args: argparse.Namespace) -> int:
    from imagery.pipeline import RunLocked

    try:
        return _redetect(args) if args.redetect else _run_once(args)
    except RunLocked as exc:
        raise UserError(str(exc)) from None


def _redetect(args: argparse.Namespace) -> int:
    from imagery.detector import DetectorError
    from imagery.pipeline import RunLocked
    from imagery.redetect import redetect

    ports = [_port(args)] if args.port else list(_ports(args).values())
    device, precision = _device(args)
    ws = _writing_workspace(args, args.command, full_schema=True)
    try:
        report = redetect(ws, ports, args.weights, args.since,
                          args.threshold, device=device, precision=precision)
    except (RunLocked, DetectorError) as exc:
        raise UserError(str(exc)) from None
    print(f"redetected {len(report.scenes)} scene(s) with weights "
          f"{report.weights_sha256[:12]}...; {report.unchanged} already used them; alerts kept "
          f"{report.kept}, added {len(report.added)}, dropped {len(report.dropped)}")
    for alert_id in report.added:
        print(f"    added   {alert_id}")
    for alert_id in report.dropped:
        print(f"    dropped {alert_id}")
    for scene_id, reason in report.failed.items():
        print(f"    failed {scene_id}: {reason}")
    return 1 if report.failed else 0


def cmd_backfill(args: argparse.Namespace) -> int:
    """Many ports over a date range as one job; per-scene work on a dask cluster with
    --cluster (imagery/backfill.py says what runs where)."""
    from imagery.backfill import BackfillError, backfill, weights_blob
    from imagery.detector import DetectorError
    from imagery.pipeline import RunLocked

    ports = [get_port(name, args.ports) for name in dict.fromkeys(args.port)]
    _check_order(args.start, args.end, "--start", "--end")
    if args.cluster and args.from_dir:
        args.from_dir = os.path.abspath(args.from_dir)  # workers resolve it, not our cwd
    source = _source(args)
    # Without a cluster, refused here when this machine cannot use it; on a cluster, `auto`
    # and `cuda` are resolved by each worker for itself.
    device, precision = _device(args, here=not args.cluster)
    try:
        if args.weights:
            weights_blob(args.weights)  # bad weights are refused before any cluster starts
        with _maybe_cluster(args.cluster) as client:
            ws = _writing_workspace(args, "backfill", full_schema=True)
            report = backfill(ws, ports, source, args.start, args.end, client=client,
                              max_cloud=args.max_cloud, weights=args.weights,
                              threshold=args.threshold, tta=args.tta, device=device,
                              precision=precision)
    except (BackfillError, DetectorError, RunLocked) as exc:
        raise UserError(str(exc)) from None
    _print_report(report)
    return 1 if report.failed else 0


def _maybe_cluster(address: str | None):
    from contextlib import nullcontext

    from imagery.backfill import cluster_client

    return cluster_client(address) if address else nullcontext()


def _device(args: argparse.Namespace, here: bool = True) -> tuple[str, str | None]:
    """--device and --precision checked (imagery.detector.resolve_device and
    resolve_precision): one line when torch cannot use them. Not `here` (a cluster's workers
    resolve them): only their spelling is checked, and the precision stays as given."""
    from imagery.detector import (
        DetectorError,
        check_device_name,
        check_precision_name,
        resolve_device,
        resolve_precision,
    )

    try:
        if not here:
            return check_device_name(args.device), check_precision_name(args.precision)
        device = resolve_device(args.device)
        return device, resolve_precision(args.precision, device)
    except DetectorError as exc:
        raise UserError(str(exc)) from None


def _interval(text: str) -> timedelta:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        value, unit = float(text[:-1]), units[text[-1]]
    except (ValueError, KeyError, IndexError):
        message = f"{text!r} is not an interval like 30m, 6h or 1d"
        raise argparse.ArgumentTypeError(message) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"interval {text!r} must be positive")
    return timedelta(seconds=value * unit)


def cmd_watch(args: argparse.Namespace) -> int:
    import time

    _check_order(args.since, args.until, "--since", "--until")
    _device(args)  # a device torch cannot use fails now, before anything is written
    _writing_workspace(args, "watch")  # a read-only workspace fails now, not every interval
    passes, status = 0, 0
    while True:
        started = time.monotonic()
        print(f"[{datetime.now(UTC):%Y-%m-%d %H:%M:%SZ}] berthwatch run", flush=True)
        status = _watch_pass(args)
        passes += 1
        if args.max_passes and passes >= args.max_passes:
            return status
        time.sleep(max(0.0, args.every.total_seconds() - (time.monotonic() - started)))


def _watch_pass(args: argparse.Namespace) -> int:
    """One pass of `watch`. A failed pass (another run holds the workspace, the database
    stayed locked, the source is unreachable) is reported and retried at the next interval;
    only errors the user must fix (bad options, read-only workspace) stop the watch."""
    import sqlite3

    from imagery.pipeline import RunLocked
    from imagery.workspace import WorkspaceBusy

    try:
        return _run_once(args)
    except SourceAuthError:
        raise  # credentials do not mend themselves
    except (RunLocked, WorkspaceBusy, SourceError, sqlite3.OperationalError) as exc:
        print(f"    pass failed, retried in {args.every.total_seconds():g} s: {exc}", flush=True)
        return 1


def cmd_alerts(args: argparse.Namespace) -> int:
    from imagery.alerts import coverage_lines, format_alerts, no_coverage_scenes, query_alerts

    port = _port(args).name if args.port else None
    _check_order(args.since, args.until, "--since", "--until")
    ws = _reading_workspace(args)
    if not ws.has_table("alerts"):
        sys.stdout.write(format_alerts([], args.format))
        return 0
    rows = query_alerts(ws, port=port, since=args.since, until=args.until, status=args.status)
    gaps = no_coverage_scenes(ws, port=port, since=args.since, until=args.until)
    sys.stdout.write(format_alerts(rows, args.format, gaps))
    if args.format == "csv":  # CSV stays rows only: the coverage note goes to stderr
        for line in coverage_lines(gaps):
            print(line, file=sys.stderr)
    return 0


# --- AIS, watchlist ---------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    import time

    from imagery.demo import run_demo

    started = time.monotonic()
    workspace = args.workspace or "berthwatch-demo"
    args.workspace = workspace
    _writing_workspace(args, "demo")
    print("berthwatch demo: SIMULATED scenes and SIMULATED AIS of Chongjin and Vostochny")
    result = run_demo(workspace, seed=args.seed, weights=args.weights, threshold=args.threshold)
    print(f"\nSIMULATED undeclared port calls ({result.scenes} scenes):")
    from imagery.alerts import format_alerts, query_alerts
    from imagery.pipeline import open_workspace

    ws = open_workspace(workspace)
    for port, count in sorted(result.alerts_by_port.items()):
        print(f"\n{port}: {count} alert(s)")
        sys.stdout.write(format_alerts(query_alerts(ws, port=port)))
    print(f"\nagainst the simulation's truth: precision {result.precision:.2f}, "
          f"recall {result.recall:.2f} (tp {result.tp}, fp {result.fp}, fn {result.fn}; "
          f"{result.hidden_found} more on dark vessels the truth marks hidden by cloud)")
    print(set_aside_line(result.under_cloud))
    print(f"scenes skipped, not processed: {len(result.skipped)}")
    for scene_id, reason in result.skipped:
        print(f"    {scene_id}: {reason}")
    print(f"timeline plot: {result.plot}")
    print(f"review the alerts: berthwatch review --workspace {workspace}")
    for port, page in sorted(result.reports.items()):
        print(f"SIMULATED tanker-call report, {port}: {page}")
    print(f"demo finished in {time.monotonic() - started:.0f} s")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from imagery.pipeline import open_workspace
    from imagery.report import ReportError, write_report
    from imagery.tankers import config_with
    from imagery.workspace import Workspace, default_home

    port = _port(args)  # an unknown port or a bad zone file fails here, before any writing
    where = Workspace(args.workspace or default_home())
    if not where.db_path.is_file():  # a report reads a workspace; it never starts one
        raise UserError(f"{where.root}: not a berthwatch workspace (no {where.db_path.name})")
    if args.from_date and args.to_date and args.from_date > args.to_date:
        raise UserError(f"--from {args.from_date:%Y-%m-%d} is after --to {args.to_date:%Y-%m-%d}")
    try:
        config = config_with(args.set or [])
    except ValueError as exc:
        raise UserError(str(exc)) from None
    try:
        written = write_report(open_workspace(args.workspace), port, args.from_date,
                               args.to_date, args.out, config)
    except ReportError as exc:
        raise UserError(str(exc)) from None
    for month, c in written.monthly.items():
        state = next(m.state for m in written.result.months if m.month == month)
        figures = ("not seen" if state == "not seen" else
                   f"{c['detected']} tanker call(s): {c['declared']} AIS-declared, "
                   f"{c['undeclared']} undeclared, {c['confirmed']} analyst-confirmed")
        print(f"  {month}  {figures}")
    print(f"report: {written.page}")
    return 0


# --- review, chips export --------------------------------------------------------------------


def cmd_review(args: argparse.Namespace) -> int:
    import os

    from imagery.review import BindError, check_bind, serve

    if args.old_port is not None:
        print("berthwatch review: warning: --port is deprecated here (everywhere else --port "
              "is a harbour); use --listen-port", file=sys.stderr)
    listen = args.listen_port if args.listen_port is not None else args.old_port or 8000
    # The environment keeps the token out of `ps` and shell history.
    token = args.token or os.environ.get("BERTHWATCH_REVIEW_TOKEN") or None
    try:
        check_bind(args.host, token)  # a weak token is refused first, whatever the workspace
        ws = _reading_workspace(args)
        if ws.read_only:
            print(f"workspace {ws.root} is read-only: pages are served, verdicts and edits are "
                  "refused", file=sys.stderr)
        serve(ws.root, args.host, listen, token, ports_dir=args.ports)
    except BindError as exc:
        raise UserError(str(exc)) from None
    return 0


def cmd_chips_export(args: argparse.Namespace) -> int:
    from imagery.pipeline import open_workspace
    from imagery.review.export import export_chips

    _reading_workspace(args)  # refuse a mistyped --workspace before creating anything
    results = export_chips(open_workspace(args.workspace), args.out)
    for r in results:
        if r.skipped:
            print(f"  skipped {r.scene_id}: {r.skipped}")
        else:
            print(f"  {r.folder}: {r.labels} vessel label(s), {r.negatives} negative(s)")
    written = sum(1 for r in results if not r.skipped)
    print(f"{written} reviewed scene(s) exported to {args.out}")
    return 0


def _add_review_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("review", parents=[common], help="the analyst review web app",
                       description="Serve the analyst review pages (127.0.0.1 by default).")
    p.set_defaults(handler=cmd_review)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1; any other needs --token)")
    p.add_argument("--listen-port", type=_tcp_port, metavar="N",
                   help="TCP port to listen on, 1-65535 (default 8000)")
    # The old spelling of --listen-port: --port names a harbour in every other command.
    p.add_argument("--port", dest="old_port", type=_tcp_port, help=argparse.SUPPRESS)
    p.add_argument("--token", help="require this token (default $BERTHWATCH_REVIEW_TOKEN)")
    p = sub.add_parser("chips", help="reviewed scenes as training chips")
    actions = p.add_subparsers(dest="chips_command", required=True, metavar="ACTION")
    exp = actions.add_parser("export", parents=[common], help="write reviewed scenes as "
                             "scene.tif + labels.geojson folders (the sen2ships layout)")
    exp.set_defaults(handler=cmd_chips_export)
    exp.add_argument("--out", required=True, metavar="DIR",
                     help="folder to write the scene folders into (created if missing)")


# --- train, evaluate (the only place imagery reaches into training) --------------------------


# --- parser ----------------------------------------------------------------------------------


def _add_selection(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", required=True, help="port name (see `berthwatch ports`)")
    p.add_argument("--start", required=True, type=_date, help="first date, ISO 8601")
    p.add_argument("--end", required=True, type=_end_date, help="last date, ISO 8601")
    _add_source_options(p)


def _add_source_options(p: argparse.ArgumentParser) -> None:
    """Where scenes come from: search, fetch, run, watch and backfill."""
    p.add_argument("--max-cloud", type=float, default=30.0,
                   help="skip scenes whose AOI is more clouded, in percent (default 30)")
    p.add_argument("--source", choices=("sentinelhub", "local", "simulated"),
                   default="sentinelhub", help="where scenes come from (default sentinelhub)")
    p.add_argument("--from", dest="from_dir", help="folder of scene GeoTIFFs for --source local")
    p.add_argument("--seed", type=int, default=0, help="seed for --source simulated")


PRECISION_HELP = ("the model's arithmetic (default $BERTHWATCH_PRECISION, else auto: bf16 on "
                  "a CPU that computes it natively, where it is twice as fast; else fp32)")


def _add_model_options(p: argparse.ArgumentParser, device_note: str = "") -> None:
    """The detector of a pass: run, watch and backfill."""
    p.add_argument("--weights", help="weights name or .pt file (default: the workspace's model)")
    p.add_argument("--threshold", type=float, help="score threshold (default: the model's)")
    p.add_argument("--tta", action="store_true",
                   help="detect with eight orientations of each chip averaged (~7x slower)")
    p.add_argument("--device", default="auto",
                   help="auto, cpu, cuda or cuda:N (default auto: cuda when torch sees a GPU, "
                        f"else cpu{device_note})")
    p.add_argument("--precision", metavar="auto|fp32|bf16", help=PRECISION_HELP)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--ports", metavar="DIR", help="folder of port GeoJSON files "
                        "(default: the shipped Chongjin and Vostochny)")
    common.add_argument("--workspace", metavar="DIR",
                        help="workspace folder (default $BERTHWATCH_HOME or ~/.berthwatch)")
    common.add_argument("-v", "--verbose", action="store_true", help="log more")

    parser = argparse.ArgumentParser(
        prog="berthwatch",
        description="Count berthed vessels in Sentinel-2 scenes and surface undeclared port calls.",
    )
    parser.add_argument("--version", action="version", version=f"berthwatch {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler: Callable, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help_text, description=help_text)
        p.set_defaults(handler=handler)
        return p

    add("ports", cmd_ports, "list ports, AOI area and berth zones")
    add("scenes", cmd_scenes, "list the scenes the workspace holds").add_argument(
        "--port", help="only this port's scenes (default: all)")
    _add_selection(add("search", cmd_search, "search scenes of a port in a time range"))
    _add_selection(add("fetch", cmd_fetch, "fetch scenes of a port into the workspace"))
    p = add("simulate", cmd_simulate, "write a SIMULATED scene of a port (with its truth)")
    p.add_argument("--port", required=True, help="port name (see `berthwatch ports`)")
    p.add_argument("--date", required=True, type=_date, help="acquisition time, ISO 8601 (UTC)")
    p.add_argument("--out", required=True, help="scene GeoTIFF to write (truth JSON beside it)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--cloud", type=float, default=0.0, help="cloud cover to simulate, 0-1")
    p = add("detect", cmd_detect, "detect vessels in a scene and write GeoJSON")
    p.add_argument("scene", nargs="+", help="scene GeoTIFF(s) in the scene format")
    p.add_argument("--port", help="port whose berth zones to count (default: none)")
    p.add_argument("--out", help="detections GeoJSON to write (one scene)")
    p.add_argument("--out-dir", metavar="DIR",
                   help="write DIR/NAME.geojson and DIR/NAME.csv for each scene (several "
                        "scenes, one model load)")
    p.add_argument("--csv", help="also write the detections as CSV (one scene)")
    p.add_argument("--device", default="auto",
                   help="auto, cpu, cuda or cuda:N (default auto: cuda when torch sees a GPU, "
                        "else cpu)")
    p.add_argument("--precision", metavar="auto|fp32|bf16", help=PRECISION_HELP)
    p.add_argument("--threshold", type=float, help="score threshold (default: the model's)")
    p.add_argument("--min-length-m", type=float, metavar="M",
                   help="drop vessels estimated shorter than M metres (default: the model's; "
                        "0 keeps small boats)")
    p.add_argument("--weights", help="weights name or .pt file (default: the shipped model, or "
                   "with --workspace the workspace's promoted model)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    p.add_argument("--tta", action="store_true",
                   help="average the model over eight orientations of each chip (~7x slower; "
                        "its measured gain is in weights/MODEL_CARD.md)")
    for name, handler, text in (
        ("run", cmd_run, "one pass: search, fetch, detect, reconcile, alert"),
        ("watch", cmd_watch, "repeat `run` every interval"),
    ):
        p = add(name, handler, text)
        p.add_argument("--port", help="one port (default: all)")
        p.add_argument("--since", type=_date, help="search scenes since (default: 14 days ago)")
        p.add_argument("--until", type=_end_date, help="search scenes until (default: now)")
        _add_source_options(p)
        p.add_argument("--no-fetch", action="store_true",
                       help="only process scenes already in the workspace")
        _add_model_options(p)
        if name == "run":
            p.add_argument("--redetect", action="store_true",
                           help="reprocess stored scenes (since --since) with the model in use; "
                                "verdicts stay attached, alerts added or dropped are listed")
        if name == "watch":
            p.add_argument("--every", type=_interval, default=_interval("6h"),
                           help="interval between passes, e.g. 30m, 6h, 1d (default 6h)")
            p.add_argument("--max-passes", type=int, default=0, help=argparse.SUPPRESS)
    p = add("backfill", cmd_backfill, "the archive of several ports over a date range as one "
            "job, locally or on a dask cluster (--cluster)")
    p.add_argument("--port", required=True, nargs="+", help="port name(s) (see `berthwatch ports`)")
    p.add_argument("--start", required=True, type=_date, help="first date, ISO 8601")
    p.add_argument("--end", required=True, type=_end_date, help="last date, ISO 8601")
    p.add_argument("--cluster", metavar="ADDRESS",
                   help="dask scheduler address (tcp://host:8786), or local:N for N local worker "
                        "processes (default: run here, as `run` does)")
    _add_source_options(p)
    _add_model_options(p, "; with --cluster each worker resolves it for itself")
    from imagery.cli.learning import add_learning_parsers, add_training_parsers

    add_training_parsers(add, command)
    add_learning_parsers(add)
    p = add("demo", cmd_demo, "run the whole pipeline offline on SIMULATED data")
    p.add_argument("--seed", type=int, default=7, help="seed of the simulation (default 7)")
    p.add_argument("--weights", help="weights name or .pt file (default: the shipped model)")
    p.add_argument("--threshold", type=float, help="score threshold (default: the model's)")
    p = add("report", cmd_report, "tanker calls and estimated barrels of a port: charts, "
            "CSV, GeoJSON and one HTML page")
    p.add_argument("--port", required=True, help="port name (see `berthwatch ports`)")
    p.add_argument("--from", dest="from_date", type=_date, help="first date (default: first scene)")
    p.add_argument("--to", dest="to_date", type=_end_date, help="last date (default: last scene)")
    p.add_argument("--out", help="folder to write (default WORKSPACE/reports/PORT)")
    p.add_argument("--set", action="append", metavar="NAME=NUMBER",
                   help="change a tanker constant (imagery/tankers.py TankerConfig), e.g. "
                        "load_factor=0.33; repeatable")
    p = add("alerts", cmd_alerts, "list undeclared port calls (unmatched berthed vessels)")
    p.add_argument("--port", help="only this port's alerts (default: all)")
    p.add_argument("--since", type=_date, help="acquired at or after, ISO 8601")
    p.add_argument("--until", type=_end_date, help="acquired at or before, ISO 8601")
    p.add_argument("--status", choices=STATUSES,
                   help="only alerts with this review status (the latest verdict; open: none)")
    p.add_argument("--format", choices=("table", "csv", "geojson"), default="table",
                   help="output format (default table)")
    from imagery.cli.ais import add_ais_parsers

    add_ais_parsers(sub, common)
    _add_review_parsers(sub, common)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("berthwatch")
    except PackageNotFoundError:
        return "unknown (not installed)"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv[0] if argv else None).parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.handler(args) or 0)
    except (UserError, PortsError, SceneError, WorkspaceError) as exc:
        print(f"berthwatch {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except SourceAuthError as exc:
        print(f"berthwatch {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except SourceError as exc:
        print(f"berthwatch {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`berthwatch alerts | head`): nothing more to say to it.
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silences the flush at exit
        return 0

