"""Validity of AIS values: one set of rules for NMEA messages and CSV rows."""

from __future__ import annotations

from dataclasses import dataclass

from imagery.ais.records import Position, Static

# --- validity: one set of rules for NMEA messages and CSV rows --------------------------------


@dataclass(frozen=True)
class Rule:
    """Valid values are low <= x < high (whole numbers only if `whole`); the `unknown` values
    are AIS's "not available" codes, stored as NULL."""

    reason: str
    low: float
    high: float
    whole: bool = False
    unknown: frozenset[float] = frozenset()


# Ship types 100-255 fit the 8-bit field but are reserved; the NMEA decoder (pyais) reports
# them as "not available", so both paths do.
_RESERVED_SHIP_TYPES = frozenset(range(100, 256))
# An MMSI has 9 digits; leading zeros (coast stations, group calls) leave fewer, and a few real
# transmitters use odd ones: any 1..999999999 is kept, since a position is evidence of AIS
# presence whatever the MMSI. 0 is "no MMSI".
RULES: dict[str, Rule] = {
    "mmsi": Rule("bad_mmsi", 1, 1_000_000_000, whole=True),
    "sog_kn": Rule("bad_sog", 0, 102.3, unknown=frozenset({102.3})),
    "cog_deg": Rule("bad_cog", 0, 360, unknown=frozenset({360})),
    "heading_deg": Rule("bad_heading", 0, 360, unknown=frozenset({511})),
    "nav_status": Rule("bad_nav_status", 0, 16, whole=True),
    "ship_type": Rule("bad_ship_type", 0, 100, whole=True,
                      unknown=frozenset({0}) | _RESERVED_SHIP_TYPES),
    # The longest ships afloat are under 460 m; 0 is "not available".
    "length_m": Rule("bad_length", 0, 500, unknown=frozenset({0})),
    "width_m": Rule("bad_width", 0, 500, unknown=frozenset({0})),
}


def check_values(values: dict[str, float | None]) -> tuple[str | None, dict]:
    """The one validity check of both paths: (reason, {}) for the first value outside its
    `RULES` entry, else (None, the values with "not available" codes made None, whole numbers
    as int). Every value is finite and bounded afterwards, so none can overflow SQLite."""
    clean: dict[str, float | int | None] = dict.fromkeys(values)
    for name, value in values.items():
        if value is None:
            continue
        rule = RULES[name]
        if value in rule.unknown:
            continue
        # Comparisons are False for NaN; infinities fall outside every range.
        if not rule.low <= value < rule.high or (rule.whole and value != int(value)):
            return rule.reason, {}
        clean[name] = int(value) if rule.whole else float(value)
    return None, clean


def position_problem(lon: object, lat: object) -> str | None:
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


def checked_position(mmsi: int, t: int, lon: object, lat: object, sog: float | None,
                     cog: float | None, heading: float | None, status: float | None,
                     msg_type: int | None = None) -> tuple[str | None, Position | None]:
    """A position report as both paths build it: (reason, None) or (None, Position)."""
    problem = position_problem(lon, lat)
    if problem:
        return problem, None
    assert isinstance(lon, int | float) and isinstance(lat, int | float)
    problem, clean = check_values({"mmsi": mmsi, "sog_kn": sog, "cog_deg": cog,
                                   "heading_deg": heading, "nav_status": status})
    if problem:
        return problem, None
    return None, Position(t=t, lon=round(float(lon), 6), lat=round(float(lat), 6),
                          msg_type=msg_type, **clean)


def checked_static(mmsi: int, t: int, name: str | None, imo: int | None, callsign: str | None,
                   ship_type: float | None, length: float | None,
                   width: float | None) -> tuple[str | None, Static | None]:
    """Static data as both paths build it: (reason, None), or (None, Static or None when it
    holds nothing)."""
    problem, clean = check_values({"mmsi": mmsi, "ship_type": ship_type, "length_m": length,
                                   "width_m": width})
    if problem:
        return problem, None
    static = Static(t=t, name=name, imo=imo, callsign=callsign, **clean)
    return None, (static if any(v is not None for v in static.values()) else None)
