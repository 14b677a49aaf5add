"""Trimming the SQLite change log: only applied rows go, the newest stays, seq never reused."""

from __future__ import annotations

import json
import random
import sqlite3
from pathlib import Path

import pytest

from pgshift.cli.main import main
from pgshift.dsn import Dsn
from pgshift.errors import UsageError
from pgshift.source.snapshot import read_hwm
from pgshift.sync import ops, verbs
from pgshift.sync.apply import SyncOptions
from pgshift.sync.apply_sqlite import run_to_sqlite
from pgshift.sync.trim import trim
from sync_helpers import (
    captured_seed,
    check,
    flipped_seed,
    migrate_to,
    pg_exec,
    sync_once,
    write,
)

pytestmark = pytest.mark.data


def log_rows(db: Path) -> list[tuple[int, str, str]]:
    con = sqlite3.connect(db)
    try:
        return con.execute("select seq, tbl, op from _pgshift_changes order by seq").fetchall()
    finally:
        con.close()


def checkpoint(dsn: Dsn) -> int:
    return int(pg_exec(dsn, "select last_seq from pgshift.sync_state "
                            "where direction = 'to-postgres'")[0][0])


@pytest.fixture
def both(tmp_path: Path, pg_dsn: Dsn) -> Path:
    """Captured on both sides and migrated; the to-postgres state exists."""
    db = captured_seed(tmp_path, scale=100)
    migrate_to(db, pg_dsn, tmp_path)
    ops.install(db, dsn=pg_dsn)
    sync_once(db, pg_dsn)
    return db


def random_writes(db: Path, rnd: random.Random, n: int) -> None:
    for _ in range(n):
        uid = rnd.randint(1, 40)
        match rnd.randrange(3):
            case 0:
                write(db, f"update users set name = 'r{rnd.random()}' where id = {uid}")
            case 1:
                write(db, f"update app_state set value = 'v{rnd.random()}' where key = "
                          "(select key from app_state order by key limit 1 offset "
                          f"{rnd.randint(0, 3)})")
            case _:
                write(db, "insert into job_history (job_id, status, created_at) select id, "
                          f"'t', {rnd.randint(1, 9)} from jobs order by id limit 1")


def test_trim_never_deletes_an_unapplied_row(both: Path, pg_dsn: Dsn) -> None:
    rnd = random.Random(4)
    for _ in range(6):
        random_writes(both, rnd, rnd.randint(5, 25))
        rows = log_rows(both)
        # apply a random prefix of what is pending, one change per batch
        target = rnd.choice(rows)[0]
        if target > checkpoint(pg_dsn):
            sync_once(both, pg_dsn, until_seq=target, batch_size=3)
        applied = checkpoint(pg_dsn)
        newest = rows[-1][0]
        out = trim(both, pg_dsn, batch=7)
        assert out["complete"] and out["plan"]["keep"] == []
        after = log_rows(both)
        assert [r for r in after if r[0] > applied] == [r for r in rows if r[0] > applied]
        assert all(r[0] > applied or r[0] == newest for r in after)  # applied rows are gone
        assert after[-1][0] == newest == read_hwm(sqlite3.connect(both))
    sync_once(both, pg_dsn)
    check(both, pg_dsn)
    newest = log_rows(both)[-1][0]
    assert trim(both, pg_dsn)["left"] == 1
    write(both, "update users set name = 'after trim' where id = 1")
    assert log_rows(both)[-1][0] == newest + 1  # seq keeps increasing
    assert sync_once(both, pg_dsn).applied == 1
    check(both, pg_dsn)


def test_tables_whose_decisions_read_the_history_keep_it(both: Path, pg_dsn: Dsn,
                                                         capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    pg_exec(pg_dsn, "drop trigger _pgshift_capture on public.app_state")
    write(both, "update users set name = 'x' where id = 1",
          "update app_state set value = 'x' where key = (select min(key) from app_state)",
          "update users set name = 'y' where id = 2")
    verbs.drain(SyncOptions(sqlite_path=both, dsn=pg_dsn), timeout=20)  # fence row, applied
    assert main(["sync", "trim", str(both), pg_dsn.conninfo, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["plan"]["keep"] == ["app_state"] and out["deleted"] == 2
    # app_state's history stays; the fence marker is the newest row (the high-water mark)
    assert [r[1:] for r in log_rows(both)] == [("app_state", "U"), ("", "F")]


def test_trim_refuses_a_checkpoint_of_another_log(both: Path, pg_dsn: Dsn) -> None:
    write(both, "update users set name = 'x' where id = 1")
    sync_once(both, pg_dsn)
    write(both, "update users set name = 'y' where id = 1")
    pg_exec(pg_dsn, "update pgshift.sync_state set install_id = 'another'")
    before = log_rows(both)
    with pytest.raises(UsageError, match="another change log"):
        trim(both, pg_dsn)
    assert log_rows(both) == before


def test_trim_gives_way_to_the_app(both: Path, pg_dsn: Dsn,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    write(both, *[f"update users set name = 'n{i}' where id = 1" for i in range(5)])
    write(both, "update users set name = 'last' where id = 2")
    sync_once(both, pg_dsn)
    before = log_rows(both)
    app = sqlite3.connect(both, isolation_level=None)
    app.execute("begin immediate")  # the app holds the write lock throughout
    try:
        out = trim(both, pg_dsn, max_seconds=0.6)
        assert not out["complete"] and out["deleted"] == 0 and out["busy_retries"] >= 1
        assert main(["sync", "trim", str(both), pg_dsn.conninfo, "--max-seconds",
                     "0.3"]) == 1
    finally:
        app.execute("rollback")
        app.close()
    assert log_rows(both) == before
    capsys.readouterr()
    assert main(["sync", "trim", str(both), pg_dsn.conninfo]) == 0
    assert log_rows(both) == before[-1:]


def test_to_sqlite_applier_trims_after_the_flip(tmp_path: Path, pg_dsn: Dsn) -> None:
    db = flipped_seed(tmp_path, pg_dsn, scale=100)
    write(db, *[f"update users set name = 'pre flip {i}' where id = 3" for i in range(20)])
    assert verbs.flip(SyncOptions(sqlite_path=db, dsn=pg_dsn), timeout=20).flipped
    before = log_rows(db)
    assert len(before) > 20
    pg_exec(pg_dsn, "update users set name = 'green' where id = 4",
            "update app_state set value = 'green' where key = (select min(key) from app_state)")
    result = run_to_sqlite(SyncOptions(sqlite_path=db, dsn=pg_dsn, batch_size=1),
                           trim_log=True)
    assert result.applied == 2 and result.trimmed == len(before) - 1
    assert log_rows(db) == before[-1:]  # the applier's own writes were not captured
    check(db, pg_dsn)
    assert main(["sync", "run", str(db), pg_dsn.conninfo, "--trim"]) == 2
