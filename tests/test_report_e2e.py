"""``pgshift report`` of a real short rollout (engine, proxy, sync, live load)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pgshift.dsn import Dsn
from pgshift.report import load_facts
from pgshift.report.content import num
from pgshift.rollout import engine
from rollout_helpers import rig

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def test_report_of_a_real_rollout(tmp_path: Path, pg_dsn: Dsn,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    with rig(tmp_path, pg_dsn, monkeypatch, {"shift": {"drill": True}}) as r:
        with r.load() as loads:
            ctx = r.context()
            try:
                outcome = engine.run(ctx)
            finally:
                ctx.close()
        assert outcome.status == "done", outcome.message
        noted = r.cli("note", str(r.cutover), "support saw no tickets", "--actor", "maria")
        assert noted.returncode == 0, noted.stderr
        md = r.cli("report", str(r.cutover))
        assert md.returncode == 0, md.stderr
        html_file = tmp_path / "report.html"
        page = r.cli("report", str(r.cutover), "--format", "html", "-o", str(html_file))
        assert page.returncode == 0, page.stderr

    facts = load_facts(r.cutover)
    load = loads[0]
    text = md.stdout
    assert "**Status**: SUCCESS" in text
    # the figures the proxy measured per step agree with the load generator's own totals
    green = sum(s["requests"] for s in facts.shift_results)
    green_errors = sum(s["errors"] for s in facts.shift_results)
    assert 0 < green <= load.total.done and green_errors == load.total.errors == 0
    assert [s["weight"] for s in facts.shift_results] == [25, 50, 100]
    for s in facts.shift_results:
        assert f"| {s['weight']:g} % | {num(s['window_s'], 's')} | {s['requests']:,} |" in text
    mig = facts.step("migrate")
    assert mig is not None and f"{mig.figures['rows']:,} rows, 0 rejects" in text
    for table, rows in mig.figures["tables"].items():
        assert f"| {table} | {rows:,} |" in text
    assert facts.drill is not None
    assert f"traffic on blue after {num(facts.drill['traffic_back_ms'], 'ms')}" in text
    assert f"writes held {num(facts.fence_hold_ms, 'ms')}" in text
    assert "| maria |" in text and "support saw no tickets" in text
    assert "monitor check" not in text and facts.monitor_rounds  # rounds are tabled
    assert f"pgshift rollback {r.cutover} -m" in text
    assert not re.search(r"\[[A-Z][A-Za-z /]+\]", text)
    body = html_file.read_text()
    assert body.count("<svg") == 5 and not re.search(r"https?://", body)
