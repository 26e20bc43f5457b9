"""The two extras the learning-loop issue asked to be measured: Galileo-nano features
(training/galileo.py) and the eotdl-ships chips (training/eotdl.py)."""

from __future__ import annotations

import json

import pytest
import torch

from imagery.detector import BerthNet
from training.chips import load_labelled
from training.eotdl import clean_labels, convert
from training.galileo import GalileoEncoder, from_berthnet


def test_galileo_berthnet_starts_as_the_model_it_was_loaded_from():
    torch.manual_seed(0)
    base = BerthNet().eval()
    torch.manual_seed(1)
    encoder = GalileoEncoder().eval()  # random weights: the fusion must still add nothing
    model = from_berthnet(base, encoder).eval()
    x = torch.rand(2, 5, 128, 128) * 0.3
    present = torch.ones(2, 5, dtype=torch.bool)
    with torch.no_grad():
        assert torch.equal(model(x, present), base(x, present))
        model.fuse.weight.fill_(0.01)  # once the fusion has learnt something, it does add
        assert not torch.equal(model(x, present), base(x, present))


def test_galileo_encoder_ignores_the_values_of_missing_bands():
    torch.manual_seed(0)
    encoder = GalileoEncoder().eval()
    x = torch.rand(1, 5, 64, 128) * 0.3
    no_nir = torch.tensor([[True, True, True, False, True]])
    changed = x.clone()
    changed[:, 3] = 5.0  # a missing band may hold anything
    with torch.no_grad():
        out = encoder(x, no_nir)
        assert out.shape == (1, 128, 8, 16)
        assert torch.equal(out, encoder(changed, no_nir))
        assert not torch.equal(out, encoder(x, torch.ones(1, 5, dtype=torch.bool)))
        nothing = encoder(x, torch.zeros(1, 5, dtype=torch.bool))
    assert torch.isfinite(nothing).all() and not nothing.any()


def test_galileo_pretrained_weights_load(shared_data, tmp_path):
    folder = shared_data / "pretrained" / "galileo-nano"
    encoder = GalileoEncoder.pretrained(folder)
    with torch.no_grad():
        out = encoder(torch.full((1, 5, 64, 64), 0.05), torch.ones(1, 5, dtype=torch.bool))
    assert torch.isfinite(out).all() and out.std() > 0
    with pytest.raises(FileNotFoundError, match="Galileo-nano weights not found"):
        GalileoEncoder.pretrained(tmp_path)
    (tmp_path / "encoder.pt").write_bytes((folder / "encoder.pt").read_bytes()[:-1])
    with pytest.raises(ValueError, match="is not Galileo-nano's"):
        GalileoEncoder.pretrained(tmp_path)


def _feature(length_m, contrast):
    ring = [[10.0, 54.0], [10.001, 54.0], [10.001, 54.001], [10.0, 54.001], [10.0, 54.0]]
    return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {"mmsi": 211000000, "length_m": length_m, "nir_contrast": contrast}}


def test_eotdl_labels_failing_the_rule_become_ignore_points():
    doc = {"type": "FeatureCollection", "features": [
        _feature(120.0, 0.10),  # a clean vessel
        _feature(20.0, 0.30),  # small craft: the benchmark's labels leave them out
        _feature(150.0, 0.0),  # the outline sits on empty water
        _feature(150.0, None),  # no contrast measured
    ]}
    cleaned, kept, ignored = clean_labels(doc, min_length_m=40.0, min_contrast=0.03)
    assert (kept, ignored) == (1, 3)
    kinds = [f["geometry"]["type"] for f in cleaned["features"]]
    assert kinds == ["Polygon", "Point", "Point", "Point"]
    assert all(f["properties"]["ignore"] is True for f in cleaned["features"][1:])


def test_eotdl_chips_convert_to_labelled_folders(shared_data, tmp_path):
    chips, kept, ignored = convert(shared_data / "eotdl-ships", tmp_path)
    assert chips == 77 and kept + ignored == 269 and kept > 0 and ignored > 0
    scenes = load_labelled([tmp_path])
    assert sum(len(s.ships) for s in scenes) == kept
    assert sum(len(s.ignore) for s in scenes) == ignored
    sample = json.loads((tmp_path / scenes[0].name / "labels.geojson").read_text())
    assert sample["type"] == "FeatureCollection"
    # the source is left as it was: the scene is linked, not copied or changed
    assert (tmp_path / scenes[0].name / "scene.tif").is_symlink()
