"""pgshift optimize against the real PostgreSQL: proposals from a real workload, concurrent
builds while writes run, a failed build cleaned up, the non-immutable predicate refused."""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from psycopg import conninfo, sql

from pgshift.cli.main import main
from pgshift.dsn import Dsn, connect
from pgshift.errors import UsageError
from pgshift.ops.exporter import HealthExporter, prometheus_text
from pgshift.ops.index_build import index_state
from pgshift.ops.optimize import optimize
from pgshift.ops.watch import HealthSample, watch

pytestmark = pytest.mark.integration
ROWS = 60_000


def _flush(conn: psycopg.Connection) -> None:
    """Make this backend's table statistics visible now (they are flushed lazily)."""
    conn.execute("SELECT pg_stat_force_next_flush()")
    conn.execute("SELECT 1")


@pytest.fixture
def events(pg_conn: psycopg.Connection, pg_dsn: Dsn) -> Dsn:
    """A large table read by account_id through sequential scans, and pg_stat_statements."""
    pg_conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    pg_conn.execute("CREATE TABLE events (id bigserial PRIMARY KEY, account_id int NOT NULL, "
                    "kind text NOT NULL, payload text, created_at timestamptz NOT NULL "
                    "DEFAULT now())")
    pg_conn.execute("INSERT INTO events (account_id, kind, payload) SELECT g %% 5000, "
                    "'k' || (g %% 7), repeat('x', 40) FROM generate_series(1, %s) g", (ROWS,))
    pg_conn.execute("ANALYZE events")
    with connect(pg_dsn, autocommit=True) as app:
        for account in range(30):
            app.execute("SELECT count(*) FROM events WHERE account_id = %s", (account,))
        _flush(app)
    return pg_dsn


def test_proposes_an_index_for_seq_scans_and_builds_it_while_writes_run(events: Dsn) -> None:
    plan = optimize(events, min_rows=1000)
    [proposal] = [p for p in plan.proposals if p.table == "events"]
    assert proposal.columns == ["account_id"] and proposal.source == "seq-scan"
    assert "sequential scans" in proposal.reason
    assert any("account_id = $1" in q.query and q.calls == 30 for q in proposal.queries)
    assert not plan.applied and plan.builds == []

    commits: list[float] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def write() -> None:
        try:
            with connect(events, autocommit=True) as app:
                i = 0
                while not stop.is_set():
                    app.execute("INSERT INTO events (account_id, kind) VALUES (%s, 'w')", (i,))
                    app.execute("UPDATE events SET payload = 'u' WHERE id = %s", (i + 1,))
                    commits.append(time.time())
                    i += 1
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        time.sleep(0.2)
        done = optimize(events, apply=True, min_rows=1000)
    finally:
        stop.set()
        writer.join()
    assert errors == []
    [outcome] = [b for b in done.builds if b.name == proposal.name]
    assert outcome.status == "built" and not outcome.dropped_invalid
    during = [t for t in commits if outcome.started_at <= t <= outcome.finished_at]
    assert during, "the writer committed nothing while the index was built"
    assert outcome.before is not None and outcome.after is not None
    assert outcome.before.plan == "Seq Scan" and "Seq Scan" not in outcome.after.plan
    assert outcome.after.ms < outcome.before.ms
    with connect(events, autocommit=True) as conn:
        assert index_state(conn, "public", proposal.name) is True
    # Idempotent: the proposal is gone once its index exists.
    assert not [p for p in optimize(events, min_rows=1000).proposals if p.table == "events"]


def test_failed_concurrent_build_is_cleaned_up(events: Dsn, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    planned = tmp_path / "planned.sql"
    planned.write_text("-- kind repeats, so a unique index cannot be built\n"
                       "CREATE UNIQUE INDEX events_kind_key ON events (kind);\n")
    result = optimize(events, apply=True, planned_sql=planned, auto=False)
    [outcome] = result.builds
    assert outcome.status == "failed" and outcome.error and outcome.error.startswith("23505")
    assert outcome.dropped_invalid
    with connect(events, autocommit=True) as conn:
        assert index_state(conn, "public", "events_kind_key") is None
    assert main(["optimize", events.conninfo, "--file", str(planned), "--planned-only",
                 "--apply"]) == 5
    err = capsys.readouterr().err
    assert "Error: index build failed: events_kind_key: 23505" in err
    assert "(its INVALID index was dropped)" in err
    assert "password=" not in err or "password=***" in err


def test_lock_timeout_bounds_the_wait_for_a_blocking_transaction(events: Dsn,
                                                                 tmp_path: Path) -> None:
    planned = tmp_path / "planned.sql"
    planned.write_text("CREATE INDEX events_kind_idx ON events (kind)")
    with connect(events) as blocker:  # an uncommitted write: the build must wait for it
        blocker.execute("INSERT INTO events (account_id, kind) VALUES (1, 'open')")
        started = time.perf_counter()
        [outcome] = optimize(events, apply=True, planned_sql=planned, auto=False,
                             lock_timeout="300ms").builds
        waited = time.perf_counter() - started
        assert outcome.status == "failed" and outcome.error
        assert outcome.error.startswith("55P03")  # lock_not_available
        assert waited < 5
        # The drop of the INVALID index waits for the same transaction: it is left for later.
        assert outcome.invalid_left and not outcome.dropped_invalid
        blocker.rollback()
    [again] = optimize(events, apply=True, planned_sql=planned, auto=False).builds
    assert again.status == "built" and again.dropped_invalid
    with connect(events, autocommit=True) as conn:
        assert index_state(conn, "public", "events_kind_idx") is True


def test_an_invalid_leftover_is_dropped_and_rebuilt(events: Dsn, tmp_path: Path) -> None:
    with connect(events, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute("CREATE UNIQUE INDEX CONCURRENTLY events_kind_idx ON events (kind)")
        assert index_state(conn, "public", "events_kind_idx") is False
    planned = tmp_path / "planned.sql"
    planned.write_text("CREATE INDEX events_kind_idx ON events (kind)")
    [outcome] = optimize(events, apply=True, planned_sql=planned, auto=False).builds
    assert outcome.status == "built" and outcome.dropped_invalid
    with connect(events, autocommit=True) as conn:
        assert index_state(conn, "public", "events_kind_idx") is True


def test_non_immutable_predicate_is_refused_with_a_working_alternative(
        pg_conn: psycopg.Connection, pg_dsn: Dsn, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    pg_conn.execute("CREATE TABLE rate_limits (key text PRIMARY KEY, remaining int NOT NULL, "
                    "reset_at timestamptz NOT NULL)")
    pg_conn.execute("CREATE TABLE jobs (id text PRIMARY KEY, status text NOT NULL, "
                    "scheduled_at timestamptz NOT NULL)")
    planned = tmp_path / "planned.sql"
    planned.write_text(
        "CREATE INDEX idx_jobs_due ON jobs(status, scheduled_at)\n"
        "  WHERE status IN ('pending', 'processing');\n"
        "CREATE INDEX idx_rate_limits_active ON rate_limits(key) WHERE reset_at > NOW();\n")
    result = optimize(pg_dsn, apply=True, planned_sql=planned, auto=False)
    [good, bad] = result.planned
    assert good.refused is None and good.proposal is not None
    assert good.proposal.predicate == "status IN ('pending', 'processing')"
    assert bad.refused and "IMMUTABLE" in bad.refused and "NOW()" in bad.refused
    assert bad.advice is not None and "range scan on reset_at" in bad.advice
    alternative = bad.alternative
    assert alternative == ("CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_rate_limits_active ON "
                           "public.rate_limits (key, reset_at)")
    # Nothing is built while the file holds a refused statement.
    assert not result.applied and result.builds == []
    assert index_state(pg_conn, "public", "idx_jobs_due") is None
    pg_conn.execute(alternative)  # the alternative is one PostgreSQL accepts
    assert index_state(pg_conn, "public", "idx_rate_limits_active") is True

    assert main(["optimize", pg_dsn.conninfo, "--file", str(planned), "--planned-only"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Error: planned index refused: index predicates must be IMMUTABLE")
    assert f"Try: replace it in {planned} with: CREATE INDEX CONCURRENTLY IF NOT EXISTS " \
        "idx_rate_limits_active ON public.rate_limits (key, reset_at);" in err


def test_a_statement_that_is_not_create_index_is_bad_input(pg_dsn: Dsn, tmp_path: Path) -> None:
    planned = tmp_path / "planned.sql"
    planned.write_text("DROP TABLE users;")
    with pytest.raises(UsageError, match="not a named CREATE INDEX"):
        optimize(pg_dsn, planned_sql=planned, auto=False)


@pytest.fixture
def reader(pg_server: object, pg_dsn: Dsn, pg_conn: psycopg.Connection) -> Iterator[Dsn]:
    """A role that may read the tables but owns none of them."""
    name = f"reader_{uuid.uuid4().hex[:8]}"
    pg_conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'reader-pw-3'").format(
        sql.Identifier(name)))
    pg_conn.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {}").format(
        sql.Identifier(name)))
    params = conninfo.conninfo_to_dict(pg_dsn.conninfo)
    params.update(user=name, password="reader-pw-3")
    yield Dsn(conninfo.make_conninfo("", **params))
    pg_conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
    pg_conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def test_insufficient_privilege_is_named(events: Dsn, reader: Dsn, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    planned = tmp_path / "planned.sql"
    planned.write_text("CREATE INDEX events_kind_idx ON events (kind);")
    with pytest.raises(UsageError, match=r"insufficient privilege to index public\.events: "
                                         "must be owner of table events"):
        optimize(reader, apply=True, planned_sql=planned, auto=False)
    assert main(["optimize", reader.conninfo, "--file", str(planned), "--planned-only",
                 "--apply"]) == 2
    err = capsys.readouterr().err
    assert "reader-pw-3" not in err and "Try: run optimize as the table's owner" in err


def test_foreign_keys_without_index_and_the_tuning_report(pg_conn: psycopg.Connection,
                                                         pg_dsn: Dsn) -> None:
    pg_conn.execute("CREATE TABLE orders (id int PRIMARY KEY)")
    pg_conn.execute("CREATE TABLE order_lines (id int PRIMARY KEY, order_id int NOT NULL "
                    "REFERENCES orders(id), qty int NOT NULL, "
                    "replaces int REFERENCES order_lines(id)) WITH (autovacuum_enabled = false)")
    # A partial index on NOT NULL serves that foreign key (as the seed's idx_jobs_user does).
    pg_conn.execute("CREATE INDEX order_lines_replaces ON order_lines (replaces) "
                    "WHERE replaces IS NOT NULL")
    pg_conn.execute("INSERT INTO orders SELECT generate_series(1, 2000)")
    pg_conn.execute("INSERT INTO order_lines SELECT g, 1 + g % 2000, 1 "
                    "FROM generate_series(1, 20000) g")
    pg_conn.execute("ANALYZE order_lines")
    pg_conn.execute("UPDATE order_lines SET qty = 2")  # 20,000 dead rows, vacuum held off
    pg_conn.execute("SET work_mem = '64kB'")
    pg_conn.execute("SELECT * FROM order_lines ORDER BY qty, id DESC").fetchall()  # spills
    _flush(pg_conn)
    result = optimize(pg_dsn, min_rows=1000)
    fk = [p for p in result.proposals if p.source == "foreign-key"]
    assert [(p.table, p.columns) for p in fk] == [("order_lines", ["order_id"])]
    assert "order_lines_order_id_fkey" in fk[0].reason
    subjects = {(f.kind, f.subject) for f in result.findings}
    assert ("autovacuum", "public.order_lines") in subjects
    assert ("setting", "work_mem") in subjects


def test_watch_reports_a_slow_statement_between_samples(pg_conn: psycopg.Connection,
                                                       pg_dsn: Dsn) -> None:
    pg_conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    samples: list[HealthSample] = []

    def on_sample(s: HealthSample) -> None:
        samples.append(s)
        if len(samples) == 1:
            with connect(pg_dsn, autocommit=True) as other:
                other.execute("SELECT pg_sleep(0.15)")

    assert watch(pg_dsn, on_sample, interval=0.05, count=2, slow_ms=100) == 2
    first, second = samples
    assert first.slow_queries == [] and first.max_connections > 0
    assert [q.query for q in second.slow_queries] == ["SELECT pg_sleep($1)"]
    assert second.slow_queries[0].mean_ms >= 150


def test_json_output(events: Dsn, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["optimize", events.conninfo, "--min-rows", "1000", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [p["columns"] for p in result["proposals"]] == [["account_id"]]
    assert main(["optimize", events.conninfo, "--watch", "--count", "1", "--json"]) == 0
    sample = json.loads(capsys.readouterr().out)
    assert sample["max_connections"] > 0 and sample["slow_queries"] == []


def test_watch_as_a_prometheus_exporter(pg_dsn: Dsn) -> None:
    exporter = HealthExporter("127.0.0.1", 0).start()
    try:
        url = f"http://127.0.0.1:{exporter.port}/metrics"
        assert httpx.get(url).text == prometheus_text(None)
        assert "pgshift_db_up 0" in prometheus_text(None)
        watch(pg_dsn, exporter.update, interval=0.05, count=1)
        body = httpx.get(url).text
    finally:
        exporter.stop()
    assert "pgshift_db_up 1" in body
    assert re.search(r"^pgshift_db_connections_max [1-9]\d*$", body, re.M)
    assert "# TYPE pgshift_db_wal_archive_failures_total counter" in body
    assert "pgshift_db_replay_lag_seconds" not in body  # no replica: no value, not a zero


def test_metrics_port_needs_watch(pg_dsn: Dsn, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["optimize", pg_dsn.conninfo, "--metrics-port", "0"]) == 2
    assert capsys.readouterr().err.startswith("Error: --metrics-port serves the --watch")
