"""``pgshift report`` from a state directory written the way the engine writes it.

The journal and audit trail are made through the engine's own writers
(``pgshift.rollout.journal.Journal`` and ``StateDir.audit``) with the figures the engine
records; ``test_rollout_e2e.py::test_report_of_a_real_rollout`` renders a real one.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from pgshift.cli.main import main
from pgshift.errors import UsageError
from pgshift.report import load_facts, make_report, render
from pgshift.report.traffic import Traffic
from pgshift.rollout import journal as journal_mod
from pgshift.rollout.journal import Journal
from pgshift.rollout.series import _delta, proxy_counters
from pgshift.state import StateDir
from pgshift.traffic.proxy.stats import BackendStats
from pgshift.traffic.router import bucket_index
from rollout_helpers import latency_counts

CUTOVER = {"name": "shop", "source": {"sqlite": "app.db"}, "target": {"dsn": "env:DB"},
           "apps": {"blue": {"url": "http://b"}, "green": {"url": "http://g"}},
           "finalize": {"approvals": ["ops-lead", "dba"]}}


def _step(j: Journal, name: str, figures: dict[str, Any], status: str = "done") -> None:
    sid = j.step_started(name)
    j.step_finished(sid, name, status, figures)


def _rollback_events(state: StateDir, result: dict[str, Any]) -> None:
    state.audit("rollback", "rollback-started", f"rolling back: {result['reason']}",
                {"after_flip": result["after_flip"], "drill": result["drill"]})
    state.audit("rollback", "rolled-back", "traffic on blue", result)


def _result(weight: float, decision: str, requests: int, errors: int, p99: float
            ) -> dict[str, Any]:
    return {"sync_lag_ms": 42.0, "conflicts": 0, "weight": weight, "requests": requests,
            "errors": errors, "error_rate": errors / requests, "error_rate_upper": 0.0123,
            "p99_ms": p99, "blue_p99_ms": 11.5, "blue_requests": 900, "decision": decision,
            "window_s": 30.2}


def _series(j: Journal, t0: float) -> None:
    """The watcher's rows: cumulative counters, ten seconds apart. Blue alone at first,
    then green takes a share; at 100 % green fails everything for 20 s (three rows)."""
    blue, green, rows = latency_counts(0, 0, 1), latency_counts(0, 0, 1), []
    plan = ([("migrate", 0, (50, 0), (0, 0))] +
            [("shift-25", 25, (150, 0), (50, 0))] * 3 +
            [("shift-100", 100, (0, 0), (200, 0))] * 2 +
            [("shift-100", 100, (0, 0), (100, 100))] * 2 +
            [("monitor", 100, (0, 0), (200, 1))] * 2)
    for i, (phase, weight, (bn, be), (gn, ge)) in enumerate(plan):
        blue = [a + b for a, b in zip(blue, latency_counts(bn, be, 2), strict=True)]
        green = [a + b for a, b in zip(green,
                                       latency_counts(gn, ge, 12 if ge < gn else 3000),
                                       strict=True)]
        rows.append((t0 + 10 * i, {"source": "counters", "weight": weight, "phase": phase,
                                   "blue": blue, "green": green, "refused": 2 if i > 6 else 0,
                                   "lag_ms": 40.0 + i, "to_sqlite_lag_ms": None}))
    for ts, row in rows:
        j.add_sample(ts, row)


DRILL = {"reason": "rollback drill", "after_flip": False, "drill": True,
         "traffic_back_ms": 85.2, "seconds": 1.734, "fence_hold_ms": 640.5,
         "drain": {"fence_seq": 9911, "drained": True, "seconds": 0.61, "applied": 7,
                   "conflicts": 0, "parked": 0},
         "stranded": None, "blue_healthy": True, "problems": []}


@pytest.fixture
def done_rollout(tmp_path: Path) -> Path:
    """A complete rollout: an inconclusive bake extended once, a drill, flip, monitor,
    two approvals, an operator note."""
    cutover = tmp_path / "cutover.yaml"
    cutover.write_text(yaml.safe_dump(CUTOVER))
    state = StateDir.for_name(tmp_path, "shop")
    j = Journal(state)
    j.acquire()
    started = time.time() - 3900  # finished (started + 4000) is after the series' rows
    j.set(status="running", run_started=started)
    _step(j, "preflight", {"journal_mode": "wal", "prerequisites": [], "seconds": 0.2})
    _step(j, "snapshot", {"bytes": 5_242_880, "hwm": 17, "seconds": 0.4})
    _step(j, "migrate", {"rows": 13_579, "rejects": 0, "migrate_seconds": 3.1,
                         "tables": {"users": 1234, "jobs": 12_345}, "seconds": 3.3,
                         "table_figures": {
                             "users": {"rows": 1234, "bytes": 98_765, "seconds": 0.25,
                                       "rejects": 0},
                             "jobs": {"rows": 12_345, "bytes": 4_567_890, "seconds": 2.75,
                                      "rejects": 0}}})
    _step(j, "verify", {"identical": True, "tables": 2, "rows": 13_579, "seconds": 1.2})
    _step(j, "integration-tests", {"skipped": True, "why": "no integration tests configured"})
    state.audit("shift-25", "critical-path", "`GET /health` passed",
                {"command": "GET /health", "url": "http://127.0.0.1:8080/health", "status": 200})
    series_t0 = time.time() + 0.01
    _series(j, series_t0)
    state.audit("shift-25", "weight", "green weight 25 %", {"weight": 25})
    j.decide("shift-25", "inconclusive", "green error rate upper bound 0.66 % over 0.1 %",
             {"analysis": {}})
    state.audit("shift-25", "extend", "inconclusive: bake extended (1/3)", {})
    j.decide("shift-25", "pass", "every check passed", {"analysis": {}})
    _rollback_events(state, DRILL)
    j.set(drill=DRILL, last_rollback=DRILL)
    state.audit("drill", "re-advanced", "drill done; green weight 25 % again")
    state.audit("shift-100", "weight", "green weight 100 %", {"weight": 100})
    j.decide("shift-100", "pass", "every check passed")
    j.set(shift_results=[_result(25, "pass", 2995, 3, 18.25),
                         _result(100, "pass", 9000, 0, 21.5)])
    _step(j, "flip", {"fence_hold_ms": 12.5, "fence": True, "drained_to": 4242,
                      "drain_seconds": 0.3, "seconds": 0.9})
    j.set(fence_hold_ms=12.5, flipped=True, weight=100)
    # the flip finished between the series' shift-25 and shift-100 rows
    with state.journal_db() as con:
        con.execute("UPDATE steps SET finished_at = ? WHERE name = 'flip'",
                    (time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(series_t0 + 35)),))
    state.audit("monitor", "check", "monitor check 1", {
        "ts": 0, "green_requests": 777, "green_errors": 0, "p99_ms": 19.75,
        "to_sqlite_lag_ms": 55.0, "db_probe_ms": 1.5})
    state.audit("shift-100", "note", "support saw no tickets at 100 %", actor="maria")
    j.approve("ops-lead", actor="alice", note="looks good")
    j.approve("dba", actor="bob")
    j.set(final_sync={"lag_ms": 0, "conflicts": 0}, status="done",
          finished=started + 4000, phase="finalize")
    j.release()
    j.close()
    return cutover


def test_markdown_holds_the_measured_values(done_rollout: Path) -> None:
    md = render(load_facts(done_rollout), "md")
    for section in ("Deployment Summary", "Pre-Deployment", "Deployment Execution",
                    "Post-Deployment", "Lessons Learned", "Rollback Capability", "Approvals",
                    "Rollback Procedure for this Deployment"):
        assert f"## {section}" in md
    assert "**Status**: SUCCESS" in md
    assert "1 h 06 min 40 s" in md  # finished - run_started = 4000 s
    assert "13,579 rows, 0 rejects" in md and "| jobs | 12,345 |" in md
    assert "5,242,880 bytes" in md
    assert "identical=True, 2 tables, 13,579 rows compared" in md
    assert "25 % at" in md and "0 % at" in md and "100 % at" in md  # drill sends 0 %
    assert "writes held 12.5 ms" in md
    assert "| 25 % | 30.2 s | 2,995 | 3 | 0.10 % | 1.23 % | 18.2 ms |" in md
    assert "inconclusive: green error rate upper bound" in md  # an issue and a lesson
    # the decisions table, the issues table, the lessons; not a fourth time ...
    assert md.count("green error rate upper bound 0.66 %") == 3
    assert "shift-25: bake extended 1 time(s)" in md  # ... for the extension
    assert "Issues encountered**: 1 " in md  # the clean drill is not one
    assert "pass at" in md  # the issue's resolution: the later pass
    assert "traffic on blue after 85.2 ms, complete in 1.73 s" in md
    assert "drained into SQLite to fence marker 9911" in md
    assert "| ops-lead | alice |" in md and "| dba | bob |" in md
    assert "maria" in md and "support saw no tickets at 100 %" in md
    assert "777" in md and "19.8 ms" in md  # monitor round
    assert f"pgshift rollback {done_rollout} -m" in md
    # the router's counts: totals per environment, failures, the outage, per phase
    assert ("the router saw 1,650 requests since the engine started the router" in md and
            "blue 500 (0 failed), green 1,150 (202 failed); 2 answered by the router itself"
            in md and "pgshift's own critical-path checks among them: 1; so clients sent 1,651"
            in md)
    assert ("**Downtime**: 204 failed request(s)" in md and "longest stretch with failures "
            "and no successful answer: 20.0 s" in md and "samples about every 10.0 s" in md)
    assert "| shift-25 | " in md and "| 450 | 0 | 1.50 ms | 1.99 ms | 150 | 0 | 12.5 ms |" in md
    assert "| shift-100 | " in md and "| 600 | 200 |" in md
    # bytes and copy time per table, as migrate counted them
    assert "| jobs | 12,345 | 4,567,890 | 2.8 s | 0 |" in md
    assert "| users | 1,234 | 98,765 | 250 ms | 0 |" in md
    # the operational documents, filled from the same facts
    assert "## Blue Decommissioning Checklist" in md
    assert "- [x] Approvals: ops-lead by alice, dba by bob" in md
    assert ("- [x] Nothing reaches blue any more: blue served 0 request(s) through the router "
            "after the flip") in md
    assert "- [ ] Blue stopped: finalize did not run yet" in md
    assert "## Incident Communication Template" in md
    assert "**Failed requests so far (router)**: 204" in md
    assert "**People on this deployment**: alice, bob, maria" in md
    assert "100 % of users read from the new database" in md
    assert "a rollback moved traffic back in 85.2 ms" in md
    assert not re.search(r"\[[A-Z][A-Za-z /]+\]", md), "a template placeholder is left"


def test_html_is_one_self_contained_file_with_charts(done_rollout: Path,
                                                     tmp_path: Path) -> None:
    out = tmp_path / "out" / "report.html"
    rep = make_report(done_rollout, "html", out)
    page = out.read_text()
    assert page == rep.text and page.startswith("<!doctype html>")
    # traffic share, error rate, latency p50/p99, sync lag over time; rows per table
    assert page.count("<svg") == 5
    for title in ("Traffic per environment over time", "Error rate over time per environment",
                  "Latency over time, p50 and p99", "Sync lag over time",
                  "Rows migrated per table"):
        assert f"<title>{title}" in page
    for line in ("blue p50", "blue p99", "green p50", "green p99", "green weight (set)",
                 "to PostgreSQL"):
        assert f"<title>{line}</title></polyline>" in page
    assert not re.search(r"<script|<link|<img|<iframe|\bsrc=|\bhref=|url\(|@import", page)
    assert "<title>jobs: 12,345</title>" in page  # the bars carry their values
    assert 'aria-label="done">' in page and 'aria-label="to do">' in page  # the checklist


def test_not_recorded_instead_of_placeholders(tmp_path: Path) -> None:
    cutover = tmp_path / "cutover.yaml"
    cutover.write_text(yaml.safe_dump(CUTOVER))
    j = Journal(StateDir.for_name(tmp_path, "shop"))
    j.acquire()
    _step(j, "preflight", {"journal_mode": "wal", "prerequisites": []})
    j.set(status="failed", phase="migrate")
    j.close()
    md = render(load_facts(cutover), "md")
    assert "**Status**: FAILED at migrate" in md
    assert "not recorded (the migrate step did not run)" in md
    assert "not recorded: no drill and no rollback ran" in md
    assert "Missing**: ops-lead, dba" in md
    assert "**Requests and failures**: not recorded: the engine journaled no traffic" in md
    assert "Failed client requests: not recorded (no traffic samples in the journal)" in md
    assert "no user has been moved to the new database yet" in md


def test_a_rollback_with_a_stranded_range_is_an_issue(tmp_path: Path) -> None:
    cutover = tmp_path / "cutover.yaml"
    cutover.write_text(yaml.safe_dump(CUTOVER))
    state = StateDir.for_name(tmp_path, "shop")
    j = Journal(state)
    j.acquire()
    state.audit("shift-50", "weight", "green weight 50 %", {"weight": 50})
    j.decide("shift-50", "fail", "green error rate 31 % over 5 %")
    stranded = {"count": None, "reason": "PostgreSQL is down"}
    res = {**DRILL, "reason": "shift-50 failed", "drill": False, "stranded": stranded,
           "traffic_back_ms": 97.0}
    _rollback_events(state, res)
    j.set(last_rollback=res, status="rolled_back")
    j.close()
    # a torn last line (a crash mid-append) is skipped
    with state.audit_log.open("a") as fh:
        fh.write('{"ts": "2026-')
    md = render(load_facts(cutover), "md")
    assert "**Status**: ROLLBACK" in md
    assert "fail: green error rate 31 % over 5 %" in md and "rolled back to blue" in md
    assert "STRANDED" in md and "PostgreSQL is down" in md
    assert "traffic on blue after 97.0 ms" in md
    assert "reproduce the failing step's errors" in md


def test_a_rehearsal_says_so(done_rollout: Path) -> None:
    """``pgshift rollout --rehearse`` ends rolled back on purpose (status rolled_back)."""
    j = Journal(StateDir.for_name(done_rollout.parent, "shop"))
    j.set(status="rolled_back", rehearsal=True, rehearsed=1796420000.0)
    j.close()
    md = render(load_facts(done_rollout), "md")
    assert ("**Status**: REHEARSED: cut over, monitored and swapped back to blue at "
            "2026-12-04 21:33:20 UTC" in md and f"`pgshift rollout {done_rollout} --resume`"
            in md)


def test_the_report_finalize_writes_shows_what_finalize_did(done_rollout: Path) -> None:
    """Finalize writes the report as its last act, before its step is journaled done:
    the checklist reads what it recorded so far, not "finalize did not run yet"."""
    j = Journal(StateDir.for_name(done_rollout.parent, "shop"))
    j.step_started("finalize")
    final = {"lag_ms": 0, "pending": 0, "to_sqlite_lag_ms": 21, "to_sqlite_pending": 1,
             "conflicts": 0, "parked": 0, "final_drain": {
        "drained": True, "fence_seq": 77, "seconds": 0.03, "applied": 0,
        "by_running_applier": True, "stranded": 0}}
    j.set(final_sync=final, finalize_progress={
        "sync": final, "capture_removed": {"sqlite_removed": True},
        "stop_blue": {"exit_code": 0},
        "archive": {"location": "/backups/shop-1.pgshift.tar", "verified": True},
        "optimize": {"proposals": [{"sql": "CREATE INDEX ..."}], "applied": []}})
    j.close()
    j = Journal(StateDir.for_name(done_rollout.parent, "shop"))
    j.set(status="running", phase="finalize")
    j.close()
    md = render(load_facts(done_rollout), "md")
    assert "**Status**: SUCCESS (written by finalize as its last act)" in md
    assert "finalize did not run" not in md
    assert "[x] Change capture removed" in md and "[x] Blue stopped:" in md
    assert ("[x] Final sync: to PostgreSQL lag 0 ms, 0 pending; to SQLite lag 21 ms, 1 "
            "pending; 0 conflict(s), 0 parked; final drain into SQLite: to fence marker 77 in "
            "0.03 s (by the running applier)") in md
    assert "pgshift archive restore /backups/shop-1.pgshift.tar --to blue-restored" in md
    assert "1 proposal(s), 0 applied" in md


def test_no_password_reaches_the_report(done_rollout: Path) -> None:
    """Free texts (a decision reason, a note, a failed step's error, a command's reason)
    may quote a DSN; the report is shared, so each is redacted on the way in."""
    secret = "s3cret-pw-42"
    dsn = f"postgresql://app:{secret}@db.internal/prod"
    state = StateDir.for_name(done_rollout.parent, "shop")
    j = Journal(state)
    j.decide("shift-100", "fail", f"probe failed: could not connect to {dsn}")
    state.audit("shift-100", "note", f"tried psql '{dsn}' by hand", actor="maria")
    j.enqueue("pause", actor="bob", reason=f"checking {dsn}")
    _step(j, "verify", {"error": f"connection to {dsn} refused", "password": secret},
          status="failed")
    j.close()
    facts = load_facts(done_rollout)
    for fmt in ("md", "html"):
        text = render(facts, fmt)  # type: ignore[arg-type]
        assert secret not in text, fmt
        assert "postgresql://app:***@db.internal/prod" in text or fmt == "html"
    for doc in ("rollback", "decommission", "incident"):
        assert secret not in render(facts, "md", doc)


def test_report_cli(done_rollout: Path, tmp_path: Path,
                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(done_rollout)]) == 0
    assert "# Production Deployment Report" in capsys.readouterr().out
    out = tmp_path / "r.html"
    assert main(["report", str(done_rollout), "--format", "html", "-o", str(out)]) == 0
    assert "<svg" in out.read_text()
    assert main(["report", str(done_rollout), "--format", "pdf"]) == 2
    err = capsys.readouterr().err
    assert "Error: --format pdf" in err and "Try:" in err


def test_no_journal_is_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cutover = tmp_path / "cutover.yaml"
    cutover.write_text(yaml.safe_dump(CUTOVER))
    with pytest.raises(UsageError, match="no rollout journal"):
        load_facts(cutover)
    assert main(["report", str(cutover)]) == 2
    assert "Try: pgshift rollout" in capsys.readouterr().err
    assert not (tmp_path / ".pgshift").exists()  # the report never creates state


def test_documents_alone(done_rollout: Path, tmp_path: Path,
                         capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(done_rollout), "--document", "decommission"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# Blue Decommissioning Checklist (shop)\n\n## As of 20")
    assert "- [x] Approvals: ops-lead by alice" in out and "## Deployment Summary" not in out
    page = tmp_path / "incident.html"
    assert main(["report", str(done_rollout), "-d", "incident", "-f", "html",
                 "-o", str(page)]) == 0
    text = page.read_text()
    assert "<title>Incident Communication Template (shop)</title>" in text
    assert '<pre class="text"><code>INVESTIGATING (shop)' in text
    assert main(["report", str(done_rollout), "--document", "postmortem"]) == 2
    err = capsys.readouterr().err
    assert "Error: --document postmortem: expected one of rollback, decommission, incident" \
        in err and "Try:" in err


def test_proxy_counters_read_the_proxys_own_metrics() -> None:
    """The series' exact source: the embedded proxy's cumulative Prometheus counters."""
    blue, green = BackendStats("blue"), BackendStats("green")
    blue.answered(200, 0.0018)
    blue.answered(503, 0.3)
    blue.failed()
    green.answered(200, 0.012)
    text: list[str] = []
    blue.prometheus(text)
    green.prometheus(text)
    c = proxy_counters("\n".join(text))
    assert c["blue"][:2] == [3, 2] and c["green"][:2] == [1, 0]
    assert sum(c["blue"][2:]) == 2  # the failed request has no latency
    assert c["blue"][2 + bucket_index(1.8)] == 1 and c["blue"][2 + bucket_index(300)] == 1
    assert c["green"][2 + bucket_index(12)] == 1
    # a restarted proxy counts from zero again: its counts go on from the new one's
    assert _delta([5, 0, 5], [9, 1, 8]) == [5, 0, 5]
    assert _delta([12, 1, 11], [9, 1, 8]) == [3, 0, 3]


def test_the_series_is_thinned_past_its_cap_and_keeps_its_totals(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(journal_mod, "MAX_SAMPLES", 10)
    j = Journal(StateDir.for_name(tmp_path, "shop"))
    thinned = 0
    for i in range(1, 26):  # 10 requests a row, one failing every fifth row
        row = {"blue": latency_counts(10 * i, i // 5, 2), "green": latency_counts(0, 0, 2),
               "refused": 0, "phase": "shift-25"}
        thinned += j.add_sample(1000.0 + i, row)
    rows = j.samples()
    j.close()
    assert thinned >= 2 and len(rows) <= 10
    assert rows[0][0] == 1001.0 and rows[-1][0] == 1025.0  # first and last kept
    t = Traffic(rows)
    assert t.total("blue")[:2] == [250, 5]
    assert sum(s.requests() for s in t.spans()) == 250 - 10  # all but the first row's own
    assert sum(s.errors() for s in t.spans()) == 5
