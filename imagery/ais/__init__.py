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
8601 (naive = UTC) or Unix seconds/milliseconds. One row is one line: a quote still open at the
end of a line rejects that row (`unbalanced_quote`) and the next line is read afresh, so a stray
quote in a name cannot swallow the rows after it. Watchlist CSV: header with any of mmsi, imo,
name (at least one per row) and note, read the same way; a damaged gzip watchlist adds nothing.

Values: both paths check every number with the same `RULES` (`check_values`): MMSI 1..999999999,
nav status 0-15, heading 0-359 (511 unknown), SOG 0-102.2 kn (102.3 unknown), COG 0-359.9 (360
unknown), ship type 0-99 (0 and the reserved 100-255 unknown), length and width under 500 m (0
unknown), lat/lon in range and not 0,0; a CSV cell must also be a finite number (`bad_number`)
and the MMSI cell 9 digits. A message or row with one bad value is rejected whole, counted by
the reason of its first bad value; every other row is kept.

Files may be gzip-compressed. A gzip stream cut short keeps the complete lines before the cut
(the bytes before a cut are as written) and is counted `truncated_gzip`; a corrupt one (bad
data or CRC: bytes already read may be wrong) is refused whole. Every loss is counted by reason,
never fatal: the sentence-level reasons (malformed_line, bad_checksum, bad_tag_block_checksum,
undecodable_sentence) count lines, the others count messages (or CSV rows).

Modules: `records` (tables, records, shared helpers), `rules` (validity of values), `nmea` and
`csv_rows` (files to records), `store` (one file, one transaction), `watchlist`, `queries`.
"""

from __future__ import annotations

from imagery.ais.csv_rows import CSV_ALIASES, CSV_FIELDS, CSV_REQUIRED, MAX_CSV_LINE, parse_columns
from imagery.ais.nmea import MAX_NMEA_LINE
from imagery.ais.queries import positions_near, vessel_info, watchlist_match
from imagery.ais.records import (
    POSITION_TYPES,
    SCHEMA,
    STATIC_TYPES,
    AisError,
    AisPosition,
    ImportReport,
    Position,
    Static,
    Tally,
    VesselInfo,
    WatchlistEntry,
    WatchlistReport,
    ensure_schema,
    iso,
    name_key,
    parse_received_at,
    parse_time_text,
    printable,
)
from imagery.ais.rules import RULES, Rule, check_values, checked_position, checked_static
from imagery.ais.store import describe_import, detect_format, import_file
from imagery.ais.watchlist import describe_watchlist, import_watchlist

__all__ = [
    "CSV_ALIASES", "CSV_FIELDS", "CSV_REQUIRED", "MAX_CSV_LINE", "MAX_NMEA_LINE",
    "POSITION_TYPES", "RULES",
    "SCHEMA", "STATIC_TYPES", "AisError", "AisPosition", "ImportReport", "Position", "Rule",
    "Static", "Tally", "VesselInfo", "WatchlistEntry", "WatchlistReport", "check_values",
    "checked_position", "checked_static", "describe_import", "describe_watchlist",
    "detect_format", "ensure_schema", "import_file", "import_watchlist", "iso", "name_key",
    "parse_columns", "parse_received_at", "parse_time_text", "positions_near", "printable",
    "vessel_info", "watchlist_match",
]
