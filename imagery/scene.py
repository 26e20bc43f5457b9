"""The scene format: the contract every later stage reads.

A scene is a multi-band GeoTIFF whose band descriptions name the bands (B02 B03 B04 B08 B11,
optional SCL), with tags REFLECTANCE_SCALE, ACQUISITION_TIME (or ACQUISITION_DATE), SCENE_ID,
PORT and SOURCE, in any CRS measured in metres. `open_scene` validates a file against that
contract and raises `SceneError` naming the file and the problem; nothing here writes in place.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

SCENE_BANDS: tuple[str, ...] = ("B02", "B03", "B04", "B08", "B11")
SCL_BAND = "SCL"
DEFAULT_REFLECTANCE_SCALE = 10000.0
# SCL classes that hide the surface: no data, saturated, cloud shadow, cloud medium/high
# probability, thin cirrus. Snow (11) is left visible: ice in port is still a surface.
SCL_OBSCURED = (0, 1, 3, 8, 9, 10)
SCL_WATER = 6
# The largest scene accepted, in pixels: 400 MP, 3.3 full Sentinel-2 tiles (10980 x 10980 =
# 120.6 MP). Detection streams chips, but cloud and AOI masks are whole-scene arrays, so a
# header declaring more (200000 x 200000) is refused up front instead of exhausting memory.
# BERTHWATCH_MAX_SCENE_PIXELS overrides it.
MAX_SCENE_PIXELS = 400_000_000


class SceneError(ValueError):
    """A file that is not a usable scene; the message names the file and what is wrong."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass(frozen=True)
class SceneInfo:
    path: Path
    scene_id: str
    port: str | None
    source: str
    acquisition_time: datetime | None
    crs: CRS
    transform: Affine
    width: int
    height: int
    bands: tuple[str, ...]
    reflectance_scale: float
    dtype: str
    simulated: bool = False
    tags: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in the scene CRS."""
        return _bounds(self.transform, self.width, self.height)

    @property
    def has_scl(self) -> bool:
        return SCL_BAND in self.bands

    @property
    def pixel_size_map(self) -> float:
        return float(abs(self.transform.a))

    @property
    def ground_scale(self) -> float:
        """Ground metres per map unit at the scene centre (1 for UTM, cos(lat) for EPSG:3857)."""
        return ground_scale(self.crs, self.transform, self.width, self.height)

    @property
    def pixel_size_m(self) -> float:
        """True ground size of one pixel in metres."""
        return self.pixel_size_map * self.ground_scale

    def band_index(self, name: str) -> int:
        """1-based rasterio band index of a named band."""
        try:
            return self.bands.index(name) + 1
        except ValueError:
            have = " ".join(self.bands)
            raise SceneError(self.path, f"has no band {name} (bands: {have})") from None


def _bounds(transform: Affine, width: int, height: int) -> tuple[float, float, float, float]:
    left, top = transform * (0, 0)
    right, bottom = transform * (width, height)
    return (min(left, right), min(top, bottom), max(left, right), max(top, bottom))


def ground_scale(crs: CRS, transform: Affine, width: int, height: int) -> float:
    """Ground metres per map unit: Web Mercator stretches by 1/cos(latitude)."""
    if crs.to_epsg() != 3857:
        return 1.0
    _, y = transform * (width / 2, height / 2)
    lat = math.degrees(2 * math.atan(math.exp(y / 6378137.0)) - math.pi / 2)
    return math.cos(math.radians(lat))


def parse_time(value: str) -> datetime:
    """ISO 8601 time or date, returned as an aware UTC datetime. Raises ValueError for text
    that is not one, or whose UTC equivalent falls outside years 1-9999."""
    text = value.strip().replace("Z", "+00:00")
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00+01:00 is a valid ISO text but no UTC time
        raise ValueError(f"{value!r} is out of the range of UTC times") from None


def max_scene_pixels() -> int:
    """The scene size limit in pixels: BERTHWATCH_MAX_SCENE_PIXELS or MAX_SCENE_PIXELS."""
    text = os.environ.get("BERTHWATCH_MAX_SCENE_PIXELS", "").strip()
    try:
        return int(text) if text else MAX_SCENE_PIXELS
    except ValueError:
        return MAX_SCENE_PIXELS


def check_scene_size(path: str | os.PathLike, width: int, height: int) -> None:
    """Refuse a scene larger than the stated limit before any of its pixels are read."""
    limit = max_scene_pixels()
    if width * height > limit:
        raise SceneError(
            path, f"{width} x {height} pixels ({width * height / 1e6:,.0f} MP) is over the limit "
            f"of {limit / 1e6:,.0f} MP per scene (BERTHWATCH_MAX_SCENE_PIXELS); cut the scene "
            "to the port's AOI"
        )


def open_scene(
    path: str | os.PathLike, require_bands: tuple[str, ...] | None = SCENE_BANDS
) -> SceneInfo:
    """Open and validate a scene. `require_bands=None` accepts any named subset of bands."""
    path = Path(path)
    if not path.exists():
        raise SceneError(path, "no such file")
    try:
        with rasterio.open(path) as src:
            profile_dtype = src.dtypes[0]
            crs, transform = src.crs, src.transform
            width, height, count = src.width, src.height, src.count
            descriptions = src.descriptions
            tags = src.tags()
            check_scene_size(path, width, height)
            # Reading one block proves the pixel data is there, not just the header.
            src.read(1, window=Window(0, 0, min(width, 64), min(height, 64)))
            if height > 1 or width > 1:
                src.read(count, window=Window(width - 1, height - 1, 1, 1))
    except RasterioIOError as exc:
        raise SceneError(path, f"not a readable GeoTIFF ({_short(exc)})") from None
    except rasterio.errors.RasterioError as exc:
        raise SceneError(path, f"corrupt or truncated GeoTIFF ({_short(exc)})") from None

    bands = tuple((d or "").strip().upper() for d in descriptions)
    if not all(bands):
        raise SceneError(path, "band descriptions must name every band (e.g. B02 B03 B04 B08 B11)")
    if len(set(bands)) != len(bands):
        raise SceneError(path, f"duplicate band names: {' '.join(bands)}")
    if require_bands:
        missing = [b for b in require_bands if b not in bands]
        if missing:
            raise SceneError(path, f"missing bands {' '.join(missing)} (has {' '.join(bands)})")
    if profile_dtype not in ("uint16", "float32"):
        raise SceneError(path, f"dtype {profile_dtype} is not reflectance (uint16 or float32)")
    if crs is None:
        raise SceneError(path, "has no CRS")
    if not crs.is_projected or (crs.linear_units or "").lower() not in ("metre", "meter", "m"):
        raise SceneError(path, f"CRS {crs.to_string()} is not in metres (use UTM or EPSG:3857)")
    if transform.b != 0 or transform.d != 0:
        raise SceneError(path, "rotated rasters are not supported")

    scale_text = tags.get("REFLECTANCE_SCALE", "")
    if scale_text:
        try:
            scale = float(scale_text)
        except ValueError:
            raise SceneError(path, f"REFLECTANCE_SCALE {scale_text!r} is not a number") from None
        if not 0 < scale < math.inf:
            raise SceneError(path, f"REFLECTANCE_SCALE {scale_text!r} must be positive and finite")
    elif profile_dtype == "float32":
        scale = 1.0
    else:
        scale = DEFAULT_REFLECTANCE_SCALE

    when_text = tags.get("ACQUISITION_TIME") or tags.get("ACQUISITION_DATE")
    acquired = None
    if when_text:
        try:
            acquired = parse_time(when_text)
        except ValueError:
            raise SceneError(path, f"acquisition time {when_text!r} is not ISO 8601") from None

    source = tags.get("SOURCE", "local")
    return SceneInfo(
        path=path,
        scene_id=tags.get("SCENE_ID") or _default_scene_id(path),
        port=tags.get("PORT") or None,
        source=source,
        acquisition_time=acquired,
        crs=crs,
        transform=transform,
        width=width,
        height=height,
        bands=bands,
        reflectance_scale=scale,
        dtype=profile_dtype,
        simulated=source == "simulated" or tags.get("SIMULATED", "").lower() == "true",
        tags=tags,
    )


def verify_pixels(info: SceneInfo, strip_pixels: int = 1 << 22) -> None:
    """Read every pixel of every band, strip by strip (memory stays bounded), and raise
    SceneError naming the file and the failing block when the body is damaged. `open_scene`
    reads only the first block and the last pixel; this is for validating a scene once, when
    it enters the workspace, so a damaged file is refused there and not at detection."""
    rows = max(1, strip_pixels // max(info.width, 1))
    try:
        with rasterio.open(info.path) as src:
            for top in range(0, info.height, rows):
                src.read(window=Window(0, top, info.width, min(rows, info.height - top)))
    except rasterio.errors.RasterioError as exc:
        raise SceneError(info.path, f"corrupt pixel data ({_short(exc)})") from None


def _default_scene_id(path: Path) -> str:
    # The sen2ships layout names every file scene.tif; its folder names the port.
    return path.parent.name if path.stem == "scene" else path.stem


def _short(exc: BaseException) -> str:
    """The first line of an error; rasterio's "See previous exception" read errors carry
    GDAL's own message (which block failed) as their cause."""
    text = str(exc)
    if "previous exception" in text and exc.__cause__ is not None:
        text = str(exc.__cause__)
    return (text.splitlines() or [type(exc).__name__])[0][:200]


def describe_read_error(exc: BaseException) -> str:
    """One line for a failed pixel read, for SceneError reasons."""
    return _short(exc)


def read_reflectance(
    info: SceneInfo,
    bands: tuple[str, ...] = SCENE_BANDS,
    window: Window | None = None,
    fill: float = 0.0,
    src: rasterio.DatasetReader | None = None,
) -> np.ndarray:
    """Read bands as float32 reflectance (C, H, W). Bands the scene lacks come back as NaN;
    a window reaching past the scene edge is padded with `fill`. `src`: the scene already
    open (`open_pixels`), for many windows read through one handle in one thread."""
    win = window or Window(0, 0, info.width, info.height)
    out = np.full((len(bands), int(win.height), int(win.width)), fill, dtype=np.float32)
    present = [(i, info.bands.index(b) + 1) for i, b in enumerate(bands) if b in info.bands]
    inner, (r0, c0) = _inside(win, info)
    if present and inner is not None:
        try:
            with _handle(info, src) as dataset:
                # A plain window read of the part inside the scene, padded here: rasterio's
                # boundless reads go through a VRT and cost ten times more per chip.
                data = dataset.read([ix for _, ix in present], window=inner).astype(np.float32)
        except rasterio.errors.RasterioError as exc:
            raise SceneError(info.path, f"cannot read pixels ({_short(exc)})") from None
        h, w = data.shape[1:]
        for k, (i, _) in enumerate(present):
            out[i, r0 : r0 + h, c0 : c0 + w] = data[k] / info.reflectance_scale
    for i, b in enumerate(bands):
        if b not in info.bands:
            out[i] = np.nan
    return out


# Enough for the block rows that two rows of chips share across a 10980 px, 6-band tile
# (256 px blocks: 28 MB a block row) several times over.
READ_CACHE_BYTES = 128 * 2**20


@contextlib.contextmanager
def open_pixels(info: SceneInfo) -> Iterator[rasterio.DatasetReader]:
    """The scene open for reading pixels, for one thread (a GDAL handle is not thread-safe).
    Reading many windows through one handle lets GDAL's block cache serve the blocks that
    neighbouring chips share: 512 px chips that overlap by 64 touch nine 256 px blocks each,
    which a handle per chip decompressed again every time (half the reading time of a tile).
    The cache is capped at READ_CACHE_BYTES: GDAL's default (5 % of the RAM) let a tile's
    reading grow to 1.2 GB, and ran slower (9.4 s against 3.8 s for the 625 chips of a
    10980 px tile)."""
    with rasterio.Env(GDAL_CACHEMAX=READ_CACHE_BYTES):
        try:
            src = rasterio.open(info.path)
        except rasterio.errors.RasterioError as exc:
            raise SceneError(info.path, f"cannot read pixels ({_short(exc)})") from None
        with src:
            yield src


@contextlib.contextmanager
def _handle(info: SceneInfo, src: rasterio.DatasetReader | None):
    if src is not None:
        yield src
    else:
        with rasterio.open(info.path) as opened:
            yield opened


def _inside(win: Window, info: SceneInfo) -> tuple[Window | None, tuple[int, int]]:
    """The part of `win` inside the scene, and where it starts within `win`."""
    col0, row0 = int(win.col_off), int(win.row_off)
    c_start, r_start = max(col0, 0), max(row0, 0)
    c_stop = min(col0 + int(win.width), info.width)
    r_stop = min(row0 + int(win.height), info.height)
    if c_stop <= c_start or r_stop <= r_start:
        return None, (0, 0)
    inner = Window(c_start, r_start, c_stop - c_start, r_stop - r_start)
    return inner, (r_start - row0, c_start - col0)


def read_scl(
    info: SceneInfo, window: Window | None = None, src: rasterio.DatasetReader | None = None
) -> np.ndarray | None:
    """The scene classification layer (uint8) or None when the scene has none. Outside the
    scene reads as 0 (no data). `src` as for `read_reflectance`."""
    if not info.has_scl:
        return None
    win = window or Window(0, 0, info.width, info.height)
    out = np.zeros((int(win.height), int(win.width)), dtype=np.uint8)
    inner, (r0, c0) = _inside(win, info)
    if inner is not None:
        try:
            with _handle(info, src) as dataset:
                data = dataset.read(info.band_index(SCL_BAND), window=inner)
        except rasterio.errors.RasterioError as exc:
            raise SceneError(info.path, f"cannot read pixels ({_short(exc)})") from None
        out[r0 : r0 + data.shape[0], c0 : c0 + data.shape[1]] = data
    return out


def read_valid(info: SceneInfo, window: Window | None = None) -> np.ndarray:
    """Mask (H, W) of the pixels that hold data: inside the scene, not masked by the file
    (its nodata value, internal mask or alpha) and not zero in every reflectance band (the
    fill of a scene without a declared nodata value: no surface reads exactly 0 in all)."""
    win = window or Window(0, 0, info.width, info.height)
    out = np.zeros((int(win.height), int(win.width)), dtype=bool)
    inner, (r0, c0) = _inside(win, info)
    if inner is None:
        return out
    indexes = [i + 1 for i, b in enumerate(info.bands) if b != SCL_BAND] or [1]
    try:
        with rasterio.open(info.path) as src:
            masked = src.dataset_mask(window=inner) > 0
            data = src.read(indexes, window=inner)
    except rasterio.errors.RasterioError as exc:
        raise SceneError(info.path, f"cannot read pixels ({_short(exc)})") from None
    h, w = data.shape[1:]
    out[r0 : r0 + h, c0 : c0 + w] = masked & (np.isfinite(data) & (data != 0)).any(axis=0)
    return out


def write_scene(
    path: str | os.PathLike,
    data: np.ndarray,
    band_names: tuple[str, ...],
    crs: CRS | str,
    transform: Affine,
    *,
    scene_id: str,
    port: str | None,
    source: str,
    acquisition_time: datetime | None,
    reflectance_scale: float = DEFAULT_REFLECTANCE_SCALE,
    extra_tags: dict[str, str] | None = None,
) -> Path:
    """Write a scene atomically (temporary file in the same folder, then rename), so a crash or
    a full disk never leaves a half-written scene where a good one was."""
    path = Path(path)
    if data.ndim != 3 or data.shape[0] != len(band_names):
        raise ValueError(f"data shape {data.shape} does not match bands {band_names}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tags = {
        "REFLECTANCE_SCALE": f"{reflectance_scale:g}",
        "SCENE_ID": scene_id,
        "SOURCE": source,
        "PORT": port or "",
    }
    if acquisition_time is not None:
        tags["ACQUISITION_TIME"] = acquisition_time.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    tags.update(extra_tags or {})
    _, height, width = data.shape
    tiled = height >= 256 and width >= 256
    profile = dict(
        driver="GTiff",
        width=width,
        height=height,
        count=data.shape[0],
        dtype=str(data.dtype),
        crs=CRS.from_user_input(crs),
        transform=transform,
        compress="deflate",
        predictor=2,
        tiled=tiled,
        interleave="pixel",
    )
    if tiled:
        profile.update(blockxsize=256, blockysize=256)
    fd, tmp_name = tempfile.mkstemp(prefix=".tmp-", suffix=".tif", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_name, 0o666 & ~umask)  # mkstemp makes 0600; a scene is no secret
    try:
        with rasterio.open(tmp_name, "w", **profile) as dst:
            dst.write(data)
            dst.update_tags(**tags)
            for i, name in enumerate(band_names, start=1):
                dst.set_band_description(i, name)
        os.replace(tmp_name, path)
    except rasterio.errors.RasterioError as exc:
        # GDAL reports a full disk as "Write failed. See previous exception": say what it is,
        # as an OSError, which callers record as a failure to retry (not a bad scene).
        full = _space_left(path.parent) < DISK_FULL_BYTES
        Path(tmp_name).unlink(missing_ok=True)
        code, what = (errno.ENOSPC, "no space left on device") if full else (errno.EIO, "")
        raise OSError(code, f"cannot write {path}: {what or _short(exc)}") from None
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


# Free space under which a failed GeoTIFF write is taken for a full disk: GDAL writes a block
# at a time (a 256 px block of 6 uint16 bands is 768 KiB before compression).
DISK_FULL_BYTES = 4 * 2**20


def _space_left(folder: Path) -> int:
    try:
        stats = os.statvfs(folder)
    except OSError:
        return DISK_FULL_BYTES
    return stats.f_bavail * stats.f_frsize
