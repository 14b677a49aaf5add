"""``pgshift report`` of a real short rollout (engine, proxy, sync, live load).

The report's requests and failures are the router's counts (the engine's traffic
series); the load generator keeps its own. To compare them exactly the window is
defined so that both see the same requests: the load starts once the engine's proxy
listens (a TCP connect, no request) and stops -- in-flight requests answered -- while the
engine waits for an approval, before finalize takes the series' last row. The router
then saw exactly the load's requests, the load's 8 setup requests (one per rate-limit
key) and pgshift's own critical-path checks, which the report counts from the audit.
"""

from __future__ import annotations

import json
import re
import socket
import tarfile
import threading
import time
from pathlib import Path

import pytest
import zstandard

from pgshift.demo.ledger import check_ledger, read_ledger
from pgshift.demo.load import LoadOptions, LoadSummary, rate_limit_keys, run_load
from pgshift.dsn import Dsn
from pgshift.report import load_facts
from pgshift.report.content import num
from pgshift.rollout import engine
from rollout_helpers import Rig, rig

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def _listening(address: str, timeout: float = 120) -> None:
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on {address}")


class Operator:
    """The load for the rollout, stopped while the engine waits for ``qa``'s approval;
    then approves."""

    def __init__(self, r: Rig) -> None:
        self.r = r
        self.opts = LoadOptions(url=f"http://{r.data['router']['listen']}", rps=50.0,
                                duration=None, users=100, workers=1, ledger=r.ledger, seed=3,
                                run_id="t1")
        self.stop = threading.Event()
        self.loads: list[LoadSummary] = []
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self._load, daemon=True),
                        threading.Thread(target=self._approve, daemon=True)]

    def _load(self) -> None:
        _listening(self.r.data["router"]["listen"])
        self.loads.append(run_load(self.opts, stop=self.stop))

    def _approve(self) -> None:
        try:
            self.r.wait_for("phase", lambda p: p == "approvals", timeout=240)
        finally:
            self.stop.set()
        self.threads[0].join(timeout=60)
        time.sleep(0.5)  # a few series rows with the load stopped
        done = self.r.cli("approve", str(self.r.cutover), "--as", "qa", "--actor", "quinn")
        if done.returncode:
            self.errors.append(done.stderr)

    def __enter__(self) -> Operator:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)


def _archived_database(archive: Path, dest: Path) -> Path:
    """The database member of a pgshift archive, decompressed to ``dest``."""
    with tarfile.open(archive) as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
        member = next(m["name"] for m in manifest["members"] if m["kind"] == "database")
        data = tar.extractfile(member).read()  # type: ignore[union-attr]
    dest.write_bytes(zstandard.ZstdDecompressor().decompressobj().decompress(data))
    return dest


def test_report_of_a_real_rollout(tmp_path: Path, pg_dsn: Dsn,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    over = {"shift": {"drill": True},
            "finalize": {"approvals": ["qa"], "archive": {"dest": str(tmp_path / "archives")}}}
    with rig(tmp_path, pg_dsn, monkeypatch, over) as r:
        with Operator(r) as op:
            ctx = r.context()
            try:
                outcome = engine.run(ctx)
            finally:
                ctx.close()
        assert outcome.status == "done", outcome.message
        assert not op.errors, op.errors
        noted = r.cli("note", str(r.cutover), "support saw no tickets", "--actor", "maria")
        assert noted.returncode == 0, noted.stderr
        md = r.cli("report", str(r.cutover))
        assert md.returncode == 0, md.stderr
        html_file = tmp_path / "report.html"
        page = r.cli("report", str(r.cutover), "--format", "html", "-o", str(html_file))
        assert page.returncode == 0, page.stderr
        checklist = r.cli("report", str(r.cutover), "--document", "decommission")
        assert checklist.returncode == 0, checklist.stderr

    facts = load_facts(r.cutover)
    load = op.loads[0].total
    text = md.stdout
    assert "**Status**: SUCCESS" in text

    # the router's totals agree with the load generator's own, request for request
    t = facts.traffic
    blue, green = t.total("blue"), t.total("green")
    own = facts.router_checks_until(t.rows[-1][0])
    setup = len(rate_limit_keys(op.opts))
    assert load.sent == load.done > 500  # nothing was cut off in flight at the stop
    assert own > 0 and green[0] > 0 and blue[0] > 0
    assert blue[0] + green[0] + t.refused == load.done + setup + own
    assert blue[1] + green[1] + t.refused == load.errors == 0
    clients = blue[0] + green[0] + t.refused - own
    assert f"so clients sent {clients:,}" in text
    assert f"blue {blue[0]:,} (0 failed), green {green[0]:,} (0 failed)" in text
    assert "0 failed request(s)" in text and "no stretch without a successful answer" in text
    # the series is a time series: many rows, per phase, with latency quantiles
    phases = [s.phase for s in t.by_phase()]
    for name in ("shift-25", "shift-50", "shift-100", "monitor", "approvals"):
        assert name in phases, phases
    assert len(t.rows) > 10
    assert any(s.quantile("green", 0.5) is not None for s in t.spans())
    assert any(s.lag_ms is not None for s in t.spans())

    # the analysis figures per step, as recorded
    assert [s["weight"] for s in facts.shift_results] == [25, 50, 100]
    for s in facts.shift_results:
        assert f"| {s['weight']:g} % | {num(s['window_s'], 's')} | {s['requests']:,} |" in text
        assert s["requests"] <= green[0]
    mig = facts.step("migrate")
    assert mig is not None and f"{mig.figures['rows']:,} rows, 0 rejects" in text
    for table, fig in mig.figures["table_figures"].items():
        assert fig["bytes"] > 0 or fig["rows"] == 0
        assert f"| {table} | {fig['rows']:,} | {fig['bytes']:,} |" in text
    assert facts.drill is not None
    assert f"traffic on blue after {num(facts.drill['traffic_back_ms'], 'ms')}" in text
    assert f"writes held {num(facts.fence_hold_ms, 'ms')}" in text
    assert "| maria |" in text and "support saw no tickets" in text
    assert "monitor check" not in text and facts.monitor_rounds  # rounds are tabled
    assert "qa by quinn" in text  # the checklist's approvals
    assert "## Blue Decommissioning Checklist" in text
    assert "## Incident Communication Template" in text
    assert not re.search(r"\[[A-Z][A-Za-z /]+\]", text)
    # after finalize, the documents say blue is retired (and what remains to do)
    assert "[x] Nothing reaches blue any more: blue served 0 request(s)" in checklist.stdout
    assert "[x] Change capture removed" in checklist.stdout
    assert "[x] Final sync:" in checklist.stdout and "final drain into SQLite: to fence" \
        in checklist.stdout
    # blue's archive is exact: every write the load was answered for, green's included,
    # is in the archived SQLite database with its last acknowledged value
    final = facts.final_sync or {}
    assert final["final_drain"]["drained"], final
    archived = _archived_database(Path(facts.step("finalize").figures["archive"]["location"]),
                                  tmp_path / "archived.sqlite")
    check = check_ledger(read_ledger(r.ledger), sqlite_path=archived)
    assert check.acknowledged > 100 and check.violations == [], check.violations[:5]
    body = html_file.read_text()
    assert body.count("<svg") == 5
    # self-contained: nothing is fetched (the apps' URLs appear as text only)
    assert not re.search(r"<script|<link|<img|<iframe|\bsrc=|\bhref=|url\(|@import", body)
    assert "Traffic per environment over time" in body and "green p99" in body
