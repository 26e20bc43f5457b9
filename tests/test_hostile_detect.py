"""`berthwatch detect` against the bad inputs of issue 25 (items 3, 8 and 12), end to end through
the CLI in a subprocess: each must fail with exit status 2 and one line on stderr naming the file,
never a traceback; a scene of no data must be reported as not visible. The bad files are made in
the test (tmp_path) by the generators in test_scene.py and test_detector.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from test_detector import hostile_weights
from test_scene import write_blank_port_scene, write_corrupt_middle, write_huge_header

GOOD_SCENE = Path(__file__).parent / "data" / "chongjin_64.tif"


def detect(tmp_path: Path, scene: Path, *extra: str) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "imagery.cli", "detect", str(scene), "--out",
            str(tmp_path / "out.geojson"), "--threads", "1", *extra]
    return subprocess.run(args, capture_output=True, text=True, timeout=600)


def assert_one_clear_line(result: subprocess.CompletedProcess, *names: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for name in names:
        assert name in lines[0], lines[0]
    assert not (result.stdout.strip()), result.stdout


@pytest.mark.parametrize("make, names", [
    (lambda d: write_corrupt_middle(d / "middle.tif"), ("middle.tif", "corrupt pixel data")),
    (lambda d: write_huge_header(d / "huge.tif"),
     ("huge.tif", "200000 x 200000 pixels", "over the limit of 400 MP")),
], ids=["corrupt-middle", "200000x200000"])
def test_bad_scenes(tmp_path, make, names):
    scene = make(tmp_path)
    assert_one_clear_line(detect(tmp_path, scene), *names)
    assert not (tmp_path / "out.geojson").exists()


@pytest.mark.parametrize("case, names", [
    ("truncated", ("w.pt", "not loadable weights")),
    ("empty", ("w.pt", "not loadable weights")),
    ("wrong-keys", ("w.pt", "do not fit", "Missing key")),
    ("wrong-widths", ("w.pt", "do not fit", "size mismatch")),
    ("pickle", ("w.pt", "not loadable weights", "Weights only load failed")),
    ("pickle-in-zip", ("w.pt", "not loadable weights", "Weights only load failed")),
    ("outside", ("w.json", "'../outside.pt' must be a file name")),
    ("absolute", ("w.json", "outside.pt' must be a file name")),
])
def test_bad_weights(tmp_path, case, names):
    weights = hostile_weights(tmp_path / "weights", case)
    assert_one_clear_line(detect(tmp_path, GOOD_SCENE, "--weights", str(weights)), *names)


def test_missing_weights_name_the_pt(tmp_path):
    missing = tmp_path / "nope.pt"
    result = detect(tmp_path, GOOD_SCENE, "--weights", str(missing))
    assert_one_clear_line(result, f"{missing}: weights file not found")
    assert "nope.json" not in result.stderr


def test_a_scene_of_no_data_is_not_visible(tmp_path):
    scene = write_blank_port_scene(tmp_path / "blank.tif")
    result = detect(tmp_path, scene, "--port", "chongjin")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    zone_lines = [line for line in result.stdout.splitlines() if "visible" in line]
    assert len(zone_lines) == 3 and all("0% visible" in line for line in zone_lines), \
        result.stdout
    assert not any("100% visible" in line for line in zone_lines)
