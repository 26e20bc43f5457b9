"""AIS ingest: raw NMEA 0183 and CSV exports into the workspace database, a watchlist of vessels
of interest, and the queries reconciliation uses.

Tables (created by `ensure_schema`):
- `ais_imports`: one row per imported file: file, sha256 (UNIQUE: a file is imported once),
  format, started_at/finished_at, received_at (the `--received-at` given, if any), messages
  read, positions accepted (newly stored), duplicates (valid but already stored), static
  updates, vessels seen, `rejected` and `skipped` as JSON `{reason: count}`, time range.
- `ais_positions`: mmsi, time (UTC `YYYY-MM-DDTHH:MM:SSZ`, whole seconds, comparable as text
  with `scenes.acquisition_time`), t_epoch (the same instant in Unix seconds, for arithmetic),
  lon, lat (WGS84, 6 decimals), sog_kn, cog_deg, heading_deg, nav_status (NULL = unknown),
  msg_type, import_id; one row per (mmsi, t_epoch, lon, lat).
- `ais_vessels`: mmsi PK, name, imo, callsign, ship_type, length_m, width_m, updated_at (time of
  the newest static report); a newer non-null value replaces an older one, NULL never does.
- `watchlist`: mmsi, imo, name, name_key (normalised name for matching), note, source_file.

Times of NMEA messages, first found wins: the tag block `c:` field, a timestamp column before
(or after) the sentence on the same line, the last `$PGHP` sentence before it (it holds until the
next one), and finally `--received-at` (one time, or `T1/T2` spread evenly over the file's
messages in order). A file none of whose messages has a time is refused (AisError).

CSV: the MarineCadastre header (MMSI, BaseDateTime, LAT, LON, SOG, COG, Heading, VesselName,
IMO, CallSign, VesselType, Status, Length, Width, ...) is recognised as is; other exports map
their columns with `--columns FIELD=COLUMN,...`, FIELD one of `CSV_FIELDS` (mmsi, time, lat,
lon required); fields not named are looked up under the usual header names (`CSV_ALIASES`,
case-insensitive). The delimiter is whichever of , ; tab | the header uses most. Times are ISO
8601 (naive = UTC) or Unix seconds/milliseconds. Watchlist CSV: header with any of mmsi, imo,
name (at least one per row) and note.

Files may be gzip-compressed. Every loss is counted by reason, never fatal: the sentence-level
reasons (malformed_line, bad_checksum, bad_tag_block_checksum, undecodable_sentence) count
lines, the others count messages (or CSV rows).
"""

from __future__ import annotations

import csv
import gzip
import io
import itertools
import json
import math
import re
import sqlite3
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from pyais.exceptions import AISBaseException, MissingPayloadException, UnknownMessageException
from pyais.messages import AISSentence, GatehouseSentence, NMEASentence, NMEASentenceFactory

from imagery.workspace import Workspace, begin_immediate, sha256_file, utc_now

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
# Real AIS archives start in the early 2000s; anything before 2000 or more than a day ahead
# is a corrupt clock or a misread column, not an observation.
MIN_EPOCH = 946_684_800
FUTURE_SLACK_S = 86_400
# Fragments of one message arrive within a few lines of each other; a part still missing this
# many lines later is lost, and waiting longer risks joining parts of two different messages
# (sequence ids repeat every ten multi-part messages).
MAX_FRAGMENT_GAP = 100
BATCH = 5000
# An import commits its rows this often and then pauses, so that `run`, `review` verdicts and
# other writers waiting on the database get the write lock between batches (SQLite's busy
# handler polls at most every 100 ms, hence a pause a little longer than that).
COMMIT_EVERY_S = 2.0
YIELD_S = 0.15

# Optional timestamp column, optional tag block, then one sentence up to its checksum.
_SENTENCE = re.compile(rb"(\\[^\\]*\\)?([!$][A-Z]{4,5},[^*\s]*\*[0-9A-Fa-f]{2})")
# The first fragment of an AIS message (counted to spread a --received-at range).
_MESSAGE_START = re.compile(rb"![A-Z]{2}VD[MO],\d+,1,")
_SEPARATORS = b" \t,;|"

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
WATCHLIST_ALIASES: dict[str, tuple[str, ...]] = {
    "mmsi": ("mmsi",),
    "imo": ("imo", "imo_number"),
    "name": ("name", "vessel_name", "vesselname", "shipname", "ship_name"),
    "note": ("note", "notes", "reason", "comment", "remarks"),
}


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


# --- format detection ------------------------------------------------------------------------


def detect_format(path: Path) -> str:
    """'nmea' when one of the first lines holds a sentence, 'csv' when the first looks like a
    header with several columns."""
    with _open_binary(path) as handle:
        lines = [line for line in (handle.readline() for _ in range(200)) if line.strip()]
    if any(_SENTENCE.search(line) for line in lines):
        return "nmea"
    if lines and max(lines[0].count(sep) for sep in (b",", b";", b"\t", b"|")) >= 2:
        return "csv"
    raise AisError(f"{path}: cannot tell whether this is NMEA or CSV; give --format nmea|csv")


# --- NMEA: lines to sentences ----------------------------------------------------------------


@dataclass(slots=True)
class _Fragment:
    sentence: AISSentence
    own_time: int | None
    fallback: int | None
    group: str | None
    line_no: int


class _Clock:
    """`--received-at`: one time for every message, or a range spread evenly over the file's
    messages in order (the i-th of n messages at T1 + (T2 - T1) * i / (n - 1))."""

    def __init__(self, window: tuple[int, int] | None, count: int):
        self.window, self.count, self.index = window, count, -1

    @classmethod
    def for_file(cls, path: Path, window: tuple[int, int] | None) -> _Clock:
        count = 0
        if window and window[1] > window[0]:
            with _open_binary(path) as handle:
                count = sum(1 for line in handle if _MESSAGE_START.search(line))
        return cls(window, count)

    def tick(self, line: bytes) -> int | None:
        """The fallback time of the message this line starts, if it starts one."""
        if not self.window or not _MESSAGE_START.search(line):
            return None
        self.index += 1
        first, last = self.window
        if self.count <= 1:
            return first
        return first + math.floor((last - first) * self.index / (self.count - 1))


def _column_time(text: bytes) -> int | None:
    value = text.strip(_SEPARATORS)
    return parse_time_text(value.decode("ascii", "replace")) if value else None


def _parse_line(raw: bytes, tally: Tally) -> tuple[NMEASentence, int | None] | None:
    """One line to its sentence and the time the line itself gives (timestamp column or tag
    block), or None with the reason counted."""
    line = raw.strip()
    if not line:
        tally.skipped["blank_line"] += 1
        return None
    if line.startswith((b"#", b"//")):
        tally.skipped["comment_line"] += 1
        return None
    match = _SENTENCE.search(line)
    if not match:
        tally.rejected["malformed_line"] += 1
        return None
    prefix, suffix = line[: match.start()], line[match.end():]
    line_time = _column_time(prefix)
    if prefix.strip(_SEPARATORS) and line_time is None:
        tally.rejected["bad_timestamp_column"] += 1
        return None
    if line_time is None and suffix.strip(_SEPARATORS):
        # A trailing column may be a time or anything else a logger appends (receiver id).
        line_time = _column_time(suffix)
    sentence = _produce(match.group(0), tally)
    if sentence is None:
        return None
    trusted, tag_time = _tag_block_time(sentence, tally)
    if not trusted:
        return None
    return sentence, tag_time if tag_time is not None else line_time


def _produce(text: bytes, tally: Tally) -> NMEASentence | None:
    try:
        sentence = NMEASentenceFactory.produce(text)
    except UnknownMessageException:
        tally.skipped["other_nmea_sentence"] += 1
        return None
    except (AISBaseException, ValueError, IndexError, TypeError):
        # pyais raises several kinds on malformed fields; all mean the same to us.
        tally.rejected["undecodable_sentence"] += 1
        return None
    if not sentence.is_valid:
        tally.rejected["bad_checksum"] += 1
        return None
    return sentence


def _tag_block_time(sentence: NMEASentence, tally: Tally) -> tuple[bool, int | None]:
    """(trusted, the tag block's `c:` time). A tag block failing its own checksum makes the
    sentence untrusted: its time or its group may be corrupt."""
    block = sentence.tag_block
    if block is None:
        return True, None
    block.init()
    if not block.is_valid:
        tally.rejected["bad_tag_block_checksum"] += 1
        return False, None
    stamp = block.receiver_timestamp
    return True, parse_time_text(stamp) if stamp else None


def _group_id(sentence: AISSentence) -> str | None:
    block = sentence.tag_block
    group = block.group if block is not None else None
    return f"g{group.group_id}" if group is not None else None


# --- NMEA: multi-part assembly ---------------------------------------------------------------


class _Assembler:
    """Joins the fragments of multi-part messages. Fragments of one message share a key (the
    tag block group, else talker, sequence id, channel and fragment count) and may arrive in
    any order; a message whose parts do not all arrive counts once as `incomplete_multipart`."""

    def __init__(self, tally: Tally):
        self.tally = tally
        self.pending: dict[tuple, dict[int, _Fragment]] = {}
        self.last_sweep = 0

    def add(self, frag: _Fragment) -> list[_Fragment] | None:
        sentence = frag.sentence
        if sentence.frag_cnt == 1:
            return [frag]
        self._sweep(frag.line_no)
        key = (frag.group or (sentence.talker_id, sentence.type, sentence.seq_id,
                              sentence.channel), sentence.frag_cnt)
        parts = self.pending.get(key)
        if parts is not None and sentence.frag_num in parts:
            # The same part again: the earlier message lost a part and a new one began.
            self._drop(key)
            parts = None
        if parts is None:
            parts = self.pending[key] = {}
        parts[sentence.frag_num] = frag
        if len(parts) < sentence.frag_cnt:
            return None
        del self.pending[key]
        return [parts[n] for n in sorted(parts)]

    def _drop(self, key: tuple) -> None:
        del self.pending[key]
        self.tally.rejected["incomplete_multipart"] += 1

    def _sweep(self, line_no: int) -> None:
        if line_no - self.last_sweep < MAX_FRAGMENT_GAP:
            return
        self.last_sweep = line_no
        for key, parts in list(self.pending.items()):
            if line_no - max(p.line_no for p in parts.values()) > MAX_FRAGMENT_GAP:
                self._drop(key)

    def finish(self) -> None:
        for key in list(self.pending):
            self._drop(key)


def _message_time(parts: list[_Fragment]) -> int | None:
    for frag in parts:
        if frag.own_time is not None:
            return frag.own_time
    return next((frag.fallback for frag in parts if frag.fallback is not None), None)


def _nmea_records(lines: Iterable[bytes], tally: Tally,
                 clock: _Clock | None = None) -> Iterator[Position | Static]:
    """Lines of an NMEA file to position and static records, every loss counted in `tally`."""
    clock = clock or _Clock(None, 0)
    assembler = _Assembler(tally)
    pghp_time: int | None = None
    for line_no, raw in enumerate(lines, 1):
        fallback = clock.tick(raw)
        parsed = _parse_line(raw, tally)
        if parsed is None:
            continue
        sentence, line_time = parsed
        if isinstance(sentence, GatehouseSentence):
            pghp_time = math.floor(sentence.timestamp.replace(tzinfo=UTC).timestamp())
            continue
        if not isinstance(sentence, AISSentence):
            tally.skipped["other_nmea_sentence"] += 1
            continue
        own = line_time if line_time is not None else pghp_time
        parts = assembler.add(_Fragment(sentence, own, fallback, _group_id(sentence), line_no))
        if parts:
            yield from _decode(parts, tally)
    assembler.finish()


def _decode(parts: list[_Fragment], tally: Tally) -> Iterator[Position | Static]:
    sentences = [p.sentence for p in parts]
    sentence = AISSentence.assemble_from_iterable(sentences) if len(sentences) > 1 else sentences[0]
    tally.messages += 1
    try:
        message = sentence.decode()
    except MissingPayloadException:
        tally.rejected["empty_payload"] += 1
        return
    except (AISBaseException, ValueError, IndexError, TypeError):
        tally.rejected["undecodable_message"] += 1
        return
    t = _message_time(parts)
    if t is None:
        tally.rejected["no_time"] += 1
        return
    tally.timed += 1
    if not _plausible(t):
        tally.rejected["implausible_time"] += 1
        return
    yield from _message_records(message, t, tally)


def _message_records(message: object, t: int, tally: Tally) -> Iterator[Position | Static]:
    msg_type = getattr(message, "msg_type", None)
    mmsi = getattr(message, "mmsi", None)
    if not isinstance(mmsi, int) or mmsi <= 0:
        tally.rejected["bad_mmsi"] += 1
        return
    if msg_type in POSITION_TYPES:
        position = _position(message, mmsi, t, tally)
        if position:
            yield position
    if msg_type in (5, 19, 24):
        static = _static(message, mmsi, t)
        if static:
            yield static
    elif msg_type not in POSITION_TYPES:
        tally.skipped[f"message_type_{msg_type}"] += 1


def _position_problem(lon: object, lat: object) -> str | None:
    if not isinstance(lon, int | float) or not isinstance(lat, int | float):
        return "truncated_message"
    if lon == 181.0 or lat == 91.0:
        return "position_not_available"
    if not (-180.0 <= lon <= 180.0 and -90.0 <= lat <= 90.0):
        return "position_out_of_range"
    if lon == 0.0 and lat == 0.0:
        # A GPS without a fix often reports 0,0; no ship reports from there.
        return "position_null_island"
    return None


def _position(message: object, mmsi: int, t: int, tally: Tally) -> Position | None:
    lon, lat = getattr(message, "lon", None), getattr(message, "lat", None)
    problem = _position_problem(lon, lat)
    if problem:
        tally.rejected[problem] += 1
        return None
    msg_type = getattr(message, "msg_type", None)
    # "Not available" is 102.3 kn (63 kn in type 27), course 360 (511 in type 27), heading 511.
    sog_na = 63.0 if msg_type == 27 else 102.3
    status = getattr(message, "status", None)
    return Position(
        mmsi=mmsi, t=t, lon=round(float(lon), 6), lat=round(float(lat), 6),
        sog_kn=_below(getattr(message, "speed", None), sog_na),
        cog_deg=_below(getattr(message, "course", None), 360.0),
        heading_deg=_below(getattr(message, "heading", None), 360.0),
        nav_status=int(status) if status is not None else None,
        msg_type=msg_type,
    )


def _below(value: object, limit: float) -> float | None:
    """The value if it is a number under `limit` (which with all above it means unknown)."""
    if isinstance(value, int | float) and 0 <= value < limit:
        return float(value)
    return None


def _static(message: object, mmsi: int, t: int) -> Static | None:
    def dimension(a: str, b: str) -> float | None:
        total = (getattr(message, a, 0) or 0) + (getattr(message, b, 0) or 0)
        return float(total) if total > 0 else None

    ship_type = int(getattr(message, "ship_type", None) or 0)  # 0: not available
    static = Static(
        mmsi=mmsi, t=t,
        name=_clean_text(getattr(message, "shipname", None)),
        imo=_imo(getattr(message, "imo", None)),
        callsign=_clean_text(getattr(message, "callsign", None)),
        ship_type=ship_type or None,
        length_m=dimension("to_bow", "to_stern"),
        width_m=dimension("to_port", "to_starboard"),
    )
    return static if any(v is not None for v in static.values()) else None


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


def _map_columns(header: list[str], explicit: dict[str, str], path: Path) -> dict[str, int]:
    lower = {name.strip().lower(): i for i, name in enumerate(header)}
    index: dict[str, int] = {}
    for key, column in explicit.items():
        if column.strip().lower() not in lower:
            raise AisError(f"{path}: --columns names {column!r}, which is not in the header "
                           f"({', '.join(header)})")
        index[key] = lower[column.strip().lower()]
    for key in CSV_FIELDS:
        if key not in index:
            found = next((lower[a] for a in CSV_ALIASES[key] if a in lower), None)
            if found is not None and found not in index.values():
                index[key] = found
    missing = [key for key in CSV_REQUIRED if key not in index]
    if missing:
        raise AisError(
            f"{path}: cannot find column(s) {', '.join(missing)} in the header "
            f"({', '.join(header)}); map them with --columns mmsi=...,time=...,lat=...,lon=...")
    return index


def _csv_reader(handle: IO[str]) -> Iterator[list[str]]:
    """A reader using whichever of , ; tab | the header line uses most."""
    header = handle.readline()
    delimiter = max(",;\t|", key=header.count)
    return csv.reader(itertools.chain([header], handle), delimiter=delimiter)


def _csv_records(handle: IO[str], path: Path, tally: Tally,
                columns: dict[str, str]) -> Iterator[Position | Static]:
    """Rows of a CSV export to position and static records, broken rows counted by reason."""
    rows = _csv_reader(handle)
    try:
        header = next(rows)
    except StopIteration:
        return
    index = _map_columns(header, columns, path)
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except csv.Error:
            tally.rejected["unreadable_row"] += 1
            continue
        if not any(cell.strip() for cell in row):
            tally.skipped["blank_line"] += 1
            continue
        tally.messages += 1
        yield from _csv_row(row, len(header), index, tally)


def _csv_row(row: list[str], width: int, index: dict[str, int],
             tally: Tally) -> Iterator[Position | Static]:
    if len(row) != width:
        tally.rejected["wrong_column_count"] += 1
        return
    cell = {key: row[i].strip() for key, i in index.items()}
    problem, position = _csv_position(cell)
    if problem:
        tally.rejected[problem] += 1
        return
    assert position is not None
    tally.timed += 1
    yield position
    static = _csv_static(cell, position.mmsi, position.t)
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
    if not re.fullmatch(r"\d{9}", cell["mmsi"]):
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
    problem = _position_problem(lon, lat)
    if problem:
        return problem, None
    assert lon is not None and lat is not None
    return None, Position(
        mmsi=int(cell["mmsi"]), t=t, lon=round(lon, 6), lat=round(lat, 6),
        sog_kn=_below(sog, 102.3), cog_deg=_below(cog, 360.0), heading_deg=_below(heading, 360.0),
        nav_status=int(status) if status is not None else None,
    )


def _csv_static(cell: dict[str, str], mmsi: int, t: int) -> Static | None:
    def number(key: str) -> float | None:
        try:
            value = _number(cell.get(key))
        except ValueError:
            return None
        return value if value and value > 0 else None

    ship_type = number("shiptype")
    static = Static(
        mmsi=mmsi, t=t,
        name=cell.get("name") or None,
        imo=_imo(cell.get("imo")),
        callsign=cell.get("callsign") or None,
        ship_type=int(ship_type) if ship_type else None,
        length_m=number("length"),
        width_m=number("width"),
    )
    return static if any(v is not None for v in static.values()) else None


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
_INSERT_POSITION = (
    "INSERT OR IGNORE INTO ais_positions (mmsi, time, t_epoch, lon, lat, sog_kn, cog_deg,"
    " heading_deg, nav_status, msg_type, import_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


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
        self.conn.execute(_UPSERT_VESSEL, (record.mmsi, *values, iso(record.t)))
        self.static_updates += 1

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
    """Import one NMEA or CSV file, committed in batches (rows are idempotent: an import
    cut short is resumed by importing the file again); a file whose import finished (same
    sha256) adds nothing. Raises AisError for a file that cannot be imported as asked."""
    path = Path(path)
    if not path.is_file():
        raise AisError(f"{path}: no such file")
    fmt = fmt or detect_format(path)
    if fmt not in ("nmea", "csv"):
        raise AisError(f"{path}: unknown format {fmt!r}; use nmea or csv")
    window = parse_received_at(received_at) if received_at else None
    mapping = parse_columns(columns)
    report = ImportReport(file=str(path), sha256=sha256_file(path), format=fmt)
    ensure_schema(ws)
    with ws.transaction() as conn:
        previous = conn.execute("SELECT finished_at FROM ais_imports WHERE sha256 = ? AND "
                                "finished_at IS NOT NULL", (report.sha256,)).fetchone()
        if previous:
            report.already_imported, report.previous_import = True, previous[0]
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
            records = _nmea_records(handle, tally, _Clock.for_file(path, window))
        else:
            text = io.TextIOWrapper(handle, encoding="utf-8-sig", errors="replace", newline="")
            records = _csv_records(text, path, tally, mapping)
        for record in records:
            store.add(record)
    store.flush()
    if tally.rejected["no_time"] and not tally.timed:
        # Raising rolls the transaction back: nothing of an untimed file is kept.
        raise AisError(
            f"{path}: none of its {tally.messages} messages carries a time (no tag block c:, "
            "$PGHP sentence or timestamp column); say when it was received with "
            "--received-at T or --received-at T1/T2 (ISO 8601, UTC)")
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


def _watchlisted(ws: Workspace, mmsis: Iterable[int]) -> list[tuple[int, str | None,
                                                                     WatchlistEntry]]:
    """(mmsi, AIS name, entry) for each of these vessels the watchlist names."""
    conn = ws.connect()
    try:
        if not conn.execute("SELECT 1 FROM watchlist LIMIT 1").fetchone():
            return []
        found = []
        for mmsi in sorted(mmsis):
            info = vessel_info(conn, mmsi)
            if info and info.watchlist:
                found.append((mmsi, info.name, info.watchlist))
        return found
    finally:
        conn.close()


def describe_import(report: ImportReport) -> list[str]:
    """Lines for the terminal: what was stored, what was lost and why, watchlisted vessels."""
    head = f"{report.file} ({report.format}, sha256 {report.sha256[:12]})"
    if report.already_imported:
        return [f"{head}: already imported ({report.previous_import}); nothing added"]
    span = f", {report.time_min} to {report.time_max}" if report.time_min else ""
    lines = [f"{head}: {report.messages} messages/rows, {report.accepted} positions stored, "
             f"{report.duplicates} duplicates, {report.static_updates} vessel updates, "
             f"{report.vessels} vessels{span}"]
    for label, counts in (("rejected", report.rejected), ("skipped", report.skipped)):
        if counts:
            lines.append(f"  {label}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    for mmsi, name, entry in report.watchlisted:
        lines.append(f"  WATCHLIST: MMSI {mmsi} {printable(name)} (matched on "
                     f"{entry.matched_on}: {printable(entry.name)}; {printable(entry.note)})")
    return lines


# --- watchlist -------------------------------------------------------------------------------


def import_watchlist(ws: Workspace, path: str | Path) -> WatchlistReport:
    """Add the vessels of a CSV (columns mmsi, imo, name, note; any subset with at least one
    identifier) to the watchlist; entries already listed are kept as they are."""
    path = Path(path)
    if not path.is_file():
        raise AisError(f"{path}: no such file")
    ensure_schema(ws)
    report, rejected = WatchlistReport(file=str(path)), Counter()
    with ws.transaction() as conn, _open_binary(path) as raw:
        handle = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="replace", newline="")
        for entry in _watchlist_rows(handle, path, rejected):
            before = conn.total_changes
            conn.execute(
                "INSERT OR IGNORE INTO watchlist (entry_key, mmsi, imo, name, name_key, note,"
                " source_file, added_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (f"{entry[0] or ''}|{entry[1] or ''}|{name_key(entry[2]) or ''}", *entry[:2],
                 entry[2], name_key(entry[2]), entry[3], str(path.resolve()), utc_now()))
            added = conn.total_changes - before
            report.added += added
            report.already_listed += 1 - added
    report.rejected = dict(sorted(rejected.items()))
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


def _watchlist_rows(handle: IO[str], path: Path,
                    rejected: Counter) -> Iterator[tuple[int | None, int | None, str | None,
                                                         str | None]]:
    reader = csv.reader(handle)
    header = [h.strip().lower() for h in next(reader, [])]
    index = {key: next((header.index(a) for a in aliases if a in header), None)
             for key, aliases in WATCHLIST_ALIASES.items()}
    if all(index[k] is None for k in ("mmsi", "imo", "name")):
        raise AisError(f"{path}: a watchlist needs a header with mmsi, imo or name "
                       f"(and optionally note); found {', '.join(header) or 'nothing'}")
    for row in reader:
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
    if cell["mmsi"] and not re.fullmatch(r"\d{9}", cell["mmsi"]):
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


def watchlist_match(conn: sqlite3.Connection, mmsi: int | None, imo: int | None,
                    name: str | None) -> WatchlistEntry | None:
    """The watchlist entry naming this vessel, by MMSI, else IMO, else normalised name (the
    weakest: names are reused and easily changed); `matched_on` says which."""
    if not _has_table(conn, "watchlist"):
        return None
    for column, value in (("mmsi", mmsi), ("imo", imo), ("name_key", name_key(name))):
        if value is None:
            continue
        row = conn.execute(f"SELECT id, mmsi, imo, name, note, source_file FROM watchlist "
                           f"WHERE {column} = ? ORDER BY id LIMIT 1", (value,)).fetchone()
        if row:
            return WatchlistEntry(*tuple(row), matched_on=column.replace("name_key", "name"))
    return None


# --- queries for reconciliation ----------------------------------------------------------------


def _epoch(moment: datetime | str | int | float) -> int:
    if isinstance(moment, int | float):
        return math.floor(moment)
    if isinstance(moment, str):
        value = parse_time_text(moment)
        if value is None:
            raise ValueError(f"{moment!r} is not an ISO 8601 time")
        return value
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return math.floor(moment.timestamp())


def positions_near(conn: sqlite3.Connection, lon_min: float, lat_min: float, lon_max: float,
                   lat_max: float, t_start: datetime | str | int | float,
                   t_end: datetime | str | int | float) -> list[AisPosition]:
    """Positions inside a lon/lat box (lon_min > lon_max crosses the antimeridian) between two
    times (inclusive; datetimes, ISO text or Unix seconds), ordered by vessel and time."""
    if not _has_table(conn, "ais_positions"):
        return []
    lon_test = "(p.lon >= ? AND p.lon <= ?)" if lon_min <= lon_max else "(p.lon >= ? OR p.lon <= ?)"
    rows = conn.execute(
        "SELECT p.mmsi, p.t_epoch, p.lon, p.lat, p.sog_kn, p.cog_deg, p.heading_deg,"
        " p.nav_status, p.msg_type, i.file FROM ais_positions p"
        " JOIN ais_imports i ON i.id = p.import_id"
        f" WHERE p.t_epoch BETWEEN ? AND ? AND p.lat BETWEEN ? AND ? AND {lon_test}"
        " ORDER BY p.mmsi, p.t_epoch",
        (_epoch(t_start), _epoch(t_end), lat_min, lat_max, lon_min, lon_max)).fetchall()
    return [AisPosition(mmsi=r[0], time=datetime.fromtimestamp(r[1], UTC), t_epoch=r[1],
                        lon=r[2], lat=r[3], sog_kn=r[4], cog_deg=r[5], heading_deg=r[6],
                        nav_status=r[7], msg_type=r[8], source_file=r[9]) for r in rows]


def vessel_info(conn: sqlite3.Connection, mmsi: int) -> VesselInfo | None:
    """What AIS says about one vessel: static data, last position time, watchlist entry; None
    when AIS has never heard of it."""
    if not _has_table(conn, "ais_vessels"):
        return None
    row = conn.execute("SELECT name, imo, callsign, ship_type, length_m, width_m, updated_at "
                       "FROM ais_vessels WHERE mmsi = ?", (mmsi,)).fetchone()
    last = conn.execute("SELECT MAX(t_epoch) FROM ais_positions WHERE mmsi = ?",
                        (mmsi,)).fetchone()[0]
    if row is None and last is None:
        return None
    values = tuple(row) if row else (None,) * 7
    return VesselInfo(mmsi, *values, last_seen=iso(last) if last is not None else None,
                      watchlist=watchlist_match(conn, mmsi, values[1], values[0]))
