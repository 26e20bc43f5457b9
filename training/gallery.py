"""Pictures of the detector's mistakes: for each scored port, one contact sheet of its false
positives and its missed vessels at a threshold, so that people see what the model takes for
a vessel and which vessels it overlooks (numbers alone do not say that a false positive is a
container stack, or a small boat the labels leave out).

Each tile is a true-colour crop centred on the mistake. A false positive has a red cross at
the detection and its score, estimated length and distance to the nearest labelled outline;
a missed vessel has its outline in yellow and the best score any candidate within the match
tolerance had (`best -` where none did).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import shapely
from PIL import Image, ImageDraw
from pyproj import Transformer

from imagery.render import chip_rgb
from imagery.scene import open_scene
from training.evaluate import TOLERANCE_M, PortPrediction, _utm_projector, match_pairs

TILE_PX = 128  # each crop is drawn 128 px wide, caption below it
CAPTION_PX = 28
COLUMNS = 8


def _errors(pred: PortPrediction, threshold: float):
    """(false positives with their distance to the nearest outline in metres, missed ships
    with the best candidate score within the tolerance)."""
    found = [d for d in pred.detections if d.score >= threshold]
    pts = np.array([(d.lon, d.lat) for d in found]).reshape(-1, 2)
    pairs = match_pairs(pred.ships, pts)
    hit_ships, hit_dets = {i for i, _ in pairs}, {j for _, j in pairs}
    if not pred.ships:  # nothing labelled: every detection is a false positive
        return sorted(((d, float("inf")) for d in found), key=lambda e: -e[0].score), []
    project = _utm_projector(pred.ships)
    ships_m = np.array([shapely.transform(g, project) for g in pred.ships], dtype=object)
    gaps = shapely.distance(ships_m[:, None], shapely.points(project(pts))[None, :]).min(axis=0)
    false_pos = [(d, float(gaps[j])) for j, d in enumerate(found) if j not in hit_dets]
    cands = np.array([(d.lon, d.lat) for d in pred.detections]).reshape(-1, 2)
    near = shapely.distance(ships_m[:, None], shapely.points(project(cands))[None, :])
    scores = np.array([d.score for d in pred.detections])
    missed = []
    for i, ship in enumerate(pred.ships):
        if i not in hit_ships:
            close = scores[near[i] <= TOLERANCE_M]
            missed.append((ship, float(close.max()) if len(close) else None))
    false_pos.sort(key=lambda e: -e[0].score)
    return false_pos, missed


def _crop(info, cx: float, cy: float, context_px: int) -> tuple[Image.Image, int, int]:
    col0, row0 = int(round(cx)) - context_px, int(round(cy)) - context_px
    rgb = chip_rgb(info, col0, row0, 2 * context_px)
    return Image.fromarray(rgb).resize((TILE_PX, TILE_PX), Image.NEAREST), col0, row0


def _tile(image: Image.Image, caption: str, colour: str) -> Image.Image:
    tile = Image.new("RGB", (TILE_PX, TILE_PX + CAPTION_PX), "black")
    tile.paste(image, (0, 0))
    draw = ImageDraw.Draw(tile)
    draw.rectangle([0, 0, TILE_PX - 1, TILE_PX - 1], outline=colour)
    draw.multiline_text((3, TILE_PX + 1), caption, fill="white", spacing=1)
    return tile


def error_sheet(
    pred: PortPrediction, threshold: float, out: str | os.PathLike,
    context_px: int = 24, max_tiles: int = 48,
) -> tuple[Path, dict]:
    """Write one port's sheet (false positives first, then missed vessels, each capped at
    `max_tiles`) and return its path and the counts drawn and found."""
    if pred.scene is None:
        raise ValueError(f"{pred.port}: the prediction does not name its scene file")
    info = open_scene(pred.scene, require_bands=None)
    false_pos, missed = _errors(pred, threshold)
    zoom = TILE_PX / (2 * context_px)
    tiles = []
    for d, gap in false_pos[:max_tiles]:
        image, col0, row0 = _crop(info, d.px_x, d.px_y, context_px)
        x, y = (d.px_x - col0) * zoom, (d.px_y - row0) * zoom
        draw = ImageDraw.Draw(image)
        draw.line([x - 6, y, x + 6, y], fill="red", width=2)
        draw.line([x, y - 6, x, y + 6], fill="red", width=2)
        gap_text = f"{gap:.0f} m" if np.isfinite(gap) else "-"
        tiles.append(_tile(image, f"FP {d.score:.2f} | {d.length_m:.0f} m long\n"
                                  f"{gap_text} from a vessel", "red"))
    to_scene = Transformer.from_crs("EPSG:4326", info.crs, always_xy=True)
    inverse = ~info.transform
    for ship, best in missed[:max_tiles]:
        ring = np.asarray(shapely.get_exterior_ring(
            max(getattr(ship, "geoms", [ship]), key=lambda g: g.area)).coords)
        xs, ys = to_scene.transform(ring[:, 0], ring[:, 1])
        cols, rows = inverse * (np.asarray(xs), np.asarray(ys))
        image, col0, row0 = _crop(info, float(np.mean(cols)), float(np.mean(rows)), context_px)
        outline = [((c - col0) * zoom, (r - row0) * zoom) for c, r in zip(cols, rows, strict=True)]
        ImageDraw.Draw(image).line(outline + outline[:1], fill="yellow", width=1)
        best_text = f"{best:.2f}" if best is not None else "-"
        tiles.append(_tile(image, f"missed\nbest score {best_text}", "yellow"))
    counts = {"false_positives": len(false_pos), "missed": len(missed),
              "drawn": len(tiles)}
    width = COLUMNS * TILE_PX
    rows_n = max(1, -(-len(tiles) // COLUMNS))
    header = 22
    sheet = Image.new("RGB", (width, header + rows_n * (TILE_PX + CAPTION_PX)), (30, 30, 30))
    ImageDraw.Draw(sheet).text(
        (4, 5), f"{pred.port} ({pred.model}), threshold {threshold:g}: "
        f"{len(false_pos)} false positives, {len(missed)} missed vessels", fill="white")
    for k, tile in enumerate(tiles):
        sheet.paste(tile, ((k % COLUMNS) * TILE_PX, header + (k // COLUMNS) * tile.height))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.png")
    sheet.save(tmp)
    os.replace(tmp, out)
    return out, counts


def write_gallery(
    preds: list[PortPrediction], threshold: float, folder: str | os.PathLike
) -> dict[str, dict]:
    """One sheet per port in `folder` (`<port>_errors.png`); returns each port's counts and
    path. A port whose scene cannot be read is reported, not fatal."""
    report = {}
    for pred in preds:
        try:
            path, counts = error_sheet(pred, threshold, Path(folder) / f"{pred.port}_errors.png")
            report[pred.port] = {**counts, "path": str(path)}
        except (OSError, ValueError) as exc:
            report[pred.port] = {"error": str(exc)}
    return report
