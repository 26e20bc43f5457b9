"""Score the detector on labelled folders, per port and pooled.

Match rule (../shared/data/README.md): a predicted point and a labelled vessel may pair when
the point lies within 20 m of the vessel's outline (0 inside it); pairs are one-to-one and
minimise the total distance (Hungarian); unpaired points are false positives, unpaired vessels
false negatives. Distances are measured in the UTM zone of the labels.

`leave_ports_out=True` scores each port with the fold model that never saw it (the fold models
live in `folds/` beside the weights), which is how the model card's metrics are made.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import shapely
import torch
from pyproj import Transformer
from scipy.optimize import linear_sum_assignment
from shapely.geometry import shape

from imagery.detector import (
    PRECISION_HELP,
    BerthNet,
    Detection,
    WeightsEntry,
    _to_wgs84,
    decode_options,
    detect,
    get_weights,
    load_model,
    resolve_device,
    resolve_precision,
)
from imagery.scene import open_scene
from training.chips import find_scene_dirs

TOLERANCE_M = 20.0
SWEEP = tuple(round(t, 2) for t in np.arange(0.05, 0.96, 0.05))


def utm_epsg(lon: float, lat: float) -> int:
    zone = int((lon + 180) // 6) + 1
    return (32600 if lat >= 0 else 32700) + zone


def _utm_projector(ship_geoms: list):
    c = ship_geoms[0].centroid
    to_m = Transformer.from_crs("EPSG:4326", f"EPSG:{utm_epsg(c.x, c.y)}", always_xy=True)
    return lambda xy: np.column_stack(to_m.transform(xy[:, 0], xy[:, 1]))


def match_pairs(
    ship_geoms: list, points: np.ndarray, tol: float = TOLERANCE_M
) -> list[tuple[int, int]]:
    """(ship index, point index) pairs: one-to-one, within `tol` metres of the outline,
    minimising the total distance."""
    points = np.asarray(points, dtype=float).reshape(-1, 2)
    if not ship_geoms or not len(points):
        return []
    project = _utm_projector(ship_geoms)
    ships = np.array([shapely.transform(g, project) for g in ship_geoms], dtype=object)
    pts = shapely.points(project(points))
    cost = shapely.distance(ships[:, None], pts[None, :]).astype(float)
    rows, cols = linear_sum_assignment(np.where(cost <= tol, cost, 1e9))
    return [(int(r), int(c)) for r, c in zip(rows, cols, strict=True) if cost[r, c] <= tol]


def match_counts(
    ship_geoms: list, points: np.ndarray, tol: float = TOLERANCE_M
) -> dict[str, int]:
    """tp/fp/fn between vessel outlines (WGS84 shapely) and points (N, 2 lon/lat)."""
    points = np.asarray(points, dtype=float).reshape(-1, 2)
    tp = len(match_pairs(ship_geoms, points, tol))
    return {"tp": tp, "fp": len(points) - tp, "fn": len(ship_geoms) - tp}


def outline_length_m(ship_geoms: list) -> np.ndarray:
    """Each outline's length in metres: the long side of its minimum rotated rectangle in
    the labels' UTM zone."""
    if not ship_geoms:
        return np.zeros(0)
    project = _utm_projector(ship_geoms)
    lengths = []
    for g in ship_geoms:
        box = np.asarray(shapely.minimum_rotated_rectangle(shapely.transform(g, project))
                         .exterior.coords)
        sides = np.hypot(*np.diff(box[:3], axis=0).T)
        lengths.append(float(sides.max()))
    return np.array(lengths)


def length_agreement(preds: list, threshold: float) -> dict:
    """How the detections' `length_m` compares with the labelled outlines' lengths, over the
    vessels found at `threshold`: median error and median absolute error in metres."""
    errors = []
    for p in preds:
        found = [d for d in p.detections if d.score >= threshold]
        pts = np.array([(d.lon, d.lat) for d in found]).reshape(-1, 2)
        truth = outline_length_m(p.ships)
        errors += [found[j].length_m - truth[i] for i, j in match_pairs(p.ships, pts)]
    if not errors:
        return {"pairs": 0}
    e = np.array(errors)
    return {"pairs": len(e), "median_error_m": round(float(np.median(e)), 1),
            "median_abs_error_m": round(float(np.median(np.abs(e))), 1)}


def score_geojson(labels: dict, detections: dict, tol: float = TOLERANCE_M) -> dict:
    """Score two GeoJSON documents the way score_detections.py does."""
    ships = [shape(f["geometry"]) for f in labels.get("features", [])
             if f["geometry"]["type"] in ("Polygon", "MultiPolygon")]
    pts = [f["geometry"]["coordinates"][:2] for f in detections.get("features", [])
           if f.get("geometry", {}).get("type") == "Point"]
    return summarize(match_counts(ships, np.array(pts, dtype=float), tol))


def summarize(counts: dict) -> dict:
    tp, fp, fn = counts["tp"], counts["fp"], counts["fn"]
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    return {**counts, "precision": round(p, 4), "recall": round(r, 4), "f1": round(f1, 4),
            "labelled": tp + fn, "predicted": tp + fp, "count_error": fp - fn}


@dataclass
class PortPrediction:
    port: str
    ships: list  # WGS84 outlines
    detections: list[Detection]  # at the low sweep threshold, with lon/lat
    model: str
    pixel_m: float = 10.0  # ground size of the scene's pixels
    scene: str | None = None  # the scene file, for pictures of the errors


def _ship_outlines(folder: Path) -> list:
    doc = json.loads((folder / "labels.geojson").read_text(encoding="utf-8"))
    return [shape(f["geometry"]) for f in doc.get("features", [])
            if f["geometry"]["type"] in ("Polygon", "MultiPolygon")
            and not f.get("properties", {}).get("negative")]


def predict_folder(
    folder: Path, model: BerthNet, entry: WeightsEntry, threshold: float,
    box_fraction: float | None = None,
    min_length_m: float | None = None,
    tta: bool = False,
) -> tuple[list[Detection], float]:
    """Detections (with lon/lat) in one labelled folder, and the scene's ground pixel size."""
    info = open_scene(folder / "scene.tif", require_bands=None)
    options = decode_options(entry)
    if box_fraction is not None:
        options["box_fraction"] = box_fraction
    if min_length_m is not None:
        options["min_length_m"] = min_length_m
    found = detect(info, model, threshold, tta=tta, **options)
    _to_wgs84(info, found)
    return found, info.pixel_size_m


def fold_models(entry: WeightsEntry) -> list[WeightsEntry]:
    """The leave-ports-out fold models of `entry`, from `folds/` beside its weights."""
    folder = entry.path.parent / "folds"
    found = []
    for meta in sorted(folder.glob("*.json")):
        data = json.loads(meta.read_text(encoding="utf-8"))
        if data.get("fold_of") == entry.name:
            found.append((data, get_weights(meta)))
    if not found:
        raise FileNotFoundError(
            f"no fold models of {entry.name} in {folder}: train them with `berthwatch train "
            f"--data DIR... --out {entry.path.with_suffix('')} --folds {folder} --only-folds`, "
            "then calibrate with `python -m training.export --data DIR... --weights "
            f"{entry.path}`"
        )
    return [e for _, e in found]


def _holdout(meta_path: Path) -> list[str]:
    return json.loads(meta_path.read_text(encoding="utf-8")).get("holdout_ports", [])


def predict_all(
    data_dirs: list[str | os.PathLike],
    weights: str | os.PathLike | None = None,
    leave_ports_out: bool = False,
    min_threshold: float = SWEEP[0],
    progress: bool = True,
    box_fraction: float | None = None,
    min_length_m: float | None = None,
    tta: bool = False,
    device: str = "cpu",
    precision: str | None = None,
) -> tuple[list[PortPrediction], WeightsEntry, list[str]]:
    """Detections for every labelled folder at `min_threshold` (to sweep thresholds later);
    `box_fraction` and `min_length_m` override the weights' hull suppression and length
    filter (0: keep every peak); `tta` averages eight orientations of each chip."""
    main_entry = get_weights(weights)
    folders = find_scene_dirs(data_dirs)
    if leave_ports_out:
        plan = [(e, set(_holdout(e.path.with_suffix(".json")))) for e in fold_models(main_entry)]
    else:
        plan = [(main_entry, {f.name for f in folders})]
    preds, skipped = [], []
    for folder in folders:
        owner = next((e for e, held in plan if folder.name in held), None)
        if owner is None:
            skipped.append(folder.name)
            continue
        model, _ = load_model(owner.path, device, precision)
        found, pixel_m = predict_folder(folder, model, owner, min_threshold, box_fraction,
                                        min_length_m, tta)
        preds.append(PortPrediction(folder.name, _ship_outlines(folder), found, owner.name,
                                    pixel_m, str(folder / "scene.tif")))
        if progress:
            print(f"  {folder.name}: {len(found)} candidates ({owner.name})", flush=True)
    return preds, main_entry, skipped


def plateau_middle(f1_by_threshold: dict[float, float], within: float = 0.005) -> float:
    """Among the thresholds less than `within` below the best F1, the median one: a plateau's
    middle is steadier on new scenes than its edge (with few vessels whole ranges tie, and the
    lowest edge floods other scenes with false positives)."""
    top = max(f1_by_threshold.values())
    near = sorted(t for t, f in f1_by_threshold.items() if f > top - within)
    return near[len(near) // 2]


def score_predictions(preds: list[PortPrediction], threshold: float) -> dict:
    """Per-port and pooled scores of predictions filtered at `threshold`."""
    ports, total = {}, {"tp": 0, "fp": 0, "fn": 0}
    for p in preds:
        pts = np.array([(d.lon, d.lat) for d in p.detections if d.score >= threshold])
        counts = match_counts(p.ships, pts)
        ports[p.port] = {**summarize(counts), "model": p.model}
        for k in total:
            total[k] += counts[k]
    return {"ports": ports, "pooled": summarize(total)}


def evaluate(
    data_dirs: list[str | os.PathLike],
    weights: str | os.PathLike | None = None,
    leave_ports_out: bool = False,
    threshold: float | None = None,
    threads: int = 2,
    progress: bool = True,
    min_length_m: float | None = None,
    tta: bool = False,
    gallery: str | os.PathLike | None = None,
    device: str = "cpu",
    precision: str | None = None,
) -> dict:
    """Per-port and pooled precision/recall/F1 and count error at the operating threshold
    (the weights' own unless given), plus the pooled F1 over a threshold sweep.
    `min_length_m` overrides the weights' minimum estimated length; `tta` averages eight
    orientations of each chip; `gallery` names a folder for one picture per port of its
    false positives and missed vessels (training/gallery.py)."""
    torch.set_num_threads(threads)
    precision = resolve_precision(precision, device)
    preds, entry, skipped = predict_all(data_dirs, weights, leave_ports_out, progress=progress,
                                        min_length_m=min_length_m, tta=tta, device=device,
                                        precision=precision)
    op = entry.threshold if threshold is None else threshold
    result = score_predictions(preds, op)
    result.update(
        weights=entry.name,
        weights_sha256=entry.sha256,
        threshold=op,
        min_length_m=entry.min_length_m if min_length_m is None else min_length_m,
        leave_ports_out=leave_ports_out,
        tta=tta,
        precision=precision,
        tolerance_m=TOLERANCE_M,
        skipped_ports=skipped,
        sweep={str(t): score_predictions(preds, t)["pooled"]["f1"] for t in SWEEP},
        length_m=length_agreement(preds, op),
    )
    if gallery is not None:
        from training.gallery import write_gallery

        result["gallery"] = write_gallery(preds, op, gallery)
    return result


def format_table(result: dict) -> str:
    """A fixed-width table of the per-port rows and the pooled row."""
    head = f"{'port':<14}{'ships':>6}{'pred':>6}{'tp':>5}{'fp':>5}{'fn':>5}"
    head += f"{'P':>8}{'R':>8}{'F1':>8}{'count err':>11}"
    lines = [head, "-" * len(head)]
    rows = list(result["ports"].items()) + [("POOLED", result["pooled"])]
    for name, r in rows:
        if name == "POOLED":
            lines.append("-" * len(head))
        lines.append(
            f"{name:<14}{r['labelled']:>6}{r['predicted']:>6}{r['tp']:>5}{r['fp']:>5}"
            f"{r['fn']:>5}{r['precision']:>8.3f}{r['recall']:>8.3f}{r['f1']:>8.3f}"
            f"{r['count_error']:>+11d}"
        )
    mode = "leave-ports-out" if result.get("leave_ports_out") else "direct"
    if result.get("tta"):
        mode += ", 8 orientations averaged"
    if result.get("precision"):
        mode += f", {result['precision']}"
    lines.append(f"weights {result['weights']} ({mode}), threshold {result['threshold']}, "
                 f"minimum length {result.get('min_length_m') or 0:g} m, "
                 f"match tolerance {result['tolerance_m']:g} m")
    length = result.get("length_m") or {}
    if length.get("pairs"):
        lines.append(f"length_m of the {length['pairs']} vessels found against their outlines: "
                     f"median error {length['median_error_m']:+.1f} m, median absolute error "
                     f"{length['median_abs_error_m']:.1f} m")
    for port, sheet in (result.get("gallery") or {}).items():
        lines.append(f"errors of {port}: " + (sheet.get("path") or f"not drawn ({sheet['error']})"))
    if result.get("skipped_ports"):
        lines.append(f"not scored (no fold held them out): {', '.join(result['skipped_ports'])}")
    return "\n".join(lines)


def add_arguments(ap) -> None:
    """Options of `berthwatch evaluate` (and `python -m training.evaluate`)."""
    ap.add_argument("--data", nargs="+", required=True, metavar="DIR",
                    help="labelled folders (scene.tif + labels.geojson) or folders of them")
    ap.add_argument("--weights", help="weights name or .pt path (default: the packaged default)")
    ap.add_argument("--leave-ports-out", action="store_true",
                    help="score each port with the fold model that never saw it")
    ap.add_argument("--threshold", type=float, help="score threshold (default: the weights')")
    ap.add_argument("--min-length-m", type=float, metavar="M",
                    help="drop vessels estimated shorter than M metres (default: the weights')")
    ap.add_argument("--tta", action="store_true",
                    help="average the model over eight orientations of each chip (~7x slower)")
    ap.add_argument("--json", metavar="FILE", help="also write the result as JSON here")
    ap.add_argument("--gallery", metavar="DIR",
                    help="also draw each port's false positives and missed vessels "
                         "(DIR/<port>_errors.png)")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    ap.add_argument("--device", default="auto",
                    help="auto, cpu, cuda or cuda:N (default auto: cuda when torch sees a GPU)")
    ap.add_argument("--precision", metavar="auto|fp32|bf16", help=PRECISION_HELP)


def run(args) -> dict:
    """Carry out `berthwatch evaluate`: the table on stdout, JSON on request."""
    device = resolve_device(args.device)  # a device torch cannot use: before any work
    precision = resolve_precision(args.precision, device)
    result = evaluate(args.data, args.weights, args.leave_ports_out, args.threshold,
                      threads=args.threads, min_length_m=args.min_length_m, tta=args.tta,
                      gallery=args.gallery, device=device, precision=precision)
    print(format_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1), encoding="utf-8")
    else:
        print(json.dumps({"pooled": result["pooled"], "ports": result["ports"]}))
    return result


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(description="score the detector on labelled folders")
    add_arguments(ap)
    run(ap.parse_args(argv))


if __name__ == "__main__":
    main()
