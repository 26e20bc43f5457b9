"""Replay an analyst's work on labelled ports and measure what the learning loop gains.

    python benchmarks/adapt_bench.py --data ../shared/data/sen2ships [--leave-ports-out]
        [--weights W] [--ports P ...] [--steps N] [--benchmark in-sample|none]
        [--precision fp32|bf16|auto] [--json F]

For each port, its scene is cut in two halves along a line through no labelled vessel. The
model blind to the port (with --leave-ports-out the fold model that never saw it, else
--weights, default the shipped model) detects on half A in a fresh workspace; the analyst is
replayed through `review_db.record`, as the review page records (training/replay.py):
detections within 20 m of an outline confirmed and moved onto it, the others rejected, the
vessels nothing found added. Then `retrain` and its gate run as a user runs them (base data:
the --data ports the blind model trained on, never the port itself), and the model the
workspace then uses (promoted or not) is scored on half B with the shared scoring rule, at
its threshold (the blind model at the shipped model's threshold). Then A and B swap.
Prints per port and direction, and pooled: base F1 on the unseen half, adapted F1, whether
the gate promoted, and the seconds retrain took; and the candidate's F1 on the unseen half
whether promoted or not (what the gate passed up or rightly refused).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imagery import models  # noqa: E402
from imagery.detector import PRECISION_ENV, get_weights, load_model  # noqa: E402
from imagery.pipeline import open_workspace  # noqa: E402
from training.chips import find_scene_dirs  # noqa: E402
from training.evaluate import (  # noqa: E402
    _ship_outlines,
    fold_models,
    match_counts,
    predict_folder,
    summarize,
)
from training.holdout import cut_in_halves  # noqa: E402
from training.replay import adopt, replay_folder  # noqa: E402
from training.retrain import RetrainConfig, RetrainError, retrain  # noqa: E402


def blind_model(entry, port: str, leave_ports_out: bool):
    """(weights entry blind to `port`, the ports it held out)."""
    if not leave_ports_out:
        return entry, set()
    for fold in fold_models(entry):
        held = set(json.loads(fold.path.with_suffix(".json").read_text()).get("holdout_ports"))
        if port in held:
            return fold, held
    return None, set()


def score_half(weights: str, folder: Path, threshold: float) -> dict:
    model, entry = load_model(weights)
    found, _ = predict_folder(folder, model, entry, threshold)
    pts = [(d.lon, d.lat) for d in found]
    import numpy as np

    return match_counts(_ship_outlines(folder), np.array(pts, dtype=float).reshape(-1, 2))


def one_direction(port: str, train_half: Path, test_half: Path, blind, base_dirs: list[Path],
                  op_threshold: float, cfg: RetrainConfig, scratch: Path) -> dict:
    ws = open_workspace(scratch / "ws")
    weights = adopt(ws, blind.path)
    replayed = replay_folder(ws, train_half, f"{port}-{train_half.parent.name}", port,
                             datetime(2023, 8, 1, tzinfo=UTC), weights, op_threshold)
    start = time.perf_counter()
    try:
        result = retrain(ws.root, [str(d) for d in base_dirs], cfg, progress=False)
    except RetrainError as exc:  # as a user would see it: nothing changed, the model kept
        result = None
        refusal = f"retrain refused: {str(exc).split(': ', 1)[-1]}"
    seconds = time.perf_counter() - start
    using = models.active_model(ws)
    base = score_half(weights, test_half, op_threshold)
    adapted = score_half(using.weights(ws), test_half,
                         using.threshold if using.threshold is not None else op_threshold)
    # The candidate on the unseen half whatever the gate said: what the gate passed up, or
    # rightly refused (not what a user gets; that is `adapted`).
    candidate = score_half(result.files[0], test_half, result.threshold) if result else base
    return {"base": base, "adapted": adapted, "candidate": candidate,
            "promoted": bool(result and result.promoted),
            "decision": result.decision if result else refusal, "seconds": round(seconds, 1),
            "replayed": vars(replayed), "gate": result.metrics.get("heldout") if result else None,
            "gate_base_in_sample": result.metrics.get("base_in_sample") if result else None}


def run_port(folder: Path, all_dirs: list[Path], entry, leave_ports_out: bool,
             cfg: RetrainConfig, scratch: Path) -> dict | None:
    port = folder.name
    blind, held = blind_model(entry, port, leave_ports_out)
    if blind is None:
        print(f"{port}: no fold model held it out; skipped", flush=True)
        return None
    base_dirs = [d for d in all_dirs if d.name != port and d.name not in held]
    a, b = cut_in_halves(folder, scratch / "A" / port, scratch / "B" / port)
    runs = []
    for k, (train_half, test_half) in enumerate(((a, b), (b, a))):
        run = one_direction(port, train_half, test_half, blind, base_dirs, entry.threshold, cfg,
                            scratch / f"dir{k}")
        base_f1, adapted_f1 = summarize(run["base"])["f1"], summarize(run["adapted"])["f1"]
        counts = " against ".join(f"tp {c['tp']} fp {c['fp']} fn {c['fn']}"
                                  for c in (run["adapted"], run["base"]))
        cand_f1 = summarize(run["candidate"])["f1"]
        print(f"{port} {'AB'[k]}->{'BA'[k]}: base F1 {base_f1:.3f}, adapted {adapted_f1:.3f} "
              f"({counts}), {run['decision']}, retrain {run['seconds']:.0f} s; the candidate "
              f"alone {cand_f1:.3f}", flush=True)
        runs.append(run)
    return {"runs": runs, "model": blind.name}


def _pool(counts: list[dict]) -> dict:
    return summarize({k: sum(c[k] for c in counts) for k in ("tp", "fp", "fn")})


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", nargs="+", required=True, metavar="DIR")
    ap.add_argument("--weights", help="weights (default: the shipped model)")
    ap.add_argument("--leave-ports-out", action="store_true")
    ap.add_argument("--ports", nargs="+", help="only these ports (default: all)")
    ap.add_argument("--steps", type=int, default=RetrainConfig.steps)
    ap.add_argument("--benchmark", choices=("in-sample", "none"), default="in-sample")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", choices=("fp32", "bf16", "auto"), default="fp32",
                    help="the convolutions' dtype everywhere, retrain's gate included (default "
                    "fp32: the model card's tables are fp32, and bf16 moves a decision or two)")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    # Through the environment, so that every model retrain and its gate load uses it too.
    os.environ[PRECISION_ENV] = args.precision
    entry = get_weights(args.weights)
    args.weights_name = entry.name
    dirs = find_scene_dirs(args.data)
    cfg = RetrainConfig(steps=args.steps, benchmark=args.benchmark, threads=args.threads)
    ports: dict = {}
    for folder in dirs:
        if args.ports and folder.name not in args.ports:
            continue
        scratch = Path(tempfile.mkdtemp(prefix=f"adapt-{folder.name}-"))
        try:
            start = time.perf_counter()
            out = run_port(folder, dirs, entry, args.leave_ports_out, cfg, scratch)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        if out is None:
            continue
        runs = out["runs"]
        ports[folder.name] = {
            "base_f1": _pool([r["base"] for r in runs])["f1"],
            "adapted_f1": _pool([r["adapted"] for r in runs])["f1"],
            "candidate_f1": _pool([r["candidate"] for r in runs])["f1"],
            "promoted": [r["promoted"] for r in runs],
            "seconds": round(time.perf_counter() - start, 1),
            "retrain_seconds": [r["seconds"] for r in runs],
            "model": out["model"], "runs": runs,
        }
        if args.json:  # after every port, so that a long run stopped early keeps its ports
            _write(args, ports, _pooled(ports))
    pooled = _pooled(ports)
    if args.json and not ports:
        _write(args, ports, pooled)
    print(f"{'port':12s} {'base F1':>8s} {'adapted':>8s}  promoted      seconds")
    for name, p in ports.items():
        print(f"{name:12s} {p['base_f1']:8.3f} {p['adapted_f1']:8.3f}  "
              f"{str(p['promoted']):13s} {p['seconds']:.0f}")
    if ports:
        print(f"{'POOLED':12s} {pooled['base_f1']:8.3f} {pooled['adapted_f1']:8.3f}")
    return {"pooled": pooled, "ports": ports}


def _pooled(ports: dict) -> dict:
    """Pooled F1 over every direction of every port: base, adapted and candidate alone."""
    runs = [r for p in ports.values() for r in p["runs"]]
    return {f"{kind}_f1": _pool([r[kind] for r in runs])["f1"] if runs else None
            for kind in ("base", "adapted", "candidate")}


def _write(args: argparse.Namespace, ports: dict, pooled: dict) -> None:
    result = {"pooled": pooled, "ports": ports,
              "settings": {"leave_ports_out": args.leave_ports_out, "weights": args.weights_name,
                           "steps": args.steps, "benchmark": args.benchmark,
                           "threads": args.threads, "precision": args.precision}}
    Path(args.json).write_text(json.dumps(result, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
