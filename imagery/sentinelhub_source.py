"""Sentinel-2 L2A scenes of a port from Sentinel Hub (Copernicus Data Space by default).

`search` asks the Catalog API for the L2A items over the port's AOI; `fetch` asks the Process
API for B02 B03 B04 B08 B11 (UINT16, reflectance x 10000) and SCL over the AOI's bounding box
in the port's UTM zone at 10 m, and writes them in the scene format. Both go through
sentinelhub's download client, which retries 5xx and connection errors with backoff and waits
out HTTP 429; whatever still fails leaves as `SentinelHubError` naming the request and status.
"""

from __future__ import annotations

import logging
import math
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import requests
from affine import Affine
from oauthlib.oauth2.rfc6749.errors import OAuth2Error
from rasterio.crs import CRS as RioCRS
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.io import MemoryFile
from sentinelhub import (
    CRS,
    BBox,
    DataCollection,
    MimeType,
    MosaickingOrder,
    SentinelHubCatalog,
    SentinelHubDownloadClient,
    SentinelHubRequest,
    SHConfig,
)
from sentinelhub.decoding import decode_sentinelhub_err_msg
from sentinelhub.exceptions import DownloadFailedException, OutOfRequestsException

from imagery.config import (
    README_SECTION,
    CredentialsMissing,
    berthwatch_sh_config,
    describe,
    redact,
)
from imagery.ports import Port
from imagery.scene import SCENE_BANDS, SCL_BAND, SceneError, parse_time, write_scene
from imagery.sources import SceneRef, SourceAuthError, SourceError

__all__ = [
    "CredentialsMissing",
    "SentinelHubAuthError",
    "SentinelHubError",
    "SentinelHubSource",
    "aoi_grid",
    "s2_l2a_collection",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

SOURCE_NAME = "sentinelhub"
RESOLUTION_M = 10.0
REFLECTANCE_SCALE = 10000
FETCH_BANDS = (*SCENE_BANDS, SCL_BAND)
# The Process API renders at most 2500 x 2500 pixels per request.
MAX_PIXELS_PER_SIDE = 2500
# Tiles of one datatake share a sensing time to the second, while the next pass over a port
# comes about 100 minutes later on a neighbouring orbit: +-30 min pins one acquisition.
ACQUISITION_WINDOW = timedelta(minutes=30)

# Reflectance x 10000 keeps 1e-4 precision in UINT16 (SH clamps and rounds to the sample
# type); SCL is a class number, so it comes in digital numbers, untouched.
EVALSCRIPT = """//VERSION=3
function setup() {
  return {
    input: [{
      bands: ["B02", "B03", "B04", "B08", "B11", "SCL"],
      units: ["REFLECTANCE", "REFLECTANCE", "REFLECTANCE", "REFLECTANCE", "REFLECTANCE", "DN"]
    }],
    output: { bands: 6, sampleType: "UINT16" },
    mosaicking: "SIMPLE"
  };
}
function evaluatePixel(s) {
  return [s.B02 * 10000, s.B03 * 10000, s.B04 * 10000, s.B08 * 10000, s.B11 * 10000, s.SCL];
}
"""


class SentinelHubError(SourceError):
    """A Sentinel Hub request that failed after retries; names the request and the status."""

    def __init__(self, message: str, status: int | None = None):
        self.status = status
        super().__init__(message)


class SentinelHubAuthError(SentinelHubError, SourceAuthError):
    """Sentinel Hub refused the credentials (the message never contains the secret)."""


@dataclass(frozen=True)
class AoiGrid:
    """The 10 m pixel grid over a port's AOI bounding box, in the port's UTM zone."""

    bbox: BBox
    width: int
    height: int
    transform: Affine
    epsg: int


def aoi_grid(port: Port, resolution: float = RESOLUTION_M) -> AoiGrid:
    """The AOI's UTM bounding box, snapped outwards to whole pixels so every fetch of a port
    lands on the same grid (scenes of different dates then stack pixel for pixel)."""
    minx, miny, maxx, maxy = port.to_utm(port.aoi).bounds
    left = math.floor(minx / resolution) * resolution
    bottom = math.floor(miny / resolution) * resolution
    right = math.ceil(maxx / resolution) * resolution
    top = math.ceil(maxy / resolution) * resolution
    width, height = round((right - left) / resolution), round((top - bottom) / resolution)
    if max(width, height) > MAX_PIXELS_PER_SIDE:
        raise SentinelHubError(
            f"the AOI of port {port.name} is {width} x {height} pixels at {resolution:g} m; the "
            f"Process API allows at most {MAX_PIXELS_PER_SIDE} per side (draw a smaller AOI)"
        )
    bbox = BBox((left, bottom, right, top), crs=CRS(port.epsg))
    transform = Affine(resolution, 0, left, 0, -resolution, top)
    return AoiGrid(bbox, width, height, transform, port.epsg)


def s2_l2a_collection(base_url: str) -> DataCollection:
    """Sentinel-2 L2A bound to the configured deployment. The built-in definition points at the
    commercial service; CDSE serves the same collection id under its own URL."""
    base_url = base_url.rstrip("/")
    builtin = DataCollection.SENTINEL2_L2A
    if builtin.service_url and builtin.service_url.rstrip("/") == base_url:
        return builtin
    slug = re.sub(r"[^A-Za-z0-9]+", "_", base_url.split("://", 1)[-1]).strip("_").upper()
    return builtin.define_from(f"SENTINEL2_L2A_{slug}", service_url=base_url)


class SentinelHubSource:
    """Catalog search and Process API fetch of Sentinel-2 L2A scenes of a port."""

    name = SOURCE_NAME

    def __init__(self, config: SHConfig):
        if not (config.sh_client_id and config.sh_client_secret):
            missing = tuple(name for name, value in (("SH_CLIENT_ID", config.sh_client_id),
                                                     ("SH_CLIENT_SECRET", config.sh_client_secret))
                            if not value)
            raise CredentialsMissing(missing)
        self.config = config
        self.collection = s2_l2a_collection(config.sh_base_url)
        # One client for catalog and process calls, so they share one rate-limit state. A 429
        # without Retry-After waits `download_sleep_time`, not sentinelhub's default 30 s.
        self.client = SentinelHubDownloadClient(
            config=config, default_retry_time=max(config.download_sleep_time, 0.001)
        )

    def __repr__(self) -> str:
        return f"SentinelHubSource({describe(self.config)})"

    @classmethod
    def from_env(cls, **settings: Any) -> SentinelHubSource:
        """Configured from SH_* environment variables; raises `CredentialsMissing`. `settings`
        go to `berthwatch_sh_config` (max_download_attempts, download_sleep_time, ...)."""
        return cls(berthwatch_sh_config(**settings))

    # --- search ------------------------------------------------------------------------------

    def search(
        self, port: Port, start: datetime, end: datetime, max_cloud: float = 100.0
    ) -> list[SceneRef]:
        """L2A items over the AOI between `start` and `end` whose tile-wide cloud cover is at
        most `max_cloud` percent, oldest first. Tiles of one pass stay separate scenes."""
        catalog = SentinelHubCatalog(config=self.config)
        catalog.client = self.client
        what = f"catalog search for {port.name} {start:%Y-%m-%d}..{end:%Y-%m-%d}"
        features = self._call(what, lambda: list(catalog.search(
            self.collection,
            bbox=BBox(port.aoi.bounds, crs=CRS.WGS84),
            time=(start, end),
            filter=f"eo:cloud_cover <= {max_cloud:g}",
            fields={"include": ["id", "properties.datetime", "properties.eo:cloud_cover"],
                    "exclude": []},
        )))
        refs = {ref.scene_id: ref for ref in (_ref_from_item(item, port, what)
                                              for item in features)}
        return sorted(refs.values(), key=lambda r: (r.acquisition_time, r.scene_id))

    # --- fetch -------------------------------------------------------------------------------

    def fetch(self, ref: SceneRef, port: Port, dest: Path) -> Path:
        """Render the scene over the AOI grid and write it at `dest` atomically."""
        grid = aoi_grid(port)
        request = self.process_request(ref, grid)
        what = f"Process API request for scene {ref.scene_id} of {port.name}"
        responses = self._call(what, lambda: self.client.download(
            request.download_list, decode_data=False))
        data, crs, transform = _decode_tiff(responses[0].content, grid, what)
        if not data[-1].any():
            raise SceneError(dest, f"Sentinel Hub returned no data for {ref.scene_id} within "
                                   f"{_minutes(ACQUISITION_WINDOW)} of its acquisition time")
        return write_scene(
            dest, data, FETCH_BANDS, crs, transform,
            scene_id=ref.scene_id, port=port.name, source=SOURCE_NAME,
            acquisition_time=ref.acquisition_time, reflectance_scale=REFLECTANCE_SCALE,
            extra_tags=_provenance(ref, self.config),
        )

    def process_request(self, ref: SceneRef, grid: AoiGrid) -> SentinelHubRequest:
        """The Process API request for one acquisition, pinned to +-30 min around it so the
        mosaic cannot borrow pixels from another pass."""
        window = (ref.acquisition_time - ACQUISITION_WINDOW,
                  ref.acquisition_time + ACQUISITION_WINDOW)
        return SentinelHubRequest(
            evalscript=EVALSCRIPT,
            input_data=[SentinelHubRequest.input_data(
                self.collection, time_interval=window,
                mosaicking_order=MosaickingOrder.LEAST_RECENT,
            )],
            responses=[SentinelHubRequest.output_response("default", MimeType.TIFF)],
            bbox=grid.bbox,
            size=(grid.width, grid.height),
            config=self.config,
        )

    # --- errors ------------------------------------------------------------------------------

    def _call(self, what: str, action: Callable[[], T]) -> T:
        """Run a request; turn whatever sentinelhub, oauthlib or requests raise into one clear
        `SentinelHubError`. `from None`: the chained originals may quote request bodies."""
        try:
            return action()
        except OAuth2Error as exc:
            raise self._auth_error(what, exc.status_code, exc.error) from None
        except OutOfRequestsException:
            attempts = self.config.max_retries
            raise SentinelHubError(f"{what} failed: still rate limited (HTTP 429) after "
                                   f"{attempts} attempt(s)", 429) from None
        except DownloadFailedException as exc:
            raise self._download_error(what, exc.request_exception) from None
        except requests.RequestException as exc:
            raise self._download_error(what, exc) from None
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            # A 200 whose body is not what the API documents (an HTML maintenance page, JSON
            # without the expected members): sentinelhub fails parsing it.
            raise SentinelHubError(redact(f"{what}: unexpected response from Sentinel Hub "
                                          f"({type(exc).__name__}: {exc})"[:500])) from None

    def _download_error(self, what: str, exc: Exception | None) -> SentinelHubError:
        response = getattr(exc, "response", None)
        status = getattr(response, "status_code", None)
        url = str(getattr(response, "url", "") or "")
        attempts = self.config.max_download_attempts
        if response is None:
            return SentinelHubError(redact(
                f"{what} failed after {attempts} attempt(s): {type(exc).__name__}: {exc}"))
        detail = decode_sentinelhub_err_msg(response)
        # A 4xx from the token service, or a 401 anywhere, means the credentials; a 5xx from
        # the token service is an outage and is reported as such.
        at_token_service = url.startswith(self.config.sh_token_url)
        if status == 401 or (at_token_service and status is not None and status < 500):
            return self._auth_error(what, status, detail)
        return SentinelHubError(redact(
            f"{what} failed: HTTP {status} from {url} after {attempts} attempt(s)"
            + (f": {detail}" if detail else "")), status)

    def _auth_error(self, what: str, status: int | None, detail: str) -> SentinelHubAuthError:
        code = f"HTTP {status}" if status else "refused"
        return SentinelHubAuthError(redact(
            f"{what}: Sentinel Hub did not accept the credentials ({code} from "
            f"{self.config.sh_token_url}{': ' + detail if detail else ''}); check SH_CLIENT_ID "
            f"and SH_CLIENT_SECRET and the base/token URLs (see README section "
            f"\"{README_SECTION}\")"), status)


def _ref_from_item(item: dict, port: Port, what: str) -> SceneRef:
    try:
        props = item.get("properties") or {}
        cloud = props.get("eo:cloud_cover")
        return SceneRef(
            scene_id=str(item["id"]),
            port=port.name,
            acquisition_time=parse_time(str(props["datetime"])),
            source=SOURCE_NAME,
            cloud_cover=None if cloud is None else float(cloud),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        name = item.get("id") if isinstance(item, dict) else item
        raise SentinelHubError(f"{what}: unexpected catalog item {name!r} "
                               f"({type(exc).__name__}: {exc})") from None


def _decode_tiff(content: bytes, grid: AoiGrid, what: str) -> tuple[np.ndarray, RioCRS, Affine]:
    """The Process API TIFF as (6, H, W) uint16 with its georeferencing; the requested grid
    stands in where the TIFF carries none."""
    if not content:
        raise SentinelHubError(f"{what}: the response is empty, not a TIFF")
    try:
        with warnings.catch_warnings():
            # A TIFF without georeferencing is handled below; rasterio's warning is noise.
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with MemoryFile(content) as memfile, memfile.open() as src:
                data = src.read()
                crs, transform = src.crs, src.transform
    except RasterioError as exc:
        raise SentinelHubError(f"{what}: response is not a readable TIFF ({exc})") from None
    expected = (len(FETCH_BANDS), grid.height, grid.width)
    if data.shape != expected:
        raise SentinelHubError(f"{what}: response has shape {data.shape}, expected {expected}")
    if data.dtype != np.uint16:
        raise SentinelHubError(f"{what}: response dtype is {data.dtype}, expected uint16")
    if crs is None:
        crs, transform = RioCRS.from_epsg(grid.epsg), grid.transform
    return data, crs, transform


def _provenance(ref: SceneRef, config: SHConfig) -> dict[str, str]:
    tags = {"PROVIDER_URL": config.sh_base_url, "COLLECTION": "sentinel-2-l2a"}
    if ref.cloud_cover is not None:
        tags["TILE_CLOUD_COVER"] = f"{ref.cloud_cover:g}"
    return tags


def _minutes(delta: timedelta) -> str:
    return f"+-{delta.total_seconds() / 60:g} min"
