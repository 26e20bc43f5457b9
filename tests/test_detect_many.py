"""`berthwatch detect` over several scenes in one process (issue 27 item 2) and `--device`
(item 1): the model is loaded once, each scene's output equals a one-scene run, a bad scene is
skipped and counted without ending the batch, and a device torch cannot use is one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from imagery import detector
from imagery.cli import main
from imagery.detector import DetectorError, resolve_device

DATA = Path(__file__).parent / "data"


def _features(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))["features"]


def test_several_scenes_share_one_model_load_and_match_single_runs(tiny_weights, tmp_path,
                                                                   monkeypatch, capsys):
    scenes = [DATA / "chongjin_64.tif", DATA / "vostochny_64.tif"]
    # Two scenes named alike (sen2ships layout) must not overwrite each other's output.
    for copy in ("a", "b"):
        (tmp_path / copy / "genoa").mkdir(parents=True)
        shutil.copy(DATA / "chongjin_64.tif", tmp_path / copy / "genoa" / "scene.tif")
    (tmp_path / "broken.tif").write_bytes(b"not a GeoTIFF")
    batch = [*map(str, scenes), str(tmp_path / "a" / "genoa" / "scene.tif"),
             str(tmp_path / "b" / "genoa" / "scene.tif"), str(tmp_path / "broken.tif")]
    loads = []
    real_load = detector.load_model
    monkeypatch.setattr(detector, "load_model",
                        lambda *a, **k: loads.append(a) or real_load(*a, **k))
    out = tmp_path / "out"
    code = main(["detect", *batch, "--out-dir", str(out), "--weights", str(tiny_weights),
                 "--threads", "1", "--threshold", "0.1", "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 1  # one scene skipped: the batch says so in its exit status
    assert len(loads) == 1
    assert "4 of 5 scene(s) detected" in captured.out and "1 skipped" in captured.out
    skipped = [line for line in captured.err.splitlines() if "skipped" in line]
    assert len(skipped) == 1 and "broken.tif" in skipped[0]
    assert "Traceback" not in captured.err
    assert {p.name for p in out.iterdir()} >= {"chongjin_64.geojson", "vostochny_64.geojson",
                                               "chongjin_64.csv", "vostochny_64.csv"}
    assert len(list(out.glob("*.geojson"))) == 4  # the two genoa scenes apart, by path hash
    for scene in scenes:
        single = tmp_path / f"{scene.stem}-single.geojson"
        assert main(["detect", str(scene), "--out", str(single), "--weights",
                     str(tiny_weights), "--threads", "1", "--threshold", "0.1"]) == 0
        assert _features(out / f"{scene.stem}.geojson") == _features(single)


def test_out_and_out_dir_are_not_mixed(tmp_path, capsys):
    scene = str(DATA / "chongjin_64.tif")
    assert main(["detect", scene, scene, "--out", str(tmp_path / "x.geojson")]) == 2
    assert "give --out-dir" in capsys.readouterr().err
    assert main(["detect", scene]) == 2
    assert "--out" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_a_device_torch_cannot_use_is_one_line(tmp_path, capsys):
    assert resolve_device("auto") == "cpu"
    with pytest.raises(DetectorError, match="no CUDA GPU"):
        resolve_device("cuda")
    with pytest.raises(DetectorError, match="not one of"):
        resolve_device("tpu")
    code = main(["detect", str(DATA / "chongjin_64.tif"), "--out", str(tmp_path / "x.geojson"),
                 "--device", "cuda"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "no CUDA GPU" in err
    assert not (tmp_path / "x.geojson").exists()
