"""Held-out data for the learning loop: labelled folders split by date, or a scene cut in two
halves along a line through no labelled vessel (what `retrain` holds out when the reviews
come from one acquisition date, and how benchmarks/adapt_bench.py replays a port)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import rasterio
import shapely
from pyproj import Transformer
from rasterio.windows import Window
from shapely.geometry import shape


class SplitError(ValueError):
    """A folder that cannot be split as asked."""


def _pixel_geometries(doc: dict, crs, transform) -> list:
    """Each feature's geometry in the scene's pixel grid (x right, y down)."""
    to_scene = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    inverse = ~transform

    def to_pixels(xy: np.ndarray) -> np.ndarray:
        x, y = to_scene.transform(xy[:, 0], xy[:, 1])
        col, row = inverse * (np.asarray(x), np.asarray(y))
        return np.column_stack([col, row])

    return [shapely.transform(shape(f["geometry"]), to_pixels) for f in doc["features"]]


def cut_position(extents: list[tuple[float, float]], size: int,
                 middle: int | None = None) -> int:
    """The integer line nearest `middle` (default the middle of [0, size)) that no (low, high)
    extent straddles."""
    middle = size // 2 if middle is None else min(max(int(middle), 1), size - 1)
    for offset in range(size):
        for c in (middle - offset, middle + offset):
            if 0 < c < size and not any(lo < c < hi for lo, hi in extents):
                return c
    raise SplitError("every line across the scene cuts a labelled vessel")


def cut_in_halves(folder: str | os.PathLike, out_a: str | os.PathLike,
                  out_b: str | os.PathLike, balance: str = "area") -> tuple[Path, Path]:
    """Write the two halves of a labelled folder (scene.tif + labels.geojson) into `out_a`
    (left or top) and `out_b`, cut across its longer side along a line through no labelled
    outline, nearest the scene's middle (`balance="area"`) or the labelled vessels' median
    (`"vessels"`: both halves hold vessels where the scene's middle would leave one side
    empty); each feature goes with the half holding its centre."""
    folder = Path(folder)
    doc = json.loads((folder / "labels.geojson").read_text(encoding="utf-8"))
    with rasterio.open(folder / "scene.tif") as src:
        geoms = _pixel_geometries(doc, src.crs, src.transform)
        axis = 0 if src.width >= src.height else 1  # 0: a vertical cut (x), 1: horizontal
        size = src.width if axis == 0 else src.height
        extents = [(g.bounds[axis], g.bounds[axis + 2]) for g in geoms if g.geom_type != "Point"]
        centres = sorted(_centre(g)[axis] for f, g in zip(doc["features"], geoms, strict=True)
                         if _is_vessel(f))
        middle = None
        if balance == "vessels" and len(centres) >= 2:
            k = len(centres) // 2  # between the two middle vessels
            middle = round((centres[k - 1] + centres[k]) / 2)
        cut = cut_position(extents, size, middle)
        if axis == 0:
            windows = (Window(0, 0, cut, src.height), Window(cut, 0, src.width - cut, src.height))
        else:
            windows = (Window(0, 0, src.width, cut), Window(0, cut, src.width, src.height - cut))
        outs = (Path(out_a), Path(out_b))
        for win, out in zip(windows, outs, strict=True):
            _write_window(src, win, out / "scene.tif")
    for k, out in enumerate(outs):
        side = [f for f, g in zip(doc["features"], geoms, strict=True)
                if (_centre(g)[axis] < cut) == (k == 0)]
        props = {**doc.get("properties", {}), "half": "ab"[k], "cut_from": str(folder)}
        write_labels(out / "labels.geojson", {**doc, "features": side, "properties": props})
    return outs


def _centre(geom) -> tuple[float, float]:
    c = geom.centroid if not geom.is_empty else geom
    return c.x, c.y


def _write_window(src, win: Window, path: Path) -> None:
    """A window of an open scene with its band names and tags (DN untouched)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {k: v for k, v in src.profile.items()
               if k not in ("blockxsize", "blockysize", "tiled")}
    profile.update(width=int(win.width), height=int(win.height),
                   transform=src.window_transform(win))
    tmp = path.with_name(f".{path.name}.tmp")
    with rasterio.open(tmp, "w", **profile) as dst:
        dst.write(src.read(window=win))
        dst.update_tags(**src.tags())
        dst.descriptions = src.descriptions
        for i in range(1, src.count + 1):
            dst.update_tags(i, **src.tags(i))
    os.replace(tmp, path)


def write_labels(path: Path, doc: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc), encoding="utf-8")
    os.replace(tmp, path)


def count_labels(folder: str | os.PathLike) -> int:
    """Labelled vessels (outlines and positive points) in a folder."""
    doc = json.loads((Path(folder) / "labels.geojson").read_text(encoding="utf-8"))
    return sum(1 for f in doc["features"] if _is_vessel(f))


def _is_vessel(feature: dict) -> bool:
    props = feature.get("properties") or {}
    return not props.get("negative") and not props.get("ignore") and \
        props.get("category", "ship") not in ("not_ship", "unreviewed")


def split_by_date(dated: list[tuple[str, Path]]) -> tuple[list[Path], list[Path]] | None:
    """(train, held out) with the latest third of the acquisition dates held out (at least
    one date), or None when there are fewer than two dates."""
    dates = sorted({d for d, _ in dated})
    if len(dates) < 2:
        return None
    held_dates = set(dates[-max(1, math.ceil(len(dates) / 3)):])
    train = [f for d, f in dated if d not in held_dates]
    held = [f for d, f in dated if d in held_dates]
    return train, held
