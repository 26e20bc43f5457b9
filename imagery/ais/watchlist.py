"""The watchlist of vessels of interest: importing it."""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

from imagery.ais.csv_rows import _csv_lines, _first_line, _shown, _split
from imagery.ais.queries import _watchlisted
from imagery.ais.records import (
    AisError,
    Tally,
    WatchlistReport,
    _imo,
    _open_binary,
    _until_damage,
    ensure_schema,
    name_key,
    printable,
)
from imagery.ais.rules import check_values
from imagery.workspace import Workspace, utc_now

WATCHLIST_ALIASES: dict[str, tuple[str, ...]] = {
    "mmsi": ("mmsi",),
    "imo": ("imo", "imo_number"),
    "name": ("name", "vessel_name", "vesselname", "shipname", "ship_name"),
    "note": ("note", "notes", "reason", "comment", "remarks"),
}

# --- watchlist -------------------------------------------------------------------------------


def import_watchlist(ws: Workspace, path: str | Path) -> WatchlistReport:
    """Add the vessels of a CSV (columns mmsi, imo, name, note; any subset with at least one
    identifier) to the watchlist; entries already listed are kept as they are. Rows are read
    as AIS CSV rows are (one per line); a damaged gzip adds nothing (AisError)."""
    path = Path(path)
    if not path.is_file():
        raise AisError(f"{path}: no such file")
    ensure_schema(ws)
    try:
        return _import_watchlist(ws, path)
    except OSError as exc:
        raise AisError(f"{path}: cannot read it ({exc.strerror or exc})") from None


def _import_watchlist(ws: Workspace, path: Path) -> WatchlistReport:
    report, tally = WatchlistReport(file=str(path)), Tally()
    rejected = tally.rejected
    with ws.transaction() as conn, _open_binary(path) as raw:
        handle = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="replace", newline="")
        lines = _until_damage(_csv_lines(handle, tally), path, tally)
        for entry in _watchlist_rows(lines, path, rejected):
            before = conn.total_changes
            conn.execute(
                "INSERT OR IGNORE INTO watchlist (entry_key, mmsi, imo, name, name_key, note,"
                " source_file, added_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (f"{entry[0] or ''}|{entry[1] or ''}|{name_key(entry[2]) or ''}", *entry[:2],
                 entry[2], name_key(entry[2]), entry[3], str(path.resolve()), utc_now()))
            added = conn.total_changes - before
            report.added += added
            report.already_listed += 1 - added
        if rejected["truncated_gzip"]:
            # Raised inside the transaction: a watchlist is taken whole or not at all.
            raise AisError(f"{path}: truncated gzip (the stream ends early); nothing added")
    report.rejected = dict(sorted((k, v) for k, v in rejected.items() if v))
    report.seen = _watchlisted(ws, _candidates(ws))
    return report


def describe_watchlist(report: WatchlistReport) -> list[str]:
    """Lines for the terminal: entries added, rows refused, stored AIS vessels now flagged."""
    lines = [f"{report.file}: {report.added} watchlist entries added, "
             f"{report.already_listed} already listed"]
    if report.rejected:
        lines.append("  rejected: " + ", ".join(f"{k} {v}" for k, v in report.rejected.items()))
    for mmsi, name, entry in report.seen:
        lines.append(f"  already in AIS: MMSI {mmsi} {printable(name)} (matched on "
                     f"{entry.matched_on}: {printable(entry.name)}; {printable(entry.note)})")
    return lines


def _watchlist_rows(lines: Iterable[str], path: Path,
                    rejected: Counter) -> Iterator[tuple[int | None, int | None, str | None,
                                                         str | None]]:
    lines = iter(lines)
    first = _first_line(lines, rejected, "empty_row")  # blank lines before the header
    header = [h.strip().lower() for h in _split(first, ",") or []]
    index = {key: next((header.index(a) for a in aliases if a in header), None)
             for key, aliases in WATCHLIST_ALIASES.items()}
    if all(index[k] is None for k in ("mmsi", "imo", "name")):
        raise AisError(f"{path}: a watchlist needs a header with mmsi, imo or name "
                       f"(and optionally note); found {_shown(header) or 'nothing'}")
    for line in lines:
        try:
            row = _split(line, ",")
        except csv.Error:
            rejected["unreadable_row"] += 1
            continue
        if row is None:  # a quote left open: this row only, the next line is read afresh
            rejected["unbalanced_quote"] += 1
            continue
        cell = {k: (row[i].strip() if i is not None and i < len(row) else "")
                for k, i in index.items()}
        problem, entry = _watchlist_entry(cell)
        if problem:
            rejected[problem] += 1
        elif entry:
            yield entry


def _watchlist_entry(cell: dict[str, str]) -> tuple[str | None, tuple | None]:
    if not any(cell[k] for k in ("mmsi", "imo", "name")):
        return ("empty_row" if not any(cell.values()) else "no_identifier"), None
    if cell["mmsi"] and (not re.fullmatch(r"\d{9}", cell["mmsi"])
                         or check_values({"mmsi": int(cell["mmsi"])})[0]):
        return "bad_mmsi", None
    imo = _imo(cell["imo"]) if cell["imo"] else None
    if cell["imo"] and imo is None:
        return "bad_imo", None
    mmsi = int(cell["mmsi"]) if cell["mmsi"] else None
    return None, (mmsi, imo, cell["name"] or None, cell["note"] or None)


def _candidates(ws: Workspace) -> set[int]:
    """MMSIs of stored AIS vessels that may be on the watchlist (by MMSI, IMO or name)."""
    conn = ws.connect()
    try:
        found = {mmsi for (mmsi,) in conn.execute(
            "SELECT mmsi FROM watchlist WHERE mmsi IN (SELECT mmsi FROM ais_positions) "
            "OR mmsi IN (SELECT mmsi FROM ais_vessels) "
            "UNION SELECT mmsi FROM ais_vessels WHERE imo IN (SELECT imo FROM watchlist)")}
        keys = {k for (k,) in conn.execute("SELECT name_key FROM watchlist WHERE name_key "
                                           "IS NOT NULL")}
        if keys:
            # Names are normalised in Python, so this one is a scan of the named vessels.
            found |= {mmsi for mmsi, name in conn.execute(
                "SELECT mmsi, name FROM ais_vessels WHERE name IS NOT NULL")
                if name_key(name) in keys}
        return found
    finally:
        conn.close()
