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
from pgshift.rollout.journal import Journal
from pgshift.state import StateDir

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
    started = time.time() - 4000
    j.set(status="running", run_started=started)
    _step(j, "preflight", {"journal_mode": "wal", "prerequisites": [], "seconds": 0.2})
    _step(j, "snapshot", {"bytes": 5_242_880, "hwm": 17, "seconds": 0.4})
    _step(j, "migrate", {"rows": 13_579, "rejects": 0, "migrate_seconds": 3.1,
                         "tables": {"users": 1234, "jobs": 12_345}, "seconds": 3.3})
    _step(j, "verify", {"identical": True, "tables": 2, "rows": 13_579, "seconds": 1.2})
    _step(j, "integration-tests", {"skipped": True, "why": "no integration tests configured"})
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
    j.set(fence_hold_ms=12.5, flipped=True)
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
    assert "Issues encountered**: 1 " in md  # the clean drill is not one
    assert "pass at" in md  # the issue's resolution: the later pass
    assert "traffic on blue after 85.2 ms, complete in 1.73 s" in md
    assert "drained into SQLite to fence marker 9911" in md
    assert "| ops-lead | alice |" in md and "| dba | bob |" in md
    assert "maria" in md and "support saw no tickets at 100 %" in md
    assert "777" in md and "19.8 ms" in md  # monitor round
    assert f"pgshift rollback {done_rollout} -m" in md
    assert "Failed client requests are not in the journal" in md
    assert not re.search(r"\[[A-Z][A-Za-z /]+\]", md), "a template placeholder is left"


def test_html_is_one_self_contained_file_with_charts(done_rollout: Path,
                                                     tmp_path: Path) -> None:
    out = tmp_path / "out" / "report.html"
    rep = make_report(done_rollout, "html", out)
    page = out.read_text()
    assert page == rep.text and page.startswith("<!doctype html>")
    assert page.count("<svg") == 5  # weight over time, error rate, p99, sync lag, rows
    assert not re.search(r"https?://", page)
    assert "<script" not in page and "<link" not in page and " src=" not in page
    assert "Green traffic weight over time" in page and "12,345" in page
    # the bars carry the measured values (tooltips for people, text for screen readers)
    assert "green 25 %: 18.25 ms" in page and "blue 100 %: 11.5 ms" in page
    assert "lag m1: 55 ms" in page and "rows jobs: 12,345" in page


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
