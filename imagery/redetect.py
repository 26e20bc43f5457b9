"""`berthwatch run --redetect [--since D]`: reprocess stored scenes with the model in use.

Scenes already processed by other weights are detected and reconciled again. A new detection
within MATCH_M of an old one takes the old one's det_id, so its alert id (`scene#det_id`),
its verdicts and the analysts' moves and deletes stay attached to the same vessel (the
review trail is append-only and refers to those ids); the alerts the new model adds or drops
are listed, never silently changed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime

from imagery.pipeline import (
    DEFAULT_GATES,
    process_scene,
    rebuild_episodes,
    run_lock,
)
from imagery.ports import Port
from imagery.reconcile import Gates
from imagery.workspace import Workspace

MATCH_M = 20.0  # the scoring rule's tolerance: the same vessel found again


@dataclass
class RedetectReport:
    weights_sha256: str = ""
    scenes: list[str] = field(default_factory=list)
    unchanged: int = 0  # scenes already processed by the model in use
    added: list[str] = field(default_factory=list)  # alert ids
    dropped: list[str] = field(default_factory=list)
    kept: int = 0
    failed: dict[str, str] = field(default_factory=dict)


def _done_scenes(ws: Workspace, port: Port, since: datetime | None) -> list[dict]:
    conn = ws.connect()
    try:
        rows = conn.execute(
            """SELECT s.*, p.weights_sha256 AS done_sha FROM scenes s
               JOIN processing p ON p.scene_id = s.scene_id
               WHERE s.port = ? AND s.status = 'stored' AND p.status = 'done'
               ORDER BY s.acquisition_time, s.scene_id""", (port.name,)).fetchall()
    finally:
        conn.close()
    stamp = since.strftime("%Y-%m-%dT%H:%M:%SZ") if since else ""
    scenes = [dict(r) for r in rows if (r["acquisition_time"] or "") >= stamp]
    for scene in scenes:  # stored relative to the workspace root
        scene["path"] = str(ws.resolve(scene["path"]))
    return scenes


def _old(ws: Workspace, scene_id: str) -> tuple[dict[int, tuple[float, float]], set[str]]:
    conn = ws.connect()
    try:
        dets = {r["det_id"]: (r["lon"], r["lat"]) for r in conn.execute(
            "SELECT det_id, lon, lat FROM detections WHERE scene_id = ?", (scene_id,))}
        alerts = {r[0] for r in conn.execute("SELECT alert_id FROM alerts WHERE scene_id = ?",
                                             (scene_id,))}
    finally:
        conn.close()
    return dets, alerts


def _metres(a: tuple[float, float], b: tuple[float, float]) -> float:
    dx = (a[0] - b[0]) * 111320.0 * math.cos(math.radians(a[1]))
    return math.hypot(dx, (a[1] - b[1]) * 110540.0)


def keep_ids(old: dict[int, tuple[float, float]]):
    """A `number` callback for process_scene: nearest pairs first, each old id used once;
    new vessels get ids after the largest old one."""
    def number(collection: dict) -> None:
        feats = collection["features"]
        pairs = sorted(
            (_metres(tuple(f["geometry"]["coordinates"][:2]), pos), i, det_id)
            for i, f in enumerate(feats) for det_id, pos in old.items())
        taken_new, taken_old = set(), set()
        for dist, i, det_id in pairs:
            if dist > MATCH_M:
                break
            if i in taken_new or det_id in taken_old:
                continue
            feats[i]["properties"]["det_id"] = det_id
            taken_new.add(i)
            taken_old.add(det_id)
        next_id = max(old, default=-1) + 1
        for i, f in enumerate(feats):
            if i not in taken_new:
                f["properties"]["det_id"] = next_id
                next_id += 1
    return number


def redetect(ws: Workspace, ports: list[Port], weights: str | None = None,
             since: datetime | None = None, threshold: float | None = None,
             gates: Gates = DEFAULT_GATES, progress: bool = True,
             device: str = "cpu", precision: str | None = None) -> RedetectReport:
    """Reprocess every processed scene (since `since`) whose weights are not the ones in use."""
    from tqdm import tqdm

    from imagery.detector import get_weights
    from imagery.models import resolve_weights

    report = RedetectReport()
    with run_lock(ws):
        weights = resolve_weights(ws, weights)
        report.weights_sha256 = get_weights(weights).sha256
        for port in ports:
            scenes = _done_scenes(ws, port, since)
            for scene in tqdm(scenes, desc=f"redetect {port.name}", unit="scene",
                              disable=not progress):
                if scene["done_sha"] == report.weights_sha256:
                    report.unchanged += 1
                    continue
                old, old_alerts = _old(ws, scene["scene_id"])
                try:
                    process_scene(ws, port, scene, weights, threshold, gates,
                                  number=keep_ids(old), device=device, precision=precision)
                except Exception as exc:  # the stored results stay as they were
                    report.failed[scene["scene_id"]] = f"{type(exc).__name__}: {exc}"
                    continue
                _, new_alerts = _old(ws, scene["scene_id"])
                report.scenes.append(scene["scene_id"])
                report.added += sorted(new_alerts - old_alerts)
                report.dropped += sorted(old_alerts - new_alerts)
                report.kept += len(old_alerts & new_alerts)
            rebuild_episodes(ws, port)
    return report
