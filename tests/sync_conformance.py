"""The ChangeSource conformance suite (the contracts of ``pgshift.sync.source``).

Every source gets a test class that inherits ``SourceConformance`` and provides a
``harness`` fixture (a ``Harness``: a captured, migrated small file whose ``kv``
table both sides write, with this source's capture installed on its side and the
other direction's capture on the other). The same tests run against each: commit
order and ack, exactly once after ``kill -9`` of the applier, fence order, the
stranded range, and echo suppression.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgshift.dsn import Dsn, connect
from pgshift.sync.common import FENCE_OP, SyncOptions, SyncResult
from pgshift.sync.factory import open_source
from pgshift.sync.source import ChangeSource
from sync_helpers import app_con, sqlite_rows

BACKLOG = 1500  # changes, in transactions of 10: ~75 batches of 20 for kill -9 to land in


def _upsert(con: Any, sql: str, pairs: Sequence[tuple[str, str]], per_txn: int) -> None:
    try:
        for i, pair in enumerate(pairs, start=1):
            con.execute(sql, pair)
            if i % per_txn == 0:
                con.commit()
        con.commit()
    finally:
        con.close()


def sqlite_upsert(db: Path, pairs: Sequence[tuple[str, str]], per_txn: int = 10) -> None:
    """Upsert ``kv`` rows in SQLite as the app would (transactions of ``per_txn``)."""
    _upsert(app_con(db), "insert into kv values (?, ?) on conflict(k) do update set "
                         "v = excluded.v", pairs, per_txn)


def pg_upsert(dsn: Dsn, pairs: Sequence[tuple[str, str]], per_txn: int = 10) -> None:
    """Upsert ``kv`` rows in PostgreSQL as green's app would."""
    _upsert(connect(dsn), "insert into kv (k, v) values (%s, %s) on conflict (k) do "
                          "update set v = excluded.v", pairs, per_txn)


def kill_during(args: Sequence[str], progress: Callable[[], float], goal: float, *,
                timeout: float = 90.0) -> bool:
    """Run ``pgshift ARGS`` and ``kill -9`` it once ``progress()`` reaches ``goal``;
    True when it was killed (False: it ended first). It must not print an error."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "from pgshift.cli.main import run; run()", *args],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    while progress() < goal and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    killed = proc.poll() is None
    if killed:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.stderr is not None
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert "Error" not in err, err
    return killed


def pg_kv(dsn: Dsn) -> dict[str, str | None]:
    conn = connect(dsn, autocommit=True)
    try:
        return dict(conn.execute("select k, v from kv").fetchall())
    finally:
        conn.close()


def sqlite_kv(db: Path) -> dict[str, str | None]:
    return dict(sqlite_rows(db, "select k, v from kv"))


def pg_scalar(dsn: Dsn, query: str) -> int:
    conn = connect(dsn, autocommit=True)
    try:
        row = conn.execute(query).fetchone()
        return int(row[0]) if row and row[0] is not None else 0
    except Exception:  # a table not there yet (the applier creates it): nothing applied
        return 0
    finally:
        conn.close()


def position_of(change: Any) -> int:
    """A change's position: ``seq`` in the SQLite log, ``id`` (queue id, LSN) else."""
    return int(change.seq if hasattr(change, "seq") else change.id)


def rows_of(batch: Sequence[Any]) -> list[Any]:
    """The row changes of a batch (fence markers and commit markers aside)."""
    return [ch for ch in batch if ch.op != FENCE_OP]


@dataclass
class Harness:
    """One source under test, with both sides of a small synced file."""

    name: str
    db: Path
    dsn: Dsn
    direction: str
    write: Callable[[Sequence[tuple[str, str]]], None]  # the app on the source's side
    write_other: Callable[[Sequence[tuple[str, str]]], None]  # the app on the sink's side
    source_kv: Callable[[], dict[str, str | None]]
    sink_kv: Callable[[], dict[str, str | None]]
    apply: Callable[..., SyncResult]  # this direction's applier, once
    apply_other: Callable[[], SyncResult]  # the other direction's applier, once
    applied: Callable[[], int]  # changes this direction applied (its durable counter)
    last_record: Callable[[], dict[str, Any] | None]  # the sink's last batch record
    cli: list[str]  # `pgshift sync run ...` of this direction

    @property
    def opts(self) -> SyncOptions:
        return SyncOptions(sqlite_path=self.db, dsn=self.dsn)

    @contextmanager
    def source(self) -> Iterator[ChangeSource]:
        src = open_source(self.opts, self.direction)
        try:
            yield src
        finally:
            src.close()


class SourceConformance:
    """The contracts of ``pgshift.sync.source.ChangeSource``; subclasses give ``harness``."""

    def test_reads_in_commit_order_and_ack_moves_past(self, harness: Harness) -> None:
        harness.write([("o1", "1"), ("o2", "2")])
        harness.write([("o1", "3")])
        with harness.source() as src:
            assert isinstance(src, ChangeSource)
            start = src.position()
            src.fence()  # a slot reads flushed WAL only: the fence flushes what came before
            first = src.read(100)
            again = src.read(100)  # no ack: the same changes again
            assert [position_of(c) for c in first] == [position_of(c) for c in again]
            changes = rows_of(first)
            assert [(c.table, c.op) for c in changes] == [("kv", "I"), ("kv", "I"),
                                                          ("kv", "U")]
            positions = [position_of(c) for c in first]
            assert positions == sorted(positions) and len(set(positions)) == len(positions)
            assert min(positions) > start
        result = harness.apply()
        assert result.applied >= 3 and result.parked == 0
        assert harness.sink_kv()["o1"] == "3" and harness.sink_kv()["o2"] == "2"
        with harness.source() as src:
            assert src.position() >= max(positions)
            assert rows_of(src.read(100)) == []  # acknowledged: never read again
            # the sink's record of its last batch is acknowledged: nothing to finish
            assert src.recover(harness.last_record()) is None

    def test_exactly_once_after_kill_9(self, harness: Harness) -> None:
        pairs = [(f"b{i % 200}", f"v{i}") for i in range(BACKLOG)]
        harness.write(pairs)
        before = harness.applied()
        kills = sum(kill_during([*harness.cli, "--batch-size", "20", "--follow"],
                                harness.applied, before + BACKLOG * fraction)
                    for fraction in (0.25, 0.5, 0.75))
        assert kills >= 1, "the applier finished before it could be killed"
        result = harness.apply()
        assert result.parked == 0
        assert harness.sink_kv() == harness.source_kv()
        # every change applied exactly once across all the runs (the durable counter
        # moves with each batch's commit or its recorded outcome, never twice)
        assert harness.applied() - before == BACKLOG

    def test_fence_order(self, harness: Harness) -> None:
        harness.write([("f1", "before"), ("f2", "before")])
        with harness.source() as src:
            fence = src.fence()
        harness.write([("f3", "after")])
        with harness.source() as src:
            later = src.fence()  # (makes f3 readable from a slot)
            changes = rows_of(src.read(1000))
        assert later > fence
        by_key = {}
        for ch in changes:
            key = _kv_key(ch)
            if key is not None:
                by_key[key] = position_of(ch)
        # every change committed before the fence sorts below it, every later one above
        assert by_key["f1"] < fence and by_key["f2"] < fence < by_key["f3"]
        result = harness.apply(until_seq=fence, batch_size=1)
        assert result.last_seq >= fence
        sink = harness.sink_kv()
        assert sink["f1"] == "before" and sink["f2"] == "before"

    def test_stranded_range(self, harness: Harness) -> None:
        harness.write([("s1", "x"), ("s2", "x")])
        harness.write([("s1", "y")])
        with harness.source() as src:
            fence = src.fence()
            out = src.stranded(fence)
        assert out["count"] == 3 and out["tables"] == {"kv": 3}
        assert out["first"] <= out["last"] <= fence and out["oldest_age_ms"] >= 0
        harness.apply(until_seq=fence)
        with harness.source() as src:
            assert src.stranded(fence)["count"] == 0

    def test_echo_suppression(self, harness: Harness) -> None:
        harness.apply()  # nothing pending from the setup
        harness.write_other([("e1", "from the other side"), ("e2", "too")])
        other = harness.apply_other()
        assert other.applied >= 2 and harness.source_kv()["e1"] == "from the other side"
        with harness.source() as src:
            # the other direction's applier wrote this side: nothing of it comes back
            assert rows_of(src.read(1000)) == []
        assert harness.apply().applied == 0  # and this direction applies nothing back
        assert harness.sink_kv()["e1"] == "from the other side"


def _kv_key(ch: Any) -> str | None:
    """The ``kv`` key a change wrote (SQLite log images are quote() literals)."""
    if ch.table != "kv":
        return None
    if hasattr(ch, "seq"):
        raw = ch.key_new if ch.key_new is not None else ch.key_old
        return raw.decode().strip("'") if raw is not None else None
    key = ch.key_new if ch.key_new is not None else ch.key_old
    return str(key[0]) if key else None
