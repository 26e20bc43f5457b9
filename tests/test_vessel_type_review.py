"""The review page's vessel-type choice (kept like every verdict, read first by the tanker
rule) and the queue page's tanker-call figures with each port's report link."""

from __future__ import annotations

import sqlite3
import warnings
from datetime import UTC, datetime
from urllib.parse import quote

import pytest
import review_workspace as rw

from imagery.ports import get_port
from imagery.report import write_report
from imagery.report.calls import build_calls
from imagery.review import create_app
from imagery.review.vessel_type import port_figures
from imagery.vessel_types import vessel_type_history

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


@pytest.fixture
def demo(tmp_path) -> rw.Demo:
    return rw.build(tmp_path / "ws")


@pytest.fixture
def client(demo):
    with TestClient(create_app(demo.ws.root), base_url="http://127.0.0.1") as c:
        c.get("/")
        yield c


def _choose(client, alert_id: str, choice: str, csrf: bool = True, analyst: str = "ana"):
    form = {"vessel_type": choice, "analyst": analyst, "note": "hull and manifold"}
    if csrf:
        form["csrf"] = client.cookies.get("bw_csrf")
    return client.post(f"/alerts/{quote(alert_id, safe='')}/vessel-type", data=form,
                       follow_redirects=False)


def test_vessel_type_is_recorded_shown_and_append_only(client, demo):
    assert _choose(client, demo.alert, "cargo").status_code == 303
    assert _choose(client, demo.alert, "tanker", analyst="bob").status_code == 303
    rows = vessel_type_history(demo.ws, demo.alert)
    assert [(r["vessel_type"], r["analyst"]) for r in rows] == [("cargo", "ana"),
                                                                ("tanker", "bob")]
    page = client.get(f"/alerts/{quote(demo.alert, safe='')}").text
    assert "Current: <b>tanker</b>" in page and "hull and manifold" in page
    conn = sqlite3.connect(demo.ws.db_path)
    with pytest.raises(sqlite3.DatabaseError, match="append only"):
        conn.execute("UPDATE vessel_type_reviews SET vessel_type = 'other'")
    with pytest.raises(sqlite3.DatabaseError, match="append only"):
        conn.execute("DELETE FROM vessel_type_reviews")
    conn.close()


def test_vessel_type_needs_csrf_and_a_known_choice(client, demo):
    assert _choose(client, demo.alert, "tanker", csrf=False).status_code == 403
    assert _choose(client, demo.alert, "submarine").status_code == 400
    assert _choose(client, "nope#1", "tanker").status_code == 404
    assert vessel_type_history(demo.ws, demo.alert) == []


def test_the_analysts_vessel_type_decides_the_report(client, demo):
    port = get_port("vostochny")
    before = {c.alert_ids[0]: c for c in build_calls(demo.ws, port, None, None).calls
              if c.alert_ids}
    assert before[demo.false_alert].rule == "oil-berth+length"
    assert not before[demo.false_alert].tanker  # 40 m: outside the band
    _choose(client, demo.false_alert, "tanker")
    after = {c.alert_ids[0]: c for c in build_calls(demo.ws, port, None, None).calls
             if c.alert_ids}
    assert after[demo.false_alert].tanker and after[demo.false_alert].rule == "analyst"
    assert after[demo.false_alert].confirmed_tanker


def test_queue_shows_this_months_figures_and_links_the_report(client, demo):
    page = client.get("/").text
    assert "Tanker calls this month" in page and "berthwatch report --port vostochny" in page
    assert client.get("/reports/vostochny").status_code == 404
    write_report(demo.ws, get_port("vostochny"))
    page = client.get("/").text
    assert 'href="/reports/vostochny"' in page and "(latest with scenes)" in page
    report = client.get("/reports/vostochny")
    assert report.status_code == 200 and "SIMULATED" in report.text
    assert "img-src data:" in report.headers["content-security-policy"]
    assert client.get("/reports/..%2f..%2fetc").status_code == 404


def test_port_figures_of_the_current_month(demo):
    figures = port_figures(demo.ws, now=datetime(2024, 3, 20, tzinfo=UTC))
    assert len(figures) == 1 and figures[0]["current"] and figures[0]["month"] == "2024-03"
    assert figures[0]["scenes"] == 3 and figures[0]["state"] == "seen"


def test_vessel_type_calls_join_the_audit_trail_and_the_evidence(client, demo):
    """Kept in the audit trail like every verdict: the alert page's trail and the evidence
    package's reviews.json list the vessel-type calls with who, when and the note."""
    import io
    import json
    import zipfile

    assert _choose(client, demo.alert, "tanker", analyst="bob").status_code == 303
    page = client.get(f"/alerts/{quote(demo.alert, safe='')}").text
    trail = page[page.index('id="history"'):]
    assert "vessel-type" in trail and "bob" in trail and "tanker" in trail
    package = client.get(f"/alerts/{quote(demo.alert, safe='')}/evidence.zip")
    with zipfile.ZipFile(io.BytesIO(package.content)) as zf:
        name = next(n for n in zf.namelist() if n.endswith("reviews.json"))
        rows = json.loads(zf.read(name))
    assert [(r["action"], r["verdict"], r["analyst"]) for r in rows
            if r["action"] == "vessel-type"] == [("vessel-type", "tanker", "bob")]
