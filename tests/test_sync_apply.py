"""Apply SQLite -> PostgreSQL: a seeded, captured, migrated database converges (verify)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import psycopg
import pytest

from pgshift.cli.main import main
from pgshift.dsn import Dsn, connect
from pgshift.errors import LockedError, UsageError
from pgshift.sync import ops, verbs
from pgshift.sync import state as st
from pgshift.sync.apply import SchemaChangedError, SyncOptions, run
from sync_helpers import captured_seed, check, migrate_to, schema_of, sync_once, write

pytestmark = pytest.mark.data


def pg_rows(dsn: Dsn, sql: str) -> list[tuple]:
    conn = connect(dsn, autocommit=True)
    try:
        cur = conn.execute(sql)
        return cur.fetchall() if cur.description else []
    finally:
        conn.close()


@pytest.fixture
def synced(tmp_path: Path, pg_dsn: Dsn) -> Path:
    """A seeded file with capture installed, migrated into pg_dsn."""
    db = captured_seed(tmp_path)
    result = migrate_to(db, pg_dsn, tmp_path)
    assert result.snapshot is not None and result.snapshot.hwm == 0
    return db


def test_writes_of_every_kind_converge(synced: Path, pg_dsn: Dsn) -> None:
    db = synced
    write(db,
          # AUTOINCREMENT parent then its children, in one transaction
          "insert into users(email, name, is_admin, created_at, updated_at) "
          "values ('new@x', 'New', 0, 1700000000000, 1700000000000)",
          "insert into jobs(id, type, status, priority, payload, user_id, scheduled_at, "
          "created_at, updated_at) select 'job-new', 'sync', 'pending', 1, '{}', id, 1, 1, 1 "
          "from users where email = 'new@x'",
          "insert into job_history(job_id, status, message, created_at) "
          "values ('job-new', 'pending', 'queued', 1)",
          "insert into oauth_tokens(user_id, provider, access_token, created_at, updated_at) "
          "select id, 'github', 'tok', 1, 1 from users where email = 'new@x'")
    write(db,
          "update users set name = 'Renamed', is_admin = 1 where id = 1",
          "update jobs set status = 'completed', result = '{\"ok\": true}' "
          "where id = (select min(id) from jobs)",
          "delete from job_history where id in (select id from job_history limit 5)",
          # UPSERT: the update trigger fires
          "insert into app_state(key, value, updated_at) values ('mode', 'a', 1) "
          "on conflict(key) do update set value = 'b'",
          "insert into app_state(key, value, updated_at) values ('mode', 'a', 1) "
          "on conflict(key) do update set value = 'b'",
          # REPLACE evicting another row through the UNIQUE email (no delete trigger)
          "insert or replace into users(id, email, name, is_admin, created_at, updated_at) "
          "select 2, email, 'took over', 0, 1, 1 from users where id = 3",
          # key update on a text primary key
          "update tool_configs set tool_name = tool_name || '-v2' "
          "where tool_name = (select min(tool_name) from tool_configs)",
          # parent delete cascading to children
          "delete from users where id = 4")
    con = sqlite3.connect(db)
    try:
        assert con.execute("select count(*) from users where id in (3, 4)").fetchone()[0] == 0
        assert con.execute("select name from users where id = 2").fetchone()[0] == "took over"
    finally:
        con.close()
    result = sync_once(db, pg_dsn)
    assert result.parked == 0 and result.pending == 0 and result.applied > 10
    assert result.conflicts == 0
    check(db, pg_dsn)
    assert pg_rows(db_dsn := pg_dsn, "select count(*) from users where id in (3, 4)") == [(0,)]
    assert pg_rows(db_dsn, "select name from users where id = 2") == [("took over",)]
    assert sync_once(db, pg_dsn).applied == 0  # nothing twice


def test_child_before_parent_in_one_batch(synced: Path, pg_dsn: Dsn) -> None:
    con = sqlite3.connect(synced, isolation_level=None)
    con.execute("pragma foreign_keys = on")
    con.execute("begin")
    con.execute("pragma defer_foreign_keys = on")
    con.execute("insert into job_history(job_id, status, created_at) values ('late', 'x', 1)")
    con.execute("insert into jobs(id, type, payload, scheduled_at, created_at, updated_at) "
                "values ('late', 't', '{}', 1, 1, 1)")
    con.execute("commit")
    con.close()
    assert sync_once(synced, pg_dsn).parked == 0
    check(synced, pg_dsn)


def test_autoincrement_ids_and_identity(synced: Path, pg_dsn: Dsn) -> None:
    write(synced, *[f"insert into users(email, created_at, updated_at) values ('u{i}@x', 1, 1)"
                    for i in range(20)])
    sync_once(synced, pg_dsn)
    check(synced, pg_dsn)
    top = sqlite3.connect(synced)
    try:
        max_id = top.execute("select max(id) from users").fetchone()[0]
    finally:
        top.close()
    assert pg_rows(pg_dsn, "select max(id) from users") == [(max_id,)]


def test_unconvertible_and_refused_rows_are_parked(synced: Path, pg_dsn: Dsn) -> None:
    write(synced,
          # a real in an integer column: migrate would reject it, sync parks it
          "insert into rate_limits(key, remaining, limit_total, reset_at, updated_at) "
          "values ('bad', 1.5, 10, 1, 1)",
          "insert into rate_limits(key, remaining, limit_total, reset_at, updated_at) "
          "values ('good', 1, 10, 1, 1)")
    result = sync_once(synced, pg_dsn)
    assert (result.applied, result.parked) == (1, 1)
    parked = pg_rows(pg_dsn, "select table_name, op, key_new, reason from pgshift.sync_parked")
    assert parked[0][:3] == ("rate_limits", "I", "'bad'")
    assert "remaining" in parked[0][3]
    assert pg_rows(pg_dsn, "select key from rate_limits where key in ('bad', 'good')") == \
        [("good",)]
    # a constraint PostgreSQL enforces and SQLite did not (CHECK added by hand)
    pg_rows(pg_dsn, "alter table app_state add constraint no_x check (value <> 'x')")
    write(synced, "insert into app_state(key, value, updated_at) values ('p', 'x', 1)",
          "insert into app_state(key, value, updated_at) values ('q', 'y', 1)")
    result = sync_once(synced, pg_dsn)
    assert (result.applied, result.parked) == (1, 1)
    reasons = [r[0] for r in pg_rows(pg_dsn, "select reason from pgshift.sync_parked "
                                             "order by id")]
    assert "no_x" in reasons[1]
    out = verbs.status(synced, pg_dsn)
    assert out.to_postgres is not None and out.to_postgres.parked == 2 and out.pending == 0


def test_schema_change_stops_the_applier(synced: Path, pg_dsn: Dsn) -> None:
    write(synced, "update users set name = 'before ddl' where id = 1")
    write(synced, "alter table users add column nickname TEXT")
    write(synced, "update users set nickname = 'n' where id = 1")
    with pytest.raises(SchemaChangedError) as err:
        sync_once(synced, pg_dsn)
    assert "users" in err.value.message
    state = pg_rows(pg_dsn, "select last_seq from pgshift.sync_state")
    assert state == [(0,)]


def test_start_point_comes_from_migrate(tmp_path: Path, pg_dsn: Dsn) -> None:
    db = captured_seed(tmp_path)
    write(db, "update users set name = 'in the snapshot' where id = 1")
    result = migrate_to(db, pg_dsn, tmp_path)
    assert result.snapshot is not None and result.snapshot.hwm == 1
    write(db, "update users set name = 'after the snapshot' where id = 1")
    out = sync_once(db, pg_dsn)
    assert (out.start_seq, out.applied, out.last_seq) == (1, 1, 2)
    check(db, pg_dsn)
    with pytest.raises(UsageError, match="started at seq 1"):
        run(SyncOptions(sqlite_path=db, dsn=pg_dsn, from_hwm=0))


def test_refused_without_capture_or_migrate(tmp_path: Path, pg_dsn: Dsn) -> None:
    from pgshift.demo.seed import seed

    db = tmp_path / "plain.db"
    seed(db, 5, seed=1)
    with pytest.raises(UsageError, match="capture is not installed"):
        sync_once(db, pg_dsn)
    ops.install(db)
    with pytest.raises(UsageError, match="no finished pgshift migrate"):
        sync_once(db, pg_dsn)


def test_migrated_before_install_is_refused(tmp_path: Path, pg_dsn: Dsn) -> None:
    from pgshift.demo.seed import seed

    db = tmp_path / "late.db"
    seed(db, 5, seed=1)
    migrate_to(db, pg_dsn, tmp_path)
    ops.install(db)
    with pytest.raises(UsageError, match="before capture was installed"):
        sync_once(db, pg_dsn)


def test_second_applier_is_locked_out(synced: Path, pg_dsn: Dsn) -> None:
    conn = connect(pg_dsn, autocommit=True)
    try:
        st.ensure_schema(conn)
        conn.execute("select pg_advisory_lock(%s)", (st.lock_key("public", st.TO_POSTGRES),))
        with pytest.raises(LockedError):
            sync_once(synced, pg_dsn)
    finally:
        conn.close()


def test_cli_install_run_status_uninstall(tmp_path: Path, pg_dsn: Dsn,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    from pgshift.demo.seed import seed

    db = tmp_path / "cli.db"
    seed(db, 10, seed=3)
    before = schema_of(db)
    assert main(["sync", "install", str(db)]) == 0
    assert main(["sync", "install", str(db)]) == 0  # idempotent
    migrate_to(db, pg_dsn, tmp_path)
    write(db, "update users set name = 'cli' where id = 1")
    dsn = pg_dsn.conninfo
    capsys.readouterr()
    assert main(["sync", "run", str(db), dsn, "--once", "--json"]) == 0
    assert '"applied": 1' in capsys.readouterr().out
    assert main(["sync", "status", str(db), dsn, "--json"]) == 0
    assert '"pending": 0' in capsys.readouterr().out
    assert main(["sync", "status", str(db), dsn, "--prometheus"]) == 0
    prom = capsys.readouterr().out
    assert 'pgshift_sync_applied_total{schema="public",direction="to-postgres"} 1' in prom
    assert 'pgshift_sync_lag_seconds{schema="public",direction="to-postgres"} 0' in prom
    assert main(["sync", "run", str(db), dsn, "--once", "--follow"]) == 2
    assert main(["sync", "uninstall", str(db), dsn]) == 0
    assert schema_of(db) == before
    assert pg_rows(pg_dsn, "select to_regclass('pgshift.sync_state')") == [(None,)]
    assert main(["sync", "uninstall", str(db)]) == 0


def test_cli_keyless_table_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "k.db"
    con = sqlite3.connect(db)
    con.execute("create table events (at INTEGER, what TEXT)")
    con.close()
    assert main(["sync", "install", str(db)]) == 2
    err = capsys.readouterr().err
    assert "Error: sync needs a primary key" in err and "events" in err
    assert "Try: " in err


def test_exactly_once_batches(synced: Path, pg_dsn: Dsn) -> None:
    write(synced, *[f"insert into app_state(key, value, updated_at) values ('b{i}', 'v', {i})"
                    for i in range(25)])
    result = sync_once(synced, pg_dsn, batch_size=7)
    assert (result.batches, result.applied) == (4, 25)
    assert pg_rows(pg_dsn, "select last_seq, applied from pgshift.sync_state") == [(25, 25)]
    check(synced, pg_dsn)


def test_pg_error_types_used() -> None:
    assert issubclass(psycopg.errors.ForeignKeyViolation, psycopg.errors.IntegrityError)


def test_cascaded_key_update_split_across_batches(tmp_path: Path, pg_dsn: Dsn) -> None:
    # SQLite logs the ON UPDATE CASCADE children before the parent's own update; with a
    # batch of 1 the applier must read on to the end of the transaction, not park.
    db = tmp_path / "casc.db"
    con = sqlite3.connect(db)
    con.executescript(
        "create table a (id INTEGER PRIMARY KEY, name TEXT);"
        "create table d (id INTEGER PRIMARY KEY, a_id INTEGER REFERENCES a(id) "
        "ON UPDATE CASCADE ON DELETE CASCADE);"
        "insert into a values (1, 'one'); insert into d values (10, 1), (11, 1);")
    con.close()
    ops.install(db)
    migrate_to(db, pg_dsn, tmp_path)
    write(db, "update a set id = 2 where id = 1")
    result = sync_once(db, pg_dsn, batch_size=1)
    assert result.parked == 0, result.parked_reasons
    assert result.applied == 3
    check(db, pg_dsn)
    write(db, "delete from a where id = 2")
    assert sync_once(db, pg_dsn, batch_size=1).parked == 0
    check(db, pg_dsn)


def test_follow_applies_new_writes_until_stopped(synced: Path, pg_dsn: Dsn) -> None:
    import threading
    import time

    stop = threading.Event()
    results = []
    t = threading.Thread(target=lambda: results.append(
        run(SyncOptions(sqlite_path=synced, dsn=pg_dsn, follow=True, poll=0.01), stop=stop)))
    t.start()
    try:
        for i in range(5):
            write(synced, f"update users set name = 'follow {i}' where id = 1")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            got = pg_rows(pg_dsn, "select name from users where id = 1")
            if got == [("follow 4",)]:
                break
            time.sleep(0.02)
        assert got == [("follow 4",)]
        out = verbs.status(synced, pg_dsn)
        assert out.pending == 0 and out.lag_ms == 0
    finally:
        stop.set()
        t.join(10)
    assert results and results[0].applied == 5
    check(synced, pg_dsn)


def _follow(db: Path, dsn: Dsn, stop: object) -> tuple[object, list]:
    import threading

    results: list = []
    t = threading.Thread(target=lambda: results.append(
        run(SyncOptions(sqlite_path=db, dsn=dsn, follow=True, poll=0.01), stop=stop)))
    t.start()
    return t, results


def _wait_pending_zero(db: Path, dsn: Dsn, seconds: float = 20) -> None:
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if verbs.status(db, dsn).pending == 0:
            return
        time.sleep(0.05)
    raise AssertionError(verbs.status(db, dsn))


def test_follow_survives_a_lost_connection_and_live_writers(synced: Path, pg_dsn: Dsn) -> None:
    import threading
    import time

    stop = threading.Event()
    t, results = _follow(synced, pg_dsn, stop)

    def writer(n: int) -> None:
        for i in range(150):
            write(synced, ("insert into app_state(key, value, updated_at) values (?, ?, ?) "
                           "on conflict(key) do update set value = excluded.value",
                           (f"w{n}-{i % 40}", f"v{i}", i)))

    writers = [threading.Thread(target=writer, args=(n,)) for n in range(2)]
    try:
        for w in writers:
            w.start()
        deadline = time.monotonic() + 20

        def started() -> bool:
            return bool(pg_rows(pg_dsn, "select 1 from pg_tables where schemaname = 'pgshift' "
                                        "and tablename = 'sync_state'")) and bool(pg_rows(
                pg_dsn, "select 1 from pgshift.sync_state where last_seq > 0"))

        while time.monotonic() < deadline and not started():
            time.sleep(0.01)
        # cut the applier's PostgreSQL session in the middle: it must reconnect and go on
        killed = pg_rows(pg_dsn, "select pg_terminate_backend(pid) from pg_stat_activity "
                                 "where application_name = 'pgshift-sync' "
                                 "and pid <> pg_backend_pid()")
        assert killed == [(True,)]
        for w in writers:
            w.join()
        _wait_pending_zero(synced, pg_dsn)
    finally:
        stop.set()
        t.join(20)
    assert results and results[0].parked == 0
    check(synced, pg_dsn)
    assert pg_rows(pg_dsn, "select applied, last_seq from pgshift.sync_state") == [(300, 300)]


def test_applier_writes_are_marked_as_its_own(synced: Path, pg_dsn: Dsn) -> None:
    # A PostgreSQL-side capture trigger can tell the applier's writes by pgshift.applying
    # (with session_replication_role = replica, ordinary triggers do not even fire).
    pg_rows(pg_dsn, "create table public.seen (setting text)")
    pg_rows(pg_dsn, "create function public.note() returns trigger language plpgsql as $$ "
                    "begin insert into public.seen "
                    "values (current_setting('pgshift.applying', true)); return null; end $$")
    pg_rows(pg_dsn, "create trigger note after update on public.users "
                    "for each row execute function public.note()",)
    pg_rows(pg_dsn, "alter table public.users enable always trigger note")
    write(synced, "update users set name = 'x' where id = 1")
    sync_once(synced, pg_dsn)
    assert pg_rows(pg_dsn, "select setting from public.seen") == [("on",)]


def test_drain_behind_a_fence_while_writes_go_on(synced: Path, pg_dsn: Dsn,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    import threading

    write(synced, *[f"update users set name = 'pre {i}' where id = 1" for i in range(50)])
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set():
            write(synced, f"update users set updated_at = {i} where id = 2")
            i += 1

    t = threading.Thread(target=writer)
    t.start()
    try:
        out = verbs.drain(SyncOptions(sqlite_path=synced, dsn=pg_dsn), timeout=20)
    finally:
        stop.set()
        t.join()
    assert out.drained and out.last_seq >= out.fence_seq > 50
    assert pg_rows(pg_dsn, "select name from users where id = 1") == [("pre 49",)]
    assert main(["sync", "drain", str(synced), pg_dsn.conninfo, "--json"]) == 0
    assert '"drained": true' in capsys.readouterr().out
    check(synced, pg_dsn)


def test_green_writes_are_conflicts_and_sqlite_wins(synced: Path, pg_dsn: Dsn) -> None:
    # green (PostgreSQL) changes rows SQLite then changes too: detected by before-images
    pg_rows(pg_dsn, "update users set name = 'green' where id = 1")
    pg_rows(pg_dsn, "delete from app_state where key = (select min(key) from app_state)")
    pg_rows(pg_dsn, "update rate_limits set remaining = 999 where key = "
                    "(select min(key) from rate_limits)")
    write(synced, "update users set name = 'blue' where id = 1",
          "update app_state set value = 'blue' where key = (select min(key) from app_state)",
          "delete from rate_limits where key = (select min(key) from rate_limits)",
          "update users set updated_at = 5 where id = 2")  # untouched by green: no conflict
    result = sync_once(synced, pg_dsn)
    assert result.conflicts == 3
    rows = pg_rows(pg_dsn, "select table_name, op, policy, winner, winner_image, loser_image "
                           "from pgshift.sync_conflicts order by seq")
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [
        ("users", "U", "sor-wins", "sqlite"), ("app_state", "U", "sor-wins", "sqlite"),
        ("rate_limits", "D", "sor-wins", "sqlite")]
    assert rows[0][5]["name"] == "green" and "'blue'" in rows[0][4]
    assert rows[1][5] is None  # deleted on PostgreSQL, updated on SQLite
    assert rows[2][5]["remaining"] == 999 and rows[2][4] is None
    check(synced, pg_dsn)  # the system of record won


def test_reinstalled_capture_is_refused(synced: Path, pg_dsn: Dsn) -> None:
    write(synced, *[f"update users set name = 'n{i}' where id = 1" for i in range(5)])
    assert sync_once(synced, pg_dsn).last_seq == 5
    verbs.uninstall(synced)  # SQLite only: the PostgreSQL checkpoint stays at 5
    ops.install(synced)
    write(synced, "update users set name = 'after reinstall' where id = 1")  # seq 1 again
    with pytest.raises(UsageError, match="capture was reinstalled"):
        sync_once(synced, pg_dsn)


def test_capture_reinstalled_between_the_snapshot_and_the_first_run_is_refused(
        tmp_path: Path, pg_dsn: Dsn) -> None:
    """No sync state yet: migrate's snapshot recorded the log's install id, so a log
    reinstalled since (seq restarted) is refused instead of read from the old hwm."""
    db = captured_seed(tmp_path)
    write(db, *[f"update users set name = 'n{i}' where id = 1" for i in range(3)])
    result = migrate_to(db, pg_dsn, tmp_path)
    assert result.snapshot is not None and result.snapshot.capture_id is not None
    verbs.uninstall(db)
    ops.install(db)
    write(db, "update users set name = 'after reinstall' where id = 2")
    with pytest.raises(UsageError, match="reinstalled after migrate's snapshot"):
        sync_once(db, pg_dsn)


def test_odd_names_generated_columns_and_unique_indexes(tmp_path: Path, pg_dsn: Dsn) -> None:
    db = tmp_path / "odd.db"
    con = sqlite3.connect(db)
    con.executescript(
        'create table "odd ""name" ("order" INTEGER PRIMARY KEY, "group" TEXT, '
        "a INTEGER, b INTEGER GENERATED ALWAYS AS (a * 2) STORED, "
        "c INTEGER GENERATED ALWAYS AS (a + 1) VIRTUAL);"
        'create unique index odd_group on "odd ""name" ("group");'
        "create table pairs (x TEXT, y INTEGER, z REAL, PRIMARY KEY (x, y)) WITHOUT ROWID;"
        'insert into "odd ""name" ("order", "group", a) values (1, \'g1\', 10), (2, \'g2\', 20);'
        "insert into pairs values ('p', 1, 0.5);")
    con.close()
    ops.install(db)
    migrate_to(db, pg_dsn, tmp_path)
    write(db,
          'insert or replace into "odd ""name" ("order", "group", a) values (3, \'g1\', 30)',
          'update "odd ""name" set a = 21 where "order" = 2',
          "insert into pairs values ('q', 2, 1e-7) on conflict do nothing",
          "update pairs set y = 9, z = -0.25 where x = 'p'")
    result = sync_once(db, pg_dsn)
    assert result.parked == 0 and result.conflicts == 0, result.parked_reasons
    check(db, pg_dsn)
    assert pg_rows(pg_dsn, 'select "order" from "odd ""name" order by 1') == [(2,), (3,)]
