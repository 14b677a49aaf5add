"""The way back: PostgreSQL capture (queue) and the to-sqlite applier, after a flip."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from pgshift.cli.main import main
from pgshift.dsn import Dsn, connect
from pgshift.sync import ops
from pgshift.sync.apply import SyncOptions
from pgshift.sync.apply_sqlite import reverse, run_to_sqlite
from sync_helpers import captured_seed, check, max_seq, migrate_to, sync_once, write

pytestmark = pytest.mark.data


def pg(dsn: Dsn, *statements: str) -> list[tuple]:
    conn = connect(dsn, autocommit=True)
    try:
        rows: list[tuple] = []
        for s in statements:
            cur = conn.execute(s)
            rows = cur.fetchall() if cur.description else []
        return rows
    finally:
        conn.close()


def pg_catalog_shape(dsn: Dsn) -> list[tuple]:
    return pg(dsn, "select n.nspname, c.relname, c.relkind from pg_class c join pg_namespace n "
                   "on n.oid = c.relnamespace where n.nspname in ('public', 'pgshift') "
                   "union all select 'trigger', tgname, 't' from pg_trigger where not tgisinternal "
                   "union all select 'function', proname, 'f' from pg_proc p join pg_namespace n "
                   "on n.oid = p.pronamespace where n.nspname = 'pgshift' order by 1, 2")


@pytest.fixture
def flipped(tmp_path: Path, pg_dsn: Dsn) -> Path:
    """Seeded, captured both ways, migrated, and synced to PostgreSQL."""
    db = captured_seed(tmp_path)
    migrate_to(db, pg_dsn, tmp_path)
    ops.install(db, dsn=pg_dsn)
    write(db, "update users set name = 'before flip' where id = 1")
    assert sync_once(db, pg_dsn).applied == 1
    return db


def test_to_postgres_writes_are_not_captured_back(flipped: Path, pg_dsn: Dsn) -> None:
    assert pg(pg_dsn, "select count(*) from pgshift.pg_changes") == [(0,)]


def test_postgres_writes_flow_back_to_sqlite(flipped: Path, pg_dsn: Dsn) -> None:
    db = flipped
    before = max_seq(db)
    pg(pg_dsn,
       "insert into users (id, email, name, is_admin, created_at, updated_at) "
       "values (100000, 'pg@x', 'from pg', 1, 5, 6)",
       "insert into jobs (id, type, status, priority, payload, user_id, scheduled_at, "
       "created_at, updated_at) values ('pg-job', 't', 'pending', 0, '{}', 100000, 1, 1, 1)",
       "insert into job_history (job_id, status, created_at) values ('pg-job', 'queued', 2)",
       "update users set name = 'changed in pg' where id = 2",
       "delete from job_history where id in (select id from job_history order by id limit 3)",
       "update tool_configs set tool_name = tool_name || '-pg' "
       "where tool_name = (select min(tool_name) from tool_configs)",
       "delete from users where id = 3",  # cascades in PostgreSQL, captured per child row
       "update app_state set value = 'pg' where key = (select min(key) from app_state)")
    queued = pg(pg_dsn, "select tbl, op from pgshift.pg_changes order by id")
    result = run_to_sqlite(SyncOptions(sqlite_path=db, dsn=pg_dsn, batch_size=4))
    assert result.parked == 0 and result.pending == 0 and result.conflicts == 0
    assert result.applied == len(queued) >= 8, queued
    check(db, pg_dsn)
    assert max_seq(db) == before  # the applier's SQLite writes were not captured
    assert pg(pg_dsn, "select count(*) from pgshift.pg_changes") == [(0,)]
    # a repeated batch (crash between the SQLite commit and the queue delete) is harmless
    pg(pg_dsn, "update users set name = 'again' where id = (select min(id) from users)")
    rows = pg(pg_dsn, "select id, tbl, op, key_old, key_new, row from pgshift.pg_changes")
    assert run_to_sqlite(SyncOptions(sqlite_path=db, dsn=pg_dsn)).applied == 1
    conn = connect(pg_dsn, autocommit=True)
    try:
        from psycopg.types.json import Jsonb

        for r in rows:
            conn.execute("insert into pgshift.pg_changes (target_schema, tbl, op, key_old, "
                         "key_new, row) values ('public', %s, %s, %s, %s, %s)",
                         (r[1], r[2], Jsonb(r[3]), Jsonb(r[4]), Jsonb(r[5])))
    finally:
        conn.close()
    replay = run_to_sqlite(SyncOptions(sqlite_path=db, dsn=pg_dsn))
    assert replay.applied == 1 and replay.conflicts == 0  # a replay is not a conflict
    check(db, pg_dsn)


def test_unique_eviction_and_late_commit_order(flipped: Path, pg_dsn: Dsn) -> None:
    db = flipped
    (a, email), (b, _) = pg(pg_dsn, "select id, email from users order by id limit 2")
    # PostgreSQL frees the email from row a and gives it to row b in one transaction
    pg(pg_dsn, f"begin; update users set email = 'moved@x' where id = {a}; "
               f"update users set email = '{email}' where id = {b}; commit")
    conn1 = connect(pg_dsn)
    conn2 = connect(pg_dsn, autocommit=True)
    try:
        # conn1 takes the lower queue id but commits after conn2
        conn1.execute("update app_state set value = 'late' where key = "
                      "(select min(key) from app_state)")
        conn2.execute("update app_state set value = 'early' where key = "
                      "(select max(key) from app_state)")
        run_to_sqlite(SyncOptions(sqlite_path=db, dsn=pg_dsn))
        conn1.commit()
    finally:
        conn1.close()
        conn2.close()
    result = run_to_sqlite(SyncOptions(sqlite_path=db, dsn=pg_dsn))
    assert result.applied == 1  # the late committer was not skipped
    check(db, pg_dsn)


def test_uninstall_restores_both_schemas(tmp_path: Path, pg_dsn: Dsn) -> None:
    from pgshift.demo.seed import seed
    from sync_helpers import schema_of

    db = tmp_path / "u.db"
    seed(db, 10, seed=2)
    sqlite_before = schema_of(db)
    migrate_to(db, pg_dsn, tmp_path)
    pg_before = pg_catalog_shape(pg_dsn)
    assert main(["sync", "install", str(db), pg_dsn.conninfo]) == 0
    assert pg_catalog_shape(pg_dsn) != pg_before
    assert main(["sync", "uninstall", str(db), pg_dsn.conninfo]) == 0
    assert schema_of(db) == sqlite_before
    assert pg_catalog_shape(pg_dsn) == pg_before


def test_cli_to_sqlite(flipped: Path, pg_dsn: Dsn) -> None:
    pg(pg_dsn, "update users set name = 'cli back' where id = 1")
    assert main(["sync", "run", str(flipped), pg_dsn.conninfo, "--mode", "to-sqlite"]) == 0
    check(flipped, pg_dsn)
    assert main(["sync", "run", str(flipped), pg_dsn.conninfo, "--mode", "dual"]) == 2


def test_reverse_conversions() -> None:
    assert reverse("epoch_ms", "2024-01-02T03:04:05.678+00:00") == 1704164645678
    assert reverse("epoch_s", "1970-01-01T00:00:10+00:00") == 10
    assert reverse("bool", True) == 1
    assert reverse("bytea", "\\x00ff") == b"\x00\xff"
    assert reverse("json", {"a": [1, 2]}) == '{"a":[1,2]}'
    assert reverse("float", "Infinity") == float("inf")
    assert reverse("ts_text", "2024-01-02T03:04:05") == "2024-01-02 03:04:05"
    assert reverse("int", None) is None


def test_blue_writes_after_the_flip_are_conflicts(flipped: Path, pg_dsn: Dsn) -> None:
    from pgshift.sync.sqlite_capture import STATE_TABLE

    db = flipped
    # blue writes behind the applier's back (without capture: as if it were not stopped)
    con = sqlite3.connect(db)
    con.execute(f"update {STATE_TABLE} set v = '1' where k = 'applying'")
    con.execute("update users set name = 'blue' where id = 1")
    con.execute("delete from app_state where key = (select min(key) from app_state)")
    con.execute(f"update {STATE_TABLE} set v = '0' where k = 'applying'")
    con.commit()
    con.close()
    pg(pg_dsn, "update users set name = 'green' where id = 1",
       "update app_state set value = 'green' where key = (select min(key) from app_state)",
       "update users set updated_at = 9 where id = 2")
    result = run_to_sqlite(SyncOptions(sqlite_path=db, dsn=pg_dsn))
    assert result.conflicts == 2 and result.parked == 0
    rows = pg(pg_dsn, "select table_name, op, winner, loser_image from pgshift.sync_conflicts "
                      "where direction = 'to-sqlite' order by seq")
    assert [(r[0], r[1], r[2]) for r in rows] == [("users", "U", "postgres"),
                                                  ("app_state", "U", "postgres")]
    assert rows[0][3]["name"] == "blue" and rows[1][3] is None
    check(db, pg_dsn)  # PostgreSQL (the system of record after the flip) won


def test_postgres_ddl_stops_the_way_back(flipped: Path, pg_dsn: Dsn) -> None:
    from pgshift.sync.apply import SchemaChangedError

    pg(pg_dsn, "alter table users add column nickname text",
       "update users set nickname = 'n', name = 'x' where id = 1")
    with pytest.raises(SchemaChangedError, match="added: nickname"):
        run_to_sqlite(SyncOptions(sqlite_path=flipped, dsn=pg_dsn))
    assert pg(pg_dsn, "select count(*) from pgshift.pg_changes") == [(1,)]  # kept


def test_follow_to_sqlite_survives_a_lost_connection(flipped: Path, pg_dsn: Dsn) -> None:
    import threading
    import time

    stop = threading.Event()
    results: list = []
    t = threading.Thread(target=lambda: results.append(run_to_sqlite(
        SyncOptions(sqlite_path=flipped, dsn=pg_dsn, follow=True, poll=0.01), stop=stop)))
    t.start()
    try:
        pg(pg_dsn, "update users set name = 'one' where id = 1")
        deadline = time.monotonic() + 20
        while pg(pg_dsn, "select count(*) from pgshift.pg_changes") != [(0,)] \
                and time.monotonic() < deadline:
            time.sleep(0.02)
        killed = pg(pg_dsn, "select pg_terminate_backend(pid) from pg_stat_activity where "
                            "application_name = 'pgshift-sync' and pid <> pg_backend_pid()")
        assert killed == [(True,)]
        pg(pg_dsn, "update users set name = 'two' where id = 1",
           "update app_state set value = 'two'")
        deadline = time.monotonic() + 20
        while pg(pg_dsn, "select count(*) from pgshift.pg_changes") != [(0,)] \
                and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        stop.set()
        t.join(20)
    assert results and results[0].parked == 0
    check(flipped, pg_dsn)
