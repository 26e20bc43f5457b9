"""Can one reviewed half of a port lift the port-blind model on its other half, without
retraining? A probe of the learning-loop target (adapted F1 >= 0.80), by re-ranking.

    python benchmarks/fewshot_probe.py --data ../shared/data/sen2ships [--json F]

Each port's scene is cut in the halves `adapt_bench.py` uses; the fold model blind to the port
lists its candidates (score >= 0.05) on both halves, with the network's own features at each
candidate (its 1/8 and 1/4 maps and the head's, 176 numbers). The reviewed half is fully
labelled, as the replayed analyst leaves it (confirmed, rejected, added). Scored on the other
half with the shared rule (20 m of an outline), pooled over ports and both directions:

- base: the blind model at its operating threshold (adapt_bench's base);
- recalibrated: the threshold re-chosen on the reviewed half (the middle of its F1 plateau);
- re-ranked, weight a: logit(score) + a * (mean cosine similarity to the 3 nearest reviewed
  vessels - the same to the 3 nearest reviewed false alarms), at the operating threshold, and
  at a threshold calibrated leave-one-out on the reviewed half;
- ceiling: the same re-ranking leave-one-out within the half it is scored on, at that half's
  best threshold: what these features could give with reviews of the very same waters and an
  oracle threshold, which no deployment has.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pyproj import Transformer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.adapt_bench import blind_model  # noqa: E402
from imagery.detector import (  # noqa: E402
    SCENE_BANDS,
    BerthNet,
    get_weights,
    load_model,
    model_pixel_size,
)
from imagery.scene import SceneInfo, open_scene, read_reflectance  # noqa: E402
from training.chips import find_scene_dirs  # noqa: E402
from training.evaluate import (  # noqa: E402
    SWEEP,
    _ship_outlines,
    match_pairs,
    plateau_middle,
    predict_folder,
    summarize,
)
from training.holdout import cut_in_halves  # noqa: E402

NEIGHBOURS = 3
WEIGHTS_A = (1.0, 2.0, 4.0)
LOGIT_SWEEP = tuple(round(t, 2) for t in np.arange(-4.0, 4.01, 0.25))
MAP_STRIDE = {"f8": 8, "f4": 4, "head": 1}


@dataclass
class Half:
    """One half's candidates and labels: what a full review of it would record."""

    feats: np.ndarray  # (N, 176) the network's features at each candidate
    score: np.ndarray  # (N,)
    vessel: np.ndarray  # (N,) bool: matched to a labelled outline
    missed: np.ndarray  # (M, 176) features at the outlines no candidate matched (added)
    ships: int


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-4, 1 - 1e-4)
    return np.log(p / (1 - p))


@torch.inference_mode()
def feature_maps(model: BerthNet, info: SceneInfo) -> tuple[dict[str, torch.Tensor], float]:
    """The model's maps over the whole half (small scenes: one pass), at its pixel size, and
    the scale (native px per model px) as `detect` resamples."""
    x = torch.from_numpy(np.nan_to_num(read_reflectance(info)))[None]
    scale = model_pixel_size(info.pixel_size_m) / info.pixel_size_m
    if abs(scale - 1.0) >= 0.02:
        h, w = x.shape[-2:]
        x = F.interpolate(x, size=(round(h / scale), round(w / scale)), mode="bilinear",
                          align_corners=False)
    else:
        scale = 1.0
    x = F.pad(x, (0, (-x.shape[-1]) % 8, 0, (-x.shape[-2]) % 8))
    present = torch.tensor([[b in info.bands for b in SCENE_BANDS]])
    f1, f2, f4, f8 = model.encode(x.float(), present)
    head = model.head_features(f1, f2, f4, f8)
    return {"f8": f8.float()[0], "f4": f4.float()[0], "head": head.float()[0]}, scale


def sample(maps: dict[str, torch.Tensor], scale: float, cols: np.ndarray,
           rows: np.ndarray) -> np.ndarray:
    if not len(cols):
        return np.zeros((0, sum(m.shape[0] for m in maps.values())), dtype=np.float32)
    parts = []
    for name, m in maps.items():
        gx = np.clip((cols / scale / MAP_STRIDE[name]).astype(int), 0, m.shape[-1] - 1)
        gy = np.clip((rows / scale / MAP_STRIDE[name]).astype(int), 0, m.shape[-2] - 1)
        parts.append(m[:, gy, gx].T.numpy())
    return np.concatenate(parts, 1)


def read_half(folder: Path, model: BerthNet, entry) -> Half:
    found, _ = predict_folder(folder, model, entry, SWEEP[0])
    ships = _ship_outlines(folder)
    pts = np.array([(d.lon, d.lat) for d in found], dtype=float).reshape(-1, 2)
    pairs = match_pairs(ships, pts)
    vessel = np.zeros(len(found), bool)
    vessel[[p for _, p in pairs]] = True
    info = open_scene(folder / "scene.tif", require_bands=None)
    maps, scale = feature_maps(model, info)
    feats = sample(maps, scale, np.array([d.px_x for d in found]),
                   np.array([d.px_y for d in found]))
    to_crs = Transformer.from_crs("EPSG:4326", info.crs, always_xy=True)
    matched = {s for s, _ in pairs}
    centres = [to_crs.transform(g.centroid.x, g.centroid.y)
               for k, g in enumerate(ships) if k not in matched]
    pix = np.array([~info.transform * c for c in centres]).reshape(-1, 2)
    missed = sample(maps, scale, pix[:, 0], pix[:, 1])
    return Half(feats, np.array([d.score for d in found]), vessel, missed, len(ships))


def counts(score: np.ndarray, vessel: np.ndarray, ships: int, t: float) -> np.ndarray:
    keep = score >= t
    tp = int((keep & vessel).sum())
    return np.array([tp, int((keep & ~vessel).sum()), ships - tp])


def f1_of(c: np.ndarray) -> float:
    return summarize(dict(zip(("tp", "fp", "fn"), map(int, c), strict=True)))["f1"]


def _unit(z: np.ndarray) -> np.ndarray:
    return z / (np.linalg.norm(z, axis=1, keepdims=True) + 1e-6)


def _near(q: np.ndarray, ref: np.ndarray) -> np.ndarray:
    if not len(ref) or not len(q):
        return np.zeros(len(q))
    k = min(NEIGHBOURS, len(ref))
    return np.sort(q @ ref.T, 1)[:, -k:].mean(1)


class Reranker:
    """logit(score) + a * (nearness to reviewed vessels - nearness to reviewed false alarms),
    in the reviewed half's standardised feature space."""

    def __init__(self, reviewed: Half, a: float):
        self.mu = reviewed.feats.mean(0)
        self.sd = reviewed.feats.std(0) + 1e-3
        z = self.embed(reviewed.feats)
        self.pos = np.vstack([z[reviewed.vessel], self.embed(reviewed.missed)])
        self.neg = z[~reviewed.vessel]
        self.a = a

    def embed(self, feats: np.ndarray) -> np.ndarray:
        return _unit((feats - self.mu) / self.sd)

    def __call__(self, half: Half) -> np.ndarray:
        z = self.embed(half.feats)
        return logit(half.score) + self.a * (_near(z, self.pos) - _near(z, self.neg))


def leave_one_out(half: Half, a: float) -> np.ndarray:
    """Each candidate re-ranked by the rest of its own half's review."""
    rr = Reranker(half, a)
    z = rr.embed(half.feats)
    out = np.empty(len(z))
    pos_index = np.cumsum(half.vessel) - 1
    neg_index = np.cumsum(~half.vessel) - 1
    for i in range(len(z)):
        pos, neg = rr.pos, rr.neg
        if half.vessel[i]:
            pos = np.delete(pos, pos_index[i], 0)
        else:
            neg = np.delete(neg, neg_index[i], 0)
        out[i] = logit(half.score[i : i + 1])[0] + a * (_near(z[i : i + 1], pos)[0]
                                                        - _near(z[i : i + 1], neg)[0])
    return out


def reviewable(half: Half) -> bool:
    """Enough of each kind to compare with (as `retrain` asks for two vessels)."""
    return int(half.vessel.sum()) + len(half.missed) >= 2 and int((~half.vessel).sum()) >= 2


def one_direction(reviewed: Half, unseen: Half, op: float) -> dict[str, np.ndarray]:
    base = counts(unseen.score, unseen.vessel, unseen.ships, op)
    out = {"base": base}
    if not reviewable(reviewed):  # nothing to learn from: the blind model stays
        out["recalibrated"] = base
        for a in WEIGHTS_A:
            out[f"re-ranked a={a:g}"] = out[f"re-ranked a={a:g}, calibrated"] = base
        return out
    f1s = {t: f1_of(counts(reviewed.score, reviewed.vessel, reviewed.ships, t)) for t in SWEEP}
    out["recalibrated"] = counts(unseen.score, unseen.vessel, unseen.ships,
                                 plateau_middle(f1s))
    for a in WEIGHTS_A:
        ranked = Reranker(reviewed, a)(unseen)
        out[f"re-ranked a={a:g}"] = counts(ranked, unseen.vessel, unseen.ships,
                                           float(logit(np.array(op))))
        loo = leave_one_out(reviewed, a)
        f1s = {t: f1_of(counts(loo, reviewed.vessel, reviewed.ships, t)) for t in LOGIT_SWEEP}
        out[f"re-ranked a={a:g}, calibrated"] = counts(ranked, unseen.vessel, unseen.ships,
                                                       plateau_middle(f1s))
    return out


def ceiling(half: Half, op: float) -> dict[str, np.ndarray]:
    out = {}
    for a in (0.0, *WEIGHTS_A):
        ranked = leave_one_out(half, a) if reviewable(half) else logit(half.score)
        out[f"ceiling a={a:g}"] = max((counts(ranked, half.vessel, half.ships, t)
                                       for t in LOGIT_SWEEP),
                                      key=lambda c: (f1_of(c), -c[1]))  # ties: fewer alarms
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", nargs="+", required=True, metavar="DIR")
    ap.add_argument("--json", metavar="F", help="write the pooled and per-port counts here")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    entry = get_weights(None)
    pooled: dict[str, np.ndarray] = {}
    ports = {}
    with tempfile.TemporaryDirectory(prefix="fewshot-") as tmp:
        for folder in find_scene_dirs(args.data):
            fold, _ = blind_model(entry, folder.name, leave_ports_out=True)
            if fold is None:
                print(f"{folder.name}: no fold model held it out; skipped", flush=True)
                continue
            model, fold_entry = load_model(fold.path, "cpu", "fp32")
            a, b = cut_in_halves(folder, Path(tmp) / "A" / folder.name,
                                 Path(tmp) / "B" / folder.name)
            halves = [read_half(a, model, fold_entry), read_half(b, model, fold_entry)]
            rows = [one_direction(halves[k], halves[1 - k], fold_entry.threshold)
                    for k in (0, 1)] + [ceiling(h, fold_entry.threshold) for h in halves]
            port = {}
            for row in rows:
                for name, c in row.items():
                    port[name] = port.get(name, 0) + c
                    pooled[name] = pooled.get(name, 0) + c
            ports[folder.name] = {k: [int(x) for x in v] for k, v in port.items()}
            print(f"{folder.name}: base {f1_of(port['base']):.3f}, re-ranked a=2 "
                  f"{f1_of(port['re-ranked a=2']):.3f}, ceiling a=2 "
                  f"{f1_of(port['ceiling a=2']):.3f}", flush=True)
    print("\npooled over ports and both directions (tp, fp, fn):")
    for name, c in pooled.items():
        print(f"  {name:28s} tp {c[0]:3d} fp {c[1]:3d} fn {c[2]:3d}  F1 {f1_of(c):.3f}")
    result = {"pooled": {k: {"tp": int(v[0]), "fp": int(v[1]), "fn": int(v[2]),
                             "f1": round(f1_of(v), 4)} for k, v in pooled.items()},
              "ports": ports}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
