"""What reconciliation and the review page ask of AIS: positions near a place and time,
what is known of a vessel, its watchlist entry."""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Iterable
from datetime import UTC, datetime

from imagery.ais.records import (
    AisPosition,
    VesselInfo,
    WatchlistEntry,
    _has_table,
    iso,
    name_key,
    parse_time_text,
    wrap_lon,
)
from imagery.workspace import Workspace


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
    """Positions inside a lon/lat box (lon_min > lon_max, or a bound past +-180, crosses the
    antimeridian) between two times (inclusive; datetimes, ISO text or Unix seconds), ordered
    by vessel and time."""
    if not _has_table(conn, "ais_positions"):
        return []
    if lon_max - lon_min >= 360:
        lon_min, lon_max = -180.0, 180.0
    else:
        # A box padded past +-180 (a port near the antimeridian) wraps round to the other side.
        lon_min, lon_max = wrap_lon(lon_min), wrap_lon(lon_max)
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
