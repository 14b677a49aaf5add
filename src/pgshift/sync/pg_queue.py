"""PostgreSQL's trigger queue as a :class:`~pgshift.sync.source.ChangeSource` (to-sqlite).

Reads the committed rows of ``pgshift.pg_changes`` (:mod:`pgshift.sync.pg_capture`)
in id order; the ack records the batch (conflicts, parked changes, counters) and
deletes it from the queue in one PostgreSQL transaction. Queue ids are taken at
commit under the capture's lock, so id order is commit order and a fence row
(:func:`pg_capture.fence`) has a higher id than every change committed before it.
Echoes: the capture trigger skips transactions with ``pgshift.applying`` set (the
to-postgres applier's).
"""

from __future__ import annotations

from typing import Any

import psycopg

from pgshift.errors import TargetError, UsageError
from pgshift.sync import pg_capture, sqlite_sink
from pgshift.sync import state as st
from pgshift.sync.common import FENCE_OP, TO_SQLITE, PgSession, SyncOptions
from pgshift.sync.source import Outcome
from pgshift.sync.sqlite_table import PgChange


class PgQueueSource:
    """The ``pgshift.pg_changes`` queue of one target schema."""

    direction = TO_SQLITE

    def __init__(self, session: PgSession, opts: SyncOptions) -> None:
        self.session = session
        self.opts = opts
        if st.scalar(session.conn, "SELECT to_regclass('pgshift.pg_changes') IS NULL"):
            session.conn.commit()
            raise UsageError("PostgreSQL capture is not installed",
                             hint=f"pgshift sync install {opts.sqlite_path} PG")
        # acknowledged changes are deleted: the position is just below the first one
        # still queued, or the last id handed out when none is
        self._last = int(st.scalar(
            session.conn,
            "SELECT coalesce((SELECT min(id) - 1 FROM pgshift.pg_changes WHERE "
            "target_schema = %s), pg_sequence_last_value(pg_get_serial_sequence("
            "'pgshift.pg_changes', 'id')::regclass), 0)", (opts.schema,)))
        session.conn.commit()

    def position(self) -> int:
        return self._last

    def seek(self, position: int) -> None:
        self._last = position

    def read(self, limit: int) -> list[PgChange]:
        only = self.opts.only_tables
        pg = self.session.conn
        rows = pg.execute(
            "SELECT id, tbl, op, key_old, key_new, row, before, ts FROM pgshift.pg_changes "
            "WHERE target_schema = %s AND (%s::text[] IS NULL OR tbl = ANY(%s) OR op = %s) "
            "ORDER BY id LIMIT %s",
            (self.opts.schema, only, only, FENCE_OP, limit)).fetchall()
        pg.commit()
        return [PgChange(*r) for r in rows]

    def ack(self, outcome: Outcome) -> None:
        assert outcome.record is not None
        sqlite_sink.record_batch(self.session.conn, self.opts.schema, outcome.record)
        self._last = max(self._last, outcome.position)

    def recover(self, record: dict[str, Any] | None) -> Outcome | None:
        """A batch SQLite committed whose ids are still queued: record and dequeue it."""
        if not record or not record.get("ids"):
            return None
        pg = self.session.conn
        left = st.scalar(pg, "SELECT count(*) FROM pgshift.pg_changes WHERE id = ANY(%s)",
                         (record["ids"],))
        pg.commit()
        if not left:
            return None
        outcome = sqlite_sink.outcome_of(record)
        self.ack(outcome)
        return outcome

    def fence(self, timeout: float = 30.0) -> int:
        pg = self.session.conn
        try:
            return pg_capture.fence(pg, self.opts.schema, lock_timeout=max(timeout / 2, 0.1))
        except psycopg.errors.LockNotAvailable as exc:
            raise TargetError(
                "a long PostgreSQL transaction that wrote captured tables kept the fence "
                "from being placed", hint="hold green's writes (the router's fence), then "
                "drain again") from exc

    def stranded(self, upto: int) -> dict[str, Any]:
        return pg_capture.stranded(self.session.conn, self.opts.schema, upto)

    def rebase(self) -> dict[str, Any] | None:
        return pg_capture.rebase(self.session.conn, self.opts.schema)

    def pending(self) -> int:
        pg = self.session.conn
        n = st.scalar(pg, "SELECT count(*) FROM pgshift.pg_changes WHERE target_schema = %s",
                      (self.opts.schema,))
        pg.commit()
        return int(n)

    def horizon(self) -> int | None:
        return None

    def close(self) -> None:
        self.session.close()
