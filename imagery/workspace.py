"""The workspace: scenes on disk by port and date, and one SQLite database for everything
berthwatch records (scene catalog here; AIS, detections, alerts and reviews add their tables).
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import re
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

DB_NAME = "berthwatch.sqlite"
# How long one attempt waits on another process's write lock (SQLite's own busy handler), and
# how long a writer keeps retrying in all before giving up. Writers hold the lock briefly (one
# scene, one batch of AIS rows), so a long wait means another process is stuck or huge.
BUSY_TIMEOUT_S = 10.0
LOCK_PATIENCE_S = 600.0

log = logging.getLogger(__name__)

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


class WorkspaceError(Exception):
    """A workspace that cannot be used as asked; the message names it."""


class WorkspaceMissing(WorkspaceError):
    """A reading command pointed at a folder that holds no workspace database."""


class WorkspaceReadOnly(WorkspaceError):
    """A write asked of a workspace this process cannot write."""


class WorkspaceBusy(WorkspaceError):
    """Another process kept the database locked past LOCK_PATIENCE_S."""


# Folders under the root that hold files the database points at: paths into them are stored
# relative to the root, so a moved or copied workspace keeps working.
FILE_FOLDERS = ("scenes", "detections", "evidence")
STEM_MAX = 80  # characters of the readable part of a file name (names stay under 255 bytes)


def file_stem(scene_id: str) -> str:
    """A file name stem unique per scene id: the id made safe for every file system, plus a
    short hash of the exact id, so ids that sanitise alike (`A B`, `A_B`, `a b`) never share
    a file, even on a case-insensitive disk."""
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in scene_id)[:STEM_MAX]
    digest = hashlib.sha256(scene_id.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return f"{safe.lstrip('.') or 'scene'}-{digest}"


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
    def __init__(self, root: str | os.PathLike, read_only: bool = False):
        self.root = Path(root).expanduser().resolve()
        self.read_only = read_only
        self._stand_in_schemas: list[str] = []  # see ensure_schema

    @classmethod
    def open(cls, path: str | os.PathLike | None = None, *,
             must_exist: bool = False) -> Workspace:
        """`--workspace` wins, then $BERTHWATCH_HOME, then ~/.berthwatch.

        `must_exist` (reading commands): refuse a folder without a database rather than create
        an empty workspace where a mistyped path points. A workspace this process cannot write
        opens read-only: nothing is created, every connection is read-only, and a transaction
        raises WorkspaceReadOnly."""
        ws = cls(path if path else default_home())
        if must_exist and not ws.db_path.is_file():
            raise WorkspaceMissing(f"no berthwatch workspace at {ws.root} (no {DB_NAME} there); "
                                   "check --workspace or $BERTHWATCH_HOME")
        if ws.db_path.is_file() and not ws._writable():
            ws.read_only = True
            return ws
        try:
            ws.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise WorkspaceReadOnly(f"cannot create workspace {ws.root}: "
                                    f"{exc.strerror or exc}") from None
        if not ws._writable():
            raise WorkspaceReadOnly(f"workspace {ws.root} is read-only and holds no {DB_NAME}")
        with ws.failing_in_one_line():
            ws.ensure_schema(SCENES_SCHEMA)
            ws.relativise_column("scenes", "scene_id", "path")
        return ws

    @contextmanager
    def failing_in_one_line(self) -> Iterator[None]:
        """Turn a database that cannot be opened or written at all (a full disk: SQLite cannot
        even create its -wal and -shm files; a corrupt file) into one line naming it."""
        try:
            yield
        except (sqlite3.Error, OSError) as exc:
            raise WorkspaceError(f"cannot use the workspace database {self.db_path} ({exc}); "
                        "is the disk full, or the file damaged?") from None

    def _writable(self) -> bool:
        # SQLite writes beside the database (-wal, -shm, -journal): the folder must be writable
        # too. os.access also says False on a read-only mount, even to root.
        files = [self.db_path] + [Path(f"{self.db_path}{s}") for s in ("-wal", "-shm")]
        return os.access(self.root, os.W_OK) and all(
            os.access(f, os.W_OK) for f in files if f.exists())

    def require_writable(self, command: str) -> None:
        """Refuse a writing command up front, before it fetches or writes anything."""
        if self.read_only:
            raise WorkspaceReadOnly(f"workspace {self.root} is read-only: `{command}` writes "
                                    "to it; give a writable --workspace")

    def ensure_schema(self, script: str) -> None:
        """Create a module's tables if missing (each statement idempotent)."""
        if self.read_only:
            # Nothing can be created: tables missing from a read-only database are stood in
            # for by empty TEMP tables in each connection, so readers find them empty.
            if script not in self._stand_in_schemas:
                self._stand_in_schemas.append(script)
            return
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
        if self.read_only:
            return self._connect_read_only()
        conn = sqlite3.connect(self.db_path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    def _connect_read_only(self) -> sqlite3.Connection:
        """mode=ro sees a live WAL; where SQLite cannot open its -shm beside a read-only
        database (no writer has it open), immutable=1 reads the file as it stands."""
        base = "file:" + quote(str(self.db_path))
        for query in ("?mode=ro", "?immutable=1"):
            conn = sqlite3.connect(base + query, uri=True, timeout=BUSY_TIMEOUT_S,
                                   isolation_level=None)
            conn.row_factory = sqlite3.Row
            try:
                present = {r[0] for r in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table'")}
                self._add_stand_ins(conn, present)
                wal = Path(f"{self.db_path}-wal")
                if "immutable" in query and wal.is_file() and wal.stat().st_size:
                    log.warning("%s is read without %s: the changes it holds are not seen",
                                self.db_path, wal.name)
                return conn
            except sqlite3.OperationalError as exc:
                conn.close()
                if getattr(exc, "sqlite_errorname", "") != "SQLITE_CANTOPEN":
                    raise
        raise WorkspaceError(f"cannot open {self.db_path} read-only")

    def _add_stand_ins(self, conn: sqlite3.Connection, present: set[str]) -> None:
        for script in self._stand_in_schemas:
            for statement in _statements(script):
                match = _CREATE_TABLE.match(statement)
                if match and match.group(1) not in present:
                    conn.execute(_CREATE_TABLE.sub(r"CREATE TEMP TABLE \1", statement, count=1))

    def has_table(self, name: str) -> bool:
        conn = self.connect()
        try:
            return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                                (name,)).fetchone() is not None
        finally:
            conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic unit of work: committed whole or not at all. Waits (with backoff) while
        another process writes; a database that turns out read-only raises WorkspaceReadOnly."""
        if self.read_only:
            raise WorkspaceReadOnly(f"workspace {self.root} is read-only")
        conn = self.connect()
        try:
            begin_immediate(conn, self.db_path)
            yield conn
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if _read_only_error(exc):
                raise WorkspaceReadOnly(f"workspace {self.root} is read-only ({exc})") from None
            raise
        finally:
            conn.close()

    def scene_path(self, port: str, acquisition_time: datetime | None, scene_id: str) -> Path:
        day = acquisition_time.strftime("%Y-%m-%d") if acquisition_time else "undated"
        return self.scenes_dir / port / day / f"{file_stem(scene_id)}.tif"

    # --- paths in the database ---------------------------------------------------------------

    def relative(self, path: str | os.PathLike | None) -> str | None:
        """How the database stores a path: relative to the root when inside it."""
        if path is None:
            return None
        absolute = Path(path).absolute()
        if absolute.is_relative_to(self.root):
            return absolute.relative_to(self.root).as_posix()
        return str(path)

    def resolve(self, path: str | os.PathLike | None) -> Path | None:
        """A path read from the database as a path on this machine. Relative paths are under
        the root; an absolute one written by an older version into a workspace since moved or
        copied is found by its part below scenes/, detections/ or evidence/."""
        if path is None or str(path) == "":
            return None
        stored = Path(path)
        if not stored.is_absolute():
            return self.root / stored
        if stored.exists() or stored.is_relative_to(self.root):
            return stored
        for tail in _workspace_tails(stored):
            if (self.root / tail).exists():
                return self.root / tail
        return stored

    def relativise_column(self, table: str, key: str, column: str) -> int:
        """Migrate absolute paths in `table.column` that point into this workspace (or into
        the place it was moved from) to relative ones; returns how many rows changed. A
        read-only workspace is left as it is: `resolve` reads old rows all the same."""
        conn = self.connect()
        try:
            rows = conn.execute(f"SELECT {key}, {column} FROM {table} "
                                f"WHERE {column} LIKE '/%'").fetchall()
            changes = []
            for row in rows:
                found = self.resolve(row[1])
                if found is not None and found.is_relative_to(self.root):
                    changes.append((found.relative_to(self.root).as_posix(), row[0]))
            if changes:
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany(f"UPDATE {table} SET {column} = ? WHERE {key} = ?", changes)
                conn.execute("COMMIT")
        except sqlite3.OperationalError:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            return 0
        finally:
            conn.close()
        return len(changes)

    def scene(self, scene_id: str) -> SceneRecord | None:
        conn = self.connect()
        try:
            row = conn.execute("SELECT * FROM scenes WHERE scene_id = ?", (scene_id,)).fetchone()
        finally:
            conn.close()
        return self._record(row) if row else None

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
                (scene_id, port, source, when, self.relative(path), status, reason,
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
        return [self._record(r) for r in rows]

    def _record(self, row: sqlite3.Row) -> SceneRecord:
        data = dict(row)
        data["simulated"] = bool(data["simulated"])
        resolved = self.resolve(data["path"])
        data["path"] = str(resolved) if resolved else None
        return SceneRecord(**data)


def begin_immediate(conn: sqlite3.Connection, db_path: Path | str = "the database",
                    patience_s: float | None = None) -> None:
    """BEGIN IMMEDIATE (take the write lock now), retried with growing, jittered pauses while
    another process holds it; WorkspaceBusy after `patience_s` (default LOCK_PATIENCE_S)."""
    patience = LOCK_PATIENCE_S if patience_s is None else patience_s
    deadline, pause, warned = time.monotonic() + patience, 0.05, False
    while True:
        try:
            conn.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            if not getattr(exc, "sqlite_errorname", "").startswith(("SQLITE_BUSY",
                                                                     "SQLITE_LOCKED")):
                raise
            if time.monotonic() >= deadline:
                raise WorkspaceBusy(f"{db_path} stayed locked by another process for "
                                    f"{patience:.0f} s; try again when it ends") from None
            if not warned:
                log.warning("%s is locked by another process; waiting", db_path)
                warned = True
        time.sleep(pause * random.uniform(0.5, 1.0))
        pause = min(pause * 2, 2.0)


_CREATE_TABLE = re.compile(r"\s*CREATE TABLE IF NOT EXISTS (\w+)", re.IGNORECASE)


def _statements(script: str) -> Iterator[str]:
    """The statements of a schema script (a trigger's body keeps its semicolons)."""
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            yield buffer.strip()
            buffer = ""


def _read_only_error(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and getattr(
        exc, "sqlite_errorname", "").startswith("SQLITE_READONLY")


def _workspace_tails(path: Path) -> Iterator[Path]:
    """The parts of an absolute path from each workspace folder in it on (scenes/...)."""
    parts = path.parts
    for i, part in enumerate(parts):
        if part in FILE_FOLDERS and i < len(parts) - 1:
            yield Path(*parts[i:])
