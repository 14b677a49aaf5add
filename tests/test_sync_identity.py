"""Negative PostgreSQL ids before the flip, max+1 after; green's early writes go back."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from pgshift.cli.main import main
from pgshift.dsn import Dsn, connect
from pgshift.sync import identity, ops, verbs
from pgshift.sync.apply import SyncOptions
from pgshift.sync.apply_sqlite import run_to_sqlite
from sync_helpers import captured_seed, check, migrate_to, pg_exec, sync_once, write

pytestmark = pytest.mark.data

USER = ("insert into users (email, name, is_admin, created_at, updated_at) "
        "values ('{0}@x', '{0}', 0, 1, 1) returning id")


def sqlite_rows(db: Path, sql: str) -> list[tuple]:
    con = sqlite3.connect(db)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_green_inserts_before_the_flip_reach_sqlite(tmp_path: Path, pg_dsn: Dsn,
                                                    capsys: pytest.CaptureFixture[str]
                                                    ) -> None:
    db = captured_seed(tmp_path)
    migrate_to(db, pg_dsn, tmp_path)
    assert main(["sync", "install", str(db), pg_dsn.conninfo, "--green-ids", "negative",
                 "--json"]) == 0
    installed = json.loads(capsys.readouterr().out)["identities"]
    assert {(i["table"], i["state"], i["restart"]) for i in installed} == {
        ("users", "counts down", -1), ("job_history", "counts down", -1),
        ("oauth_tokens", "counts down", -1)}
    assert main(["sync", "plan", str(db), pg_dsn.conninfo, "--json"]) == 0
    plan = {r["table"]: r["notes"] for r in json.loads(capsys.readouterr().out)["tables"]}
    assert any("assumes positive ids" in n for n in plan["users"])
    assert not any("identity" in n for n in plan["app_state"])  # a text key needs nothing
    sync_once(db, pg_dsn)  # creates the to-postgres state

    # before the flip: green inserts (negative ids), updates and deletes incidentally...
    assert pg_exec(pg_dsn, USER.format("green1")) == [(-1,)]
    assert pg_exec(pg_dsn, USER.format("green2")) == [(-2,)]
    assert pg_exec(pg_dsn, "insert into job_history (job_id, status, created_at) select id, "
                           "'green', 3 from jobs order by id limit 1 returning id") == [(-1,)]
    pg_exec(pg_dsn, "update users set name = 'green only' where id = 4",
            "update users set name = 'green loses' where id = 5",
            "delete from app_state where key = (select min(key) from app_state)")
    # ...while blue, the system of record, inserts (max(rowid) + 1) and updates
    blue_max = sqlite_rows(db, "select max(id) from users")[0][0]
    write(db, "insert into users (email, name, is_admin, created_at, updated_at) "
              "values ('blue@x', 'blue', 0, 2, 2)",
          "update users set name = 'blue wins' where id = 5")
    result = sync_once(db, pg_dsn)
    assert result.parked == 0 and result.conflicts == 1  # only user 5: no id collided
    assert pg_exec(pg_dsn, "select table_name, key from pgshift.sync_conflicts") == [
        ("users", "5")]
    assert pg_exec(pg_dsn, f"select name from users where id = {blue_max + 1}") == [("blue",)]

    # the flip: drain, rebase green's early queue, identities count up from max + 1
    out = verbs.flip(SyncOptions(sqlite_path=db, dsn=pg_dsn), timeout=20)
    assert out.flipped and out.postgres_capture and out.drain.drained
    floor = sqlite_rows(db, "select seq from sqlite_sequence where name = 'users'")[0][0]
    moved = {i["table"]: i["restart"] for i in out.identities}
    assert moved["users"] == max(blue_max + 1, floor) + 1
    assert pg_exec(pg_dsn, USER.format("after")) == [(moved["users"],)]
    assert verbs.flip(SyncOptions(sqlite_path=db, dsn=pg_dsn), timeout=20).identities == []

    # the way back carries everything green wrote, before and after the flip
    back = run_to_sqlite(SyncOptions(sqlite_path=db, dsn=pg_dsn))
    assert back.parked == 0 and back.conflicts == 0
    check(db, pg_dsn)
    assert sqlite_rows(db, "select id, name from users where id < 0 or id in (4, 5) "
                           "order by id") == [(-2, "green2"), (-1, "green1"),
                                              (4, "green only"), (5, "blue wins")]
    assert sqlite_rows(db, "select count(*) from job_history where id = -1") == [(1,)]
    # blue after a rollback allocates past every id green used
    write(db, "insert into users (email, name, is_admin, created_at, updated_at) "
              "values ('rollback@x', 'r', 0, 2, 2)")
    assert sqlite_rows(db, "select max(id) from users") == [(moved["users"] + 1,)]


def test_install_is_idempotent_and_uninstall_counts_up_again(tmp_path: Path,
                                                             pg_dsn: Dsn) -> None:
    db = captured_seed(tmp_path, scale=30)
    migrate_to(db, pg_dsn, tmp_path)
    ops.install(db, dsn=pg_dsn, green_ids="negative")
    pg_exec(pg_dsn, USER.format("a"), USER.format("b"))
    again = ops.install(db, dsn=pg_dsn, green_ids="negative")
    assert {i["state"] for i in again.identities} == {"already negative"}
    assert pg_exec(pg_dsn, USER.format("c")) == [(-3,)]  # not restarted at -1
    conn = connect(pg_dsn)
    try:
        # counting down again after counting up starts below the lowest id in use
        identity.to_positive(conn, "public")
        assert {i["table"]: i["restart"] for i in identity.to_negative(conn, "public",
                                                                       ["users"])} == {
            "users": -4}
    finally:
        conn.close()
    high = pg_exec(pg_dsn, "select max(id) from users")[0][0]
    out = verbs.uninstall(db, pg_dsn)
    assert [i["table"] for i in out.identities_restored or []] == ["users"]
    assert pg_exec(pg_dsn, USER.format("d")) == [(high + 1,)]


def test_serial_columns_and_the_plain_install(pg_conn, tmp_path: Path, pg_dsn: Dsn) -> None:
    pg_exec(pg_dsn, "create schema s", "create table s.t (id serial primary key, v text)",
            "create table s.k (code text primary key)",
            "insert into s.t (v) values ('x'), ('y')")
    conn = connect(pg_dsn)
    try:
        found = identity.find(conn, "s")
        assert [(c.table, c.column, c.kind, c.negative) for c in found] == [
            ("t", "id", "serial", False)]
        identity.to_negative(conn, "s")
        assert pg_exec(pg_dsn, "insert into s.t (v) values ('g') returning id") == [(-1,)]
        assert identity.to_positive(conn, "s", {"t": 10})[0]["restart"] == 11
        assert pg_exec(pg_dsn, "insert into s.t (v) values ('h') returning id") == [(11,)]
    finally:
        conn.close()
    db = captured_seed(tmp_path, scale=30)
    migrate_to(db, pg_dsn, tmp_path)
    assert {i["state"] for i in ops.install(db, dsn=pg_dsn).identities} == {"counts up"}
    notes = {r.table: r.notes for r in verbs.plan(db, pg_dsn, "public", None).tables}
    assert any("--green-ids negative avoids it" in n for n in notes["job_history"])
