"""When the simulated satellites pass: the Sentinel-2-like revisit (a scene every 2 then 3
days), the overpass time of day, and where the sun stands then (for cloud and hull shadows)."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, time, timedelta

from imagery.ports import Port
from imagery.scene import parse_time
from imagery.simulate.noise import _key

EPOCH = date(2024, 1, 1)  # revisit pattern anchor


def _phase(port_name: str) -> int:
    return _key(port_name) % 5


def satellite_on(port: Port, day: date) -> str | None:
    """Which Sentinel-2 unit images the port on `day` in the simulated revisit, or None.
    Two satellites 180 degrees apart, each back every 10 days, and the port lying in the
    overlap of neighbouring orbits at this latitude: a scene every 2 then 3 days."""
    slot = ((day - EPOCH).days - _phase(port.name)) % 5
    return {0: "S2A", 2: "S2B"}.get(slot)


def overpass_time(port: Port, day: date, satellite: str | None = None) -> datetime:
    """Sentinel-2 crosses at about 10:30 local mean solar time, ~01:40-01:55 UTC at 130-133 E;
    the two units' ground tracks differ by a few minutes over one place."""
    lon = port.aoi.centroid.x
    minutes = (10.5 - lon / 15.0) * 60 + (4 if satellite == "S2B" else -3)
    return datetime.combine(day, time(0), UTC) + timedelta(seconds=round(minutes * 60))


def acquisition_time(port: Port, when: date | datetime | str) -> datetime:
    """A bare date (or midnight) becomes that day's overpass; an explicit time is kept."""
    if isinstance(when, str):
        when = parse_time(when)
    if isinstance(when, datetime):
        moment = (when if when.tzinfo else when.replace(tzinfo=UTC)).astimezone(UTC)
        if moment.time() != time(0):
            return moment.replace(microsecond=0)
        when = moment.date()
    return overpass_time(port, when, satellite_on(port, when))


def solar_position(lon: float, lat: float, when: datetime) -> tuple[float, float]:
    """(elevation, azimuth clockwise from north) in degrees; a textbook approximation, plenty
    for placing cloud shadows."""
    doy = when.timetuple().tm_yday
    decl = math.radians(23.44 * math.sin(2 * math.pi * (284 + doy) / 365))
    hours = when.hour + when.minute / 60 + lon / 15.0
    hour_angle = math.radians(15 * (hours - 12))
    phi = math.radians(lat)
    sin_el = (math.sin(phi) * math.sin(decl)
              + math.cos(phi) * math.cos(decl) * math.cos(hour_angle))
    azimuth = math.degrees(math.atan2(math.sin(hour_angle), math.cos(hour_angle) * math.sin(phi)
                                      - math.tan(decl) * math.cos(phi))) + 180
    return math.degrees(math.asin(sin_el)), azimuth % 360
