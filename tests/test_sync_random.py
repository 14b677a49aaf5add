"""Seeded random workloads on SQLite (REPLACE, UPSERT, key updates, cascades), synced in
random batch sizes at random points: PostgreSQL always ends identical (verify)."""

from __future__ import annotations

import contextlib
import random
import sqlite3
from pathlib import Path

import pytest

from pgshift.dsn import Dsn
from pgshift.sync import ops, verbs
from sync_helpers import check, migrate_to, sync_once

pytestmark = pytest.mark.data

SCHEMA = """
CREATE TABLE a (id INTEGER PRIMARY KEY AUTOINCREMENT, u TEXT UNIQUE, x REAL, b BLOB, t TEXT);
CREATE TABLE c (k TEXT NOT NULL, n INTEGER NOT NULL, v TEXT, PRIMARY KEY (k, n)) WITHOUT ROWID;
CREATE TABLE d (id INTEGER PRIMARY KEY,
                a_id INTEGER REFERENCES a(id) ON DELETE CASCADE ON UPDATE CASCADE,
                note TEXT);
"""


def _text(rnd: random.Random) -> str:
    return rnd.choice(["", "plain", "it's", 'say "hi"', "a,b", "ünï", "line\nbreak", "x" * 50])


def _real(rnd: random.Random) -> float:
    return rnd.choice([0.1, -2.5, 1e-10, 123456789.125, 1e99, rnd.uniform(-1e6, 1e6)])


def step(con: sqlite3.Connection, rnd: random.Random) -> None:
    ids = [r[0] for r in con.execute("select id from a")] or [1]
    r = rnd.random()
    u = f"u{rnd.randrange(12)}"
    if r < 0.25:
        con.execute("insert or replace into a(id, u, x, b, t) values (?, ?, ?, ?, ?)",
                    (rnd.choice([None, rnd.randrange(1, 40)]), u, _real(rnd),
                     rnd.randbytes(rnd.randrange(4)), _text(rnd)))
    elif r < 0.4:
        con.execute("update or replace a set u = ?, x = ? where id = ?",
                    (u, _real(rnd), rnd.choice(ids)))
    elif r < 0.47:
        con.execute("update or replace a set id = ? where id = ?",
                    (rnd.randrange(1, 60), rnd.choice(ids)))
    elif r < 0.55:
        con.execute("delete from a where id = ?", (rnd.choice(ids),))
    elif r < 0.7:
        con.execute("insert or replace into d(id, a_id, note) values (?, ?, ?)",
                    (rnd.randrange(1, 30), rnd.choice(ids), _text(rnd)))
    elif r < 0.75:
        con.execute("delete from d where id = ?", (rnd.randrange(1, 30),))
    elif r < 0.88:
        con.execute("insert into c(k, n, v) values (?, ?, ?) on conflict(k, n) "
                    "do update set v = excluded.v",
                    (f"k{rnd.randrange(5)}", rnd.randrange(5), _text(rnd)))
    elif r < 0.94:
        con.execute("update or replace c set n = ? where k = ? and n = ?",
                    (rnd.randrange(5), f"k{rnd.randrange(5)}", rnd.randrange(5)))
    else:
        con.execute("delete from c where k = ?", (f"k{rnd.randrange(5)}",))


def _conflicts(dsn: Dsn) -> list[tuple]:
    from pgshift.dsn import connect

    conn = connect(dsn, autocommit=True)
    try:
        return conn.execute("select seq, table_name, op, key, winner_image, loser_image "
                            "from pgshift.sync_conflicts order by seq").fetchall()
    finally:
        conn.close()


@pytest.mark.parametrize("seed", [1, 2, 3, pytest.param(4, marks=pytest.mark.slow),
                                  pytest.param(5, marks=pytest.mark.slow)])
def test_random_workload_converges(tmp_path: Path, pg_dsn: Dsn, seed: int) -> None:
    rnd = random.Random(seed)
    db = tmp_path / "r.db"
    con = sqlite3.connect(db)
    con.executescript(SCHEMA)
    con.execute("pragma journal_mode=wal")
    con.execute("pragma foreign_keys = on")
    for i in range(1, 11):
        con.execute("insert into a(u, x, b, t) values (?, ?, ?, ?)",
                    (f"seed{i}", 1.5 * i, b"\x01", "t"))
        con.execute("insert into d(id, a_id, note) values (?, ?, 'n')", (i, i))
        con.execute("insert into c values (?, ?, 'v')", (f"k{i % 5}", i))
    con.commit()
    ops.install(db)
    migrate_to(db, pg_dsn, tmp_path)
    for _ in range(20):
        for _ in range(rnd.randrange(1, 40)):
            # an app statement that fails takes its captured rows with it
            with contextlib.suppress(sqlite3.IntegrityError):
                step(con, rnd)
            if rnd.random() < 0.3:
                con.commit()
        con.commit()
        if rnd.random() < 0.6:
            result = sync_once(db, pg_dsn, batch_size=rnd.choice([1, 3, 17, 1000]))
            assert result.parked == 0, result.parked_reasons
            # before-images match PostgreSQL exactly: no false conflicts
            assert result.conflicts == 0, _conflicts(pg_dsn)
    con.close()
    last = sync_once(db, pg_dsn)
    assert last.parked == 0 and last.conflicts == 0
    check(db, pg_dsn)


def pg_step(conn: object, rnd: random.Random) -> None:
    import psycopg

    assert isinstance(conn, psycopg.Connection)
    r = rnd.random()
    u = f"u{rnd.randrange(12)}"
    ids = [row[0] for row in conn.execute("select id from a")] or [1]
    try:
        with conn.transaction():
            if r < 0.3:
                conn.execute("insert into a (id, u, x, b, t) values (%s, %s, %s, %s, %s) "
                             "on conflict (id) do update set u = excluded.u, x = excluded.x",
                             (rnd.randrange(100, 140), u, _real(rnd),
                              rnd.randbytes(rnd.randrange(4)), _text(rnd)))
            elif r < 0.5:
                conn.execute("update a set x = %s, t = %s where id = %s",
                             (_real(rnd), _text(rnd), rnd.choice(ids)))
            elif r < 0.6:
                conn.execute("update a set id = %s where id = %s",
                             (rnd.randrange(200, 260), rnd.choice(ids)))
            elif r < 0.7:
                conn.execute("delete from a where id = %s", (rnd.choice(ids),))
            elif r < 0.85:
                conn.execute("insert into c (k, n, v) values (%s, %s, %s) on conflict (k, n) "
                             "do update set v = excluded.v",
                             (f"k{rnd.randrange(5)}", rnd.randrange(5), _text(rnd)))
            else:
                conn.execute("delete from c where k = %s", (f"k{rnd.randrange(5)}",))
    except (psycopg.errors.UniqueViolation, psycopg.errors.ForeignKeyViolation):
        pass  # the statement failed in PostgreSQL: nothing captured


@pytest.mark.parametrize("seed", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_random_postgres_workload_flows_back(tmp_path: Path, pg_dsn: Dsn, seed: int) -> None:
    from pgshift.dsn import connect
    from pgshift.sync.apply import SyncOptions
    from pgshift.sync.apply_sqlite import run_to_sqlite

    rnd = random.Random(seed)
    db = tmp_path / "b.db"
    con = sqlite3.connect(db)
    con.executescript(SCHEMA)
    con.execute("pragma journal_mode=wal")
    for i in range(1, 11):
        con.execute("insert into a(u, x, b, t) values (?, ?, ?, ?)",
                    (f"seed{i}", 1.5 * i, b"\\x01", "t"))
        con.execute("insert into d(id, a_id, note) values (?, ?, 'n')", (i, i))
        con.execute("insert into c values (?, ?, 'v')", (f"k{i % 5}", i))
    con.commit()
    con.close()
    ops.install(db)
    migrate_to(db, pg_dsn, tmp_path)
    ops.install(db, dsn=pg_dsn)
    conn = connect(pg_dsn, autocommit=True)
    try:
        for _ in range(15):
            for _ in range(rnd.randrange(1, 30)):
                pg_step(conn, rnd)
            if rnd.random() < 0.6:
                res = run_to_sqlite(SyncOptions(sqlite_path=db, dsn=pg_dsn,
                                                batch_size=rnd.choice([1, 7, 1000])))
                assert res.parked == 0 and res.conflicts == 0
    finally:
        conn.close()
    res = run_to_sqlite(SyncOptions(sqlite_path=db, dsn=pg_dsn))
    assert res.parked == 0 and res.conflicts == 0
    check(db, pg_dsn)


@pytest.mark.parametrize("seed", [7, pytest.param(8, marks=pytest.mark.slow)])
def test_random_writes_with_a_flip_in_the_middle(tmp_path: Path, pg_dsn: Dsn,
                                                 seed: int) -> None:
    """SQLite writes synced to PostgreSQL, a fenced drain, the flip, PostgreSQL writes
    carried back: both sides identical, no conflicts, nothing parked."""
    from pgshift.dsn import connect
    from pgshift.sync.apply import SyncOptions
    from pgshift.sync.apply_sqlite import run_to_sqlite

    rnd = random.Random(seed)
    db = tmp_path / "f.db"
    con = sqlite3.connect(db)
    con.executescript(SCHEMA)
    con.execute("pragma journal_mode=wal")
    con.execute("pragma foreign_keys = on")
    for i in range(1, 11):
        con.execute("insert into a(u, x, b, t) values (?, ?, ?, ?)", (f"s{i}", i * 0.5, b"", "t"))
        con.execute("insert into d(id, a_id, note) values (?, ?, 'n')", (i, i))
    con.commit()
    ops.install(db)
    migrate_to(db, pg_dsn, tmp_path)
    for _ in range(10):
        for _ in range(rnd.randrange(1, 30)):
            with contextlib.suppress(sqlite3.IntegrityError):
                step(con, rnd)
        con.commit()
        if rnd.random() < 0.5:
            assert sync_once(db, pg_dsn, batch_size=rnd.choice([2, 50])).parked == 0
    con.close()
    # the flip: blue stops, drain behind a fence, PostgreSQL becomes the system of record
    drained = verbs.drain(SyncOptions(sqlite_path=db, dsn=pg_dsn), timeout=20)
    assert drained.drained and drained.parked == 0
    check(db, pg_dsn)
    ops.install(db, dsn=pg_dsn)
    conn = connect(pg_dsn, autocommit=True)
    try:
        for _ in range(10):
            for _ in range(rnd.randrange(1, 30)):
                pg_step(conn, rnd)
            if rnd.random() < 0.5:
                res = run_to_sqlite(SyncOptions(sqlite_path=db, dsn=pg_dsn, batch_size=5))
                assert res.parked == 0 and res.conflicts == 0
    finally:
        conn.close()
    res = run_to_sqlite(SyncOptions(sqlite_path=db, dsn=pg_dsn))
    assert res.parked == 0 and res.conflicts == 0
    check(db, pg_dsn)
    assert sync_once(db, pg_dsn).applied == 0  # the way back was not captured again
