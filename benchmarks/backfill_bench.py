"""`berthwatch backfill --cluster local:N` against `berthwatch run` over the same SIMULATED
scenes of both ports: wall time of each (whole processes, as a user runs them) and whether
the two workspaces hold the same content (tests/test_backfill.py's comparison: every pipeline
table less `scenes.fetched_at`, and every file they point at), with the peak memory of
each: the largest sum of the resident sets of the command's process and all its descendants
(the cluster's scheduler and workers included), sampled every 0.1 s with psutil.

    python benchmarks/backfill_bench.py [--days 30] [--workers 2] [--weights W] [--seed 7]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

import test_backfill as tb  # noqa: E402  (the tests' feed and comparison)


def _tree_rss(pid: int) -> int:
    import psutil

    try:
        root = psutil.Process(pid)
        total = 0
        for proc in [root, *root.children(recursive=True)]:
            try:
                total += proc.memory_info().rss
            except psutil.Error:  # gone between the listing and the reading
                pass
        return total
    except psutil.Error:
        return 0


def _timed(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds of `cmd` and the peak RSS of its process tree, MB."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    peak, done = [0], threading.Event()

    def sample() -> None:
        while not done.wait(0.1):
            peak[0] = max(peak[0], _tree_rss(proc.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    done.set()
    sampler.join()
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd[2:5])} failed: {err.strip()[-500:]}")
    print("   ", out.strip().splitlines()[0])
    return time.perf_counter() - started, peak[0] / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--weights", help="weights name or .pt (default: the shipped model)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    end = tb.START + timedelta(days=args.days - 1)
    tb.END = end  # the AIS feed spans the whole range
    common = ["--source", "simulated", "--seed", str(args.seed), "--max-cloud", "100"]
    if args.weights:
        common += ["--weights", args.weights]
    cli = [sys.executable, "-m", "imagery.cli"]
    with tempfile.TemporaryDirectory(prefix="backfill-bench-") as tmp:
        by_run, by_backfill = (tb._workspace(Path(tmp) / name) for name in ("run", "backfill"))
        span = [tb.START.strftime("%Y-%m-%d"), end.strftime("%Y-%m-%d")]
        print(f"{args.days} days from {span[0]}, ports {' '.join(tb.PORTS)}, "
              f"{os.cpu_count()} CPUs")
        run_s, run_mb = _timed([*cli, "run", "--since", span[0], "--until", span[1], *common,
                                "--workspace", str(by_run)])
        print(f"run: {run_s:.1f} s, peak RSS {run_mb:.0f} MB")
        fill_s, fill_mb = _timed([*cli, "backfill", "--port", *tb.PORTS, "--start", span[0],
                                  "--end", span[1], "--cluster", f"local:{args.workers}",
                                  *common, "--workspace", str(by_backfill)])
        print(f"backfill --cluster local:{args.workers}: {fill_s:.1f} s, peak RSS of the "
              f"coordinator, scheduler and workers together {fill_mb:.0f} MB")
        expected, got = tb.dump(by_run), tb.dump(by_backfill)
        scenes = sum(("status", "stored") in r for r in expected["scenes"])
        print(f"scenes stored: {scenes}; detections: {len(expected['detections'])}; alerts: "
              f"{len(expected['alerts'])}; same database content and files: {expected == got}")


if __name__ == "__main__":
    main()
