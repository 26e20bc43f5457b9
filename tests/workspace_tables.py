"""The rows of a workspace's tables, for tests that compare two workspaces built two ways."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path


def table_rows(workspace: Path, tables: tuple[str, ...],
               dropped: Callable[[str], bool]) -> dict[str, list[tuple]]:
    """Every row of `tables` as sorted (column, value) tuples, the columns `dropped` says
    left out and the workspace's own path in strings written `<WS>`."""
    conn = sqlite3.connect(workspace / "berthwatch.sqlite")
    conn.row_factory = sqlite3.Row
    root = str(workspace.resolve())
    try:
        return {table: sorted((tuple(
            (key, row[key].replace(root, "<WS>") if isinstance(row[key], str) else row[key])
            for key in row.keys() if not dropped(key))
            for row in conn.execute(f"SELECT * FROM {table}")), key=repr) for table in tables}
    finally:
        conn.close()
