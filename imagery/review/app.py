"""The analyst review web app: `create_app(workspace)` and `serve(...)` behind `berthwatch review`.

Server-rendered pages (Jinja2, autoescaped) with one small local script; no asset leaves the
machine. Who may reach it and what a request may carry: security.py. Alert ids are validated
and looked up; files are only scenes and plots resolved inside the workspace (there is no
endpoint that takes a path).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from pathlib import Path
from urllib.parse import quote, unquote, urlencode

import jinja2
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from imagery.alerts import no_coverage_scenes
from imagery.csv_cells import csv_row
from imagery.pipeline import open_workspace
from imagery.review import db as review_db
from imagery.review import media as review_media
from imagery.review import vessel_type
from imagery.review.security import (
    MAX_BODY_BYTES,
    BodyLimit,
    check_bind,
    check_token,
    checked_form,
    install_security,
)
from imagery.scene import parse_time
from imagery.workspace import Workspace, WorkspaceReadOnly

HERE = Path(__file__).resolve().parent
ANALYST_COOKIE = "bw_analyst"
# A scene id comes from a catalogue or a file name and may hold spaces or `/`: any printable
# text, then `#<det_id>`. The id is only ever looked up in the database, never made a path.
ALERT_ID = re.compile(r"^[^\x00-\x1f\x7f]{1,200}#\d{1,9}$")
MESSAGE = re.compile(r"^recorded: [a-z]{3,9}( [ad]\d{1,9})?$")
PORT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
MAX_NOTE, MAX_ANALYST = 2000, 80


def serve(workspace: str | os.PathLike | None, host: str = "127.0.0.1", port: int = 8000,
          token: str | None = None, ports_dir: str | os.PathLike | None = None) -> None:
    """Run the app with uvicorn until interrupted."""
    import uvicorn

    check_bind(host, token)
    app = create_app(workspace, token=token, ports_dir=ports_dir)
    shown = f"[{host}]" if ":" in host else host
    print(f"berthwatch review: http://{shown}:{port}/  (workspace {app.state.ws.root})")
    if token:
        print("  token required: open the address once with ?token=<token> (it becomes a "
              "cookie), or send Authorization: Bearer <token>")
    uvicorn.run(app, host=host, port=port, log_level="warning", server_header=False)


# --- the app ---------------------------------------------------------------------------------


def create_app(workspace_path: str | os.PathLike | None, token: str | None = None,
               ports_dir: str | os.PathLike | None = None) -> FastAPI:
    """The review app over one workspace; `token` turns on token authentication; `ports_dir`
    is where the port overview finds zones (default: the shipped ports)."""
    if token is not None:
        check_token(token)
    ws = open_workspace(workspace_path)
    review_db.ensure_schema(ws)
    app = FastAPI(title="berthwatch review", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.ws = ws
    app.state.ports_dir = ports_dir
    app.state.templates = _templates()
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    # Added first, so it sits inside the security middleware: the route reads the body
    # through BodyLimit's receive directly and its refusal is caught before any task group.
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)
    install_security(app, token)
    _install_read_only(app)
    # Alert routes take the id as a `path` (it may hold `/`); the routes with a suffix come
    # first, so the page route never swallows `.../chip.png` (an id always ends in `#<n>`).
    _install_files(app)
    _install_actions(app)
    vessel_type.install(app)  # vessel-type choice, port figures, report pages
    _install_pages(app)
    return app


def _install_read_only(app: FastAPI) -> None:
    @app.exception_handler(WorkspaceReadOnly)
    async def read_only(request: Request, exc: WorkspaceReadOnly):
        # Verdicts and edits on a read-only workspace: refused whole, nothing half-written.
        return PlainTextResponse(f"409: not recorded: {exc}", status_code=409)


def _templates() -> Jinja2Templates:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined)
    env.filters["q"] = lambda value: quote(str(value), safe="")
    env.filters["num"] = _number
    return Jinja2Templates(env=env)


def _number(value: object, digits: int = 0) -> str:
    return "-" if value is None else f"{float(value):.{digits}f}"



# --- lookups ---------------------------------------------------------------------------------


def _ws(request: Request) -> Workspace:
    return request.app.state.ws


def load_alert(request: Request, alert_id: str) -> dict:
    if not ALERT_ID.match(alert_id):
        raise HTTPException(404, "no such alert")
    alert = review_db.get_alert(_ws(request), alert_id)
    if alert is None:
        raise HTTPException(404, "no such alert")
    return alert


def _view(request: Request, alert: dict) -> review_media.AlertView:
    try:
        return review_media.alert_view(_ws(request), alert)
    except review_media.MediaError as exc:
        raise HTTPException(404, str(exc)) from None


def _render(request: Request, name: str, **context) -> Response:
    context.update(csrf=request.state.csrf, analyst=_analyst_cookie(request))
    return request.app.state.templates.TemplateResponse(request, name, context)


def _analyst_cookie(request: Request) -> str:
    return unquote(request.cookies.get(ANALYST_COOKIE, ""))[:MAX_ANALYST]


def alert_url(alert_id: str) -> str:
    return f"/alerts/{quote(alert_id, safe='')}"


# --- pages -----------------------------------------------------------------------------------


def _queue_filters(request: Request) -> dict:
    params = request.query_params
    port = params.get("port") or None
    status = params.get("status") if params.get("status") in review_db.STATUSES else None
    try:
        min_score = float(params["min_score"]) if params.get("min_score") else None
    except ValueError:
        min_score = None
    return {"port": port, "status": status, "min_score": min_score}


def _ports_with_alerts(ws: Workspace) -> list[dict]:
    """Every port with reconciled scenes or alerts, with its alert count (a port where no
    alert was raised still has a timeline worth seeing)."""
    conn = ws.connect()
    try:
        rows = conn.execute(
            "SELECT p.port, COALESCE(MAX(s.simulated), 0) AS simulated,"
            " (SELECT COUNT(*) FROM alerts a WHERE a.port = p.port) AS n"
            " FROM (SELECT port FROM zone_counts UNION SELECT port FROM alerts) p"
            " LEFT JOIN scenes s ON s.port = p.port GROUP BY p.port ORDER BY p.port").fetchall()
    finally:
        conn.close()
    return [dict(r) for r in rows]


def _install_pages(app: FastAPI) -> None:
    @app.get("/")
    def queue(request: Request):
        filters = _queue_filters(request)
        ws = _ws(request)
        alerts = review_db.list_alerts(ws, **filters)
        # Scenes without AIS coverage raise no alert: the queue says so rather than look empty.
        no_coverage = no_coverage_scenes(ws, port=filters["port"] or None)
        return _render(request, "queue.html", alerts=alerts, filters=filters,
                       ports=_ports_with_alerts(ws), statuses=review_db.STATUSES,
                       no_coverage=no_coverage)

    @app.get("/alerts/{alert_id:path}")
    def alert_page(request: Request, alert_id: str):
        alert = load_alert(request, alert_id)
        view = _view(request, alert)
        ws = _ws(request)
        considered = _considered(view)
        return _render(request, "alert.html", a=alert, view=view, scene=_scene_meta(ws, alert),
                       considered=considered, placed=_placed(view),
                       ais_verdict=_ais_verdict(considered),
                       vessels=view.vessels, neighbours=_neighbours(ws, alert),
                       history=review_db.audit_trail(ws, alert_id),
                       verdicts=review_db.VERDICTS, message=_message(request))


def _message(request: Request) -> str | None:
    """Only the app's own confirmations are shown: a crafted link cannot put words on the
    page."""
    text = request.query_params.get("msg", "")
    return text if MESSAGE.match(text) else None


def _scene_meta(ws: Workspace, alert: dict) -> dict:
    conn = ws.connect()
    try:
        row = conn.execute("SELECT s.*, p.model AS p_model, p.weights_sha256 AS p_sha"
                           " FROM scenes s LEFT JOIN processing p ON p.scene_id = s.scene_id"
                           " WHERE s.scene_id = ?", (alert["scene_id"],)).fetchone()
    finally:
        conn.close()
    meta = dict(row) if row else {"scene_id": alert["scene_id"]}
    meta["model"] = alert["model"] or meta.get("p_model")
    meta["weights_sha256"] = alert["weights_sha256"] or meta.get("p_sha")
    return meta


def _considered(view: review_media.AlertView) -> list[dict]:
    out = []
    for c in view.alert["considered"]:
        info = view.names.get(c["mmsi"])
        out.append(dict(c, name=(info.name if info and info.name else c.get("name")),
                        imo=info.imo if info else None,
                        watchlist=bool(info and info.watchlist)))
    return out


def _ais_verdict(considered: list[dict]) -> str:
    """One sentence: what AIS said about this vessel at the acquisition time."""
    if not considered:
        return "no AIS vessel was within reach at the acquisition time: none declares it"
    nearest = min(considered, key=lambda c: c.get("distance_m") or float("inf"))
    name = nearest.get("name") or f"MMSI {nearest['mmsi']}"
    distance = _number(nearest.get("distance_m"))
    why = f": {nearest['refused']}" if nearest.get("refused") else ""
    return (f"no AIS vessel paired; {len(considered)} considered, the nearest {name} at "
            f"{distance} m{why}")


def _placed(view: review_media.AlertView) -> list[dict]:
    a = view.alert
    rows = []
    for p in view.placed_in_chip():
        info = view.names.get(p.mmsi)
        rows.append({"mmsi": p.mmsi, "name": info.name if info else None, "method": p.method,
                     "fix_age_min": p.fix_age_s / 60.0,
                     "distance_m": review_media._metres(a["lon"], a["lat"], p.lon, p.lat)})
    return sorted(rows, key=lambda r: r["distance_m"])


def _neighbours(ws: Workspace, alert: dict) -> list[dict]:
    out = []
    for which, scene in review_media.neighbour_scenes(ws, alert["port"],
                                                      alert["acquisition_time"]).items():
        if scene is None:
            continue
        other = review_media.nearest_alert(ws, scene["scene_id"], alert["lon"], alert["lat"])
        out.append(dict(scene, which=which, alert_id=other))
    return out


# --- actions ---------------------------------------------------------------------------------


def _analyst(form: dict[str, str]) -> str:
    name = " ".join(form.get("analyst", "").split())[:MAX_ANALYST]
    if not name:
        raise HTTPException(400, "give your name as analyst")
    return name


def _back(alert_id: str, analyst: str, message: str) -> RedirectResponse:
    response = RedirectResponse(f"{alert_url(alert_id)}?{urlencode({'msg': message})}",
                                status_code=303)
    response.set_cookie(ANALYST_COOKIE, quote(analyst, safe=""), max_age=180 * 86400,
                        httponly=True, samesite="strict")
    return response


def _install_actions(app: FastAPI) -> None:
    @app.post("/alerts/{alert_id:path}/verdict")
    async def verdict(request: Request, alert_id: str):
        form = await checked_form(request)
        alert = load_alert(request, alert_id)
        analyst, choice = _analyst(form), form.get("verdict", "")
        if choice not in review_db.VERDICTS:
            raise HTTPException(400, f"verdict must be one of {', '.join(review_db.VERDICTS)}")
        review_db.record(_ws(request), scene_id=alert["scene_id"], action="verdict",
                         analyst=analyst, alert_id=alert_id, det_id=alert["det_id"],
                         verdict=choice, note=form.get("note", "")[:MAX_NOTE])
        return _back(alert_id, analyst, f"recorded: {choice}")

    @app.post("/alerts/{alert_id:path}/vessels")
    async def vessels(request: Request, alert_id: str):
        form = await checked_form(request)
        alert = load_alert(request, alert_id)
        analyst = _analyst(form)
        view = _view(request, alert)
        message = _apply_vessel_edit(_ws(request), view, form, analyst)
        return _back(alert_id, analyst, message)


def _apply_vessel_edit(ws: Workspace, view: review_media.AlertView, form: dict[str, str],
                       analyst: str) -> str:
    """op = `delete:<ref>`, or `chip` with mode `add` | `move:<ref>` at px_x, px_y."""
    op = form.get("op", "")
    mode = form.get("mode", "add") if op == "chip" else op
    action, _, ref = mode.partition(":")
    known = {v.ref: v for v in view.vessels}
    if action in ("move", "delete") and (ref not in known or known[ref].state == "deleted"):
        raise HTTPException(400, "no such vessel in this scene")
    if action not in review_db.EDIT_ACTIONS or (action == "add" and ref):
        raise HTTPException(400, "unknown action")
    payload: dict = {"target": ref} if ref else {}
    if action in ("add", "move"):
        payload.update(_position(view, form))
    if action == "add" and form.get("length_m"):
        payload["length_m"] = _float(form["length_m"], "length_m", 1.0, 500.0)
    target = known.get(ref)
    review_db.record(ws, scene_id=view.alert["scene_id"], action=action, analyst=analyst,
                     alert_id=view.alert["alert_id"], det_id=target.det_id if target else None,
                     note=form.get("note", "")[:MAX_NOTE], payload=payload)
    return f"recorded: {action} {ref}".strip()


def _float(text: str, name: str, low: float, high: float) -> float:
    try:
        value = float(text)
    except ValueError:
        raise HTTPException(400, f"{name} is not a number") from None
    if not low <= value <= high:
        raise HTTPException(400, f"{name} must lie between {low:g} and {high:g}")
    return value


def _position(view: review_media.AlertView, form: dict[str, str]) -> dict:
    """Scene pixel coordinates from the click, checked to lie in the scene, with lon/lat."""
    px = _float(form.get("px_x", ""), "px_x", 0.0, float(view.info.width))
    py = _float(form.get("px_y", ""), "px_y", 0.0, float(view.info.height))
    lon, lat = review_media.to_lonlat(view.info, px, py)
    return {"px_x": round(px, 2), "px_y": round(py, 2), "lon": lon, "lat": lat}


# --- files -----------------------------------------------------------------------------------


def _png(data: bytes) -> Response:
    return Response(data, media_type="image/png")


def _install_files(app: FastAPI) -> None:
    @app.get("/alerts/{alert_id:path}/chip.png")
    def chip(request: Request, alert_id: str, bands: str = "true"):
        if bands not in ("true", "false"):
            raise HTTPException(400, "bands must be true or false")
        return _png(_view(request, load_alert(request, alert_id)).chip(bands))

    @app.get("/alerts/{alert_id:path}/clean.png")
    def clean_chip(request: Request, alert_id: str):
        return _png(_view(request, load_alert(request, alert_id)).clean_chip())

    @app.get("/alerts/{alert_id:path}/overview.png")
    def overview(request: Request, alert_id: str):
        view = _view(request, load_alert(request, alert_id))
        return _png(_overview(_ws(request), view, request.app.state.ports_dir))

    @app.get("/alerts/{alert_id:path}/neighbour/{which}.png")
    def neighbour(request: Request, alert_id: str, which: str):
        alert = load_alert(request, alert_id)
        return _png(_neighbour_chip(_ws(request), alert, which))

    @app.get("/alerts/{alert_id:path}/evidence.zip")
    def evidence(request: Request, alert_id: str):
        alert = load_alert(request, alert_id)
        data = review_media.evidence_zip(_ws(request), _view(request, alert))
        name = re.sub(r"[^A-Za-z0-9._-]", "_", alert_id)
        return Response(data, media_type="application/zip", headers={
            "Content-Disposition": f'attachment; filename="evidence-{name}.zip"'})

    @app.get("/timeline/{port}.png")
    def timeline(request: Request, port: str):
        return _timeline(_ws(request), port)

    @app.get("/export/confirmed.csv")
    def confirmed_csv(request: Request):
        return Response(confirmed_as_csv(_ws(request)), media_type="text/csv", headers={
            "Content-Disposition": 'attachment; filename="confirmed.csv"'})

    @app.get("/export/confirmed.geojson")
    def confirmed_geojson(request: Request):
        body = json.dumps(confirmed_as_geojson(_ws(request)), indent=1)
        return Response(body, media_type="application/geo+json", headers={
            "Content-Disposition": 'attachment; filename="confirmed.geojson"'})


def _neighbour_chip(ws: Workspace, alert: dict, which: str) -> bytes:
    scene = review_media.neighbour_scenes(ws, alert["port"], alert["acquisition_time"]).get(which)
    if scene is None:
        raise HTTPException(404, "no such neighbour scene")
    try:
        info = review_media.scene_info(ws, scene["scene_id"])
    except review_media.MediaError as exc:
        raise HTTPException(404, str(exc)) from None
    win = review_media.window_around(*review_media.to_pixel(info, alert["lon"], alert["lat"]),
                                     scale=review_media.NEIGHBOUR_SCALE)
    vessels = review_db.scene_vessels(ws, scene["scene_id"])
    return review_media.render_chip(info, win, "true", vessels)


def _overview(ws: Workspace, view: review_media.AlertView,
              ports_dir: str | os.PathLike | None) -> bytes:
    """The whole scene with zones, vessels and every AIS position placed at its time."""
    info = view.info
    whole = review_media.ChipWindow(0, 0, max(info.width, info.height), 1)
    when = parse_time(view.alert["acquisition_time"])
    placements, _ = review_media.ais_context(ws, info, whole, when)
    port = review_media.port_geometry(view.alert["port"], ports_dir)
    return review_media.render_overview(info, view.vessels, placements, view.focus, port)


def _timeline(ws: Workspace, port: str) -> Response:
    ports = {p["port"]: p for p in _ports_with_alerts(ws)}
    if not PORT_NAME.match(port) or port not in ports:
        raise HTTPException(404, "no timeline for that port")
    path = review_media.timeline_png(ws, port, simulated=bool(ports[port]["simulated"]))
    if path is None or not path.resolve().is_relative_to(ws.root):
        raise HTTPException(404, "no timeline for that port")
    return FileResponse(path, media_type="image/png")


# --- exports ---------------------------------------------------------------------------------

CONFIRMED_COLUMNS = ("alert_id", "port", "zone", "acquisition_time", "lon", "lat", "score",
                     "length_m", "episode_id", "first_seen", "last_seen", "analyst",
                     "verdict_at", "note", "model", "weights_sha256", "simulated")


def confirmed_as_csv(ws: Workspace) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CONFIRMED_COLUMNS)
    for row in review_db.confirmed_calls(ws):
        writer.writerow(csv_row(row.get(c) for c in CONFIRMED_COLUMNS))
    return out.getvalue()


def confirmed_as_geojson(ws: Workspace) -> dict:
    features = []
    for row in review_db.confirmed_calls(ws):
        props = {c: row.get(c) for c in CONFIRMED_COLUMNS if c not in ("lon", "lat")}
        props.update(reasons=row["reasons"], ais_considered=row["considered"])
        features.append({"type": "Feature", "properties": props,
                         "geometry": {"type": "Point", "coordinates": [row["lon"], row["lat"]]}})
    return {"type": "FeatureCollection", "features": features}
