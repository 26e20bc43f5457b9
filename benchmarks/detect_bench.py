"""Detection throughput: berthwatch's detector on the CPU and, where torch sees one, on a
GPU, against torchvision's Faster R-CNN R50-FPN (issue 27 item 4).

    python benchmarks/detect_bench.py [--device auto|cpu|cuda] [--size 4096] [--threads 2]
    python benchmarks/detect_bench.py --full-tile      # 10980 x 10980: seconds and peak RSS
    python benchmarks/detect_bench.py --tta            # the detector with `detect --tta`

Writes a synthetic 5-band uint16 scene (water, land blobs, bright vessel rectangles) block by
block and reports, each figure from a fresh child process (so its peak RSS is its own):
1. in-process, CPU (`--threads`, default 2), in `--precision` (default auto: bf16 where the
   CPU computes it natively): `imagery.detector.detect` over the whole scene (reading
   included), timed; and the network alone on one chip, five passes;
2. in-process, GPU when `--device` is cuda, or auto with a GPU: the network alone on
   batches of chips already on the GPU (chip pixels per second), then `detect()` end to end
   (reading, batches of GPU_BATCH chips, post-processing on the GPU);
3. Faster R-CNN in-process on the CPU, in the CPU detector's precision unless
   `--rcnn-precision` says otherwise (bf16: under torch.autocast): `--rcnn-chips` chips of
   the same tiling timed and extrapolated to the scene's chip count, as printed;
4. whole-process: `python -m imagery.cli detect` on a `--process-size` scene (default 2048)
   against `benchmarks/rcnn_detect.py` (the reference, run the same way: one process that
   loads the model, reads and detects every chip) on the same scene, device and precision,
   wall time of each process from start to exit (ours: the median of `--process-runs`).
`--full-tile` runs 1 and 2 on a 10980 x 10980 scene (the detector only): seconds, peak RSS.
The detector runs in channels_last layout, one chip per thread on a CPU;
`--rcnn-channels-last` gives the in-process reference the same layout.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
import torch
from affine import Affine
from rasterio.windows import Window

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from imagery.scene import SCENE_BANDS, open_scene  # noqa: E402
from imagery.tiling import chip_windows, iter_chips  # noqa: E402

BLOCK = 1024


def _block(rng: np.random.Generator, h: int, w: int, row0: int, col0: int) -> np.ndarray:
    """One block of a fake port: smooth land/water pattern plus a few bright vessels."""
    yy, xx = np.mgrid[row0 : row0 + h, col0 : col0 + w].astype(np.float32)
    field = np.sin(xx / 310.0) + np.cos(yy / 270.0) + 0.5 * np.sin((xx + yy) / 97.0)
    land = field > 0.8
    water = np.array([450, 400, 250, 150, 100], np.float32)[:, None, None]
    ground = np.array([900, 1100, 1300, 2800, 2500], np.float32)[:, None, None]
    data = np.where(land[None], ground, water) + rng.normal(0, 30, (5, h, w)).astype(np.float32)
    for _ in range(max(1, h * w // 40000)):
        r, c = rng.integers(0, h - 30), rng.integers(0, w - 30)
        length, width = rng.integers(6, 28), rng.integers(2, 6)
        if rng.random() < 0.5:
            data[:, r : r + length, c : c + width] = 2500
        else:
            data[:, r : r + width, c : c + length] = 2500
    return np.clip(data, 0, 65535).astype(np.uint16)


def make_scene(path: Path, size: int, seed: int = 0) -> Path:
    """A size x size UTM scene (10 m pixels) written block-wise, so memory stays small."""
    rng = np.random.default_rng(seed)
    profile = dict(driver="GTiff", width=size, height=size, count=5, dtype="uint16",
                   crs="EPSG:32633", transform=Affine(10, 0, 500000, 0, -10, 4500000),
                   tiled=True, blockxsize=256, blockysize=256, compress="deflate", predictor=2)
    with rasterio.open(path, "w", **profile) as dst:
        for r in range(0, size, BLOCK):
            for c in range(0, size, BLOCK):
                h, w = min(BLOCK, size - r), min(BLOCK, size - c)
                dst.write(_block(rng, h, w, r, c), window=Window(c, r, w, h))
        dst.update_tags(REFLECTANCE_SCALE="10000", SCENE_ID=f"bench-{size}", SOURCE="benchmark",
                        ACQUISITION_TIME="2024-01-01T10:00:00Z", PORT="")
        for i, band in enumerate(SCENE_BANDS, start=1):
            dst.set_band_description(i, band)
    return path


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kB


def bench_detector(scene: Path, weights: str | None, threads: int, chip: int,
                   tta: bool = False, device: str = "cpu", precision: str | None = None) -> dict:
    """The network alone, then detect() over the whole scene, on `device` (in this process)."""
    from imagery.detector import detect, load_model

    torch.set_num_threads(threads)
    model, entry = load_model(weights, device, precision)
    info = open_scene(scene)
    network = bench_network(model, info, chip, device)
    if device != "cpu":
        torch.cuda.reset_peak_memory_stats()
    _sync(device)
    start = time.perf_counter()
    found = detect(info, model, entry.threshold, chip_size=chip, tta=tta)
    _sync(device)
    seconds = time.perf_counter() - start
    mp = info.width * info.height / 1e6
    result = {"device": device, "seconds": round(seconds, 2), "megapixels": round(mp, 2),
              "mp_per_s": round(mp / seconds, 3), "detections": len(found),
              "peak_rss_mb": round(peak_rss_mb(), 1), "model": entry.name, "tta": tta,
              "threads": threads, "precision": model.precision, "network": network}
    if device != "cpu":
        result["gpu_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        result["gpu"] = torch.cuda.get_device_name()
    return result


def _sync(device: str) -> None:
    if device != "cpu":
        torch.cuda.synchronize()


def bench_network(model, info, chip: int, device: str) -> dict:
    """The model alone (in its precision, inference, input already on the device): chip
    pixels a second. Real chips of the scene; one chip a pass on a CPU (on all of its
    threads, as one chip is never run by detect(), which gives each thread a chip of its
    own), 16 on a GPU."""
    from imagery.detector import GPU_BATCH
    from imagery.detector import SCENE_BANDS as bands

    batch, passes = (1, 5) if device == "cpu" else (16, 20)
    arrays = [c.array for _, c in zip(range(batch), iter_chips(info, chip, 64, bands),
                                      strict=False)]
    arrays = (arrays * batch)[:batch]  # a scene with fewer chips repeats them
    x = torch.from_numpy(np.nan_to_num(np.stack(arrays))).to(device)
    x = x.contiguous(memory_format=torch.channels_last)
    present = torch.ones((batch, len(bands)), dtype=torch.bool, device=device)
    with torch.inference_mode():
        model(x, present)  # warm-up, not timed: CUDA context, cuDNN's and oneDNN's kernels
        model(x, present)
        if device != "cpu":  # and those of detect()'s batches
            model(x[:GPU_BATCH], present[:GPU_BATCH])
        _sync(device)
        start = time.perf_counter()
        for _ in range(passes):
            model(x, present)
        _sync(device)
    seconds = time.perf_counter() - start
    mpx = batch * passes * chip * chip / 1e6
    result = {"batch": batch, "passes": passes, "seconds": round(seconds, 3),
              "chip_mp_per_s": round(mpx / seconds, 2)}
    if device != "cpu":  # torch's default runs cuDNN's fp32 convolutions in TF32
        result["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
        if torch.backends.cudnn.allow_tf32:
            torch.backends.cudnn.allow_tf32 = False
            result["chip_mp_per_s_strict_fp32"] = bench_network(model, info, chip,
                                                                device)["chip_mp_per_s"]
            torch.backends.cudnn.allow_tf32 = True
    return result


def whole_process(cmd: list[str]) -> float:
    """Wall seconds of a command from start to exit (imports, model load, reading, writing)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, text=True, env=env, cwd=ROOT)
    return time.perf_counter() - start


def bench_whole_process(scene: Path, tmp: Path, device: str, threads: int, precision: str,
                        rcnn_precision: str, runs: int = 3) -> dict:
    """`berthwatch detect` and the Faster R-CNN script on the same scene, each one process:
    ours the median of `runs` (a few seconds each, so that one slow start does not decide
    the ratio), the reference once (a minute on a CPU: its start-up is a small part)."""
    times = sorted(whole_process([sys.executable, "-m", "imagery.cli", "detect", str(scene),
                                  "--out", str(tmp / "out.geojson"), "--device", device,
                                  "--threads", str(threads), "--precision", precision])
                   for _ in range(runs))
    ours = times[len(times) // 2]
    batch = "1" if device == "cpu" else "8"
    ref = whole_process([sys.executable, str(ROOT / "benchmarks" / "rcnn_detect.py"),
                         str(scene), "--device", device, "--threads", str(threads),
                         "--batch", batch, "--precision", rcnn_precision])
    info = open_scene(scene)
    return {"device": device, "size": info.width, "precision": precision,
            "fasterrcnn_precision": rcnn_precision, "berthwatch_detect_s": round(ours, 2),
            "berthwatch_detect_runs_s": [round(t, 2) for t in times],
            "fasterrcnn_s": round(ref, 2), "ratio": round(ref / ours, 2)}


def bench_rcnn(scene: Path, threads: int, chip: int, overlap: int, n_chips: int,
               channels_last: bool = False, precision: str = "fp32") -> dict:
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None).eval()
    if channels_last:  # the layout berthwatch's detector runs in, for a like-for-like figure
        model = model.to(memory_format=torch.channels_last)
    info = open_scene(scene)
    total = len(chip_windows(info.width, info.height, chip, overlap))
    chips = iter_chips(info, chip, overlap, ("B04", "B03", "B02"))
    images = [torch.from_numpy(np.nan_to_num(c.array) * 3.0).clamp(0, 1)
              for _, c in zip(range(n_chips + 1), chips, strict=False)]
    images = (images * (n_chips + 1))[: n_chips + 1]  # a scene with fewer chips repeats them
    autocast = torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16")
    with torch.inference_mode(), autocast:
        model([images[0]])  # warm-up, not timed
        start = time.perf_counter()
        for img in images[1:]:
            model([img])
        per_chip = (time.perf_counter() - start) / n_chips
    seconds = per_chip * total
    mp = info.width * info.height / 1e6
    return {"seconds_per_chip": round(per_chip, 2), "chips": total,
            "seconds_extrapolated": round(seconds, 1), "mp_per_s": round(mp / seconds, 4),
            "timed_chips": n_chips, "channels_last": channels_last, "precision": precision}


def _child(args, scene: Path, device: str) -> dict:
    cmd = [sys.executable, __file__, "--only-detector", "--scene", str(scene),
           "--threads", str(args.threads), "--chip", str(args.chip), "--device", device]
    if args.precision:
        cmd += ["--precision", args.precision]
    if args.weights:
        cmd += ["--weights", args.weights]
    if args.tta:
        cmd.append("--tta")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _print_detector(r: dict, full_tile: bool) -> None:
    where = (f"{r['threads']} CPU threads ({r['precision']})" if r["device"] == "cpu"
             else f"{r['gpu']} ({r['precision']}), peak GPU memory {r['gpu_peak_mb']} MB")
    tta = " with --tta" if r["tta"] else ""
    n = r["network"]
    print(f"detect(){tta} on {where}: {r['megapixels']} MP in {r['seconds']} s = "
          f"{r['mp_per_s']} MP/s end to end (reading included), peak RSS {r['peak_rss_mb']} MB "
          f"({r['detections']} detections, {r['model']})"
          + (" [full tile]" if full_tile else ""))
    print(f"    network alone: {n['chip_mp_per_s']} MP/s of chip pixels ({n['passes']} passes "
          f"of {n['batch']} chip(s) in {n['seconds']} s"
          + (f"; cudnn.allow_tf32={n['cudnn_allow_tf32']}" if "cudnn_allow_tf32" in n else "")
          + (f"; strict fp32 {n['chip_mp_per_s_strict_fp32']} MP/s"
             if "chip_mp_per_s_strict_fp32" in n else "") + ")")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--process-size", type=int, default=2048,
                    help="scene size of the whole-process comparison (default 2048; 0: skip)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--process-runs", type=int, default=3,
                    help="runs of `berthwatch detect` in the whole-process figure (median)")
    ap.add_argument("--device", default="auto",
                    help="auto (default: the GPU figures too when torch sees one), cpu, cuda")
    ap.add_argument("--chip", type=int, default=512)
    ap.add_argument("--overlap", type=int, default=64)
    ap.add_argument("--rcnn-chips", type=int, default=3)
    ap.add_argument("--weights", help="weights name or path (default: the packaged default)")
    ap.add_argument("--full-tile", action="store_true", help="10980 x 10980, detector only")
    ap.add_argument("--scene", help="use this scene instead of writing a synthetic one")
    ap.add_argument("--gpu-only", action="store_true",
                    help="with a GPU, skip the CPU detector figures (e.g. --full-tile)")
    ap.add_argument("--only-detector", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--tta", action="store_true",
                    help="run the detector with test-time augmentation (eight orientations)")
    ap.add_argument("--rcnn-channels-last", action="store_true",
                    help="run the reference in channels_last layout too (the detector always is)")
    ap.add_argument("--precision", help="the detector's: auto (default), fp32 or bf16")
    ap.add_argument("--rcnn-precision", choices=("fp32", "bf16"),
                    help="the reference's (default: the detector's precision on the CPU)")
    args = ap.parse_args(argv)
    if args.only_detector:
        print(json.dumps(bench_detector(Path(args.scene), args.weights, args.threads,
                                        args.chip, args.tta, args.device, args.precision)))
        return
    from imagery.detector import resolve_device

    gpu = resolve_device(args.device)  # cuda without a GPU: an error, not a CPU figure
    devices = ["cpu"] + ([gpu] if gpu != "cpu" else [])
    if args.gpu_only and gpu != "cpu":
        devices = [gpu]
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, "
          + (f"GPU {torch.cuda.get_device_name()}" if gpu != "cpu" else "no GPU used"))
    size = 10980 if args.full_tile else args.size
    with tempfile.TemporaryDirectory(prefix="bw-bench-") as tmp:
        scene = Path(args.scene) if args.scene else make_scene(Path(tmp) / f"s{size}.tif", size)
        results = {"detector": [_child(args, scene, d) for d in devices]}
        for r in results["detector"]:
            _print_detector(r, args.full_tile)
        if args.full_tile:
            print(json.dumps(results))
            return
        # Like for like by default: the reference in the precision of the CPU detector.
        precision = results["detector"][0]["precision"]
        rcnn_precision = args.rcnn_precision or precision
        ref = bench_rcnn(scene, args.threads, args.chip, args.overlap, args.rcnn_chips,
                         args.rcnn_channels_last, rcnn_precision)
        layout = ", channels_last" if ref["channels_last"] else ""
        print(f"fasterrcnn_resnet50_fpn ({rcnn_precision}{layout}) in-process on "
              f"{args.threads} CPU threads: "
              f"{ref['seconds_per_chip']} s/chip x {ref['chips']} chips = "
              f"{ref['seconds_extrapolated']} s (extrapolated from {ref['timed_chips']} chips) "
              f"= {ref['mp_per_s']} MP/s")
        cpu = results["detector"][0]  # with --gpu-only, the GPU's
        ratio = cpu["mp_per_s"] / ref["mp_per_s"] if ref["mp_per_s"] else math.inf
        print(f"in-process ratio, detector on {cpu['device']} against the CPU reference: "
              f"{ratio:.1f}x")
        results.update(fasterrcnn=ref, ratio=round(ratio, 2))
        if args.process_size:
            small = make_scene(Path(tmp) / f"p{args.process_size}.tif", args.process_size, 1)
            results["whole_process"] = []
            for d in devices:
                mine = next(r["precision"] for r in results["detector"] if r["device"] == d)
                w = bench_whole_process(small, Path(tmp), d, args.threads, mine,
                                        rcnn_precision if d == "cpu" else "fp32",
                                        args.process_runs)
                results["whole_process"].append(w)
                print(f"whole process on {d} ({args.threads} threads), {w['size']} x {w['size']}"
                      f" scene: berthwatch detect ({mine}) {w['berthwatch_detect_s']} s "
                      f"(median of {w['berthwatch_detect_runs_s']}), "
                      f"Faster R-CNN ({w['fasterrcnn_precision']}) {w['fasterrcnn_s']} s: "
                      f"{w['ratio']}x")
        print(json.dumps(results))


if __name__ == "__main__":
    main()
