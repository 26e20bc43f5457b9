"""Turn the eotdl-ships chips (Baltic Sentinel-2 L2A chips labelled at AIS positions) into
labelled folders the trainer reads, keeping only the labels that are clean enough.

    python -m training.eotdl --data ../shared/data/eotdl-ships --out DIR
        [--min-length-m 40] [--min-contrast 0.03]

The chips' outlines are drawn from AIS reports: a moving ship's rectangle can sit off the
ship or on empty water (`nir_contrast` near 0), and a quarter of the ships are small craft
that the sen2ships labels, which the benchmark scores by, leave out. A label is kept as a
vessel when its length and its NIR contrast pass the thresholds; every other label becomes
an ignore point (no supervision near it: it may be a vessel, it may be empty water), never
background. Each output folder links the chip's `scene.tif` and writes its own
`labels.geojson`; the source folder is left as it is.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from shapely.geometry import mapping, shape

from training.chips import LabelsError, find_scene_dirs


def clean_labels(doc: dict, min_length_m: float, min_contrast: float) -> tuple[dict, int, int]:
    """The labels document with the unclean outlines turned into ignore points; returns it
    with the counts of vessels kept and of labels ignored."""
    features, kept, ignored = [], 0, 0
    for feat in doc.get("features") or []:
        props = feat.get("properties") or {}
        geom = shape(feat["geometry"])
        length = float(props.get("length_m") or 0.0)
        contrast = props.get("nir_contrast")
        if length >= min_length_m and contrast is not None and float(contrast) >= min_contrast:
            features.append(feat)
            kept += 1
        else:
            centre = geom.representative_point()
            features.append({"type": "Feature", "geometry": mapping(centre),
                             "properties": {"ignore": True, "mmsi": props.get("mmsi")}})
            ignored += 1
    return {"type": "FeatureCollection", "features": features}, kept, ignored


def convert(data: str | os.PathLike, out: str | os.PathLike, min_length_m: float = 40.0,
            min_contrast: float = 0.03) -> tuple[int, int, int]:
    """Write one labelled folder per chip under `out`; returns (chips, vessels kept, labels
    ignored)."""
    out = Path(out)
    chips = kept = ignored = 0
    for folder in find_scene_dirs([data]):
        labels = folder / "labels.geojson"
        try:
            doc = json.loads(labels.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise LabelsError(f"{labels}: cannot read labels ({exc})") from None
        cleaned, k, i = clean_labels(doc, min_length_m, min_contrast)
        target = out / f"eotdl-{folder.name}"
        target.mkdir(parents=True, exist_ok=True)
        link = target / "scene.tif"
        if not link.exists():
            link.symlink_to((folder / "scene.tif").resolve())
        (target / "labels.geojson").write_text(json.dumps(cleaned), encoding="utf-8")
        chips, kept, ignored = chips + 1, kept + k, ignored + i
    return chips, kept, ignored


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="the eotdl-ships folder")
    ap.add_argument("--out", required=True, help="where to write the labelled folders")
    ap.add_argument("--min-length-m", type=float, default=40.0)
    ap.add_argument("--min-contrast", type=float, default=0.03)
    args = ap.parse_args(argv)
    chips, kept, ignored = convert(args.data, args.out, args.min_length_m, args.min_contrast)
    print(f"{chips} chips: {kept} vessels kept, {ignored} labels ignored -> {args.out}")


if __name__ == "__main__":
    main()
