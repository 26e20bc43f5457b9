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


class UserError(Exception):
    """An error the user can fix; printed without a traceback, exit status 2."""


def _date(text: str) -> datetime:
    try:
        return parse_time(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 date or time") from None


def _end_date(text: str) -> datetime:
    moment = _date(text)
    # A bare date as --end means the whole of that day.
    return moment + timedelta(days=1) - timedelta(seconds=1) if len(text.strip()) == 10 else moment


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
            print(f"    {zone.kind:9s} {zone.name:32s} {area:6.2f} km2{flag}")
    return 0


def cmd_scenes(args: argparse.Namespace) -> int:
    from imagery.workspace import Workspace

    ws = Workspace.open(args.workspace)
    records = ws.list_scenes(args.port)
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
    from imagery.workspace import Workspace

    port, source = _port(args), _source(args)
    ws = Workspace.open(args.workspace)
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
    from imagery.detector import DetectorError, detect_scene

    port = get_port(args.port, args.ports) if args.port else None
    try:
        collection = detect_scene(args.scene, args.out, port=port, csv_path=args.csv,
                                  threshold=args.threshold, weights=_weights(args),
                                  threads=args.threads, min_length_m=args.min_length_m,
                                  tta=args.tta)
    except DetectorError as exc:
        raise UserError(str(exc)) from None
    top = collection["properties"]
    tta = ", 8 orientations averaged" if top["tta"] else ""
    print(f"{top['count']} vessel(s) in {top['scene_id']} (model {top['model']}, "
          f"threshold {top['threshold']:g}{tta}) -> {args.out}")
    for name, zone in top.get("zones", {}).items():
        print(f"    {name:32s} {zone['count']:3d} vessels, {zone['visible_fraction']:.0%} visible")
    if top.get("simulated"):
        print("    (SIMULATED scene)")
    return 0


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
    from imagery.pipeline import RunLocked, open_workspace, run_pass

    ports = [_port(args)] if args.port else list(_ports(args).values())
    source = None if args.no_fetch else _source(args)
    end = args.until or datetime.now(UTC)
    start = args.since or end - timedelta(days=14)
    ws = open_workspace(args.workspace)
    try:
        report = run_pass(ws, ports, source, start, end, max_cloud=args.max_cloud,
                          weights=args.weights, threshold=args.threshold, tta=args.tta)
    except (RunLocked, DetectorError) as exc:
        raise UserError(str(exc)) from None
    fetched = ", ".join(f"{v} {k}" for k, v in sorted(report.fetched.items())) or "none new"
    print(f"scenes fetched: {fetched}; processed: {len(report.processed)}; "
          f"alerts: {report.alerts}; failed: {len(report.failed)}")
    if report.under_cloud:
        print(f"    {set_aside_line(report.under_cloud)}")
    for what, reason in report.failed.items():
        print(f"    failed {what}: {reason}")
    return 1 if report.failed else 0


def cmd_run(args: argparse.Namespace) -> int:
    if args.redetect:
        return _redetect(args)
    return _run_once(args)


def _redetect(args: argparse.Namespace) -> int:
    from imagery.detector import DetectorError
    from imagery.pipeline import RunLocked, open_workspace
    from imagery.redetect import redetect

    ports = [_port(args)] if args.port else list(_ports(args).values())
    try:
        report = redetect(open_workspace(args.workspace), ports, args.weights, args.since,
                          args.threshold)
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

    passes = 0
    while True:
        started = time.monotonic()
        print(f"[{datetime.now(UTC):%Y-%m-%d %H:%M:%SZ}] berthwatch run")
        _run_once(args)  # one failed pass is reported, not fatal: the next one retries
        passes += 1
        if args.max_passes and passes >= args.max_passes:
            return 0
        time.sleep(max(0.0, args.every.total_seconds() - (time.monotonic() - started)))


def cmd_alerts(args: argparse.Namespace) -> int:
    from imagery.alerts import format_alerts, query_alerts
    from imagery.pipeline import open_workspace

    ws = open_workspace(args.workspace)
    rows = query_alerts(ws, port=args.port, since=args.since)
    sys.stdout.write(format_alerts(rows, args.format))
    return 0


# --- AIS, watchlist ---------------------------------------------------------------------------


def cmd_ais_import(args: argparse.Namespace) -> int:
    from imagery import ais
    from imagery.workspace import Workspace

    ws, errors = Workspace.open(args.workspace), []
    for path in args.files:
        # One bad file does not stop the others; each is its own transaction.
        try:
            report = ais.import_file(ws, path, args.format, args.received_at, args.columns)
        except ais.AisError as exc:
            errors.append(str(exc))
            continue
        print("\n".join(ais.describe_import(report)))
    if errors:
        raise UserError("; ".join(errors))
    return 0


def cmd_watchlist_import(args: argparse.Namespace) -> int:
    from imagery import ais
    from imagery.workspace import Workspace

    try:
        report = ais.import_watchlist(Workspace.open(args.workspace), args.file)
    except ais.AisError as exc:
        raise UserError(str(exc)) from None
    print("\n".join(ais.describe_watchlist(report)))
    return 0


def _add_ais_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("ais", help="import AIS (NMEA or CSV) into the workspace")
    actions = p.add_subparsers(dest="ais_command", required=True, metavar="ACTION")
    imp = actions.add_parser("import", parents=[common], help="import NMEA 0183 or CSV AIS files",
                             description="Import AIS files; a file already imported adds nothing.")
    imp.set_defaults(handler=cmd_ais_import)
    imp.add_argument("files", nargs="+", metavar="FILE")
    imp.add_argument("--format", choices=("nmea", "csv"), help="default: told by the content")
    imp.add_argument("--received-at", metavar="T[/T2]",
                     help="time (or range spread over the messages) for NMEA without times")
    imp.add_argument("--columns", metavar="FIELD=COLUMN,...",
                     help="CSV columns, e.g. mmsi=ship_id,time=ts,lat=y,lon=x (optional: sog, "
                          "cog, heading, name, imo, callsign, shiptype, status, length, width)")
    p = sub.add_parser("watchlist", help="vessels of interest flagged wherever they appear")
    actions = p.add_subparsers(dest="watchlist_command", required=True, metavar="ACTION")
    imp = actions.add_parser("import", parents=[common], help="add vessels from a CSV "
                             "(columns mmsi, imo, name, note)")
    imp.set_defaults(handler=cmd_watchlist_import)
    imp.add_argument("file", metavar="FILE")


def cmd_demo(args: argparse.Namespace) -> int:
    import time

    from imagery.demo import run_demo

    started = time.monotonic()
    workspace = args.workspace or "berthwatch-demo"
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
    print(f"timeline plot: {result.plot}")
    print(f"review the alerts: berthwatch review --workspace {workspace}")
    print(f"demo finished in {time.monotonic() - started:.0f} s")
    return 0


# --- review, chips export --------------------------------------------------------------------


def cmd_review(args: argparse.Namespace) -> int:
    import os

    from imagery.review import BindError, serve

    # The environment keeps the token out of `ps` and shell history.
    token = args.token or os.environ.get("BERTHWATCH_REVIEW_TOKEN") or None
    try:
        serve(args.workspace, args.host, args.port, token)
    except BindError as exc:
        raise UserError(str(exc)) from None
    return 0


def cmd_chips_export(args: argparse.Namespace) -> int:
    from imagery.pipeline import open_workspace
    from imagery.review_export import export_chips

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
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    p.add_argument("--token", help="require this token (default $BERTHWATCH_REVIEW_TOKEN)")
    p = sub.add_parser("chips", help="reviewed scenes as training chips")
    actions = p.add_subparsers(dest="chips_command", required=True, metavar="ACTION")
    exp = actions.add_parser("export", parents=[common], help="write reviewed scenes as "
                             "scene.tif + labels.geojson folders (the sen2ships layout)")
    exp.set_defaults(handler=cmd_chips_export)
    exp.add_argument("--out", required=True, metavar="DIR")


# --- train, evaluate (the only place imagery reaches into training) --------------------------


def cmd_train(args: argparse.Namespace) -> int:
    from training.train import run

    return _training_command(run, args)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from training.evaluate import run

    return _training_command(run, args)


def _training_command(run: Callable, args: argparse.Namespace) -> int:
    from imagery.detector import DetectorError

    try:
        run(args)
    except (DetectorError, FileNotFoundError, ValueError) as exc:
        # Bad folders, labels or weights: a message, not a traceback.
        raise UserError(str(exc)) from None
    return 0


def cmd_retrain(args: argparse.Namespace) -> int:
    from imagery.detector import DetectorError
    from imagery.pipeline import RunLocked
    from training.retrain import RetrainConfig, RetrainError, format_result, retrain

    cfg = RetrainConfig(steps=args.steps, threads=args.threads, noise=args.noise,
                        benchmark=args.benchmark, seed=args.seed, device=args.device)
    try:
        result = retrain(args.workspace, args.data, cfg)
    except (RetrainError, RunLocked, DetectorError) as exc:
        raise UserError(str(exc)) from None
    print(format_result(result))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from imagery import models
    from imagery.pipeline import open_workspace

    ws = open_workspace(args.workspace)
    try:
        if args.models_command == "promote":
            now = models.promote(ws, args.name)
            print(f"{ws.root}: now using {now.name} (sha256 {now.sha256[:12]}...)")
        elif args.models_command == "rollback":
            old, now = models.rollback(ws)
            print(f"{ws.root}: rolled back {old.name}; now using {now.name} "
                  f"(sha256 {now.sha256[:12]}...)")
        else:
            print(models.format_models(ws))
    except models.ModelsError as exc:
        raise UserError(str(exc)) from None
    return 0


def _add_learning_parsers(add: Callable) -> None:
    p = add("retrain", cmd_retrain, "fine-tune the workspace's model on its reviewed scenes, "
            "gate it on held-out reviews, register it (promoted only if better)")
    p.add_argument("--data", nargs="+", metavar="DIR", default=[],
                   help="base labelled folders mixed into training so it does not forget "
                        "(e.g. ../shared/data/sen2ships)")
    p.add_argument("--steps", type=int, default=300, help="fine-tuning steps (default 300)")
    p.add_argument("--noise", type=float, default=0.03,
                   help="F1 loss on the --data folders still counted as not worse (0.03)")
    p.add_argument("--benchmark", choices=("in-sample", "none"), default="in-sample",
                   help="score both models on the --data folders (default) or not")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    p.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    p = add("models", cmd_models, "the workspace's models: list, promote NAME, rollback")
    actions = p.add_subparsers(dest="models_command", metavar="ACTION")
    promote = actions.add_parser("promote", help="use NAME from now on")
    promote.add_argument("name")
    rollback = actions.add_parser("rollback", help="return to the model in use before this one")
    for action in (promote, rollback):  # --workspace after the action too
        action.add_argument("--workspace", metavar="DIR", default=argparse.SUPPRESS)


def _add_training_parsers(add: Callable, command: str | None) -> None:
    # Their options live in `training`, which imports torch: only load it when it is asked
    # for, so that `berthwatch ports` stays instant.
    p_train = add("train", cmd_train, "train detector weights on labelled folders")
    p_eval = add("evaluate", cmd_evaluate, "score weights on labelled folders, per port and pooled")
    if command == "train":
        from training import train

        train.add_arguments(p_train)
    elif command == "evaluate":
        from training import evaluate

        evaluate.add_arguments(p_eval)


# --- parser ----------------------------------------------------------------------------------


def _add_selection(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", required=True, help="port name (see `berthwatch ports`)")
    p.add_argument("--start", required=True, type=_date, help="first date, ISO 8601")
    p.add_argument("--end", required=True, type=_end_date, help="last date, ISO 8601")
    p.add_argument("--max-cloud", type=float, default=30.0,
                   help="cloud limit in percent (default 30)")
    p.add_argument("--source", choices=("sentinelhub", "local", "simulated"),
                   default="sentinelhub", help="where scenes come from (default sentinelhub)")
    p.add_argument("--from", dest="from_dir", help="folder of scene GeoTIFFs for --source local")
    p.add_argument("--seed", type=int, default=0, help="seed for --source simulated")


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
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler: Callable, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help_text, description=help_text)
        p.set_defaults(handler=handler)
        return p

    add("ports", cmd_ports, "list ports, AOI area and berth zones")
    add("scenes", cmd_scenes, "list the scenes the workspace holds").add_argument("--port")
    _add_selection(add("search", cmd_search, "search scenes of a port in a time range"))
    _add_selection(add("fetch", cmd_fetch, "fetch scenes of a port into the workspace"))
    p = add("simulate", cmd_simulate, "write a SIMULATED scene of a port (with its truth)")
    p.add_argument("--port", required=True)
    p.add_argument("--date", required=True, type=_date)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cloud", type=float, default=0.0, help="cloud cover to simulate, 0-1")
    p = add("detect", cmd_detect, "detect vessels in a scene and write GeoJSON")
    p.add_argument("scene", help="scene GeoTIFF in the scene format")
    p.add_argument("--port", help="port whose berth zones to count (default: none)")
    p.add_argument("--out", required=True, help="detections GeoJSON to write")
    p.add_argument("--csv", help="also write the detections as CSV")
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
        p.add_argument("--max-cloud", type=float, default=30.0)
        p.add_argument("--source", choices=("sentinelhub", "local", "simulated"),
                       default="sentinelhub")
        p.add_argument("--from", dest="from_dir", help="folder of scenes for --source local")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--no-fetch", action="store_true",
                       help="only process scenes already in the workspace")
        p.add_argument("--weights")
        p.add_argument("--threshold", type=float)
        p.add_argument("--tta", action="store_true",
                       help="detect with eight orientations of each chip averaged (~7x slower)")
        if name == "run":
            p.add_argument("--redetect", action="store_true",
                           help="reprocess stored scenes (since --since) with the model in use; "
                                "verdicts stay attached, alerts added or dropped are listed")
        if name == "watch":
            p.add_argument("--every", type=_interval, default=_interval("6h"))
            p.add_argument("--max-passes", type=int, default=0, help=argparse.SUPPRESS)
    _add_training_parsers(add, command)
    _add_learning_parsers(add)
    p = add("demo", cmd_demo, "run the whole pipeline offline on SIMULATED data")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--weights", help="weights name or .pt file (default: the shipped model)")
    p.add_argument("--threshold", type=float, help="score threshold (default: the model's)")
    p = add("alerts", cmd_alerts, "list undeclared port calls (unmatched berthed vessels)")
    p.add_argument("--port")
    p.add_argument("--since", type=_date)
    p.add_argument("--format", choices=("table", "csv", "geojson"), default="table")
    _add_ais_parsers(sub, common)
    _add_review_parsers(sub, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv[0] if argv else None).parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.handler(args) or 0)
    except (UserError, PortsError, SceneError) as exc:
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


if __name__ == "__main__":
    sys.exit(main())
