"""`berthwatch report`: tanker calls and estimated barrels of one port over a period, as
charts, a per-call CSV and GeoJSON, and one self-contained HTML page.

The folder is built beside its destination and renamed into place: a report that fails
half-way leaves nothing behind, and an older report at the same place stays until the new
one is whole.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from imagery.ports import Port
from imagery.report.calls import CallsResult, ReportError, build_calls, monthly_counts
from imagery.tankers import DEFAULT_CONFIG, TankerConfig
from imagery.workspace import Workspace

__all__ = ["ReportError", "WrittenReport", "default_report_dir", "write_report"]


@dataclass
class WrittenReport:
    folder: Path
    page: Path
    result: CallsResult

    @property
    def monthly(self) -> dict[str, dict[str, int]]:
        return monthly_counts(self.result)


def default_report_dir(ws: Workspace, port: str) -> Path:
    return ws.root / "reports" / port


def write_report(ws: Workspace, port: Port, start: datetime | None = None,
                 end: datetime | None = None, out: str | os.PathLike | None = None,
                 config: TankerConfig = DEFAULT_CONFIG) -> WrittenReport:
    from imagery.report.charts import calls_per_month_chart, cumulative_barrels_chart
    from imagery.report.page import write_files

    result = build_calls(ws, port, start, end, config)  # raises before anything is written
    folder = Path(out) if out else default_report_dir(ws, port.name)
    if folder.exists() and not folder.is_dir():
        raise ReportError(f"{folder} is a file, not a folder; choose another --out")
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReportError(f"cannot make the folder {folder.parent}: "
                          f"{exc.strerror or exc}") from None
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        charts = {"calls": calls_per_month_chart(result, staging / "tanker_calls_per_month.png"),
                  "barrels": cumulative_barrels_chart(result, staging / "cumulative_barrels.png")}
        write_files(result, staging, charts)
        os.chmod(staging, 0o755)
        _swap_into_place(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return WrittenReport(folder, folder / "report.html", result)


def _swap_into_place(staging: Path, folder: Path) -> None:
    if folder.exists() and not (folder / "report.html").exists() and any(folder.iterdir()):
        raise ReportError(f"{folder} exists and is not a berthwatch report folder; "
                          "choose another --out")
    old = None
    if folder.exists():
        old = folder.with_name(f".{folder.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(folder, old)
    os.replace(staging, folder)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
