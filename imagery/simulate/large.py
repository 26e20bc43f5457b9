"""A SIMULATED scene of any size, up to a whole 10980 x 10980 Sentinel-2 tile, for the
benchmarks: written strip by strip so memory stays bounded by one strip, with row-seeded noise
and a halo so that strips join without a seam."""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from imagery.scene import SCENE_BANDS
from imagery.simulate.constants import (
    BARE,
    CLASS_SPECTRA,
    CLASS_TEXTURE,
    FOREST,
    NOISE_SIGMA,
    PIXEL_M,
    SCALE,
    URBAN,
    WATER,
)
from imagery.simulate.noise import _rng, _upsample, fractal_noise
from imagery.simulate.pixels import _blur, _quantize, _vessel_look, render_vessel
from imagery.simulate.truth import current_umask

LARGE_CELL = 32  # the big scene's land and land-cover fields live on a 320 m grid


def write_large_scene(
    path: str | os.PathLike,
    width: int = 10980,
    height: int = 10980,
    *,
    seed: int,
    strip_rows: int = 512,
    epsg: int = 32652,
) -> Path:
    """Write a SIMULATED 5-band scene of any size (a whole 10980 x 10980 Sentinel-2 tile by
    default) in strips, so memory stays bounded by one strip (~150 MB for 512 rows of a full
    tile) whatever the size. Tiled 512 px, ZSTD, atomic like `write_scene`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = _rng(seed, 11)
    cells = (height // LARGE_CELL + 2, width // LARGE_CELL + 2)
    coast = fractal_noise(cells, 3.2, rng) + np.linspace(1.5, -1.5, cells[0])[:, None]
    cover = fractal_noise(cells, 2.6, rng)
    hulls = _large_fleet(coast, width, height, rng)
    profile = _large_profile(width, height, epsg)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".tif", dir=path.parent)
    os.close(fd)
    try:
        # A small GDAL cache: finished tiles go to disk instead of piling up in memory.
        with rasterio.Env(GDAL_CACHEMAX=64), rasterio.open(tmp, "w", **profile) as dst:
            for row0 in range(0, height, strip_rows):
                rows = min(strip_rows, height - row0)
                strip = _large_strip(coast, cover, hulls, row0, rows, width, seed)
                dst.write(strip, window=Window(0, row0, width, rows))
            _tag_large(dst, width, height, seed)
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; a scene is no secret
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _large_profile(width: int, height: int, epsg: int) -> dict:
    block = 512 if min(width, height) >= 512 else 256
    tiled = min(width, height) >= block
    profile = dict(driver="GTiff", width=width, height=height, count=5, dtype="uint16",
                   crs=CRS.from_epsg(epsg), transform=Affine(PIXEL_M, 0, 600000.0, 0,
                                                             -PIXEL_M, 4700040.0),
                   compress="zstd", zstd_level=1, predictor=2, interleave="pixel",
                   tiled=tiled, bigtiff="if_safer")
    if tiled:
        profile.update(blockxsize=block, blockysize=block)
    return profile


def _tag_large(dst, width: int, height: int, seed: int) -> None:
    dst.update_tags(REFLECTANCE_SCALE=f"{SCALE:g}", SCENE_ID=f"SIM_LARGE_{width}x{height}_{seed}",
                    SOURCE="simulated", SIMULATED="true", PORT="",
                    ACQUISITION_TIME="2024-06-15T01:50:00Z",
                    SIM_NOTE="SIMULATED benchmark scene: synthetic, not an observation")
    for i, name in enumerate(SCENE_BANDS, start=1):
        dst.set_band_description(i, name)


def _large_fleet(coast: np.ndarray, width: int, height: int,
                 rng: np.random.Generator) -> np.ndarray:
    """Vessels (x, y, heading, length px, width px) scattered over open water."""
    count = max(1, width * height // 200_000)
    xs, ys = rng.uniform(20, width - 20, count), rng.uniform(20, height - 20, count)
    water = coast[(ys // LARGE_CELL).astype(int), (xs // LARGE_CELL).astype(int)] < -0.3
    lengths = np.exp(rng.uniform(math.log(4), math.log(30), count))
    widths = np.clip(lengths / rng.uniform(5.5, 7.5, count), 0.8, 5)
    return np.column_stack([xs, ys, rng.uniform(0, 360, count), lengths, widths])[water]


def _row_noise(seed: int, stream: int, row0: int, shape: tuple[int, ...]) -> np.ndarray:
    """Noise drawn row by row from the row's own seed: the same pixels get the same noise
    whichever strip (or halo) they are drawn in, so strips join without a seam."""
    rows, rest = shape[-2], shape[:-2]
    out = np.empty(shape, dtype=np.float32)
    for i in range(rows):
        out[..., i, :] = _rng(seed, stream, row0 + i).standard_normal(
            (*rest, shape[-1]), dtype=np.float32)
    return out


def _large_strip(coast: np.ndarray, cover: np.ndarray, hulls: np.ndarray, row0: int, rows: int,
                 width: int, seed: int) -> np.ndarray:
    """Rows row0..row0+rows of the big scene as uint16 (5, rows, width). A halo of rows
    around the strip keeps the PSF blur seamless across strips."""
    halo = 4
    top = max(0, row0 - halo)
    shape = (rows + (row0 - top) + halo, width)
    land = _upsample(coast, LARGE_CELL, shape, top) > 0
    kind = _upsample(cover, LARGE_CELL, shape, top)
    classes = np.where(land, np.where(kind > 0.8, URBAN, np.where(kind < -1.0, BARE, FOREST)),
                       WATER).astype(np.uint8)
    del land, kind
    texture = _row_noise(seed, 12, top, shape) * CLASS_TEXTURE[classes]
    image = np.empty((5, *shape), dtype=np.float32)
    for b in range(5):
        image[b] = CLASS_SPECTRA[:, b][classes] * (1 + texture)
    del texture, classes
    near = hulls[(hulls[:, 1] > top - 20) & (hulls[:, 1] < top + shape[0] + 20)]
    for x, y, heading, length, beam in near:
        look = _vessel_look(f"large-{x:.0f}-{y:.0f}", seed)
        render_vessel(image, None, x, y - top, heading, length, beam, look, supersample=3)
    _blur(image)
    for b in range(5):
        image[b] += _row_noise(seed, 13 + b, top, shape) * NOISE_SIGMA[b]
    return _quantize(image)[:, row0 - top: row0 - top + rows]
