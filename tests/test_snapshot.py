"""pgshift.source.snapshot: consistent online copies of a live SQLite database."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from pgshift.errors import UsageError
from pgshift.source.snapshot import (
    CHANGELOG_TABLE,
    Snapshot,
    check_sqlite_file,
    journal_mode,
    read_hwm,
    take_snapshot,
)

BATCH = 50


def _live_db(path: Path) -> Path:
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, batch INTEGER NOT NULL)")
    con.execute("CREATE TABLE totals (n INTEGER NOT NULL)")
    con.execute("INSERT INTO totals VALUES (0)")
    con.execute(f"CREATE TABLE {CHANGELOG_TABLE} (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
                "tbl TEXT NOT NULL)")
    con.close()
    return path


def _write_batch(con: sqlite3.Connection, batch: int, *, commit: bool = True) -> None:
    """One transaction: BATCH items, the running total, one change-log row."""
    con.execute("BEGIN IMMEDIATE")
    con.executemany("INSERT INTO items (batch) VALUES (?)", [(batch,)] * BATCH)
    con.execute("UPDATE totals SET n = n + ?", (BATCH,))
    con.execute(f"INSERT INTO {CHANGELOG_TABLE} (tbl) VALUES ('items')")
    if commit:
        con.execute("COMMIT")


def _facts(path: Path) -> tuple[int, int, int | None]:
    con = sqlite3.connect(path)
    try:
        return con.execute(f"SELECT (SELECT count(*) FROM items), (SELECT n FROM totals), "
                           f"(SELECT max(seq) FROM {CHANGELOG_TABLE})").fetchone()
    finally:
        con.close()


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Path]:
    yield _live_db(tmp_path / "live.db")


def test_snapshot_ignores_an_open_write_transaction(live: Path, tmp_path: Path) -> None:
    writer = sqlite3.connect(live, isolation_level=None)
    try:
        for b in range(1, 4):
            _write_batch(writer, b)
        _write_batch(writer, 4, commit=False)  # open: holds the write lock, rows uncommitted
        started = time.perf_counter()
        snap = take_snapshot(live, tmp_path / "snaps", require_wal=True)
        assert time.perf_counter() - started < 5  # WAL: the writer did not block the copy
        assert _facts(snap.path) == (3 * BATCH, 3 * BATCH, 3)
        assert snap.hwm == 3
        writer.execute("COMMIT")
    finally:
        writer.close()
    assert _facts(live) == (4 * BATCH, 4 * BATCH, 4)
    assert _facts(snap.path) == (3 * BATCH, 3 * BATCH, 3)  # the copy never moves


def test_snapshots_under_continuous_writes_are_each_one_point_in_time(live: Path,
                                                                      tmp_path: Path) -> None:
    stop = threading.Event()
    errors: list[BaseException] = []
    committed = [0]

    def write() -> None:
        con = sqlite3.connect(live, isolation_level=None, timeout=10)
        try:
            b = 0
            while not stop.is_set():
                b += 1
                _write_batch(con, b, commit=False)
                time.sleep(0.001)  # keep the write transaction open a little
                con.execute("COMMIT")
                committed[0] = b
        except BaseException as exc:
            errors.append(exc)
        finally:
            con.close()

    thread = threading.Thread(target=write, name="snapshot-test-writer")
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while committed[0] < 5 and time.monotonic() < deadline:
            time.sleep(0.005)
        seen = []
        for _ in range(4):
            snap = take_snapshot(live, tmp_path / "snaps", require_wal=True)
            count, total, hwm = _facts(snap.path)
            assert count == total  # items and their running total come from one instant
            assert count % BATCH == 0  # never half a transaction
            assert hwm == snap.hwm == count // BATCH  # change log consistent with the data
            assert snap.source_journal_mode == "wal"
            seen.append(count)
            time.sleep(0.01)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not errors, errors
    assert seen == sorted(seen) and seen[-1] > seen[0]  # the source really kept moving
    final = _facts(live)
    assert final[0] == final[1] >= seen[-1]


def test_snapshot_file_is_self_contained_and_its_metadata_round_trips(live: Path,
                                                                      tmp_path: Path) -> None:
    con = sqlite3.connect(live, isolation_level=None)
    _write_batch(con, 1)
    con.close()
    snap = take_snapshot(live, tmp_path / "snaps")
    assert journal_mode(snap.path) == "delete"  # no -wal needed beside it
    assert not Path(str(snap.path) + "-wal").exists()
    assert snap.source == live.resolve()
    assert snap.bytes == snap.path.stat().st_size > 0
    assert Snapshot.load(snap.meta_path) == snap
    with closing(snap.connect()) as ro, pytest.raises(sqlite3.OperationalError,
                                                      match="readonly"):
        ro.execute("DELETE FROM items")
    assert _facts(snap.path) == (BATCH, BATCH, 1)


def test_read_hwm(tmp_path: Path) -> None:
    con = sqlite3.connect(tmp_path / "h.db")
    try:
        assert read_hwm(con) is None  # no change capture installed
        con.execute(f"CREATE TABLE {CHANGELOG_TABLE} (seq INTEGER PRIMARY KEY, tbl TEXT)")
        assert read_hwm(con) == 0  # installed, nothing captured yet
        con.executemany(f"INSERT INTO {CHANGELOG_TABLE} VALUES (?, 'x')", [(3,), (17,), (9,)])
        assert read_hwm(con) == 17
        con.commit()
    finally:
        con.close()
    assert take_snapshot(tmp_path / "h.db", tmp_path / "snaps", require_wal=False).hwm == 17


def test_require_wal_refuses_a_rollback_journal_database(tmp_path: Path) -> None:
    path = tmp_path / "rollback.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE t (x)")
    con.commit()
    con.close()
    assert journal_mode(path) == "delete"
    with pytest.raises(UsageError, match="journal_mode=delete; a live snapshot needs WAL") as info:
        take_snapshot(path, tmp_path / "snaps", require_wal=True)
    assert info.value.hint and "PRAGMA journal_mode=WAL" in info.value.hint
    assert not (tmp_path / "snaps").exists() or not list((tmp_path / "snaps").iterdir())
    snap = take_snapshot(path, tmp_path / "snaps", require_wal=False)  # offline file: allowed
    assert snap.source_journal_mode == "delete" and snap.hwm is None


@pytest.mark.parametrize("content, message", [
    (None, "SQLite file not found"),
    (b"", "is an empty file"),
    (b"SQLite format 2\x00" + b"\x00" * 100, "not a SQLite 3 database"),
    (b"hello", "not a SQLite 3 database"),
])
def test_check_sqlite_file(tmp_path: Path, content: bytes | None, message: str) -> None:
    path = tmp_path / "x.db"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UsageError, match=message):
        check_sqlite_file(path)
    with pytest.raises(UsageError, match="is a directory"):
        check_sqlite_file(tmp_path)
