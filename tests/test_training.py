"""Training-side tests: the scorer agrees with the shared reference, crops keep labels exact,
training is reproducible."""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from shapely.geometry import shape

try:  # tests/ is on sys.path under pytest's default (prepend) import mode
    from test_detector import make_labelled
except ImportError:  # tests/ as a package
    from tests.test_detector import make_labelled
from imagery.detector import BerthNet
from training.chips import CropConfig, load_labelled_scene, sample_batch
from training.evaluate import (
    PortPrediction,
    format_table,
    length_agreement,
    match_counts,
    outline_length_m,
    score_geojson,
    summarize,
)
from training.train import FOLDS, Recipe, fit

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SCORER = SHARED / "tools" / "score_detections.py"


def _points_near(labels: dict, rng: np.random.Generator) -> dict:
    """Detections around the labels: some inside, some just outside 20 m, some far off."""
    feats = []
    for f in labels["features"]:
        c = shape(f["geometry"]).centroid
        for _ in range(rng.integers(0, 3)):
            d = rng.normal(0, 0.0003, 2)  # ~30 m spread: near the 20 m boundary
            feats.append({"type": "Feature", "properties": {},
                          "geometry": {"type": "Point", "coordinates": [c.x + d[0], c.y + d[1]]}})
    return {"type": "FeatureCollection", "features": feats}


@pytest.mark.parametrize("port", ["athens", "honolulu"])
def test_scorer_agrees_with_reference(port, tmp_path):
    labels_path = SHARED / "data" / "sen2ships" / port / "labels.geojson"
    if not (labels_path.exists() and SCORER.exists()):
        pytest.skip(f"shared data or scorer absent ({labels_path}, {SCORER})")
    labels = json.loads(labels_path.read_text())
    dets = _points_near(labels, np.random.default_rng(0))
    det_path = tmp_path / "d.geojson"
    det_path.write_text(json.dumps(dets))
    ref = json.loads(subprocess.run([sys.executable, str(SCORER), str(labels_path),
                                     str(det_path)], capture_output=True, text=True,
                                    check=True).stdout)
    ours = score_geojson(labels, dets)
    for key in ("tp", "fp", "fn", "precision", "recall", "f1"):
        assert ours[key] == ref[key], (key, ours, ref)
    assert 0 < ours["tp"] < len(dets["features"])  # the case is not trivial


def test_match_rule_edges():
    from shapely.geometry import box

    ship = box(10.0, 50.0, 10.001, 50.0005)  # ~70 x 55 m
    inside = [10.0005, 50.0002]
    far = [10.01, 50.01]
    assert match_counts([ship], np.array([inside, inside, far])) == {"tp": 1, "fp": 2, "fn": 0}
    assert match_counts([], np.array([far])) == {"tp": 0, "fp": 1, "fn": 0}
    assert match_counts([ship], np.zeros((0, 2))) == {"tp": 0, "fp": 0, "fn": 1}
    s = summarize({"tp": 3, "fp": 1, "fn": 1})
    assert s["f1"] == 0.75 and s["count_error"] == 0


def test_length_agreement_against_outlines():
    from shapely.geometry import box

    from imagery.detector import Detection

    # A hull 0.0015 deg of longitude long at 44 N: 0.0015 * 111.32 km * cos(44) = 120 m.
    ship = box(10.0, 44.0, 10.0015, 44.00015)
    length = outline_length_m([ship])[0]
    assert abs(length - 120.1) < 2
    c = ship.centroid
    found = [Detection(px_x=0, px_y=0, score=0.9, length_m=length + 30, width_m=15,
                       heading_deg=60, berthed=True),
             Detection(px_x=0, px_y=0, score=0.2, length_m=10, width_m=5, heading_deg=0,
                       berthed=True)]
    found[0].lon, found[0].lat = c.x, c.y
    found[1].lon, found[1].lat = c.x + 0.0001, c.y
    preds = [PortPrediction("p", [ship], found, "m")]
    assert length_agreement(preds, 0.5) == {"pairs": 1, "median_error_m": 30.0,
                                            "median_abs_error_m": 30.0}
    assert length_agreement(preds, 0.1)["median_error_m"] == 30.0  # the weaker point is extra
    assert length_agreement(preds, 0.95) == {"pairs": 0}


def test_table_formats():
    row = summarize({"tp": 3, "fp": 1, "fn": 2})
    text = format_table({"ports": {"x": row}, "pooled": row, "weights": "w",
                         "threshold": 0.5, "tolerance_m": 20.0, "leave_ports_out": True})
    assert "POOLED" in text and "leave-ports-out" in text


def test_folds_partition_the_shared_ports():
    ports = [p for fold in FOLDS for p in fold]
    assert len(ports) == len(set(ports)) == 11


def test_crops_keep_labels_on_vessels(tmp_path):
    """Every heat peak of an augmented crop lands on the vessel mask of that crop."""
    scene = load_labelled_scene(make_labelled(tmp_path / "s", seed=4))
    batch = sample_batch(np.random.default_rng(0), [scene], 16, CropConfig(size=64, p_ship=1.0))
    peaks = batch["heat"] == 1.0
    assert peaks.sum() >= 16
    near_mask = torch.nn.functional.max_pool2d(batch["mask"], 3, 1, 1)
    assert bool(near_mask[peaks].all())
    assert batch["reg_w"].sum() > 0
    lengths = batch["reg"][:, 0][batch["reg_w"][:, 0] > 0].exp()
    assert float(lengths.min()) > 4 and float(lengths.max()) < 30  # 8-16 px hulls, 8-10 m jitter


def test_training_is_reproducible(tmp_path):
    scene = load_labelled_scene(make_labelled(tmp_path / "s", seed=2, size=64))
    recipe = Recipe(steps=3, mine_steps=2, mine_threshold=0.0, mine_crop=32, mine_batch=2,
                    batch=2, widths=(4, 4, 8, 8), crop=CropConfig(size=32))
    torch.set_num_threads(1)
    a, b = (fit([scene], recipe, progress=False) for _ in range(2))
    for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y)
    assert not math.isnan(float(next(a.parameters()).detach().sum()))


def test_evaluate_reproduces_the_model_cards_leave_ports_out_metrics(shared_data):
    """`berthwatch evaluate --leave-ports-out` on the shared data gives the shipped model's
    recorded leave-ports-out figures, port by port, and the model card shows them."""
    from imagery.detector import get_weights
    from training.evaluate import evaluate

    entry = get_weights()
    recorded = entry.metrics.get("leave_ports_out")
    if not recorded:
        pytest.fail(f"{entry.name} has no leave-ports-out metrics (weights/folds missing?)")
    # The card's figures were measured in fp32 (bf16's are tested below).
    result = evaluate([shared_data / "sen2ships"], leave_ports_out=True, threads=1,
                      progress=False, precision="fp32")
    assert result["threshold"] == recorded["threshold"] and result["precision"] == "fp32"
    for port, row in recorded["ports"].items():
        assert {k: result["ports"][port][k] for k in ("tp", "fp", "fn")} == \
            {k: row[k] for k in ("tp", "fp", "fn")}, port
    assert result["pooled"] == recorded["pooled"]
    assert result["length_m"] == recorded["length_m"]
    card = (entry.path.parent / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert f"**{recorded['pooled']['f1']:.3f}**" in card and entry.sha256 in card
    option = recorded["length_filter"]  # the ships-only operating point the card offers
    ships = evaluate([shared_data / "sen2ships"], leave_ports_out=True, threads=1,
                     progress=False, threshold=option["threshold"],
                     min_length_m=option["min_length_m"], precision="fp32")
    assert ships["pooled"] == option["pooled"]
    assert f"--min-length-m {option['min_length_m']:g} --threshold {option['threshold']}" in card
    # `--tta` figures: one small port again (a full rerun is eight times the work above).
    tta = entry.metrics["leave_ports_out_tta"]
    small = evaluate([shared_data / "sen2ships" / "casablanca"], leave_ports_out=True,
                     threads=1, progress=False, tta=True, precision="fp32")
    assert small["ports"]["casablanca"] == tta["ports"]["casablanca"]
    assert f"F1 is {tta['pooled']['f1']:.3f}" in card and "--leave-ports-out --tta" in card


def test_bf16_scores_the_shipped_model_as_fp32_does_to_a_false_alarm_a_port(shared_data):
    """The default on a CPU with native bf16 is bf16 (imagery.detector.resolve_precision):
    its leave-ports-out figures must stay those the card records in fp32, to within one
    vessel found or missed or one false alarm a port, and 0.01 of pooled F1."""
    from imagery.detector import get_weights, native_bf16
    from training.evaluate import evaluate

    if not native_bf16("cpu"):
        pytest.skip("this CPU does not compute bfloat16 natively: bf16 is never used here")
    recorded = get_weights().metrics["leave_ports_out"]
    result = evaluate([shared_data / "sen2ships"], leave_ports_out=True, threads=2,
                      progress=False, precision="bf16")
    assert result["precision"] == "bf16"
    for port, row in recorded["ports"].items():
        moved = sum(abs(result["ports"][port][k] - row[k]) for k in ("tp", "fp", "fn"))
        assert moved <= 1, (port, result["ports"][port], row)
    assert abs(result["pooled"]["f1"] - recorded["pooled"]["f1"]) <= 0.01
    # Lengths come from a bf16 regression: near the ships-only cut a vessel or two cross it.
    option = recorded["length_filter"]
    ships = evaluate([shared_data / "sen2ships"], leave_ports_out=True, threads=2,
                     progress=False, threshold=option["threshold"],
                     min_length_m=option["min_length_m"], precision="bf16")
    assert abs(ships["pooled"]["f1"] - option["pooled"]["f1"]) <= 0.01


def test_default_recipe_is_the_shipped_models():
    """`berthwatch train` without options trains the first two stages the model card reports
    (the root of the shipped recipe's `init_recipe` chain), and the options the card gives
    for the second mining round rebuild the shipped model's own recipe."""
    import argparse
    from dataclasses import asdict

    from imagery.detector import get_weights
    from training.train import add_arguments, recipe_from_args

    chain = [get_weights().recipe]
    while "init_recipe" in chain[-1]:
        chain.append(chain[-1]["init_recipe"])
    assert len(chain) == 2, "the card describes one extra mining round"
    for key, value in json.loads(json.dumps(asdict(Recipe()))).items():
        assert chain[-1][key] == value, key
    ap = argparse.ArgumentParser()
    add_arguments(ap)
    args = ap.parse_args(["--data", "d", "--out", "o", "--init", "weights/berthnet-s2",
                          "--seed", "1", "--mine-crop", "256", "--mine-batch", "5"])
    round2 = json.loads(json.dumps(asdict(recipe_from_args(args))))
    assert round2 != asdict(Recipe())
    for key, value in round2.items():
        assert chain[0][key] == value, key
    # The stages' commands are in the experiment log the model card points to.
    log = (Path(__file__).resolve().parents[1] / "docs" / "experiments.md").read_text()
    assert "--seed 1 --mine-crop 256 --mine-batch 5" in log


def test_card_gives_the_time_of_every_stage():
    from training.export import _seconds_text

    first = {"train_seconds": 700.0}
    assert _seconds_text(first) == "700.0 s"
    legacy = {"init_sha256": "ab", "init_train_seconds": 700.0, "train_seconds": 400.0}
    assert _seconds_text(legacy) == "700.0 s (first stage) + 400.0 s (mining stage)"
    chained = {"init_sha256": "cd", "init_recipe": legacy, "train_seconds": 800.0}
    assert _seconds_text(chained) == ("700.0 s (first stage) + 400.0 s (mining round 1) + "
                                      "800.0 s (mining round 2)")


def test_card_keeps_benchmark_figures_across_rewrites(tmp_path):
    """`export --speed` stores the figures in the metadata, in their order, so a later card
    rewrite (as after recalibration) keeps them instead of dropping the Speed section."""
    import shutil

    from training.export import main as export_main

    weights = Path(__file__).resolve().parents[1] / "weights"
    for suffix in (".pt", ".json"):
        shutil.copy(weights / f"berthnet-s2{suffix}", tmp_path)
    speed = tmp_path / "speed.json"
    speed.write_text(json.dumps({"zeta run": "2 MP/s", "alpha run": "1 MP/s"}))
    model = str(tmp_path / "berthnet-s2.pt")
    export_main(["--weights", model, "--card-only", "--speed", str(speed)])
    export_main(["--weights", model, "--card-only"])
    card = (tmp_path / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "- zeta run: 2 MP/s\n- alpha run: 1 MP/s" in card


def test_mined_negatives_lie_away_from_every_labelled_vessel(tmp_path):
    """Hard-negative mining keeps only the model's peaks outside the labelled outlines grown
    by the scoring tolerance (20 m = 2 px, 4-connected: more than 2 steps away), and adds
    them to the scene's negatives."""
    from training.train import mine_negatives

    scene = load_labelled_scene(make_labelled(tmp_path / "s", seed=4, size=96))
    torch.manual_seed(0)
    model = BerthNet((4, 4, 8, 8)).eval()  # untrained: peaks everywhere at threshold 0
    before = len(scene.negatives)
    added = mine_negatives(model, [scene], threshold=0.0)
    assert added > 0 and len(scene.negatives) == before + added
    mask = scene.mask[0, 0].numpy() > 0.5
    rows, cols = np.nonzero(mask)
    radius_px = math.ceil(20.0 / scene.pixel_m)
    for x, y in scene.negatives:
        steps = (np.abs(rows - int(y)) + np.abs(cols - int(x))).min()
        assert steps > radius_px, (x, y, steps)


def test_fit_from_init_runs_only_the_mining_stage(tmp_path):
    """`--init`: the first stage is skipped (the model is the init one when mining is off),
    and with mining on, the init model is fine-tuned, not replaced by a fresh one."""
    scene = load_labelled_scene(make_labelled(tmp_path / "s", seed=2, size=64))
    torch.set_num_threads(1)
    recipe = Recipe(steps=3, mine_steps=0, batch=2, widths=(4, 4, 8, 8), crop=CropConfig(size=32))
    first = fit([scene], recipe, progress=False)
    start = {k: v.clone() for k, v in first.state_dict().items()}
    same = fit([scene], recipe, progress=False, init=first)
    assert all(torch.equal(start[k], v) for k, v in same.state_dict().items())
    recipe.mine_steps, recipe.mine_threshold, recipe.mine_crop, recipe.mine_batch = 2, 0.0, 32, 2
    stats: dict = {}
    tuned = fit([scene], recipe, progress=False, init=copy.deepcopy(first), stats=stats)
    assert stats["mined_negatives"] > 0 and len(scene.negatives) == 0  # the caller's untouched
    assert any(not torch.equal(start[k], v) for k, v in tuned.state_dict().items()
               if v.is_floating_point())


def test_init_paths_follow_the_weights_layout():
    from training.train import fold_path

    assert fold_path("weights/berthnet-s2", 3) == Path("weights/folds/berthnet-s2-fold3.pt")
    assert fold_path("w/x.pt", 0) == Path("w/folds/x-fold0.pt")


def test_mining_stage_samples_its_own_crops(tmp_path, monkeypatch):
    """The first stage samples `batch` crops of `crop.size`; the mining stage `mine_batch`
    crops of `mine_crop` px with `mine_p_negative` of them around the mined points."""
    import training.train as train_module

    seen = []
    real = train_module.sample_batch

    def spy(rng, scenes, batch, cfg):
        seen.append((batch, cfg.size, cfg.p_negative, sum(len(s.negatives) for s in scenes)))
        return real(rng, scenes, batch, cfg)

    monkeypatch.setattr(train_module, "sample_batch", spy)
    scene = load_labelled_scene(make_labelled(tmp_path / "s", seed=2, size=64))
    torch.set_num_threads(1)
    recipe = Recipe(steps=2, batch=2, widths=(4, 4, 8, 8), crop=CropConfig(size=32),
                    mine_steps=2, mine_threshold=0.0, mine_crop=48, mine_batch=3,
                    mine_p_negative=0.4)
    fit([scene], recipe, progress=False)
    assert seen[:2] == [(2, 32, 0.1, 0)] * 2
    assert [s[:3] for s in seen[2:]] == [(3, 48, 0.4)] * 2 and seen[2][3] > 0


def test_card_shows_the_learning_loop_table_stored_in_the_metadata(tmp_path):
    """`metrics.learning_loop` (the JSON of benchmarks/adapt_bench.py) becomes the card's
    table, one row per port and the pooled row."""
    import shutil

    from training.export import main as export_main
    from training.export import update_metadata

    weights = Path(__file__).resolve().parents[1] / "weights"
    for suffix in (".pt", ".json"):
        shutil.copy(weights / f"berthnet-s2{suffix}", tmp_path)
    meta = tmp_path / "berthnet-s2.json"
    metrics = json.loads(meta.read_text())["metrics"]
    metrics["learning_loop"] = {
        "about": "Replayed on halves.",
        "pooled": {"base_f1": 0.6, "adapted_f1": 0.65, "candidate_f1": 0.62},
        "ports": {"zeta": {"base_f1": 0.5, "adapted_f1": 0.75, "candidate_f1": 0.7,
                           "promoted": [True, False], "retrain_seconds": [100.4, 200.6]}}}
    update_metadata(meta, metrics=metrics)
    export_main(["--weights", str(tmp_path / "berthnet-s2.pt"), "--card-only"])
    card = (tmp_path / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "Replayed on halves." in card
    assert "| zeta | 0.500 | 0.750 | 0.700 | yes, no | 100, 201 |" in card
    assert "| **pooled** | 0.600 | **0.650** | 0.620 | | |" in card
