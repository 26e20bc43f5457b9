"""Tile a full simulated Sentinel-2 tile and report time and peak memory.

    python benchmarks/tile_bench.py [--scene FILE] [--size 256] [--overlap 32]
                                    [--width 10980 --height 10980] [--keep DIR]

Without --scene it writes a SIMULATED 10980 x 10980 5-band scene (`write_large_scene`, in
strips) into a temporary folder first. The tiling then runs in a fresh subprocess, so its
peak RSS (ru_maxrss) is the tiler's alone, not the generator's. Target: under 1.5 GB.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a plain checkout

TARGET_RSS_MB = 1536


def peak_rss_mb() -> float:
    """This process's peak resident set size (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def tile_only(scene: Path, size: int, overlap: int) -> dict:
    """Consume every chip (a sum, so each is really read) and measure."""
    import numpy as np

    from imagery.scene import open_scene
    from imagery.tiling import iter_chips

    info = open_scene(scene)
    start = time.perf_counter()
    chips, total = 0, 0.0
    for chip in iter_chips(info, size=size, overlap=overlap):
        total += float(np.nansum(chip.array))
        chips += 1
    return {"seconds": round(time.perf_counter() - start, 2), "chips": chips,
            "peak_rss_mb": round(peak_rss_mb(), 1), "width": info.width,
            "height": info.height, "checksum": total}


def generate(folder: Path, width: int, height: int, seed: int) -> tuple[Path, dict]:
    """Write the scene in a subprocess too, so its memory is measured on its own."""
    path = folder / f"sim_{width}x{height}.tif"
    code = ("import json, resource, sys, time; from imagery.simulate import write_large_scene; "
            "t = time.perf_counter(); "
            f"write_large_scene({str(path)!r}, {width}, {height}, seed={seed}); "
            "print(json.dumps({'seconds': round(time.perf_counter() - t, 2), "
            "'peak_rss_mb': round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)"
            "}))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True, cwd=Path(__file__).resolve().parents[1])
    return path, json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scene", type=Path, help="tile this scene instead of a simulated one")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--width", type=int, default=10980)
    parser.add_argument("--height", type=int, default=10980)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="write the simulated scene here and keep it")
    parser.add_argument("--tile-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.tile_only:  # the measured child
        print(json.dumps(tile_only(args.scene, args.size, args.overlap)))
        return 0
    with tempfile.TemporaryDirectory(prefix="tile_bench-") as tmp:
        scene = args.scene
        if scene is None:
            folder = args.keep or Path(tmp)
            folder.mkdir(parents=True, exist_ok=True)
            scene, made = generate(folder, args.width, args.height, args.seed)
            mb = scene.stat().st_size / 2**20
            print(f"generated SIMULATED {args.width}x{args.height} 5-band scene in "
                  f"{made['seconds']} s, peak RSS {made['peak_rss_mb']} MB, {mb:.0f} MB on disk")
        child = subprocess.run(
            [sys.executable, __file__, "--tile-only", "--scene", str(scene),
             "--size", str(args.size), "--overlap", str(args.overlap)],
            check=True, capture_output=True, text=True)
        result = json.loads(child.stdout.strip().splitlines()[-1])
    ok = result["peak_rss_mb"] < TARGET_RSS_MB
    print(f"tiled {result['width']}x{result['height']} into {result['chips']} chips of "
          f"{args.size} px (overlap {args.overlap}) in {result['seconds']} s; peak RSS "
          f"{result['peak_rss_mb']} MB ({'under' if ok else 'OVER'} the "
          f"{TARGET_RSS_MB} MB target)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
