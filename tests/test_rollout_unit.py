"""The rollout engine's parts that need no running system: the cutover file, the step
analysis, the journal (lease, epochs, commands, approvals), hooks, plan and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from pgshift.cli.main import app
from pgshift.errors import LockedError, UsageError
from pgshift.rollout import config as cfgmod
from pgshift.rollout.analysis import analyse, error_bounds, requests_needed
from pgshift.rollout.config import Gates
from pgshift.rollout.hooks import junit_pass_rate, run_hook, substitute
from pgshift.rollout.journal import Journal, StaleEpoch
from pgshift.rollout.verbs import plan
from pgshift.state import StateDir
from pgshift.traffic.router import BackendFigures, Figures

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "cutover.example.yaml"

MINIMAL = {"name": "app", "source": {"sqlite": "app.db"}, "target": {"dsn": "env:DB"},
           "apps": {"blue": {"url": "http://b"}, "green": {"url": "http://g"}}}


def write(tmp: Path, data: dict, name: str = "cutover.yaml") -> Path:
    p = tmp / name
    p.write_text(yaml.safe_dump(data))
    return p


# -- the cutover file -------------------------------------------------------------------


def test_documented_example_loads_with_every_section() -> None:
    cfg, base = cfgmod.load(EXAMPLE)
    assert cfg.name == "hyperpage-prod" and base == EXAMPLE.parent
    assert [s.weight for s in cfg.shift.steps] == [10, 25, 50, 100]
    assert cfg.shift.steps[-1].approval == "required"
    assert cfg.checks.gates.max_error_rate == pytest.approx(0.001)
    assert cfg.monitor.window == 48 * 3600 and cfg.router.fence.max_hold == 5
    assert cfg.prerequisites[0].min_pass_rate == pytest.approx(0.95)
    assert cfg.finalize.approvals == ("tech-lead", "ops-lead", "project-manager")
    assert cfg.tables["jobs"] == {"kind": "queue", "green_writes": "forbid"}


def test_defaults_follow_the_runbook(tmp_path: Path) -> None:
    cfg, _ = cfgmod.load(write(tmp_path, MINIMAL))
    assert [s.weight for s in cfg.shift.steps] == [10, 25, 50, 100]
    assert all(s.bake == 600 for s in cfg.shift.steps)
    assert cfg.checks.gates.max_error_rate == pytest.approx(0.001)
    assert cfg.emergency.unavailable == 300 and cfg.emergency.error_rate == 0.05
    assert cfg.emergency.error_rate_for == 600 and cfg.emergency.p99_ratio == 2.0
    assert cfg.monitor.window == 172800 and cfg.monitor.interval == 3600
    assert cfg.source.sqlite == tmp_path / "app.db"  # relative to the cutover file


@pytest.mark.parametrize(("change", "message"), [
    ({"target": {"dsn": "postgresql://u:s3cret@h/db"}}, "holds a password"),
    ({"target": {"dsn": "host=h password=s3cret"}}, "holds a password"),
    ({"shift": {"steps": [{"weight": 50}, {"weight": 25}, {"weight": 100}]}}, "increase"),
    ({"shift": {"steps": [{"weight": 10}, {"weight": 50}]}}, "must be weight 100"),
    ({"shift": {"steps": [{"weight": 10, "bake": "ten minutes"}, {"weight": 100}]}},
     "not a duration"),
    ({"checks": {"gates": {"max_error_rate": "150%"}}}, "0..100"),
    ({"router": {"token": "plain-secret"}}, "env:VAR"),
    ({"router": {"kind": "haproxy"}}, "router.haproxy"),
    ({"prerequisites": [{"name": "x", "command": "true", "confirm": "y"}]}, "exactly one"),
    ({"unknown_key": 1}, "unknown_key"),
    ({"name": "../escape"}, "name"),
])
def test_bad_cutover_files_are_one_line_usage_errors(tmp_path: Path, change: dict,
                                                     message: str) -> None:
    data = {**MINIMAL, **change}
    with pytest.raises(UsageError, match=message) as err:
        cfgmod.load(write(tmp_path, data))
    assert "\n" not in err.value.message and "s3cret" not in err.value.message


def test_unreadable_cutover_files(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        cfgmod.load(tmp_path / "nope.yaml")
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\x00\xff\xfe garbage")
    with pytest.raises(UsageError, match="not a YAML file"):
        cfgmod.load(binary)
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(UsageError, match="mapping at the top level"):
        cfgmod.load(tmp_path / "list.yaml")


def test_time_scale_divides_every_duration(tmp_path: Path) -> None:
    cfg, _ = cfgmod.load(write(tmp_path, {**MINIMAL, "time_scale": 60}))
    assert cfg.seconds(cfg.shift.steps[0].bake) == 10.0


def test_dump_round_trips(tmp_path: Path) -> None:
    cfg, _ = cfgmod.load(EXAMPLE)
    again = cfgmod.Cutover.model_validate(yaml.safe_load(cfgmod.dump(cfg)))
    assert again == cfg


# -- the analysis ---------------------------------------------------------------------------


def figures(green: tuple[int, int], blue: tuple[int, int] = (5000, 0),
            green_ms: float = 5.0, blue_ms: float = 5.0) -> Figures:
    g = BackendFigures.from_latencies([green_ms] * green[0], errors5xx=green[1])
    b = BackendFigures.from_latencies([blue_ms] * blue[0], errors5xx=blue[1])
    return Figures(window=60.0, blue=b, green=g, source="test")


def test_zero_errors_in_450_requests_cannot_show_under_0_1_percent() -> None:
    lower, upper = error_bounds(0, 450, 0.95)
    assert lower == 0 and upper == pytest.approx(0.00663, rel=0.01)
    a = analyse(figures((450, 0)), Gates(max_error_rate=0.001, min_requests=200))
    assert a.verdict == "inconclusive"
    assert "2,995" in a.reasons[0]  # the requests that would prove it
    assert requests_needed(0.001, 0.95) == 2995


def test_four_outcomes() -> None:
    gates = Gates(max_error_rate=0.01, min_requests=200)
    assert analyse(figures((100, 0)), gates).verdict == "insufficient-data"
    assert analyse(figures((5000, 0)), gates).verdict == "pass"
    assert analyse(figures((5000, 200)), gates).verdict == "fail"  # 4 %, surely above 1 %
    # 1 %, like blue: the bound straddles the ceiling
    assert analyse(figures((400, 4), (5000, 50)), gates).verdict == "inconclusive"


def test_no_traffic_is_never_a_pass() -> None:
    a = analyse(figures((0, 0), (0, 0)), Gates(min_requests=1))
    assert a.verdict == "insufficient-data" and a.reasons


def test_green_worse_than_blue_fails_even_under_the_ceiling() -> None:
    gates = Gates(max_error_rate=0.05, min_requests=200)
    # 2 % vs 0 %: under the 5 % ceiling, but significantly worse than blue
    assert analyse(figures((20000, 400), (20000, 0)), gates).verdict == "fail"


def test_latency_ratio_needs_the_test_too() -> None:
    gates = Gates(max_error_rate=0.05, min_requests=200, max_p99_ratio=1.5)
    a = analyse(figures((3000, 0), (3000, 0), green_ms=40, blue_ms=5), gates)
    assert a.verdict == "fail" and any("p99" in r for r in a.reasons)


# -- the journal ------------------------------------------------------------------------------


def test_lease_epochs_fence_a_stale_controller(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "s")
    first = Journal(state)
    assert first.acquire() == 1
    first.set(weight=10)
    # as if the first controller were another live process (our parent)
    first._con.execute("UPDATE lease SET pid = ?", (os.getppid(),))
    second = Journal(state)
    with pytest.raises(LockedError, match="another rollout"):
        second.acquire()
    assert second.acquire(force=True) == 2
    with pytest.raises(StaleEpoch):
        first.set(weight=50)  # the old controller cannot act any more
    with pytest.raises(StaleEpoch):
        first.heartbeat()
    assert second.get("weight") == 10
    second.set(weight=25)
    assert Journal(state).get("weight") == 25


def test_a_dead_controllers_lease_is_taken_over(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "s")
    j = Journal(state)
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True)
    dead = int(proc.stdout)
    j._con.execute("INSERT INTO lease (id, epoch, pid, host, heartbeat) VALUES "
                   "(1, 7, ?, ?, strftime('%s','now'))", (dead, os.uname().nodename))
    assert j.acquire() == 8


def test_commands_and_approvals_are_recorded_with_who(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "s")
    j = Journal(state)
    cid = j.enqueue("pause", actor="alice", reason="latency blip")
    [cmd] = j.pending()
    assert (cmd.id, cmd.verb, cmd.actor, cmd.reason) == (cid, "pause", "alice", "latency blip")
    j.handled(cmd, "paused")
    assert j.pending() == [] and j.command(cid).outcome == "paused"
    j.approve("ops-lead", actor="bob", note="clean")
    assert j.approvals()["ops-lead"]["actor"] == "bob"
    events = [json.loads(line) for line in state.audit_log.read_text().splitlines()]
    assert [e["kind"] for e in events] == ["command", "command-handled", "approval"]
    assert events[0]["actor"] == "alice"


def test_processes_racing_for_the_proxy_token_all_get_the_first_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from pgshift.rollout.verbs import open_context

    monkeypatch.delenv("PGSHIFT_ADMIN_TOKEN", raising=False)
    path = write(tmp_path, MINIMAL)
    contexts = [open_context(path) for _ in range(8)]
    start, tokens = threading.Barrier(len(contexts)), []

    def take(ctx: object) -> None:
        start.wait()
        tokens.append(ctx.admin_token())  # type: ignore[attr-defined]

    threads = [threading.Thread(target=take, args=(c,)) for c in contexts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for c in contexts:
        c.close()
    procs = contexts[0].state.root / "procs"
    assert len(tokens) == 8 and len(set(tokens)) == 1 and len(tokens[0]) > 20
    assert (procs / "proxy.token").read_text() == tokens[0]
    assert (procs / "proxy.token").stat().st_mode & 0o777 == 0o600
    assert [p.name for p in procs.iterdir()] == ["proxy.token"]  # nothing left aside


def test_events_are_redacted_for_the_terminal_the_audit_and_listeners(
        tmp_path: Path) -> None:
    from pgshift.rollout.verbs import open_context

    said: list[str] = []
    heard: list[dict] = []
    ctx = open_context(write(tmp_path, MINIMAL), say=said.append,
                       on_event=lambda kind, data: heard.append(data))
    try:
        ctx.event("sync", "failed", "connect to postgresql://app:pw-123@db/x failed",
                  {"dsn": "host=db password=pw-123 dbname=x"})
        trail = ctx.state.audit_log.read_text()
    finally:
        ctx.close()
    assert said == ["[sync] connect to postgresql://app:***@db/x failed"]
    assert "pw-123" not in trail and "pw-123" not in json.dumps(heard)


def test_approvals_expire_after_approval_valid_for(tmp_path: Path) -> None:
    """Durable approvals that also expire (the anchors): one older than
    ``finalize.approval_valid_for`` no longer counts and the status names it expired."""
    import time

    from pgshift.rollout.steps import current_approvals
    from pgshift.rollout.verbs import open_context

    data = {**MINIMAL, "finalize": {"approvals": ["tech-lead", "ops-lead"],
                                    "approval_valid_for": "2h"}}
    ctx = open_context(write(tmp_path, data))
    try:
        ctx.journal.approve("tech-lead", actor="alice")
        ctx.journal.approve("ops-lead", actor="bob")
        valid, expired = current_approvals(ctx)
        assert set(valid) == {"tech-lead", "ops-lead"} and expired == {}
        # three hours on, both have expired; a new approval of one counts again
        valid, expired = current_approvals(ctx, now=time.time() + 3 * 3600)
        assert valid == {} and set(expired) == {"tech-lead", "ops-lead"}
        assert expired["ops-lead"]["actor"] == "bob"
        assert cfgmod.load(EXAMPLE)[0].finalize.approval_valid_for == 24 * 3600
    finally:
        ctx.close()


def test_a_broken_journal_is_a_clear_error(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "s").ensure()
    state.journal.write_bytes(b"not a database at all" * 100)
    with pytest.raises(Exception, match="unreadable"):
        Journal(state)


# -- hooks -----------------------------------------------------------------------------------


def test_hooks_substitute_quoted_values_and_keep_the_output_tail(tmp_path: Path) -> None:
    assert substitute("curl {green_url}/x", {"green_url": "http://h; rm -rf /"}) == \
        "curl 'http://h; rm -rf /'/x"
    r = run_hook("echo hello {name}; exit 3", {"name": "world"})
    assert r.exit_code == 3 and "hello world" in r.output and not r.ok
    slow = run_hook("sleep 5", {}, timeout=0.3)
    assert slow.exit_code is None and "timed out" in slow.output


def test_junit_pass_rate(tmp_path: Path) -> None:
    report = tmp_path / "junit.xml"
    report.write_text("""<testsuites><testsuite>
      <testcase name="a"/><testcase name="b"><failure/></testcase>
      <testcase name="c"><skipped/></testcase><testcase name="d"/><testcase name="e"/>
    </testsuite></testsuites>""")
    assert junit_pass_rate(report) == (3, 4)
    (tmp_path / "bad.xml").write_text("<testsuite>")
    with pytest.raises(UsageError, match="JUnit"):
        junit_pass_rate(tmp_path / "bad.xml")


# -- plan and the CLI ----------------------------------------------------------------------------


def test_plan_states_steps_eta_and_what_cannot_be_proven() -> None:
    out = plan(EXAMPLE)
    assert out["phases"][:3] == ["preflight", "provision", "router"]
    assert out["phases"][-4:] == ["flip", "monitor", "approvals", "finalize"]
    assert [s["weight"] for s in out["steps"]] == [10, 25, 50, 100]
    assert out["steps"][0]["requests_needed_to_pass"] == 2995
    assert out["eta_s"] == 65 * 60 + 48 * 3600
    assert any("2,995" in w for w in out["warnings"])


runner = CliRunner()
VERBS = ["rollout", "plan", "status", "promote", "pause", "resume", "abort", "rollback",
         "approve", "note"]


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_has_help_with_an_example(verb: str) -> None:
    result = runner.invoke(app, [verb, "--help"])
    assert result.exit_code == 0
    assert "cutover.yaml" in result.output


def test_plan_cli_json_and_missing_file(tmp_path: Path) -> None:
    from pgshift.cli.main import main

    assert main(["plan", str(EXAMPLE), "--json"]) == 0
    assert main(["plan", str(tmp_path / "missing.yaml")]) == 2


def test_rollout_of_a_bad_file_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                         ) -> None:
    from pgshift.cli.main import main

    bad = write(tmp_path, {**MINIMAL, "target": {"dsn": "postgresql://u:pw1234@h/d"}})
    assert main(["rollout", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "holds a password" in err and "pw1234" not in err


def test_notifications_reach_a_webhook_and_failures_are_returned(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import http.server
    import threading

    from pgshift.rollout.config import Notify
    from pgshift.rollout.hooks import notify

    got: list[dict] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("HOOK_URL", f"http://127.0.0.1:{server.server_port}/x")
        assert notify(Notify(webhook="env:HOOK_URL"), {"kind": "rolled-back"}) == []
        assert got == [{"kind": "rolled-back"}]
    finally:
        server.shutdown()
        server.server_close()
    failures = notify(Notify(webhook=f"http://127.0.0.1:{server.server_port}/x"), {"k": 1})
    assert failures and failures[0].startswith("webhook:")


def test_plan_with_data_shows_ddl_types_and_write_topology(
        tmp_path: Path, pg_dsn: object, monkeypatch: pytest.MonkeyPatch) -> None:
    from pgshift.demo.seed import seed
    from pgshift.dsn import Dsn

    assert isinstance(pg_dsn, Dsn)
    db = tmp_path / "app.db"
    seed(db, 100, seed=3)
    monkeypatch.setenv("PLAN_DSN", pg_dsn.conninfo)
    data = {**MINIMAL, "source": {"sqlite": str(db)}, "target": {"dsn": "env:PLAN_DSN"},
            "tables": {"jobs": {"kind": "queue"}}}
    out = plan(write(tmp_path, data), data=True)
    tables = {t["name"]: t for t in out["migrate"]["plan"]["tables"]}
    assert "CREATE TABLE" in tables["jobs"]["ddl"]
    assert all(c["pg_type"] for c in tables["jobs"]["columns"])
    topology = {r["table"]: r for r in out["sync"]["tables"]}
    assert topology["jobs"]["kind"] == "queue" and topology["jobs"]["key"]
    # nothing was changed: no table in the target, no capture in the source
    import sqlite3

    import psycopg

    with psycopg.connect(pg_dsn.conninfo) as conn:
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
                            ).fetchone()[0] == 0
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT count(*) FROM sqlite_schema WHERE name LIKE "
                           "'_pgshift%'").fetchone()[0] == 0
    from pgshift.cli.main import main

    assert main(["plan", str(tmp_path / "cutover.yaml"), "--data"]) == 0
