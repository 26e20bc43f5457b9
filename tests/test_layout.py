"""The design card's layout: `imagery` (the operational package) never imports `training`,
except the command-line front's learning commands."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ALLOWED = {ROOT / "imagery" / "cli" / "learning.py"}


def _imports_training(path: Path) -> list[int]:
    lines = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module or ""]
        if any(n == "training" or n.startswith("training.") for n in names):
            lines.append(node.lineno)
    return lines


def test_imagery_never_imports_training_but_for_the_learning_commands():
    found = {str(p.relative_to(ROOT)): lines for p in sorted((ROOT / "imagery").rglob("*.py"))
             if p not in ALLOWED and (lines := _imports_training(p))}
    assert found == {}
    assert _imports_training(ROOT / "imagery" / "cli" / "learning.py")  # the check sees imports
