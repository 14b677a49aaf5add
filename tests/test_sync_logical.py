"""The way back over logical decoding (test_decoding slot) instead of the trigger queue."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgshift.cli.main import main
from pgshift.dsn import Dsn
from pgshift.sync import apply_sqlite, ops, pg_logical, verbs
from pgshift.sync.apply import SyncOptions
from pgshift.sync.pg_logical import parse, parse_tuple, run_logical
from sync_helpers import (
    captured_seed,
    check,
    max_seq,
    migrate_to,
    pg_exec,
    schema_of,
    sync_once,
    write,
)

pytestmark = pytest.mark.data


@pytest.fixture
def logical(tmp_path: Path, pg_dsn: Dsn) -> Iterator[Path]:
    """Seeded, captured in SQLite, migrated, logical capture on PostgreSQL, synced."""
    db = captured_seed(tmp_path, scale=100)
    migrate_to(db, pg_dsn, tmp_path)
    out = ops.install(db, dsn=pg_dsn, pg_capture_mode="logical")
    assert out.postgres_capture and out.postgres_capture["plugin"] == "test_decoding"
    try:
        write(db, "update users set name = 'before flip' where id = 1")
        assert sync_once(db, pg_dsn).applied == 1
        yield db
    finally:
        verbs.uninstall(db, pg_dsn)  # the slot must go before the database is dropped


def back(db: Path, dsn: Dsn, **kw: object) -> apply_sqlite.SyncResult:
    return run_logical(SyncOptions(sqlite_path=db, dsn=dsn, **kw))  # type: ignore[arg-type]


def test_parse_test_decoding_output() -> None:
    row = parse_tuple("id[bigint]:7 \"Odd Col\"[text]:'it''s a b' j[jsonb]:'{\"a\": [1]}' "
                      "n[numeric]:1.50 t[text[]]:'{x,\"y z\"}' f[boolean]:true "
                      "g[text]:null big[text]:unchanged-toast-datum")
    assert row["id"] == "7" and row["Odd Col"] == "it's a b" and row["j"] == {"a": [1]}
    assert row["n"] == "1.50" and row["t"] == '{x,"y z"}' and row["f"] == "true"
    assert row["g"] is None and row["big"] is pg_logical._TOAST
    txns = parse([
        ("0/10", "BEGIN"),
        ("0/11", "table public.users: UPDATE: old-key: id[bigint]:1 name[text]:'a' "
                 "new-tuple: id[bigint]:1 name[text]:'b'"),
        ("0/12", "table public.\"My T\": DELETE: k[text]:'x'"),
        ("0/13", "message: transactional: 1 prefix: pgshift, sz: 12 content:fence:public"),
        ("0/20", "COMMIT (at 2026-11-26 20:00:00.5+00)"),
    ])
    assert len(txns) == 1 and txns[0].end_lsn == 0x20 and txns[0].messages == ["fence:public"]
    up, de = txns[0].changes
    assert (up.op, up.old, up.new) == ("U", {"id": "1", "name": "a"}, {"id": "1", "name": "b"})
    assert (de.schema, de.table, de.op, de.old) == ("public", "My T", "D", {"k": "x"})
    assert txns[0].ts == 1795723200500


def test_postgres_writes_flow_back_through_the_slot(logical: Path, pg_dsn: Dsn) -> None:
    db = logical
    # the to-postgres applier's transaction was decoded too, and skipped as an echo
    first = back(db, pg_dsn)
    assert first.applied == 0 and first.parked == 0
    before = max_seq(db)
    pg_exec(pg_dsn,
            "insert into users (id, email, name, is_admin, created_at, updated_at) "
            "values (100000, 'pg@x', 'it''s \"pg\"', 1, 5, 6)",
            "insert into jobs (id, type, status, priority, payload, user_id, scheduled_at, "
            "created_at, updated_at) values ('pg-job', 't', 'pending', 0, '{\"a\": [1, 2]}', "
            "100000, 1, 1, 1)",
            "update users set name = null, email = 'new''@x' where id = 2",
            "delete from job_history where id in (select id from job_history order by id "
            "limit 3)",
            "update tool_configs set tool_name = tool_name || '-pg' "
            "where tool_name = (select min(tool_name) from tool_configs)",
            "delete from users where id = 3",  # cascades: its children are decoded too
            "update app_state set value = 'pg' where key = (select min(key) from app_state)")
    result = back(db, pg_dsn, batch_size=2)
    assert result.parked == 0 and result.conflicts == 0 and result.applied >= 8
    check(db, pg_dsn)
    assert max_seq(db) == before  # the applier's SQLite writes were not captured
    again = back(db, pg_dsn)
    assert again.applied == 0  # the slot was advanced past everything applied
    status = verbs.status(db, pg_dsn)
    assert status.to_sqlite_logical is not None
    assert status.to_sqlite_logical["lag_bytes"] < 100_000


def test_unchanged_toast_values_are_taken_from_the_before_image(logical: Path,
                                                               pg_dsn: Dsn) -> None:
    pg_exec(pg_dsn, "update users set name = (select string_agg(md5(i::text), '') from "
                    "generate_series(1, 1000) i) where id = 4",
            "update users set updated_at = 99 where id = 4")  # name stays TOASTed, unchanged
    result = back(logical, pg_dsn)
    assert result.applied == 2 and result.parked == 0 and result.conflicts == 0
    check(logical, pg_dsn)


def test_conflicts_and_a_crash_before_the_slot_advance(logical: Path, pg_dsn: Dsn,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from pgshift.sync.sqlite_capture import STATE_TABLE

    db = logical
    con = sqlite3.connect(db)  # blue writes behind the applier's back, uncaptured
    a, b = (r[0] for r in con.execute("select id from users order by id limit 2 offset 1"))
    con.execute(f"update {STATE_TABLE} set v = '1' where k = 'applying'")
    con.execute(f"update users set name = 'blue' where id = {a}")
    con.execute(f"update {STATE_TABLE} set v = '0' where k = 'applying'")
    con.commit()
    con.close()
    pg_exec(pg_dsn, f"update users set name = 'green' where id = {a}",
            f"update users set name = 'green 6' where id = {b}")

    def crash(*_a: object, **_k: object) -> None:
        raise RuntimeError("killed between the SQLite commit and PostgreSQL")

    # the sink committed the batch; the source's ack (records, slot advance) never ran
    monkeypatch.setattr(pg_logical.LogicalSource, "ack", crash)
    with pytest.raises(RuntimeError, match="killed"):
        back(db, pg_dsn)
    monkeypatch.undo()
    assert sqlite3.connect(db).execute(f"select name from users where id = {b}"
                                       ).fetchone() == ("green 6",)  # the slot did not move
    result = back(db, pg_dsn)
    assert result.applied == 2 and result.conflicts == 1  # recorded once, applied once
    assert back(db, pg_dsn).applied == 0
    rows = pg_exec(pg_dsn, "select table_name, winner, loser_image->>'name' from "
                           "pgshift.sync_conflicts where direction = 'to-sqlite'")
    assert rows == [("users", "postgres", "blue")]
    check(db, pg_dsn)


def test_a_crash_between_the_records_and_the_slot_advance(
        logical: Path, pg_dsn: Dsn, monkeypatch: pytest.MonkeyPatch) -> None:
    """The records (conflicts, parked, counters) commit before the slot advance, which
    no transaction can include: a crash in between must not write them twice (found by
    the conformance suite's kill -9 test: one batch counted twice)."""
    back(logical, pg_dsn)  # the setup's echo out of the way
    applied = "select coalesce(sum(applied_to_sqlite), 0) from pgshift.sync_tables"
    before = pg_exec(pg_dsn, applied)[0][0]
    pg_exec(pg_dsn, "update users set name = 'g1' where id = 2",
            "update users set name = 'g2' where id = 3")

    def crash(*_a: object, **_k: object) -> None:
        raise RuntimeError("killed between the records and the advance")

    monkeypatch.setattr(pg_logical, "advance", crash)
    with pytest.raises(RuntimeError, match="killed"):
        back(logical, pg_dsn)
    monkeypatch.undo()
    assert pg_exec(pg_dsn, applied)[0][0] == before + 2  # recorded, the slot not moved
    result = back(logical, pg_dsn)
    assert result.applied == 0  # finished from the record: the slot moved, nothing more
    assert pg_exec(pg_dsn, applied)[0][0] == before + 2
    assert back(logical, pg_dsn).applied == 0
    check(logical, pg_dsn)


def test_drain_behind_a_logical_fence(logical: Path, pg_dsn: Dsn,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    pg_exec(pg_dsn, "update users set name = 'g1' where id = 2",
            "update app_state set value = 'g' where key = (select min(key) from app_state)")
    blue = sqlite3.connect(logical, isolation_level=None)
    blue.execute("begin immediate")  # blue was not stopped: the drain times out
    try:
        out = verbs.drain(SyncOptions(sqlite_path=logical, dsn=pg_dsn), timeout=1,
                        direction="to-sqlite")
    finally:
        blue.execute("rollback")
        blue.close()
    assert not out.drained and out.stranded.count == 2
    assert out.stranded.tables == {"app_state": 1, "users": 1}
    assert main(["sync", "drain", str(logical), pg_dsn.conninfo, "--direction", "to-sqlite",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["applied"] == 2
    check(logical, pg_dsn)


def test_cli_install_run_uninstall(tmp_path: Path, pg_dsn: Dsn,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    from pgshift.demo.seed import seed

    db = tmp_path / "l.db"
    seed(db, 10, seed=2)
    sqlite_before = schema_of(db)
    migrate_to(db, pg_dsn, tmp_path)
    ident = "select relname, relreplident from pg_class where relname in ('users', 'jobs') " \
            "order by 1"
    before = pg_exec(pg_dsn, ident)
    assert main(["sync", "install", str(db), pg_dsn.conninfo, "--pg-capture", "logical"]) == 0
    try:
        assert {r[1] for r in pg_exec(pg_dsn, ident)} == {"f"}
        assert main(["sync", "install", str(db), pg_dsn.conninfo, "--pg-capture",
                     "logical"]) == 0  # idempotent: the same slot, the first settings kept
        # one PostgreSQL capture at a time
        assert main(["sync", "install", str(db), pg_dsn.conninfo]) == 2
        pg_exec(pg_dsn, "update users set name = 'cli' where id = 1")
        assert main(["sync", "run", str(db), pg_dsn.conninfo, "--mode", "to-sqlite"]) == 0
        check(db, pg_dsn)
        capsys.readouterr()
        assert main(["sync", "status", str(db), pg_dsn.conninfo]) == 0
        assert "to-sqlite: logical capture, slot pgshift_" in capsys.readouterr().out
    finally:
        assert main(["sync", "uninstall", str(db), pg_dsn.conninfo]) == 0
    assert pg_exec(pg_dsn, ident) == before
    assert pg_exec(pg_dsn, "select count(*) from pg_replication_slots where database = "
                           "current_database()") == [(0,)]
    assert pg_exec(pg_dsn, "select to_regclass('pgshift.pg_changes')") == [(None,)]
    assert schema_of(db) == sqlite_before


def test_green_writes_before_the_flip_are_rebased_at_the_flip(tmp_path: Path,
                                                              pg_dsn: Dsn) -> None:
    db = captured_seed(tmp_path, scale=100)
    migrate_to(db, pg_dsn, tmp_path)
    ops.install(db, dsn=pg_dsn, pg_capture_mode="logical", green_ids="negative")
    try:
        sync_once(db, pg_dsn)
        # before the flip: green's incidental writes, decoded from the start
        assert pg_exec(pg_dsn, "insert into users (email, name, is_admin, created_at, "
                               "updated_at) values ('g@x', 'green', 0, 1, 1) returning id"
                       ) == [(-1,)]
        pg_exec(pg_dsn, "update users set name = 'green loses' where id = 2",
                "update users set name = 'green only' where id = 3",
                "delete from app_state where key = (select min(key) from app_state)")
        write(db, "update users set name = 'blue wins' where id = 2")
        assert sync_once(db, pg_dsn).conflicts == 1  # sor-wins: SQLite's version in PG
        out = verbs.flip(SyncOptions(sqlite_path=db, dsn=pg_dsn), timeout=20)
        assert out.flipped and out.postgres_capture == "logical"
        assert out.rebased is not None
        assert out.rebased["changes"] == 4 and out.rebased["deletes"] == 1
        # a replayed history would have put 'green loses' back over SQLite's version
        con = sqlite3.connect(db)
        assert con.execute("select id, name from users where id in (-1, 2, 3) order by id"
                           ).fetchall() == [(-1, "green"), (2, "blue wins"), (3, "green only")]
        con.close()
        check(db, pg_dsn)
        pg_exec(pg_dsn, "update users set name = 'after flip' where id = 2")
        log_before = max_seq(db)
        after = run_logical(SyncOptions(sqlite_path=db, dsn=pg_dsn), trim_log=True)
        assert after.applied == 1  # the pre-flip writes are not applied again
        # the to-postgres applier (after a rollback) asks the log who wrote a row last
        # when PostgreSQL has no trigger queue: with logical capture the history stays
        assert after.trimmed == 0 and max_seq(db) == log_before
        from pgshift.sync.trim import trim

        assert trim(db, pg_dsn)["plan"]["reasons"]["users"].startswith("logical capture")
        check(db, pg_dsn)
    finally:
        verbs.uninstall(db, pg_dsn)


def test_kill_9_of_the_logical_applier(logical: Path, pg_dsn: Dsn) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    from pgshift.dsn import connect

    db = logical
    conn = connect(pg_dsn, autocommit=True)
    try:
        for i in range(30):
            conn.execute("update app_state set value = %s, updated_at = %s", (f"v{i}", i))
            conn.execute("insert into job_history (job_id, status, created_at) "
                         "select id, 'pg', %s from jobs order by id limit 20", (i,))
            conn.execute("delete from job_history where id in (select id from job_history "
                         "where status = 'pg' order by id limit 5)")
        slot = pg_logical.installed(conn, "public")
        end = pg_logical.fence(conn, "public", "test-end")

        def consumed() -> int:
            row = conn.execute("select confirmed_flush_lsn::text from pg_replication_slots "
                               "where slot_name = %s", (slot,)).fetchone()
            return pg_logical.lsn_int(row[0])

        start = consumed()
        cmd = [sys.executable, "-c", "from pgshift.cli.main import run; run()", "sync", "run",
               str(db), pg_dsn.conninfo, "--mode", "to-sqlite", "--batch-size", "40"]
        kills = 0
        for fraction in (0.2, 0.5, 0.8):
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 60
            while consumed() < start + (end - start) * fraction and proc.poll() is None \
                    and time.monotonic() < deadline:
                time.sleep(0.002)
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                kills += 1
            proc.wait()
        assert kills >= 2
    finally:
        conn.close()
    result = back(db, pg_dsn)
    assert result.parked == 0
    assert pg_exec(pg_dsn, "select count(*) from pgshift.sync_conflicts") == [(0,)]
    check(db, pg_dsn)
