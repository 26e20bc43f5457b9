"""`SimulatedSource`: a scene source like the Sentinel Hub one (search, then fetch) on the
simulated revisit, with simulated weather that persists for days and a tile-wide cloud figure
that only roughly follows the AOI's."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from imagery.ports import Port
from imagery.simulate.noise import _key, _rng
from imagery.simulate.scene import scene_id_for, simulate_scene_file
from imagery.simulate.timing import EPOCH, acquisition_time, satellite_on
from imagery.simulate.truth import VesselSpec
from imagery.sources import SceneRef

CloudSchedule = Mapping | Callable[[str, datetime], float | None]
FleetHook = Callable[[Port, datetime], Sequence[VesselSpec] | None]


class SimulatedSource:
    """Scenes on a Sentinel-2-like revisit (every 2 then 3 days, ~01:45 UTC), with simulated
    weather: a tile-wide cloud cover for search and the AOI's own cover for the scene.
    `cloud_schedule` overrides the AOI cover: a mapping of date (or 'YYYY-MM-DD') to a
    fraction, or a function (port name, acquisition time) -> fraction or None. `fleet`
    (port, acquisition time) -> vessel specs dictates the vessels of each scene."""

    name = "simulated"

    def __init__(self, seed: int = 0, cloud_schedule: CloudSchedule | None = None,
                 fleet: FleetHook | None = None):
        self.seed = seed
        self.cloud_schedule = cloud_schedule
        self.fleet = fleet

    def acquisitions(self, port: Port, start: datetime, end: datetime) -> list[datetime]:
        day, last = start.astimezone(UTC).date() - timedelta(days=1), end.astimezone(UTC).date()
        times = []
        while day <= last:
            if satellite_on(port, day):
                moment = acquisition_time(port, day)
                if start <= moment <= end:
                    times.append(moment)
            day += timedelta(days=1)
        return times

    def aoi_cloud(self, port: Port, moment: datetime) -> float:
        """The simulated cloud cover over the AOI (0-1) at one acquisition."""
        scheduled = self._scheduled(port, moment)
        if scheduled is not None:
            return float(np.clip(scheduled, 0.0, 1.0))
        return _weather(port.name, moment, self.seed)

    def _scheduled(self, port: Port, moment: datetime) -> float | None:
        schedule = self.cloud_schedule
        if schedule is None:
            return None
        if callable(schedule):
            return schedule(port.name, moment)
        for key in (moment, moment.date(), moment.strftime("%Y-%m-%d")):
            if key in schedule:
                return schedule[key]
        return None

    def search(self, port: Port, start: datetime, end: datetime,
               max_cloud: float = 100.0) -> list[SceneRef]:
        refs = []
        for moment in self.acquisitions(port, start, end):
            aoi_cloud = self.aoi_cloud(port, moment)
            tile = _tile_cover(port.name, moment, self.seed, aoi_cloud)
            if tile <= max_cloud:
                refs.append(SceneRef(
                    scene_id_for(port, moment, self.seed), port.name, moment, self.name,
                    cloud_cover=tile,
                    extra={"aoi_cloud_fraction": aoi_cloud, "seed": self.seed,
                           "satellite": satellite_on(port, moment.date()), "simulated": True}))
        return refs

    def fetch(self, ref: SceneRef, port: Port, dest: Path) -> Path:
        moment = ref.acquisition_time
        vessels = self.fleet(port, moment) if self.fleet else None
        simulate_scene_file(port, moment, dest, seed=self.seed,
                            cloud_fraction=self.aoi_cloud(port, moment), vessels=vessels)
        return Path(dest)


def _weather(port_name: str, moment: datetime, seed: int) -> float:
    """AOI cloud cover that persists for days like weather systems do: slow waves plus a
    per-day draw, squashed to 0-1 with clear and overcast days both common."""
    rng = _rng(seed, _key(port_name), 5)
    periods, phases = rng.uniform(4, 13, 3), rng.uniform(0, 2 * math.pi, 3)
    t = (moment.date() - EPOCH).days
    slow = float(np.sum(np.sin(2 * math.pi * t / periods + phases)) / 1.5)
    day = _rng(seed, _key(port_name), t, 6).normal()
    level = 1 / (1 + math.exp(-(1.6 * slow + 0.9 * day - 0.4)))
    return float(np.clip((level - 0.2) / 0.6, 0.0, 1.0).round(3))


def _tile_cover(port_name: str, moment: datetime, seed: int, aoi_cloud: float) -> float:
    """The provider's tile-wide figure: related to, but not the same as, the AOI's."""
    noise = _rng(seed, _key(port_name), (moment.date() - EPOCH).days, 7).normal(0, 12)
    return round(float(np.clip(aoi_cloud * 100 + noise, 0, 100)), 1)
