"""Hostile AIS files through the real command line (`python -m imagery.cli ais import`): every
file is its own unit, a bad one gets one line naming it and what is wrong (never a traceback),
the others import, and the exit status says something failed. The files are made here."""

from __future__ import annotations

import gzip
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from test_ais import MC_HEADER, T0, mc_row, position, tagged, vdm

ROOT = Path(__file__).resolve().parents[1]
DAY = "2024-03-01T12:00:00"


def berthwatch(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "imagery.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def nmea_lines(first_mmsi: int, count: int) -> bytes:
    return "".join(tagged(vdm(position(first_mmsi + i, 10.0 + i / 1000, 54.0))[0], c=T0 + i)
                   + "\n" for i in range(count)).encode()


def csv_text(first_mmsi: int, count: int, extra: list[str] = ()) -> str:
    rows = [mc_row(first_mmsi + i, DAY, 54.3, 10.5 + i / 1000) for i in range(count)]
    return "\n".join([MC_HEADER, *rows, *extra]) + "\n"


def stored_mmsis(workspace: Path) -> set[int]:
    db = next(workspace.glob("*.sqlite"))
    with sqlite3.connect(db) as conn:
        return {mmsi for (mmsi,) in conn.execute("SELECT mmsi FROM ais_positions")}


def error_lines(stderr: str, name: str) -> list[str]:
    return [line for line in stderr.splitlines() if name in line and "error:" in line]


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """Two good files, one CSV with every kind of bad cell, a cut gzip and a corrupt one."""
    made = {name: tmp_path / name for name in
            ("a.nm4", "bad.csv", "truncated.nm4.gz", "corrupt.nm4.gz", "b.csv")}
    made["a.nm4"].write_bytes(nmea_lines(211200000, 5))
    made["bad.csv"].write_text(csv_text(366200000, 3, [
        mc_row(366200100, DAY, 54.3, 10.5, "", "", "", "X", "", "", "1e30"),
        mc_row(366200101, DAY, 54.3, 10.5, "", "", "", "X", "", "", "",
               "99999999999999999999999"),
        mc_row("000000000", DAY, 54.3, 10.5),
        mc_row(366200103, DAY, 54.3, 10.5, "", "", "", "X", "", "", "", -3),
        mc_row(366200104, DAY, 54.3, 10.5, "", "", "", "X", "", "", "", "", "1e308"),
        mc_row(366200105, DAY, 54.3, 10.5, "", "", "", '"OPEN QUOTE'),
        mc_row(366200106, DAY, 54.3, 10.6),  # after the open quote: kept
    ]))
    packed = gzip.compress(nmea_lines(211300000, 400))
    made["truncated.nm4.gz"].write_bytes(packed[: len(packed) // 2])
    corrupt = bytearray(gzip.compress(nmea_lines(211400000, 50)))
    corrupt[-8] ^= 0xFF  # the CRC32 no longer matches the data
    made["corrupt.nm4.gz"].write_bytes(bytes(corrupt))
    made["b.csv"].write_text(csv_text(367200000, 3))
    return made


def test_one_bad_file_does_not_stop_the_others(files: dict[str, Path], tmp_path: Path):
    workspace = tmp_path / "ws"
    done = berthwatch("ais", "import", *map(str, files.values()), "--workspace", str(workspace))
    assert done.returncode == 2
    assert "Traceback" not in done.stdout + done.stderr
    for name in ("truncated.nm4.gz", "corrupt.nm4.gz"):
        assert len(error_lines(done.stderr, name)) == 1, done.stderr
    assert "truncated gzip" in error_lines(done.stderr, "truncated.nm4.gz")[0]
    assert "corrupt gzip" in error_lines(done.stderr, "corrupt.nm4.gz")[0]
    assert not error_lines(done.stderr, "bad.csv")  # bad rows are counted, not a failure
    summary = done.stderr.strip().splitlines()[-1]
    assert summary.startswith("ais import: 3 of 5 files imported")
    assert "truncated" in summary and "corrupt.nm4.gz" in summary

    stored = stored_mmsis(workspace)
    assert {211200000 + i for i in range(5)} <= stored  # a.nm4
    assert {367200000 + i for i in range(3)} <= stored  # b.csv
    assert {366200000, 366200001, 366200002, 366200106} <= stored  # bad.csv's valid rows
    assert not {366200100, 366200101, 0, 366200103, 366200104, 366200105} & stored
    cut = {m for m in stored if 211300000 <= m < 211300400}
    assert 0 < len(cut) < 400  # the complete lines before the cut
    assert not {m for m in stored if 211400000 <= m < 211400050}  # corrupt: nothing
    line = next(li for li in done.stdout.splitlines() if li.startswith(str(files["bad.csv"])))
    assert "4 positions stored" in line
    assert ("rejected: bad_length 1, bad_mmsi 1, bad_nav_status 2, bad_ship_type 1, "
            "unbalanced_quote 1") in done.stdout


@pytest.mark.parametrize("kind", ["cut_mid_stream", "cut_in_header", "corrupt_data",
                                  "corrupt_crc", "gzip_magic_then_garbage", "empty"])
def test_each_damaged_file_gets_one_line(tmp_path: Path, kind: str):
    packed = gzip.compress(nmea_lines(211500000, 300))
    damaged = {
        "cut_mid_stream": packed[: len(packed) * 2 // 3],
        "cut_in_header": packed[:12],
        "corrupt_data": packed[:200] + bytes(64) + packed[264:],
        "corrupt_crc": packed[:-8] + bytes(8),
        "gzip_magic_then_garbage": b"\x1f\x8b" + bytes(range(256)) * 4,
        "empty": b"",
    }[kind]
    bad = tmp_path / f"{kind}.nm4.gz"
    bad.write_bytes(damaged)
    good = tmp_path / "good.csv"
    good.write_text(csv_text(368200000, 2))
    workspace = tmp_path / "ws"
    done = berthwatch("ais", "import", str(bad), str(good), "--workspace", str(workspace))
    assert done.returncode == 2
    assert "Traceback" not in done.stdout + done.stderr
    assert len(error_lines(done.stderr, bad.name)) == 1, done.stderr
    assert "ais import: 1 of 2 files imported" in done.stderr
    assert {368200000, 368200001} <= stored_mmsis(workspace)


def test_all_good_files_exit_0_with_a_summary(tmp_path: Path):
    one, two = tmp_path / "one.nm4", tmp_path / "two.csv"
    one.write_bytes(nmea_lines(211600000, 2))
    two.write_text(csv_text(369200000, 2))
    done = berthwatch("ais", "import", str(one), str(two), "--workspace", str(tmp_path / "ws"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "ais import: 2 files imported"
    assert done.stderr == ""


def test_damaged_watchlist_gets_one_line(tmp_path: Path):
    packed = gzip.compress(("mmsi,note\n" + "445200000,listed\n" * 3000).encode())
    bad = tmp_path / "watch.csv.gz"
    bad.write_bytes(packed[: len(packed) // 2])
    done = berthwatch("watchlist", "import", str(bad), "--workspace", str(tmp_path / "ws"))
    assert done.returncode == 2
    assert "Traceback" not in done.stdout + done.stderr
    assert error_lines(done.stderr, "watch.csv.gz") == done.stderr.strip().splitlines()
    assert "truncated gzip" in done.stderr
