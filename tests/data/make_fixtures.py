"""Regenerate the tiny test scenes in this folder (seeded: same files every time).

    python tests/data/make_fixtures.py [OUT_DIR]

Each file is a few kilobytes and stands for one case the scene format must handle:
- tile_83x61.tif, tile_20x13.tif: odd-sized scenes (5 bands + SCL) for tiler round trips;
  the second is smaller than one chip.
- chongjin_64.tif: a good 64 x 64 scene over the middle of Chongjin's AOI (UTM 52N, SCL water).
- chongjin_all_cloud.tif: the same grid, SCL cloud (9) everywhere.
- vostochny_64.tif: a good scene that misses Chongjin's AOI.
- missing_b11.tif, uint8.tif, int8.tif, wgs84.tif: missing band, wrong dtypes, CRS in degrees.
- acquisition_date.tif: ACQUISITION_DATE (day only) and no REFLECTANCE_SCALE tag, like sen2ships.
- corrupt.tif: random bytes; truncated.tif: the first half of chongjin_64.tif.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from imagery.ports import get_port  # noqa: E402

BANDS = ("B02", "B03", "B04", "B08", "B11")
WHEN = "2024-03-01T01:47:00Z"
SEED = 20240301


def write_raw(path: Path, data: np.ndarray, bands: tuple[str, ...], crs: str,
              transform: Affine, tags: dict[str, str]) -> Path:
    """Write exactly what is asked (no default tags), so fixtures can break the contract."""
    profile = dict(driver="GTiff", width=data.shape[2], height=data.shape[1],
                   count=data.shape[0], dtype=str(data.dtype), crs=crs, transform=transform,
                   compress="deflate")
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        dst.update_tags(**tags)
        for i, name in enumerate(bands, start=1):
            dst.set_band_description(i, name)
    return path


def _tags(scene_id: str, port: str = "", **extra: str) -> dict[str, str]:
    return {"REFLECTANCE_SCALE": "10000", "ACQUISITION_TIME": WHEN, "SCENE_ID": scene_id,
            "PORT": port, "SOURCE": "local", **extra}


def _reflectance(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Distinct values per pixel, water-like (DN 100..900), so round trips are checked."""
    return rng.integers(100, 900, (5, height, width), dtype=np.uint16)


def _port_grid(name: str, size: int = 64) -> tuple[str, Affine]:
    port = get_port(name)
    centre = port.to_utm(port.aoi).centroid
    left, top = round(centre.x / 10) * 10 - size * 5, round(centre.y / 10) * 10 + size * 5
    return f"EPSG:{port.epsg}", Affine(10, 0, left, 0, -10, top)


def _with_scl(data: np.ndarray, scl_class: int) -> np.ndarray:
    scl = np.full((1, *data.shape[1:]), scl_class, dtype=np.uint16)
    return np.concatenate([data, scl])


def make(out: Path = HERE) -> list[Path]:
    rng = np.random.default_rng(SEED)
    out.mkdir(parents=True, exist_ok=True)
    utm = Affine(10, 0, 600000, 0, -10, 4630000)
    made = [
        write_raw(out / "tile_83x61.tif", _with_scl(_reflectance(rng, 61, 83), 6),
                  BANDS + ("SCL",), "EPSG:32652", utm, _tags("TILE_83x61")),
        write_raw(out / "tile_20x13.tif", _with_scl(_reflectance(rng, 13, 20), 6),
                  BANDS + ("SCL",), "EPSG:32652", utm, _tags("TILE_20x13")),
    ]
    crs, grid = _port_grid("chongjin")
    good = _with_scl(_reflectance(rng, 64, 64), 6)
    made.append(write_raw(out / "chongjin_64.tif", good, BANDS + ("SCL",), crs, grid,
                          _tags("FIXTURE_CHONGJIN", "chongjin")))
    cloud = _with_scl(rng.integers(5000, 7000, (5, 64, 64), dtype=np.uint16), 9)
    made.append(write_raw(out / "chongjin_all_cloud.tif", cloud, BANDS + ("SCL",), crs, grid,
                          _tags("FIXTURE_CLOUD", "chongjin")))
    v_crs, v_grid = _port_grid("vostochny")
    made.append(write_raw(out / "vostochny_64.tif", good, BANDS + ("SCL",), v_crs, v_grid,
                          _tags("FIXTURE_VOSTOCHNY", "vostochny")))
    made += _broken(out, rng, good, crs, grid)
    return made


def _broken(out: Path, rng: np.random.Generator, good: np.ndarray, crs: str,
            grid: Affine) -> list[Path]:
    deg = Affine(0.0001, 0, 129.8, 0, -0.0001, 41.76)
    made = [
        write_raw(out / "missing_b11.tif", good[:4], BANDS[:4], crs, grid, _tags("NO_B11")),
        write_raw(out / "uint8.tif", (good[:5] // 4).astype(np.uint8), BANDS, crs, grid,
                  _tags("UINT8")),
        write_raw(out / "int8.tif", (good[:5] // 8).astype(np.int8), BANDS, crs, grid,
                  _tags("INT8")),
        write_raw(out / "wgs84.tif", good[:5], BANDS, "EPSG:4326", deg, _tags("WGS84")),
        write_raw(out / "acquisition_date.tif", good[:5], BANDS, crs, grid,
                  {"ACQUISITION_DATE": "2023-08-17", "SOURCE": "sen2ships-like"}),
    ]
    corrupt = out / "corrupt.tif"
    corrupt.write_bytes(b"II*\x00" + rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    whole = (out / "chongjin_64.tif").read_bytes()
    truncated = out / "truncated.tif"
    truncated.write_bytes(whole[: len(whole) // 2])
    return made + [corrupt, truncated]


if __name__ == "__main__":
    for path in make(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE):
        print(f"{path}  {path.stat().st_size} bytes")
