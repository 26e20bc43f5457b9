"""Overlapping chips over a scene, and stitching per-chip outputs back.

Chips are read window by window, so memory stays bounded by the chip size however large the
scene. Every chip carries its array with its window, transform, CRS and bounds (as torchgeo's
samples do), and the `core` window it owns: the cores of all chips partition the scene exactly,
which is what lets stitching reproduce the scene and lets detection drop duplicates at seams.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window
from rasterio.windows import bounds as window_bounds
from rasterio.windows import transform as window_transform

from imagery.scene import SCENE_BANDS, SceneInfo, open_pixels, read_reflectance, read_scl


@dataclass
class Chip:
    array: np.ndarray  # (C, size, size) float32 reflectance, padded past the scene edge
    window: Window  # the chip's place in the scene grid (may reach past the edge)
    core: Window  # the part of the scene this chip owns; cores partition the scene
    transform: Affine
    crs: CRS
    bounds: tuple[float, float, float, float]  # (left, bottom, right, top) in `crs`
    scl: np.ndarray | None = None

    @property
    def valid(self) -> np.ndarray:
        """Mask of chip pixels that lie inside the scene."""
        return ~np.isnan(self.array).all(axis=0) if self.array.size else np.zeros((0, 0), bool)


def _starts(length: int, size: int, overlap: int) -> list[int]:
    if length <= size:
        return [0]
    stride = size - overlap
    starts = list(range(0, length - size, stride))
    starts.append(length - size)  # last chip flush with the edge, so the edge is covered
    return sorted(set(starts))


def _cores(starts: list[int], size: int, length: int) -> list[tuple[int, int]]:
    """Split [0, length) at the middle of each overlap: chip i owns [lo_i, hi_i)."""
    cuts = [0]
    for a, b in zip(starts, starts[1:], strict=False):
        cuts.append((b + min(a + size, length)) // 2)
    cuts.append(length)
    return list(zip(cuts[:-1], cuts[1:], strict=True))


def chip_windows(
    width: int, height: int, size: int = 256, overlap: int = 32
) -> list[tuple[Window, Window]]:
    """(window, core) pairs covering a width x height grid with chips of `size` px that
    overlap by at least `overlap` px; edges are covered, small scenes get one padded chip."""
    if size <= 0 or not 0 <= overlap < size:
        raise ValueError(f"need size > 0 and 0 <= overlap < size, got {size=} {overlap=}")
    cols, rows = _starts(width, size, overlap), _starts(height, size, overlap)
    col_cores, row_cores = _cores(cols, size, width), _cores(rows, size, height)
    pairs = []
    for r, (r0, r1) in zip(rows, row_cores, strict=True):
        for c, (c0, c1) in zip(cols, col_cores, strict=True):
            pairs.append((Window(c, r, size, size), Window(c0, r0, c1 - c0, r1 - r0)))
    return pairs


def iter_chips(
    info: SceneInfo,
    size: int = 256,
    overlap: int = 32,
    bands: tuple[str, ...] = SCENE_BANDS,
    with_scl: bool = False,
) -> Iterator[Chip]:
    """Yield chips one at a time; pixels past the scene edge are NaN in every band. The
    scene stays open between chips (`open_pixels`): keep one iterator to one thread."""
    with open_pixels(info) as src:
        for window, core in chip_windows(info.width, info.height, size, overlap):
            yield read_chip(info, window, core, bands, with_scl, src)


def read_chip(
    info: SceneInfo, window: Window, core: Window, bands: tuple[str, ...] = SCENE_BANDS,
    with_scl: bool = False,
    src: rasterio.DatasetReader | None = None,
) -> Chip:
    """One chip of `chip_windows`, read. Without `src` each read opens the file, so threads
    may share `info`; with it (`open_pixels`) the handle is the calling thread's own."""
    return Chip(
        array=read_reflectance(info, bands, window, fill=np.nan, src=src),
        window=window,
        core=core,
        transform=window_transform(window, info.transform),
        crs=info.crs,
        bounds=window_bounds(window, info.transform),
        scl=read_scl(info, window, src) if with_scl else None,
    )


class Stitcher:
    """Accumulate per-chip outputs (C, size, size) into a scene-sized array by chip cores."""

    def __init__(self, width: int, height: int, channels: int = 1, dtype=np.float32):
        self.result = np.zeros((channels, height, width), dtype=dtype)
        self.filled = np.zeros((height, width), dtype=bool)

    def add(self, window: Window, core: Window, output: np.ndarray) -> None:
        if output.ndim == 2:
            output = output[None]
        r0, c0 = int(core.row_off - window.row_off), int(core.col_off - window.col_off)
        h, w = int(core.height), int(core.width)
        rows = slice(int(core.row_off), int(core.row_off) + h)
        cols = slice(int(core.col_off), int(core.col_off) + w)
        self.result[:, rows, cols] = output[:, r0 : r0 + h, c0 : c0 + w]
        self.filled[rows, cols] = True

    @property
    def complete(self) -> bool:
        return bool(self.filled.all())


def stitch(chips: list[Chip], outputs: list[np.ndarray], width: int, height: int) -> np.ndarray:
    """Stitch per-chip outputs back into scene coordinates."""
    channels = outputs[0].shape[0] if outputs[0].ndim == 3 else 1
    stitcher = Stitcher(width, height, channels, outputs[0].dtype)
    for chip, out in zip(chips, outputs, strict=True):
        stitcher.add(chip.window, chip.core, out)
    if not stitcher.complete:
        raise ValueError("chips do not cover the scene")
    return stitcher.result
