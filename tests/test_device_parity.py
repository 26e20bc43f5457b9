"""Issue 27 item 1: the batched torch post-processing (imagery/postprocess.py
`batch_detections`, what `detect()` runs on the model's device) gives the detections of the
numpy/scipy reference (`detect(..., reference=True)`), and `--device` reaches the model in
`run`, `watch` and `evaluate` (a device torch cannot use: one line, exit 2, nothing written).

Tolerances, for a detection of one path and its partner in the other:
- position within 0.5 px: peaks sit at pixel centres, so anything but the same pixel is >= 1 px;
- score within 1e-4, length and width within 1e-4 relative, heading within 0.01 degrees:
  float32 rounding of the same arithmetic on another device (cuDNN's convolutions, a fused
  multiply-add) moves logits by ~1e-6, far below these;
- berthed identical. On a GPU a flag could flip only where rounding moves a pixel across the
  water / vessel mask threshold at exactly 60 m from land (within 1 px of the boundary); on the
  CPU build both paths read the same float32 values and the disk test reproduces the distance
  transform exactly (tested below at every pixel), so the CPU test demands identity.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from imagery import postprocess as pp
from imagery.cli import main
from imagery.detector import (
    DetectorError,
    decode_options,
    detect,
    load_model,
    native_bf16,
    resolve_precision,
)
from imagery.pipeline import open_workspace
from imagery.ports import get_port
from imagery.scene import SCL_WATER, open_scene
from imagery.simulate import simulate_scene_file

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "sen2ships"
REAL_PORTS = ("casablanca", "honolulu", "gdynia")  # gdynia: 5.8 m pixels, chips resampled


def assert_same_detections(got: list, want: list) -> None:
    assert len(got) == len(want), (len(got), len(want))
    for a, b in zip(sorted(got, key=_key), sorted(want, key=_key), strict=True):
        assert math.hypot(a.px_x - b.px_x, a.px_y - b.px_y) <= 0.5, (a, b)
        assert abs(a.score - b.score) <= 1e-4, (a, b)
        assert a.length_m == pytest.approx(b.length_m, rel=1e-4)
        assert a.width_m == pytest.approx(b.width_m, rel=1e-4)
        turn = abs(a.heading_deg - b.heading_deg) % 180.0
        assert min(turn, 180.0 - turn) <= 0.01, (a, b)
        assert a.berthed == b.berthed, (a, b)


def _key(d) -> tuple:
    return (round(d.px_y), round(d.px_x))


@pytest.fixture(scope="module")
def shipped():
    torch.set_num_threads(2)
    return load_model()


# --- whole scenes: torch path against the reference --------------------------------------------


@pytest.mark.parametrize("port, seed, cloud", [("vostochny", 7, 0.0), ("chongjin", 3, 0.3)])
def test_simulated_scene_same_detections_on_both_paths(shipped, tmp_path, port, seed, cloud):
    model, entry = shipped
    simulate_scene_file(get_port(port), "2024-03-19", tmp_path / "s.tif", seed=seed,
                        cloud_fraction=cloud)
    info = open_scene(tmp_path / "s.tif")
    options = decode_options(entry)
    # Threshold 0.1, under the operating one, gives many peaks (ridge merges, hull
    # suppression); batches of three chips exercise the batched masks as a GPU runs them.
    want = detect(info, model, 0.1, reference=True, **options)
    got = detect(info, model, 0.1, batch_size=3, readers=3, **options)  # as on a GPU
    assert len(want) > 5, "the scene should hold detections to compare"
    assert_same_detections(got, want)
    assert any(d.berthed for d in want) and not all(d.berthed for d in want)


@pytest.mark.parametrize("port", REAL_PORTS)
def test_real_scene_same_detections_on_both_paths(shipped, port):
    scene = SHARED / port / "scene.tif"
    if not scene.exists():
        pytest.skip(f"{scene} not found: the real sen2ships scenes live in ../shared/data")
    model, entry = shipped
    info = open_scene(scene, require_bands=None)
    want = detect(info, model, 0.1, reference=True, **decode_options(entry))
    got = detect(info, model, 0.1, batch_size=2, **decode_options(entry))
    assert want
    assert_same_detections(got, want)


# --- the pieces, against their references ----------------------------------------------------


def _peaked_output(rng: np.random.Generator, batch: int = 3, size: int = 96) -> torch.Tensor:
    """Model-like outputs: heat logits with round and elongated hills (ridges with two near
    equal maxima), a plateau of tied maxima, random size and angle channels."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    out = rng.normal(0, 0.3, (batch, 6, size, size)).astype(np.float32)
    out[:, 0] = -4.0
    for b in range(batch):
        for _ in range(12):
            cy, cx = rng.uniform(4, size - 4, 2)
            a, length = rng.uniform(0, np.pi), rng.uniform(1.5, 9)
            along = (xx - cx) * np.cos(a) + (yy - cy) * np.sin(a)
            across = -(xx - cx) * np.sin(a) + (yy - cy) * np.cos(a)
            hill = np.exp(-(along / length) ** 2 - (across / 1.5) ** 2)
            wobble = 0.15 * np.cos(along * 1.3)  # two or three maxima along a long hill
            out[b, 0] = np.maximum(out[b, 0], -4.0 + rng.uniform(2, 7) * hill * (1 + wobble))
        out[b, 0, 10:12, 10:12] = 1.0  # tied maxima
    out[:, 2:4] = rng.uniform(0.5, 3.0, (batch, 2, size, size))
    return torch.from_numpy(out)


@pytest.mark.parametrize("threshold", [0.05, 0.25])
def test_batched_peaks_and_ridge_merge_equal_the_reference(threshold):
    out = _peaked_output(np.random.default_rng(1))
    want = pp.decode_peaks(out, threshold)
    got = pp.decode_peaks_batch(out, threshold)
    heat = torch.sigmoid(out[:, 0:1])
    maxima = int(((heat == torch.nn.functional.max_pool2d(heat, 3, 1, 1))
                  & (heat >= threshold)).sum())
    assert 20 < sum(map(len, want)) < maxima, "some ridge maxima should have been merged"
    for g, w in zip(got, want, strict=True):
        assert [(p.x, p.y, p.score) for p in g] == [(p.x, p.y, p.score) for p in w]
        for p, q in zip(g, w, strict=True):
            assert (p.length_px, p.width_px, p.angle) == pytest.approx(
                (q.length_px, q.width_px, q.angle), rel=1e-6)


def test_batched_water_mask_takes_each_chips_own_branch():
    rng = np.random.default_rng(2)
    arrays = rng.uniform(0.0, 0.3, (4, 5, 40, 40)).astype(np.float32)
    arrays[:, :, :, 30:] = np.nan  # past the scene edge
    arrays[2, 1] = np.nan  # no green: NDWI impossible, dark NIR decides
    scl = rng.integers(0, 12, (4, 40, 40)).astype(np.uint8)
    scl[1][scl[1] == SCL_WATER] = 4  # SCL present but no water class: NDWI decides
    got = pp.water_mask_batch(torch.from_numpy(arrays), torch.from_numpy(scl)).numpy()
    for i in range(4):
        assert (got[i] == pp.water_mask(arrays[i], scl[i])).all(), i
    without = pp.water_mask_batch(torch.from_numpy(arrays), None).numpy()
    for i in range(4):
        assert (without[i] == pp.water_mask(arrays[i], None)).all(), i


def _land_chips(rng: np.random.Generator, count: int = 3, size: int = 120) -> np.ndarray:
    """Coasts touching the edge, small islands (some under MIN_LAND_AREA_M2) and noise."""
    chips = np.zeros((count, size, size), bool)
    yy, xx = np.mgrid[0:size, 0:size]
    for land in chips:
        land |= xx < rng.integers(5, 30)  # a coast on the left edge
        for _ in range(8):
            cy, cx, r = rng.integers(10, size - 10), rng.integers(40, size - 10), rng.uniform(1, 16)
            land |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        land ^= rng.random((size, size)) < 0.03
    return chips


def test_binary_opening_equals_scipy_at_the_edges_too():
    land = _land_chips(np.random.default_rng(3))
    got = pp.binary_opening_batch(torch.from_numpy(land)).numpy()
    for g, m in zip(got, land, strict=True):
        assert (g == ndimage.binary_opening(m, iterations=1)).all()


@pytest.mark.parametrize("pixel_m", [10.0, 8.0, 7.7, 5.8])
def test_disk_test_equals_the_distance_transform_at_every_pixel(pixel_m):
    land = np.random.default_rng(4).random((2, 80, 80)) > 0.998
    land[1, 0, 40] = True  # land on the edge
    rows, cols = np.mgrid[0:80, 0:80]
    for b in range(2):
        pixels = torch.from_numpy(np.stack([np.full(rows.size, b), rows.ravel(),
                                            cols.ravel()], 1))
        got = pp.near_land_at(torch.from_numpy(land), pixels, pixel_m, 60.0).numpy()
        want = ndimage.distance_transform_edt(~land[b]) * pixel_m <= 60.0
        assert (got.reshape(80, 80) == want).all()


@pytest.mark.parametrize("pixel_m", [10.0, 7.7])
def test_land_distance_of_a_batch_equals_the_reference_mask(pixel_m):
    rng = np.random.default_rng(5)
    land = _land_chips(rng)
    count, size = land.shape[0], land.shape[1]
    raw = np.full((count, 5, size, size), 0.08, np.float32)  # water: green over NIR...
    raw[:, 3] = 0.03
    raw[:, 3][land] = 0.4  # ...land: bright NIR, NDWI < 0
    logits = np.full((count, 1, size, size), -5.0, np.float32)
    logits[:, 0, 50:54, 60:75] = 5.0  # a vessel: never land
    rows, cols = np.mgrid[0:size, 0:size]
    pixels = [(b, r, c) for b in range(count) for r, c in zip(rows.ravel(), cols.ravel(),
                                                            strict=True)]
    got = np.array(pp.land_distance_at(torch.from_numpy(logits), torch.from_numpy(raw), None,
                                       pixel_m, pixels)).reshape(count, size, size)
    for b in range(count):
        want = pp.land_distance_mask(pp.water_mask(raw[b], None), logits[b, 0] > 0, pixel_m)
        assert (got[b] == want).all()
        assert want.any() and not want.all()


# --- --device on run, watch and evaluate -----------------------------------------------------


def _snapshot(folder: Path) -> dict:
    if not folder.exists():
        return {}
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.mark.parametrize("command", [
    ["run", "--source", "simulated", "--port", "chongjin"],
    ["watch", "--source", "simulated", "--every", "1h", "--max-passes", "1"],
    ["backfill", "--source", "simulated", "--port", "chongjin", "--start", "2024-03-01",
     "--end", "2024-03-04"],
])
def test_run_and_watch_refuse_cuda_without_a_gpu_in_one_line(command, tmp_path, monkeypatch,
                                                            capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    fresh, existing = tmp_path / "fresh", tmp_path / "existing"
    open_workspace(existing)  # a workspace that exists already
    before = _snapshot(existing)
    for ws in (fresh, existing):
        code = main([*command, "--device", "cuda", "--workspace", str(ws)])
        err = capsys.readouterr().err
        assert code == 2
        assert len(err.strip().splitlines()) == 1 and "cuda" in err and "Traceback" not in err
    assert not fresh.exists()
    assert _snapshot(existing) == before


def test_backfill_on_a_cluster_checks_the_device_name_before_connecting(tmp_path, capsys):
    ws = tmp_path / "ws"
    code = main(["backfill", "--source", "simulated", "--port", "chongjin", "--start",
                 "2024-03-01", "--end", "2024-03-04", "--cluster", "tcp://127.0.0.1:1",
                 "--device", "gpu0", "--workspace", str(ws)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "'gpu0'" in err
    assert not ws.exists()


def test_evaluate_refuses_cuda_without_a_gpu_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "scores.json"
    code = main(["evaluate", "--data", str(tmp_path), "--device", "cuda", "--json", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "cuda" in err
    assert not out.exists()


@pytest.mark.parametrize("option, gpu, expected", [
    ("cpu", False, "cpu"), ("auto", False, "cpu"), ("auto", True, "cuda")])
def test_run_hands_the_device_to_detection(option, gpu, expected, tmp_path, monkeypatch):
    """`auto` with a GPU (torch's answer faked: nothing runs there) reaches detect_scene."""
    import imagery.detector

    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    seen = []

    def record(path, *args, device="cpu", **kwargs):
        seen.append(device)
        raise RuntimeError("stop here: the device is what this test checks")

    monkeypatch.setattr(imagery.detector, "detect_scene", record)
    code = main(["run", "--source", "simulated", "--port", "chongjin", "--since", "2024-03-01",
                 "--until", "2024-03-04", "--device", option, "--workspace",
                 str(tmp_path / "ws")])
    assert code == 1 and seen and set(seen) == {expected}


def test_evaluate_loads_the_model_on_the_device_asked(simulated_labelled, tiny_weights,
                                                      monkeypatch, capsys):
    import training.evaluate

    seen = []
    real = training.evaluate.load_model
    monkeypatch.setattr(training.evaluate, "load_model",
                        lambda path, device="cpu", precision=None: seen.append(device)
                        or real(path, device, precision))
    assert main(["evaluate", "--data", str(simulated_labelled), "--weights", str(tiny_weights),
                 "--device", "cpu", "--threads", "1"]) == 0
    assert seen and set(seen) == {"cpu"}
    assert "POOLED" in capsys.readouterr().out


# --- the reader thread -----------------------------------------------------------------------


def test_reader_thread_hands_over_errors_and_stops_when_left():
    import itertools
    import threading

    from imagery.chip_feed import read_ahead

    def failing():
        yield 1
        yield 2
        raise OSError("block 7 unreadable")

    got = []
    with pytest.raises(OSError, match="block 7"):
        for item in read_ahead(failing()):
            got.append(item)
    assert got == [1, 2]
    endless = read_ahead(itertools.count())
    assert [next(endless) for _ in range(3)] == [0, 1, 2]
    endless.close()
    assert not [t for t in threading.enumerate() if t.name == "detect-reader"]


def test_parallel_readers_report_a_corrupt_block_as_one_reader_does(shipped, tmp_path):
    from test_scene import write_corrupt_middle

    from imagery.scene import SceneError

    model, entry = shipped
    info = open_scene(write_corrupt_middle(tmp_path / "middle.tif"))
    messages = []
    for readers in (1, 3):
        with pytest.raises(SceneError, match="middle.tif: cannot read pixels") as caught:
            detect(info, model, 0.5, chip_size=128, batch_size=2, readers=readers)
        messages.append(str(caught.value))
    assert messages[0] == messages[1]


# --- precision: bf16 where the CPU computes it natively ---------------------------------------

needs_bf16 = pytest.mark.skipif(
    not native_bf16("cpu"), reason="this CPU does not compute bfloat16 natively (no "
    "AVX512-BF16 or AMX), so berthwatch never runs the model in bf16 here")


@needs_bf16
@pytest.mark.parametrize("port, seed, cloud", [("vostochny", 7, 0.0), ("chongjin", 3, 0.3)])
def test_bf16_finds_the_vessels_fp32_finds(tmp_path, port, seed, cloud):
    """At the operating threshold bf16 finds the same vessels as fp32, at the same pixels.
    Its 8-bit mantissa moves scores by up to 0.005 on these scenes (measured), so a vessel
    scored within 0.01 of the threshold may be on one side in one and on the other in the
    other; sizes and headings come from bf16 regressions, hence the looser tolerances."""
    fp32, entry = load_model(precision="fp32")
    bf16, _ = load_model(precision="bf16")
    assert fp32.precision == "fp32" and bf16.precision == "bf16"
    assert next(bf16.parameters()).dtype == torch.bfloat16
    simulate_scene_file(get_port(port), "2024-03-19", tmp_path / "s.tif", seed=seed,
                        cloud_fraction=cloud)
    info = open_scene(tmp_path / "s.tif")
    threshold, options = entry.threshold, decode_options(entry)
    runs = [detect(info, model, threshold, **options) for model in (fp32, bf16)]
    assert len(runs[0]) >= 5, "the scene should hold detections to compare"
    for mine, other in (runs, runs[::-1]):
        for d in mine:
            if d.score < threshold + 0.01:
                continue
            twin = min(other, key=lambda e: math.hypot(e.px_x - d.px_x, e.px_y - d.px_y))
            assert math.hypot(twin.px_x - d.px_x, twin.px_y - d.px_y) <= 0.5, (d, twin)
            assert abs(twin.score - d.score) <= 0.01, (d, twin)
            assert twin.length_m == pytest.approx(d.length_m, rel=0.05), (d, twin)
            turn = abs(twin.heading_deg - d.heading_deg) % 180.0
            assert min(turn, 180.0 - turn) <= 3.0, (d, twin)
            assert twin.berthed == d.berthed, (d, twin)


def test_auto_precision_is_bf16_only_on_a_cpu_that_computes_it(monkeypatch):
    import imagery.detector as detector

    monkeypatch.delenv("BERTHWATCH_PRECISION", raising=False)
    for native, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(detector, "native_bf16", lambda device, n=native: n)
        assert resolve_precision(None, "cpu") == expected
        assert resolve_precision("auto", "cpu") == expected
        assert resolve_precision("auto", "cuda") == "fp32"  # not the GPU's bottleneck
        assert resolve_precision("fp32", "cpu") == "fp32"
    with pytest.raises(DetectorError, match="does not compute bfloat16 natively.*use fp32"):
        resolve_precision("bf16", "cpu")  # emulated bf16 would be slower than fp32


def test_the_environment_sets_the_default_precision(monkeypatch):
    import imagery.detector as detector

    monkeypatch.setattr(detector, "native_bf16", lambda device: True)
    monkeypatch.setenv("BERTHWATCH_PRECISION", "fp32")
    assert resolve_precision(None, "cpu") == "fp32"
    assert resolve_precision("auto", "cpu") == "bf16"  # the flag wins over the environment
    monkeypatch.setenv("BERTHWATCH_PRECISION", "half")
    with pytest.raises(DetectorError, match=r"'half' \(from \$BERTHWATCH_PRECISION\)"):
        resolve_precision(None, "cpu")


def test_detections_record_their_precision(tiny_weights, tmp_path):
    from imagery.detector import detect_scene

    simulate_scene_file(get_port("chongjin"), "2024-03-19", tmp_path / "s.tif", seed=2)
    doc = detect_scene(tmp_path / "s.tif", tmp_path / "d.geojson", weights=tiny_weights,
                       precision="fp32", progress=False)
    assert doc["properties"]["precision"] == "fp32"


@pytest.mark.parametrize("command", [
    ["detect", "SCENE", "--out", "OUT"],
    ["run", "--source", "simulated", "--port", "chongjin"],
    ["evaluate", "--data", "DATA", "--json", "OUT"],
])
def test_a_misspelt_precision_is_one_line_and_writes_nothing(command, tmp_path, capsys):
    simulate_scene_file(get_port("chongjin"), "2024-03-19", tmp_path / "s.tif", seed=2)
    out, ws = tmp_path / "out.json", tmp_path / "ws"
    names = {"SCENE": str(tmp_path / "s.tif"), "OUT": str(out), "DATA": str(tmp_path)}
    args = [names.get(a, a) for a in command] + ["--precision", "fp16"]
    if command[0] == "run":
        args += ["--workspace", str(ws)]
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "'fp16'" in err and "Traceback" not in err
    assert not out.exists() and not ws.exists()


def test_two_worker_threads_detect_what_one_thread_does(shipped, tmp_path, monkeypatch):
    """On a CPU each of torch's threads takes a chip (one intra-op thread each; beyond
    CPU_WORKERS, several each): the same detections, to the bit and in the same order, as
    one thread doing every chip."""
    import imagery.detector as detector

    model, entry = shipped
    simulate_scene_file(get_port("chongjin"), "2024-03-19", tmp_path / "s.tif", seed=3)
    info = open_scene(tmp_path / "s.tif")
    runs = []
    for threads, most in ((1, 8), (2, 8), (4, 2)):  # (4, 2): two chips of two threads each
        monkeypatch.setattr(detector, "CPU_WORKERS", most)
        torch.set_num_threads(threads)
        runs.append(detect(info, model, 0.1, **decode_options(entry)))
        assert torch.get_num_threads() == threads  # restored after the workers
    torch.set_num_threads(2)
    assert len(runs[0]) > 5 and runs[0] == runs[1] == runs[2]


@pytest.mark.parametrize("kernel", [3, 5])
def test_window_max_equals_max_pool(kernel):
    rng = np.random.default_rng(kernel)
    x = torch.from_numpy(rng.integers(0, 4, (3, 1, 37, 29)).astype(np.float32))  # many ties
    x[0, 0, 0, :] = 9.0  # maxima on the edges
    x[1, 0, :, -1] = 9.0
    want = torch.nn.functional.max_pool2d(x, kernel, 1, kernel // 2)
    assert torch.equal(pp.window_max(x, kernel), want)
