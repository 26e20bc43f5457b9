"""The report as files: a per-call table as CSV and GeoJSON, and one self-contained HTML page
(charts inlined as data: URIs, styles inline, no script and nothing fetched) that an analyst
can hand on. Every external string is escaped."""

from __future__ import annotations

import base64
import csv
import io
import json
from html import escape
from pathlib import Path

from imagery.csv_cells import csv_cell
from imagery.report.calls import LITTLE_VISIBILITY_SCENES, CallsResult, PortCall, monthly_counts
from imagery.tankers import BARRELS_PER_M3, UN_ANNUAL_CAP_BARRELS

CALL_COLUMNS = ("call_id", "port", "berth", "first_seen", "last_seen", "length_m",
                "tanker", "rule", "evidence", "declared", "mmsi", "ais_name", "ais_ship_type",
                "status", "barrels_low", "barrels_central", "barrels_high", "scene_ids")

def model_limits() -> str:
    """The shipped detector's measured limits, read from its weights' metadata (the figures
    weights/MODEL_CARD.md shows), so a recalibrated model never leaves a stale sentence."""
    from imagery.detector import get_weights

    lpo = get_weights().metrics.get("leave_ports_out") or {}
    pooled, length = lpo.get("pooled") or {}, lpo.get("length_m") or {}
    if not pooled:
        return "The shipped detector's leave-ports-out figures are missing from its metadata."
    return (
        "On ports it never saw (leave-ports-out over the 11 shared sen2ships ports) the shipped "
        f"detector finds {pooled['recall']:.0%} of the labelled vessels at "
        f"{pooled['precision']:.0%} precision (F1 {pooled['f1']:.3f}); its length estimate is "
        f"off by {length.get('median_abs_error_m', float('nan')):g} m in the median (absolute "
        f"error; median error {length.get('median_error_m', float('nan')):g} m). Its "
        "detections are leads for an analyst, not counts to cite unreviewed.")


def call_row(call: PortCall) -> dict:
    b = call.barrels
    return {
        "call_id": call.call_id, "port": call.port, "berth": call.zone,
        "first_seen": call.first_seen.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "last_seen": call.last_seen.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "length_m": call.length_m, "tanker": call.tanker, "rule": call.rule,
        "evidence": call.evidence.describe() if call.evidence else "",
        "declared": call.declared, "mmsi": call.mmsi, "ais_name": call.ais_name,
        "ais_ship_type": call.ais_ship_type, "status": call.status,
        "barrels_low": round(b.low) if b else None,
        "barrels_central": round(b.central) if b else None,
        "barrels_high": round(b.high) if b else None,
        "scene_ids": " ".join(call.scene_ids),
    }


def calls_csv(result: CallsResult) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CALL_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for call in result.calls:
        writer.writerow({k: csv_cell(v) for k, v in call_row(call).items()})
    return buffer.getvalue()


def calls_geojson(result: CallsResult) -> dict:
    features = [{"type": "Feature", "geometry": {"type": "Point", "coordinates": [c.lon, c.lat]},
                 "properties": call_row(c) | {"simulated": result.simulated}}
                for c in result.calls]
    return {"type": "FeatureCollection", "features": features,
            "properties": {"port": result.port.name, "simulated": result.simulated,
                           "from": result.start.strftime("%Y-%m-%d"),
                           "to": result.end.strftime("%Y-%m-%d")}}


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{escape(alt)}">'


def _months_table(result: CallsResult) -> str:
    counts = monthly_counts(result)
    rows = []
    for m in result.months:
        c = counts[m.month]
        if m.state == "not seen":
            figures = '<td colspan="5" class="notseen">not seen: no scene saw the berths</td>'
        else:
            total = sum(call.barrels.central for call in result.calls
                        if call.barrels and call.month == m.month)
            figures = "".join(f"<td>{c[k]}</td>" for k in
                              ("detected", "declared", "undeclared", "confirmed"))
            figures += f"<td>{total:,.0f}</td>"
        rows.append(f"<tr><td>{m.month}</td><td>{m.scenes}</td><td>{m.cloud_blocked}</td>"
                    f"<td>{m.seen}</td><td>{escape(m.state)}</td>{figures}</tr>")
    return ("<table><tr><th>month</th><th>scenes</th><th>cloud-blocked</th><th>saw the berths"
            "</th><th>visibility</th><th>tanker calls</th><th>AIS-declared</th><th>undeclared"
            "</th><th>analyst-confirmed</th><th>barrels (central)</th></tr>"
            + "".join(rows) + "</table>")


def _calls_table(result: CallsResult) -> str:
    head = ("<tr><th>first seen</th><th>last seen</th><th>berth</th><th>length m</th>"
            "<th>tanker</th><th>evidence</th><th>AIS</th><th>status</th><th>barrels low</th>"
            "<th>central</th><th>high</th><th>scenes</th></tr>")
    rows = []
    for call in result.calls:
        r = call_row(call)
        ais = (f"{r['mmsi']} {r['ais_name'] or ''} (type {r['ais_ship_type']})"
               if call.declared else "none (undeclared)")
        tanker = f"{'yes' if call.tanker else 'no'} ({r['rule']})"
        cells = [r["first_seen"][:16], r["last_seen"][:16], r["berth"], r["length_m"], tanker,
                 r["evidence"], ais, r["status"], _num(r["barrels_low"]),
                 _num(r["barrels_central"]), _num(r["barrels_high"]),
                 r["scene_ids"].replace(" ", "\n")]
        cls = ' class="tanker"' if call.tanker else ""
        rows.append(f"<tr{cls}>" + "".join(f"<td>{escape(str(v) if v is not None else '')}</td>"
                                          for v in cells) + "</tr>")
    return "<table class=calls>" + head + "".join(rows) + "</table>"


def _num(value) -> str:
    return "" if value is None else f"{value:,}"


def _method(result: CallsResult) -> str:
    c = result.config
    return f"""
<h2>Method</h2>
<p>A <b>port call</b> is a vessel at a berth in consecutive scenes: declared when AIS places
a vessel there, undeclared when a berthed detection is one no AIS vessel explains (an alert);
a scene whose berth was hidden by cloud neither starts, ends nor extends a call.
A call is a <b>tanker call</b> by the first of these rules that applies:
(1) the analyst's vessel type (tanker: yes; cargo or other: no);
(2) the matched AIS vessel's ship type (80-89: yes; any other: no);
(3) otherwise, when it lies at a berth marked <code>oil-berth</code> and its estimated length is
within {c.band_min_m:g}-{c.band_max_m:g} m (the small product tankers the DPRK is reported to
use). Calls an analyst rejected (no vessel) never count.</p>
<p><b>Barrels</b> per tanker call: deadweight = (length / {c.length_per_cube_root_dwt:g})&sup3;
tonnes; cargo = deadweight &times; {c.load_factor:g} (load factor); volume = cargo /
{c.density_t_per_m3:g} t/m&sup3;; barrels = volume &times; {BARRELS_PER_M3:.5f}. Low and high use
the length minus and plus {c.length_error_m:g} m, the detector's median absolute length
error. The cumulative chart restarts each calendar year, as the UN cap of
{UN_ANNUAL_CAP_BARRELS:,} barrels a year does. Each port is counted on its own: a tanker
loading at Vostochny and unloading at Chongjin is the same cargo twice.</p>
<p>A month in which no scene saw the port's berths is shown as <b>not seen</b>, never as zero;
fewer than {LITTLE_VISIBILITY_SCENES} such scenes is <b>little visibility</b>.</p>
<h2>Model and its measured limits</h2>
<p>{escape(model_limits())}</p>
<p>Scenes processed with: {escape(", ".join(f"{m} (weights sha256 {s[:12]}...)"
                                              for m, s in result.models) or "none")}</p>"""


# The page may load nothing: images only from its own data: URIs, styles only inline.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
STYLE = """body{font-family:sans-serif;margin:1.5em;max-width:1300px}
table{border-collapse:collapse;margin:0.6em 0;font-size:13px}
td,th{border:1px solid #bbb;padding:3px 6px;vertical-align:top;white-space:pre-line}
th{background:#eee} tr.tanker{background:#fff3e0} td.notseen{background:#ddd;font-style:italic}
img{max-width:100%;display:block;margin:0.5em 0}
.sim{background:#d62728;color:#fff;font-weight:bold;padding:0.4em 0.8em;font-size:1.2em}"""


def barrels_summary(result: CallsResult) -> str:
    """The estimated barrels per calendar year against the annual cap (a period over two
    years summed against one year's cap would overstate it), and the tanker calls left out
    of them for want of a length estimate."""
    years: dict[int, list] = {}
    for call in result.calls:
        if call.barrels:
            years.setdefault(call.first_seen.year, []).append(call.barrels)
    parts = [f"{year}: estimated <b>{sum(b.central for b in got):,.0f}</b> barrels (range "
             f"{sum(b.low for b in got):,.0f} - {sum(b.high for b in got):,.0f}), "
             f"{100 * sum(b.central for b in got) / UN_ANNUAL_CAP_BARRELS:.1f} % of the"
             for year, got in sorted(years.items())]
    text = ("; ".join(parts) + f" UN cap of {UN_ANNUAL_CAP_BARRELS:,} barrels a year."
            if parts else "No barrels estimated.")
    unsized = sum(1 for call in result.calls if call.tanker and call.barrels is None)
    if unsized:
        text += (f" {unsized} tanker call(s) have no length estimate (no scene measured"
                 " them) and are <b>not in the barrels</b>.")
    return text


def render_page(result: CallsResult, charts: dict[str, Path]) -> str:
    counts = monthly_counts(result)
    total = sum(c["detected"] for c in counts.values())
    confirmed = sum(c["confirmed"] for c in counts.values())
    sim = ('<p class="sim">SIMULATED: made from simulated scenes and simulated AIS; '
           'these are not observations.</p>') if result.simulated else ""
    title = (f"{'SIMULATED: ' if result.simulated else ''}{result.port.title}: tanker calls, "
             f"{result.start:%Y-%m-%d} to {result.end:%Y-%m-%d}")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<title>{escape(title)}</title><style>{STYLE}</style></head><body>
{sim}<h1>{escape(title)}</h1>
<p><b>{total}</b> tanker call(s) seen, {confirmed} of them resting on an analyst's
confirmation. {barrels_summary(result)} Berth zones are approximate unless the port file
says otherwise.</p>
{_img(charts["calls"], "tanker calls per month")}
{_img(charts["barrels"], "cumulative estimated barrels against the UN cap")}
<h2>Months</h2>{_months_table(result)}
<h2>Port calls</h2>{_calls_table(result)}
{_method(result)}
{sim}</body></html>
"""


def write_files(result: CallsResult, folder: Path, charts: dict[str, Path]) -> Path:
    (folder / "calls.csv").write_text(calls_csv(result), encoding="utf-8")
    (folder / "calls.geojson").write_text(json.dumps(calls_geojson(result), indent=1),
                                          encoding="utf-8")
    page = folder / "report.html"
    page.write_text(render_page(result, charts), encoding="utf-8")
    return page
