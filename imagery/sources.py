"""Scene sources behind one interface: search a port and a time range with a cloud limit,
fetch one scene into a path. `fetch_into_workspace` is the one place that stores scenes, so
every source gets the same idempotence, validation and skip rules.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import sqlite3
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Protocol

import numpy as np
from rasterio import features as rio_features
from rasterio.warp import transform_geom

from imagery.ports import Port
from imagery.scene import SCL_OBSCURED, SceneError, SceneInfo, open_scene, read_scl, verify_pixels
from imagery.workspace import Workspace

log = logging.getLogger(__name__)


class SourceError(RuntimeError):
    """A scene source failed (network, provider, credentials); the message says which request."""


class SourceAuthError(SourceError):
    """The provider refused the credentials."""


@dataclass(frozen=True)
class SceneRef:
    """One scene a source can deliver."""

    scene_id: str
    port: str
    acquisition_time: datetime | None  # None only for a file that cannot be read at all
    source: str
    cloud_cover: float | None = None  # the provider's tile-wide figure, 0-100, if any
    extra: dict = field(default_factory=dict, compare=False)


class SceneSource(Protocol):
    name: str

    def search(
        self, port: Port, start: datetime, end: datetime, max_cloud: float = 100.0
    ) -> list[SceneRef]: ...

    def fetch(self, ref: SceneRef, port: Port, dest: Path) -> Path:
        """Write the scene in the scene format at `dest` (atomically) and return it."""
        ...


class LocalFolderSource:
    """GeoTIFFs already in the scene format, found recursively under a folder. A file that is
    not a usable scene comes back from `search` too, as a ref named `file:<path in the
    folder>` carrying the reason, so that the catalog records it as skipped instead of the
    file being passed over in silence on every run."""

    name = "local"

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"{self.folder}: scene folder does not exist")

    def search(
        self, port: Port, start: datetime, end: datetime, max_cloud: float = 100.0
    ) -> list[SceneRef]:
        refs = []
        for path in sorted(self.folder.rglob("*.tif")):
            try:
                info = open_scene(path)
            except SceneError as exc:
                refs.append(self._unusable(path, port, exc.reason))
                continue
            if info.port not in (None, port.name):
                continue
            if info.acquisition_time is None:  # cannot be placed in time, nor matched to AIS
                refs.append(self._unusable(path, port, "no acquisition time (tag "
                                                       "ACQUISITION_TIME or ACQUISITION_DATE)"))
                continue
            if start <= info.acquisition_time <= end:
                refs.append(SceneRef(info.scene_id, port.name, info.acquisition_time,
                                     self.name, extra={"path": str(path)}))
        return refs

    def _unusable(self, path: Path, port: Port, reason: str) -> SceneRef:
        # Unreadable files have no scene id, time or port of their own: the id names the file.
        name = path.relative_to(self.folder).as_posix()
        return SceneRef(f"file:{name}", port.name, None, self.name,
                        extra={"path": str(path), "unusable": reason})

    def fetch(self, ref: SceneRef, port: Port, dest: Path) -> Path:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".tmp-{dest.name}")
        try:
            shutil.copyfile(ref.extra["path"], tmp)
            os.replace(tmp, dest)
        finally:  # a full disk must not leave half a copy behind
            tmp.unlink(missing_ok=True)
        return dest


def aoi_mask(info: SceneInfo, port: Port) -> np.ndarray:
    """Boolean mask of the scene pixels inside the port's AOI."""
    geom = transform_geom("EPSG:4326", info.crs, port.aoi.__geo_interface__)
    return rio_features.geometry_mask(
        [geom], out_shape=(info.height, info.width), transform=info.transform, invert=True
    )


def aoi_cloud_fraction(info: SceneInfo, port: Port) -> float | None:
    """Fraction of the AOI hidden (cloud, shadow, cirrus, no data) according to SCL; None
    when the scene has no SCL. Raises SceneError when the AOI misses the scene."""
    inside = aoi_mask(info, port)
    if not inside.any():
        raise SceneError(info.path, f"the AOI of port {port.name} does not overlap the scene")
    scl = read_scl(info)
    if scl is None:
        return None
    return float(np.isin(scl[inside], SCL_OBSCURED).mean())


@dataclass
class FetchOutcome:
    ref: SceneRef
    status: str  # 'stored' | 'exists' | 'skipped' | 'failed'
    reason: str | None = None
    path: Path | None = None
    cloud_fraction: float | None = None
    simulated: bool = False


def fetch_into_workspace(
    source: SceneSource,
    ref: SceneRef,
    port: Port,
    workspace: Workspace,
    max_cloud: float = 100.0,
) -> FetchOutcome:
    """Fetch one scene unless the catalog has it; validate it (every pixel block readable);
    skip (and record why, naming the file) a scene that is unusable or clouded over the AOI.
    Never raises for a bad scene or a full disk, and never touches a scene already stored."""
    try:
        known = workspace.scene(ref.scene_id)
    except (sqlite3.Error, OSError) as exc:
        return FetchOutcome(ref, "failed", f"cannot read the workspace catalog ({exc})")
    if known and known.status == "skipped":
        return FetchOutcome(ref, "skipped", f"{known.reason} (recorded earlier)")
    if known and known.status == "stored" and known.path and Path(known.path).exists():
        return FetchOutcome(ref, "exists", path=Path(known.path))
    if "unusable" in ref.extra:
        return _skip(workspace, ref, port, None,
                     f"unusable scene: {ref.extra['unusable']} (file {ref.extra['path']})")
    dest = workspace.scene_path(port.name, ref.acquisition_time, ref.scene_id)
    checked = fetch_checked(source, ref, port, dest, max_cloud)
    if checked.status == "skipped":
        return _skip(workspace, ref, port, dest, checked.reason, checked.cloud_fraction)
    if checked.status == "failed":
        return _fail(workspace, ref, port, dest, checked.reason)
    return record_stored(workspace, ref, port, dest, checked.cloud_fraction, checked.simulated)


def fetch_checked(source: SceneSource, ref: SceneRef, port: Port, dest: Path,
                  max_cloud: float = 100.0) -> FetchOutcome:
    """Fetch one scene to `dest` and check it (every pixel block readable, AOI in the scene,
    cloud over the AOI), touching no catalog: `stored` means usable and at `dest`; `skipped`
    and `failed` say why (the caller removes `dest` and records). A backfill worker runs this
    on its own disk; `fetch_into_workspace` runs it in the workspace."""
    origin = ref.extra.get("path")  # the file a local scene came from, named in reasons
    try:
        source.fetch(ref, port, dest)
        info = open_scene(dest)
        verify_pixels(info)
        cloud = aoi_cloud_fraction(info, port)
    except SceneError as exc:
        named = f" (file {origin})" if origin else ""
        return FetchOutcome(ref, "skipped", f"unusable scene: {exc.reason}{named}")
    except OSError as exc:
        target = origin or dest
        reason = (f"disk full writing {dest}" if exc.errno == errno.ENOSPC
                  else f"I/O error on {target}: {exc}")
        return FetchOutcome(ref, "failed", reason)
    except Exception as exc:  # network and provider errors: recorded, retried on a later run
        return FetchOutcome(ref, "failed", f"{type(exc).__name__}: {exc}")
    if cloud is not None and cloud >= 0.999:
        return FetchOutcome(ref, "skipped", "all cloud over the AOI", cloud_fraction=cloud)
    if cloud is not None and cloud * 100 > max_cloud:
        return FetchOutcome(ref, "skipped", f"AOI {cloud:.0%} clouded > {max_cloud:g}%",
                            cloud_fraction=cloud)
    return FetchOutcome(ref, "stored", path=dest, cloud_fraction=cloud,
                        simulated=info.simulated)


def record_stored(workspace: Workspace, ref: SceneRef, port: Port, dest: Path,
                  cloud: float | None, simulated: bool) -> FetchOutcome:
    """Catalog a checked scene file at `dest` as stored (its sha256 is taken from the file)."""
    try:
        workspace.record_scene(
            scene_id=ref.scene_id, port=port.name, source=ref.source,
            acquisition_time=ref.acquisition_time, status="stored", path=dest,
            cloud_fraction=cloud, simulated=simulated,
        )
    except (sqlite3.Error, OSError) as exc:
        # Not in the catalog means not stored: remove the file so the workspace is as it was.
        dest.unlink(missing_ok=True)
        return FetchOutcome(ref, "failed", f"could not record {ref.scene_id} in the workspace "
                                           f"({exc}); its file was removed, fetch it again")
    return FetchOutcome(ref, "stored", path=dest, cloud_fraction=cloud)


def _skip(ws: Workspace, ref: SceneRef, port: Port, dest: Path | None, reason: str,
          cloud: float | None = None) -> FetchOutcome:
    if dest is not None:
        dest.unlink(missing_ok=True)
    try:
        ws.record_scene(scene_id=ref.scene_id, port=port.name, source=ref.source,
                        acquisition_time=ref.acquisition_time, status="skipped", reason=reason,
                        cloud_fraction=cloud)
    except (sqlite3.Error, OSError) as exc:
        return FetchOutcome(ref, "failed", f"{reason}; and could not record it ({exc})")
    return FetchOutcome(ref, "skipped", reason, cloud_fraction=cloud)


def _fail(ws: Workspace, ref: SceneRef, port: Port, dest: Path, reason: str) -> FetchOutcome:
    dest.unlink(missing_ok=True)
    try:
        ws.record_scene(scene_id=ref.scene_id, port=port.name, source=ref.source,
                        acquisition_time=ref.acquisition_time, status="failed", reason=reason)
    except (sqlite3.Error, OSError) as exc:
        # The disk may be the thing that failed: the catalog stays as it was, and the
        # outcome says both what failed and that it could not be recorded.
        reason = f"{reason}; not recorded in the workspace ({exc})"
    return FetchOutcome(ref, "failed", reason)
