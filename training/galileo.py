"""Galileo-nano features for BerthNet: an experiment on the leave-ports-out benchmark.

    python -m training.galileo --data ../shared/data/sen2ships ../shared/data/sen2ships-partial
        SIMDIR --init PREV/berthnet-s2 --fold K --out DIR [--galileo FOLDER]

Galileo (nasaharvest/galileo, MIT) pretrained a small ViT on Sentinel-2 and other inputs;
`../shared/data/pretrained/galileo-nano` holds its "nano" encoder (embedding 128, depth 4, 8
heads, patch sizes 1-8). This module is the project's own reading of that design, just the part
a single Sentinel-2 date needs: the RGB (B02 B03 B04), NIR (B08) and NDVI channel groups, one
time step, 8 px patches (its native patch size: no resized patch kernels), attention within
64 px windows (8 x 8 tokens, inside the 4-12 token sizes it was trained on; a whole 512 px chip
would be 12,288 tokens). Groups whose bands are missing are left out of the attention, as
Galileo masks them. The SWIR group needs B12, which the scenes lack, so it is always left out.

`GalileoBerthNet` adds the frozen encoder's tokens into BerthNet's 1/8 map (one token per
8 px: the same grid) through a zero-initialised 1x1 convolution, so that it starts as exactly
the BerthNet it was loaded from. `main` runs the shipped third training stage (the second
mining round, `init` the second stage's fold model) with it and scores the fold's held-out
ports against the shipped fold model, as docs/experiments.md records.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from imagery.detector import BerthNet, WeightsEntry, file_sha256, fuse_batchnorm, load_state
from training.chips import load_labelled

GALILEO_DIR = Path(__file__).resolve().parents[2] / "shared/data/pretrained/galileo-nano"
GALILEO_SHA256 = "eab6acacf527886a508a555bc24efe4b4a2cf91b162e84cd1c4a1807e942180c"
EMBED = 128
DEPTH = 4
HEADS = 8
PATCH = 8
WINDOW = 64  # px: 8 x 8 tokens a window
MONTH = 5  # June: the scenes' months are not in the training crops
# Galileo's channel groups in its space-time order (their rows in s_t_channel_embed) and its
# normalisation: (DN - (mean - 2 std)) / (4 std), DN = reflectance x 10000 (its S2 stats;
# NDVI's are of the index itself).
GROUPS = {"S2_RGB": 1, "S2_NIR_10m": 3, "NDVI": 6}
MEAN = {"B02": 1395.3408730676722, "B03": 1338.4026921784578, "B04": 1343.09883810357,
        "B08": 2410.3377187373408, "NDVI": 0.2892116502999044}
STD = {"B02": 917.7041440370853, "B03": 913.2988423581528, "B04": 1092.678723527555,
       "B08": 1098.979177731649, "NDVI": 0.2720939024500081}


def _sincos(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """Galileo's 1-d sin/cos encoding of `pos` (any shape) in `dim` values."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / dim / 2.0)
    out = pos.reshape(-1, 1).double() * omega[None]
    return torch.cat([out.sin(), out.cos()], dim=1).float()


def spatial_encoding(side: int, gsd_ratio: float, dim: int = EMBED // 4) -> torch.Tensor:
    """(side * side, dim): half from the column, half from the row, each times `gsd_ratio`
    (a token's ground size / 10 m), row-major."""
    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    return torch.cat([_sincos(dim // 2, cols * gsd_ratio), _sincos(dim // 2, rows * gsd_ratio)],
                     dim=1)


class _Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v = (nn.Linear(EMBED, EMBED) for _ in range(3))
        self.proj = nn.Linear(EMBED, EMBED)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = (m(x).view(b, n, HEADS, EMBED // HEADS).transpose(1, 2)
                   for m in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :])
        return self.proj(y.transpose(1, 2).reshape(b, n, EMBED))


class _Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(EMBED, 4 * EMBED), nn.Linear(4 * EMBED, EMBED)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(EMBED), nn.LayerNorm(EMBED)
        self.attn, self.mlp = _Attention(), _Mlp()

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), keep)
        return x + self.mlp(self.norm2(x))


class _PatchEmbed(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(channels, EMBED, PATCH, stride=PATCH)


class GalileoEncoder(nn.Module):
    """Galileo-nano's encoder for one Sentinel-2 date: (B, 5, H, W) reflectance in
    SCENE_BANDS order and (B, 5) band presence -> (B, 128, H / 8, W / 8) features (H, W
    multiples of 64), the mean of the present groups' tokens after the final LayerNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.space_time_embed = nn.ModuleDict(
            {"S2_RGB": _PatchEmbed(3), "S2_NIR_10m": _PatchEmbed(1), "NDVI": _PatchEmbed(1)})
        self.blocks = nn.ModuleList(_Block() for _ in range(DEPTH))
        self.norm = nn.LayerNorm(EMBED)
        self.pos_embed = nn.Parameter(torch.zeros(24, EMBED // 4), requires_grad=False)
        self.month_embed = nn.Embedding(12, EMBED // 4)
        self.s_t_channel_embed = nn.Parameter(torch.zeros(7, EMBED // 4))
        side = WINDOW // PATCH
        self.register_buffer("spatial", spatial_encoding(side, 10.0 * PATCH / 10.0),
                             persistent=False)
        mean = torch.tensor([MEAN[b] for b in ("B02", "B03", "B04", "B08")])
        std = torch.tensor([STD[b] for b in ("B02", "B03", "B04", "B08")])
        self.register_buffer("shift", (mean - 2 * std)[None, :, None, None], persistent=False)
        self.register_buffer("div", (4 * std)[None, :, None, None], persistent=False)

    @classmethod
    def pretrained(cls, folder: str | Path = GALILEO_DIR) -> GalileoEncoder:
        """The encoder with Galileo-nano's weights (`encoder.pt`, read as tensors only);
        every value this module uses must be in the file."""
        path = Path(folder) / "encoder.pt"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: Galileo-nano weights not found")
        actual = file_sha256(path)
        if actual != GALILEO_SHA256:  # checked before unpickling, as the project's own weights
            raise ValueError(f"{path}: sha256 {actual} is not Galileo-nano's ({GALILEO_SHA256})")
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = {k.replace(".backbone", ""): v for k, v in state.items()}
        encoder = cls()
        wanted = encoder.state_dict()
        missing = [k for k in wanted if k not in state]
        if missing:
            raise ValueError(f"{path}: lacks {len(missing)} values the encoder needs, "
                             f"e.g. {missing[0]}")
        encoder.load_state_dict({k: state[k] for k in wanted})
        return encoder

    def _group_inputs(self, x: torch.Tensor, present: torch.Tensor):
        """Normalised inputs per group and each group's presence (B,)."""
        dn = x[:, :4] * 10000.0
        norm = (dn - self.shift) / self.div
        red, nir = x[:, 2:3], x[:, 3:4]
        ndvi = (nir - red) / (nir + red).clamp(min=1e-4)
        ndvi = (ndvi - (MEAN["NDVI"] - 2 * STD["NDVI"])) / (4 * STD["NDVI"])
        p = present.bool()
        return {
            "S2_RGB": (norm[:, :3], p[:, :3].all(1)),
            "S2_NIR_10m": (norm[:, 3:4], p[:, 3]),
            "NDVI": (ndvi, p[:, 2] & p[:, 3]),
        }

    def forward(self, x: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        side = WINDOW // PATCH
        nh, nw = h // WINDOW, w // WINDOW
        x = x.float()
        tokens, keeps = [], []
        month = self.month_embed.weight[MONTH]
        for name, (inputs, keep) in self._group_inputs(x, present).items():
            t = self.space_time_embed[name].proj(inputs)  # (B, 128, h/8, w/8)
            # windows of side x side tokens as the batch: (B * nh * nw, side * side, 128)
            t = t.view(b, EMBED, nh, side, nw, side).permute(0, 2, 4, 3, 5, 1)
            t = t.reshape(b * nh * nw, side * side, EMBED)
            code = torch.cat([self.s_t_channel_embed[GROUPS[name]], self.pos_embed[0], month])
            t = t + torch.cat([code.expand(side * side, -1), self.spatial], dim=1)
            tokens.append(t)
            keeps.append(keep.repeat_interleave(nh * nw)[:, None].expand(-1, side * side))
        seq, keep = torch.cat(tokens, dim=1), torch.cat(keeps, dim=1)
        # A sample with no group present attends to everything (its output is masked below):
        # an all-False row would make the softmax NaN.
        keep_attn = keep | ~keep.any(1, keepdim=True)
        for block in self.blocks:
            seq = block(seq, keep_attn)
        seq = self.norm(seq).view(b * nh * nw, len(tokens), side * side, EMBED)
        weight = keep.view(b * nh * nw, len(tokens), side * side, 1).float()
        mean = (seq * weight).sum(1) / weight.sum(1).clamp(min=1.0)
        out = mean.view(b, nh, nw, side, side, EMBED).permute(0, 5, 1, 3, 2, 4)
        return out.reshape(b, EMBED, h // PATCH, w // PATCH)


class GalileoBerthNet(BerthNet):
    """BerthNet with the frozen Galileo encoder's features added into its 1/8 map."""

    def __init__(self, widths: tuple[int, int, int, int] = (16, 32, 64, 96), bands: int = 5,
                 encoder: GalileoEncoder | None = None):
        super().__init__(widths, bands)
        self.galileo = encoder or GalileoEncoder()
        self.galileo.requires_grad_(False)
        self.fuse = nn.Conv2d(EMBED, widths[3], 1)
        nn.init.zeros_(self.fuse.weight)  # starts as the BerthNet it was loaded from
        nn.init.zeros_(self.fuse.bias)

    def train(self, mode: bool = True) -> GalileoBerthNet:
        super().train(mode)
        self.galileo.eval()  # frozen: no dropout, and its statistics never move
        return self

    def forward(self, x: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        f1, f2, f4, f8 = self.encode(x, present)
        h, w = x.shape[-2:]
        ph, pw = (-h) % WINDOW, (-w) % WINDOW
        with torch.no_grad():
            g = self.galileo(F.pad(x, (0, pw, 0, ph)), present)[..., : h // PATCH, : w // PATCH]
        f8 = f8 + self.fuse(g.to(f8.dtype).contiguous(memory_format=self.layout()))
        return self.decode(f1, f2, f4, f8)


def from_berthnet(model: BerthNet, encoder: GalileoEncoder) -> GalileoBerthNet:
    """A GalileoBerthNet holding `model`'s weights (so it computes what `model` does)."""
    out = GalileoBerthNet(model.widths, model.bands, encoder)
    missing, unexpected = out.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected and all(k.startswith(("galileo.", "fuse.")) for k in missing)
    return out


def _score(folders: list[Path], model: BerthNet, entry: WeightsEntry,
           thresholds: tuple[float, ...]) -> dict:
    from training.evaluate import (
        PortPrediction,
        _ship_outlines,
        predict_folder,
        score_predictions,
    )
    preds = []
    runner = fuse_batchnorm(model.eval()).to(memory_format=torch.channels_last)
    with torch.inference_mode():
        for folder in folders:
            found, pixel_m = predict_folder(folder, runner, entry, min(thresholds))
            preds.append(PortPrediction(folder.name, _ship_outlines(folder), found, entry.name,
                                        pixel_m, str(folder / "scene.tif")))
    return {str(t): score_predictions(preds, t) for t in thresholds}


def main(argv: list[str] | None = None) -> None:
    from dataclasses import replace

    from training.train import FOLDS, Recipe, fit, fold_path

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", nargs="+", required=True)
    ap.add_argument("--init", help="stem of the second stage's weights: run the third stage "
                                   "from them (default: the whole three-stage chain)")
    ap.add_argument("--shipped", default="weights/berthnet-s2", help="stem of the control")
    ap.add_argument("--fold", type=int, required=True)
    ap.add_argument("--out", required=True, help="folder for the weights and the scores")
    ap.add_argument("--galileo", default=str(GALILEO_DIR))
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    held = FOLDS[args.fold]
    scenes = [s for s in load_labelled(args.data) if s.name not in held]
    encoder = GalileoEncoder.pretrained(args.galileo)
    desc = f"galileo fold {args.fold}"
    start = time.perf_counter()
    stats: dict = {}
    if args.init:
        base, _ = load_state(fold_path(args.init, args.fold))
        model = from_berthnet(base, encoder)
    else:  # the shipped chain's first two stages, with its seed: BerthNet's part starts alike
        torch.manual_seed(Recipe().seed)
        fresh = GalileoBerthNet(Recipe().widths, encoder=encoder)
        model = fit(scenes, Recipe(), "cpu", True, desc, untrained=fresh, stats=stats)
        stats["mined_negatives_stage2"] = stats.pop("mined_negatives", None)
    # The shipped third stage's recipe: one more mining round, 800 steps of 5 crops of 256 px.
    recipe = replace(Recipe(), seed=1, mine_crop=256, mine_batch=5)
    model = fit(scenes, recipe, "cpu", True, desc, init=model, stats=stats)
    seconds = time.perf_counter() - start
    torch.save(model.state_dict(), out / f"galileo-fold{args.fold}.pt")
    folders = [Path(d) / p for d in args.data for p in held if (Path(d) / p).is_dir()]
    thresholds = (0.2, 0.25, 0.3, 0.35, 0.4, 0.45)
    shipped_model, shipped_entry = load_state(fold_path(args.shipped, args.fold))
    result = {
        "fold": args.fold, "ports": [f.name for f in folders], "train_seconds": round(seconds),
        "init": args.init or "none: the whole chain", **stats,
        "fuse_weight_norm": float(model.fuse.weight.detach().norm()),
        "galileo": _score(folders, model, shipped_entry, thresholds),
        "shipped": _score(folders, shipped_model, shipped_entry, thresholds),
    }
    (out / f"galileo-fold{args.fold}.json").write_text(json.dumps(result, indent=1))
    for t in thresholds:
        g, s = result["galileo"][str(t)]["pooled"], result["shipped"][str(t)]["pooled"]
        print(f"fold {args.fold} threshold {t}: galileo F1 {g['f1']:.3f} "
              f"(tp {g['tp']} fp {g['fp']} fn {g['fn']}), shipped {s['f1']:.3f} "
              f"(tp {s['tp']} fp {s['fp']} fn {s['fn']})")
    print(f"fold {args.fold}: {seconds:.0f} s of training, {stats.get('mined_negatives')} "
          f"negatives mined; |fuse| {result['fuse_weight_norm']:.4f}")


if __name__ == "__main__":
    main()
