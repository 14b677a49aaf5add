"""migrate: killed mid-copy, then --resume (or --restart) ends with exactly the source's rows;
a second concurrent run on the same target is refused.

The migration runs in a child interpreter that is SIGKILLed once a few chunks are committed.
The child slows each chunk's commit by 50 ms (a sleep inside the chunk's transaction, after
its COPY), so the kill lands mid-copy on any machine and sometimes inside an open chunk.
"""

from __future__ import annotations

import hashlib
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from pgshift.copy.checkpoint import acquire_lock
from pgshift.demo.seed import TABLES, seed
from pgshift.dsn import Dsn, connect
from sqlite_helpers import qi

pytestmark = pytest.mark.data

SCALE = 20_000
BATCH = 1_000

CHILD = """
import sys, time
from pgshift.copy import checkpoint
_record = checkpoint.record_chunk
def _slow_record(*args, **kwargs):
    time.sleep(0.05)
    return _record(*args, **kwargs)
checkpoint.record_chunk = _slow_record
from pgshift.cli.main import main
sys.exit(main(sys.argv[1:]))
"""

PK = {"users": "id", "user_sessions": "id", "jobs": "id", "job_history": "id",
      "tool_configs": "tool_name", "rate_limits": "key", "app_state": "key", "oauth_tokens": "id"}


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("resume") / "hp.db"
    seed(path, SCALE)
    return path


def _argv(source: Path, dsn: Dsn, state: Path) -> list[str]:
    return ["migrate", str(source), dsn.conninfo, "--batch-size", str(BATCH), "--jobs", "2",
            "--state-dir", str(state)]


def _committed_chunks(conn: psycopg.Connection) -> int:
    if conn.execute("SELECT to_regclass('pgshift.migrate_chunks')").fetchone()[0] is None:
        return 0
    return int(conn.execute("SELECT count(*) FROM pgshift.migrate_chunks").fetchone()[0])


def _kill_mid_copy(argv: list[str], conn: psycopg.Connection, log: Path,
                   at_least: int = 3) -> int:
    """Start the child, SIGKILL it once ``at_least`` chunks are committed; return that count."""
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", CHILD, *argv], stdout=out, stderr=out)
        try:
            deadline = time.monotonic() + 60
            done = 0
            while time.monotonic() < deadline and proc.poll() is None:
                done = _committed_chunks(conn)
                if done >= at_least:
                    break
                time.sleep(0.005)
            assert proc.poll() is None, (
                f"the child finished before it could be killed:\n{log.read_text()}")
            proc.send_signal(signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    _wait_for_dead_sessions(conn)
    total = _committed_chunks(conn)
    planned = SCALE // BATCH  # jobs alone has this many chunks
    assert at_least <= total < planned, total
    return total


def _wait_for_dead_sessions(conn: psycopg.Connection) -> None:
    """The killed child's sessions (and its advisory lock) go away once the server notices."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        n = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                         "AND application_name = 'pgshift'").fetchone()[0]
        if n == 0:
            return
        time.sleep(0.02)
    raise AssertionError("the killed run's sessions are still there")


def _digest(values: list[object]) -> str:
    return hashlib.sha256("\n".join(sorted(map(str, values))).encode()).hexdigest()


def _assert_exact_copy(source: Path, conn: psycopg.Connection) -> None:
    """Same row count per table, and the same primary keys (no duplicate, none missing)."""
    src = sqlite3.connect(source)
    try:
        for table in TABLES:
            pk = PK[table]
            s_keys = [r[0] for r in src.execute(f"SELECT {qi(pk)} FROM {qi(table)}")]
            p_keys = [r[0] for r in conn.execute(f"SELECT {qi(pk)} FROM {qi(table)}")]
            assert len(p_keys) == len(s_keys), table
            assert len(set(p_keys)) == len(p_keys), f"duplicates in {table}"
            assert _digest(p_keys) == _digest(s_keys), table
        jobs_src = sorted(r[0] for r in src.execute("SELECT id FROM jobs"))
        jobs_pg = sorted(r[0] for r in conn.execute("SELECT id FROM jobs"))
        assert jobs_pg == jobs_src and len(jobs_src) == SCALE
        # a whole-row check on one table: the resumed chunks carried the values too
        src_rows = src.execute("SELECT id, job_id, status, message, created_at FROM job_history "
                               "ORDER BY id").fetchall()
    finally:
        src.close()
    pg_hist = conn.execute("SELECT id, job_id, status, message, created_at FROM job_history "
                           "ORDER BY id").fetchall()
    assert pg_hist == src_rows


def test_killed_run_needs_resume_and_resume_completes_exactly(
        source: Path, pg_dsn: Dsn, pg_conn: psycopg.Connection, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    from pgshift.cli.main import main

    argv = _argv(source, pg_dsn, tmp_path / "state")
    committed = _kill_mid_copy(argv, pg_conn, tmp_path / "child.log")
    assert pg_conn.execute("SELECT status FROM pgshift.migrate_runs").fetchall() == [("copying",)]
    capsys.readouterr()

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("Error: an earlier migrate into schema 'public' did not finish")
    assert "--resume" in err.split("Try:", 1)[1]
    assert "Traceback" not in err
    # the refused rerun touched nothing: the committed chunks are still those of the killed run
    assert pg_conn.execute("SELECT count(DISTINCT run_id), count(*) FROM pgshift.migrate_chunks"
                           ).fetchone() == (1, committed)

    assert main([*argv, "--resume"]) == 0
    capsys.readouterr()
    assert pg_conn.execute("SELECT status FROM pgshift.migrate_runs").fetchall() == [("done",)]
    _assert_exact_copy(source, pg_conn)
    assert pg_conn.execute("SELECT count(*) FROM pgshift.rejects").fetchone() == (0,)
    # every planned chunk is recorded exactly once, the killed run's included
    n_chunks = pg_conn.execute("SELECT count(*), count(DISTINCT (table_name, chunk_no)) "
                               "FROM pgshift.migrate_chunks").fetchone()
    assert n_chunks[0] == n_chunks[1] > committed
    assert pg_conn.execute("SELECT sum(rows) FROM pgshift.migrate_chunks").fetchone()[0] == sum(
        pg_conn.execute(f"SELECT count(*) FROM {qi(t)}").fetchone()[0] for t in TABLES)


def test_restart_after_a_kill_starts_over_and_ends_exact(
        source: Path, pg_dsn: Dsn, pg_conn: psycopg.Connection, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    from pgshift.cli.main import main

    argv = _argv(source, pg_dsn, tmp_path / "state")
    _kill_mid_copy(argv, pg_conn, tmp_path / "child.log")
    old_run = pg_conn.execute("SELECT run_id FROM pgshift.migrate_runs").fetchone()[0]
    assert main([*argv, "--restart"]) == 0
    capsys.readouterr()
    new_run = pg_conn.execute("SELECT run_id FROM pgshift.migrate_runs").fetchone()[0]
    assert new_run != old_run
    assert pg_conn.execute("SELECT count(*) FROM pgshift.migrate_chunks WHERE run_id = %s",
                           (old_run,)).fetchone() == (0,)
    _assert_exact_copy(source, pg_conn)


def test_second_concurrent_run_is_refused(source: Path, pg_dsn: Dsn,
                                          pg_conn: psycopg.Connection, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    from pgshift.cli.main import main

    small = tmp_path / "small.db"
    seed(small, 50)
    argv = ["migrate", str(small), pg_dsn.conninfo, "--state-dir", str(tmp_path / "state")]
    holder = connect(pg_dsn, autocommit=True, application_name="pgshift-tests-holder")
    try:
        acquire_lock(holder, "public")  # what a running migrate holds for its whole run
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("Error: another pgshift migrate is running into schema 'public'")
        assert "\nTry: " in err and "Traceback" not in err
        tables = pg_conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
                                 ).fetchone()
        assert tables == (0,)  # the refused run created nothing
        # another schema has its own lock
        assert main([*argv, "--schema", "other"]) == 0
    finally:
        holder.close()
    capsys.readouterr()
    assert main(argv) == 0  # the lock went with its session
    assert pg_conn.execute("SELECT count(*) FROM jobs").fetchone() == (50,)
