"""Reconcile what a scene shows at each berth with what AIS says was there.

Pure functions: they take detections, AIS fixes and the port, and return the evidence; the
scheduler stores it. The rules an analyst must be able to state:
- AIS places a vessel at the acquisition time by linear interpolation between fixes that
  bracket it closely, or holds the last fix of a vessel that was moored (slow, or reporting
  nav status moored / at anchor) and did not move before its next fix.
- Detections and AIS vessels pair one-to-one (Hungarian) within a distance gate; when both
  lengths are known they must agree within a factor, else the pair is refused.
- A zone whose visible fraction is below `min_visible` is `unknown`: cloud is not an empty berth.
- An unmatched detection on a pixel the scene's SCL marks cloud, shadow or cirrus is set
  aside (`under_cloud`), not alerted: the scene did not see that point clearly.
- A scene without AIS coverage (no fix at all, from any vessel, in a wide box around the port
  within `coverage_window` of the acquisition time) cannot show a call to be undeclared: its
  zones are `no_ais_coverage` and its unmatched detections are set aside (`no_coverage`).
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
from pyproj import Transformer
from scipy.optimize import linear_sum_assignment

from imagery.ais.records import wrap_lon
from imagery.ports import Port

MOORED_NAV_STATUS = (1, 5)  # 1 at anchor, 5 moored (ITU-R M.1371)
NO_AIS_COVERAGE = "no_ais_coverage"  # zone_counts.status of a scene without AIS coverage


@dataclass(frozen=True)
class Gates:
    """Reconciliation gates; the README lists the defaults."""

    match_distance_m: float = 300.0
    # A vessel AIS places outside every zone pairs only this close: an antenna just over the
    # edge of a tightly drawn berth polygon is the ship detected inside it, but a vessel at
    # anchor a few hundred metres off (and missed by the detector) must not explain away a
    # dark tanker at the berth.
    outside_zone_match_m: float = 100.0
    interpolate_max_gap: timedelta = timedelta(hours=2)  # each side of the acquisition time
    moored_hold: timedelta = timedelta(hours=36)  # how long a moored fix stays valid
    moored_speed_kn: float = 0.5
    moored_drift_m: float = 150.0  # next fix within this of the held one: it did not leave
    nearest_max_age: timedelta = timedelta(minutes=10)
    length_ratio_max: float = 2.0  # longer / shorter: 10 m pixels misjudge length by ~40 %
    min_visible: float = 0.5  # below this visible fraction a zone is `unknown`
    # AIS coverage: a scene is covered when the feed has any fix within this time of the
    # acquisition, inside the port's AOI padded by coverage_pad_deg. The box is wide (about
    # 100 km) on purpose: it tells a gap in the feed from a port where vessels went dark.
    coverage_window: timedelta = timedelta(hours=6)  # each side of the acquisition time
    coverage_pad_deg: float = 1.0
    consider_factor: float = 3.0  # AIS vessels within this x the gate are listed as evidence

    @property
    def consider_distance_m(self) -> float:
        return self.consider_factor * self.match_distance_m


@dataclass(frozen=True)
class AisFix:
    mmsi: int
    time: datetime
    lon: float
    lat: float
    sog_kn: float | None = None
    nav_status: int | None = None


@dataclass(frozen=True)
class AisVessel:
    mmsi: int
    name: str | None = None
    length_m: float | None = None
    ship_type: int | None = None
    watchlisted: bool = False


@dataclass(frozen=True)
class Placement:
    """Where AIS puts a vessel at the acquisition time, and how it got there."""

    mmsi: int
    lon: float
    lat: float
    method: str  # interpolated | held-moored | nearest
    fix_age_s: float
    zone: str | None = None
    vessel: AisVessel | None = None


@dataclass(frozen=True)
class Detection:
    det_id: int
    lon: float
    lat: float
    score: float
    length_m: float | None = None
    berthed: bool = True
    zone: str | None = None
    px_x: float | None = None
    px_y: float | None = None


@dataclass
class ZoneCount:
    zone: str
    kind: str
    visible_fraction: float
    detected: int | None  # None = unknown (hidden by cloud)
    ais: int
    ais_covered: bool = True  # False: no AIS coverage, so `ais` = 0 says nothing

    @property
    def status(self) -> str:
        if self.detected is None:
            return "unknown"
        return "observed" if self.ais_covered else NO_AIS_COVERAGE


@dataclass
class Considered:
    mmsi: int
    name: str | None
    distance_m: float
    length_m: float | None
    refused: str | None = None  # why it could not pair, when it could not
    watchlisted: bool = False


@dataclass
class Unmatched:
    detection: Detection
    reasons: list[str]
    considered: list[Considered]


@dataclass
class AisOnly:
    placement: Placement
    reason: str


@dataclass
class SceneReconciliation:
    scene_id: str
    port: str
    acquisition_time: datetime
    zones: list[ZoneCount]
    matched: list[tuple[Detection, Placement, float]]
    unmatched: list[Unmatched]
    ais_only: list[AisOnly]
    placements: list[Placement] = field(default_factory=list)
    # Unmatched berthed detections on pixels the scene did not see clearly (SCL cloud, cloud
    # shadow, cirrus): set aside, not alerts. Cloud edges and shadows make vessel-like blobs,
    # and those pixels already count as not visible in the zone's visible fraction.
    under_cloud: list[Unmatched] = field(default_factory=list)
    # Unmatched berthed detections of a scene without AIS coverage: AIS could not have
    # declared them, so they are set aside, not alerts.
    no_coverage: list[Unmatched] = field(default_factory=list)
    ais_covered: bool = True


# --- placing AIS vessels at the acquisition time ------------------------------------------------


def place_vessels(
    fixes: Iterable[AisFix], when: datetime, gates: Gates = Gates()
) -> list[Placement]:
    """One placement per vessel that AIS can put somewhere at `when`; vessels it cannot
    (no fix close enough in time, not moored) are left out rather than guessed."""
    by_vessel: dict[int, list[AisFix]] = defaultdict(list)
    for fix in fixes:
        by_vessel[fix.mmsi].append(fix)
    placements = []
    for mmsi, track in by_vessel.items():
        track.sort(key=lambda f: f.time)
        placed = _place_one(mmsi, track, when, gates)
        if placed:
            placements.append(placed)
    return placements


def _place_one(mmsi: int, track: list[AisFix], when: datetime, gates: Gates) -> Placement | None:
    times = [f.time for f in track]
    i = bisect.bisect_left(times, when)
    before = track[i - 1] if i > 0 else None
    after = track[i] if i < len(track) else None
    if after and after.time == when:
        return Placement(mmsi, after.lon, after.lat, "nearest", 0.0)
    if before and after:
        gap_b, gap_a = when - before.time, after.time - when
        if gap_b <= gates.interpolate_max_gap and gap_a <= gates.interpolate_max_gap:
            w = gap_b / (gap_b + gap_a)
            lon = wrap_lon(before.lon + w * _lon_delta(before.lon, after.lon))
            lat = before.lat + w * (after.lat - before.lat)
            return Placement(mmsi, lon, lat, "interpolated", min(gap_b, gap_a).total_seconds())
    if before and _moored(before, gates) and when - before.time <= gates.moored_hold:
        stayed = after is None or _distance_m(before, after) <= gates.moored_drift_m
        if stayed:
            return Placement(mmsi, before.lon, before.lat, "held-moored",
                             (when - before.time).total_seconds())
    nearest = min((f for f in (before, after) if f), key=lambda f: abs(f.time - when),
                  default=None)
    if nearest and abs(nearest.time - when) <= gates.nearest_max_age:
        return Placement(mmsi, nearest.lon, nearest.lat, "nearest",
                         abs(nearest.time - when).total_seconds())
    return None


def _moored(fix: AisFix, gates: Gates) -> bool:
    if fix.nav_status in MOORED_NAV_STATUS:
        return True
    return fix.sog_kn is not None and fix.sog_kn <= gates.moored_speed_kn


def _lon_delta(a: float, b: float) -> float:
    """b - a the short way round, in [-180, 180): 179.999 to -179.999 is 0.002, not -360."""
    return (b - a + 180.0) % 360.0 - 180.0


def _distance_m(a: AisFix, b: AisFix) -> float:
    # Equirectangular is exact enough at berth scale (hundreds of metres).
    k = 111_320.0
    dx = _lon_delta(a.lon, b.lon) * k * math.cos(math.radians((a.lat + b.lat) / 2))
    return math.hypot(dx, (b.lat - a.lat) * k)


# --- matching ----------------------------------------------------------------------------------


def _to_metres(port: Port, lons: Sequence[float], lats: Sequence[float]) -> np.ndarray:
    project = Transformer.from_crs("EPSG:4326", f"EPSG:{port.epsg}", always_xy=True)
    x, y = project.transform(np.asarray(lons, float), np.asarray(lats, float))
    return np.column_stack([x, y]).reshape(-1, 2)


def _lengths_agree(det: Detection, vessel: AisVessel | None, gates: Gates) -> bool:
    if det.length_m is None or vessel is None or not vessel.length_m:
        return True
    longer, shorter = max(det.length_m, vessel.length_m), min(det.length_m, vessel.length_m)
    return shorter > 0 and longer / shorter <= gates.length_ratio_max


def match(
    detections: Sequence[Detection], placements: Sequence[Placement], port: Port,
    gates: Gates = Gates(),
) -> tuple[list[tuple[int, int, float]], np.ndarray, np.ndarray]:
    """One-to-one pairs (det index, placement index, distance m) within the gate, minimising
    total distance; also the distance matrix and the allowed mask for the evidence."""
    if not detections or not placements:
        empty = np.zeros((len(detections), len(placements)))
        return [], empty, empty.astype(bool)
    d_xy = _to_metres(port, [d.lon for d in detections], [d.lat for d in detections])
    p_xy = _to_metres(port, [p.lon for p in placements], [p.lat for p in placements])
    dist = np.linalg.norm(d_xy[:, None, :] - p_xy[None, :, :], axis=2)
    allowed = dist <= gates.match_distance_m
    outside = np.array([p.zone is None for p in placements])
    allowed &= ~outside[None, :] | (dist <= gates.outside_zone_match_m)
    for i, det in enumerate(detections):
        for j, placed in enumerate(placements):
            if allowed[i, j] and not _lengths_agree(det, placed.vessel, gates):
                allowed[i, j] = False
    cost = np.where(allowed, dist, 1e9)
    rows, cols = linear_sum_assignment(cost)
    pairs = [(int(i), int(j), float(dist[i, j])) for i, j in zip(rows, cols, strict=True)
             if allowed[i, j]]
    return pairs, dist, allowed


# --- one scene -------------------------------------------------------------------------------


def reconcile_scene(
    *,
    scene_id: str,
    port: Port,
    acquisition_time: datetime,
    detections: Sequence[Detection],
    fixes: Iterable[AisFix],
    vessels: dict[int, AisVessel],
    zone_visible: dict[str, float],
    point_visible=None,
    gates: Gates = Gates(),
    ais_covered: bool = True,
) -> SceneReconciliation:
    """`zone_visible` gives each zone's visible fraction; `point_visible(lon, lat) -> bool`
    (optional) says whether a point was cloud-free, to explain AIS vessels not seen;
    `ais_covered` False (no AIS coverage around the acquisition) makes no alerts."""
    placements = []
    for p in place_vessels(fixes, acquisition_time, gates):
        zone = port.zone_at(p.lon, p.lat)
        placements.append(Placement(p.mmsi, p.lon, p.lat, p.method, p.fix_age_s, zone,
                                    vessels.get(p.mmsi)))
    # Every placed vessel may pair, not only those inside a zone: an AIS antenna tens of metres
    # outside a tightly drawn berth polygon still accounts for the ship detected inside it.
    # Zone counts and "AIS but not seen" use the vessels placed in zones.
    in_zones = [p for p in placements if p.zone is not None]
    pairs, dist, allowed = match(detections, placements, port, gates)
    paired_d = {i for i, _, _ in pairs}
    paired_p = {j for _, j, _ in pairs}
    matched = [(detections[i], placements[j], d) for i, j, d in pairs]
    berths = {z.name for z in port.zones if z.kind == "berth"}
    unmatched, under_cloud = [], []
    for i, det in enumerate(detections):
        if i in paired_d or det.zone not in berths or not det.berthed:
            continue  # a vessel at anchor is not a port call; one alongside a berth is
        item = _explain_detection(det, i, placements, dist, allowed, gates)
        seen = point_visible is None or point_visible(det.lon, det.lat)
        (unmatched if seen else under_cloud).append(item)
    ais_only = [
        AisOnly(p, _explain_missing(p, zone_visible, point_visible, gates))
        for j, p in enumerate(placements) if j not in paired_p and p.zone is not None
    ]
    zones = _zone_counts(port, detections, in_zones, zone_visible, gates, ais_covered)
    no_coverage = [] if ais_covered else unmatched
    return SceneReconciliation(scene_id, port.name, acquisition_time, zones, matched,
                               unmatched if ais_covered else [], ais_only, placements,
                               under_cloud, no_coverage, ais_covered)


def _explain_detection(det: Detection, i: int, placements: Sequence[Placement],
                       dist: np.ndarray, allowed: np.ndarray, gates: Gates) -> Unmatched:
    considered = []
    for j, p in enumerate(placements):
        if dist.size and dist[i, j] <= gates.consider_distance_m:
            if dist[i, j] > gates.match_distance_m:
                refused = f"beyond the {gates.match_distance_m:g} m gate"
            elif p.zone is None and dist[i, j] > gates.outside_zone_match_m:
                refused = (f"outside the zones, beyond the {gates.outside_zone_match_m:g} m "
                           "gate for such vessels")
            elif not allowed[i, j]:
                refused = "length disagrees"
            else:
                refused = "paired with another detection"
            v = p.vessel
            considered.append(Considered(p.mmsi, v.name if v else None,
                                         round(float(dist[i, j]), 1),
                                         v.length_m if v else None, refused,
                                         bool(v and v.watchlisted)))
    considered.sort(key=lambda c: c.distance_m)
    if not considered:
        reasons = [f"no AIS vessel placed within the {gates.match_distance_m:g} m pairing gate "
                   f"(none within {gates.consider_distance_m:g} m)"]
    else:
        reasons = [f"MMSI {c.mmsi} at {c.distance_m:.0f} m: {c.refused}" for c in considered[:3]]
    return Unmatched(det, reasons, considered)


def _explain_missing(p: Placement, zone_visible: dict[str, float], point_visible,
                     gates: Gates) -> str:
    if point_visible is not None and not point_visible(p.lon, p.lat):
        return "hidden by cloud at its AIS position"
    if zone_visible.get(p.zone or "", 1.0) < gates.min_visible:
        return "zone mostly hidden by cloud"
    return "not seen at its AIS position (possible spoofing, or a missed detection)"


def _zone_counts(port: Port, detections: Sequence[Detection], placements: Sequence[Placement],
                 zone_visible: dict[str, float], gates: Gates,
                 ais_covered: bool = True) -> list[ZoneCount]:
    counts = []
    for zone in port.zones:
        visible = float(zone_visible.get(zone.name, 1.0))
        seen = sum(1 for d in detections if d.zone == zone.name)
        ais = sum(1 for p in placements if p.zone == zone.name)
        counts.append(ZoneCount(zone.name, zone.kind, visible,
                                None if visible < gates.min_visible else seen, ais,
                                ais_covered))
    return counts


# --- episodes across scenes ------------------------------------------------------------------


@dataclass
class Episode:
    port: str
    zone: str
    first_seen: datetime
    last_seen: datetime
    scene_ids: list[str]
    lon: float
    lat: float
    members: list[tuple[str, int]] = field(default_factory=list)  # (scene_id, det_id)


def merge_episodes(
    scenes: Sequence[SceneReconciliation], same_berth_m: float = 250.0
) -> list[Episode]:
    """Unmatched vessels at the same berth in consecutive scenes form one port-call episode.
    A scene where that zone is visible and holds no such vessel ends the episode; a scene
    where it is `unknown` (cloud) or without AIS coverage neither ends nor extends it."""
    episodes: list[Episode] = []
    open_eps: dict[tuple[str, str], list[Episode]] = defaultdict(list)
    for scene in sorted(scenes, key=lambda s: s.acquisition_time):
        unknown = {z.zone for z in scene.zones if z.status != "observed"}
        seen_now: dict[tuple[str, str], list[Episode]] = defaultdict(list)
        for item in scene.unmatched:
            det = item.detection
            key = (scene.port, det.zone or "")
            episode = _nearest_episode(open_eps[key], det, same_berth_m)
            if episode is None or episode in seen_now[key]:
                episode = Episode(scene.port, det.zone or "", scene.acquisition_time,
                                  scene.acquisition_time, [], det.lon, det.lat)
                episodes.append(episode)
            episode.last_seen = scene.acquisition_time
            episode.scene_ids.append(scene.scene_id)
            episode.members.append((scene.scene_id, det.det_id))
            seen_now[key].append(episode)
        for zone in {z.zone for z in scene.zones} | {k[1] for k in open_eps if k[0] == scene.port}:
            key = (scene.port, zone)
            if zone in unknown:
                continue  # cloud: the berth's state is not known, keep what was open
            open_eps[key] = seen_now.get(key, [])
    return episodes


def _nearest_episode(candidates: list[Episode], det: Detection, limit_m: float) -> Episode | None:
    best, best_d = None, limit_m
    for episode in candidates:
        d = _distance_m(AisFix(0, datetime.min, episode.lon, episode.lat),
                        AisFix(0, datetime.min, det.lon, det.lat))
        if d <= best_d:
            best, best_d = episode, d
    return best
