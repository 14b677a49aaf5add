"""The dashboard server over real HTTP on an ephemeral port, reading a journal written by
the engine's own ``Journal`` class (no rollout runs here: the router's admin address has
nobody listening, which the page shows as unreadable)."""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from pgshift.dashboard import Dashboard
from pgshift.dashboard.live import next_decision
from pgshift.errors import ExitCode, SourceError
from pgshift.report.facts import parse_ts
from pgshift.rollout import config as cfgmod
from pgshift.rollout.journal import Journal
from pgshift.state import StateDir
from rollout_helpers import TOKEN_ENV, base_cutover, free_port, latency_counts

TOKEN = "dash-test-token-7f3a"
SECRET = "hunter2-secret-pw"


@pytest.fixture
def cutover(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    dead = f"http://127.0.0.1:{free_port()}"
    path = tmp_path / "cutover.yaml"
    path.write_text(yaml.safe_dump(base_cutover(tmp_path / "app.db", dead, dead)))
    return path


def state_of(cutover: Path) -> StateDir:
    cfg, base = cfgmod.load(cutover)
    return StateDir.for_name(base, cfg.name)


def write_journal(cutover: Path) -> None:
    """A rollout in its 25 % step, as the engine records one (its own Journal class)."""
    state = state_of(cutover)
    j = Journal(state)
    try:
        j.acquire()
        j.set(status="running", phase="shift-25", phase_index=9, weight=25)
        j.step_started("shift-25")
        state.audit("shift-25", "weight", "green weight 25 %", {"weight": 25})
        # a reason that quotes a DSN: stored as written in the decisions table
        j.decide("shift-25", "inconclusive",
                 f"too few requests; compare postgresql://app:{SECRET}@db/prod")
        state.audit("shift-25", "note", "support saw no tickets", actor="alice")
        state.audit("shift-25", "hook", "`deploy.sh` exited 0")  # not in the page's trail
        j.approve("ops-lead", actor="bob", note="fine")
    finally:
        j.release()
        j.close()


@pytest.fixture
def dash(cutover: Path) -> Iterator[Dashboard]:
    write_journal(cutover)
    d = Dashboard(cutover, port=0, interval=0.2).start()
    try:
        yield d
    finally:
        d.stop()


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def commands(cutover: Path) -> list[tuple[str, str, str]]:
    con = sqlite3.connect(state_of(cutover).journal)
    try:
        return con.execute("SELECT verb, reason, actor FROM commands ORDER BY id").fetchall()
    finally:
        con.close()


def test_state_json_needs_the_token_and_reads_the_journal(dash: Dashboard) -> None:
    url = dash.url + "api/state"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers=bearer("wrong")).status_code == 403
    resp = httpx.get(url, headers=bearer())
    assert resp.status_code == 200
    s = resp.json()
    assert (s["status"], s["phase"], s["weight"]) == ("running", "shift-25", 25)
    assert s["system_of_record"] == "blue" and s["controller"]["alive"] is False
    assert "unreachable" in s["router_error"]  # nobody listens at the admin address
    # the next decision: the 3 s bake from the step's start (or the last decision)
    assert s["next"]["what"].startswith("analysis of the 25 % step")
    assert 0 <= s["next"]["seconds_left"] <= 3
    kinds = [a["kind"] for a in s["audit"]]
    assert {"decision", "note", "approval", "weight"} <= set(kinds) and "hook" not in kinds
    assert s["audit"][0]["kind"] == "approval"  # newest first
    assert s["approvals"]["ops-lead"]["actor"] == "bob"
    assert s["text"]["status_line"] == ("running at shift-25: green weight 25 %, system of "
                                        "record blue")
    assert SECRET not in resp.text and TOKEN not in resp.text
    # the live view keeps sampling: chart points accumulate
    seq = s["seq"]
    later = httpx.get(url, headers=bearer()).json()
    for _ in range(50):
        if later["seq"] > seq:
            break
        later = dash.sampler.wait_newer(seq, 1.0).to_dict()
    assert later["seq"] > seq and len(later["points"]) >= 2


def test_page_renders_complete_without_javascript(dash: Dashboard) -> None:
    assert httpx.get(dash.url).status_code == 401  # the sign-in page
    signin = httpx.get(dash.url, params={"token": TOKEN})
    assert signin.status_code == 303 and signin.headers["location"] == "/"
    cookie = signin.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and TOKEN not in cookie
    assert httpx.get(dash.url, params={"token": "nope"}).status_code == 403
    page = httpx.get(dash.url, cookies=signin.cookies)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'nonce-" in csp
    html = page.text
    no_js = re.sub(r"<script.*?</script>", "", html, flags=re.S)
    # what the operator needs is in the markup itself
    for text in ("shift-25", "green weight 25 %", "support saw no tickets", "inconclusive",
                 "analysis of the 25 % step", "ops-lead: bob", "Audit trail"):
        assert text in no_js, text
    assert "deploy.sh" not in no_js  # hooks stay in the report
    # accessible, phone-sized, self-contained
    for tag in ('<meta name="viewport"', "<header>", '<main id="main"', "<footer>",
                'aria-live="polite"', 'role="status"', '<html lang="en">'):
        assert tag in html, tag
    for verb in ("promote", "pause", "abort", "rollback"):
        assert f'<label for="c-{verb}">' in html and f'value="{verb}">' in html
    # five verbs and "add a note" (no approval roles in this cutover: no approve form)
    assert html.count("<button") == 6 and "<svg" in no_js
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)  # no external asset
    assert SECRET not in html and TOKEN not in html
    assert "***" in html  # the redacted DSN in the decision's reason


def test_post_verbs_need_token_origin_and_confirmation(dash: Dashboard, cutover: Path
                                                       ) -> None:
    url = dash.url + "api/verb"
    body = {"verb": "pause", "reason": "checking a latency blip", "confirm": "pause"}
    assert httpx.post(url, json=body).status_code == 401
    assert httpx.post(url, json=body, headers=bearer("wrong")).status_code == 403
    foreign = {**bearer(), "Origin": "http://evil.example"}
    assert httpx.post(url, json=body, headers=foreign).status_code == 403
    cookies = httpx.get(dash.url, params={"token": TOKEN}).cookies
    # a cookie alone (what a cross-site form would carry) is not enough: no Origin
    assert httpx.post(url, json=body, cookies=cookies).status_code == 403
    unconfirmed = httpx.post(url, json={**body, "confirm": "yes"}, headers=bearer())
    assert unconfirmed.status_code == 400 and "confirm" in unconfirmed.json()["error"]
    assert httpx.post(url, json={**body, "reason": " "}, headers=bearer()).status_code == 400
    assert httpx.post(url, json={**body, "verb": "drop", "confirm": "drop"},
                      headers=bearer()).status_code == 400
    assert commands(cutover) == []  # nothing refused reached the journal
    ok = httpx.post(url, json=body, headers=bearer())
    assert ok.status_code == 200, ok.text
    assert ok.json()["outcome"].startswith("queued")  # no engine runs: it waits for --resume
    # the page's own form, without JavaScript: cookie + this origin, form-encoded
    origin = dash.url.rstrip("/")
    form = httpx.post(url, data={"verb": "resume", "reason": "blip explained",
                                 "confirm": "resume"},
                      cookies=cookies, headers={"Origin": origin})
    assert form.status_code == 200 and "resume: queued" in form.text
    assert form.headers["content-type"].startswith("text/html")
    recorded = commands(cutover)
    assert [(v, r) for v, r, _ in recorded] == [("pause", "checking a latency blip"),
                                               ("resume", "blip explained")]
    assert all(a.endswith("(dashboard)") for _, _, a in recorded)
    # the audit trail on the page shows the commands
    state = httpx.get(dash.url + "api/state", headers=bearer()).json()
    for _ in range(50):
        if sum(a["kind"] == "command" for a in state["audit"]) == 2:
            break
        state = dash.sampler.wait_newer(state["seq"], 1.0).to_dict()
    assert sum(a["kind"] == "command" for a in state["audit"]) == 2


def test_approve_and_note_from_the_page(cutover: Path) -> None:
    data = yaml.safe_load(cutover.read_text())
    data.setdefault("finalize", {})["approvals"] = ["ops-lead", "qa"]
    cutover.write_text(yaml.safe_dump(data))
    write_journal(cutover)  # ops-lead approved by bob
    d = Dashboard(cutover, port=0, interval=0.2).start()
    try:
        html = httpx.get(d.url, headers=bearer()).text
        # a role picker with the roles finalize waits for, and a note box
        assert '<option value="qa">qa</option>' in html and 'data-verb="note"' in html
        url, origin = d.url + "api/verb", d.url.rstrip("/")
        approve = {"verb": "approve", "role": "qa", "reason": "smoke tests green",
                   "confirm": "approve"}
        assert httpx.post(url, json={**approve, "confirm": "yes"},
                          headers=bearer()).status_code == 400
        assert httpx.post(url, json={**approve, "role": ""}, headers=bearer()).status_code == 400
        unknown = httpx.post(url, json={**approve, "role": "cfo"}, headers=bearer())
        assert unknown.status_code == 409 and "no approval role 'cfo'" in unknown.json()["error"]
        ok = httpx.post(url, json=approve, headers=bearer())
        assert ok.status_code == 200, ok.text
        assert ok.json()["outcome"].startswith("qa approved by ") and \
            ok.json()["outcome"].endswith("(dashboard); still missing: none")
        # a note needs no confirmation; without JavaScript it is the page's form
        cookies = httpx.get(d.url, params={"token": TOKEN}).cookies
        form = httpx.post(url, data={"verb": "note", "reason": "users report faster search"},
                          cookies=cookies, headers={"Origin": origin})
        assert form.status_code == 200 and "note: noted" in form.text
        assert httpx.post(url, json={"verb": "note", "reason": " "},
                          headers=bearer()).status_code == 400
    finally:
        d.stop()
    j = Journal(state_of(cutover))
    try:
        assert j.approvals()["qa"]["note"] == "smoke tests green"
        assert j.approvals()["qa"]["actor"].endswith("(dashboard)")
    finally:
        j.close()
    trail = [json.loads(line) for line in state_of(cutover).audit_log.read_text().splitlines()]
    notes = [a for a in trail if a["kind"] == "note"]
    assert notes[-1]["message"] == "users report faster search"
    assert notes[-1]["actor"].endswith("(dashboard)")


def test_status_prints_figures_for_people(cutover: Path) -> None:
    """``pgshift status`` (the same journal the page reads): rounded, grouped figures."""
    write_journal(cutover)
    j = Journal(state_of(cutover))
    try:
        j.set(shift_results=[{"weight": 25, "requests": 1259, "error_rate": 0.0012345,
                              "p99_ms": 6.724999999999994, "decision": "pass"}])
    finally:
        j.close()
    proc = subprocess.run([sys.executable, "-m", "pgshift.cli.main", "status", str(cutover)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("t: running at shift-25, green weight 25 %, system of record")
    assert "  step 25 %: 1,259 green requests, error rate 0.12 %, p99 6.7 ms -> pass" in lines
    assert SECRET not in proc.stdout


def test_a_page_opened_mid_rollout_charts_the_journals_past(cutover: Path) -> None:
    """The charts' first points come from the journal's traffic series (cumulative
    counters), each over the trailing chart window, before the page's own readings."""
    from pgshift.dashboard.live import Sampler, history_points

    write_journal(cutover)
    t0 = time.time() - 30
    rows = []
    blue, green = latency_counts(0, 0, 1), latency_counts(0, 0, 1)
    for i in range(10):  # one row every 2 s: blue 20 answers at 2 ms, green 10 at 8 ms
        blue = [a + b for a, b in zip(blue, latency_counts(20, 0, 2.0), strict=True)]
        green = [a + b for a, b in zip(green, latency_counts(10, 1 if i == 9 else 0, 8.0),
                                       strict=True)]
        rows.append((t0 + 2 * i, {"source": "counters", "weight": 25, "sor": "blue",
                                  "phase": "shift-25", "blue": list(blue),
                                  "green": list(green), "refused": 0, "lag_ms": 40.0 + i,
                                  "to_sqlite_lag_ms": 5.0}))
    j = Journal(state_of(cutover))
    try:
        for ts, row in rows:
            j.add_sample(ts, row)
    finally:
        j.close()
    points = history_points(rows, since=0, window=5.0)
    assert len(points) == 9 and points[-1]["weight"] == 25
    last = points[-1]  # the three spans ending less than 5 s before the last row
    assert (last["blue_n"], last["green_n"]) == (60, 30)
    assert last["green_err"] == pytest.approx(1 / 30) and last["blue_err"] == 0
    assert 1.0 < last["blue_p99"] <= 2.5 and 5.0 < last["green_p99"] <= 10.0
    assert last["lag_ms"] == 49.0  # blue is the system of record: the lag to PostgreSQL
    sampler = Sampler(cutover, interval=0.2)
    try:
        snap = sampler.sample()
    finally:
        sampler.stop()
    got = snap.data["points"]
    assert len(got) == 10 and got[:9] == points  # the past, then the first live reading


def test_event_stream_sends_snapshots(dash: Dashboard) -> None:
    assert httpx.get(dash.url + "events").status_code == 401
    events = []
    with httpx.stream("GET", dash.url + "events", headers=bearer(), timeout=10) as resp:
        assert resp.headers["content-type"] == "text/event-stream"
        for line in resp.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
                if len(events) == 2:
                    break
    assert events[1]["seq"] > events[0]["seq"]
    assert events[0]["text"]["phase"] == "shift-25"


def test_host_header_and_sign_in_form(dash: Dashboard) -> None:
    evil = httpx.get(dash.url + "api/state", headers={**bearer(), "Host": "evil.example"})
    assert evil.status_code == 403  # DNS rebinding: only this server's own names
    origin = dash.url.rstrip("/")
    bad = httpx.post(dash.url + "login", data={"token": "x"}, headers={"Origin": origin})
    assert bad.status_code == 403
    good = httpx.post(dash.url + "login", data={"token": TOKEN}, headers={"Origin": origin})
    assert good.status_code == 303 and "HttpOnly" in good.headers["set-cookie"]
    cross = httpx.post(dash.url + "login", data={"token": TOKEN},
                       headers={"Origin": "http://evil.example"})
    assert cross.status_code == 403


def test_generated_token_when_the_cutover_has_none(cutover: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    with_env = Dashboard(cutover, port=0)
    try:
        assert with_env.token_source == "cutover" and "token=" not in with_env.startup_url()
    finally:
        with_env.stop()
    monkeypatch.delenv(TOKEN_ENV)
    d = Dashboard(cutover, port=0, interval=0.2).start()
    try:
        assert d.token_source == "generated"
        url = d.startup_url()
        token = url.split("token=", 1)[1]
        assert len(token) >= 24
        assert httpx.get(url).status_code == 303
        state = httpx.get(d.url + "api/state", headers=bearer(token)).json()
        assert state["status"] == "not started"  # no journal yet: nothing was created
        assert not state_of(cutover).journal.exists()
        assert httpx.get(d.url + "api/state", headers=bearer()).status_code == 403
    finally:
        d.stop()


def test_read_only_journal_reads_and_refuses_writes(cutover: Path) -> None:
    state = state_of(cutover)
    with pytest.raises(SourceError):
        Journal.read_only(state)  # no journal: not created by a reader
    assert not state.journal.exists()
    write_journal(cutover)
    j = Journal.read_only(state)
    try:
        assert j.get("phase") == "shift-25" and j.decisions()[0]["decision"] == "inconclusive"
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            j.set(phase="x")
    finally:
        j.close()


def test_cli_serves_until_interrupted(cutover: Path) -> None:
    write_journal(cutover)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "pgshift.cli.main", "dashboard",
                             str(cutover), "--port", str(port), "--interval", "0.3"],
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()
        assert first.strip() == f"dashboard: http://127.0.0.1:{port}/"
        assert TOKEN_ENV in proc.stderr.readline()  # where the token is: named, not shown
        state = httpx.get(f"http://127.0.0.1:{port}/api/state", headers=bearer()).json()
        assert state["phase"] == "shift-25"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "dashboard stopped" in err and TOKEN not in first + err


def test_cli_bad_input(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "pgshift.cli.main", "dashboard",
                          str(tmp_path / "missing.yaml")], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == ExitCode.USAGE
    assert out.stderr.startswith("Error: cutover file") and "Try:" in out.stderr
    assert "Traceback" not in out.stderr


def test_next_decision_follows_the_engine_state(cutover: Path) -> None:
    write_journal(cutover)
    cfg, _ = cfgmod.load(cutover)
    j = Journal.read_only(state_of(cutover))
    try:
        base = {"status": "running", "phase": "shift-25", "weight": 25}
        step = next_decision(base, j, cfg, 0.0)
        last = j.decisions()[-1]["ts"]  # the bake restarts after an inconclusive analysis
        assert step["at"] == pytest.approx((parse_ts(last) or 0) + 3.0)
        held = next_decision({**base, "waiting_for": "promote",
                              "waiting_reason": "manual approval"}, j, cfg, 0.0)
        assert held["at"] is None and "promote to go on" in held["what"]
        assert "paused at 25 %" in next_decision({**base, "paused": True}, j, cfg, 0.0)["what"]
        mon = next_decision({**base, "phase": "monitor", "monitor_started": 100.0}, j, cfg, 0)
        assert mon["at"] == 102.0  # monitor.window 2s
        rehearsing = next_decision({**base, "phase": "monitor", "monitor_started": 100.0,
                                    "rehearsal": True}, j, cfg, 0)
        assert "swap back" in rehearsing["what"]
        assert rehearsing["at"] == 100.0 + cfg.seconds(cfg.rehearsal.monitor)
        done = next_decision({**base, "status": "rolled_back"}, j, cfg, 0.0)
        assert done == {"what": "rolled back: traffic is on blue", "at": None}
        assert "no rollout yet" in next_decision({}, None, cfg, 0.0)["what"]
    finally:
        j.close()
