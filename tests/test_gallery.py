"""Pictures of the detector's errors: the right mistakes are drawn, and a bad scene is
reported without losing the other ports."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from shapely.geometry import shape

try:  # tests/ is on sys.path under pytest's default (prepend) import mode
    from test_detector import make_labelled
except ImportError:  # tests/ as a package
    from tests.test_detector import make_labelled
from imagery.detector import Detection, _to_wgs84
from imagery.scene import open_scene
from training.evaluate import PortPrediction, score_predictions
from training.gallery import CAPTION_PX, COLUMNS, TILE_PX, _errors, write_gallery


def _detection(x: float, y: float, score: float) -> Detection:
    return Detection(px_x=x, px_y=y, score=score, length_m=120.0, width_m=30.0,
                     heading_deg=0.0)


@pytest.fixture
def port_prediction(tmp_path) -> PortPrediction:
    """Six labelled vessels: one found, one near miss below the threshold, four with no
    candidate at all, and one detection on open water far from every vessel."""
    folder = make_labelled(tmp_path / "testport", seed=3, n=6)
    info = open_scene(folder / "scene.tif", require_bands=None)
    labels = json.loads((folder / "labels.geojson").read_text())
    ships = [shape(f["geometry"]) for f in labels["features"]]
    centres = _centroids_in(info, ships)
    # The false positive goes to the water pixel farthest from every vessel (>= 20 px).
    grid = [(float(x), float(y)) for x in range(30, 128, 4) for y in range(4, 128, 4)]
    far = max(grid, key=lambda p: min(np.hypot(p[0] - c[0], p[1] - c[1]) for c in centres))
    found = [_detection(*centres[0], 0.9), _detection(*centres[1], 0.12),
             _detection(*far, 0.6)]
    _to_wgs84(info, found)
    return PortPrediction("testport", ships, found, "test-model", 10.0,
                          str(folder / "scene.tif"))


def _centroids_in(info, ships) -> list[tuple[float, float]]:
    from pyproj import Transformer

    to_scene = Transformer.from_crs("EPSG:4326", info.crs, always_xy=True)
    out = []
    for ship in ships:
        x, y = to_scene.transform(ship.centroid.x, ship.centroid.y)
        out.append(tuple((~info.transform) * (x, y)))
    return out


def test_errors_are_the_unpaired_detections_and_vessels(port_prediction):
    false_pos, missed = _errors(port_prediction, threshold=0.25)
    scores = score_predictions([port_prediction], 0.25)["ports"]["testport"]
    assert len(false_pos) == scores["fp"] == 1
    assert len(missed) == scores["fn"] == len(port_prediction.ships) - 1
    assert false_pos[0][0].score == 0.6 and false_pos[0][1] > 100  # metres from a vessel
    # The near miss keeps its below-threshold score; the others had no candidate.
    best = sorted((b for _, b in missed), key=lambda b: -1 if b is None else b)
    assert best[-1] == 0.12 and best.count(None) == len(missed) - 1


def test_sheet_draws_one_tile_per_error(port_prediction, tmp_path):
    report = write_gallery([port_prediction], 0.25, tmp_path / "gallery")
    row = report["testport"]
    assert (row["false_positives"], row["missed"], row["drawn"]) == (1, 5, 6)
    sheet = np.asarray(Image.open(row["path"]).convert("RGB")).astype(int)
    assert sheet.shape[1] == COLUMNS * TILE_PX
    assert sheet.shape[0] == 22 + TILE_PX + CAPTION_PX  # six tiles fit one row
    red = (sheet[..., 0] > 200) & (sheet[..., 1] < 60) & (sheet[..., 2] < 60)
    yellow = (sheet[..., 0] > 200) & (sheet[..., 1] > 200) & (sheet[..., 2] < 60)
    tile_of = lambda mask: set((np.nonzero(mask)[1] // TILE_PX).tolist())  # noqa: E731
    assert tile_of(red) == {0}  # the false positive comes first, framed and crossed in red
    assert tile_of(yellow) == {1, 2, 3, 4, 5}


def test_unreadable_scene_is_reported_and_the_rest_drawn(port_prediction, tmp_path):
    broken = PortPrediction("broken", port_prediction.ships, [], "test-model", 10.0,
                            str(tmp_path / "no-such-scene.tif"))
    unnamed = PortPrediction("unnamed", port_prediction.ships, [], "test-model")
    report = write_gallery([broken, unnamed, port_prediction], 0.25, tmp_path / "gallery")
    assert "no-such-scene.tif" in report["broken"]["error"]
    assert "does not name its scene" in report["unnamed"]["error"]
    assert report["testport"]["drawn"] == 6


def test_evaluate_gallery_matches_its_table(shared_data, tmp_path):
    """`berthwatch evaluate --gallery` on a real port draws exactly the table's errors."""
    from training.evaluate import evaluate

    result = evaluate([shared_data / "sen2ships" / "casablanca"], leave_ports_out=True,
                      threads=1, progress=False, gallery=tmp_path)
    row, sheet = result["ports"]["casablanca"], result["gallery"]["casablanca"]
    assert (sheet["false_positives"], sheet["missed"]) == (row["fp"], row["fn"])
    assert Image.open(sheet["path"]).size[0] == COLUMNS * TILE_PX
