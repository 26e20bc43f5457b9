"""How long another writer waits while `ais import` of a large CSV runs, and what the
import's batched commits cost it.

    python benchmarks/lock_bench.py [--rows 300000] [--writes 5]

Writes a MarineCadastre-style CSV of `--rows` positions, starts `berthwatch ais import` on it
in a child process, and meanwhile (from this process, as `run` or a review verdict would)
opens `--writes` write transactions one after another, timing how long each waited for the
lock. Then imports the same rows again into a fresh workspace alone, for the import's time
without competition. Prints the figures; nothing is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def write_csv(path: Path, rows: int) -> Path:
    head = "MMSI,BaseDateTime,LAT,LON,SOG,COG,Heading,VesselName,VesselType,Status,Length,Width"
    with path.open("w") as out:
        out.write(head + "\n")
        for i in range(rows):
            when = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(1_709_251_200 + i))
            out.write(f"{273000000 + i % 500},{when},{42.7 + (i % 997) * 1e-5:.6f},"
                      f"{133.07 + (i % 991) * 1e-5:.6f},0.1,0,511,SHIP {i % 500},80,5,100,20\n")
    return path


def import_process(feed: Path, ws: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "imagery.cli", "ais", "import", str(feed),
                             "--workspace", str(ws)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--writes", type=int, default=5)
    args = parser.parse_args()
    from imagery import ais
    from imagery.workspace import Workspace

    with tempfile.TemporaryDirectory() as tmp:
        feed = write_csv(Path(tmp) / "big.csv", args.rows)
        ws = Workspace.open(Path(tmp) / "raced")
        ais.ensure_schema(ws)
        with ws.transaction() as conn:
            conn.execute("CREATE TABLE probe (t REAL)")
        started = time.monotonic()
        proc = import_process(feed, ws.root)
        time.sleep(1.0)  # let it take the lock
        waits = []
        for _ in range(args.writes):
            if proc.poll() is not None:
                break
            asked = time.monotonic()
            with ws.transaction() as conn:
                conn.execute("INSERT INTO probe VALUES (?)", (asked,))
            waits.append(time.monotonic() - asked)
            time.sleep(0.5)
        proc.communicate()
        raced = time.monotonic() - started
        alone_started = time.monotonic()
        alone = import_process(feed, Path(tmp) / "alone")
        alone.communicate()
        alone_s = time.monotonic() - alone_started
    print(f"rows {args.rows}: import alone {alone_s:.1f} s, import raced by {len(waits)} "
          f"write(s) {raced:.1f} s")
    if waits:
        print(f"writer's wait for the lock during the import: median {statistics.median(waits):.2f}"
              f" s, max {max(waits):.2f} s ({', '.join(f'{w:.2f}' for w in waits)})")


if __name__ == "__main__":
    main()
