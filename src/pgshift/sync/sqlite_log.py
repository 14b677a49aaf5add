"""The SQLite change log as a :class:`~pgshift.sync.source.ChangeSource` (to-postgres).

``_pgshift_changes`` rows with ``seq`` above the position are read in short read
transactions (one SELECT each: no long reader holding back WAL checkpoints; the
reader never writes SQLite). The position is the to-postgres checkpoint, which the
PostgreSQL sink commits in the same transaction as the batch's data: exactly once
across ``kill -9`` with nothing to recover. Order: ``seq`` is SQLite's commit order
(one writer) and, inside a transaction, its row order. Echoes: the capture triggers
skip the to-sqlite applier's transactions (the ``applying`` flag).
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from pgshift.errors import SourceError, UsageError
from pgshift.source.snapshot import CHANGELOG_TABLE
from pgshift.sync import pg_capture
from pgshift.sync import sqlite_capture as capture
from pgshift.sync.common import (
    DDL_HINT,
    FENCE_OP,
    TO_POSTGRES,
    SchemaChangedError,
    open_sqlite,
    sqlite_write_hint,
)
from pgshift.sync.source import Outcome
from pgshift.sync.tables import Change


def write_fence(path: Path) -> int:
    """Write a fence marker into the SQLite change log; its seq.

    Every change committed before the marker has a lower seq, so an applier whose
    checkpoint reached it has applied all of them (the router holds writes meanwhile).
    """
    con = open_sqlite(path, readonly=False)
    try:
        con.execute("BEGIN IMMEDIATE")
        cur = con.execute(
            f'INSERT INTO "{CHANGELOG_TABLE}" (tbl, op, origin, schema_version, ts) '
            "VALUES ('', ?, 'pgshift', 0, ?)", (FENCE_OP, int(time.time() * 1000)))
        con.execute("COMMIT")
        return int(cur.lastrowid or 0)
    except sqlite3.OperationalError as exc:
        raise SourceError(f"writing the fence marker into {path} failed: {exc}",
                          hint=sqlite_write_hint(exc, path)) from exc
    finally:
        con.close()


def stranded_range(con: sqlite3.Connection, after: int, upto: int | None = None
                   ) -> dict[str, Any]:
    """The change-log rows (fence markers aside) with ``after < seq <= upto`` (no upper
    bound without ``upto``): count, seq range, oldest age, tables."""
    rows = con.execute(
        f'SELECT tbl, count(*), min(seq), max(seq), min(ts) FROM "{CHANGELOG_TABLE}" '
        "WHERE seq > ? AND seq <= ? AND op <> ? GROUP BY tbl ORDER BY tbl",
        (after, upto if upto is not None else 2**63 - 1, FENCE_OP)).fetchall()
    return pg_capture.range_summary(rows)


class SqliteLogSource:
    """SQLite's change log, read after the to-postgres checkpoint."""

    direction = TO_POSTGRES

    def __init__(self, path: Path, con: sqlite3.Connection | None = None) -> None:
        self.path = path
        self.con = con if con is not None else open_sqlite(path)
        self._after = 0
        self._shapes: dict[str, capture.CapturedTable] = {}
        self._schema_version = self._version()

    def expect(self, shapes: dict[str, capture.CapturedTable]) -> None:
        """The captured tables' shapes the sink was built for: DDL since is refused."""
        self._shapes = dict(shapes)
        self._schema_version = self._version()

    def _version(self) -> int:
        return int(self.con.execute("pragma schema_version").fetchone()[0])

    def position(self) -> int:
        return self._after

    def seek(self, position: int) -> None:
        self._after = position

    def read(self, limit: int) -> list[Change]:
        if self._version() != self._schema_version:
            self._check_shapes()
        rows = self.con.execute(
            f'SELECT seq, tbl, op, CAST(key_old AS BLOB), CAST(key_new AS BLOB), '
            f'CAST(row AS BLOB), schema_version, ts, CAST(before AS BLOB), origin FROM '
            f'"{CHANGELOG_TABLE}" WHERE seq > ? ORDER BY seq LIMIT ?',
            (self._after, limit)).fetchall()
        return [Change(*r) for r in rows]

    def _check_shapes(self) -> None:
        for name, shape in self._shapes.items():
            try:
                live = capture.describe(self.con, name)
            except UsageError as exc:
                raise SchemaChangedError(f"captured table {name} changed: {exc.message}",
                                         hint=DDL_HINT, table=name) from exc
            if live.fingerprint != shape.fingerprint:
                raise SchemaChangedError(
                    f"the columns of captured table {name} changed since capture was "
                    "installed (DDL during the sync window)", hint=DDL_HINT, table=name)
        self._schema_version = self._version()

    def ack(self, outcome: Outcome) -> None:
        # the durable checkpoint committed with the batch (the sink's transaction)
        self._after = max(self._after, outcome.position)

    def recover(self, record: dict[str, Any] | None) -> Outcome | None:
        return None  # nothing to finish: the checkpoint commits with the data

    def fence(self) -> int:
        return write_fence(self.path)

    def stranded(self, upto: int) -> dict[str, Any]:
        return stranded_range(self.con, self._after, upto)

    def rebase(self) -> dict[str, Any] | None:
        return None  # before the flip SQLite is the system of record: nothing to rebase

    def pending(self) -> int:
        return int(self.con.execute(f'SELECT count(*) FROM "{CHANGELOG_TABLE}" WHERE seq > ?',
                                    (self._after,)).fetchone()[0])

    def horizon(self) -> int | None:
        return None

    def close(self) -> None:
        self.con.close()
