"""``--mode dual``: both directions in one process for dual-writer tables."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pgshift.cli.main import main
from pgshift.dsn import Dsn
from pgshift.errors import UsageError
from pgshift.sync import settings as cfg
from pgshift.sync.apply import SyncOptions
from pgshift.sync.apply_sqlite import run_dual
from sync_helpers import check, conflicts_of, pg_exec, small_synced, sqlite_rows, write

pytestmark = pytest.mark.data

DUAL = {"tables": {"kv": {"writes": "dual-writer"}, "jobs": {"kind": "queue"}}}


def wait_for(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.fixture
def dual(tmp_path: Path, pg_dsn: Dsn) -> Iterator[tuple[Path, threading.Event]]:
    db = small_synced(tmp_path, pg_dsn, pg_capture=True)
    settings = cfg.parse(DUAL, ["jobs", "kv", "u"])
    stop = threading.Event()
    errors: list[BaseException] = []

    def body() -> None:
        try:
            run_dual(SyncOptions(sqlite_path=db, dsn=pg_dsn, follow=True, poll=0.02,
                                 settings=settings), stop=stop)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=body)
    t.start()
    try:
        yield db, stop
    finally:
        stop.set()
        t.join()
    assert not errors, errors


def kv_both(db: Path, dsn: Dsn) -> tuple[list[tuple], list[tuple]]:
    return (sqlite_rows(db, "select k, v from kv order by k"),
            [tuple(r) for r in pg_exec(dsn, "select k, v from kv order by k")])


def test_both_sides_write_the_dual_table(dual: tuple[Path, threading.Event],
                                         pg_dsn: Dsn) -> None:
    db, _ = dual
    write(db, "update kv set v = 'blue' where k = 'a'", "insert into kv values ('bb', 'blue')",
          "update u set name = 'blue' where id = 1")
    pg_exec(pg_dsn, "update kv set v = 'green' where k = 'c'",
            "insert into kv values ('gg', 'green')", "delete from kv where k = 'd'")
    wait_for(lambda: kv_both(db, pg_dsn)[0] == kv_both(db, pg_dsn)[1]
             and ("gg", "green") in kv_both(db, pg_dsn)[0]
             and pg_exec(pg_dsn, "select name from u where id = 1") == [("blue",)])
    assert conflicts_of(pg_dsn) == []
    # the applier's own writes were not captured again: nothing queued, nothing pending
    wait_for(lambda: pg_exec(pg_dsn, "select count(*) from pgshift.pg_changes") == [(0,)])
    check(db, pg_dsn)


def test_a_key_written_on_both_sides_is_one_conflict(dual: tuple[Path, threading.Event],
                                                     pg_dsn: Dsn) -> None:
    db, _ = dual
    assert main(["sync", "pause", str(db), pg_dsn.conninfo]) == 0
    time.sleep(0.1)
    write(db, "update kv set v = 'blue' where k = 'e'")
    pg_exec(pg_dsn, "update kv set v = 'green' where k = 'e'")
    assert main(["sync", "resume", str(db), pg_dsn.conninfo]) == 0
    # sor-wins with SQLite as the system of record: blue's version on both sides
    wait_for(lambda: kv_both(db, pg_dsn)[0] == kv_both(db, pg_dsn)[1]
             and ("e", "blue") in kv_both(db, pg_dsn)[1])
    time.sleep(0.2)  # both appliers went round again: still one record
    [c] = conflicts_of(pg_dsn)
    assert (c["table_name"], c["winner"], c["loser_image"]) == (
        "kv", "sqlite", {"k": "e", "v": "green"})
    assert c["loser_origin"] == "postgres" and c["loser_change"] is not None
    check(db, pg_dsn)


def test_dual_mode_refusals(tmp_path: Path, pg_dsn: Dsn) -> None:
    db = small_synced(tmp_path, pg_dsn)
    with pytest.raises(UsageError, match="needs tables declared writes: dual-writer"):
        run_dual(SyncOptions(sqlite_path=db, dsn=pg_dsn, settings={}))
    settings = cfg.parse({"kv": {"writes": "dual-writer"}}, ["jobs", "kv", "u"])
    with pytest.raises(UsageError, match="PostgreSQL capture is not installed on dual-writer"):
        run_dual(SyncOptions(sqlite_path=db, dsn=pg_dsn, settings=settings))
    bad = tmp_path / "q.yaml"
    bad.write_text("jobs:\n  kind: queue\n  writes: dual-writer\n")
    assert main(["sync", "run", str(db), pg_dsn.conninfo, "--mode", "dual",
                 "--tables-config", str(bad)]) == 2


def test_dual_after_the_flip_with_postgres_as_system_of_record(tmp_path: Path,
                                                               pg_dsn: Dsn) -> None:
    """``--sor postgres``: every table flows back; on the dual table PostgreSQL wins."""
    db = small_synced(tmp_path, pg_dsn, pg_capture=True)
    ok = tmp_path / "ok.yaml"
    ok.write_text("tables:\n  kv:\n    writes: dual-writer\n")
    pg_exec(pg_dsn, "update kv set v = 'green' where k = 'a'",
            "update u set name = 'green' where id = 2")
    write(db, "update kv set v = 'blue' where k = 'a'", "update kv set v = 'blue' where k = 'b'")
    assert main(["sync", "run", str(db), pg_dsn.conninfo, "--mode", "dual", "--sor", "postgres",
                 "--tables-config", str(ok)]) == 0
    # one pass of each direction: run again until nothing moves
    assert main(["sync", "run", str(db), pg_dsn.conninfo, "--mode", "dual", "--sor",
                 "postgres"]) == 0
    check(db, pg_dsn)
    assert kv_both(db, pg_dsn)[0][:2] == [("a", "green"), ("b", "blue")]
    [c] = conflicts_of(pg_dsn)
    assert c["winner"] == "postgres" and c["policy"] == "sor-wins"
    conn_rows = pg_exec(pg_dsn, "select writes from pgshift.sync_tables where table_name='kv'")
    assert conn_rows == [("dual-writer",)]


def test_a_green_write_racing_the_apply_is_a_conflict(tmp_path: Path, pg_dsn: Dsn) -> None:
    """Green's update commits after the applier checked the row and before its write
    (which waits for green's row lock): the batch is redone and the conflict seen."""
    from pgshift.dsn import connect
    from pgshift.sync.apply_sqlite import run_to_sqlite
    from sync_helpers import sync_once

    db = small_synced(tmp_path, pg_dsn, pg_capture=True)
    settings = cfg.parse(DUAL, ["jobs", "kv", "u"])
    write(db, "update kv set v = 'blue' where k = 'a'")
    green = connect(pg_dsn)
    green.execute("update kv set v = 'green' where k = 'a'")  # uncommitted: holds the lock
    timer = threading.Timer(0.5, green.commit)
    timer.start()
    try:
        result = sync_once(db, pg_dsn, settings=settings, sor="sqlite")
    finally:
        timer.join()
        green.close()
    assert result.conflicts == 1
    [c] = conflicts_of(pg_dsn)
    assert c["winner"] == "sqlite" and c["loser_image"] == {"k": "a", "v": "green"}
    assert c["loser_change"] is not None
    back = run_to_sqlite(SyncOptions(sqlite_path=db, dsn=pg_dsn, settings=settings,
                                     sor="sqlite", only_tables=["kv"]))
    assert back.applied == 0 and back.conflicts == 0
    check(db, pg_dsn)


def test_a_green_write_racing_the_apply_is_a_conflict_on_single_writer_tables(
        tmp_path: Path, pg_dsn: Dsn) -> None:
    """The same race before the flip on a default (single-writer) table: SQLite wins,
    and green's overwritten write is recorded, not silently replaced."""
    from pgshift.dsn import connect
    from sync_helpers import sync_once

    db = small_synced(tmp_path, pg_dsn, pg_capture=True)
    write(db, "update kv set v = 'blue' where k = 'a'")
    green = connect(pg_dsn)
    green.execute("update kv set v = 'green' where k = 'a'")  # uncommitted: holds the lock
    timer = threading.Timer(0.5, green.commit)
    timer.start()
    try:
        result = sync_once(db, pg_dsn)
    finally:
        timer.join()
        green.close()
    assert result.conflicts == 1
    [c] = conflicts_of(pg_dsn)
    assert c["winner"] == "sqlite" and c["policy"] == "sor-wins"
    assert c["loser_image"] == {"k": "a", "v": "green"} and c["loser_change"] is not None
    assert pg_exec(pg_dsn, "select count(*) from pgshift.pg_changes where tbl = 'kv'") == [(0,)]
    check(db, pg_dsn)
