"""What the review pages show and export: annotated chips, AIS context, timelines, evidence.

Everything is rendered on demand from the scene GeoTIFF and the database, so a page always
shows the current state of the reviews; only the timeline PNG is cached (keyed by a digest of
its data, so a new scene or alert makes a new plot).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import re
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont
from pyproj import Transformer

from imagery import ais
from imagery.csv_cells import csv_row
from imagery.pipeline import CHIP_HALF
from imagery.ports import Port, PortsError, get_port
from imagery.reconcile import AisFix, Gates, Placement, place_vessels
from imagery.render import (
    FALSE_COLOUR,
    TRUE_COLOUR,
    chip_rgb,
    mark_simulated,
    png_with_provenance,
    timeline_plot,
)
from imagery.review import db as review_db
from imagery.scene import SceneInfo, open_scene, parse_time
from imagery.workspace import Workspace, utc_now

SCALE = 4  # screen pixels per scene pixel: a 10 px vessel is 40 px on screen
NEIGHBOUR_SCALE = 2
# AIS fixes are looked up this far around the chip, so a vessel interpolated into the chip
# from fixes outside it is still placed.
AIS_MARGIN_DEG = 0.2
COLOURS = {"focus": (255, 40, 40), "model": (255, 170, 0), "added": (60, 230, 60),
           "moved": (60, 230, 60), "deleted": (150, 150, 150), "ais": (0, 255, 255)}


class MediaError(ValueError):
    """A scene that cannot be rendered (missing file, outside the workspace)."""


@dataclass(frozen=True)
class ChipWindow:
    """A square of the scene: scene pixels [col0, col0 + size) x [row0, row0 + size)."""

    col0: int
    row0: int
    size: int
    scale: int = SCALE

    def to_screen(self, px: float, py: float) -> tuple[float, float]:
        return (px - self.col0) * self.scale, (py - self.row0) * self.scale

    def contains(self, px: float, py: float) -> bool:
        return self.col0 <= px < self.col0 + self.size and self.row0 <= py < self.row0 + self.size


def to_pixel(info: SceneInfo, lon: float, lat: float) -> tuple[float, float]:
    x, y = Transformer.from_crs("EPSG:4326", info.crs, always_xy=True).transform(lon, lat)
    col, row = ~info.transform * (x, y)
    return float(col), float(row)


def to_lonlat(info: SceneInfo, px: float, py: float) -> tuple[float, float]:
    x, y = info.transform * (px, py)
    lon, lat = Transformer.from_crs(info.crs, "EPSG:4326", always_xy=True).transform(x, y)
    return round(float(lon), 7), round(float(lat), 7)


def window_around(px: float, py: float, half: int = CHIP_HALF, scale: int = SCALE) -> ChipWindow:
    return ChipWindow(int(round(px)) - half, int(round(py)) - half, 2 * half, scale)


def scene_info(ws: Workspace, scene_id: str) -> SceneInfo:
    """The scene's GeoTIFF, only if it lies inside the workspace (a path from the database
    is still never trusted to point elsewhere)."""
    conn = ws.connect()
    try:
        row = conn.execute("SELECT path FROM scenes WHERE scene_id = ?", (scene_id,)).fetchone()
    finally:
        conn.close()
    if row is None or not row["path"]:
        raise MediaError(f"scene {scene_id!r} has no stored file")
    path = ws.resolve(row["path"]).resolve()
    if not path.is_relative_to(ws.root) or not path.is_file():
        raise MediaError(f"scene {scene_id!r}: file missing or outside the workspace")
    return open_scene(path, require_bands=None)


# --- AIS around an alert ---------------------------------------------------------------------


def _lonlat_box(info: SceneInfo, win: ChipWindow) -> tuple[float, float, float, float]:
    corners = [to_lonlat(info, win.col0 + dx, win.row0 + dy)
               for dx in (0, win.size) for dy in (0, win.size)]
    lons, lats = [c[0] for c in corners], [c[1] for c in corners]
    return (min(lons) - AIS_MARGIN_DEG, min(lats) - AIS_MARGIN_DEG,
            max(lons) + AIS_MARGIN_DEG, max(lats) + AIS_MARGIN_DEG)


def ais_context(ws: Workspace, info: SceneInfo, win: ChipWindow, when: datetime,
                gates: Gates | None = None) -> tuple[list[Placement], list[ais.AisPosition]]:
    """AIS placements at the acquisition time (the reconciliation's rules) near the chip, and
    the raw fixes they came from."""
    gates = gates or Gates()
    margin = max(gates.moored_hold, gates.interpolate_max_gap)
    conn = ws.connect()
    try:
        rows = ais.positions_near(conn, *_lonlat_box(info, win), when - margin, when + margin)
    finally:
        conn.close()
    fixes = [AisFix(r.mmsi, r.time, r.lon, r.lat, r.sog_kn, r.nav_status) for r in rows]
    return place_vessels(fixes, when, gates), rows


def vessel_names(ws: Workspace, mmsis: set[int]) -> dict[int, ais.VesselInfo]:
    conn = ws.connect()
    try:
        found = {m: ais.vessel_info(conn, m) for m in sorted(mmsis)}
    finally:
        conn.close()
    return {m: v for m, v in found.items() if v is not None}


# --- chips -----------------------------------------------------------------------------------


def render_chip(info: SceneInfo, win: ChipWindow, bands: str = "true",
                vessels: list[review_db.Vessel] = (), placements: list[Placement] = (),
                focus: str | None = None) -> bytes:
    """PNG of the window, upsampled, with the vessels and AIS placements drawn over it (none
    given: the clean chip, where a vessel of a few pixels is not hidden by its ring); a strip
    below gives the date and a scale bar."""
    rgb = chip_rgb(info, win.col0, win.row0, win.size,
                   FALSE_COLOUR if bands == "false" else TRUE_COLOUR)
    image = Image.fromarray(rgb).resize((win.size * win.scale,) * 2, Image.NEAREST)
    draw = ImageDraw.Draw(image)
    for placed in placements:
        x, y = win.to_screen(*to_pixel(info, placed.lon, placed.lat))
        draw.rectangle((x - 6, y - 6, x + 6, y + 6), outline=COLOURS["ais"], width=2)
    for v in vessels:
        _draw_vessel(draw, win, v, v.ref == focus)
    return finish_picture(image, info, info.pixel_size_m / win.scale)


CAPTION_PX = 24  # the strip below every picture: date (UTC) and scale bar
SCALE_BARS_M = (20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)


def finish_picture(image: Image.Image, info: SceneInfo, metres_per_px: float) -> bytes:
    """The picture with its caption strip (acquisition date and a scale bar) and, for a
    simulated scene, the SIMULATED band, as PNG bytes whose text chunks name the scene."""
    out = Image.new("RGB", (image.width, image.height + CAPTION_PX), (20, 24, 30))
    out.paste(image, (0, 0))
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default(size=12)
    when = info.acquisition_time
    date = when.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC") if when else "undated"
    draw.text((5, image.height + 5), date, fill=(255, 255, 255), font=font)
    bar_m = max((m for m in SCALE_BARS_M if m / metres_per_px <= image.width / 3),
                default=SCALE_BARS_M[0])
    bar_px = bar_m / metres_per_px
    right, y = image.width - 8, image.height + CAPTION_PX // 2
    label = f"{bar_m} m" if bar_m < 1000 else f"{bar_m // 1000} km"
    draw.line((right - bar_px, y, right, y), fill=(255, 255, 255), width=3)
    for x in (right - bar_px, right):
        draw.line((x, y - 5, x, y + 5), fill=(255, 255, 255), width=2)
    width = draw.textlength(label, font=font)
    draw.text((right - bar_px - width - 10, image.height + 5), label, fill=(255, 255, 255),
              font=font)
    marked = mark_simulated(out, info.simulated)
    return png_with_provenance(marked, info.scene_id, info.simulated)


# --- port overview ---------------------------------------------------------------------------

OVERVIEW_PX = 640  # the longer side of the overview picture
ZONE_COLOURS = {"aoi": (255, 255, 255), "berth": (255, 230, 0), "anchorage": (120, 170, 255)}


def render_overview(info: SceneInfo, vessels: list[review_db.Vessel],
                    placements: list[Placement], focus: str | None,
                    port: Port | None) -> bytes:
    """The whole scene (the port's AOI) with its zones, the scene's vessels and the AIS
    positions at acquisition time; this alert's vessel ringed in red."""
    side = max(info.width, info.height)
    factor = OVERVIEW_PX / side
    rgb = chip_rgb(info, 0, 0, side, TRUE_COLOUR)
    resample = Image.NEAREST if factor >= 1 else Image.BILINEAR
    image = Image.fromarray(rgb).resize((OVERVIEW_PX,) * 2, resample)
    image = image.crop((0, 0, round(info.width * factor), round(info.height * factor)))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=12)

    def screen(lon: float, lat: float) -> tuple[float, float]:
        px, py = to_pixel(info, lon, lat)
        return px * factor, py * factor

    if port is not None:
        shapes = [("aoi", port.name, port.aoi)] + [(z.kind, z.name, z.geometry)
                                                   for z in port.zones]
        for kind, name, geometry in shapes:
            colour = ZONE_COLOURS.get(kind, ZONE_COLOURS["berth"])
            for polygon in getattr(geometry, "geoms", [geometry]):
                ring = [screen(x, y) for x, y in polygon.exterior.coords]
                draw.line(ring, fill=colour, width=2)
            if kind != "aoi":
                x, y = screen(*geometry.representative_point().coords[0])
                draw.text((x + 4, y - 6), name, fill=colour, font=font)
    for placed in placements:
        x, y = screen(placed.lon, placed.lat)
        draw.rectangle((x - 4, y - 4, x + 4, y + 4), outline=COLOURS["ais"], width=2)
    for v in vessels:
        x, y = v.px_x * factor, v.px_y * factor
        if v.ref == focus:
            draw.ellipse((x - 11, y - 11, x + 11, y + 11), outline=COLOURS["focus"], width=3)
        elif v.state == "deleted":
            draw.line((x - 4, y - 4, x + 4, y + 4), fill=COLOURS["deleted"], width=2)
            draw.line((x - 4, y + 4, x + 4, y - 4), fill=COLOURS["deleted"], width=2)
        else:
            colour = COLOURS.get(v.state, COLOURS[v.origin])
            draw.ellipse((x - 5, y - 5, x + 5, y + 5), outline=colour, width=2)
    return finish_picture(image, info, info.pixel_size_m / factor)


def port_geometry(name: str, ports_dir: str | os.PathLike | None = None) -> Port | None:
    """The port's zones, or None where the ports files do not know it (the overview then
    shows the scene without them)."""
    try:
        return get_port(name, ports_dir)
    except PortsError:
        return None


def _draw_vessel(draw: ImageDraw.ImageDraw, win: ChipWindow, v: review_db.Vessel,
                 focus: bool) -> None:
    if not win.contains(v.px_x, v.px_y):
        return
    x, y = win.to_screen(v.px_x, v.px_y)
    if v.state == "deleted":
        colour = COLOURS["deleted"]
        draw.line((x - 8, y - 8, x + 8, y + 8), fill=colour, width=2)
        draw.line((x - 8, y + 8, x + 8, y - 8), fill=colour, width=2)
    else:
        colour = COLOURS["focus"] if focus else COLOURS.get(v.state, COLOURS[v.origin])
        r = 18 if focus else 12
        draw.ellipse((x - r, y - r, x + r, y + r), outline=colour, width=3 if focus else 2)
    draw.text((x + 14, y - 20), v.ref, fill=colour)


def neighbour_scenes(ws: Workspace, port: str, when: str) -> dict[str, dict | None]:
    """The stored scenes of the port just before and just after `when`."""
    conn = ws.connect()
    try:
        query = ("SELECT scene_id, acquisition_time, cloud_fraction FROM scenes WHERE port = ?"
                 " AND status = 'stored' AND acquisition_time {op} ? ORDER BY acquisition_time"
                 " {order}, scene_id LIMIT 1")
        prev = conn.execute(query.format(op="<", order="DESC"), (port, when)).fetchone()
        nxt = conn.execute(query.format(op=">", order="ASC"), (port, when)).fetchone()
    finally:
        conn.close()
    return {"previous": dict(prev) if prev else None, "next": dict(nxt) if nxt else None}


def nearest_alert(ws: Workspace, scene_id: str, lon: float, lat: float,
                  within_m: float = 500.0) -> str | None:
    """The alert of a scene nearest a position, if one lies within `within_m`."""
    conn = ws.connect()
    try:
        rows = conn.execute("SELECT alert_id, lon, lat FROM alerts WHERE scene_id = ?",
                            (scene_id,)).fetchall()
    finally:
        conn.close()
    best = min(rows, key=lambda r: _metres(lon, lat, r["lon"], r["lat"]), default=None)
    if best is None or _metres(lon, lat, best["lon"], best["lat"]) > within_m:
        return None
    return best["alert_id"]


def _metres(lon1: float, lat1: float, lon2: float, lat2: float) -> float:
    dx = (lon2 - lon1) * 111_320.0 * math.cos(math.radians((lat1 + lat2) / 2))
    return math.hypot(dx, (lat2 - lat1) * 110_574.0)


# --- timeline --------------------------------------------------------------------------------


def timeline_rows(ws: Workspace, port: str) -> list[dict]:
    """Per scene of the port: berth totals (detected None when any berth was hidden)."""
    conn = ws.connect()
    try:
        zones = conn.execute(
            "SELECT z.scene_id, s.acquisition_time, z.detected, z.ais FROM zone_counts z"
            " JOIN scenes s ON s.scene_id = z.scene_id WHERE z.port = ? AND z.kind = 'berth'"
            " ORDER BY s.acquisition_time, z.scene_id, z.zone", (port,)).fetchall()
        alerts = dict(conn.execute("SELECT scene_id, COUNT(*) FROM alerts WHERE port = ?"
                                   " GROUP BY scene_id", (port,)).fetchall())
    finally:
        conn.close()
    rows: dict[str, dict] = {}
    for z in zones:
        row = rows.setdefault(z["scene_id"], {"port": port, "time": z["acquisition_time"],
                                              "detected": 0, "ais": 0,
                                              "alerts": alerts.get(z["scene_id"], 0)})
        row["ais"] += z["ais"]
        row["detected"] = None if row["detected"] is None or z["detected"] is None \
            else row["detected"] + z["detected"]
    return list(rows.values())


def timeline_png(ws: Workspace, port: str, simulated: bool = False) -> Path | None:
    """The port's timeline plot, drawn once per distinct data; None when nothing to plot."""
    rows = timeline_rows(ws, port)
    if not rows:
        return None
    # "v2": plots cached before simulated ones carried their band are drawn again.
    key = json.dumps([rows, simulated, "v2"], sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()
    folder = ws.root / "review" / "timeline"
    path = folder / f"{port}-{digest[:16]}.png"
    if path.is_file():
        return path
    if ws.read_only:  # no plot can be drawn into a read-only workspace
        return None
    for old in folder.glob(f"{port}-*.png"):  # an older plot of this port is out of date
        # (only this port's: `nakhodka-*` also matches port `nakhodka-oil`'s plots)
        if re.fullmatch(rf"{re.escape(port)}-[0-9a-f]{{16}}\.png", old.name):
            old.unlink(missing_ok=True)
    title = f"{port}: vessels at berths per scene" + ("  (SIMULATED)" if simulated else "")
    plot_rows = [dict(r, time=parse_time(r["time"])) for r in rows]
    timeline_plot(plot_rows, path, title)
    # Marked like every picture of simulated scenes: band and text chunks (the scene_id chunk
    # names the port, `port:<name>`: a timeline is of many scenes).
    with Image.open(path) as plot:
        marked = mark_simulated(plot.convert("RGB"), simulated)
    tmp = path.with_name(f".{path.name}.marked")
    tmp.write_bytes(png_with_provenance(marked, f"port:{port}", simulated))
    os.replace(tmp, path)
    return path


# --- evidence package ------------------------------------------------------------------------


def detections_geojson(alert: dict, vessels: list[review_db.Vessel]) -> dict:
    """The scene's detections (and analysts' edits) as a GeoJSON FeatureCollection."""
    features = [{
        "type": "Feature",
        "geometry": {"type": "Point", "coordinates": [v.lon, v.lat]},
        "properties": {"ref": v.ref, "det_id": v.det_id, "origin": v.origin, "state": v.state,
                       "score": v.score, "length_m": v.length_m, "width_m": v.width_m,
                       "heading_deg": v.heading_deg, "zone": v.zone, "px_x": v.px_x,
                       "px_y": v.px_y, "alert_id": v.alert_id, "verdict": v.verdict},
    } for v in vessels]
    props = {k: alert.get(k) for k in ("scene_id", "acquisition_time", "port", "model",
                                       "weights_sha256", "simulated")}
    return {"type": "FeatureCollection", "properties": props, "features": features}


AIS_CSV_COLUMNS = ("mmsi", "name", "imo", "length_m", "time", "lon", "lat", "sog_kn", "cog_deg",
                   "heading_deg", "nav_status", "msg_type", "source_file")


def ais_csv(rows: list[ais.AisPosition], names: dict[int, ais.VesselInfo]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(AIS_CSV_COLUMNS)
    for r in rows:
        info = names.get(r.mmsi)
        # Every cell, not only the name: the source file's name is external text too.
        writer.writerow(csv_row((
            r.mmsi, info.name if info else None, info.imo if info else None,
            info.length_m if info else None,
            r.time.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), r.lon, r.lat,
            r.sog_kn, r.cog_deg, r.heading_deg, r.nav_status, r.msg_type,
            Path(r.source_file).name)))
    return out.getvalue()


@dataclass
class AlertView:
    """Everything one alert page and its evidence package need."""

    alert: dict
    info: SceneInfo
    window: ChipWindow
    vessels: list[review_db.Vessel]
    placements: list[Placement]
    positions: list[ais.AisPosition]
    names: dict[int, ais.VesselInfo]

    @property
    def focus(self) -> str:
        return f"d{self.alert['det_id']}"

    def chip(self, bands: str) -> bytes:
        return render_chip(self.info, self.window, bands, self.vessels, self.placements,
                           self.focus)

    def clean_chip(self) -> bytes:
        """The true-colour chip with nothing drawn over it."""
        return render_chip(self.info, self.window, "true")

    def used_positions(self) -> list[ais.AisPosition]:
        """Fixes of the vessels the reconciliation considered or that AIS places in the chip."""
        keep = {c["mmsi"] for c in self.alert["considered"]}
        keep |= {p.mmsi for p in self.placed_in_chip()}
        return [r for r in self.positions if r.mmsi in keep]

    def placed_in_chip(self) -> list[Placement]:
        return [p for p in self.placements
                if self.window.contains(*to_pixel(self.info, p.lon, p.lat))]


def alert_view(ws: Workspace, alert: dict) -> AlertView:
    info = scene_info(ws, alert["scene_id"])
    vessels = review_db.scene_vessels(ws, alert["scene_id"])
    # The window stays on the model's position, so moving the vessel never moves the picture
    # under the analyst's next click.
    if alert["px_x"] is not None:
        px, py = alert["px_x"], alert["px_y"]
    else:
        px, py = to_pixel(info, alert["lon"], alert["lat"])
    win = window_around(px, py)
    when = parse_time(alert["acquisition_time"])
    placements, positions = ais_context(ws, info, win, when)
    mmsis = {p.mmsi for p in placements} | {c["mmsi"] for c in alert["considered"]}
    return AlertView(alert, info, win, vessels, placements, positions, vessel_names(ws, mmsis))


def evidence_zip(ws: Workspace, view: AlertView) -> bytes:
    """The evidence package: chips, detections, AIS rows, audit trail and a manifest with the
    sha256 of every other file in the zip."""
    used = view.used_positions()
    files = {
        "chip_true.png": view.chip("true"),
        "chip_true_clean.png": view.clean_chip(),
        "chip_false.png": view.chip("false"),
        "detections.geojson": _json_bytes(detections_geojson(view.alert, view.vessels)),
        "ais_positions.csv": ais_csv(used, view.names).encode("utf-8"),
        "reviews.json": _json_bytes(review_db.audit_trail(ws, view.alert["alert_id"])),
    }
    manifest = _manifest(view, files)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as bundle:
        for name, data in {**files, "manifest.json": _json_bytes(manifest)}.items():
            bundle.writestr(name, data)
    return out.getvalue()


def _json_bytes(data: object) -> bytes:
    return (json.dumps(data, indent=1, sort_keys=True, default=str) + "\n").encode("utf-8")


def _manifest(view: AlertView, files: dict[str, bytes]) -> dict:
    a = view.alert
    return {
        "alert_id": a["alert_id"], "scene_id": a["scene_id"], "port": a["port"],
        "zone": a["zone"], "acquisition_time": a["acquisition_time"], "export_time": utc_now(),
        "lon": a["lon"], "lat": a["lat"], "score": a["score"], "length_m": a["length_m"],
        "model": a["model"], "weights_sha256": a["weights_sha256"], "reasons": a["reasons"],
        "status": a["status"], "episode_id": a["episode_id"], "simulated": a["simulated"],
        "scene_source": view.info.source,
        "ais_considered": a["considered"],
        "ais_placed_in_chip": [{"mmsi": p.mmsi, "lon": p.lon, "lat": p.lat, "method": p.method,
                                "fix_age_s": p.fix_age_s} for p in view.placed_in_chip()],
        "chip_window_px": [view.window.col0, view.window.row0, view.window.size,
                           view.window.size],
        "files": {name: hashlib.sha256(data).hexdigest() for name, data in files.items()},
    }
