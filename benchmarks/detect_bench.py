"""Detection throughput on a CPU: berthwatch's detector vs torchvision's Faster R-CNN.

    python benchmarks/detect_bench.py [--size 4096] [--threads 2] [--rcnn-chips 4]
    python benchmarks/detect_bench.py --full-tile      # 10980 x 10980: seconds and peak RSS
    python benchmarks/detect_bench.py --tta            # the detector with `detect --tta`

Writes a synthetic 5-band uint16 scene (water, land blobs, bright vessel rectangles) block by
block, runs `imagery.detector.detect` over it (whole scene, timed) and
`fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None)` (torchvision defaults, so its
transform resizes each chip to 800 px) over the same chips of the same tiling: that one is
timed on `--rcnn-chips` chips and extrapolated to the scene's chip count, as printed. The
detector runs in channels_last layout, one chip per batch; `--rcnn-channels-last` gives the
reference the same layout, for a like-for-like figure beside the issue's default reference.
"""

from __future__ import annotations

import argparse
import json
import math
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
                   tta: bool = False) -> dict:
    from imagery.detector import detect, load_model

    torch.set_num_threads(threads)
    model, entry = load_model(weights)
    info = open_scene(scene)
    start = time.perf_counter()
    found = detect(info, model, entry.threshold, chip_size=chip, tta=tta)
    seconds = time.perf_counter() - start
    mp = info.width * info.height / 1e6
    return {"seconds": round(seconds, 2), "megapixels": round(mp, 2),
            "mp_per_s": round(mp / seconds, 3), "detections": len(found),
            "peak_rss_mb": round(peak_rss_mb(), 1), "model": entry.name, "tta": tta}


def bench_rcnn(scene: Path, threads: int, chip: int, overlap: int, n_chips: int,
               channels_last: bool = False) -> dict:
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None).eval()
    if channels_last:  # the layout berthwatch's detector runs in, for a like-for-like figure
        model = model.to(memory_format=torch.channels_last)
    info = open_scene(scene)
    total = len(chip_windows(info.width, info.height, chip, overlap))
    chips = iter_chips(info, chip, overlap, ("B04", "B03", "B02"))
    images = [torch.from_numpy(np.nan_to_num(next(chips).array) * 3.0).clamp(0, 1)
              for _ in range(n_chips + 1)]
    with torch.inference_mode():
        model([images[0]])  # warm-up, not timed
        start = time.perf_counter()
        for img in images[1:]:
            model([img])
        per_chip = (time.perf_counter() - start) / n_chips
    seconds = per_chip * total
    mp = info.width * info.height / 1e6
    return {"seconds_per_chip": round(per_chip, 2), "chips": total,
            "seconds_extrapolated": round(seconds, 1), "mp_per_s": round(mp / seconds, 4),
            "timed_chips": n_chips, "channels_last": channels_last}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--chip", type=int, default=512)
    ap.add_argument("--overlap", type=int, default=64)
    ap.add_argument("--rcnn-chips", type=int, default=3)
    ap.add_argument("--weights", help="weights name or path (default: the packaged default)")
    ap.add_argument("--full-tile", action="store_true", help="10980 x 10980, detector only")
    ap.add_argument("--scene", help="use this scene instead of writing a synthetic one")
    ap.add_argument("--only-detector", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--tta", action="store_true",
                    help="run the detector with test-time augmentation (eight orientations)")
    ap.add_argument("--rcnn-channels-last", action="store_true",
                    help="run the reference in channels_last layout too (the detector always is)")
    args = ap.parse_args(argv)
    size = 10980 if args.full_tile else args.size
    with tempfile.TemporaryDirectory(prefix="bw-bench-") as tmp:
        scene = Path(args.scene) if args.scene else make_scene(Path(tmp) / f"s{size}.tif", size)
        if args.only_detector:
            print(json.dumps(bench_detector(scene, args.weights, args.threads, args.chip,
                                            args.tta)))
            return
        # The detector runs in a child process so its peak RSS is its own.
        cmd = [sys.executable, __file__, "--only-detector", "--scene", str(scene),
               "--threads", str(args.threads), "--chip", str(args.chip)]
        if args.weights:
            cmd += ["--weights", args.weights]
        if args.tta:
            cmd.append("--tta")
        ours = json.loads(subprocess.run(cmd, check=True, capture_output=True,
                                         text=True).stdout.strip().splitlines()[-1])
        tta = " with --tta" if args.tta else ""
        print(f"berthwatch detect{tta}: {ours['megapixels']} MP in {ours['seconds']} s = "
              f"{ours['mp_per_s']} MP/s on {args.threads} threads, peak RSS "
              f"{ours['peak_rss_mb']} MB ({ours['detections']} detections, {ours['model']})")
        if args.full_tile:
            return
        ref = bench_rcnn(scene, args.threads, args.chip, args.overlap, args.rcnn_chips,
                         args.rcnn_channels_last)
        layout = " (channels_last)" if ref["channels_last"] else ""
        print(f"fasterrcnn_resnet50_fpn{layout}: {ref['seconds_per_chip']} s/chip x {ref['chips']} "
              f"chips = {ref['seconds_extrapolated']} s (extrapolated from {ref['timed_chips']}"
              f" chips) = {ref['mp_per_s']} MP/s")
        ratio = ours["mp_per_s"] / ref["mp_per_s"] if ref["mp_per_s"] else math.inf
        print(f"ratio: {ratio:.1f}x")
        print(json.dumps({"detector": ours, "fasterrcnn": ref, "ratio": round(ratio, 2)}))


if __name__ == "__main__":
    main()
