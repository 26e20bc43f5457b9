"""The workspace: scenes on disk by port and date, and one SQLite database for everything
berthwatch records (scene catalog here; AIS, detections, alerts and reviews add their tables).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

DB_NAME = "berthwatch.sqlite"

SCENES_SCHEMA = """
CREATE TABLE IF NOT EXISTS scenes (
    scene_id TEXT PRIMARY KEY,
    port TEXT NOT NULL,
    source TEXT NOT NULL,
    acquisition_time TEXT,
    path TEXT,
    status TEXT NOT NULL CHECK (status IN ('stored', 'skipped', 'failed')),
    reason TEXT,
    cloud_fraction REAL,
    sha256 TEXT,
    simulated INTEGER NOT NULL DEFAULT 0,
    fetched_at TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS scenes_port_time ON scenes(port, acquisition_time);
"""


def default_home() -> Path:
    env = os.environ.get("BERTHWATCH_HOME")
    return Path(env).expanduser() if env else Path.home() / ".berthwatch"


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class SceneRecord:
    scene_id: str
    port: str
    source: str
    acquisition_time: str | None
    path: str | None
    status: str
    reason: str | None
    cloud_fraction: float | None
    sha256: str | None
    simulated: bool
    fetched_at: str
    attempts: int


class Workspace:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser().resolve()

    @classmethod
    def open(cls, path: str | os.PathLike | None = None) -> Workspace:
        """`--workspace` wins, then $BERTHWATCH_HOME, then ~/.berthwatch."""
        ws = cls(path if path else default_home())
        ws.root.mkdir(parents=True, exist_ok=True)
        ws.ensure_schema(SCENES_SCHEMA)
        return ws

    def ensure_schema(self, script: str) -> None:
        """Create a module's tables if missing (each statement idempotent)."""
        conn = self.connect()
        try:
            conn.executescript(script)
        finally:
            conn.close()

    @property
    def db_path(self) -> Path:
        return self.root / DB_NAME

    @property
    def scenes_dir(self) -> Path:
        return self.root / "scenes"

    def connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic unit of work: committed whole or not at all."""
        conn = self.connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        finally:
            conn.close()

    def scene_path(self, port: str, acquisition_time: datetime | None, scene_id: str) -> Path:
        day = acquisition_time.strftime("%Y-%m-%d") if acquisition_time else "undated"
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in scene_id)
        return self.scenes_dir / port / day / f"{safe}.tif"

    def scene(self, scene_id: str) -> SceneRecord | None:
        conn = self.connect()
        try:
            row = conn.execute("SELECT * FROM scenes WHERE scene_id = ?", (scene_id,)).fetchone()
        finally:
            conn.close()
        return _record(row) if row else None

    def record_scene(
        self,
        *,
        scene_id: str,
        port: str,
        source: str,
        acquisition_time: datetime | None,
        status: str,
        path: Path | None = None,
        reason: str | None = None,
        cloud_fraction: float | None = None,
        simulated: bool = False,
    ) -> None:
        digest = sha256_file(path) if path and status == "stored" else None
        when = acquisition_time.strftime("%Y-%m-%dT%H:%M:%SZ") if acquisition_time else None
        with self.transaction() as conn:
            conn.execute(
                """INSERT INTO scenes (scene_id, port, source, acquisition_time, path, status,
                       reason, cloud_fraction, sha256, simulated, fetched_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT(scene_id) DO UPDATE SET
                       path = excluded.path, status = excluded.status, reason = excluded.reason,
                       cloud_fraction = excluded.cloud_fraction, sha256 = excluded.sha256,
                       fetched_at = excluded.fetched_at, attempts = scenes.attempts + 1""",
                (scene_id, port, source, when, str(path) if path else None, status, reason,
                 cloud_fraction, digest, int(simulated), utc_now()),
            )

    def list_scenes(self, port: str | None = None) -> list[SceneRecord]:
        conn = self.connect()
        try:
            sql = "SELECT * FROM scenes"
            args: tuple = ()
            if port:
                sql += " WHERE port = ?"
                args = (port,)
            rows = conn.execute(sql + " ORDER BY port, acquisition_time, scene_id", args).fetchall()
        finally:
            conn.close()
        return [_record(r) for r in rows]


def _record(row: sqlite3.Row) -> SceneRecord:
    data = dict(row)
    data["simulated"] = bool(data["simulated"])
    return SceneRecord(**data)
