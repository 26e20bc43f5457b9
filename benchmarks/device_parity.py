"""Same detections on a GPU as from the CPU reference (issue 27 item 1), on a machine that has
one: `detect()` with the model and post-processing on `--device` (default cuda) against
`detect(..., reference=True)` with the model on the CPU, on simulated scenes and, when
../shared/data is present, real sen2ships scenes. tests/test_device_parity.py checks the same
on the CPU build; this prints what a GPU changes.

    python benchmarks/device_parity.py [--device cuda] [--threshold 0.1]

Tolerances (tests/test_device_parity.py explains them): positions within 0.5 px, scores
within 1e-4, lengths and widths within 1e-4 relative, berthed identical (a flip is listed
with its pixel: on a GPU it can only come from a mask pixel at the 60 m boundary).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from imagery.detector import decode_options, detect, load_model  # noqa: E402
from imagery.ports import get_port  # noqa: E402
from imagery.scene import open_scene  # noqa: E402
from imagery.simulate import simulate_scene_file  # noqa: E402

REAL = ROOT.parent / "shared" / "data" / "sen2ships"


def compare(got: list, want: list) -> dict:
    """Pair each reference detection with the nearest of the other path; the differences."""
    worst = {"position_px": 0.0, "score": 0.0, "length_rel": 0.0}
    flips, unpaired = [], abs(len(got) - len(want))
    for w in want:
        g = min(got, key=lambda d: math.hypot(d.px_x - w.px_x, d.px_y - w.px_y), default=None)
        if g is None or math.hypot(g.px_x - w.px_x, g.px_y - w.px_y) > 0.5:
            unpaired += 1
            continue
        worst["position_px"] = max(worst["position_px"], math.hypot(g.px_x - w.px_x,
                                                                    g.px_y - w.px_y))
        worst["score"] = max(worst["score"], abs(g.score - w.score))
        worst["length_rel"] = max(worst["length_rel"], abs(g.length_m / w.length_m - 1))
        if g.berthed != w.berthed:
            flips.append((round(w.px_x, 1), round(w.px_y, 1)))
    ok = (not unpaired and not flips and worst["score"] <= 1e-4
          and worst["length_rel"] <= 1e-4)
    return {"ok": ok, "reference": len(want), "device": len(got), "unpaired": unpaired,
            "berthed_flips": flips, **{k: float(f"{v:.3g}") for k, v in worst.items()}}


def scenes(tmp: Path) -> list[Path]:
    found = []
    for port, seed, cloud in (("vostochny", 7, 0.0), ("chongjin", 3, 0.3)):
        path = tmp / f"{port}.tif"
        simulate_scene_file(get_port(port), "2024-03-19", path, seed=seed, cloud_fraction=cloud)
        found.append(path)
    for port in ("casablanca", "honolulu", "gdynia", "genoa"):
        if (REAL / port / "scene.tif").exists():
            found.append(REAL / port / "scene.tif")
    return found


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--threshold", type=float, default=0.1)
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    # Both in fp32: this compares devices; bf16 (auto on some CPUs) is compared with fp32 in
    # tests/test_device_parity.py.
    cpu_model, entry = load_model(None, "cpu", "fp32")
    dev_model, _ = load_model(None, args.device, "fp32")
    options = decode_options(entry)
    failures = 0
    default_tf32 = torch.backends.cudnn.allow_tf32
    with tempfile.TemporaryDirectory(prefix="bw-parity-") as tmp:
        for path in scenes(Path(tmp)):
            info = open_scene(path, require_bands=None)
            want = detect(info, cpu_model, args.threshold, reference=True, **options)
            # torch's default lets cuDNN run fp32 convolutions in TF32 (10-bit mantissas);
            # both are compared, the default first: it is what `detect --device cuda` does.
            for tf32 in dict.fromkeys([default_tf32, False] if args.device != "cpu" else
                                      [default_tf32]):
                torch.backends.cudnn.allow_tf32 = tf32
                got = detect(info, dev_model, args.threshold, **options)
                result = compare(got, want)
                failures += not result["ok"] and tf32 == default_tf32
                print(f"parity {info.scene_id} ({args.device}, cudnn.allow_tf32={tf32}, vs "
                      f"CPU reference): {result}", flush=True)
            torch.backends.cudnn.allow_tf32 = default_tf32
    print(f"parity: {'all scenes within tolerance' if not failures else f'{failures} FAILED'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
