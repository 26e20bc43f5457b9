"""Write trained weights: `<name>.pt` (a plain state dict, loadable with weights_only=True),
`<name>.json` (the registry metadata with sha256 and size) and, for the default model, the
sha256/size lines of the model card."""

from __future__ import annotations

import io
import json
import os
import re
from dataclasses import replace
from pathlib import Path

import torch

from imagery.detector import BerthNet, WeightsEntry, file_sha256, suppress

BOX_FRACTIONS = (0.0, 0.5, 0.7, 0.9, 1.1)
# Minimum estimated lengths tried: the labels' 5th percentile is ~70 m and the model's lengths
# run 5-15 m short, so the useful cut lies below 100 m.
MIN_LENGTHS_M = (0.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0)


def save_weights(
    model: BerthNet, out: str | os.PathLike, metadata: dict | None = None
) -> WeightsEntry:
    """Save `model` to `out` (a path stem or `.pt` path) with its metadata json beside it."""
    out = Path(out)
    pt = out if out.suffix == ".pt" else out.with_name(out.name + ".pt")
    pt.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    tmp = pt.with_name(f".{pt.name}.tmp")
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, pt)
    meta = dict(metadata or {})
    meta.update(
        name=meta.get("name") or pt.stem,
        file=pt.name,
        sha256=file_sha256(pt),
        size=pt.stat().st_size,
        widths=list(model.widths),
        params=sum(p.numel() for p in model.parameters()),
    )
    entry = WeightsEntry.from_json(meta, str(pt.parent))
    write_metadata(entry, pt.with_suffix(".json"), extra=meta)
    return entry


def write_metadata(entry: WeightsEntry, path: str | os.PathLike, extra: dict | None = None) -> None:
    """Metadata json; `extra` keys the registry does not know (e.g. fold info) are kept."""
    data = dict(extra or {})
    data.update(entry.to_json())
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def update_metadata(path: str | os.PathLike, **fields) -> dict:
    """Set fields (threshold, metrics) in an existing metadata json; the sha256 is untouched
    because it covers the .pt file only."""
    path = Path(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    data.update(fields)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return data


def update_card(card: str | os.PathLike, entry: WeightsEntry) -> None:
    """Rewrite the `sha256:` and `size:` lines of a model card to match `entry`."""
    path = Path(card)
    text = path.read_text(encoding="utf-8")
    text = re.sub(r"(?m)^(- sha256: ).*$", rf"\g<1>`{entry.sha256}`", text)
    text = re.sub(r"(?m)^(- size: ).*$", rf"\g<1>{entry.size} bytes ({entry.params} parameters)",
                  text)
    path.write_text(text, encoding="utf-8")


def calibrate(
    data_dirs: list[str | os.PathLike],
    weights: str | os.PathLike,
    card: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict:
    """Choose the operating threshold that maximises pooled leave-ports-out F1 (each port
    scored by the fold model that never saw it), store it with the metrics in the weights'
    metadata and its folds', and write the model card. Returns the evaluation result.
    Also scores the model itself on all of `data_dirs` (in-sample: a check of fit)."""
    from imagery.detector import get_weights
    from training.evaluate import (
        evaluate,
        fold_models,
        length_agreement,
        predict_all,
        score_predictions,
    )

    raw, entry, skipped = predict_all(data_dirs, weights, leave_ports_out=True,
                                      progress=progress, box_fraction=0.0,
                                      min_length_m=0.0)
    # The default keeps vessels of every length: berthwatch's targets include small tankers.
    best_box, table = None, {}
    for box in BOX_FRACTIONS:
        preds = [replace(p, detections=suppress(p.detections, p.pixel_m, 0.0, box))
                 if box else p for p in raw]
        table[box] = (*_best_threshold(preds), preds)
        if best_box is None or table[box][1] > table[best_box][1] + 1e-9:
            best_box = box
    threshold, _, sweep, preds = table[best_box]
    result = score_predictions(preds, threshold)
    metrics = {
        "leave_ports_out": {"threshold": threshold, "box_fraction": best_box,
                            "box_sweep_best_f1": {str(b): v[1] for b, v in table.items()},
                            "pooled": result["pooled"],
                            "ports": result["ports"], "sweep_f1": {str(t): f for t, f in
                                                                   sweep.items()},
                            "length_m": length_agreement(preds, threshold),
                            "length_filter": _length_filter(preds)},
        "skipped_ports": skipped,
    }
    decode = {"threshold": threshold, "box_fraction": best_box, "min_length_m": 0.0}
    update_metadata(entry.path.with_suffix(".json"), **decode)
    own = evaluate(data_dirs, weights, progress=progress)  # reads the decoding just stored
    metrics["in_sample"] = {"threshold": threshold, "pooled": own["pooled"],
                            "ports": own["ports"], "sweep_f1": own["sweep"],
                            "length_m": own["length_m"]}
    # The same decoding with `--tta`: what eight passes a chip buy on unseen ports.
    tta = evaluate(data_dirs, weights, leave_ports_out=True, progress=progress, tta=True)
    metrics["leave_ports_out_tta"] = {"threshold": threshold, "pooled": tta["pooled"],
                                      "ports": tta["ports"], "sweep_f1": tta["sweep"]}
    update_metadata(entry.path.with_suffix(".json"), metrics=metrics)
    for fold in fold_models(entry):
        update_metadata(fold.path.with_suffix(".json"), **decode)
    entry = get_weights(entry.path)
    if card:
        write_model_card(entry, Path(card))
    return {**result, **decode, "sweep": sweep}


def _best_threshold(preds: list) -> tuple[float, float, dict]:
    """Among thresholds less than 0.005 below the best pooled F1, the median one: a plateau's middle
    is steadier on new ports than its edge. Returns (threshold, best F1, F1 by threshold)."""
    from training.evaluate import SWEEP, plateau_middle, score_predictions

    sweep = {t: score_predictions(preds, t)["pooled"]["f1"] for t in SWEEP}
    return plateau_middle(sweep), max(sweep.values()), sweep


def _length_filter(preds: list) -> dict:
    """The ships-only option: the minimum estimated length (and its threshold) that gives the
    best pooled F1 on these labels, which leave most boats under ~70 m out."""
    from training.evaluate import score_predictions

    rows = {}
    for min_len in MIN_LENGTHS_M:
        kept = [replace(p, detections=[d for d in p.detections if d.length_m >= min_len])
                for p in preds]
        threshold, top, _ = _best_threshold(kept)
        rows[min_len] = (threshold, top, score_predictions(kept, threshold)["pooled"])
    best = max(rows, key=lambda m: (rows[m][1], -m))
    return {"min_length_m": best, "threshold": rows[best][0], "pooled": rows[best][2],
            "sweep_best_f1": {str(m): r[1] for m, r in rows.items()}}


def write_model_card(entry: WeightsEntry, path: Path) -> None:
    """MODEL_CARD.md from the weights' metadata, its free-text `card_notes` and `card_speed`
    included (kept there, so that recalibrating never drops them from the card)."""
    from imagery.detector import BerthNet

    meta = json.loads(entry.path.with_suffix(".json").read_text(encoding="utf-8"))
    lpo = entry.metrics.get("leave_ports_out", {})
    recipe = dict(entry.recipe)
    crop = recipe.pop("crop", {})
    table = _table(lpo.get("ports", {}), lpo.get("pooled")) if lpo else (
        "**Not measured for this model**: `weights/folds/` holds no fold models of it (see the "
        "validation notes).")
    in_sample = entry.metrics.get("in_sample")
    in_sample_text = "(not measured)"
    if in_sample:
        in_sample_text = (f"Threshold {in_sample.get('threshold')}. Scored on the ports the model "
                          "was trained on: a check of the pipeline and of fit, NOT of skill on "
                          "unseen ports.\n\n" + _table(in_sample["ports"], in_sample["pooled"]))
    sweep = lpo.get("sweep_f1", {})
    sweep_line = ", ".join(f"{t}: {f:.3f}" for t, f in sweep.items())
    n_params = sum(p.numel() for p in BerthNet(tuple(entry.widths)).parameters())
    text = CARD_TEMPLATE.format(
        name=entry.name, widths=tuple(entry.widths), params=n_params,
        bands=" ".join(entry.bands), input_scale=entry.input_scale,
        pr=entry.pixel_range_m, threshold=entry.threshold, kernel=entry.nms_kernel,
        box=entry.box_fraction, min_length=f"{entry.min_length_m:g}", sha=entry.sha256,
        size=entry.size,
        train_ports=", ".join(recipe.get("train_ports", [])),
        vessels=recipe.get("train_vessels", "?"),
        seconds=_seconds_text(recipe), device=recipe.get("device", "?"),
        threads=recipe.get("threads", "?"),
        recipe=json.dumps({k: v for k, v in recipe.items()
                           if k not in ("train_ports", "train_vessels")}, indent=1),
        crop=json.dumps(crop, indent=1),
        table=table,
        in_sample=in_sample_text,
        sweep=sweep_line or "(not measured)",
        length_filter=_length_filter_text(lpo.get("length_filter")),
        tta=_tta_text(entry.metrics.get("leave_ports_out_tta")),
        speed=_speed_text(meta.get("card_speed")),
        notes=_notes(meta.get("card_notes")),
        learning=_learning_text(entry.metrics.get("learning_loop")),
    )
    path.write_text(text, encoding="utf-8")


def _seconds_text(recipe: dict) -> str:
    """Training time, stage by stage: a model fine-tuned from earlier weights (`init_recipe`,
    recursively) shows the first stage and each mining round after it."""
    times = _stage_seconds(recipe)
    if len(times) == 1:
        return f"{times[0]} s"
    rounds = [f"{t} s (mining round {i})" if len(times) > 2 else f"{t} s (mining stage)"
              for i, t in enumerate(times[1:], 1)]
    return " + ".join([f"{times[0]} s (first stage)", *rounds])


def _stage_seconds(recipe: dict) -> list:
    """Seconds of each stage, oldest first. A run from `--init` without `init_recipe`
    (written before it was recorded, with `init_train_seconds` instead) counts its init as
    one first stage."""
    if recipe.get("init_recipe"):
        return [*_stage_seconds(recipe["init_recipe"]), recipe.get("train_seconds", "?")]
    if recipe.get("init_sha256"):
        return [recipe.get("init_train_seconds", "?"), recipe.get("train_seconds", "?")]
    return [recipe.get("train_seconds", "?")]


def _length_filter_text(option: dict | None) -> str:
    if not option:
        return ""
    m, t, r = option["min_length_m"], option["threshold"], option["pooled"]
    by_length = ", ".join(f"{float(k):g} m: {v:.3f}" for k, v in option["sweep_best_f1"].items())
    return (
        f"Ships only: the labels leave most boats under ~70 m out, so dropping short detections "
        f"scores better on them: with `--min-length-m {m:g} --threshold {t}` the pooled "
        f"leave-ports-out F1 is {r['f1']:.3f} (precision {r['precision']:.3f}, recall "
        f"{r['recall']:.3f}; tp {r['tp']}, fp {r['fp']}, fn {r['fn']}; reproduce with "
        f"`berthwatch evaluate --data ../shared/data/sen2ships --leave-ports-out "
        f"--min-length-m {m:g} --threshold {t}`). It is not the default because small tankers "
        f"are among berthwatch's targets. Best F1 by minimum length: {by_length}.")


def _tta_text(tta: dict | None) -> str:
    if not tta:
        return "Test-time augmentation (`--tta`): not measured for these weights."
    r = tta["pooled"]
    ports = ", ".join(f"{port} {row['f1']:.3f}" for port, row in sorted(tta["ports"].items()))
    best = max(tta["sweep_f1"].items(), key=lambda kv: kv[1])
    return (
        f"Test-time augmentation: `detect --tta` averages the heat and mask over the eight "
        f"flips and quarter turns of each chip, eight passes of the model. At the same "
        f"threshold ({tta['threshold']}) the pooled leave-ports-out F1 is {r['f1']:.3f} "
        f"(precision {r['precision']:.3f}, recall {r['recall']:.3f}; tp {r['tp']}, fp "
        f"{r['fp']}, fn {r['fn']}; count error {r['count_error']:+d}; best over the sweep "
        f"{best[1]:.3f} at {best[0]}); per port: {ports}. Reproduce with `berthwatch evaluate "
        f"--data ../shared/data/sen2ships --leave-ports-out --tta`. It is not the default, "
        f"because the speed target counts the plain pass.")


def _table(ports: dict, pooled: dict | None) -> str:
    head = ("| port | vessels | predicted | tp | fp | fn | precision | recall | F1 | count error |"
            "\n|---|---|---|---|---|---|---|---|---|---|")
    rows = [f"| {port} | {r['labelled']} | {r['predicted']} | {r['tp']} | {r['fp']} | {r['fn']} "
            f"| {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | {r['count_error']:+d} |"
            for port, r in sorted(ports.items())]
    if pooled:
        rows.append(f"| **pooled** | {pooled['labelled']} | {pooled['predicted']} | "
                    f"{pooled['tp']} | {pooled['fp']} | {pooled['fn']} | "
                    f"{pooled['precision']:.3f} | {pooled['recall']:.3f} | "
                    f"**{pooled['f1']:.3f}** | {pooled['count_error']:+d} |")
    return head + "\n" + ("\n".join(rows) if rows else "| (not measured) |")


def _learning_text(loop: dict | None) -> str:
    """The table of `benchmarks/adapt_bench.py --json` (stored as `metrics.learning_loop`)."""
    if not loop:
        return "Not measured for these weights (`benchmarks/adapt_bench.py`)."
    rows = ["| port | base F1 | adapted F1 | candidate alone | promoted (A->B, B->A) | "
            "retrain s (A->B, B->A) |", "|---|---|---|---|---|---|"]
    for port, r in sorted(loop["ports"].items()):
        rows.append(f"| {port} | {r['base_f1']:.3f} | {r['adapted_f1']:.3f} | "
                    f"{r['candidate_f1']:.3f} | "
                    f"{', '.join('yes' if x else 'no' for x in r['promoted'])} | "
                    f"{', '.join(f'{s:.0f}' for s in r['retrain_seconds'])} |")
    pooled = loop["pooled"]
    rows.append(f"| **pooled** | {pooled['base_f1']:.3f} | **{pooled['adapted_f1']:.3f}** | "
                f"{pooled['candidate_f1']:.3f} | | |")
    return (f"{loop.get('about', '')}\n\n" + "\n".join(rows)).strip()


def _notes(notes: list[str] | None) -> str:
    """Free-text validation notes (`card_notes` in the metadata json), e.g. for a model
    whose fold models were not trained."""
    return "\n".join(f"- {n}" for n in notes) if notes else "None."


def _speed_text(lines: list[str] | None) -> str:
    if not lines:
        return "See `benchmarks/detect_bench.py`; figures in the issue's closing note."
    return "\n".join(f"- {line}" for line in lines)


CARD_TEMPLATE = """# Model card: {name}

Vessel detector of berthwatch (`imagery/detector.py`, class `BerthNet`).

## Architecture
A small CenterNet-style fully convolutional network, {params} parameters, widths {widths}
at full, 1/2, 1/4 and 1/8 resolution: two 3x3 convolutions at full resolution, strided
stages down to 1/8 with two dilated residual blocks there (receptive field of a few hundred
pixels, to tell quays from hulls), an FPN-style decoder back to full resolution and a 1x1
head with six outputs per pixel:
- centre heatmap (sigmoid; penalty-reduced focal loss on an anisotropic Gaussian around each
  vessel's centroid, elongated along the hull),
- vessel mask (auxiliary; BCE),
- log length, log width, sin 2a, cos 2a of the hull axis (regressed at the centre).
Decoding: local maxima of the heatmap ({kernel}x{kernel} max-pool) above the threshold; a
weaker maximum joined to a stronger one by a ridge of heat (never below 0.8 of the weaker,
within the stronger's estimated half length) is the same hull and dropped; then greedy
suppression of peaks within 1.5 px of a stronger one (chip seams) or when either centre lies
inside the other's estimated hull shrunk to {box} (a second peak on one long hull). Minimum
estimated length: {min_length} m (`detect --min-length-m M` drops vessels estimated shorter
than M metres; see "Ships only" below).

## Input
- Bands: {bands} (in this order), as reflectance: {input_scale}.
- Normalisation is inside the model, the same for every scene: log(reflectance + 0.01),
  local contrast (reflectance minus its ~40 px mean, / 0.05), NDWI from B03/B08, and one
  presence flag per band (missing bands are zero-filled; trained with band dropout).
- Ground pixel size {pr[0]}-{pr[1]} m: scenes outside that range (EPSG:3857 at high latitude)
  are resampled chip by chip to the nearest bound; true ground metres come from
  `SceneInfo.pixel_size_m` (an EPSG:3857 pixel of 10 map units is 10 cos(lat) m).

## Training data
Labelled folders (scene.tif + labels.geojson): {train_ports}; {vessels} labelled vessels in
all. Real data: sen2ships (MIT; Copernicus Sentinel-2 L2A), 11 ports with five bands plus the
two partial ports (los_angeles: B08 B11 only; santos: no B02), which train through band
dropout. Folders named `sim-*` are SIMULATED scenes (`training/simulated.py`), added so the
offline demo's simulated scenes are in the model's domain; they are not evidence of skill
on real imagery.

## Recipe
Trained in {seconds} on {device} (torch threads: {threads}). Crops sampled from the scenes
with one affine resampling: pixel size jitter within the range above, any rotation, flips;
gain, haze and glint jitter, noise, band dropout; crops centred near vessels with probability
p_ship, on the water's edge with p_coast (quays: hard negatives), elsewhere at random.
AdamW, linear warm-up then cosine decay, seeded (numpy Generator + torch seed). Then
hard-negative mining: the model detects on its own training scenes at mine_threshold, its
peaks farther than 20 m from every labelled outline become negative points, and mine_steps
more steps (from mine_lr, cosine) centre mine_p_negative of the crops near them. Where the
recipe has `init_sha256`, that stage was not rerun from scratch: it started from those
weights (trained earlier; `init_recipe` is how they were made, recursively) and
`train_seconds` is its time alone.

```json
{recipe}
```
Crop/augmentation settings:
```json
{crop}
```

## Leave-ports-out metrics
Four folds of ports (`training.train.FOLDS`); each port is scored by the fold model trained
without it (fold models: `weights/folds/`, same recipe). Match rule of
`../shared/data/README.md`: a point within 20 m of a vessel outline, one-to-one Hungarian.
Reproduce: `berthwatch evaluate --data ../shared/data/sen2ships --leave-ports-out`.

{table}

Operating threshold **{threshold}**. When the fold models exist, `python -m training.export`
chooses the hull fraction that gives the best pooled leave-ports-out F1 and the threshold in
the middle of those less than 0.005 below it (both chosen on these same out-of-fold predictions, so
the pooled F1 is slightly optimistic).
Pooled leave-ports-out F1 by threshold: {sweep}.

{tta}

{length_filter}

## In-sample metrics
{in_sample}

## Adapting to a port: the learning loop
{learning}

## Validation notes
{notes}

## Files
- file: `{name}.pt` (a plain state dict; loaded with `torch.load(weights_only=True)` after the
  sha256 check)
- sha256: `{sha}`
- size: {size} bytes ({params} parameters)

## Speed
{speed}

## Limits
One scene per port in the training data; some small boats are unlabelled in sen2ships, so
part of the false positives are real boats. Rafted vessels touching along their whole length
may merge into one detection. Length/width/heading are estimates from the regression head
(heading is the hull axis, 0-180 degrees; bow and stern are not told apart).
"""


def main(argv: list[str] | None = None) -> None:
    import argparse

    from imagery.detector import get_weights
    from training.evaluate import format_table

    ap = argparse.ArgumentParser(
        description="calibrate the threshold on the leave-ports-out fold models and write the "
        "model card (--card-only: write the card from the metadata as it is)")
    ap.add_argument("--data", nargs="+", help="labelled folders (needed unless --card-only)")
    ap.add_argument("--weights", required=True, help="the default model's .pt (folds/ beside)")
    ap.add_argument("--card", default=None, help="model card path (default: beside weights)")
    ap.add_argument("--card-only", action="store_true")
    ap.add_argument("--speed", help="JSON file of benchmark figures (label: text) to store in "
                    "the metadata as `card_speed` and show in the card")
    ap.add_argument("--learning-loop", metavar="JSON",
                    help="the --json of benchmarks/adapt_bench.py, stored in the metadata as "
                    "`metrics.learning_loop` and shown in the card as its table")
    ap.add_argument("--learning-loop-about", default="",
                    help="the sentence above that table: how and where it was measured")
    args = ap.parse_args(argv)
    card = Path(args.card or Path(args.weights).parent / "MODEL_CARD.md")
    if not args.card_only:
        if not args.data:
            ap.error("--data is needed to calibrate")
        result = calibrate(args.data, args.weights, None)
        result.update(weights=Path(args.weights).stem, tolerance_m=20.0, leave_ports_out=True)
        print(format_table(result))
    if args.speed:
        speed = json.loads(Path(args.speed).read_text(encoding="utf-8"))
        # A list of lines, not a dict: the metadata is written with sorted keys.
        update_metadata(Path(args.weights).with_suffix(".json"),
                        card_speed=[f"{k}: {v}" for k, v in speed.items()])
    if args.learning_loop:
        store_learning_loop(Path(args.weights).with_suffix(".json"),
                            json.loads(Path(args.learning_loop).read_text(encoding="utf-8")),
                            args.learning_loop_about)
    write_model_card(get_weights(args.weights), card)
    print(f"wrote {card}")


def store_learning_loop(meta: Path, bench: dict, about: str) -> None:
    """The per-port and pooled figures of an adapt_bench run (not its per-direction details)
    as `metrics.learning_loop`."""
    keep = ("base_f1", "adapted_f1", "candidate_f1", "promoted", "retrain_seconds")
    metrics = json.loads(meta.read_text(encoding="utf-8"))["metrics"]
    metrics["learning_loop"] = {
        "about": about, "settings": bench.get("settings", {}), "pooled": bench["pooled"],
        "ports": {port: {k: r[k] for k in keep} for port, r in bench["ports"].items()}}
    update_metadata(meta, metrics=metrics)


if __name__ == "__main__":
    main()
