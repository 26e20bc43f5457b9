"""The workspace's model registry: which detector weights a workspace has had and which it uses.

One table, `models`: the shipped weights (registered implicitly, never copied or overwritten),
every candidate `berthwatch retrain` made (its files under WORKSPACE/models/NAME.pt + .json),
with its parent, the data it was trained on, the gate's figures and its threshold. Status:
`shipped`, `candidate` (made, not deployed), `promoted` (deployed at some point) or
`rolled-back`. The model in use is the promoted one promoted last (`promoted_seq`), or the
shipped one when none is; `run`, `watch`, `detect --workspace` use it when no --weights is
given (`resolve_weights`, the one place where a workspace's default weights are decided).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from imagery.workspace import Workspace, utc_now

SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    name TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL,
    path TEXT,                 -- relative to the workspace; NULL: the packaged shipped weights
    parent TEXT,
    training_data TEXT NOT NULL DEFAULT '{}',   -- JSON: reviewed scene ids, base folders
    metrics TEXT NOT NULL DEFAULT '{}',         -- JSON: the gate's figures and decision
    threshold REAL,
    created_at TEXT NOT NULL,
    promoted_at TEXT,
    promoted_seq INTEGER,
    status TEXT NOT NULL CHECK (status IN ('shipped', 'candidate', 'promoted', 'rolled-back'))
);
"""


class ModelsError(ValueError):
    """A registry action that cannot be done as asked (unknown model, nothing to roll back)."""


@dataclass(frozen=True)
class ModelRecord:
    name: str
    sha256: str
    path: str | None
    parent: str | None
    training_data: dict
    metrics: dict
    threshold: float | None
    created_at: str
    promoted_at: str | None
    promoted_seq: int | None
    status: str

    def weights(self, ws: Workspace) -> str:
        """What `get_weights` takes: the shipped name, or the candidate's .pt path."""
        if self.path is None:
            return self.name
        return str(ws.root / self.path)


def ensure_registry(ws: Workspace) -> None:
    """The table, with the shipped weights in it (once; their files are never touched)."""
    from imagery.detector import DEFAULT_NAME, get_weights

    ws.ensure_schema(SCHEMA)
    entry = get_weights(DEFAULT_NAME)
    with ws.transaction() as conn:
        conn.execute(
            """INSERT OR IGNORE INTO models (name, sha256, path, parent, training_data, metrics,
                   threshold, created_at, status) VALUES (?, ?, NULL, NULL, ?, '{}', ?, ?,
                   'shipped')""",
            (entry.name, entry.sha256,
             json.dumps({"base_folders": entry.recipe.get("train_ports", [])}),
             entry.threshold, utc_now()))


def _record(row) -> ModelRecord:
    data = dict(row)
    data["training_data"] = json.loads(data["training_data"] or "{}")
    data["metrics"] = json.loads(data["metrics"] or "{}")
    return ModelRecord(**data)


def list_models(ws: Workspace) -> list[ModelRecord]:
    ensure_registry(ws)
    conn = ws.connect()
    try:
        rows = conn.execute("SELECT * FROM models ORDER BY created_at, name").fetchall()
    finally:
        conn.close()
    return [_record(r) for r in rows]


def get_model(ws: Workspace, name: str) -> ModelRecord:
    found = {m.name: m for m in list_models(ws)}
    if name not in found:
        raise ModelsError(f"no model {name!r} in {ws.root} (known: {', '.join(found)})")
    return found[name]


def active_model(ws: Workspace) -> ModelRecord:
    """The promoted model promoted last, else the shipped one."""
    models = list_models(ws)
    promoted = [m for m in models if m.status == "promoted"]
    if promoted:
        return max(promoted, key=lambda m: m.promoted_seq or 0)
    return next(m for m in models if m.status == "shipped")


def resolve_weights(ws: Workspace | None, weights: str | None) -> str | None:
    """`weights` when given; else the workspace's model in use (None: the packaged default).
    A promoted model whose file is gone or altered is an error, never a silent fallback."""
    if weights or ws is None:
        return weights
    model = active_model(ws)
    if model.path is None:
        return None
    path = ws.root / model.path
    from imagery.detector import DetectorError, file_sha256

    if not path.exists():
        raise DetectorError(f"{path}: the workspace's promoted model {model.name} is missing; "
                            "`berthwatch models rollback` returns to the previous one")
    if file_sha256(path) != model.sha256:
        raise DetectorError(f"{path}: sha256 differs from the registry's for {model.name}; "
                            "refusing to use it")
    return str(path)


def register(ws: Workspace, *, name: str, sha256: str, path: Path, parent: str | None,
             training_data: dict, metrics: dict, threshold: float, promote: bool) -> None:
    """Register a candidate whose files are already written, promoted or not, in ONE
    transaction: a process killed before it leaves the registry as it was."""
    ensure_registry(ws)
    rel = os.path.relpath(path, ws.root)
    now = utc_now()
    with ws.transaction() as conn:
        seq = _next_seq(conn) if promote else None
        conn.execute(
            """INSERT INTO models (name, sha256, path, parent, training_data, metrics, threshold,
                   created_at, promoted_at, promoted_seq, status)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            (name, sha256, rel, parent, json.dumps(training_data), json.dumps(metrics),
             threshold, now, now if promote else None, seq,
             "promoted" if promote else "candidate"))


def _next_seq(conn) -> int:
    return int(conn.execute("SELECT COALESCE(MAX(promoted_seq), 0) + 1 FROM models")
               .fetchone()[0])


def promote(ws: Workspace, name: str) -> ModelRecord:
    """A person's decision: make `name` the model in use (the shipped one included)."""
    model = get_model(ws, name)
    with ws.transaction() as conn:
        status = "shipped" if model.status == "shipped" else "promoted"
        if status == "shipped":  # back to the shipped weights: every promotion stands down
            conn.execute("UPDATE models SET status = 'rolled-back' WHERE status = 'promoted'")
        else:
            conn.execute("UPDATE models SET status = ?, promoted_at = ?, promoted_seq = ? "
                         "WHERE name = ?", (status, utc_now(), _next_seq(conn), name))
    return active_model(ws)


def rollback(ws: Workspace) -> tuple[ModelRecord, ModelRecord]:
    """Stand the model in use down; the one promoted before it (or the shipped one) takes
    over. Returns (rolled back, now in use)."""
    current = active_model(ws)
    if current.status == "shipped":
        raise ModelsError(f"{ws.root} uses the shipped model {current.name}: nothing to roll back")
    with ws.transaction() as conn:
        conn.execute("UPDATE models SET status = 'rolled-back' WHERE name = ?", (current.name,))
    return current, active_model(ws)


def format_models(ws: Workspace) -> str:
    """One line per model, the one in use marked with `*`."""
    models = list_models(ws)
    using = active_model(ws).name
    lines = [f"  {'name':28s} {'status':11s} {'thr':>5s} {'sha256':12s} {'parent':22s} "
             f"{'created':20s} {'promoted':20s} data / gate"]
    for m in models:
        data = m.training_data
        scenes = data.get("reviewed_scenes") or []
        folders = data.get("base_folders") or []
        gate = m.metrics.get("decision", "")
        what = f"{len(scenes)} reviewed scene(s), {len(folders)} base folder(s)"
        if gate:
            what += f"; gate: {gate}"
        thr = "" if m.threshold is None else f"{m.threshold:.2f}"
        lines.append(f"{'*' if m.name == using else ' '} {m.name:28s} {m.status:11s} {thr:>5s} "
                     f"{m.sha256[:12]} {m.parent or '-':22s} {m.created_at:20s} "
                     f"{m.promoted_at or '-':20s} {what}")
    return "\n".join(lines)
