"""The learning commands: `train`, `evaluate` (the only ones that import `training`, which
imports torch, and only when asked for), `retrain` and `models`."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from imagery.cli import UserError


def cmd_train(args: argparse.Namespace) -> int:
    from training.train import run

    return _training_command(run, args)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from training.evaluate import run

    return _training_command(run, args)


def _training_command(run: Callable, args: argparse.Namespace) -> int:
    from imagery.detector import DetectorError

    try:
        run(args)
    except (DetectorError, FileNotFoundError, ValueError) as exc:
        # Bad folders, labels or weights: a message, not a traceback.
        raise UserError(str(exc)) from None
    return 0


def cmd_retrain(args: argparse.Namespace) -> int:
    from imagery.detector import DetectorError
    from imagery.pipeline import RunLocked
    from training.retrain import RetrainConfig, RetrainError, format_result, retrain

    cfg = RetrainConfig(steps=args.steps, threads=args.threads, noise=args.noise,
                        benchmark=args.benchmark, seed=args.seed, device=args.device,
                        confidence=args.confidence)
    try:
        result = retrain(args.workspace, args.data, cfg)
    except (RetrainError, RunLocked, DetectorError) as exc:
        raise UserError(str(exc)) from None
    print(format_result(result))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from imagery import models
    from imagery.pipeline import open_workspace

    ws = open_workspace(args.workspace)
    try:
        if args.models_command == "promote":
            now = models.promote(ws, args.name)
            print(f"{ws.root}: now using {now.name} (sha256 {now.sha256[:12]}...)")
        elif args.models_command == "rollback":
            old, now = models.rollback(ws)
            print(f"{ws.root}: rolled back {old.name}; now using {now.name} "
                  f"(sha256 {now.sha256[:12]}...)")
        else:
            print(models.format_models(ws))
    except models.ModelsError as exc:
        raise UserError(str(exc)) from None
    return 0


def add_learning_parsers(add: Callable) -> None:
    p = add("retrain", cmd_retrain, "fine-tune the workspace's model on its reviewed scenes, "
            "gate it on held-out reviews, register it (promoted only if better)")
    p.add_argument("--data", nargs="+", metavar="DIR", default=[],
                   help="base labelled folders mixed into training so it does not forget "
                        "(e.g. ../shared/data/sen2ships)")
    p.add_argument("--steps", type=int, default=300, help="fine-tuning steps (default 300)")
    p.add_argument("--noise", type=float, default=0.03,
                   help="F1 loss on the --data folders still counted as not worse (0.03)")
    p.add_argument("--confidence", type=float, default=0.9,
                   help="share of bootstrap resamples of the held-out reviews in which the "
                        "candidate must score better (default 0.9)")
    p.add_argument("--benchmark", choices=("in-sample", "none"), default="in-sample",
                   help="score both models on the --data folders (default) or not")
    p.add_argument("--seed", type=int, default=0, help="seed of the fine-tuning (default 0)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    p.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    p = add("models", cmd_models, "the workspace's models: list, promote NAME, rollback")
    actions = p.add_subparsers(dest="models_command", metavar="ACTION")
    promote = actions.add_parser("promote", help="use NAME from now on")
    promote.add_argument("name", help="a model name from `berthwatch models`")
    rollback = actions.add_parser("rollback", help="return to the model in use before this one")
    for action in (promote, rollback):  # --workspace after the action too
        action.add_argument("--workspace", metavar="DIR", default=argparse.SUPPRESS,
                            help="workspace folder (default $BERTHWATCH_HOME or ~/.berthwatch)")


def add_training_parsers(add: Callable, command: str | None) -> None:
    # Their options live in `training`, which imports torch: only load it when it is asked
    # for, so that `berthwatch ports` stays instant.
    p_train = add("train", cmd_train, "train detector weights on labelled folders")
    p_eval = add("evaluate", cmd_evaluate, "score weights on labelled folders, per port and pooled")
    if command == "train":
        from training import train

        train.add_arguments(p_train)
    elif command == "evaluate":
        from training import evaluate

        evaluate.add_arguments(p_eval)
