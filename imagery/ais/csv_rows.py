"""CSV exports (MarineCadastre and others) to AIS position and static records."""

from __future__ import annotations

import csv
import math
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

from imagery.ais.records import (
    AisError,
    Position,
    Static,
    Tally,
    _imo,
    _plausible,
    capped_lines,
    parse_time_text,
    printable,
)
from imagery.ais.rules import checked_position, checked_static

# A CSV row of AIS is a few hundred characters; a longer line is garbage, skipped unread.
MAX_CSV_LINE = 65_536

CSV_FIELDS = ("mmsi", "time", "lat", "lon", "sog", "cog", "heading", "name", "imo",
              "callsign", "shiptype", "status", "length", "width")
CSV_REQUIRED = ("mmsi", "time", "lat", "lon")
# Header names (lower case) tried for each field when --columns does not name it; the first
# of each is the MarineCadastre header.
CSV_ALIASES: dict[str, tuple[str, ...]] = {
    "mmsi": ("mmsi", "userid", "user_id"),
    "time": ("basedatetime", "timestamp", "time", "datetime", "date_time", "time_utc", "ts"),
    "lat": ("lat", "latitude"),
    "lon": ("lon", "longitude", "lng", "long"),
    "sog": ("sog", "speed", "speed_kn"),
    "cog": ("cog", "course"),
    "heading": ("heading", "true_heading", "hdg"),
    "name": ("vesselname", "name", "shipname", "vessel_name", "ship_name"),
    "imo": ("imo", "imo_number"),
    "callsign": ("callsign", "call_sign"),
    "shiptype": ("vesseltype", "shiptype", "ship_type", "type"),
    "status": ("status", "navstat", "nav_status", "navigational_status"),
    "length": ("length", "length_m"),
    "width": ("width", "width_m", "beam"),
}


# --- CSV -------------------------------------------------------------------------------------


def parse_columns(text: str | None) -> dict[str, str]:
    """`mmsi=MMSI,time=BaseDateTime,...` to {field: header name}."""
    mapping: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        key, sep, column = item.partition("=")
        key = key.strip().lower()
        if not sep or key not in CSV_FIELDS or not column.strip():
            raise AisError(f"--columns {item!r}: expected FIELD=COLUMN with FIELD one of "
                           f"{', '.join(CSV_FIELDS)}")
        mapping[key] = column.strip()
    return mapping


def _shown(header: list[str], limit: int = 300) -> str:
    """The header for an error message: it comes from the file (a binary file, a hostile
    one), so control characters are escaped and a long one is cut."""
    text = printable(", ".join(header))
    return text if len(text) <= limit else text[:limit] + "..."


def _map_columns(header: list[str], explicit: dict[str, str], path: Path) -> dict[str, int]:
    lower = {name.strip().lower(): i for i, name in enumerate(header)}
    index: dict[str, int] = {}
    for key, column in explicit.items():
        if column.strip().lower() not in lower:
            raise AisError(f"{path}: --columns names {column!r}, which is not in the header "
                           f"({_shown(header)})")
        index[key] = lower[column.strip().lower()]
    for key in CSV_FIELDS:
        if key not in index:
            found = next((lower[a] for a in CSV_ALIASES[key] if a in lower), None)
            if found is not None and found not in index.values():
                index[key] = found
    names = [name.strip().lower() for name in header]
    twice = sorted({header[i].strip() for i in index.values() if names.count(names[i]) > 1})
    if twice:
        # Which of the two is meant cannot be told; taking one silently may store wrong values.
        raise AisError(f"{path}: column(s) {printable(', '.join(twice))} appear more than once "
                       f"in the header ({_shown(header)}); rename one of each so that every "
                       "column used has one meaning")
    missing = [key for key in CSV_REQUIRED if key not in index]
    if missing:
        raise AisError(
            f"{path}: cannot find column(s) {', '.join(missing)} in the header "
            f"({_shown(header)}); map them with --columns mmsi=...,time=...,lat=...,lon=...")
    return index


def _csv_lines(handle: IO[str], tally: Tally) -> Iterator[str]:
    """Physical lines; one longer than MAX_CSV_LINE characters is counted `overlong_line` and
    skipped without ever being held whole."""
    return capped_lines(handle, MAX_CSV_LINE, tally)


def _split(line: str, delimiter: str) -> list[str] | None:
    """One physical line to its cells, or None when a quoted cell is still open at its end.
    Each line is parsed on its own so a stray quote cannot swallow the rows after it (a
    vessel name never legitimately holds a line break)."""
    if '"' not in line:  # the common case: nothing quoted, the csv module would only split
        return line.rstrip("\r\n").split(delimiter)
    cells = next(csv.reader([line if line.endswith(("\n", "\r")) else line + "\n"],
                            delimiter=delimiter))
    # An open quote keeps the line break in its cell; a closed one never holds one.
    return None if any("\n" in cell or "\r" in cell for cell in cells) else cells


def _first_line(lines: Iterator[str], counts: Counter, reason: str = "blank_line") -> str:
    """The header: the first line that is not blank (blank ones before it counted)."""
    for line in lines:
        if line.strip():
            return line
        counts[reason] += 1
    return ""


def _csv_records(lines: Iterable[str], path: Path, tally: Tally,
                columns: dict[str, str]) -> Iterator[Position | Static]:
    """Lines of a CSV export (one row per line) to position and static records, broken rows
    counted by reason."""
    lines = iter(lines)
    header_line = _first_line(lines, tally.skipped)
    if not header_line:
        return
    delimiter = max(",;\t|", key=header_line.count)
    header = [cell.strip() for cell in next(csv.reader([header_line], delimiter=delimiter))]
    index = _map_columns(header, columns, path)
    for line in lines:
        if not line.strip(" \t\r\n" + delimiter):
            tally.skipped["blank_line"] += 1
            continue
        tally.messages += 1
        try:
            row = _split(line, delimiter)
        except csv.Error:
            tally.rejected["unreadable_row"] += 1
            continue
        if row is None:
            tally.rejected["unbalanced_quote"] += 1
            continue
        yield from _csv_row(row, len(header), index, tally)


def _csv_row(row: list[str], width: int, index: dict[str, int],
             tally: Tally) -> Iterator[Position | Static]:
    """A row is stored whole or rejected whole, for the first reason found."""
    if len(row) != width:
        tally.rejected["wrong_column_count"] += 1
        return
    cell = {key: row[i].strip() for key, i in index.items()}
    problem, position = _csv_position(cell)
    static = None
    if position is not None:
        problem, static = _csv_static(cell, position.mmsi, position.t)
    if problem:
        tally.rejected[problem] += 1
        return
    assert position is not None
    tally.timed += 1
    yield position
    if static:
        yield static


def _number(text: str | None) -> float | None:
    """Empty is None; anything else must be a finite number (ValueError otherwise)."""
    if text is None or not text.strip():
        return None
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


def _csv_position(cell: dict[str, str]) -> tuple[str | None, Position | None]:
    # Digits only, then the range check NMEA's MMSIs pass (1-999999999): an export that
    # writes the MMSI as a number drops leading zeros, and a transponder set up with a short
    # MMSI (MarineCadastre's sample holds 36926403, "PCU MARINETTE") is still a vessel that
    # AIS accounts for; refusing its rows would raise false alerts where it berths.
    if not re.fullmatch(r"\d{1,9}", cell["mmsi"]):
        return "bad_mmsi", None
    t = parse_time_text(cell["time"])
    if t is None:
        return "bad_time", None
    if not _plausible(t):
        return "implausible_time", None
    try:
        lat, lon = _number(cell["lat"]), _number(cell["lon"])
        sog, cog, heading, status = (_number(cell.get(k)) for k in
                                     ("sog", "cog", "heading", "status"))
    except ValueError:
        return "bad_number", None
    return checked_position(int(cell["mmsi"]), t, lon, lat, sog, cog, heading, status)


def _csv_static(cell: dict[str, str], mmsi: int, t: int) -> tuple[str | None, Static | None]:
    try:
        ship_type, length, width = (_number(cell.get(k)) for k in ("shiptype", "length", "width"))
    except ValueError:
        return "bad_number", None
    return checked_static(mmsi, t, name=cell.get("name") or None, imo=_imo(cell.get("imo")),
                          callsign=cell.get("callsign") or None, ship_type=ship_type,
                          length=length, width=width)
