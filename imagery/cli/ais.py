"""`berthwatch ais import` and `berthwatch watchlist import`."""

from __future__ import annotations

import argparse
import sys

from imagery.cli import UserError, _writing_workspace


def cmd_ais_import(args: argparse.Namespace) -> int:
    from imagery import ais

    ws, failed, truncated = _writing_workspace(args, "ais import"), [], []
    for path in args.files:
        # Each file is its own unit (its own transaction): a bad one is named on one line and
        # the others still import.
        try:
            report = ais.import_file(ws, path, args.format, args.received_at, args.columns)
        except ais.AisError as exc:
            print(f"berthwatch ais import: error: {exc}", file=sys.stderr)
            failed.append(path)
            continue
        print("\n".join(ais.describe_import(report)))
        if report.truncated:
            print(f"berthwatch ais import: error: {path}: truncated gzip (the stream ends early); "
                  "its complete lines before the cut are stored; import a complete copy "
                  "(rows already stored are not stored twice)", file=sys.stderr)
            truncated.append(path)
    if not failed and not truncated:
        if len(args.files) > 1:
            print(f"ais import: {len(args.files)} files imported")
        return 0
    whole = len(args.files) - len(failed) - len(truncated)
    print(f"ais import: {whole} of {len(args.files)} files imported"
          + (f"; truncated, partly imported: {', '.join(truncated)}" if truncated else "")
          + (f"; failed, nothing imported: {', '.join(failed)}" if failed else ""),
          file=sys.stderr)
    return 2


def cmd_watchlist_import(args: argparse.Namespace) -> int:
    from imagery import ais

    ws = _writing_workspace(args, "watchlist import")
    try:
        report = ais.import_watchlist(ws, args.file)
    except ais.AisError as exc:
        raise UserError(str(exc)) from None
    print("\n".join(ais.describe_watchlist(report)))
    return 0


def add_ais_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
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
