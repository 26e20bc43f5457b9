"""The Faster R-CNN reference run the way `berthwatch detect` runs: one process that loads
the model, reads a scene chip by chip (the detector's tiling: 512 px, 64 px overlap) and
detects on every chip. `benchmarks/detect_bench.py` times this process whole, beside
`python -m imagery.cli detect` on the same scene.

    python benchmarks/rcnn_detect.py SCENE.tif [--device cpu|cuda] [--threads 2] [--batch N]
                                          [--precision fp32|bf16]

The model is torchvision's `fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None)`:
random weights (nothing is downloaded), the same arithmetic as a trained one; its transform
resizes each chip to 800 px, as torchvision's defaults do. `--precision bf16` runs it under
torch.autocast in bfloat16, for a like-for-like figure against berthwatch's bf16 path.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imagery.scene import open_scene  # noqa: E402
from imagery.tiling import iter_chips  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scene")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1, help="chips per call (default 1)")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    args = ap.parse_args(argv)
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None).eval().to(args.device)
    info = open_scene(args.scene)
    boxes, batch = 0, []
    bf16 = args.precision == "bf16"
    autocast = torch.autocast(torch.device(args.device).type, torch.bfloat16, enabled=bf16)
    with torch.inference_mode(), autocast:
        for chip in iter_chips(info, 512, 64, ("B04", "B03", "B02")):
            rgb = torch.from_numpy(np.nan_to_num(chip.array) * 3.0).clamp(0, 1)
            batch.append(rgb.to(args.device))
            if len(batch) == args.batch:
                boxes += sum(len(o["boxes"]) for o in model(batch))
                batch = []
        if batch:
            boxes += sum(len(o["boxes"]) for o in model(batch))
    print(f"fasterrcnn_resnet50_fpn: {boxes} boxes in {info.scene_id}")


if __name__ == "__main__":
    main()
