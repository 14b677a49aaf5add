"""The dashboard in a real browser during a real rollout: Debian's ``chromium``, headless,
driven by Playwright (the system browser: ``executable_path``, no ``playwright install``).

``pgshift rollout --dashboard`` runs as a process under ~50 requests/s of load (the e2e
rig of ``rollout_helpers``); the page, loaded once, shows the weight move 25 -> 50 % by
itself; the rollback button (reason + typed confirmation) rolls the rollout back and the
page shows traffic on blue. Screenshots are saved as test artifacts (their paths are
printed; ``PGSHIFT_TEST_ARTIFACTS`` chooses the folder).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from pathlib import Path

import httpx
import pytest

from pgshift.dsn import Dsn
from pgshift.errors import ExitCode
from pgshift.rollout import verbs
from rollout_helpers import free_port, rig

pytestmark = [pytest.mark.browser, pytest.mark.timeout(420)]

TOKEN = "test-admin-token"  # what rollout_helpers.rig exports as the cutover's router.token


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


def artifacts(tmp_path: Path) -> Path:
    d = Path(os.environ.get("PGSHIFT_TEST_ARTIFACTS") or tmp_path / "artifacts")
    d.mkdir(parents=True, exist_ok=True)
    return d


def wait_up(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, headers={"Authorization": f"Bearer {TOKEN}"},
                         timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"the dashboard never answered at {url}")


def text_is(element_id: str, value: str) -> str:
    # a function, not an expression: a string predicate would need eval, which the page's
    # Content-Security-Policy forbids
    return f"() => document.getElementById({element_id!r}).textContent === {value!r}"


def test_live_rollout_then_rollback_from_the_page(tmp_path: Path, pg_dsn: Dsn,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  record_property: object) -> None:
    browser_path = chromium()
    if browser_path is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright is not installed (pip install -e .[dev])")
    out = artifacts(tmp_path)
    over = {"shift": {"steps": [{"weight": 25, "bake": "4s"}, {"weight": 50, "bake": "300s"},
                                {"weight": 100, "bake": "3s"}]}}
    with rig(tmp_path, pg_dsn, monkeypatch, over) as r:
        with r.load():
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            engine = r.popen("rollout", str(r.cutover), "--dashboard", "--dashboard-port",
                             str(port))
            try:
                wait_up(f"{base}/api/state")
                with sync_api.sync_playwright() as p:
                    browser = p.chromium.launch(executable_path=browser_path, headless=True)
                    try:
                        context = browser.new_context(viewport={"width": 1280, "height": 900})
                        page = context.new_page()
                        page.goto(f"{base}/?token={TOKEN}")
                        assert page.url == f"{base}/"  # the token left the address bar
                        page.evaluate("window.__loadedOnce = 'yes'")
                        # the weight changes live, without a reload: 25 % then 50 %
                        page.wait_for_function(text_is("f-weight", "25"), timeout=180_000)
                        page.wait_for_function(text_is("f-weight", "50"), timeout=120_000)
                        assert page.evaluate("window.__loadedOnce") == "yes"
                        assert page.inner_text("#f-phase") == "shift-50"
                        assert page.inner_text("#live") == "live"
                        drawn = page.evaluate("document.querySelector('#c-weight polyline')"
                                              ".getAttribute('points').split(' ').length")
                        assert drawn >= 3
                        page.wait_for_function(  # green's row: it has traffic
                            "() => document.querySelector('#sides tbody tr:nth-child(2) "
                            "td:nth-child(2)').textContent !== '0'", timeout=30_000)
                        page.screenshot(path=str(out / "dashboard-live.png"), full_page=True)
                        # a phone: one column, nothing wider than the screen
                        phone = context.new_page()
                        phone.set_viewport_size({"width": 390, "height": 844})
                        phone.goto(f"{base}/")
                        cols = phone.evaluate("getComputedStyle(document.getElementById"
                                              "('main')).gridTemplateColumns.split(' ').length")
                        assert cols == 1
                        assert phone.evaluate("document.documentElement.scrollWidth") <= 390
                        phone.screenshot(path=str(out / "dashboard-phone.png"), full_page=True)
                        phone.close()
                        # without JavaScript: the same facts and the audit trail
                        plain = browser.new_context(java_script_enabled=False)
                        plain.add_cookies(context.cookies())
                        nojs = plain.new_page()
                        nojs.goto(f"{base}/")
                        assert nojs.inner_text("#f-phase") == "shift-50"
                        assert "green weight 50 %" in nojs.inner_text("#audit")
                        assert nojs.inner_text("#live") == "off"
                        plain.close()
                        # rollback: a reason and the verb typed again, or nothing is sent
                        page.click("details.rollback summary")
                        page.fill("#r-rollback", "browser test: back to blue")
                        page.click("details.rollback button")
                        assert page.evaluate(
                            "document.getElementById('c-rollback').validity.valid") is False
                        page.fill("#c-rollback", "rollback")
                        page.click("details.rollback button")
                        page.wait_for_function(text_is("f-status", "rolled_back"),
                                               timeout=120_000)
                        page.wait_for_function(text_is("f-router-weight", "0 %"),
                                               timeout=30_000)
                        assert page.inner_text("#f-weight") == "0"
                        page.wait_for_function(
                            "() => /^rollback: (rollback started|rolled back)/.test("
                            "document.getElementById('verb-result').textContent)",
                            timeout=60_000)  # the verb's answer, not just "sent"
                        assert "rollback requested by" in page.inner_text("#audit")
                        shot = out / "dashboard-rolled-back.png"
                        page.screenshot(path=str(shot), full_page=True)
                    finally:
                        browser.close()
                assert engine.wait(timeout=120) == ExitCode.ABORTED  # rolled back: exit 6
            finally:
                if engine.poll() is None:
                    engine.kill()
                    engine.wait()
        print(f"dashboard screenshots: {out}")
        record_property("screenshot", str(shot))  # type: ignore[operator]
        assert shot.stat().st_size > 10_000
        ctx = r.context()
        try:
            assert ctx.router.weight() == 0
            assert verbs.status(ctx)["status"] == "rolled_back"
        finally:
            ctx.close()
        con = sqlite3.connect(r.state_root / "journal.sqlite")
        try:
            cmds = con.execute("SELECT verb, reason, actor FROM commands").fetchall()
        finally:
            con.close()
        assert [(v, why) for v, why, _ in cmds] == [("rollback", "browser test: back to blue")]
        assert cmds[0][2].endswith("(dashboard)")
        assert r.check_ledger("sqlite").violations == []
