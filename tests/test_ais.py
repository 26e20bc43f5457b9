"""AIS ingest: the real samples in ../shared/data/ais (counts measured once and pinned here) and
generated files covering each rule (multi-part joins, checksums, times, CSV rows, watchlist)."""

from __future__ import annotations

import gzip
import sqlite3
import zlib
from datetime import UTC, datetime
from functools import reduce
from pathlib import Path

import pytest
from pyais import encode_dict

from imagery import ais
from imagery.ais import nmea, store
from imagery.cli import main
from imagery.workspace import Workspace

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ais"
T0 = 1709294400  # 2024-03-01T12:00:00Z
MC_HEADER = ("MMSI,BaseDateTime,LAT,LON,SOG,COG,Heading,VesselName,IMO,CallSign,VesselType,"
             "Status,Length,Width,Draft,Cargo,TransceiverClass")


def real(name: str) -> Path:
    path = DATA / name
    if not path.is_file():
        pytest.skip(f"real AIS sample {path} absent (../shared/data/ais is not in a fresh clone)")
    return path


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace.open(tmp_path / "ws")


def query(ws: Workspace, sql: str, args: tuple = ()) -> list[tuple]:
    conn = ws.connect()
    try:
        return [tuple(row) for row in conn.execute(sql, args)]
    finally:
        conn.close()


def nmea_checksum(body: str) -> str:
    return f"{reduce(lambda a, b: a ^ b, body.encode(), 0):02X}"


def vdm(data: dict, seq_id: int | None = None) -> list[str]:
    return encode_dict(data, talker_id="AI", sentence_type="VDM", seq_id=seq_id)


def tagged(sentence: str, **fields: object) -> str:
    body = ",".join(f"{k}:{v}" for k, v in fields.items())
    return f"\\{body}*{nmea_checksum(body)}\\{sentence}"


def pghp(moment: datetime) -> str:
    body = (f"PGHP,1,{moment.year},{moment.month},{moment.day},{moment.hour},{moment.minute},"
            f"{moment.second},0,211,2,,1,09")
    return f"${body}*{nmea_checksum(body)}"


def position(mmsi: int, lon: float, lat: float, **extra: object) -> dict:
    return {"type": 1, "mmsi": mmsi, "lon": lon, "lat": lat, "speed": 0.3, "course": 90.0,
            "heading": 88, "status": 5, **extra}


def mc_row(mmsi: object, time: str, lat: object, lon: object, *rest: object) -> str:
    """A MarineCadastre row: the first columns given, the others (up to 17) empty."""
    cells = [str(v) for v in (mmsi, time, lat, lon, *rest)]
    return ",".join(cells + [""] * (17 - len(cells)))


def iso(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


# --- real samples --------------------------------------------------------------------------


def test_untimed_pyais_sample_is_refused_without_received_at(ws: Workspace):
    path = real("pyais_nmea_sample.txt")
    with pytest.raises(ais.AisError, match="--received-at") as caught:
        ais.import_file(ws, path)
    assert path.name in str(caught.value)
    assert query(ws, "SELECT COUNT(*) FROM ais_positions") == [(0,)]
    assert query(ws, "SELECT COUNT(*) FROM ais_imports") == [(0,)]


def test_untimed_pyais_sample_with_received_at_range(ws: Workspace):
    report = ais.import_file(ws, real("pyais_nmea_sample.txt"),
                             received_at="2024-03-01T00:00:00Z/2024-03-01T01:00:00Z")
    # 898 sentences: 878 single-part messages and 20 first parts whose second never came.
    assert report.messages == 878
    assert report.messages - report.rejected["empty_payload"] == 778  # the README's decodable
    assert report.rejected == {"empty_payload": 100, "incomplete_multipart": 20,
                               "position_not_available": 4}
    assert report.skipped == {"message_type_15": 7, "message_type_20": 1, "message_type_4": 6}
    assert (report.accepted, report.duplicates, report.static_updates) == (758, 0, 2)
    # 164 ships; the README's 167 also counts base stations and interrogations.
    assert report.vessels == 164
    assert (report.time_min, report.time_max) == ("2024-03-01T00:00:00Z", "2024-03-01T01:00:00Z")


def test_tagblock_sample(ws: Workspace):
    report = ais.import_file(ws, real("tagblock_sample.nm4"))
    assert report.format == "nmea"
    assert report.messages == 979  # 997 sentences, 18 of them second parts of type 5
    assert report.rejected == {"bad_mmsi": 1, "position_not_available": 2}
    assert report.skipped == {"blank_line": 3, "message_type_21": 11, "message_type_25": 2,
                              "message_type_4": 5, "message_type_6": 1, "message_type_8": 1}
    assert (report.accepted, report.static_updates, report.vessels) == (914, 45, 820)
    assert (report.time_min, report.time_max) == ("2021-11-01T01:58:07Z", "2021-11-01T01:59:06Z")
    # A two-part type 5 joined: WAIMATA's dimensions 10 + 14 by 6 + 6.
    conn = ws.connect()
    info = ais.vessel_info(conn, 512004035)
    conn.close()
    assert info and (info.name, info.imo, info.callsign) == ("WAIMATA", 9679816, "ZMG2862")
    assert (info.ship_type, info.length_m, info.width_m) == (52, 24.0, 12.0)


def test_pghp_sample(ws: Workspace):
    report = ais.import_file(ws, real("pgph_timestamped_sample.ais"))
    # The one $PGHP saying 2009 fails its checksum (the year was altered): the 2008 time holds.
    assert report.rejected == {"bad_checksum": 1}
    assert report.skipped == {"blank_line": 2, "comment_line": 1}
    assert report.accepted == 4
    assert query(ws, "SELECT DISTINCT time FROM ais_positions") == [("2008-05-09T00:00:00Z",)]


def test_marinecadastre_sample(ws: Workspace):
    report = ais.import_file(ws, real("marinecadastre_sample.csv"))
    assert report.format == "csv"
    assert (report.messages, report.accepted, report.vessels) == (1000, 1000, 1000)
    assert report.rejected == {}
    # MMSIs of 7 and 8 digits are in range, as NMEA's would be: a vessel AIS accounts for.
    assert query(ws, "SELECT name FROM ais_vessels WHERE mmsi = 36926403") == [("PCU MARINETTE",)]
    assert query(ws, "SELECT COUNT(*) FROM ais_positions WHERE mmsi = 3669882") == [(1,)]
    tankers = "SELECT COUNT(*) FROM ais_vessels WHERE ship_type BETWEEN 80 AND 89"
    assert query(ws, tankers) == [(47,)]
    # 426: 3669882's heading is 511 (unknown) too.
    assert query(ws, "SELECT COUNT(*) FROM ais_positions WHERE heading_deg IS NULL") == [(426,)]
    conn = ws.connect()
    info = ais.vessel_info(conn, 636021061)
    conn.close()
    assert info and (info.name, info.imo, info.callsign, info.length_m) == (
        "MSC NAISHA III", 9307839, "5LCB4", 208.0)


@pytest.mark.parametrize("name", ["tagblock_sample.nm4", "pgph_timestamped_sample.ais",
                                  "marinecadastre_sample.csv"])
def test_real_reimport_adds_nothing(ws: Workspace, name: str):
    path = real(name)
    first = ais.import_file(ws, path)
    before = query(ws, "SELECT COUNT(*) FROM ais_positions")
    again = ais.import_file(ws, path)
    assert not first.already_imported and again.already_imported
    assert "already imported" in ais.describe_import(again)[0]
    assert query(ws, "SELECT COUNT(*) FROM ais_positions") == before
    assert query(ws, "SELECT COUNT(*) FROM ais_imports") == [(1,)]


def test_cli_real_untimed_refused_then_accepted(tmp_path: Path, capsys):
    path = real("pyais_nmea_sample.txt")
    workspace = str(tmp_path / "ws")
    assert main(["ais", "import", str(path), "--workspace", workspace]) == 2
    err = capsys.readouterr().err
    assert "pyais_nmea_sample.txt" in err and "--received-at" in err
    assert main(["ais", "import", str(path), "--workspace", workspace,
                 "--received-at", "2024-03-01T00:00:00Z"]) == 0
    out = capsys.readouterr().out
    # One time for all: a vessel reporting the same position twice is stored once.
    assert "739 positions stored, 19 duplicates" in out and "incomplete_multipart 20" in out


# --- generated NMEA --------------------------------------------------------------------------


def mixed_nmea(tmp_path: Path) -> Path:
    """Every NMEA case in one file: tag blocks, timestamp columns, $PGHP, an out-of-order
    two-part type 5, a lost part, a bad checksum, garbage, comments, unavailable values."""
    static = vdm({"type": 5, "mmsi": 211000001, "shipname": "TEST TANKER", "imo": 9811000,
                  "callsign": "DABC", "ship_type": 80, "to_bow": 300, "to_stern": 100,
                  "to_port": 30, "to_starboard": 29}, seq_id=1)
    lost = vdm({"type": 5, "mmsi": 211000009, "shipname": "NEVER WHOLE"}, seq_id=2)
    bad = vdm(position(211000007, 10.0, 54.0))[0]
    bad = bad[:-2] + ("00" if bad[-2:] != "00" else "11")
    part_b = {"type": 24, "mmsi": 211000004, "partno": 1, "ship_type": 37, "callsign": "YACHT",
              "to_bow": 8, "to_stern": 4, "to_port": 2, "to_starboard": 2}
    return write(tmp_path / "mixed.nmea", [
        "# a comment, then a blank line",
        "",
        tagged(vdm(position(211000001, 10.5, 54.3, heading=511))[0], s="station1", c=T0),
        f"{iso(T0 + 20)},{static[1]}",  # second part first
        f"{iso(T0 + 10)},{static[0]}",
        lost[0],
        bad,
        "garbage that is not AIS at all",
        pghp(datetime.fromtimestamp(T0 + 60, UTC)),
        vdm({"type": 18, "mmsi": 211000002, "lon": 10.6, "lat": 54.2, "speed": 102.3,
             "course": 360, "heading": 511})[0],
        f"{T0 + 120} " + vdm(position(211000003, 181, 91))[0],
        f"{T0 + 130}\t" + vdm({"type": 24, "mmsi": 211000004, "partno": 0,
                               "shipname": "<B>X</B>&'\""})[0],
        f"{T0 + 131};" + vdm(part_b)[0],
        vdm({"type": 27, "mmsi": 211000005, "lon": 10.7, "lat": 54.1, "speed": 63,
             "course": 511, "status": 1})[0] + f",{T0 + 140}",  # trailing time column
        "$GPRMC,120000,A,5400.000,N,01000.000,E,0.0,0.0,010324,,*00",
    ])


def test_generated_nmea_counts_and_values(ws: Workspace, tmp_path: Path):
    report = ais.import_file(ws, mixed_nmea(tmp_path))
    assert report.format == "nmea"
    assert report.rejected == {"bad_checksum": 1, "incomplete_multipart": 1,
                               "malformed_line": 1, "position_not_available": 1}
    assert report.skipped == {"blank_line": 1, "comment_line": 1, "other_nmea_sentence": 1}
    assert report.accepted == 3
    rows = query(ws, "SELECT mmsi, time, lon, lat, sog_kn, cog_deg, heading_deg, nav_status, "
                     "msg_type FROM ais_positions ORDER BY mmsi")
    assert rows == [
        (211000001, iso(T0), 10.5, 54.3, 0.3, 90.0, None, 5, 1),  # heading 511 is unknown
        (211000002, iso(T0 + 60), 10.6, 54.2, None, None, None, None, 18),  # time of $PGHP
        (211000005, iso(T0 + 140), 10.7, 54.1, None, None, None, 1, 27),
    ]
    conn = ws.connect()
    tanker, yacht = ais.vessel_info(conn, 211000001), ais.vessel_info(conn, 211000004)
    conn.close()
    assert tanker and (tanker.name, tanker.imo, tanker.callsign, tanker.ship_type) == (
        "TEST TANKER", 9811000, "DABC", 80)
    assert (tanker.length_m, tanker.width_m, tanker.updated_at) == (400.0, 59.0, iso(T0 + 10))
    assert yacht and (yacht.name, yacht.callsign, yacht.length_m, yacht.width_m) == (
        "<B>X</B>&'\"", "YACHT", 12.0, 4.0)
    assert yacht.last_seen is None


def test_gzip_and_dedup_across_files(ws: Workspace, tmp_path: Path):
    plain = mixed_nmea(tmp_path)
    packed = tmp_path / "mixed.nmea.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes() + b"# one more line\n"))
    first = ais.import_file(ws, plain)
    second = ais.import_file(ws, packed)  # other bytes, same messages
    assert not second.already_imported
    assert (second.accepted, second.duplicates) == (0, first.accepted)
    assert query(ws, "SELECT COUNT(*) FROM ais_positions") == [(first.accepted,)]


def test_received_at_range_spreads_evenly(ws: Workspace, tmp_path: Path):
    static = vdm({"type": 5, "mmsi": 211000010, "shipname": "SPREAD"}, seq_id=4)
    path = write(tmp_path / "untimed.nmea", [
        vdm(position(211000011, 1.0, 1.0))[0],
        static[0], static[1],  # one message over two lines
        vdm(position(211000012, 2.0, 2.0))[0],
        vdm(position(211000013, 3.0, 3.0))[0],
    ])
    with pytest.raises(ais.AisError, match="untimed.nmea"):
        ais.import_file(ws, path)
    report = ais.import_file(ws, path, received_at=f"{iso(T0)}/{iso(T0 + 300)}")
    assert report.accepted == 3
    assert query(ws, "SELECT mmsi, time FROM ais_positions ORDER BY mmsi") == [
        (211000011, iso(T0)), (211000012, iso(T0 + 200)), (211000013, iso(T0 + 300))]
    assert query(ws, "SELECT updated_at FROM ais_vessels") == [(iso(T0 + 100),)]


def test_received_at_is_checked(ws: Workspace, tmp_path: Path):
    path = write(tmp_path / "one.nmea", [vdm(position(211000011, 1.0, 1.0))[0]])
    for bad in ("yesterday", f"{iso(T0 + 10)}/{iso(T0)}", "a/b/c"):
        with pytest.raises(ais.AisError, match="--received-at"):
            ais.import_file(ws, path, received_at=bad)


def test_newer_static_data_wins_and_null_never_erases(ws: Workspace, tmp_path: Path):
    def static(name: str, t: int, **extra: object) -> list[str]:
        parts = vdm({"type": 5, "mmsi": 211000020, "shipname": name, **extra}, seq_id=5)
        return [tagged(parts[0], c=t), parts[1]]

    ais.import_file(ws, write(tmp_path / "new.nmea", static("NEW NAME", T0 + 100,
                                                            callsign="CALL1")))
    ais.import_file(ws, write(tmp_path / "old.nmea", static("OLD NAME", T0, imo=9811000)))
    ais.import_file(ws, write(tmp_path / "newest.nmea", static("", T0 + 200, to_bow=5)))
    assert query(ws, "SELECT name, imo, callsign, length_m, updated_at FROM ais_vessels") == [
        ("NEW NAME", 9811000, "CALL1", 5.0, iso(T0 + 200))]


def test_crash_mid_import_keeps_nothing_of_that_file(ws: Workspace, tmp_path: Path,
                                                    monkeypatch):
    ais.import_file(ws, write(tmp_path / "before.nmea",
                              [tagged(vdm(position(211000030, 1.0, 1.0))[0], c=T0)]))
    path = write(tmp_path / "crash.nmea", [tagged(vdm(position(211000031 + i, 2.0, 2.0))[0],
                                                  c=T0 + i) for i in range(5)])
    real_position, calls = nmea._position, []

    def dying(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # as if killed part-way
        return real_position(*args, **kwargs)

    monkeypatch.setattr(nmea, "_position", dying)
    monkeypatch.setattr(store, "BATCH", 1)  # rows already written when it dies
    with pytest.raises(KeyboardInterrupt):
        ais.import_file(ws, path)
    assert query(ws, "SELECT mmsi FROM ais_positions") == [(211000030,)]
    assert query(ws, "SELECT COUNT(*) FROM ais_imports") == [(1,)]
    monkeypatch.setattr(nmea, "_position", real_position)
    assert ais.import_file(ws, path).accepted == 5


# --- generated CSV ---------------------------------------------------------------------------


def test_csv_broken_rows_counted_and_names_stored_verbatim(ws: Workspace, tmp_path: Path):
    script = "<script>alert(1)</script>"
    path = write(tmp_path / "mc.csv", [
        MC_HEADER,
        mc_row(366000001, "2024-03-01T12:00:00", 54.3, 10.5, "0.0", "360.0", "511.0", script,
               "IMO9811000", "WXYZ", 84, "5.0", "180.0", "30.0", "9.5", 84, "A"),
        mc_row(366000002, "2024-03-01 12:00:05", 54.31, 10.51),
        mc_row(366000003, "2024-03-01T12:00:00", "abc", 10.5),
        mc_row(366000004, "2024-03-01T12:00:00", 95.0, 10.5),
        mc_row(366000005, "2024-03-01T12:00:00", 91.0, 181.0),
        mc_row("36600000X", "2024-03-01T12:00:00", 54.3, 10.5),
        mc_row(366000007, "yesterday", 54.3, 10.5),
        mc_row(366000008, "2024-03-01T12:00:00", 54.3, 10.5)[:-1],  # a column short
        mc_row(366000009, "2024-03-01T12:00:00", 54.3, 10.5, "fast"),
        "",
    ])
    report = ais.import_file(ws, path)
    assert report.format == "csv"
    assert report.rejected == {"bad_mmsi": 1, "bad_number": 2, "bad_time": 1,
                               "position_not_available": 1, "position_out_of_range": 1,
                               "wrong_column_count": 1}
    assert report.skipped == {"blank_line": 1}
    assert (report.messages, report.accepted) == (9, 2)
    assert query(ws, "SELECT mmsi, sog_kn, cog_deg, heading_deg, nav_status FROM ais_positions "
                     "ORDER BY mmsi") == [(366000001, 0.0, None, None, 5),
                                          (366000002, None, None, None, None)]
    assert query(ws, "SELECT name, imo, callsign, ship_type, length_m FROM ais_vessels") == [
        (script, 9811000, "WXYZ", 84, 180.0)]


def test_csv_column_mapping(ws: Workspace, tmp_path: Path):
    path = write(tmp_path / "other.csv", [
        "schiff;zeit;breite;laenge;fahrt;name",
        f"211000040;{T0};54.3;10.5;12.5;NORD",
        f"211000041;{T0 * 1000 + 1500};54.4;10.6;;SUED",  # milliseconds
    ])
    with pytest.raises(ais.AisError, match="--columns"):
        ais.import_file(ws, path)
    with pytest.raises(ais.AisError, match="FIELD=COLUMN"):
        ais.import_file(ws, path, columns="ship=schiff")
    with pytest.raises(ais.AisError, match="not in the header"):
        ais.import_file(ws, path, columns="mmsi=nope")
    report = ais.import_file(ws, path, fmt="csv",
                             columns="mmsi=schiff,time=zeit,lat=breite,lon=laenge,sog=fahrt")
    assert report.accepted == 2 and not report.rejected
    assert query(ws, "SELECT p.mmsi, p.time, p.sog_kn, v.name FROM ais_positions p "
                     "JOIN ais_vessels v USING (mmsi) ORDER BY p.mmsi") == [
        (211000040, iso(T0), 12.5, "NORD"), (211000041, iso(T0 + 1), None, "SUED")]


def test_a_file_whose_rows_were_all_refused_can_be_imported_again(ws: Workspace,
                                                                   tmp_path: Path):
    # lat and lon mapped the wrong way round: every row is out of range and nothing is kept.
    # Imported again with the right mapping, its rows must come in, not "already imported".
    path = write(tmp_path / "swapped.csv", [
        "schiff;zeit;breite;laenge", f"211000040;{T0};54.3;150.5", f"211000041;{T0};54.4;150.6"])
    wrong = ais.import_file(ws, path, fmt="csv",
                            columns="mmsi=schiff,time=zeit,lat=laenge,lon=breite")
    assert wrong.accepted == 0 and sum(wrong.rejected.values()) == 2
    right = ais.import_file(ws, path, fmt="csv",
                            columns="mmsi=schiff,time=zeit,lat=breite,lon=laenge")
    assert not right.already_imported and right.accepted == 2
    assert query(ws, "SELECT COUNT(*) FROM ais_imports") == [(1,)]
    again = ais.import_file(ws, path, fmt="csv",
                            columns="mmsi=schiff,time=zeit,lat=breite,lon=laenge")
    assert again.already_imported and again.accepted == 0


def test_unknown_format_refused(ws: Workspace, tmp_path: Path):
    path = write(tmp_path / "notes.txt", ["just some words", "and more"])
    with pytest.raises(ais.AisError, match="--format"):
        ais.import_file(ws, path)



def test_csv_bad_cells_each_rejected_and_valid_rows_kept(ws: Workspace, tmp_path: Path):
    """A huge number used to raise OverflowError in SQLite and roll the whole file back; now
    each bad cell is a counted rejection of its row and every valid row is stored."""
    huge = "99999999999999999999999"
    day = "2024-03-01T12:00:00"

    def row(mmsi: object, sog: object = "", cog: object = "", heading: object = "",
            shiptype: object = "", status: object = "", length: object = "",
            width: object = "") -> str:
        return mc_row(mmsi, day, 54.3, 10.5, sog, cog, heading, "SHIP", "", "", shiptype,
                      status, length, width)

    bad = [row(366000101, status="1e30"), row(366000102, status=huge),
           row(366000103, status=-3), row(366000104, status=16), row(366000105, status=5.5),
           row(366000106, shiptype="1e30"), row(366000107, shiptype=huge),
           row(366000108, shiptype=-1), row("000000000"), row(366000110, length="1e308"),
           row(366000111, length=-5), row(366000112, width=600), row(366000113, heading=400),
           row(366000114, sog=150), row(366000115, cog=-1), row(366000116, length="inf"),
           row(366000117, status="nan")]
    good = [row(366000201, sog=102.3, cog=360, heading=511, shiptype=0, status=15, length=0),
            row(366000202, sog=12.5, cog=359.9, heading=359, shiptype=99, status=0,
                length=499, width=60)]
    path = write(tmp_path / "cells.csv", [MC_HEADER, good[0], *bad, good[1]])
    report = ais.import_file(ws, path)
    assert report.rejected == {"bad_cog": 1, "bad_heading": 1, "bad_length": 2, "bad_mmsi": 1,
                               "bad_nav_status": 5, "bad_number": 2, "bad_ship_type": 3,
                               "bad_sog": 1, "bad_width": 1}
    assert (report.messages, report.accepted) == (19, 2)
    assert query(ws, "SELECT mmsi, sog_kn, cog_deg, heading_deg, nav_status FROM ais_positions "
                     "ORDER BY mmsi") == [(366000201, None, None, None, 15),
                                          (366000202, 12.5, 359.9, 359.0, 0)]
    assert query(ws, "SELECT mmsi, ship_type, length_m, width_m FROM ais_vessels "
                     "ORDER BY mmsi") == [(366000201, None, None, None),
                                          (366000202, 99, 499.0, 60.0)]


def test_csv_unbalanced_quote_loses_only_its_row(ws: Workspace, tmp_path: Path):
    """A quote left open in a name used to swallow every following row into that name."""
    day = "2024-03-01T12:00:00"
    path = tmp_path / "quote.csv"
    path.write_text("\n".join([
        MC_HEADER,
        mc_row(366000301, day, 54.3, 10.5, 0, 0, 0, '"OPEN QUOTE'),
        mc_row(366000302, day, 54.3, 10.6, 0, 0, 0, "AFTER ONE"),
        mc_row(366000303, day, 54.3, 10.7, 0, 0, 0, '"COMMA, AND ""QUOTES"""'),
        mc_row(366000304, day, 54.3, 10.8, 0, 0, 0, 'MID"QUOTE'),
        mc_row(366000305, day, 54.3, 10.9, 0, 0, 0, "AFTER TWO"),
        mc_row(366000306, day, 54.3, 11.0, 0, 0, 0, '"OPEN AT THE END'),
    ]))  # no line break after the last row either
    report = ais.import_file(ws, path)
    assert report.rejected == {"unbalanced_quote": 2}
    assert (report.messages, report.accepted) == (6, 4)
    assert query(ws, "SELECT mmsi, name FROM ais_vessels ORDER BY mmsi") == [
        (366000302, "AFTER ONE"), (366000303, 'COMMA, AND "QUOTES"'),
        (366000304, 'MID"QUOTE'), (366000305, "AFTER TWO")]


def test_csv_overlong_line_skipped_unread(ws: Workspace, tmp_path: Path):
    day = "2024-03-01T12:00:00"
    path = write(tmp_path / "long.csv", [
        MC_HEADER, mc_row(366000401, day, 54.3, 10.5, 0, 0, 0, "X" * (ais.MAX_CSV_LINE * 3)),
        mc_row(366000402, day, 54.3, 10.6)])
    report = ais.import_file(ws, path)
    assert report.rejected == {"overlong_line": 1}
    assert query(ws, "SELECT mmsi FROM ais_positions") == [(366000402,)]


@pytest.mark.parametrize("gzipped", [False, True])
def test_nmea_overlong_line_skipped_unread(ws: Workspace, tmp_path: Path, gzipped: bool):
    """A line with no break for megabytes (a binary file, a lost line break) is counted and
    skipped; the sentences around it are imported, and the file is still seen as NMEA."""
    good = [tagged(vdm(position(211300000 + i, 10.0 + i / 1000, 54.0))[0], c=1709294400 + i)
            for i in range(3)]
    garbage = b"\xff\x00garbage" * (ais.MAX_NMEA_LINE * 30)  # no line break in it
    data = (good[0] + "\n").encode() + garbage + b"\n" + "\n".join(good[1:]).encode() + b"\n"
    path = tmp_path / ("long.nm4.gz" if gzipped else "long.nm4")
    path.write_bytes(gzip.compress(data) if gzipped else data)
    report = ais.import_file(ws, path)
    assert report.format == "nmea"
    assert report.rejected == {"overlong_line": 1}
    assert query(ws, "SELECT mmsi FROM ais_positions ORDER BY mmsi") == [
        (211300000,), (211300001,), (211300002,)]


# The same bad value given to each path: (NMEA message fields, CSV row cells, reason).
SAME_RULES = [
    ({"mmsi": 0}, {"mmsi": "000000000"}, "bad_mmsi"),
    ({"mmsi": 1_000_000_000}, {"mmsi": "1000000000"}, "bad_mmsi"),
    # An MMSI of 8 digits (a leading zero dropped, or a transponder set up short).
    ({"mmsi": 36926403}, {"mmsi": "36926404", "sog": 0.3, "cog": 90, "heading": 88,
                          "status": 5}, None),
    ({"heading": 400}, {"heading": 400}, "bad_heading"),
    ({"course": 400.0}, {"cog": 400}, "bad_cog"),
    ({"to_port": 40, "to_starboard": 30, "to_bow": 10}, {"width": 70, "length": 10}, None),
    ({"to_bow": 400, "to_stern": 200}, {"length": 600}, "bad_length"),
    ({"heading": 511, "course": 360.0, "speed": 102.3, "status": 15}, {
        "heading": 511, "cog": 360, "sog": 102.3, "status": 15}, None),
    ({"ship_type": 0, "to_bow": 0}, {"shiptype": 0, "length": 0}, None),
    # Reserved ship types (100-255): "not available" to the NMEA decoder, so to both.
    ({"ship_type": 150}, {"shiptype": 150}, None),
]


@pytest.mark.parametrize(("nmea", "cells", "reason"), SAME_RULES)
def test_nmea_and_csv_apply_the_same_rules(ws: Workspace, tmp_path: Path, nmea: dict,
                                          cells: dict, reason: str | None):
    static = any(k in nmea for k in ("ship_type", "to_bow"))
    message = ({"type": 5, "mmsi": 211000070, "shipname": "SAME"} if static
               else position(211000070, 10.5, 54.3))
    message.update(nmea)
    parts = vdm(message, seq_id=1)
    nmea_path = write(tmp_path / "same.nmea", [tagged(parts[0], c=T0), *parts[1:]])
    order = ["mmsi", "time", "lat", "lon", "sog", "cog", "heading", "name", "imo", "callsign",
             "shiptype", "status", "length", "width"]
    values = {"mmsi": 211000071, "time": iso(T0), "lat": 54.3, "lon": 10.5, "name": "SAME",
              **cells}
    csv_path = write(tmp_path / "same.csv", [MC_HEADER, mc_row(*(values.get(k, "")
                                                                 for k in order))])
    for path in (nmea_path, csv_path):
        report = ais.import_file(ws, path)
        assert report.rejected == ({reason: 1} if reason else {}), path.name
        assert (report.accepted + report.static_updates > 0) == (reason is None), path.name
    if reason is None:  # the same values stored from both (211000070 by NMEA, 71 by CSV)
        rows = query(ws, "SELECT ship_type, length_m, width_m FROM ais_vessels ORDER BY mmsi"
                     if static else "SELECT sog_kn, cog_deg, heading_deg, nav_status FROM "
                     "ais_positions ORDER BY mmsi")
        assert len(rows) == 2 and rows[0] == rows[1], rows


def test_check_values_refuses_what_sqlite_or_ais_cannot_hold():
    for name, value in [("nav_status", -3), ("nav_status", 1e30), ("nav_status", 2.5),
                        ("ship_type", float(10**23)), ("ship_type", 256), ("length_m", 1e308),
                        ("length_m", float("inf")), ("sog_kn", float("nan")), ("mmsi", 0)]:
        assert ais.check_values({name: value})[0] is not None, (name, value)
    assert ais.check_values({"heading_deg": 511, "nav_status": 15.0, "ship_type": 150}) == (
        None, {"heading_deg": None, "nav_status": 15, "ship_type": None})


# --- damaged gzip ------------------------------------------------------------------------------


def distinct_nmea(count: int) -> bytes:
    """`count` lines, each a different timed position (so each stored line is one row)."""
    return "".join(tagged(vdm(position(211100000 + i, 10.0 + i / 1000, 54.0))[0], c=T0 + i)
                   + "\n" for i in range(count)).encode()


def complete_lines(packed: bytes) -> int:
    """Lines ending in a line break among the bytes a damaged gzip still yields."""
    return zlib.decompressobj(wbits=31).decompress(packed).count(b"\n")


def test_truncated_gzip_keeps_its_complete_lines(ws: Workspace, tmp_path: Path):
    packed = gzip.compress(distinct_nmea(400))
    cut = packed[: len(packed) * 3 // 5]
    path = tmp_path / "cut.nm4.gz"
    path.write_bytes(cut)
    report = ais.import_file(ws, path)
    assert report.truncated and report.rejected == {"truncated_gzip": 1}
    kept = complete_lines(cut)
    assert 100 < kept < 400
    assert report.accepted == kept
    assert query(ws, "SELECT COUNT(*) FROM ais_positions") == [(kept,)]
    assert "TRUNCATED" in ais.describe_import(report)[0]
    again = ais.import_file(ws, path)  # the same cut file: already imported, still truncated
    assert again.already_imported and again.truncated
    assert "TRUNCATED" in ais.describe_import(again)[0]


def test_gzip_cut_before_its_first_line_is_refused(ws: Workspace, tmp_path: Path):
    path = tmp_path / "header-only.nm4.gz"
    path.write_bytes(gzip.compress(distinct_nmea(50))[:12])
    ais.ensure_schema(ws)
    with pytest.raises(ais.AisError, match="header-only.nm4.gz: truncated gzip"):
        ais.import_file(ws, path)
    assert query(ws, "SELECT COUNT(*) FROM ais_imports") == [(0,)]


@pytest.mark.parametrize("damage", ["crc", "data"])
def test_corrupt_gzip_is_refused_whole(ws: Workspace, tmp_path: Path, damage: str):
    packed = bytearray(gzip.compress(distinct_nmea(400)))
    if damage == "crc":
        packed[-8] ^= 0xFF  # every byte decompresses; the CRC32 then disagrees
    else:
        packed[len(packed) // 2: len(packed) // 2 + 16] = bytes(16)
    path = tmp_path / f"{damage}.nm4.gz"
    path.write_bytes(bytes(packed))
    with pytest.raises(ais.AisError) as caught:
        ais.import_file(ws, path, fmt="nmea")
    assert str(caught.value).startswith(f"{path}: corrupt gzip")
    assert query(ws, "SELECT COUNT(*) FROM ais_positions") == [(0,)]
    assert query(ws, "SELECT COUNT(*) FROM ais_imports") == [(0,)]

# --- watchlist and queries -------------------------------------------------------------------


def watchlist_csv(tmp_path: Path) -> Path:
    return write(tmp_path / "watch.csv", [
        "MMSI,IMO,Name,Note",
        ",9811000,,UN-designated tanker (by IMO)",
        ",,Chon Ma-San,UN-designated tanker (by name)",
        "12,,,broken MMSI",
        ",,,",
    ])


def test_watchlist_flags_vessels_on_import(ws: Workspace, tmp_path: Path):
    first = ais.import_watchlist(ws, watchlist_csv(tmp_path))
    assert (first.added, first.already_listed) == (2, 0)
    assert first.rejected == {"bad_mmsi": 1, "empty_row": 1}
    again = ais.import_watchlist(ws, watchlist_csv(tmp_path))
    assert (again.added, again.already_listed) == (0, 2)

    csv_path = write(tmp_path / "seen.csv", [
        MC_HEADER,
        mc_row(445000001, "2024-03-01T12:00:00", 42.75, 133.08, 0, 0, 0, "CHON MA SAN"),
        mc_row(445000002, "2024-03-01T12:00:00", 42.76, 133.09, 0, 0, 0, "OTHER", "IMO9811000"),
        mc_row(445000003, "2024-03-01T12:00:00", 42.77, 133.10, 0, 0, 0, "INNOCENT"),
    ])
    report = ais.import_file(ws, csv_path)
    flagged = {mmsi: entry.matched_on for mmsi, _, entry in report.watchlisted}
    assert flagged == {445000001: "name", 445000002: "imo"}
    assert any("WATCHLIST: MMSI 445000001" in line for line in ais.describe_import(report))

    conn = ws.connect()
    try:
        assert ais.watchlist_match(conn, None, None, "chon  ma san").matched_on == "name"
        assert ais.watchlist_match(conn, 445000003, None, "INNOCENT") is None
        assert ais.vessel_info(conn, 445000002).watchlist.note == "UN-designated tanker (by IMO)"
    finally:
        conn.close()
    later = ais.import_watchlist(ws, write(tmp_path / "more.csv", ["mmsi,note",
                                                                   "445000003,now of interest"]))
    assert {mmsi for mmsi, _, _ in later.seen} == {445000001, 445000002, 445000003}


def test_watchlist_stray_quote_and_null_mmsi(ws: Workspace, tmp_path: Path):
    report = ais.import_watchlist(ws, write(tmp_path / "w.csv", [
        "mmsi,name,note", '445000011,"OPEN QUOTE,x', "445000012,AFTER,y", "000000000,ZERO,z",
        '445000013,"QUOTED, FINE",w']))
    assert report.rejected == {"bad_mmsi": 1, "unbalanced_quote": 1}
    assert query(ws, "SELECT mmsi, name FROM watchlist ORDER BY mmsi") == [
        (445000012, "AFTER"), (445000013, "QUOTED, FINE")]


@pytest.mark.parametrize("damage", ["cut", "crc"])
def test_damaged_gzip_watchlist_adds_nothing(ws: Workspace, tmp_path: Path, damage: str):
    rows = "mmsi,note\n" + "".join(f"{445100000 + i},listed\n" for i in range(2000))
    packed = gzip.compress(rows.encode())
    packed = packed[: len(packed) // 2] if damage == "cut" else packed[:-8] + bytes(8)
    path = tmp_path / f"{damage}.csv.gz"
    path.write_bytes(packed)
    with pytest.raises(ais.AisError, match=f"{damage}.csv.gz: (truncated|corrupt) gzip"):
        ais.import_watchlist(ws, path)
    assert query(ws, "SELECT COUNT(*) FROM watchlist") == [(0,)]


def test_watchlist_needs_an_identifier_column(ws: Workspace, tmp_path: Path):
    with pytest.raises(ais.AisError, match="mmsi, imo or name"):
        ais.import_watchlist(ws, write(tmp_path / "w.csv", ["vessel,comment", "X,Y"]))


def test_positions_near_and_vessel_info(ws: Workspace, tmp_path: Path):
    lines = [tagged(vdm(position(211000050, 133.08, 42.75))[0], c=T0),
             tagged(vdm(position(211000050, 133.09, 42.76))[0], c=T0 + 600),
             tagged(vdm(position(211000051, 140.0, 42.75))[0], c=T0),
             tagged(vdm(position(211000052, 179.9, 0.5))[0], c=T0),
             tagged(vdm(position(211000053, -179.9, 0.5))[0], c=T0)]
    ais.import_file(ws, write(tmp_path / "port.nmea", lines))
    conn = ws.connect()
    try:
        near = ais.positions_near(conn, 133.0, 42.7, 133.2, 42.8, iso(T0 - 60),
                                  datetime.fromtimestamp(T0 + 600, UTC))
        assert [(p.mmsi, p.t_epoch) for p in near] == [(211000050, T0), (211000050, T0 + 600)]
        assert near[0].time == datetime.fromtimestamp(T0, UTC)
        assert near[0].source_file.endswith("port.nmea")
        assert len(ais.positions_near(conn, 133.0, 42.7, 133.2, 42.8, T0 + 1, T0 + 599)) == 0
        across = ais.positions_near(conn, 179.0, 0.0, -179.0, 1.0, T0, T0)
        assert [p.mmsi for p in across] == [211000052, 211000053]
        # A box padded past 180 (a port's AOI near the antimeridian plus a margin) wraps round.
        padded = ais.positions_near(conn, 179.0, 0.0, 181.0, 1.0, T0, T0)
        assert [p.mmsi for p in padded] == [211000052, 211000053]
        padded = ais.positions_near(conn, -181.0, 0.0, -179.0, 1.0, T0, T0)
        assert [p.mmsi for p in padded] == [211000052, 211000053]
        info = ais.vessel_info(conn, 211000050)
        assert info and info.last_seen == iso(T0 + 600) and info.name is None
        assert ais.vessel_info(conn, 999999999) is None
    finally:
        conn.close()


def test_queries_on_an_empty_database(tmp_path: Path):
    conn = sqlite3.connect(tmp_path / "empty.sqlite")
    try:
        assert ais.positions_near(conn, 0, 0, 1, 1, T0, T0) == []
        assert ais.vessel_info(conn, 211000050) is None
        assert ais.watchlist_match(conn, 211000050, None, None) is None
    finally:
        conn.close()


def test_printable_escapes_terminal_controls():
    assert ais.printable("EVIL\x1b[2J\nSHIP") == "EVIL\\x1b[2J\\nSHIP"
    assert ais.printable(None) == "-"


# --- CLI -------------------------------------------------------------------------------------


def test_cli_imports_and_flags(tmp_path: Path, capsys):
    workspace = str(tmp_path / "ws")
    assert main(["watchlist", "import", str(watchlist_csv(tmp_path)),
                 "--workspace", workspace]) == 0
    assert "2 watchlist entries added" in capsys.readouterr().out
    nmea = mixed_nmea(tmp_path)
    assert main(["ais", "import", str(nmea), "--workspace", workspace]) == 0
    out = capsys.readouterr().out
    assert "3 positions stored" in out and "bad_checksum 1" in out
    assert "WATCHLIST: MMSI 211000001 TEST TANKER (matched on imo" in out
    assert main(["ais", "import", str(nmea), "--workspace", workspace]) == 0
    assert "already imported" in capsys.readouterr().out


def test_cli_errors_exit_2(tmp_path: Path, capsys):
    workspace = str(tmp_path / "ws")
    good = write(tmp_path / "good.nmea", [tagged(vdm(position(211000060, 1.0, 1.0))[0], c=T0)])
    missing = tmp_path / "missing.nmea"
    assert main(["ais", "import", str(missing), str(good), "--workspace", workspace]) == 2
    captured = capsys.readouterr()
    assert "missing.nmea: no such file" in captured.err
    assert "1 positions stored" in captured.out  # the good file was still imported
    assert main(["watchlist", "import", str(missing), "--workspace", workspace]) == 2
