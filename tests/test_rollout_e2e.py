"""The rollout engine end to end: short rollouts under ~50 requests/s of live load.

Blue and green are the reference app (threads), the engine's proxy and sync appliers are
real processes, PostgreSQL is the test server. Every test checks the write ledger: no
acknowledged write may be missing from the system of record.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from pgshift.demo.app_faults import Faults
from pgshift.dsn import Dsn
from pgshift.errors import ExitCode
from pgshift.rollout import engine, verbs
from pgshift.rollout.journal import CHAOS_ENV
from pgshift.rollout.steps import StepFailed
from rollout_helpers import Rig, rig

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def run_engine(r: Rig, **kw: Any) -> engine.Outcome:
    ctx = r.context(**kw)
    try:
        return engine.run(ctx)
    finally:
        ctx.close()


def sqlite_has_capture(db: Path) -> bool:
    import sqlite3

    with sqlite3.connect(db) as con:
        return con.execute("SELECT count(*) FROM sqlite_schema WHERE name LIKE "
                           "'_pgshift%'").fetchone()[0] > 0


def test_clean_rollout_to_100(tmp_path: Path, pg_dsn: Dsn, monkeypatch: pytest.MonkeyPatch
                              ) -> None:
    suffix = uuid.uuid4().hex[:8]
    monkeypatch.setenv("T_APP_PASSWORD", "app-pw-" + suffix)
    over = {"shift": {"drill": True},
            "provision": {"admin_dsn": "env:PGSHIFT_TEST_ROLLOUT_DSN",
                          "app_user": f"t_app_{suffix}", "database": f"t_prov_{suffix}",
                          "password_env": "T_APP_PASSWORD"},
            "finalize": {"archive": {"dest": str(tmp_path / "archives"), "keep": 2},
                         "optimize": {"apply": False}}}
    with rig(tmp_path, pg_dsn, monkeypatch, over) as r:
        events: list[str] = []
        timeline: list[tuple[float, str, Any]] = []

        def on_event(kind: str, data: Any) -> None:
            events.append(kind)
            timeline.append((round(time.time(), 3), kind, data))

        with r.load() as loads:
            outcome = run_engine(r, on_event=on_event)
        assert outcome.status == "done", outcome.message
        load = loads[0]
        # A failed request names itself (when, which side, what answer) next to the
        # engine's events, so an intermittent failure can be placed in the rollout.
        assert load.total.done > 500 and load.total.errors == 0, (
            load.total.failures, timeline, r.proxy_warnings())
        check = r.check_ledger("postgresql")
        assert check.acknowledged > 50 and check.violations == []
        steps = r.journal_value("shift_results")
        assert [s["weight"] for s in steps] == [25, 50, 100]
        assert all(s["decision"] == "pass" and s["requests"] >= 10 for s in steps)
        assert r.journal_value("fence_hold_ms") < 1000
        tail = r.journal_value("tail_check")  # behind the fence: the latest changed rows
        assert tail["ok"] and tail["checked"] > 10 and tail["diffs"] == [], tail
        drill = r.journal_value("drill")
        assert drill["drill"] and drill["traffic_back_ms"] < 1000 and drill["stranded"] is None
        assert "rolled-back" in events and "weight" in events
        # finalize removed capture from both sides and stopped the services
        assert not sqlite_has_capture(r.db)
        with psycopg.connect(pg_dsn.conninfo) as conn:
            assert conn.execute("SELECT to_regclass('pgshift.pg_changes')").fetchone()[0] is None
        assert r.journal_value("status") == "done"
        # the ops steps ran as library calls, not hooks
        steps_done = {s["name"]: s["figures"] for s in _journal_steps(r)}
        assert steps_done["provision"]["provision"]["app_user"] == f"t_app_{suffix}"
        fin = steps_done["finalize"]
        assert fin["archive"]["verified"] and Path(fin["archive"]["location"]).exists()
        # green's changes drained into SQLite up to a marker before blue was archived
        assert fin["sync"]["final_drain"]["drained"], fin["sync"]
        assert "proposals" in fin["optimize"]
        report = Path(fin["report"]["written"]["md"]).read_text()
        # finalize wrote the deployment report from this run's journal
        for weight in ("| 25 % |", "| 50 % |", "| 100 % |"):
            assert weight in report
        assert "re-advanced after the drill" in report and "## Rollback" in report
        assert Path(fin["report"]["written"]["html"]).read_text().count("<svg") >= 3
        assert 0 < steps_done["sync"]["db_probe_baseline_ms"] < 1000


def _journal_steps(r: Rig) -> list[dict[str, Any]]:
    import json
    import sqlite3

    con = sqlite3.connect(r.state_root / "journal.sqlite")
    try:
        return [{"name": n, "figures": json.loads(f)} for n, f in con.execute(
            "SELECT name, figures FROM steps WHERE status = 'done' ORDER BY id")]
    finally:
        con.close()


def test_failing_step_rolls_back_automatically(tmp_path: Path, pg_dsn: Dsn,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    with rig(tmp_path, pg_dsn, monkeypatch) as r:
        def fault(kind: str, data: dict[str, Any]) -> None:
            if kind == "weight" and data.get("weight") == 50:
                r.green.set_faults(Faults(error_rate=1.0))

        with r.load():
            outcome = run_engine(r, on_event=fault)
        assert outcome.status == "rolled_back"
        assert outcome.exit_code == ExitCode.ABORTED
        assert "shift-50" in outcome.message or "emergency" in outcome.message
        rb = r.journal_value("last_rollback")
        assert rb["traffic_back_ms"] < 1000 and rb["seconds"] < 10 and not rb["after_flip"]
        assert r.check_ledger("sqlite").violations == []
        ctx = r.context()
        try:
            assert ctx.router.weight() == 0
            assert verbs.status(ctx)["system_of_record"] == "blue"
            # the traffic series (the report's charts) goes on past the rollback
            last = ctx.journal.last_sample()
            assert last is not None and last[1]["weight"] == 0, last
        finally:
            ctx.close()


def _write_through_proxy(r: Rig, n: int) -> list[int]:
    url = f"http://{r.data['router']['listen']}"
    ids = []
    for i in range(n):
        resp = httpx.post(f"{url}/jobs", json={"type": "green-only", "payload": {"i": i}},
                          timeout=10)
        assert resp.status_code == 201, resp.text
        assert resp.headers.get("x-pgshift-served-by") == "green"
        ids.append(resp.json()["id"])
    return ids


def _sqlite_job_ids(db: Path, ids: list[int]) -> set[int]:
    import sqlite3

    with sqlite3.connect(db) as con:
        q = ",".join("?" * len(ids))
        return {row[0] for row in con.execute(f"SELECT id FROM jobs WHERE id IN ({q})", ids)}


def test_rollback_after_flip_carries_green_writes_back(tmp_path: Path, pg_dsn: Dsn,
                                                        monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    over = {"monitor": {"window": "120s", "interval": "1s"}}
    with rig(tmp_path, pg_dsn, monkeypatch, over) as r:
        result: list[engine.Outcome] = []
        with r.load():
            t = threading.Thread(target=lambda: result.append(run_engine(r)))
            t.start()
            r.wait_for("phase", lambda v: v == "monitor", timeout=150)
            ctx = r.context()
            try:  # the live view while the engine runs: sync's figures, not blanks
                sync = verbs.status(ctx)["sync"]
            finally:
                ctx.close()
            assert isinstance(sync["conflicts"], int) and isinstance(sync["parked"], int)
            assert sync["to_sqlite_lag_ms"] is not None
            ids = _write_through_proxy(r, 5)  # after the flip writes go to green
            # the operator's `pgshift rollback` from another process, while the engine runs
            out = r.cli("rollback", str(r.cutover), "-m", "test", "--json")
            assert out.returncode == 0, out.stdout + out.stderr
            t.join(timeout=120)
        assert result and result[0].status == "rolled_back"
        assert _sqlite_job_ids(r.db, ids) == set(ids)
        rb = r.journal_value("last_rollback")
        assert rb["after_flip"] and rb["stranded"] is None and rb["seconds"] < 10
        assert r.check_ledger("sqlite").violations == []
        # blue takes writes again: job_history's INTEGER PRIMARY KEY comes from SQLite's own
        # allocation, past every id green took (a collision would be a 409)
        for _ in range(5):
            resp = httpx.post(f"{r.blue.url}/jobs", json={"type": "after", "payload": {}})
            assert resp.status_code == 201, resp.text


def test_killed_mid_bake_then_resumed(tmp_path: Path, pg_dsn: Dsn,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    over = {"shift": {"steps": [{"weight": 25, "bake": "3s"}, {"weight": 50, "bake": "20s"},
                                {"weight": 100, "bake": "3s"}]}}
    with rig(tmp_path, pg_dsn, monkeypatch, over) as r:
        with r.load():
            proc = r.popen("rollout", str(r.cutover))
            r.wait_for("phase", lambda v: v == "shift-50", timeout=150)
            time.sleep(1.0)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            # traffic and sync carry on without the engine: the proxy still serves at 50 %
            assert r.journal_value("weight") == 50
            resumed = r.cli("rollout", str(r.cutover), "--resume", "--json")
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        assert r.journal_value("status") == "done"
        assert r.check_ledger("postgresql").violations == []


def test_killed_during_flip_then_resumed(tmp_path: Path, pg_dsn: Dsn,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    with rig(tmp_path, pg_dsn, monkeypatch) as r:
        with r.load() as loads:
            killed = r.cli("rollout", str(r.cutover), env={CHAOS_ENV: "flip_stage=held"})
            assert killed.returncode == -signal.SIGKILL
            # the fence is still held by the dead engine's proxy: writes wait (or 503 after
            # the proxy's fence timeout), none is lost; resume releases it
            resumed = r.cli("rollout", str(r.cutover), "--resume", "--json")
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        assert "reconciled" in (r.state_root / "audit.jsonl").read_text()
        assert r.journal_value("status") == "done"
        assert r.check_ledger("postgresql").violations == []
        assert loads[0].total.transport_errors == 0


def test_rollback_with_sync_process_dead(tmp_path: Path, pg_dsn: Dsn,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    over = {"monitor": {"window": "120s", "interval": "1s"}}
    with rig(tmp_path, pg_dsn, monkeypatch, over) as r, r.load():
        t = threading.Thread(target=lambda: run_engine(r))
        t.start()
        r.wait_for("phase", lambda v: v == "monitor", timeout=150)
        ids = _write_through_proxy(r, 3)
        ctx = r.context()
        try:
            ctx.procs.kill("sync-to-sqlite")
            res = verbs.request(ctx, "rollback", reason="sync died")
        finally:
            ctx.close()
        t.join(timeout=120)
        assert res.outcome.startswith(("rolled back", "rollback")), res
        assert _sqlite_job_ids(r.db, ids) == set(ids)
        assert r.journal_value("last_rollback")["stranded"] is None


def test_rollback_with_postgres_down_reports_stranded(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from pgshift.embedded_pg import EmbeddedPostgres

    server = EmbeddedPostgres(tmp_path / "pg")
    server.start()
    try:
        dsn = server.create_database("own")
        over = {"monitor": {"window": "120s", "interval": "1s"},
                "emergency": {"unavailable": "600s"}}
        with rig(tmp_path, dsn, monkeypatch, over) as r, r.load():
            t = threading.Thread(target=lambda: run_engine(r))
            t.start()
            r.wait_for("phase", lambda v: v == "monitor", timeout=150)
            _write_through_proxy(r, 2)
            server.stop()
            out = r.cli("rollback", str(r.cutover), "--json")
            t.join(timeout=120)
            assert out.returncode == ExitCode.DIFFERENCES, out.stdout + out.stderr
            rb = r.journal_value("last_rollback")
            assert rb["stranded"] and "reason" in rb["stranded"]
            assert rb["traffic_back_ms"] < 1000
            assert httpx.get(f"http://{r.data['router']['listen']}/health").status_code == 200
    finally:
        server.stop()


def test_failing_prerequisite_changes_nothing(tmp_path: Path, pg_dsn: Dsn,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    over = {"prerequisites": [{"name": "tests", "command": "exit 3"}]}
    with rig(tmp_path, pg_dsn, monkeypatch, over) as r:
        with pytest.raises(StepFailed, match="prerequisite gates failed: tests"):
            run_engine(r)
        assert not sqlite_has_capture(r.db)
        assert not (r.state_root / "procs" / "proxy.json").exists()
        with psycopg.connect(pg_dsn.conninfo) as conn:
            assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
                                ).fetchone()[0] == 0
        out = r.cli("rollout", str(r.cutover), "--resume")
        assert out.returncode == ExitCode.DIFFERENCES
        assert "prerequisite gates failed" in out.stderr


def test_finalize_refuses_without_approvals(tmp_path: Path, pg_dsn: Dsn,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    over = {"finalize": {"approvals": ["ops-lead", "tech-lead"], "approval_timeout": "2s"}}
    with rig(tmp_path, pg_dsn, monkeypatch, over) as r, r.load():
        with pytest.raises(StepFailed, match="no valid approval from ops-lead, tech-lead"):
            run_engine(r)
        assert sqlite_has_capture(r.db)  # nothing finalized
        assert r.cli("approve", str(r.cutover), "--as", "ops-lead").returncode == 0
        assert r.cli("approve", str(r.cutover), "--as", "nobody").returncode == ExitCode.USAGE
        assert r.cli("approve", str(r.cutover), "--as", "tech-lead").returncode == 0
        out = r.cli("rollout", str(r.cutover), "--resume", "--json")
        assert out.returncode == 0, out.stdout + out.stderr
        assert not sqlite_has_capture(r.db)


HAPROXY = shutil.which("haproxy") or (
    "/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None)


@pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed (apt-get install haproxy)")
def test_the_same_rollout_through_haproxy(tmp_path: Path, pg_dsn: Dsn,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from pgshift.traffic.haproxy import render_config, settings_from_cli, write_map

    assert HAPROXY is not None
    with rig(tmp_path, pg_dsn, monkeypatch) as r:
        listen = r.data["router"]["listen"]
        sock, map_file = tmp_path / "haproxy.sock", tmp_path / "pgshift.map"
        settings = settings_from_cli(blue=r.blue.url, green=r.green.url, listen=listen,
                                     socket_path=str(sock), map_file=str(map_file),
                                     cohort_header="X-User-Id", write_paths=("/rate-limits/*",),
                                     health_path="/health")
        (tmp_path / "haproxy.cfg").write_text(render_config(settings))
        write_map(map_file, 0, "blue")
        with open(tmp_path / "haproxy.log", "wb") as log:
            proc = subprocess.Popen([HAPROXY, "-db", "-f", str(tmp_path / "haproxy.cfg")],
                                    stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 10
            while not sock.exists():
                assert proc.poll() is None and time.monotonic() < deadline, \
                    (tmp_path / "haproxy.log").read_text()
                time.sleep(0.02)
            # HAProxy cannot hold writes: the flip is a declared short write pause
            # ... and reports counts, not latency distributions: no latency gate
            r.rewrite({"router": {"kind": "haproxy", "fence": {"mode": "pause"},
                                  "haproxy": {"socket": str(sock), "map_file": str(map_file)}},
                       "checks": {"gates": {"max_p99_ms": None}}})
            with r.load() as loads:
                outcome = run_engine(r)
            assert outcome.status == "done", outcome.message
            assert map_file.read_text() == "threshold 10000\nsor green\n"
            assert loads[0].total.done > 300
            assert r.check_ledger("postgresql").violations == []
            steps = r.journal_value("shift_results")
            assert [s["weight"] for s in steps] == [25, 50, 100]
            assert all(s["requests"] >= 10 for s in steps)
        finally:
            proc.terminate()
            proc.wait(10)


def test_rollback_with_a_dead_engine_and_a_broken_journal(tmp_path: Path, pg_dsn: Dsn,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    over = {"monitor": {"window": "120s", "interval": "1s"}}
    with rig(tmp_path, pg_dsn, monkeypatch, over) as r, r.load():
        # the engine dies (SIGKILL) as it enters monitoring, after the flip
        killed = r.cli("rollout", str(r.cutover), env={CHAOS_ENV: "phase=monitor"})
        assert killed.returncode == -signal.SIGKILL
        ids = _write_through_proxy(r, 3)
        journal = r.state_root / "journal.sqlite"
        for extra in ("-wal", "-shm"):
            Path(f"{journal}{extra}").unlink(missing_ok=True)
        journal.write_bytes(b"\x00garbage" * 512)
        out = r.cli("rollback", str(r.cutover), "-m", "journal lost", "--json")
        assert out.returncode == 0, out.stdout + out.stderr
        assert _sqlite_job_ids(r.db, ids) == set(ids)
        assert list(r.state_root.glob("journal.sqlite.broken-*"))
        assert "journal-broken" in (r.state_root / "audit.jsonl").read_text()
        ctx = r.context()
        try:
            assert ctx.router.weight() == 0
        finally:
            ctx.close()


def test_a_hung_engine_superseded_by_rollback_stays_hands_off(tmp_path: Path, pg_dsn: Dsn,
                                                                monkeypatch: pytest.MonkeyPatch
                                                                ) -> None:
    """Argo Rollouts #2117: the engine hangs (SIGSTOP) mid-bake, `pgshift rollback` takes
    over and rolls back; when the old engine wakes up it must stop without acting. Both
    the journal (lease epoch) and the proxy (the epoch sent with every change) refuse it."""
    over = {"shift": {"steps": [{"weight": 25, "bake": "3s"}, {"weight": 50, "bake": "60s"},
                                {"weight": 100, "bake": "3s"}]}}
    with rig(tmp_path, pg_dsn, monkeypatch, over) as r:
        with r.load():
            proc = r.popen("rollout", str(r.cutover))
            r.wait_for("phase", lambda v: v == "shift-50", timeout=150)
            proc.send_signal(signal.SIGSTOP)
            try:
                ctx = r.context()
                try:
                    old_epoch = ctx.journal.lease()["epoch"]
                    assert ctx.router.status()["controller_epoch"] == old_epoch
                finally:
                    ctx.close()
                out = r.cli("rollback", str(r.cutover), "-m", "engine hung", "--json")
                assert out.returncode == 0, out.stdout + out.stderr
            finally:
                proc.send_signal(signal.SIGCONT)
            proc.wait(timeout=60)
        log = (r.tmp / "engine.log").read_text()
        assert proc.returncode == ExitCode.USAGE, log
        assert "superseded" in log or "taken over" in log, log
        ctx = r.context()
        try:
            status = ctx.router.status()
            assert status["weight"] == 0 and status["system_of_record"] == "blue"
            assert status["controller_epoch"] > old_epoch
        finally:
            ctx.close()
        assert r.journal_value("status") == "rolled_back"
        assert r.check_ledger("sqlite").violations == []


def test_a_difference_in_the_tail_stops_the_flip_on_blue(tmp_path: Path, pg_dsn: Dsn,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """A row blue wrote that PostgreSQL holds differently (what a lost change looks like)
    is found by the tail check behind the fence: the flip fails, writes stay on blue."""
    over = {"shift": {"steps": [{"weight": 25, "bake": "3s"}, {"weight": 50, "bake": "3s"},
                                {"weight": 100, "bake": "10s"}]}}
    with rig(tmp_path, pg_dsn, monkeypatch, over) as r:
        failure: list[BaseException] = []

        def go() -> None:
            try:
                run_engine(r)
            except BaseException as exc:  # the engine's own error is the result here
                failure.append(exc)

        with r.load():
            t = threading.Thread(target=go)
            t.start()
            r.wait_for("phase", lambda v: v == "shift-100", timeout=150)
            resp = httpx.post(f"{r.blue.url}/users", timeout=10,
                              json={"email": "tail@x.test", "name": "Blue wrote this"})
            assert resp.status_code == 201, resp.text
            uid = resp.json()["id"]
            with psycopg.connect(pg_dsn.conninfo, autocommit=True) as pg:
                deadline = time.monotonic() + 30
                while pg.execute("SELECT 1 FROM users WHERE id = %s", (uid,)).fetchone() is None:
                    assert time.monotonic() < deadline, "sync did not carry the new user"
                    time.sleep(0.1)
                pg.execute("UPDATE users SET name = 'not what blue wrote' WHERE id = %s", (uid,))
            t.join(timeout=150)
        assert failure and "tail check" in str(failure[0]), failure
        tail = r.journal_value("tail_check")
        assert [(d["table"], d["key"], d["kind"]) for d in tail["diffs"]] == [
            ("users", {"id": str(uid)}, "changed")]
        assert r.journal_value("status") == "failed" and not r.journal_value("flipped")
        ctx = r.context()
        try:
            assert ctx.router.system_of_record() == "blue"
        finally:
            ctx.close()
        assert "tail-check-failed" in (r.state_root / "audit.jsonl").read_text()
        assert r.check_ledger("sqlite").violations == []


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", ["phase=sync", "flip_stage=holding", "flip_stage=flipped",
                                     "flip_stage=released", "rollback_stage=started",
                                     "phase=finalize"])
def test_killed_at_a_state_boundary_then_resumed(kill_at: str, tmp_path: Path, pg_dsn: Dsn,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The chaos test of the anchors: SIGKILL the engine right after a state is journaled
    (rollback_stage=started: in the drill's rollback), `--resume`, and the rollout ends
    done with no acknowledged write lost and no request failed but held writes' 503s."""
    with rig(tmp_path, pg_dsn, monkeypatch, {"shift": {"drill": True}}) as r:
        with r.load() as loads:
            killed = r.cli("rollout", str(r.cutover), env={CHAOS_ENV: kill_at})
            assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
            resumed = r.cli("rollout", str(r.cutover), "--resume", "--json")
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        assert r.journal_value("status") == "done"
        assert r.journal_value("drill")["drill"]
        if kill_at == "rollback_stage=started":  # completed as the drill it was
            assert "completed an interrupted rollback drill" in resumed.stdout + resumed.stderr
        if kill_at.startswith("flip_stage=") and kill_at != "flip_stage=holding":
            assert r.journal_value("flipped")  # not flipped (and tail-checked) a second time
        assert r.check_ledger("postgresql").violations == []
        total = loads[0].total
        # a write held by the dead engine's fence may be answered 503 after the proxy's
        # fence timeout; nothing else may fail
        assert total.transport_errors == 0 and set(total.statuses) <= {
            "200", "201", "204", "404", "409", "429", "503"}, (total.failures,
                                                                r.proxy_warnings())
        if not kill_at.startswith("flip_stage=holding"):
            assert total.errors == 0, (total.failures, r.proxy_warnings())


def test_a_rehearsal_cuts_over_swaps_back_then_the_real_cutover_resumes(
        tmp_path: Path, pg_dsn: Dsn, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--rehearse`: the whole cutover, flip and monitoring included, then back to blue as
    a rollback goes (green's writes carried into SQLite); `--resume` afterwards runs the
    real cutover from the first traffic step. No acknowledged write lost in either."""
    with rig(tmp_path, pg_dsn, monkeypatch, {"rehearsal": {"monitor": "2s"}}) as r:
        with r.load() as rehearsal_load:
            out = r.cli("rollout", str(r.cutover), "--rehearse", "--json")
        assert out.returncode == 0, out.stdout + out.stderr
        result = json.loads(out.stdout)
        assert result["status"] == "rehearsed" and result["swap_back"]["after_flip"]
        assert result["swap_back"]["stranded"] is None
        assert r.journal_value("status") == "rolled_back" and r.journal_value("rehearsed")
        assert r.journal_value("fence_hold_ms") < 1000  # the flip was rehearsed too
        assert (r.state_root / "report" / "deployment-report.md").exists()
        assert r.check_ledger("sqlite").violations == []
        ctx = r.context()
        try:
            assert ctx.router.weight() == 0 and ctx.router.system_of_record() == "blue"
        finally:
            ctx.close()
        with r.load(run_id="t2") as real_load:
            resumed = r.cli("rollout", str(r.cutover), "--resume", "--json")
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        assert json.loads(resumed.stdout)["status"] == "done"
        assert r.journal_value("status") == "done" and not r.journal_value("rehearsal")
        # the real run watched its own monitoring window (not the rehearsal's, long over)
        import sqlite3

        with sqlite3.connect(r.state_root / "journal.sqlite") as con:
            rounds = [json.loads(f)["checks"] for (f,) in con.execute(
                "SELECT figures FROM steps WHERE name = 'monitor' AND status = 'done' "
                "ORDER BY id")]
        assert len(rounds) == 2 and all(n >= 1 for n in rounds), rounds
        assert r.check_ledger("postgresql").violations == []
        for load in (rehearsal_load, real_load):
            assert load[0].total.errors == 0, (load[0].total.failures, r.proxy_warnings())
