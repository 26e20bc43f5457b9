"""The tiler: chips cover the scene, carry rasterio's geometry, and stitch back exactly."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.windows import Window
from rasterio.windows import bounds as window_bounds
from rasterio.windows import transform as window_transform

from imagery.scene import SCENE_BANDS, open_scene, read_reflectance, read_scl
from imagery.tiling import Stitcher, chip_windows, iter_chips, stitch

DATA = Path(__file__).parent / "data"


def _chips(name, size, overlap, **kw):
    info = open_scene(DATA / name)
    return info, list(iter_chips(info, size=size, overlap=overlap, **kw))


@pytest.mark.parametrize("name, size, overlap", [
    ("tile_83x61.tif", 32, 8), ("tile_83x61.tif", 24, 0), ("tile_83x61.tif", 64, 31),
    ("tile_20x13.tif", 32, 8),
])
def test_round_trip_stitches_back_the_scene_exactly(name, size, overlap):
    info, chips = _chips(name, size, overlap, with_scl=True)
    full = read_reflectance(info)
    back = stitch(chips, [c.array for c in chips], info.width, info.height)
    assert back.shape == full.shape and np.array_equal(back, full)
    scl = stitch(chips, [c.scl for c in chips], info.width, info.height)
    assert np.array_equal(scl[0], read_scl(info))


def test_scene_smaller_than_a_chip_is_padded():
    info, chips = _chips("tile_20x13.tif", 32, 8)
    (chip,) = chips
    assert chip.array.shape == (5, 32, 32)
    assert chip.core == Window(0, 0, 20, 13)
    assert np.array_equal(chip.array[:, :13, :20], read_reflectance(info))
    assert np.isnan(chip.array[:, 13:, :]).all() and np.isnan(chip.array[:, :, 20:]).all()
    assert chip.valid.sum() == 20 * 13


def test_chip_pixels_transform_and_bounds_agree_with_rasterio():
    info, chips = _chips("tile_83x61.tif", 32, 8)
    t = info.transform
    with rasterio.open(info.path) as src:
        for chip in chips:
            w = chip.window
            col, row = int(w.col_off), int(w.row_off)
            # rasterio's own functions, and the same computed by hand from the affine.
            assert chip.transform == window_transform(w, t)
            assert chip.transform == t * Affine.translation(col, row)
            assert chip.bounds == pytest.approx(window_bounds(w, t))
            left, top = t.c + col * t.a, t.f + row * t.e
            assert chip.bounds == pytest.approx((left, top + w.height * t.e,
                                                 left + w.width * t.a, top))
            assert chip.crs == info.crs
            dn = src.read([1, 2, 3, 4, 5], window=w, boundless=True, fill_value=0)
            inside = ~np.isnan(chip.array)
            assert np.array_equal(chip.array[inside], (dn / 10000.0).astype(np.float32)[inside])


def test_chip_bands_follow_the_request_and_missing_bands_are_nan():
    info, chips = _chips("tile_83x61.tif", 32, 8, bands=("B08", "B02", "B01"))
    full = read_reflectance(info, ("B08", "B02"))
    chip = chips[0]
    assert np.array_equal(chip.array[:2], full[:, :32, :32])
    assert np.isnan(chip.array[2]).all()


GEOMETRIES = [(83, 61, 32, 8), (1, 1, 32, 8), (32, 32, 32, 8), (33, 100, 32, 0),
              (500, 37, 64, 16), (257, 256, 256, 32), (1000, 700, 256, 32)]


@pytest.mark.parametrize("width, height, size, overlap", GEOMETRIES)
def test_cores_partition_the_scene_and_windows_cover_it(width, height, size, overlap):
    owned = np.zeros((height, width), dtype=np.int32)
    covered = np.zeros((height, width), dtype=np.int32)
    for window, core in chip_windows(width, height, size, overlap):
        assert window.width == size and window.height == size
        assert window.col_off >= 0 and window.row_off >= 0
        # The core lies inside its own window and inside the scene.
        assert window.col_off <= core.col_off and core.col_off + core.width <= min(
            window.col_off + size, width)
        assert window.row_off <= core.row_off and core.row_off + core.height <= min(
            window.row_off + size, height)
        owned[core.toslices()] += 1
        covered[window.toslices()] += 1
    assert (owned == 1).all(), "every pixel belongs to exactly one core"
    assert (covered >= 1).all(), "edges covered"


@pytest.mark.parametrize("length, size, overlap", [(10980, 256, 32), (83, 32, 8),
                                                    (1000, 256, 32), (257, 256, 255)])
def test_overlap_is_honoured_and_the_last_chip_is_flush(length, size, overlap):
    pairs = chip_windows(length, 1, size, overlap)
    starts = [int(w.col_off) for w, _ in pairs]
    assert starts[0] == 0 and starts[-1] + size == length
    assert all(b - a <= size - overlap for a, b in zip(starts, starts[1:], strict=False))
    cores = [(int(c.col_off), int(c.col_off + c.width)) for _, c in pairs]
    assert cores[0][0] == 0 and cores[-1][1] == length
    assert all(a[1] == b[0] for a, b in zip(cores, cores[1:], strict=False))


@pytest.mark.parametrize("size, overlap", [(0, 0), (32, 32), (32, -1)])
def test_bad_chip_parameters_are_refused(size, overlap):
    with pytest.raises(ValueError):
        chip_windows(100, 100, size, overlap)


def test_stitching_refuses_an_incomplete_cover():
    info, chips = _chips("tile_83x61.tif", 32, 8)
    with pytest.raises(ValueError, match="do not cover"):
        stitch(chips[:-1], [c.array for c in chips[:-1]], info.width, info.height)
    stitcher = Stitcher(info.width, info.height, 1)
    stitcher.add(chips[0].window, chips[0].core, np.ones((32, 32), np.float32))
    assert not stitcher.complete


def test_fixtures_are_what_the_generator_makes(tmp_path):
    spec = importlib.util.spec_from_file_location("make_fixtures", DATA / "make_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for made in module.make(tmp_path):
        shipped = DATA / made.name
        if made.name == "corrupt.tif":
            assert made.read_bytes() == shipped.read_bytes()
            continue
        if made.name == "truncated.tif":
            assert len(made.read_bytes()) == len(shipped.read_bytes())
            continue
        with rasterio.open(made) as a, rasterio.open(shipped) as b:
            assert a.descriptions == b.descriptions and a.tags() == b.tags()
            assert a.crs == b.crs and a.transform == b.transform
            assert np.array_equal(a.read(), b.read())
    assert SCENE_BANDS == module.BANDS
