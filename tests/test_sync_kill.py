"""``kill -9`` of the applier in the middle of a large backlog: nothing lost, nothing twice."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from pgshift.dsn import Dsn, connect
from sync_conformance import kill_during
from sync_helpers import app_con, captured_seed, check, migrate_to, sync_once

pytestmark = pytest.mark.data

BACKLOG = 4000


def backlog(db: Path, n: int, rnd: random.Random) -> None:
    con = app_con(db)
    try:
        users = [r[0] for r in con.execute("select id from users")]
        for i in range(n):
            kind = rnd.random()
            if kind < 0.4:
                con.execute("insert into app_state(key, value, updated_at) values (?, ?, ?) "
                            "on conflict(key) do update set value = excluded.value",
                            (f"k{rnd.randrange(500)}", f"v{i}", i))
            elif kind < 0.7:
                con.execute("update users set name = ?, updated_at = ? where id = ?",
                            (f"n{i}", i, rnd.choice(users)))
            elif kind < 0.85:
                con.execute("insert into job_history(job_id, status, created_at) "
                            "select id, 'x', ? from jobs order by random() limit 1", (i,))
            else:
                con.execute("delete from job_history where id = "
                            "(select id from job_history order by random() limit 1)")
            if i % 50 == 49:
                con.commit()
        con.commit()
    finally:
        con.close()


def last_seq(dsn: Dsn) -> int:
    conn = connect(dsn, autocommit=True)
    try:
        row = conn.execute("select coalesce(max(last_seq), 0) from pgshift.sync_state "
                           "where to_regclass('pgshift.sync_state') is not null").fetchone()
        return int(row[0]) if row else 0
    except Exception:
        return 0
    finally:
        conn.close()


def test_kill_9_mid_backlog_then_resume(tmp_path: Path, pg_dsn: Dsn) -> None:
    rnd = random.Random(4)
    db = captured_seed(tmp_path, scale=50)
    migrate_to(db, pg_dsn, tmp_path)
    backlog(db, BACKLOG, rnd)
    con = app_con(db)
    total = con.execute("select count(*) from _pgshift_changes").fetchone()[0]
    con.close()
    cmd = ["sync", "run", str(db), pg_dsn.conninfo, "--batch-size", "40"]
    kills = sum(kill_during(cmd, lambda: last_seq(pg_dsn), target)
                for target in (total // 5, total // 2, (4 * total) // 5))
    assert kills >= 2  # the applier really died mid-backlog
    result = sync_once(db, pg_dsn)
    assert result.pending == 0 and result.parked == 0
    check(db, pg_dsn)
    conn = connect(pg_dsn, autocommit=True)
    try:
        applied, seq = conn.execute("select applied, last_seq from pgshift.sync_state").fetchone()
    finally:
        conn.close()
    # every change applied exactly once across all the runs
    assert applied == total and seq == total


@pytest.mark.slow
def test_kill_9_of_the_to_sqlite_applier(tmp_path: Path, pg_dsn: Dsn) -> None:
    from pgshift.sync import ops

    db = captured_seed(tmp_path, scale=50)
    migrate_to(db, pg_dsn, tmp_path)
    ops.install(db, dsn=pg_dsn)
    conn = connect(pg_dsn, autocommit=True)
    try:
        for i in range(40):
            conn.execute("update app_state set value = %s, updated_at = %s", (f"v{i}", i))
            conn.execute("insert into job_history (job_id, status, created_at) "
                         "select id, 'pg', %s from jobs order by id limit 20", (i,))
            conn.execute("delete from job_history where id in (select id from job_history "
                         "where status = 'pg' order by id limit 5)")

        def queued() -> int:
            return int(conn.execute("select count(*) from pgshift.pg_changes").fetchone()[0])

        total = queued()
        cmd = ["sync", "run", str(db), pg_dsn.conninfo, "--mode", "to-sqlite",
               "--batch-size", "25"]
        # progress: the share of the queue applied
        kills = sum(kill_during(cmd, lambda: total - queued(), total * (1 - fraction))
                    for fraction in (0.8, 0.5, 0.2))
        assert kills >= 2
    finally:
        conn.close()
    from pgshift.sync.apply import SyncOptions
    from pgshift.sync.apply_sqlite import run_to_sqlite

    result = run_to_sqlite(SyncOptions(sqlite_path=db, dsn=pg_dsn))
    assert result.pending == 0 and result.parked == 0
    check(db, pg_dsn)
