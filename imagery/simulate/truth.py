"""What a simulated scene holds and how its truth is stored: the vessels a caller asks for
(`VesselSpec`), the vessels as simulated (`TruthVessel`), the scene's truth
(`SimulationTruth`), and the GeoJSON sidecar beside the scene file (written atomically, read
back by `load_truth`)."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

from imagery.scene import parse_time


@dataclass(frozen=True)
class VesselSpec:
    """A vessel a caller puts in a scene. Unset fields are drawn from the vessel's id, so the
    same spec gives the same vessel (and, space allowing, the same berth) in every scene."""

    id: str
    length_m: float
    width_m: float
    zone: str | None = None  # a berth or anchorage zone of the port; None: any
    berthed: bool | None = None  # None: follows the zone kind (berth zones berth)
    lon: float | None = None  # pin the centre; otherwise placed
    lat: float | None = None
    heading_deg: float | None = None  # bow direction, clockwise from north
    mmsi: int | None = None  # identity hooks for a simulated AIS feed
    name: str | None = None


@dataclass(frozen=True)
class TruthVessel:
    """A vessel as simulated. px_x/px_y are continuous pixel coordinates of the centre
    (`~transform * (x, y)`; the pixel index is their floor). `hidden_by_cloud`: half or more
    of the hull's pixels are cloud, cirrus or cloud shadow in the scene's SCL, the same rule
    that makes a zone `unknown`; `zone` is `Port.zone_at` of the centre."""

    id: str
    lon: float
    lat: float
    px_x: float
    px_y: float
    length_m: float
    width_m: float
    heading_deg: float
    berthed: bool
    zone: str | None
    hidden_by_cloud: bool
    mmsi: int | None = None
    name: str | None = None
    obscured_fraction: float = 0.0  # share of the hull under cloud, shadow or cirrus

    def as_spec(self) -> VesselSpec:
        """The spec that puts this vessel back exactly here in another scene."""
        return VesselSpec(self.id, self.length_m, self.width_m, self.zone, self.berthed,
                          self.lon, self.lat, self.heading_deg, self.mmsi, self.name)


@dataclass
class SimulationTruth:
    scene_id: str
    port: str
    acquisition_time: datetime
    seed: int
    cloud_fraction: float  # as requested: share of the scene under cloud
    vessels: list[TruthVessel]
    crs: str
    transform: tuple[float, ...]
    width: int
    height: int
    obscured_fraction: float = 0.0  # share of the scene SCL marks hidden (cloud + shadow)
    zone_visible_fraction: dict[str, float] = field(default_factory=dict)
    unplaced: list[str] = field(default_factory=list)  # spec ids there was no room for
    truth_path: Path | None = None
    simulated: bool = True


def truth_path_for(scene_path: str | os.PathLike) -> Path:
    """`harbour.tif` -> `harbour.truth.geojson`, beside the scene."""
    path = Path(scene_path)
    return path.with_name(f"{path.stem}.truth.geojson")


def truth_to_geojson(truth: SimulationTruth) -> dict:
    meta = {k: v for k, v in asdict(truth).items() if k not in ("vessels", "truth_path")}
    meta["acquisition_time"] = truth.acquisition_time.strftime("%Y-%m-%dT%H:%M:%SZ")
    meta["note"] = "SIMULATED: synthetic vessels of a synthetic scene, not observations"
    features = [
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [v.lon, v.lat]},
         "properties": {**asdict(v), "simulated": True}}
        for v in truth.vessels
    ]
    return {"type": "FeatureCollection", "properties": meta, "features": features}


def write_truth(truth: SimulationTruth, path: str | os.PathLike) -> Path:
    """Write the truth sidecar atomically and remember where it went."""
    path = Path(path)
    _atomic_write_text(path, json.dumps(truth_to_geojson(truth), indent=1))
    truth.truth_path = path
    return path


def load_truth(path: str | os.PathLike) -> SimulationTruth:
    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    meta = dict(doc["properties"])
    meta.pop("note", None)
    meta["acquisition_time"] = parse_time(meta["acquisition_time"])
    meta["transform"] = tuple(meta["transform"])
    vessels = [TruthVessel(**{k: v for k, v in f["properties"].items() if k != "simulated"})
               for f in doc["features"]]
    return SimulationTruth(vessels=vessels, truth_path=Path(path), **meta)


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=path.suffix, dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; a sidecar is for everyone
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
