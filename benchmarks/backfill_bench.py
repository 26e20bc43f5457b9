"""`berthwatch backfill --cluster local:N` against `berthwatch run` over the same SIMULATED
scenes of both ports: wall time of each (whole processes, as a user runs them) and whether
the two workspaces hold the same content (tests/test_backfill.py's comparison: every pipeline
table less `scenes.fetched_at`, and every file they point at).

    python benchmarks/backfill_bench.py [--days 30] [--workers 2] [--weights W] [--seed 7]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

import test_backfill as tb  # noqa: E402  (the tests' feed and comparison)


def _timed(cmd: list[str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd[2:5])} failed: {done.stderr.strip()[-500:]}")
    print("   ", done.stdout.strip().splitlines()[0])
    return time.perf_counter() - started


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
        run_s = _timed([*cli, "run", "--since", span[0], "--until", span[1], *common,
                        "--workspace", str(by_run)])
        print(f"run: {run_s:.1f} s")
        fill_s = _timed([*cli, "backfill", "--port", *tb.PORTS, "--start", span[0], "--end",
                         span[1], "--cluster", f"local:{args.workers}", *common,
                         "--workspace", str(by_backfill)])
        print(f"backfill --cluster local:{args.workers}: {fill_s:.1f} s")
        expected, got = tb.dump(by_run), tb.dump(by_backfill)
        scenes = sum(("status", "stored") in r for r in expected["scenes"])
        print(f"scenes stored: {scenes}; detections: {len(expected['detections'])}; alerts: "
              f"{len(expected['alerts'])}; same database content and files: {expected == got}")


if __name__ == "__main__":
    main()
