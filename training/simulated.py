"""Labelled folders from the simulator, in the sen2ships layout (scene.tif + labels.geojson),
so that tests and experiments can train on scenes whose truth is exact."""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path

from pyproj import Transformer
from shapely.geometry import mapping

from imagery.ports import Port
from imagery.simulate import footprint, simulate_scene_file


def write_simulated_labelled(port: Port, when: datetime, folder: str | os.PathLike, *,
                             seed: int = 0, cloud_fraction: float = 0.0) -> Path:
    """Simulate a scene into `folder/scene.tif` and write each vessel's hull outline (WGS84)
    as `folder/labels.geojson`, marked simulated."""
    folder = Path(folder)
    truth = simulate_scene_file(port, when, folder / "scene.tif", seed=seed,
                                cloud_fraction=cloud_fraction)
    to_utm = Transformer.from_crs("EPSG:4326", f"EPSG:{port.epsg}", always_xy=True)
    to_wgs = Transformer.from_crs(f"EPSG:{port.epsg}", "EPSG:4326", always_xy=True)
    features = []
    for v in truth.vessels:
        x, y = to_utm.transform(v.lon, v.lat)
        hull = footprint(x, y, v.heading_deg, v.length_m, v.width_m)
        ring = [to_wgs.transform(px, py) for px, py in hull.exterior.coords]
        geometry = mapping(type(hull)(ring))
        features.append({"type": "Feature", "geometry": geometry,
                         "properties": {"category": "ship", "simulated": True, "id": v.id}})
    labels = {"type": "FeatureCollection", "features": features,
              "properties": {"simulated": True, "scene_id": truth.scene_id}}
    (folder / "labels.geojson").write_text(json.dumps(labels), encoding="utf-8")
    return folder


def write_simulated_set(out_dir: str | os.PathLike, scenes: int = 12, seed: int = 0,
                        ports: tuple[str, ...] = ("chongjin", "vostochny")) -> list[Path]:
    """`scenes` labelled SIMULATED folders of the given ports on successive days, a third of
    them partly clouded, as `<out_dir>/sim-<port>-<k>`."""
    from datetime import UTC, timedelta

    from imagery.ports import get_port

    start = datetime(2024, 1, 10, tzinfo=UTC)
    folders = []
    for k in range(scenes):
        port = get_port(ports[k % len(ports)])
        cloud = 0.25 if k % 3 == 2 else 0.0
        folders.append(write_simulated_labelled(
            port, start + timedelta(days=5 * k), Path(out_dir) / f"sim-{port.name}-{k:02d}",
            seed=seed * 1000 + k, cloud_fraction=cloud))
    return folders


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="write labelled SIMULATED training folders")
    ap.add_argument("--out", required=True)
    ap.add_argument("--scenes", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    for folder in write_simulated_set(a.out, a.scenes, a.seed):
        print(folder)
