"""End to end in a real browser: Debian's headless Chromium, driven by Playwright, against the
review app served by uvicorn on 127.0.0.1. An analyst opens the queue, opens an alert, adds a
missed vessel by clicking on the chip, confirms the alert, and finds it in the confirmed
export. A screenshot of the alert page is saved (and copied to $BERTHWATCH_SCREENSHOT_DIR).

Needs `apt-get install -y chromium` (for /usr/bin/chromium) and `pip install playwright`
(the `dev` extra); never `playwright install`: the browser is Debian's."""

from __future__ import annotations

import csv
import io
import os
import shutil
import socket
import threading
import time
from pathlib import Path
from urllib.parse import quote, unquote

import pytest
import review_workspace as rw

from imagery.review import db as review_db

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync"]

if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} not found: install Debian's browser with "
                "`apt-get install -y chromium` to run the browser test", allow_module_level=True)
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="the Playwright python package is not installed "
    "(pip install -e '.[dev]' brings it; the browser stays Debian's /usr/bin/chromium)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    """The review app on a free loopback port in a thread; stopped after the test."""
    demo = rw.build(tmp_path / "ws")
    yield from _serve(demo, demo.ws.root)


def _serve(demo, root: Path):
    import uvicorn

    from imagery.review import create_app

    port = _free_port()
    config = uvicorn.Config(create_app(root), host="127.0.0.1", port=port,
                            log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("uvicorn did not start within 20 s")
        time.sleep(0.05)
    yield demo, f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def browser_page():
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000},
                                          accept_downloads=True)
            page = context.new_page()
            page.set_default_timeout(20_000)
            yield page
        finally:
            browser.close()


def test_analyst_confirms_an_alert_in_the_browser(server, browser_page, tmp_path):
    demo, base = server
    page = browser_page
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("response", lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400
            else None)

    page.goto(base + "/")
    assert "Undeclared port calls" in page.inner_text("h1")
    page.click(f'a.alert-link[href="/alerts/{quote(demo.alert, safe="")}"]')
    page.wait_for_selector("#chip-true")
    assert page.text_content("#status") == "open"

    _add_vessel_by_clicking(page, demo)
    _confirm(page)

    rows = _download_confirmed_csv(page)
    assert [r["alert_id"] for r in rows] == [demo.alert]
    assert rows[0]["analyst"] == "Ana Lyst" and rows[0]["note"] == "dark tanker at the oil berth"

    page.goto(f"{base}/alerts/{quote(demo.alert, safe='')}")
    for image in ("#chip-false", "#chip-clean", "#overview"):
        _wait_image(page, image)
    _facts_come_first(page)
    shot = _screenshot(page, tmp_path)
    assert shot.stat().st_size > 10_000
    assert "<script>alert(1)</script>" in page.inner_text("table.ais")  # shown as text
    assert not problems, problems


def _facts_come_first(page) -> None:
    """When, where and why, and both true-colour chips, are in the first screenful (1000 px),
    above the verdict form."""
    form_top = page.locator("#verdict-form").bounding_box()["y"]
    for selector in ("#fact-time", "#fact-port", "#fact-berth", "#fact-score", "#fact-length",
                     "#fact-ais", "#fact-reasons", "#chip-true", "#chip-clean"):
        box = page.locator(selector).bounding_box()
        assert box["y"] + box["height"] < min(form_top, 1000), selector
    chips = [page.locator(s).bounding_box() for s in ("#facts", "#chip-true", "#chip-clean")]
    assert chips[0]["x"] < chips[1]["x"] < chips[2]["x"]  # side by side
    assert abs(chips[1]["y"] - chips[2]["y"]) < 1


def _wait_image(page, selector: str, timeout_s: float = 20.0) -> None:
    """Wait until the image has loaded. Polled from Python: `page.wait_for_function` builds its
    predicate with eval, which the app's Content-Security-Policy (script-src 'self') forbids,
    so it fails whenever the image is not loaded at the first check."""
    deadline = time.monotonic() + timeout_s
    img = page.locator(selector)
    while not img.evaluate("el => el.complete && el.naturalWidth > 0"):
        if time.monotonic() > deadline:
            pytest.fail(f"{selector} did not load within {timeout_s:.0f} s")
        time.sleep(0.1)


def _add_vessel_by_clicking(page, demo) -> None:
    """The missed vessel at scene pixel (20.5, 20.5): chip window starts at (16, 16), x4."""
    page.fill("#edit-form input[name=analyst]", "Ana Lyst")
    _wait_image(page, "#chip-true")
    with page.expect_navigation():
        page.click("#chip-true", position={"x": (20.5 - 16) * 4, "y": (20.5 - 16) * 4})
    assert "recorded: add" in page.inner_text("body"), page.content()[:600]
    added = [v for v in review_db.scene_vessels(demo.ws, demo.scenes[1]) if v.origin == "added"]
    assert len(added) == 1
    assert added[0].px_x == pytest.approx(20.5, abs=0.3)
    assert added[0].px_y == pytest.approx(20.5, abs=0.3)
    assert added[0].ref in page.inner_text("table.vessels")


def _confirm(page) -> None:
    assert page.input_value("#verdict-form input[name=analyst]") == "Ana Lyst"  # remembered
    page.check("#verdict-form input[value=confirmed]")
    page.fill("#verdict-form textarea[name=note]", "dark tanker at the oil berth")
    with page.expect_navigation():
        page.click("#submit-verdict")
    assert page.text_content("#status") == "confirmed"
    assert "dark tanker at the oil berth" in page.inner_text("#history")


def _download_confirmed_csv(page) -> list[dict]:
    with page.expect_download() as info:
        page.click('header a[href="/export/confirmed.csv"]')
    text = Path(info.value.path()).read_text(encoding="utf-8")
    return list(csv.DictReader(io.StringIO(text)))


def _screenshot(page, tmp_path: Path) -> Path:
    shot = tmp_path / "review-alert-page.png"
    page.screenshot(path=str(shot), full_page=True)
    target = os.environ.get("BERTHWATCH_SCREENSHOT_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(target) / shot.name)
    return shot


@pytest.fixture
def demo_server(tmp_path, tiny_weights):
    """A workspace made by `berthwatch demo` itself (its first days, with the tiny test model
    so that it runs in seconds), served the same way."""
    from imagery.demo import run_demo

    # 0.1, the tiny model's own threshold: at 0.15 it finds nothing in these four days.
    result = run_demo(tmp_path / "demo", weights=str(tiny_weights), threshold=0.1, days=4,
                      progress=False)
    yield from _serve(result, result.workspace)


def test_analyst_confirms_an_alert_of_a_demo_workspace(demo_server, browser_page, tmp_path):
    result, base = demo_server
    page = browser_page
    page.goto(base + "/")
    assert "SIMULATED" in page.inner_text("body")
    link = page.locator("a.alert-link").first
    href = link.get_attribute("href")
    alert_id = unquote(href.rsplit("/", 1)[1])
    link.click()
    page.wait_for_selector("#chip-true")
    page.fill("#verdict-form input[name=analyst]", "Ana Lyst")
    page.check("#verdict-form input[value=confirmed]")
    page.fill("#verdict-form textarea[name=note]", "seen at the berth, AIS silent")
    with page.expect_navigation():
        page.click("#submit-verdict")
    assert page.text_content("#status") == "confirmed"
    rows = _download_confirmed_csv(page)
    assert [r["alert_id"] for r in rows] == [alert_id]
    _wait_image(page, "#chip-false")
    shot = page.screenshot(path=str(tmp_path / "demo-alert-page.png"), full_page=True)
    assert len(shot) > 10_000
