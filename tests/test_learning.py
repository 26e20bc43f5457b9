"""The learning loop on SIMULATED scenes: review -> retrain -> gate -> promote, the gate
refusing a worse candidate, rollback, bad input, and the registry surviving SIGKILL."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import shapely
from shapely.geometry import shape

from imagery import models
from imagery.pipeline import open_workspace, run_pass
from imagery.ports import get_port
from training.replay import adopt, replay_folder
from training.retrain import RetrainConfig, RetrainError, best_threshold, predict_folders, retrain
from training.simulated import write_simulated_labelled

START = datetime(2024, 4, 1, 1, 50, tzinfo=UTC)
# Tiny and fast: the tiny model's widths, 64 px crops, one thread.
FAST = dict(batch=8, crop=64, threads=1, lr=1e-2, warmup=5)


def _adopt(ws, weights: Path) -> str:
    return adopt(ws, weights)


def _sim(root: Path, k: int) -> Path:
    return write_simulated_labelled(get_port("chongjin"), START + timedelta(days=3 * k),
                                    root / f"sim-{k}", seed=100 + k)


@pytest.fixture(scope="module")
def weak_weights(simulated_labelled, tmp_path_factory) -> Path:
    """The tiny test model's architecture after only 20 steps: a model with much to learn."""
    import torch

    from training.chips import CropConfig, load_labelled
    from training.export import save_weights
    from training.train import Recipe, fit

    torch.set_num_threads(1)
    recipe = Recipe(steps=20, mine_steps=0, batch=4, widths=(8, 8, 16, 16), warmup=5, lr=1e-2,
                    crop=CropConfig(size=64))
    model = fit(load_labelled([simulated_labelled]), recipe, progress=False)
    out = tmp_path_factory.mktemp("weak") / "weak-test.pt"
    save_weights(model, out, {"name": "weak-test", "threshold": 0.1})
    return out


@pytest.fixture(scope="module")
def reviewed(weak_weights, tmp_path_factory) -> tuple[Path, list[Path]]:
    """A workspace whose weak model's detections on 4 simulated scenes (4 dates) were
    reviewed by the replayed analyst; and the labelled folders (simulator truth) of the two
    latest, which retrain holds out."""
    root = tmp_path_factory.mktemp("loop")
    ws = open_workspace(root / "ws")
    weights = _adopt(ws, weak_weights)
    for k in range(4):
        replay_folder(ws, _sim(root, k), f"sim-scene-{k}", "chongjin",
                      START + timedelta(days=3 * k), weights)
    return ws.root, [root / "sim-2", root / "sim-3"]


def _copy(src: Path, dest: Path) -> Path:
    """A copy of a workspace, its scene paths moved along (they are stored absolute)."""
    shutil.copytree(src, dest)
    conn = sqlite3.connect(dest / "berthwatch.sqlite")
    with conn:
        conn.execute("UPDATE scenes SET path = replace(path, ?, ?)", (str(src), str(dest)))
    conn.close()
    return dest


def _rows(ws_root: Path) -> list[tuple]:
    conn = sqlite3.connect(ws_root / "berthwatch.sqlite")
    try:
        return conn.execute("SELECT * FROM models ORDER BY name").fetchall()
    finally:
        conn.close()


def test_loop_improves_the_model_on_held_out_scenes_and_rollback_restores(
        reviewed, simulated_labelled, tmp_path):
    ws_root, held_truth = reviewed
    ws_root = _copy(ws_root, tmp_path / "ws")
    ws = open_workspace(ws_root)
    before = models.active_model(ws)
    result = retrain(ws_root, [str(simulated_labelled)], RetrainConfig(steps=200, **FAST),
                     progress=False)
    assert result.promoted, result.decision
    assert result.training_data["heldout"].startswith("by acquisition date")
    assert len(result.training_data["reviewed_scenes"]) == 4
    assert result.training_data["heldout_folders"] == ["sim-scene-2", "sim-scene-3"]
    held = result.metrics["heldout"]
    assert held["candidate"]["f1"] > held["current"]["f1"]
    now = models.active_model(ws)
    assert now.name == result.name and now.parent == before.name
    # Better on the held-out scenes against the simulator's truth (not the reviews' outlines),
    # each model at its best threshold there.
    _, old = best_threshold(predict_folders(before.weights(ws), held_truth))
    _, new = best_threshold(predict_folders(now.weights(ws), held_truth))
    assert new["f1"] > old["f1"], (old, new)
    # Rollback: the tiny model again, and `run` uses it.
    rolled, using = models.rollback(ws)
    assert rolled.name == result.name and using.name == before.name
    assert {r[0]: r[-1] for r in _rows(ws_root)}[result.name] == "rolled-back"
    fresh = write_simulated_labelled(get_port("chongjin"), START + timedelta(days=40),
                                     tmp_path / "fresh", seed=7)
    ws.record_scene(scene_id="fresh", port="chongjin", source="sim",
                    acquisition_time=START + timedelta(days=40), status="stored",
                    path=_into(ws_root, fresh))
    run_pass(ws, [get_port("chongjin")], None, START, START, progress=False)
    conn = sqlite3.connect(ws_root / "berthwatch.sqlite")
    sha = conn.execute("SELECT weights_sha256 FROM processing WHERE scene_id = 'fresh'"
                       ).fetchone()[0]
    conn.close()
    assert sha == before.sha256


def _into(ws_root: Path, folder: Path) -> Path:
    dest = ws_root / "scenes" / "chongjin" / f"{folder.name}.tif"
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(folder / "scene.tif", dest)
    return dest


def test_gate_refuses_a_worse_candidate(reviewed, tmp_path):
    ws_root = _copy(reviewed[0], tmp_path / "ws")
    before = _rows(ws_root)
    # A learning rate that spoils the weights: the candidate is worse and refused.
    cfg = RetrainConfig(steps=15, **{**FAST, "lr": 0.3, "warmup": 1})
    result = retrain(ws_root, None, cfg, progress=False)
    assert result.decision == "refused: not better on the held-out reviews"
    held = result.metrics["heldout"]
    assert held["candidate"]["f1"] <= held["current"]["f1"]
    ws = open_workspace(ws_root)
    assert models.active_model(ws).name == "weak-test"
    after = {r[0]: r for r in _rows(ws_root)}
    assert after[result.name][-1] == "candidate"
    assert [after[r[0]] for r in before] == before  # nothing else changed


def _cli(*args: str) -> subprocess.CompletedProcess:
    """`berthwatch ARGS` in this process (no torch import per call): exit status, stderr."""
    import contextlib
    import io

    from imagery.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def test_bad_input_one_line_nonzero_nothing_changed(reviewed, tmp_path):
    empty = tmp_path / "empty"
    done = _cli("retrain", "--workspace", str(empty))
    assert done.returncode == 2 and "no reviewed scene" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    ws_root = _copy(reviewed[0], tmp_path / "ws")
    before = _rows(ws_root)
    not_labelled = tmp_path / "notlabelled" / "x"
    not_labelled.mkdir(parents=True)
    (not_labelled / "scene.tif").write_bytes(b"")
    for data, words in ((tmp_path / "missing", "no such directory"),
                        (not_labelled.parent, "no labels.geojson")):
        done = _cli("retrain", "--workspace", str(ws_root), "--data", str(data))
        assert done.returncode == 2 and words in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
    # The scenes deleted: every reviewed scene is skipped, one line names why.
    shutil.rmtree(ws_root / "scenes")
    done = _cli("retrain", "--workspace", str(ws_root))
    assert done.returncode == 2 and "file missing" in done.stderr, done.stderr
    assert _rows(ws_root) == before


def test_single_vessel_is_refused(tiny_weights, tmp_path):
    ws = open_workspace(tmp_path / "ws")
    weights = _adopt(ws, tiny_weights)
    folder = _sim(tmp_path, 0)
    doc = (folder / "labels.geojson").read_text()
    import json

    labels = json.loads(doc)
    labels["features"] = labels["features"][:1]
    (folder / "labels.geojson").write_text(json.dumps(labels))
    replay_folder(ws, folder, "one", "chongjin", START, weights, threshold=0.99)
    before = _rows(ws.root)
    with pytest.raises(RetrainError, match="label 1 vessel"):
        retrain(ws.root, None, RetrainConfig(steps=5, **FAST), progress=False)
    assert _rows(ws.root) == before


def test_two_retrains_refused_by_the_lock(reviewed, tmp_path):
    from imagery.pipeline import run_lock

    ws_root = _copy(reviewed[0], tmp_path / "ws")
    with run_lock(open_workspace(ws_root)):
        done = _cli("retrain", "--workspace", str(ws_root))
    assert done.returncode == 2 and "another berthwatch run" in done.stderr


def test_registry_survives_sigkill_during_retrain(reviewed, tmp_path):
    ws_root = _copy(reviewed[0], tmp_path / "ws")
    before = _rows(ws_root)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "imagery.cli", "retrain", "--workspace",
                             str(ws_root), "--steps", "100000", "--threads", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=env)
    assert proc.stdout is not None
    first = proc.stdout.readline()  # printed once the data is exported and split
    assert first.startswith("retrain from weak-test"), first
    time.sleep(3.0)  # fine-tuning under way
    assert proc.poll() is None and list(ws_root.glob(".retrain-*"))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert _rows(ws_root) == before
    ws = open_workspace(ws_root)
    assert models.active_model(ws).name == "weak-test"
    assert sorted(p.name for p in (ws_root / "models").iterdir()) == ["weak-test.json",
                                                                     "weak-test.pt"]


def _cover_with_ais(ws, port, tmp_path: Path) -> None:
    """One AIS vessel 30 km off the port at each scene's time: the feed covers the scenes
    (so berthed detections can become alerts) and explains none of them."""
    from imagery import ais

    x, y = port.aoi.centroid.x + 0.35, port.aoi.centroid.y - 0.1
    rows = ["MMSI,BaseDateTime,LAT,LON,SOG,COG,Heading,VesselName"]
    for k in range(2):
        when = START + timedelta(days=3 * k)
        rows.append(f"273000001,{when:%Y-%m-%dT%H:%M:%S},{y:.5f},{x:.5f},10.0,90.0,90,FAR")
    path = tmp_path / "far.csv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    ais.import_file(ws, path, None, None, None)


def test_redetect_keeps_verdicts_on_their_vessels_and_lists_alert_changes(
        weak_weights, tiny_weights, tmp_path):
    from imagery.redetect import redetect
    from imagery.review import db as review_db

    ws = open_workspace(tmp_path / "ws")
    port = get_port("chongjin")
    for k in range(2):
        folder = _sim(tmp_path, k)
        ws.record_scene(scene_id=f"s{k}", port="chongjin", source="sim",
                        acquisition_time=START + timedelta(days=3 * k), status="stored",
                        path=_into(ws.root, folder))
    _cover_with_ais(ws, port, tmp_path)
    run_pass(ws, [port], None, START, START, weights=str(weak_weights), threshold=0.1,
             progress=False)
    conn = sqlite3.connect(ws.root / "berthwatch.sqlite")
    before = {r[0]: (r[1], r[2]) for r in conn.execute("SELECT alert_id, lon, lat FROM alerts")}
    conn.close()
    assert before
    confirmed = sorted(before)[0]
    review_db.ensure_schema(ws)
    review_db.record(ws, scene_id=confirmed.split("#")[0], action="verdict", analyst="t",
                     alert_id=confirmed, det_id=int(confirmed.split("#")[1]),
                     verdict="confirmed")
    report = redetect(ws, [port], str(tiny_weights), threshold=0.1, progress=False)
    assert sorted(report.scenes) == ["s0", "s1"]
    conn = sqlite3.connect(ws.root / "berthwatch.sqlite")
    after = {r[0]: (r[1], r[2]) for r in conn.execute("SELECT alert_id, lon, lat FROM alerts")}
    shas = {r[0] for r in conn.execute("SELECT weights_sha256 FROM processing")}
    conn.close()
    assert shas == {report.weights_sha256}
    assert sorted(report.added) == sorted(set(after) - set(before))
    assert sorted(report.dropped) == sorted(set(before) - set(after))
    kept = set(before) & set(after)
    assert report.kept == len(kept) > 0
    from imagery.redetect import _metres

    for alert_id in kept:  # the same id is the same vessel, found again
        assert _metres(before[alert_id], after[alert_id]) <= 20.0
    if confirmed in after:
        assert review_db.get_alert(ws, confirmed)["status"] == "confirmed"
    # A second pass has nothing to do: every scene already uses those weights.
    again = redetect(ws, [port], str(tiny_weights), threshold=0.1, progress=False)
    assert again.scenes == [] and again.unchanged == 2


def test_detect_with_workspace_uses_the_promoted_model_and_refuses_an_altered_one(
        tiny_weights, tmp_path, capsys):
    import json

    from imagery.cli import main

    scene = Path(__file__).parent / "data" / "chongjin_64.tif"
    ws = open_workspace(tmp_path / "ws")
    path = Path(adopt(ws, tiny_weights))

    def detected_by() -> str:
        out = tmp_path / "d.geojson"
        assert main(["detect", str(scene), "--workspace", str(ws.root), "--out", str(out)]) == 0
        return json.loads(out.read_text())["properties"]["model"]

    assert detected_by() == "tiny-test"
    assert main(["models", "--workspace", str(ws.root)]) == 0
    listing = capsys.readouterr().out
    assert "* tiny-test" in listing and "berthnet-s2" in listing
    assert main(["models", "rollback", "--workspace", str(ws.root)]) == 0
    assert detected_by() == "berthnet-s2"
    assert main(["models", "promote", "tiny-test", "--workspace", str(ws.root)]) == 0
    assert detected_by() == "tiny-test"
    path.write_bytes(path.read_bytes() + b"x")  # altered after promotion
    capsys.readouterr()
    assert main(["detect", str(scene), "--workspace", str(ws.root), "--out",
                 str(tmp_path / "x.geojson")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sha256 differs" in err[0]


def test_unreviewed_detections_are_not_taught_as_background(simulated_labelled, tmp_path):
    """An `ignore` point (a detection nobody reviewed) is neither a vessel nor water: the
    loss is masked around it, and only there."""
    import json

    import numpy as np
    import torch

    from training.chips import CropConfig, _supervised, load_labelled_scene, sample_batch
    from training.train import focal_loss

    folder = tmp_path / "scene"
    shutil.copytree(simulated_labelled / "chongjin", folder)
    doc = json.loads((folder / "labels.geojson").read_text())
    dropped = doc["features"].pop(0)  # a vessel nobody reviewed: an ignore point instead
    centre = shape(dropped["geometry"]).centroid
    doc["features"].append({"type": "Feature", "geometry": {"type": "Point", "coordinates": [
        centre.x, centre.y]}, "properties": {"ignore": True, "category": "unreviewed"}})
    (folder / "labels.geojson").write_text(json.dumps(doc))
    scene = load_labelled_scene(folder)
    assert len(scene.ignore) == 1 and len(scene.ships) == len(doc["features"]) - 1
    # A crop centred on the ignored vessel: the weight is 0 there, 1 far from it.
    x, y = scene.ignore[0]
    weight = torch.from_numpy(_supervised(scene, np.array([x, y]), np.eye(2), 64))[None, None]
    assert (weight[0, 0, 28:36, 28:36] == 0).all() and (weight[0, 0, :8, :8] == 1).all()
    batch = sample_batch(np.random.default_rng(0), [scene], 2, CropConfig(size=64))
    assert batch["weight"].shape == batch["heat"].shape  # every batch of such scenes has one
    batch = {"heat": torch.zeros(1, 1, 64, 64)}
    # Firing on the ignored vessel costs nothing; firing there without the mask does.
    logits = torch.full_like(batch["heat"], -4.0)
    logits[:, :, 28:36, 28:36] = 4.0
    masked = focal_loss(logits, batch["heat"], weight)
    assert masked < focal_loss(logits, batch["heat"])
    assert masked == pytest.approx(focal_loss(torch.full_like(logits, -4.0), batch["heat"],
                                              weight).item(), rel=1e-4)


def _held_out(n_ships: int, found: list[int], alarms: int, score: float = 0.5):
    """A held-out half with `n_ships` square outlines 500 m apart along a parallel; detections
    on the ships in `found` and `alarms` false alarms 200 m north of them."""
    from shapely.geometry import box

    from imagery.detector import Detection
    from training.evaluate import PortPrediction

    step, half = 0.006, 0.0002  # ~500 m and ~20 m at 43 N
    ships = [box(5 + k * step - half, 43 - half, 5 + k * step + half, 43 + half)
             for k in range(n_ships)]
    dets = [Detection(0, 0, score, 50, 10, 0, lon=5 + k * step, lat=43.0) for k in found]
    dets += [Detection(0, 0, score, 50, 10, 0, lon=5 + k * step, lat=43.002)
             for k in range(alarms)]
    return [PortPrediction("half", ships, dets, "m")]


def test_gate_confidence_needs_more_than_a_vessel_or_two():
    """The bootstrap over paired held-out outcomes: a candidate that finds one more vessel of
    eight is not yet convincing; one that finds six more of twenty, with no more false
    alarms, is; and a model is never better than itself."""
    from training.retrain import bootstrap_confidence, paired_outcomes

    cur = _held_out(8, found=[0, 1, 2, 3], alarms=1)
    one_more = _held_out(8, found=[0, 1, 2, 3, 4], alarms=1)
    rows = paired_outcomes(cur, one_more, 0.25, 0.25)
    # 8 vessels, one false alarm seen by both (one row), each row (tp, fp, fn) x 2 models
    assert rows.shape == (9, 6)
    assert rows[:, [0, 3]].sum(axis=0).tolist() == [4, 5]
    assert rows[:, [1, 4]].sum(axis=0).tolist() == [1, 1]
    assert 0.3 < bootstrap_confidence(cur, one_more, 0.25, 0.25) < 0.9
    assert bootstrap_confidence(cur, cur, 0.25, 0.25) == 0.0
    cur20 = _held_out(20, found=list(range(8)), alarms=2)
    six_more = _held_out(20, found=list(range(14)), alarms=2)
    assert bootstrap_confidence(cur20, six_more, 0.25, 0.25) >= 0.9
    # Below its threshold a detection does not count: the candidate at 0.6 finds nothing.
    assert bootstrap_confidence(cur20, six_more, 0.25, 0.6) == 0.0


def test_a_tied_threshold_is_the_middle_of_the_plateau_not_its_lowest_edge():
    """Every detection scores 0.5: F1 is the same at every threshold up to 0.5, nothing above.
    The calibration takes the plateau's middle, as the shipped model's did, not 0.05."""
    t, scores = best_threshold(_held_out(6, found=[0, 1, 2, 3, 4, 5], alarms=0))
    assert 0.2 <= t <= 0.3 and scores["f1"] == 1.0


def test_held_out_cut_balances_vessels_where_the_middle_leaves_a_side_empty(tmp_path):
    """Four vessels in the right third of a scene: the scene's middle leaves the left half
    without a vessel (retrain then refused to hold out), the vessels' median gives each side
    two, and neither line cuts an outline."""
    import json

    import numpy as np
    import rasterio
    from pyproj import Transformer
    from rasterio.transform import from_origin
    from shapely.geometry import box, mapping

    from training.holdout import count_labels, cut_in_halves

    folder = tmp_path / "scene"
    folder.mkdir()
    transform = from_origin(500000, 4760000, 10, 10)  # UTM 31N, 10 m pixels
    with rasterio.open(folder / "scene.tif", "w", driver="GTiff", width=120, height=60, count=5,
                       dtype="uint16", crs="EPSG:32631", transform=transform) as dst:
        dst.write(np.full((5, 60, 120), 500, dtype="uint16"))
    to_wgs = Transformer.from_crs("EPSG:32631", "EPSG:4326", always_xy=True)
    feats = []
    for col in (84, 92, 100, 108):  # pixel columns; each hull 4 px wide, 10 px long
        x0, y1 = transform * (col, 20)
        x1, y0 = transform * (col + 4, 30)
        hull = shapely.transform(box(x0, y0, x1, y1),
                                 lambda xy: np.column_stack(to_wgs.transform(xy[:, 0], xy[:, 1])))
        feats.append({"type": "Feature", "geometry": mapping(hull), "properties": {}})
    (folder / "labels.geojson").write_text(json.dumps({"type": "FeatureCollection",
                                                       "features": feats}))
    a, b = cut_in_halves(folder, tmp_path / "a", tmp_path / "b")
    assert (count_labels(a), count_labels(b)) == (0, 4)
    a, b = cut_in_halves(folder, tmp_path / "va", tmp_path / "vb", balance="vessels")
    assert (count_labels(a), count_labels(b)) == (2, 2)
    with rasterio.open(a / "scene.tif") as left:
        assert 96 <= left.width <= 100  # between the second hull's end and the third's start
