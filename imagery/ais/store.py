"""Importing one AIS file: format detection, one transaction per file, batched writes."""

from __future__ import annotations

import io
import itertools
import json
import sqlite3
import time
from pathlib import Path

from imagery.ais.csv_rows import _csv_lines, _csv_records, parse_columns
from imagery.ais.nmea import _SENTENCE, _Clock, _nmea_records, nmea_lines
from imagery.ais.queries import _watchlisted
from imagery.ais.records import (
    AisError,
    ImportReport,
    Position,
    Static,
    Tally,
    _open_binary,
    _until_damage,
    ensure_schema,
    iso,
    parse_received_at,
    printable,
)
from imagery.workspace import Workspace, begin_immediate, sha256_file, utc_now

BATCH = 5000


# --- format detection ------------------------------------------------------------------------


def detect_format(path: Path) -> str:
    """'nmea' when one of the first lines holds a sentence, 'csv' when the first looks like a
    header with several columns."""
    tally = Tally()
    with _open_binary(path) as handle:
        head = itertools.islice(_until_damage(nmea_lines(handle, tally), path, tally), 200)
        lines = [line for line in head if line.strip()]
    if not lines and tally.rejected["truncated_gzip"]:
        raise AisError(f"{path}: truncated gzip (the stream ends before its first complete "
                       "line); nothing imported from it")
    if any(_SENTENCE.search(line) for line in lines):
        return "nmea"
    if lines and max(lines[0].count(sep) for sep in (b",", b";", b"\t", b"|")) >= 2:
        return "csv"
    raise AisError(f"{path}: cannot tell whether this is NMEA or CSV; give --format nmea|csv")


# --- storing ---------------------------------------------------------------------------------

_VESSEL_FIELDS = ("name", "imo", "callsign", "ship_type", "length_m", "width_m")
# A newer report's non-null value replaces the stored one; an older report only fills gaps.
_UPSERT_VESSEL = (
    "INSERT INTO ais_vessels (mmsi, name, imo, callsign, ship_type, length_m, width_m, updated_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(mmsi) DO UPDATE SET "
    + ", ".join(
        f"{f} = CASE WHEN excluded.{f} IS NOT NULL AND (ais_vessels.{f} IS NULL OR "
        f"excluded.updated_at >= ais_vessels.updated_at) THEN excluded.{f} ELSE ais_vessels.{f} END"
        for f in _VESSEL_FIELDS)
    + ", updated_at = MAX(COALESCE(ais_vessels.updated_at, ''), excluded.updated_at)"
)
# Static data waits here (a table of this connection only) until the file is read through:
# batches of positions are committed as the import goes, and `_forget_unfinished` takes them
# back if the file is then refused (a corrupt gzip's CRC fails at its very end), but vessel
# updates merged into ais_vessels could not be taken back.
_PENDING_STATIC = (
    "CREATE TEMP TABLE IF NOT EXISTS ais_static_pending (mmsi INTEGER, name TEXT, imo INTEGER,"
    " callsign TEXT, ship_type INTEGER, length_m REAL, width_m REAL, updated_at TEXT)"
)
_INSERT_POSITION = (
    "INSERT OR IGNORE INTO ais_positions (mmsi, time, t_epoch, lon, lat, sog_kn, cog_deg,"
    " heading_deg, nav_status, msg_type, import_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


# An import commits its rows this often and then pauses, so that `run`, `review` verdicts and
# other writers waiting on the database get the write lock between batches (SQLite's busy
# handler polls at most every 100 ms, hence a pause a little longer than that).
COMMIT_EVERY_S = 2.0
YIELD_S = 0.15


class _Store:
    """Buffers records and writes them in batches inside the caller's transaction, which it
    commits and reopens every COMMIT_EVERY_S: a huge file never holds the write lock long."""

    def __init__(self, conn: sqlite3.Connection, import_id: int):
        self.conn, self.import_id = conn, import_id
        self.committed_at = time.monotonic()
        self.batch: list[tuple] = []
        self.accepted = self.duplicates = self.static_updates = 0
        self.seen: set[int] = set()
        self.last_static: dict[int, tuple] = {}
        self.t_min: int | None = None
        self.t_max: int | None = None
        conn.execute(_PENDING_STATIC)
        conn.execute("DELETE FROM temp.ais_static_pending")

    def add(self, record: Position | Static) -> None:
        self.seen.add(record.mmsi)
        self.t_min = record.t if self.t_min is None else min(self.t_min, record.t)
        self.t_max = record.t if self.t_max is None else max(self.t_max, record.t)
        if isinstance(record, Static):
            self._static(record)
            return
        self.batch.append((record.mmsi, iso(record.t), record.t, record.lon, record.lat,
                           record.sog_kn, record.cog_deg, record.heading_deg, record.nav_status,
                           record.msg_type, self.import_id))
        if len(self.batch) >= BATCH:
            self.flush()

    def _static(self, record: Static) -> None:
        # CSV exports repeat the same static data on every row: write it when it changes.
        values = record.values()
        if self.last_static.get(record.mmsi) == values:
            return
        self.last_static[record.mmsi] = values
        self.conn.execute("INSERT INTO temp.ais_static_pending VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                          (record.mmsi, *values, iso(record.t)))
        self.static_updates += 1

    def apply_statics(self) -> None:
        """Merge the file's static data into ais_vessels, in file order, in the transaction
        that marks the import finished."""
        last = 0
        while rows := self.conn.execute(
                "SELECT rowid, mmsi, name, imo, callsign, ship_type, length_m, width_m,"
                " updated_at FROM temp.ais_static_pending WHERE rowid > ? ORDER BY rowid"
                " LIMIT ?", (last, BATCH)).fetchall():
            self.conn.executemany(_UPSERT_VESSEL, [tuple(row[1:]) for row in rows])
            last = rows[-1][0]
        self.conn.execute("DELETE FROM temp.ais_static_pending")

    def flush(self) -> None:
        if not self.batch:
            return
        before = self.conn.total_changes
        self.conn.executemany(_INSERT_POSITION, self.batch)
        inserted = self.conn.total_changes - before
        self.accepted += inserted
        self.duplicates += len(self.batch) - inserted
        self.batch.clear()
        if time.monotonic() - self.committed_at >= COMMIT_EVERY_S:
            self.conn.execute("COMMIT")
            time.sleep(YIELD_S)
            begin_immediate(self.conn)
            self.committed_at = time.monotonic()


# --- import ----------------------------------------------------------------------------------


def import_file(ws: Workspace, path: str | Path, fmt: str | None = None,
                received_at: str | None = None, columns: str | None = None) -> ImportReport:
    """Import one NMEA or CSV file, committed in batches (rows are idempotent: an import cut
    short is resumed by importing the file again); a file whose import finished (same sha256)
    adds nothing. Raises AisError, naming the file, for one that cannot be imported as asked
    (nothing of it is stored then). Bad rows are counted, never raised; a truncated gzip
    keeps its complete lines and says so in `report.truncated`."""
    path = Path(path)
    if not path.is_file():
        raise AisError(f"{path}: no such file")
    try:
        return _import_file(ws, path, fmt, received_at, columns)
    except OSError as exc:
        _forget_unfinished(ws, path)
        raise AisError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    except AisError:
        _forget_unfinished(ws, path)
        raise


def _forget_unfinished(ws: Workspace, path: Path) -> None:
    """A refused file stores nothing: the batches it had committed go with its import row."""
    try:
        digest = sha256_file(path)
    except OSError:
        return
    if not ws.has_table("ais_imports"):  # refused before anything was set up
        return
    with ws.transaction() as conn:
        row = conn.execute("SELECT id FROM ais_imports WHERE sha256 = ? AND finished_at IS NULL",
                           (digest,)).fetchone()
        if row:
            conn.execute("DELETE FROM ais_positions WHERE import_id = ?", (row[0],))
            conn.execute("DELETE FROM ais_imports WHERE id = ?", (row[0],))


def _import_file(ws: Workspace, path: Path, fmt: str | None, received_at: str | None,
                 columns: str | None) -> ImportReport:
    fmt = fmt or detect_format(path)
    if fmt not in ("nmea", "csv"):
        raise AisError(f"{path}: unknown format {fmt!r}; use nmea or csv")
    window = parse_received_at(received_at) if received_at else None
    mapping = parse_columns(columns)
    report = ImportReport(file=str(path), sha256=sha256_file(path), format=fmt)
    ensure_schema(ws)
    with ws.transaction() as conn:
        # An import that kept nothing (every row refused: a wrong --columns, say) does not
        # count: importing the file again, told better, must be able to add its rows.
        previous = conn.execute("SELECT finished_at, rejected FROM ais_imports WHERE sha256 = ?"
                                " AND finished_at IS NOT NULL AND accepted + static_updates > 0",
                                (report.sha256,)).fetchone()
        if previous:
            report.already_imported, report.previous_import = True, previous[0]
            report.rejected = json.loads(previous[1])
            return report
        seen = _run_import(conn, path, report, window, mapping, received_at)
    report.watchlisted = _watchlisted(ws, seen)
    return report


def _run_import(conn: sqlite3.Connection, path: Path, report: ImportReport,
                window: tuple[int, int] | None, mapping: dict[str, str],
                received_at: str | None) -> set[int]:
    """Stream the file into the tables; returns the MMSIs seen."""
    started = utc_now()
    # An earlier import of this file cut short (its batches committed) is taken over.
    import_id = conn.execute(
        "INSERT INTO ais_imports (file, sha256, format, started_at, received_at) "
        "VALUES (?, ?, ?, ?, ?) ON CONFLICT(sha256) DO UPDATE SET file = excluded.file, "
        "format = excluded.format, started_at = excluded.started_at, "
        "received_at = excluded.received_at RETURNING id",
        (str(path.resolve()), report.sha256, report.format, started, received_at)).fetchone()[0]
    store, tally = _Store(conn, import_id), Tally()
    with _open_binary(path) as handle:
        if report.format == "nmea":
            lines = _until_damage(nmea_lines(handle, tally), path, tally)
            records = _nmea_records(lines, tally, _Clock.for_file(path, window))
        else:
            text = io.TextIOWrapper(handle, encoding="utf-8-sig", errors="replace", newline="")
            lines = _until_damage(_csv_lines(text, tally), path, tally)
            records = _csv_records(lines, path, tally, mapping)
        for record in records:
            store.add(record)
    store.flush()
    if tally.rejected["no_time"] and not tally.timed:
        # Raising rolls the transaction back: nothing of an untimed file is kept.
        raise AisError(
            f"{path}: none of its {tally.messages} messages carries a time (no tag block c:, "
            "$PGHP sentence or timestamp column); say when it was received with "
            "--received-at T or --received-at T1/T2 (ISO 8601, UTC)")
    store.apply_statics()
    _fill_report(report, store, tally)
    _log_import(conn, import_id, report)
    return store.seen


def _fill_report(report: ImportReport, store: _Store, tally: Tally) -> None:
    report.messages, report.accepted = tally.messages, store.accepted
    report.duplicates, report.static_updates = store.duplicates, store.static_updates
    report.vessels = len(store.seen)
    report.rejected = dict(sorted((k, v) for k, v in tally.rejected.items() if v))
    report.skipped = dict(sorted((k, v) for k, v in tally.skipped.items() if v))
    report.time_min = iso(store.t_min) if store.t_min is not None else None
    report.time_max = iso(store.t_max) if store.t_max is not None else None


def _log_import(conn: sqlite3.Connection, import_id: int, report: ImportReport) -> None:
    conn.execute(
        "UPDATE ais_imports SET finished_at = ?, messages = ?, accepted = ?, duplicates = ?,"
        " static_updates = ?, vessels = ?, rejected = ?, skipped = ?, time_min = ?,"
        " time_max = ? WHERE id = ?",
        (utc_now(), report.messages, report.accepted, report.duplicates, report.static_updates,
         report.vessels, json.dumps(report.rejected), json.dumps(report.skipped),
         report.time_min, report.time_max, import_id))


def describe_import(report: ImportReport) -> list[str]:
    """Lines for the terminal: what was stored, what was lost and why, watchlisted vessels."""
    head = f"{report.file} ({report.format}, sha256 {report.sha256[:12]})"
    cut = " (TRUNCATED gzip: only the lines before the cut)" if report.truncated else ""
    if report.already_imported:
        return [f"{head}: already imported ({report.previous_import}){cut}; nothing added"]
    span = f", {report.time_min} to {report.time_max}" if report.time_min else ""
    lines = [f"{head}{cut}: {report.messages} messages/rows, {report.accepted} positions stored, "
             f"{report.duplicates} duplicates, {report.static_updates} vessel updates, "
             f"{report.vessels} vessels{span}"]
    for label, counts in (("rejected", report.rejected), ("skipped", report.skipped)):
        if counts:
            lines.append(f"  {label}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    for mmsi, name, entry in report.watchlisted:
        lines.append(f"  WATCHLIST: MMSI {mmsi} {printable(name)} (matched on "
                     f"{entry.matched_on}: {printable(entry.name)}; {printable(entry.note)})")
    return lines
