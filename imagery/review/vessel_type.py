"""The review app's vessel-type choice and the ports' tanker-call figures.

Installed on the review app by one call (`install`): a POST route that records the analyst's
vessel type on an alert (tanker, cargo, other, unknown; appended with who and when, see
`imagery.vessel_types`), a route serving each port's last written report page, and the
template globals the two include files (`vessel_type.html`, `port_figures.html`) read.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from urllib.parse import quote, urlencode

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from imagery.ports import PortsError, load_ports
from imagery.report import default_report_dir
from imagery.report.calls import ReportError, build_calls, monthly_counts
from imagery.report.page import CSP as REPORT_CSP
from imagery.tankers import VESSEL_TYPES
from imagery.vessel_types import (
    ensure_schema,
    record_vessel_type,
    vessel_type_history,
)
from imagery.workspace import Workspace

PORT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
MAX_ANALYST, MAX_NOTE = 80, 2000


def install(app: FastAPI) -> None:
    ws: Workspace = app.state.ws
    ensure_schema(ws)
    env = app.state.templates.env
    env.globals["vessel_types"] = VESSEL_TYPES
    env.globals["vessel_type_rows"] = lambda alert_id: vessel_type_history(ws, alert_id)
    env.globals["port_figures"] = lambda: port_figures(ws)

    @app.post("/alerts/{alert_id:path}/vessel-type")
    async def vessel_type(request: Request, alert_id: str):
        from imagery.review.app import load_alert
        from imagery.review.security import checked_form

        form = await checked_form(request)
        alert = load_alert(request, alert_id)
        analyst = " ".join(form.get("analyst", "").split())[:MAX_ANALYST]
        if not analyst:
            raise HTTPException(400, "give your name as analyst")
        choice = form.get("vessel_type", "")
        if choice not in VESSEL_TYPES:
            raise HTTPException(400, f"vessel type must be one of {', '.join(VESSEL_TYPES)}")
        record_vessel_type(ws, alert_id=alert_id, scene_id=alert["scene_id"],
                           vessel_type=choice, analyst=analyst,
                           note=form.get("note", "")[:MAX_NOTE])
        target = f"/alerts/{quote(alert_id, safe='')}?{urlencode({'msg': f'recorded: {choice}'})}"
        return RedirectResponse(target, status_code=303)

    @app.get("/reports/{port}")
    def report_page(request: Request, port: str):
        if not PORT_NAME.match(port):
            raise HTTPException(404, "no such port")
        page = default_report_dir(ws, port) / "report.html"
        if not page.is_file():
            raise HTTPException(404, f"no report for {port} yet: run "
                                f"`berthwatch report --port {port}`")
        # The page carries its own policy (inline styles, data: images, nothing else).
        return HTMLResponse(page.read_text(encoding="utf-8"),
                            headers={"Content-Security-Policy": REPORT_CSP})


def port_figures(ws: Workspace, now: datetime | None = None) -> list[dict]:
    """Per port with scenes: this month's tanker calls, or, when this month has no scene yet,
    those of the latest month that has; and whether its report page exists."""
    now = now or datetime.now(UTC)
    out = []
    conn = ws.connect()
    try:
        latest = {r["port"]: r["t"] for r in conn.execute(
            "SELECT port, MAX(acquisition_time) AS t FROM scenes GROUP BY port")}
    finally:
        conn.close()
    try:
        ports = load_ports()
    except PortsError:
        return []
    for name, last in sorted(latest.items()):
        if name not in ports or not last:
            continue
        month_start = datetime(now.year, now.month, 1, tzinfo=UTC)
        if last < month_start.strftime("%Y-%m-%dT%H:%M:%SZ"):
            t = datetime.fromisoformat(last.replace("Z", "+00:00"))
            month_start = datetime(t.year, t.month, 1, tzinfo=UTC)
        month_end = datetime(month_start.year + (month_start.month == 12),
                             month_start.month % 12 + 1, 1, tzinfo=UTC)
        try:
            result = build_calls(ws, ports[name], month_start, month_end)
        except ReportError:
            continue
        month = result.months[0]
        counts = monthly_counts(result)[month.month]
        barrels = sum(c.barrels.central for c in result.calls
                      if c.barrels and c.month == month.month)
        out.append({"port": name, "month": month.month, "current": month_start.month == now.month
                    and month_start.year == now.year, "state": month.state,
                    "scenes": month.scenes, "cloud_blocked": month.cloud_blocked, **counts,
                    "barrels": barrels, "simulated": result.simulated,
                    "report": (default_report_dir(ws, name) / "report.html").is_file()})
    return out
