"""Property test: seeded random interleavings across a flip, with kill -9 of the applier.

Before the flip SQLite (blue) is the system of record: it inserts, updates, deletes,
REPLACEs and moves keys in every table, while green writes the dual-writer table
``kv`` and makes incidental writes to the single-writer tables (captured by
PostgreSQL's triggers). A real ``pgshift sync run --mode dual --follow`` subprocess
applies both ways and is killed with SIGKILL at random points, then restarted.
The flip (``sync flip``: drain, rebase green's queued writes) switches the system
of record; afterwards green writes everything and blue only ``kv``, under
``--mode dual --sor postgres``, killed and restarted again. After a final drain:

- both sides are identical (``pgshift verify``), nothing is parked;
- the accounting balances per table and origin: every captured change was
  applied, or is the recorded loser of a conflict (``loser_change``), or (green's
  single-writer writes before the flip) was folded by the flip into a current-row
  change that was applied.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from pgshift.dsn import Dsn, connect
from pgshift.sync import ops, verbs
from pgshift.sync.apply import SyncOptions
from pgshift.sync.apply_sqlite import run_dual
from sync_helpers import check, migrate_to, pg_exec

pytestmark = pytest.mark.data

SCHEMA = """
CREATE TABLE a (id INTEGER PRIMARY KEY, u TEXT UNIQUE, x REAL, t TEXT);
CREATE TABLE c (k TEXT NOT NULL, n INTEGER NOT NULL, v TEXT, PRIMARY KEY (k, n)) WITHOUT ROWID;
CREATE TABLE kv (k TEXT PRIMARY KEY NOT NULL, v TEXT, n INTEGER);
"""
TABLES_YAML = "tables:\n  kv:\n    writes: dual-writer\n  c:\n    conflict: sor-wins\n"

# Counts every change PostgreSQL's capture queues, per table and origin, so the test
# can balance the books after the queue was consumed (test-only, dropped with the db).
COUNT_SQL = """
CREATE SCHEMA pgshift_test;
CREATE TABLE pgshift_test.captured (tbl text, origin text, n bigint,
                                    PRIMARY KEY (tbl, origin));
CREATE FUNCTION pgshift_test.count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.op <> 'F' THEN
    INSERT INTO pgshift_test.captured VALUES (NEW.tbl, NEW.origin, 1)
    ON CONFLICT (tbl, origin) DO UPDATE SET n = pgshift_test.captured.n + 1;
  END IF;
  RETURN NULL;
END $$;
CREATE TRIGGER pgshift_test_count AFTER INSERT ON pgshift.pg_changes
FOR EACH ROW EXECUTE FUNCTION pgshift_test.count();
"""


def _txt(rnd: random.Random) -> str:
    return rnd.choice(["", "plain", "it's", "a,b", "ünï", "x" * 20, f"r{rnd.randrange(99)}"])


def blue_step(con: sqlite3.Connection, rnd: random.Random, *, only_kv: bool) -> None:
    """One statement as the app on SQLite would run it."""
    r = rnd.random()
    if only_kv or r < 0.3:
        k = f"k{rnd.randrange(12)}"
        q = rnd.random()
        if q < 0.4:
            con.execute("insert or replace into kv values (?, ?, ?)",
                        (k, _txt(rnd), rnd.randrange(9)))
        elif q < 0.75:
            con.execute("update kv set v = ?, n = n + 1 where k = ?", (_txt(rnd), k))
        elif q < 0.9:
            con.execute("insert into kv values (?, ?, 0) on conflict (k) do update "
                        "set v = excluded.v", (k, _txt(rnd)))
        else:
            con.execute("delete from kv where k = ?", (k,))
        return
    ids = [row[0] for row in con.execute("select id from a")] or [1]
    u = f"u{rnd.randrange(15)}"
    if r < 0.5:
        con.execute("insert or replace into a (id, u, x, t) values (?, ?, ?, ?)",
                    (rnd.choice([None, rnd.randrange(1, 40)]), u, rnd.uniform(-9, 9),
                     _txt(rnd)))
    elif r < 0.6:
        con.execute("update or replace a set u = ?, t = ? where id = ?",
                    (u, _txt(rnd), rnd.choice(ids)))
    elif r < 0.65:
        con.execute("update or replace a set id = ? where id = ?",
                    (rnd.randrange(1, 60), rnd.choice(ids)))
    elif r < 0.72:
        con.execute("delete from a where id = ?", (rnd.choice(ids),))
    elif r < 0.9:
        con.execute("insert into c values (?, ?, ?) on conflict (k, n) do update "
                    "set v = excluded.v", (f"c{rnd.randrange(4)}", rnd.randrange(4),
                                           _txt(rnd)))
    else:
        con.execute("delete from c where k = ? and n = ?",
                    (f"c{rnd.randrange(4)}", rnd.randrange(4)))


def green_step(conn: psycopg.Connection, rnd: random.Random, *, only_kv: bool) -> None:
    """One statement as green's app on PostgreSQL would run it (autocommit)."""
    r = rnd.random()
    try:
        if only_kv or r < 0.5:
            k = f"k{rnd.randrange(12)}"
            q = rnd.random()
            if q < 0.45:
                conn.execute("insert into kv values (%s, %s, 0) on conflict (k) do update "
                             "set v = excluded.v", (k, _txt(rnd)))
            elif q < 0.85:
                conn.execute("update kv set v = %s, n = n + 1 where k = %s", (_txt(rnd), k))
            else:
                conn.execute("delete from kv where k = %s", (k,))
            return
        if r < 0.7:
            conn.execute("update a set t = %s, x = %s where id = (select id from a "
                         "order by random() limit 1)", (_txt(rnd), rnd.uniform(-9, 9)))
        elif r < 0.8:
            conn.execute("insert into a (id, u, x, t) values (%s, %s, 0.5, 'green') "
                         "on conflict do nothing",
                         (rnd.randrange(1000, 1030), f"g{rnd.randrange(15)}"))
        elif r < 0.9:
            conn.execute("insert into c values (%s, %s, %s) on conflict (k, n) do update "
                         "set v = excluded.v", (f"c{rnd.randrange(4)}", rnd.randrange(4),
                                                _txt(rnd)))
        else:
            conn.execute("delete from c where k = %s and n = %s",
                         (f"c{rnd.randrange(4)}", rnd.randrange(4)))
    except (psycopg.errors.UniqueViolation, psycopg.errors.ForeignKeyViolation):
        pass  # refused in PostgreSQL: nothing captured


class Applier:
    """A real ``pgshift sync run --mode dual --follow`` process, killed with SIGKILL."""

    def __init__(self, db: Path, dsn: Dsn, args: list[str]) -> None:
        self.cmd = [sys.executable, "-c", "from pgshift.cli.main import run; run()", "sync",
                    "run", str(db), dsn.conninfo, "--mode", "dual", "--follow",
                    "--batch-size", "7", *args]
        self.proc: subprocess.Popen[bytes] | None = None
        self.kills = 0
        self.dsn = dsn

    def start(self, dsn: Dsn) -> None:
        """Start it and wait until both directions hold their locks (connected, settings
        stored), so a kill lands in the apply loop, not in Python's start-up."""
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        deadline = time.monotonic() + 20
        while pg_exec(dsn, "select count(*) from pg_locks where locktype = 'advisory' "
                           "and granted")[0][0] < 2:
            assert self.proc.poll() is None, self.proc.stderr.read() if self.proc.stderr \
                else "exited"
            assert time.monotonic() < deadline, "the applier did not start"
            time.sleep(0.02)

    def kill(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.kills += 1
        self.proc.wait()
        assert self.proc.stderr is not None
        err = self.proc.stderr.read().decode() if not self.proc.stderr.closed else ""
        self.proc.stderr.close()
        assert "Error" not in err, err
        self.proc = None
        # its PostgreSQL sessions end when the server notices the closed sockets
        deadline = time.monotonic() + 10
        while pg_exec(self.dsn, "select count(*) from pg_locks where locktype = 'advisory'"
                      )[0][0]:
            assert time.monotonic() < deadline, "the killed applier's locks stayed"
            time.sleep(0.02)


def phase(db: Path, dsn: Dsn, rnd: random.Random, applier: Applier, *, rounds: int,
          blue_only_kv: bool, green_only_kv: bool) -> None:
    """Random writes on both sides while the applier runs and is killed at random."""
    con = sqlite3.connect(db, isolation_level=None, timeout=10)
    conn = connect(dsn, autocommit=True)
    applier.start(dsn)
    try:
        for i in range(rounds):
            for _ in range(rnd.randrange(1, 12)):
                if rnd.random() < 0.6:
                    # short BEGIN IMMEDIATE transactions: a dual-mode applier writes SQLite
                    # too, and a deferred read-then-write transaction could fail with
                    # SQLITE_BUSY_SNAPSHOT (the documented reason dual is opt-in)
                    con.execute("BEGIN IMMEDIATE")
                    for _ in range(rnd.randrange(1, 4)):
                        with contextlib.suppress(sqlite3.IntegrityError):
                            blue_step(con, rnd, only_kv=blue_only_kv)
                    con.execute("COMMIT")
                else:
                    green_step(conn, rnd, only_kv=green_only_kv)
            time.sleep(rnd.choice([0, 0.01, 0.05]))
            if i % 3 == 2 and rnd.random() < 0.7:
                applier.kill()
                applier.start(dsn)
    finally:
        applier.kill()
        con.close()
        conn.close()


def settle(db: Path, dsn: Dsn, sor: str) -> None:
    """Run both directions until neither has anything left (in-process, once each)."""
    for _ in range(5):
        out = run_dual(SyncOptions(sqlite_path=db, dsn=dsn, sor=sor))
        assert all(r.parked == 0 for r in out.values()), out
        if sum(r.applied for r in out.values()) == 0:
            return
    raise AssertionError("sync did not settle")


def books(db: Path, dsn: Dsn, flip_out: dict[str, int], flip_in: dict[str, int]) -> None:
    """captured = applied + conflict losers (+ folded by the flip), per table and origin."""
    con = sqlite3.connect(db)
    try:
        start = pg_exec(dsn, "select start_seq from pgshift.sync_state where direction = "
                             "'to-postgres'")[0][0]
        sqlite_captured = dict(con.execute(
            "select tbl, count(*) from _pgshift_changes where seq > ? and op <> 'F' "
            "group by tbl", (start,)).fetchall())
    finally:
        con.close()
    applied = {r[0]: (r[1], r[2]) for r in pg_exec(
        dsn, "select table_name, applied_to_postgres, applied_to_sqlite from "
             "pgshift.sync_tables")}
    losers = {(r[0], r[1]): r[2] for r in pg_exec(
        dsn, "select table_name, loser_origin, count(distinct loser_change) from "
             "pgshift.sync_conflicts where loser_change is not null group by 1, 2")}
    dup = pg_exec(dsn, "select loser_origin, loser_change, count(*) from pgshift.sync_conflicts "
                       "where loser_change is not null group by 1, 2 having count(*) > 1")
    assert dup == [], "a lost change was recorded twice"
    pg_captured: dict[str, int] = {}
    for tbl, origin, n in pg_exec(dsn, "select tbl, origin, n from pgshift_test.captured"):
        if origin != "rebase":
            pg_captured[tbl] = pg_captured.get(tbl, 0) + n
    for t in ("a", "c", "kv"):
        assert sqlite_captured.get(t, 0) == applied[t][0] + losers.get((t, "sqlite"), 0), t
        assert pg_captured.get(t, 0) + flip_in.get(t, 0) == \
            applied[t][1] + losers.get((t, "postgres"), 0) + flip_out.get(t, 0), t


def run_seed(tmp_path: Path, dsn: Dsn, seed: int, rounds: int) -> None:
    rnd = random.Random(seed)
    db = tmp_path / "p.db"
    con = sqlite3.connect(db)
    con.executescript(SCHEMA)
    con.execute("pragma journal_mode=wal")
    for i in range(1, 11):
        con.execute("insert into a (u, x, t) values (?, ?, 't')", (f"s{i}", i / 3))
        con.execute("insert into c values (?, ?, 'v')", (f"c{i % 4}", i))
        con.execute("insert into kv values (?, 'seed', 0)", (f"k{i}",))
    con.commit()
    con.close()
    ops.install(db)
    migrate_to(db, dsn, tmp_path)
    ops.install(db, dsn=dsn)  # green's writes are captured from the start
    pg_exec(dsn, COUNT_SQL)
    cfg_file = tmp_path / "tables.yaml"
    cfg_file.write_text(TABLES_YAML)
    before = Applier(db, dsn, ["--tables-config", str(cfg_file)])
    phase(db, dsn, rnd, before, rounds=rounds, blue_only_kv=False, green_only_kv=False)
    settle(db, dsn, "sqlite")
    queued = {r[0]: int(r[1]) for r in pg_exec(
        dsn, "select tbl, count(*) from pgshift.pg_changes where op <> 'F' group by tbl")}
    counted_before = {r[0]: int(r[1]) for r in pg_exec(
        dsn, "select tbl, n from pgshift_test.captured where origin = 'rebase'")}
    flipped = verbs.flip(SyncOptions(sqlite_path=db, dsn=dsn), timeout=30)
    assert flipped.flipped, flipped
    rebased_in = {r[0]: int(r[1]) - counted_before.get(r[0], 0) for r in pg_exec(
        dsn, "select tbl, n from pgshift_test.captured where origin = 'rebase'")}
    after = Applier(db, dsn, ["--sor", "postgres"])
    phase(db, dsn, rnd, after, rounds=rounds, blue_only_kv=True, green_only_kv=False)
    settle(db, dsn, "postgres")
    assert before.kills + after.kills >= 2  # the applier really died mid-stream
    check(db, dsn)
    books(db, dsn, queued, rebased_in)


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_random_interleavings_across_a_flip_with_kills(tmp_path: Path, pg_dsn: Dsn,
                                                       seed: int) -> None:
    run_seed(tmp_path, pg_dsn, seed, rounds=6)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(20, 30))
def test_random_interleavings_more_seeds(tmp_path: Path, pg_dsn: Dsn, seed: int) -> None:
    run_seed(tmp_path, pg_dsn, seed, rounds=12)


