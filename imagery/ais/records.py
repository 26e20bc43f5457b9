"""AIS records, tables and small helpers shared by the NMEA and CSV readers, the store and
the queries."""

from __future__ import annotations

import gzip
import math
import re
import sqlite3
import time
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TypeVar

from imagery.workspace import Workspace

SCHEMA = """
CREATE TABLE IF NOT EXISTS ais_imports (
    id INTEGER PRIMARY KEY,
    file TEXT NOT NULL,
    sha256 TEXT NOT NULL UNIQUE,
    format TEXT NOT NULL,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    received_at TEXT,
    messages INTEGER NOT NULL DEFAULT 0,
    accepted INTEGER NOT NULL DEFAULT 0,
    duplicates INTEGER NOT NULL DEFAULT 0,
    static_updates INTEGER NOT NULL DEFAULT 0,
    vessels INTEGER NOT NULL DEFAULT 0,
    rejected TEXT NOT NULL DEFAULT '{}',
    skipped TEXT NOT NULL DEFAULT '{}',
    time_min TEXT,
    time_max TEXT
);
CREATE TABLE IF NOT EXISTS ais_positions (
    mmsi INTEGER NOT NULL,
    time TEXT NOT NULL,
    t_epoch INTEGER NOT NULL,
    lon REAL NOT NULL,
    lat REAL NOT NULL,
    sog_kn REAL,
    cog_deg REAL,
    heading_deg REAL,
    nav_status INTEGER,
    msg_type INTEGER,
    import_id INTEGER NOT NULL REFERENCES ais_imports(id),
    UNIQUE (mmsi, t_epoch, lon, lat)
);
CREATE INDEX IF NOT EXISTS ais_positions_time ON ais_positions(t_epoch);
CREATE TABLE IF NOT EXISTS ais_vessels (
    mmsi INTEGER PRIMARY KEY,
    name TEXT,
    imo INTEGER,
    callsign TEXT,
    ship_type INTEGER,
    length_m REAL,
    width_m REAL,
    updated_at TEXT
);
CREATE TABLE IF NOT EXISTS watchlist (
    id INTEGER PRIMARY KEY,
    entry_key TEXT NOT NULL UNIQUE,
    mmsi INTEGER,
    imo INTEGER,
    name TEXT,
    name_key TEXT,
    note TEXT,
    source_file TEXT,
    added_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS watchlist_mmsi ON watchlist(mmsi);
CREATE INDEX IF NOT EXISTS watchlist_imo ON watchlist(imo);
CREATE INDEX IF NOT EXISTS watchlist_name ON watchlist(name_key);
"""

POSITION_TYPES = frozenset({1, 2, 3, 18, 19, 27})
STATIC_TYPES = frozenset({5, 19, 24})
# Real AIS archives start in the early 2000s; anything before 2000 or more than a day ahead
# is a corrupt clock or a misread column, not an observation.
MIN_EPOCH = 946_684_800
FUTURE_SLACK_S = 86_400

T = TypeVar("T")


class AisError(ValueError):
    """A file that cannot be imported as asked; the message names the file and the fix."""


# --- records ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Position:
    mmsi: int
    t: int
    lon: float
    lat: float
    sog_kn: float | None = None
    cog_deg: float | None = None
    heading_deg: float | None = None
    nav_status: int | None = None
    msg_type: int | None = None


@dataclass(slots=True)
class Static:
    mmsi: int
    t: int
    name: str | None = None
    imo: int | None = None
    callsign: str | None = None
    ship_type: int | None = None
    length_m: float | None = None
    width_m: float | None = None

    def values(self) -> tuple:
        return (self.name, self.imo, self.callsign, self.ship_type, self.length_m, self.width_m)


@dataclass
class Tally:
    """What happened to every line: `rejected` is data that could not be used, `skipped` is
    what is not data (blank lines, comments) or not wanted (base stations, binary messages)."""

    messages: int = 0
    timed: int = 0
    rejected: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)


@dataclass(frozen=True)
class WatchlistEntry:
    id: int
    mmsi: int | None
    imo: int | None
    name: str | None
    note: str | None
    source_file: str | None
    matched_on: str | None = None


@dataclass
class ImportReport:
    file: str
    sha256: str
    format: str
    already_imported: bool = False
    previous_import: str | None = None
    messages: int = 0
    accepted: int = 0
    duplicates: int = 0
    static_updates: int = 0
    vessels: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    time_min: str | None = None
    time_max: str | None = None
    watchlisted: list[tuple[int, str | None, WatchlistEntry]] = field(default_factory=list)

    @property
    def truncated(self) -> bool:
        """The gzip stream ended early: what came before the cut is stored, the rest is not."""
        return bool(self.rejected.get("truncated_gzip"))


@dataclass
class WatchlistReport:
    file: str
    added: int = 0
    already_listed: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    seen: list[tuple[int, str | None, WatchlistEntry]] = field(default_factory=list)


@dataclass(frozen=True)
class AisPosition:
    mmsi: int
    time: datetime
    t_epoch: int
    lon: float
    lat: float
    sog_kn: float | None
    cog_deg: float | None
    heading_deg: float | None
    nav_status: int | None
    msg_type: int | None
    source_file: str


@dataclass(frozen=True)
class VesselInfo:
    mmsi: int
    name: str | None
    imo: int | None
    callsign: str | None
    ship_type: int | None
    length_m: float | None
    width_m: float | None
    updated_at: str | None
    last_seen: str | None
    watchlist: WatchlistEntry | None


# --- small helpers ---------------------------------------------------------------------------


def ensure_schema(ws: Workspace) -> None:
    ws.ensure_schema(SCHEMA)


def iso(epoch: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def parse_time_text(text: str) -> int | None:
    """Unix seconds (or milliseconds) or ISO 8601 (naive = UTC) to whole Unix seconds."""
    value = text.strip()
    if not value:
        return None
    try:
        number = float(value)
    except ValueError:
        return _parse_iso(value)
    if not math.isfinite(number):
        return None
    # Some feeds write milliseconds; seconds stay below 1e11 until the year 5138.
    return math.floor(number / 1000 if number > 1e11 else number)


def _parse_iso(value: str) -> int | None:
    for suffix in (" UTC", " GMT", "UTC", "GMT"):
        if value.upper().endswith(suffix):
            value = value[: -len(suffix)].strip()
    value = value.replace("Z", "+00:00").replace("z", "+00:00")
    if re.match(r"\d{4}/\d\d/\d\d", value):
        value = value.replace("/", "-", 2)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return math.floor(moment.timestamp())


def _plausible(epoch: int) -> bool:
    return MIN_EPOCH <= epoch <= time.time() + FUTURE_SLACK_S


def parse_received_at(text: str) -> tuple[int, int]:
    """`T` or `T1/T2` (ISO 8601 or Unix seconds) to a (first, last) pair of Unix seconds."""
    parts = text.split("/")
    if len(parts) > 2:
        raise AisError(f"--received-at {text!r}: give one time T or a range T1/T2")
    times = [parse_time_text(part) for part in parts]
    if any(t is None for t in times):
        raise AisError(f"--received-at {text!r} is not an ISO 8601 time or a range T1/T2")
    first, last = times[0], times[-1]
    assert first is not None and last is not None
    if last < first:
        raise AisError(f"--received-at {text!r}: the range ends before it starts")
    return first, last


def _clean_text(value: object) -> str | None:
    """AIS 6-bit text: '@' ends the text (what follows is padding), spaces pad it."""
    if not isinstance(value, str):
        return None
    return value.split("@", 1)[0].strip() or None


def _imo(value: object) -> int | None:
    if isinstance(value, str):
        value = re.sub(r"(?i)^\s*imo\s*", "", value).strip()
        if not value.isdigit():
            return None
        value = int(value)
    if isinstance(value, int) and 1_000_000 <= value <= 9_999_999:
        return value
    return None


def name_key(name: str | None) -> str | None:
    """Case, punctuation and spacing removed, so 'Chon Ma-San' matches 'CHON MA SAN'."""
    if not name:
        return None
    folded = "".join(ch if ch.isalnum() else " " for ch in name.upper())
    return " ".join(folded.split()) or None


def wrap_lon(lon: float) -> float:
    """A longitude past +-180 (a box padded across the antimeridian, an interpolation across
    it) brought back into [-180, 180]."""
    return lon if -180.0 <= lon <= 180.0 else (lon + 180.0) % 360.0 - 180.0


def printable(text: str | None) -> str:
    """Untrusted text made safe to print: control and escape characters shown as escapes."""
    if text is None:
        return "-"
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode() for ch in text)


def _open_binary(path: Path) -> IO[bytes]:
    handle = open(path, "rb")
    if handle.peek(2)[:2] == b"\x1f\x8b":
        return gzip.open(handle)  # type: ignore[return-value]
    return handle


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    row = conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,))
    return row.fetchone() is not None


# --- reading files: overlong lines and gzip damage -------------------------------------------


def capped_lines(handle: IO[T], limit: int, tally: Tally) -> Iterator[T]:
    """The physical lines of a text or binary file; one longer than `limit` characters (or
    bytes) is counted `overlong_line` and skipped without ever being held whole, so that a
    file with no line breaks cannot fill the memory."""
    ends = None
    while line := handle.readline(limit):
        ends = ends or (("\n", "\r") if isinstance(line, str) else (b"\n", b"\r"))
        if len(line) < limit or line.endswith(ends):
            yield line
            continue
        while line and not line.endswith(ends):
            line = handle.readline(limit)
        tally.rejected["overlong_line"] += 1



def _until_damage(lines: Iterable[T], path: Path, tally: Tally) -> Iterator[T]:
    """The lines of a file, stopping where a gzip stream is cut short: the complete lines
    before the cut are kept (the bytes before it are as written) and the file is counted
    `truncated_gzip`. A stream that is corrupt (bad data or CRC) may already have yielded
    wrong bytes, so the file is refused whole (AisError rolls its transaction back)."""
    iterator = iter(lines)
    while True:
        try:
            line = next(iterator)
        except StopIteration:
            return
        except EOFError:
            tally.rejected["truncated_gzip"] += 1
            return
        except (gzip.BadGzipFile, zlib.error) as exc:
            raise AisError(f"{path}: corrupt gzip ({exc}); nothing imported from it") from None
        yield line
