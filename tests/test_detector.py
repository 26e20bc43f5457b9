"""Detector tests: tiny model on synthetic scenes, weights checksum, seams, GeoJSON, bad inputs.

Everything runs on the CPU in seconds: the model trained here is tiny and the scenes small.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import torch
from affine import Affine
from pyproj import Transformer
from shapely.geometry import Polygon, mapping

from imagery import detector
from imagery.detector import BerthNet, DetectorError, detect, detect_scene, load_model
from imagery.scene import SceneError, open_scene, write_scene
from imagery.tiling import chip_windows
from training.chips import CropConfig, load_labelled_scene
from training.export import save_weights
from training.train import Recipe, train

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CRS = "EPSG:32633"
ORIGIN = (500000.0, 4500000.0)


def vessel_polygon(x: float, y: float, length: float, width: float, angle: float) -> Polygon:
    """A rectangle in pixel coordinates centred on (x, y)."""
    ca, sa = math.cos(angle), math.sin(angle)
    pts = []
    for u, v in ((-1, -1), (1, -1), (1, 1), (-1, 1)):
        du, dv = u * length / 2, v * width / 2
        pts.append((x + du * ca - dv * sa, y + du * sa + dv * ca))
    return Polygon(pts)


def make_labelled(folder: Path, seed: int, size: int = 128, n: int = 6, land: bool = True,
                  vessels: list | None = None, bands=("B02", "B03", "B04", "B08", "B11"),
                  scale: str | None = None) -> Path:
    """A synthetic 10 m UTM scene: dark water, optional land strip, bright vessel rectangles,
    written with write_scene, and labels.geojson with the vessels' WGS84 outlines."""
    rng = np.random.default_rng(seed)
    water = np.array([0.05, 0.045, 0.03, 0.02, 0.01])
    ground = np.array([0.08, 0.10, 0.12, 0.30, 0.25])
    img = np.broadcast_to(water[:, None, None], (5, size, size)).copy()
    if land:
        img[:, :, : size // 6] = ground[:, None, None]
    if vessels is None:
        vessels = []
        for _ in range(1000):  # rejection sampling; a small scene may hold fewer than n
            if len(vessels) == n:
                break
            v = (rng.uniform(size // 6 + 12, size - 12), rng.uniform(12, size - 12),
                 rng.uniform(8, 16), rng.uniform(3, 4.5), rng.uniform(0, math.pi))
            if all(math.hypot(v[0] - w[0], v[1] - w[1]) > 18 for w in vessels):
                vessels.append(v)
    transform = Affine(10, 0, ORIGIN[0], 0, -10, ORIGIN[1])
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    polys = [vessel_polygon(*v) for v in vessels]
    for v in vessels:
        x, y, length, width, angle = v
        u = (xx - x) * math.cos(angle) + (yy - y) * math.sin(angle)
        w = -(xx - x) * math.sin(angle) + (yy - y) * math.cos(angle)
        inside = (np.abs(u) <= length / 2) & (np.abs(w) <= width / 2)
        img[:, inside] = np.array([0.20, 0.22, 0.24, 0.30, 0.20])[:, None]
    img += rng.normal(0, 0.003, img.shape)
    keep = [i for i, b in enumerate(("B02", "B03", "B04", "B08", "B11")) if b in bands]
    data = np.clip(img[keep] * 10000, 0, 65535).astype(np.uint16)
    write_scene(folder / "scene.tif", data, tuple(bands), CRS, transform, scene_id=folder.name,
                port=None, source="test", acquisition_time=datetime(2024, 5, 1, 10, tzinfo=UTC),
                extra_tags={"REFLECTANCE_SCALE": scale} if scale else None)
    to_ll = Transformer.from_crs(CRS, "EPSG:4326", always_xy=True)
    feats = []
    for p in polys:
        ring = [to_ll.transform(*(transform * xy)) for xy in p.exterior.coords]
        feats.append({"type": "Feature", "geometry": mapping(Polygon(ring)),
                      "properties": {"category": "ship"}})
    (folder / "labels.geojson").write_text(json.dumps({"type": "FeatureCollection",
                                                       "features": feats}))
    return folder


TINY = Recipe(steps=100, batch=6, lr=1e-2, warmup=10, widths=(8, 8, 16, 16),
              crop=CropConfig(size=48, p_ship=0.7), mine_steps=30, mine_crop=48, mine_batch=6)


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    for k in range(3):
        make_labelled(root / "data" / f"synth{k}", seed=k)
    # One thread: on a busy 2-core machine two OpenMP threads on tiny tensors spin for minutes.
    entry = train([root / "data"], root / "weights" / "tiny", TINY, threads=1, progress=False)
    return entry.path


def test_tiny_model_trains_and_detects(tiny_weights, tmp_path):
    from training.evaluate import score_geojson

    folder = make_labelled(tmp_path / "unseen", seed=42)
    out = detect_scene(folder / "scene.tif", tmp_path / "d.geojson", weights=tiny_weights,
                       threshold=0.3, chip_size=64, threads=1, progress=False)
    labels = json.loads((folder / "labels.geojson").read_text())
    score = score_geojson(labels, out)
    assert score["recall"] >= 0.8 and score["precision"] >= 0.8, score


def test_weights_checksum_and_tampering(tiny_weights, tmp_path):
    model, entry = load_model(tiny_weights)
    assert isinstance(model, BerthNet) and len(entry.sha256) == 64
    bad = tmp_path / "tiny.pt"
    data = bytearray(tiny_weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the middle of the tensors
    bad.write_bytes(bytes(data))
    (tmp_path / "tiny.json").write_text(tiny_weights.with_suffix(".json").read_text())
    with pytest.raises(DetectorError, match="sha256 mismatch"):
        load_model(bad)


def test_unknown_weights_and_missing_metadata(tmp_path):
    with pytest.raises(DetectorError, match="unknown weights"):
        load_model("no-such-model")
    lone = tmp_path / "lone.pt"
    torch.save(BerthNet((8, 8, 16, 16)).state_dict(), lone)
    with pytest.raises(DetectorError, match="no metadata"):
        load_model(lone)


class BrightnessModel(torch.nn.Module):
    """A stand-in model: centre heat = Gaussian-blurred NIR, so each bright blob has one
    smooth maximum (two equal ones when it is centred on a pixel edge)."""

    def __init__(self):
        super().__init__()
        r = torch.arange(-4, 5, dtype=torch.float32)
        g = torch.exp(-0.5 * (r / 2.5) ** 2)
        self.register_buffer("kernel", (g[:, None] * g[None, :] / g.sum() ** 2)[None, None])

    def forward(self, x: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        heat = torch.nn.functional.conv2d(x[:, 3:4], self.kernel, padding=4)
        logits = (heat - 0.1) * 20
        zeros = torch.zeros_like(logits)
        # No vessel mask: the land mask must then drop the hulls as small non-water blobs.
        return torch.cat([logits, zeros - 10.0, zeros + 2.0, zeros + 1.0, zeros, zeros + 1.0], 1)


def test_no_duplicates_across_seams(tmp_path):
    size, chip, overlap = 160, 64, 16
    windows = chip_windows(size, size, chip, overlap)
    seam = windows[0][1].col_off + windows[0][1].width  # where chip 0's core ends
    vessels = [(float(seam), 40.0, 12, 4, 0.0), (float(seam) + 0.4, 100.0, 4, 12, 0.0)]
    folder = make_labelled(tmp_path / "seam", seed=1, size=size, land=False, vessels=vessels)
    info = open_scene(folder / "scene.tif")
    found = detect(info, BrightnessModel(), 0.5, chip_size=chip, overlap=overlap)
    assert len(found) == 2, [(d.px_x, d.px_y) for d in found]
    for v in vessels:
        assert min(math.hypot(d.px_x - v[0], d.px_y - v[1]) for d in found) < 2.5


def test_batching_and_memory_layout_do_not_change_detections(tiny_weights, tmp_path):
    # For CPU speed load_model returns a channels_last model and detect() runs batches of one
    # chip: the outputs must be those of plain (contiguous) layout and of larger batches.
    fast, _ = load_model(tiny_weights)
    plain, _ = load_model(tiny_weights)
    plain = plain.to(memory_format=torch.contiguous_format)
    assert next(fast.parameters()).is_contiguous(memory_format=torch.channels_last)
    x, present = torch.rand(2, 5, 64, 64) * 0.3, torch.ones(2, 5, dtype=torch.bool)
    with torch.inference_mode():
        expected = plain(x, present)
        got = fast(x.contiguous(memory_format=torch.channels_last), present)
    assert torch.allclose(got, expected, atol=1e-4)
    info = open_scene(make_labelled(tmp_path / "layout", seed=7, size=160) / "scene.tif")
    runs = [detect(info, fast, 0.2, chip_size=64, batch_size=b) for b in (1, 3)]
    assert len(runs[0]) >= 3 and len(runs[0]) == len(runs[1])
    for a, b in zip(*runs, strict=True):
        assert (a.px_x, a.px_y) == (b.px_x, b.px_y) and a.score == pytest.approx(b.score, abs=1e-4)


def test_tta_averages_eight_orientations(tiny_weights, tmp_path):
    """With tta the heat and mask no longer depend on how the chip is turned or flipped
    (the plain model's do), size and angle stay the plain view's, and detect records it."""
    from imagery.detector import _forward

    model, _ = load_model(tiny_weights)
    x = (torch.rand(1, 5, 64, 64) * 0.3).contiguous(memory_format=torch.channels_last)
    present = torch.ones(1, 5, dtype=torch.bool)
    turned = torch.rot90(x, 1, (2, 3)).contiguous(memory_format=torch.channels_last)
    flipped = torch.flip(x, (2,)).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        plain, averaged = _forward(model, x, present, False), _forward(model, x, present, True)
        of_turned = torch.rot90(_forward(model, turned, present, True), -1, (2, 3))
        of_flipped = torch.flip(_forward(model, flipped, present, True), (2,))
        plain_turned = torch.rot90(_forward(model, turned, present, False), -1, (2, 3))
    probs = [torch.sigmoid(o[:, 0:2]) for o in (averaged, of_turned, of_flipped, plain_turned)]
    assert torch.allclose(probs[0], probs[1], atol=1e-5)
    assert torch.allclose(probs[0], probs[2], atol=1e-5)
    assert not torch.allclose(torch.sigmoid(plain[:, 0:2]), probs[3], atol=1e-3)
    assert not torch.allclose(probs[0], torch.sigmoid(plain[:, 0:2]), atol=1e-3)
    assert torch.equal(averaged[:, 2:], plain[:, 2:])

    folder = make_labelled(tmp_path / "tta", seed=42)
    doc = detect_scene(folder / "scene.tif", tmp_path / "d.geojson", weights=tiny_weights,
                       threshold=0.3, chip_size=64, threads=1, progress=False, tta=True)
    assert doc["properties"]["tta"] is True and doc["features"]
    assert json.loads((tmp_path / "d.geojson").read_text())["properties"]["tta"] is True


def test_detect_shared_scene_geojson(tiny_weights, tmp_path):
    scene = SHARED / "sen2ships" / "honolulu" / "scene.tif"
    if not scene.exists():
        pytest.skip(f"shared data absent: {scene} (a fresh clone has no ../shared)")
    from imagery.ports import BerthZone, Port

    info = open_scene(scene)
    left, bottom, right, top = info.bounds
    to_ll = Transformer.from_crs(info.crs, "EPSG:4326", always_xy=True)
    (x0, y0), (x1, y1) = to_ll.transform(left, bottom), to_ll.transform(right, top)
    half = Polygon([(x0, y0), ((x0 + x1) / 2, y0), ((x0 + x1) / 2, y1), (x0, y1)])
    aoi = Polygon([(x0, y0), (x1, y0), (x1, y1), (x0, y1)])
    port = Port("testport", "Test", 32604, aoi, (BerthZone("west", half),), tmp_path)
    out, csv_out = tmp_path / "det.geojson", tmp_path / "det.csv"
    detect_scene(scene, out, port=port, csv_path=csv_out, weights=tiny_weights,
                 threshold=0.05, threads=1, progress=False)
    doc = json.loads(out.read_text())
    assert doc["type"] == "FeatureCollection"
    top_props = doc["properties"]
    for key in ("scene_id", "acquisition_time", "port", "model", "weights_sha256", "threshold",
                "zones", "simulated", "tta"):
        assert key in top_props
    assert top_props["zones"]["west"]["visible_fraction"] == pytest.approx(1.0, abs=0.02)
    assert doc["features"], "expected candidates at threshold 0.05"
    west = 0
    for f in doc["features"]:
        assert f["geometry"]["type"] == "Point"
        lon, lat = f["geometry"]["coordinates"]
        assert x0 <= lon <= x1 and y0 <= lat <= y1
        p = f["properties"]
        assert set(p) == {"score", "length_m", "width_m", "heading_deg", "berthed", "zone",
                          "px_x", "px_y"}
        assert 0 <= p["score"] <= 1 and p["length_m"] > 0 and 0 <= p["heading_deg"] < 180
        assert isinstance(p["berthed"], bool) and p["zone"] in (None, "west")
        assert 0 <= p["px_x"] <= info.width and 0 <= p["px_y"] <= info.height
        west += p["zone"] == "west"
    assert top_props["zones"]["west"]["count"] == west
    assert len(csv_out.read_text().splitlines()) == len(doc["features"]) + 1


def test_ground_metres_use_true_pixel_size(tmp_path):
    """A 3857 scene at 60 degrees: 10 map units are 5 m on the ground."""
    info = open_scene(make_labelled(tmp_path / "a", seed=3, size=64) / "scene.tif")
    assert info.pixel_size_m == pytest.approx(10.0)
    lat = math.radians(60.0)
    y = 6378137.0 * math.log(math.tan(math.pi / 4 + lat / 2))
    data = np.full((5, 64, 64), 300, np.uint16)
    path = write_scene(tmp_path / "m.tif", data, ("B02", "B03", "B04", "B08", "B11"),
                       "EPSG:3857", Affine(10, 0, 0, 0, -10, y + 320), scene_id="m",
                       port=None, source="test", acquisition_time=None)
    merc = open_scene(path)
    assert merc.pixel_size_m == pytest.approx(5.0, rel=0.01)
    assert detector.model_pixel_size(merc.pixel_size_m) == 8.0


def test_bad_inputs_get_clear_errors(tiny_weights, tmp_path):
    with pytest.raises(SceneError, match="no such file"):
        detect_scene(tmp_path / "missing.tif", weights=tiny_weights, threads=1, progress=False)
    partial = make_labelled(tmp_path / "partial", seed=5, size=64, bands=("B08", "B11"))
    with pytest.raises(SceneError, match="missing bands B02 B03 B04"):
        detect_scene(partial / "scene.tif", weights=tiny_weights, threads=1, progress=False)
    odd = make_labelled(tmp_path / "odd", seed=6, size=64, scale="lots")
    with pytest.raises(SceneError, match="REFLECTANCE_SCALE"):
        detect_scene(odd / "scene.tif", weights=tiny_weights, threads=1, progress=False)
    dn_as_float = make_labelled(tmp_path / "dn", seed=7, size=64, scale="1")
    with pytest.raises(SceneError, match="scale is wrong or unknown"):
        detect_scene(dn_as_float / "scene.tif", weights=tiny_weights, threads=1, progress=False)
    good = make_labelled(tmp_path / "good", seed=7, size=64)
    with pytest.raises(DetectorError, match="threshold"):
        detect_scene(good / "scene.tif", weights=tiny_weights, threshold=1.5, threads=1,
                     progress=False)
    with pytest.raises(DetectorError, match="min_length_m -5"):
        detect_scene(good / "scene.tif", weights=tiny_weights, min_length_m=-5, threads=1,
                     progress=False)


def test_min_length_drops_short_vessels_only(tiny_weights, tmp_path):
    """The length filter keeps exactly the detections estimated at or above the minimum, and
    the collection says which minimum it used."""
    folder = make_labelled(tmp_path / "l", seed=42)
    common = dict(weights=tiny_weights, threshold=0.2, chip_size=64, threads=1, progress=False)
    everything = detect_scene(folder / "scene.tif", min_length_m=0, **common)
    lengths = sorted(f["properties"]["length_m"] for f in everything["features"])
    assert len(set(lengths)) >= 3
    distinct = sorted(set(lengths))  # cut halfway between two: the GeoJSON rounds lengths
    mid = len(distinct) // 2
    cut = (distinct[mid - 1] + distinct[mid]) / 2
    kept = detect_scene(folder / "scene.tif", min_length_m=cut, **common)
    assert sorted(f["properties"]["length_m"] for f in kept["features"]) == \
        [v for v in lengths if v >= cut]
    assert kept["properties"]["min_length_m"] == cut
    assert everything["properties"]["min_length_m"] == 0


def test_berthed_flag_uses_land_distance(tmp_path):
    vessels = [(26.0, 30.0, 12, 4, math.pi / 2), (100.0, 90.0, 12, 4, 0.0)]
    folder = make_labelled(tmp_path / "b", seed=8, size=128, vessels=vessels)
    info = open_scene(folder / "scene.tif")
    found = detect(info, BrightnessModel(), 0.5, chip_size=128)  # also fires on the land
    nearest = [min(found, key=lambda d: math.hypot(d.px_x - v[0], d.px_y - v[1]))
               for v in vessels]
    assert [math.hypot(d.px_x - v[0], d.px_y - v[1]) < 2 for d, v in zip(nearest, vessels,
                                                                         strict=True)] == [True] * 2
    assert [d.berthed for d in nearest] == [True, False]  # 50 m and 790 m from the land


def test_loader_reads_negative_and_point_labels(tmp_path):
    folder = make_labelled(tmp_path / "chip", seed=9, size=64, n=2)
    doc = json.loads((folder / "labels.geojson").read_text())
    to_ll = Transformer.from_crs(CRS, "EPSG:4326", always_xy=True)
    lon, lat = to_ll.transform(ORIGIN[0] + 205, ORIGIN[1] - 205)
    doc["features"].append({"type": "Feature", "geometry": {"type": "Point",
                            "coordinates": [lon, lat]}, "properties": {"negative": True}})
    doc["features"].append({"type": "Feature", "geometry": {"type": "Point",
                            "coordinates": [lon, lat]}, "properties": {"label": "vessel"}})
    (folder / "labels.geojson").write_text(json.dumps(doc))
    scene = load_labelled_scene(folder)
    assert len(scene.ships) == 3 and scene.negatives.shape == (1, 2)
    assert scene.negatives[0] == pytest.approx([20.5, 20.5], abs=0.01)


def test_save_weights_roundtrip(tmp_path):
    model = BerthNet((8, 8, 16, 16))
    entry = save_weights(model, tmp_path / "w", {"threshold": 0.4})
    loaded, again = load_model(tmp_path / "w.pt", precision="fp32")
    assert again.sha256 == entry.sha256 and again.threshold == 0.4
    # load_model folds BatchNorm into the convolutions: same outputs, not the same tensors.
    x, present = torch.rand(2, 5, 32, 32) * 0.3, torch.ones(2, 5, dtype=torch.bool)
    with torch.inference_mode():
        assert torch.allclose(model.eval()(x, present), loaded(x, present), atol=1e-4)


# The two detections the demo's Vostochny scene of 2024-03-19 gave on one 102 m vessel (heading
# 90), as the shipped model estimated them: 2 px apart, equal scores, headings 66 and 95.
DEMO_TWIN = [(225.5, 308.5, 0.5209, 72.0, 10.0, 66.0), (227.5, 308.5, 0.5205, 72.0, 11.0, 95.0)]


def _detections(rows) -> list[detector.Detection]:
    return [detector.Detection(px_x=x, px_y=y, score=s, length_m=length, width_m=width,
                               heading_deg=h) for x, y, s, length, width, h in rows]


def test_suppress_drops_a_second_peak_on_one_hull_either_way_round():
    # The stronger peak's narrow hull (heading 66) misses the weaker centre by 0.8 px across;
    # the weaker one's hull (heading 95) holds the stronger centre: one vessel, kept once.
    kept = detector.suppress(_detections(DEMO_TWIN), 10.0, 0.0, box_fraction=1.1)
    assert [(d.px_x, d.score) for d in kept] == [(225.5, 0.5209)]


def test_suppress_keeps_vessels_side_by_side_and_end_to_end():
    rafted = [(100.5, 100.5, 0.8, 100.0, 16.0, 90.0), (100.5, 102.5, 0.7, 100.0, 16.0, 90.0)]
    in_line = [(100.5, 100.5, 0.8, 100.0, 16.0, 90.0), (112.5, 100.5, 0.7, 100.0, 16.0, 90.0)]
    for rows in (rafted, in_line):
        assert len(detector.suppress(_detections(rows), 10.0, 0.0, box_fraction=1.1)) == 2


def _heat_output(heat: np.ndarray, length_px: float = 8.0) -> torch.Tensor:
    """A model output (1, 6, H, W) with this heat (probabilities) and a fixed size estimate."""
    h = torch.from_numpy(heat).float()
    out = torch.zeros(1, 6, *heat.shape)
    out[0, 0] = torch.logit(h.clamp(1e-6, 1 - 1e-6))
    out[0, 2], out[0, 3], out[0, 5] = math.log(length_px), math.log(1.5), 1.0
    return out


def test_decode_keeps_one_peak_on_a_ridge_and_two_across_a_valley():
    heat = np.full((16, 24), 0.01)
    # The shipped model's heat along that hull (row 308, columns 224-229 of the demo scene):
    # two maxima 2 px apart with a 3 % dip between them.
    heat[4, 2:8] = [0.209, 0.515, 0.5209, 0.5039, 0.5205, 0.5192]
    heat[3, 3:7] = heat[5, 3:7] = 0.25
    # Two vessels end to end: two hills 5 px apart with a valley at a fifth of their height.
    heat[11, 10:17] = [0.3, 0.6, 0.3, 0.12, 0.3, 0.6, 0.3]
    peaks = detector.decode_peaks(_heat_output(heat), threshold=0.4)[0]
    assert sorted((p.x, p.y) for p in peaks) == [(4.5, 4.5), (11.5, 11.5), (15.5, 11.5)]


# --- hostile weights (issue 25, item 12) -------------------------------------------------------


class _Reduces:
    """Unpickling this calls os.getcwd: harmless, but code all the same."""

    def __reduce__(self):
        import os

        return (os.getcwd, ())


def _state_bytes(state) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def hostile_weights(folder: Path, case: str) -> Path:
    """A `.pt` and its metadata, bad in one way; the sha256 in the metadata matches the file,
    so what is tested is what happens after the checksum."""
    import hashlib
    import pickle

    good = _state_bytes(BerthNet((8, 8, 16, 16)).state_dict())
    widths, name = [8, 8, 16, 16], "w.pt"
    content = {
        "truncated": good[: len(good) // 2],
        "empty": b"",
        "wrong-keys": _state_bytes({"conv.weight": torch.zeros(3, 3)}),
        "wrong-widths": good,
        "pickle": pickle.dumps({"stem.0.0.weight": _Reduces()}),
        "pickle-in-zip": _state_bytes({"stem.0.0.weight": _Reduces()}),
        "outside": good,
        "absolute": good,
    }[case]
    if case == "wrong-widths":
        widths = [16, 32, 64, 96]
    if case == "outside":
        name = "../outside.pt"
    if case == "absolute":
        name = str(folder.parent / "outside.pt")
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "w.pt" if name == "w.pt" else folder.parent / "outside.pt"
    target.write_bytes(content)
    (folder / "w.pt").write_bytes(content)
    meta = {"name": "w", "file": name, "sha256": hashlib.sha256(content).hexdigest(),
            "size": len(content), "widths": widths}
    (folder / "w.json").write_text(json.dumps(meta))
    return folder / "w.pt"


@pytest.mark.parametrize("case, message", [
    ("truncated", "w.pt: not loadable weights"),
    ("empty", "w.pt: not loadable weights"),
    ("wrong-keys", "w.pt: weights do not fit BerthNet widths [8, 8, 16, 16] (Missing key"),
    ("wrong-widths", "w.pt: weights do not fit BerthNet widths [16, 32, 64, 96] (size mismatch"),
    ("pickle", "w.pt: not loadable weights (Weights only load failed"),
    ("pickle-in-zip", "w.pt: not loadable weights (Weights only load failed"),
    ("outside", "w.json: weights file '../outside.pt' must be a file name in the metadata's"),
    ("absolute", "outside.pt' must be a file name in the metadata's folder"),
])
def test_bad_weights_get_one_clear_line(tmp_path, case, message):
    path = hostile_weights(tmp_path / "weights", case)
    with pytest.raises(DetectorError) as info:
        load_model(path)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_missing_weights_file_is_named(tmp_path):
    with pytest.raises(DetectorError, match=r"nope\.pt: weights file not found"):
        load_model(tmp_path / "nope.pt")
    path = hostile_weights(tmp_path / "weights", "truncated")
    path.unlink()  # the metadata stays, naming a file that is gone
    with pytest.raises(DetectorError, match=r"weights/w\.pt: weights file not found"):
        load_model(tmp_path / "weights" / "w.json")


def test_a_heading_that_rounds_to_180_is_written_as_0(tmp_path):
    """Axial headings lie in [0, 180); one just under 180 rounds to 180.0, the same axis as
    0.0, which is what the GeoJSON must say (bf16 regressions land there more often)."""
    from imagery.detection_output import feature_collection
    from imagery.postprocess import Detection

    scene = write_scene(tmp_path / "s.tif", np.full((5, 16, 16), 500, np.uint16),
                        ("B02", "B03", "B04", "B08", "B11"), "EPSG:32652",
                        Affine(10, 0, 500000, 0, -10, 4500000), scene_id="s", port=None,
                        source="test", acquisition_time=datetime(2024, 3, 1, tzinfo=UTC))
    entry = detector.get_weights()
    found = [Detection(4.0, 4.0, 0.9, 80.0, 12.0, heading) for heading in (179.97, 90.04)]
    doc = feature_collection(open_scene(scene), found, entry, 0.25)
    assert [f["properties"]["heading_deg"] for f in doc["features"]] == [0.0, 90.0]
