"""Hostile AIS inputs found in an audit: each test failed before its fix."""

from __future__ import annotations

import gzip
from datetime import UTC, datetime
from pathlib import Path

import pytest
from test_ais import iso, pghp, position, query, tagged, vdm, write

from imagery import ais
from imagery.ais import store
from imagery.workspace import Workspace

T0 = 1709294400  # 2024-03-01T12:00:00Z


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace.open(tmp_path / "ws")


@pytest.mark.parametrize("receiver", ["2", "12", "409"])
def test_trailing_receiver_number_is_not_a_time(ws: Workspace, tmp_path: Path, receiver: str):
    # A logger appends its receiver's number after the sentence: it is no Unix time, so the
    # $PGHP time before the message (or --received-at) stays the message's time.
    sentence = vdm(position(211000001, 10.5, 54.3))[0]
    lines = [pghp(datetime.fromtimestamp(T0, UTC)), f"{sentence},{receiver}"]
    report = ais.import_file(ws, write(tmp_path / "pghp.nmea", lines))
    assert report.accepted == 1 and report.rejected == {}
    assert query(ws, "SELECT time FROM ais_positions") == [(iso(T0),)]
    report = ais.import_file(ws, write(tmp_path / "untimed.nmea", [f"{sentence} {receiver}"]),
                             received_at=iso(T0 + 60))
    assert report.accepted == 1 and report.rejected == {}


def test_csv_with_a_used_column_named_twice_is_refused(ws: Workspace, tmp_path: Path):
    # Two LAT columns: which one is the latitude cannot be told; storing the last one silently
    # put this vessel at 0 N. The file is refused, naming the column; a duplicated column that
    # is not used (Draft) does not matter.
    path = write(tmp_path / "twice.csv", ["MMSI,BaseDateTime,LAT,LON,LAT,Draft,Draft",
                                          "211000001,2024-03-01T12:00:00,54.3,10.5,0,,"])
    with pytest.raises(ais.AisError, match="LAT appear more than once"):
        ais.import_file(ws, path)
    assert query(ws, "SELECT COUNT(*) FROM ais_positions") == [(0,)]
    fine = write(tmp_path / "fine.csv", ["MMSI,BaseDateTime,LAT,LON,Draft,Draft",
                                         "211000001,2024-03-01T12:00:00,54.3,10.5,,"])
    assert ais.import_file(ws, fine).accepted == 1


def test_nmea_with_cr_only_line_ends_keeps_every_sentence(ws: Workspace, tmp_path: Path):
    # Binary reading splits at LF only: a CR-only file was one line, and all but its first
    # sentence vanished without a count.
    lines = [tagged(vdm(position(211000100 + i, 10.0 + i / 1000, 54.0))[0], c=T0 + i)
             for i in range(20)]
    path = tmp_path / "cr.nm4"
    path.write_bytes("\r".join(lines).encode() + b"\r")
    report = ais.import_file(ws, path)
    assert report.accepted == 20 and report.rejected == {}


def test_sentences_run_together_are_counted_not_dropped(ws: Workspace, tmp_path: Path):
    first, second = (tagged(vdm(position(211000200 + i, 10.5, 54.3))[0], c=T0) for i in (0, 1))
    report = ais.import_file(ws, write(tmp_path / "glued.nm4", [first + second]))
    assert report.accepted == 1 and report.rejected == {"malformed_line": 1}


def test_a_hostile_header_is_escaped_in_the_error(ws: Workspace, tmp_path: Path):
    # The header comes from the file: terminal escapes in it must not reach the terminal raw,
    # and a huge one is cut.
    header = "\x1b]0;owned\x07,\x1b[2J," + "x" * 5000
    path = write(tmp_path / "evil.csv", [header, "1,2,3"])
    with pytest.raises(ais.AisError) as caught:
        ais.import_file(ws, path, fmt="csv")
    assert "\x1b" not in str(caught.value) and "\\x1b" in str(caught.value)
    assert len(str(caught.value)) < 1000
    watchlist = write(tmp_path / "evil-watchlist.csv", [header, "1,2,3"])
    with pytest.raises(ais.AisError) as caught:
        ais.import_watchlist(ws, watchlist)
    assert "\x1b" not in str(caught.value) and len(str(caught.value)) < 1000


def test_scenes_without_ais_coverage_honour_until(ws: Workspace):
    # `alerts --until D` lists alerts up to D; the scenes without coverage it reports must stop
    # at D too, or the note names dates after the window asked for.
    from imagery.alerts import no_coverage_scenes
    from imagery.pipeline import PIPELINE_SCHEMA

    ws.ensure_schema(PIPELINE_SCHEMA)
    conn = ws.connect()
    try:
        for day in (1, 10):
            sid = f"S{day}"
            conn.execute("INSERT INTO scenes (scene_id, port, source, acquisition_time, status,"
                         " fetched_at) VALUES (?, 'vostochny', 'test', ?, 'stored', ?)",
                         (sid, f"2024-03-{day:02d}T02:00:00Z", "2024-03-20T00:00:00Z"))
            conn.execute("INSERT INTO processing (scene_id, status, ais_coverage, ais_fixes)"
                         " VALUES (?, 'done', 0, 0)", (sid,))
        conn.commit()
    finally:
        conn.close()
    until = datetime(2024, 3, 5, tzinfo=UTC)
    assert [s["scene_id"] for s in no_coverage_scenes(ws, until=until)] == ["S1"]
    assert [s["scene_id"] for s in no_coverage_scenes(ws)] == ["S1", "S10"]


def test_blank_lines_before_the_header_are_skipped(ws: Workspace, tmp_path: Path):
    # Format detection skipped them and called the file CSV; the reader then took the blank
    # line for the header and refused the file for "missing" columns.
    path = write(tmp_path / "blank-first.csv",
                 ["", "  ", "MMSI,BaseDateTime,LAT,LON", "211000001,2024-03-01T12:00:00,54.3,10.5"])
    report = ais.import_file(ws, path)
    assert report.accepted == 1 and report.skipped == {"blank_line": 2}
    watchlist = write(tmp_path / "blank-first-watchlist.csv", ["", "mmsi,note", "211000001,x"])
    report = ais.import_watchlist(ws, watchlist)
    assert report.added == 1 and report.rejected == {"empty_row": 1}


def test_corrupt_gzip_found_after_a_commit_leaves_no_vessel_data(ws: Workspace, tmp_path: Path,
                                                                 monkeypatch):
    # A long import commits its batches as it goes; a CRC failure at the end takes back the
    # positions, and must take back the vessel names and IMOs read from that file too.
    monkeypatch.setattr(store, "COMMIT_EVERY_S", 0.0)
    monkeypatch.setattr(store, "YIELD_S", 0.0)
    monkeypatch.setattr(store, "BATCH", 100)
    static = {"type": 5, "mmsi": 211000300, "shipname": "FROM CORRUPT", "imo": 9811000,
              "callsign": "DABC", "ship_type": 80, "to_bow": 100, "to_stern": 100}
    lines = [tagged(s, c=T0) for s in vdm(static, seq_id=1)]
    lines += [tagged(vdm(position(211000400 + i, 10.0 + i / 1000, 54.0))[0], c=T0 + i)
              for i in range(300)]  # past the 200 lines format detection reads
    packed = bytearray(gzip.compress(("\n".join(lines) + "\n").encode()))
    packed[-8] ^= 0xFF  # the CRC32 fails once every line has been read
    path = tmp_path / "corrupt.nm4.gz"
    path.write_bytes(bytes(packed))
    with pytest.raises(ais.AisError, match="corrupt gzip"):
        ais.import_file(ws, path)
    assert query(ws, "SELECT COUNT(*) FROM ais_positions") == [(0,)]
    assert query(ws, "SELECT COUNT(*) FROM ais_vessels") == [(0,)]
    whole = write(tmp_path / "whole.nm4", lines)
    assert ais.import_file(ws, whole).static_updates == 1
    assert query(ws, "SELECT name, imo FROM ais_vessels") == [("FROM CORRUPT", 9811000)]
