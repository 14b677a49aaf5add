"""The reference app on SQLite: WAL, a busy timeout, ``BEGIN IMMEDIATE`` for every write.

``BEGIN IMMEDIATE`` takes the write lock when the transaction starts, so a write transaction
never upgrades a read snapshot (the upgrade is what fails with ``SQLITE_BUSY_SNAPSHOT`` under
concurrency); writers queue on the busy timeout instead. The claim is one ``UPDATE ... WHERE id
= (SELECT ...)`` inside that transaction: SQLite has one writer at a time, so no two claims can
see the same pending row.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pgshift.demo.db_base import Conflict, DbUnavailable, Pool

CLAIM_SQL = (
    "UPDATE jobs SET status = 'processing', attempts = attempts + 1, started_at = ?, "
    "updated_at = ? WHERE id = (SELECT id FROM jobs WHERE status = 'pending' "
    "AND scheduled_at <= ? ORDER BY priority DESC, scheduled_at, id LIMIT 1) RETURNING *"
)


def _dict_row(cursor: sqlite3.Cursor, row: tuple[Any, ...]) -> dict[str, Any]:
    return {d[0]: v for d, v in zip(cursor.description, row, strict=True)}


class _Tx:
    __slots__ = ("con",)

    def __init__(self, con: sqlite3.Connection) -> None:
        self.con = con

    def one(self, sql: str, params: tuple[Any, ...] = ()) -> dict[str, Any] | None:
        cur = self.con.execute(sql, params)
        try:
            row: dict[str, Any] | None = cur.fetchone()
            return row
        finally:
            cur.close()

    def all(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        cur = self.con.execute(sql, params)
        try:
            return cur.fetchall()
        finally:
            cur.close()


class SqliteDatabase:
    """A pool of SQLite connections to ``path`` (created with the blue schema when missing)."""

    engine = "sqlite"
    claim_sql = CLAIM_SQL

    def __init__(self, path: Path | str, *, pool_size: int = 8,
                 busy_timeout_ms: int = 5000) -> None:
        self.path = Path(path)
        self.busy_timeout_ms = busy_timeout_ms
        if not self.path.exists():
            from pgshift.demo.seed import create_schema

            con = self._connect()
            try:
                create_schema(con)
            finally:
                con.close()
        self._pool: Pool[sqlite3.Connection] = Pool(self._connect, sqlite3.Connection.close,
                                                     pool_size)

    def _connect(self) -> sqlite3.Connection:
        try:
            con = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                  timeout=self.busy_timeout_ms / 1000)
            con.row_factory = _dict_row
            con.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
            con.execute("PRAGMA journal_mode = WAL")
            # NORMAL is durable across application crashes in WAL mode (not power loss): the
            # usual setting of apps like the one this demo stands for.
            con.execute("PRAGMA synchronous = NORMAL")
            con.execute("PRAGMA foreign_keys = ON")
        except sqlite3.Error as exc:
            raise DbUnavailable(f"cannot open SQLite database {self.path}: {exc}") from exc
        return con

    @contextmanager
    def _tx(self, begin: str | None) -> Iterator[_Tx]:
        con = self._pool.get()
        broken = False
        try:
            if begin:
                con.execute(begin)
            try:
                yield _Tx(con)
                if begin:
                    con.execute("COMMIT")
            except BaseException:
                if con.in_transaction:
                    con.execute("ROLLBACK")
                raise
        except sqlite3.IntegrityError as exc:
            raise Conflict(f"integrity rule violated: {exc}") from exc
        except sqlite3.Error as exc:
            broken = not isinstance(exc, sqlite3.OperationalError)
            raise DbUnavailable(f"SQLite failed: {exc}") from exc
        finally:
            self._pool.put(con, broken=broken)

    def read(self) -> Any:
        # A deferred transaction: the multi-statement reads see one snapshot.
        return self._tx("BEGIN")

    def write(self) -> Any:
        return self._tx("BEGIN IMMEDIATE")

    def ping(self) -> None:
        with self._tx(None) as tx:
            tx.one("SELECT 1 AS ok FROM sqlite_master LIMIT 1")

    def close(self) -> None:
        self._pool.close()
