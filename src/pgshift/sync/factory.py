"""Which :class:`~pgshift.sync.source.ChangeSource` a direction reads: one question,
asked here (is there a logical slot?) instead of by every caller."""

from __future__ import annotations

from pgshift.errors import UsageError
from pgshift.sync import logical_slot
from pgshift.sync import state as st
from pgshift.sync.common import TO_POSTGRES, TO_SQLITE, PgSession, SyncOptions
from pgshift.sync.pg_logical import LogicalSource
from pgshift.sync.pg_queue import PgQueueSource
from pgshift.sync.source import ChangeSource
from pgshift.sync.sqlite_log import SqliteLogSource


def postgres_capture(opts: SyncOptions) -> str | None:
    """``logical`` (a slot), ``triggers`` (the queue) or None: PostgreSQL's capture of
    ``opts.schema``."""
    session = PgSession(opts, lock=False)
    try:
        conn = session.conn
        if logical_slot.installed(conn, opts.schema) is not None:
            return "logical"
        queue = st.scalar(conn, "SELECT to_regclass('pgshift.pg_changes') IS NOT NULL")
        conn.commit()
        return "triggers" if queue else None
    finally:
        session.close()


def open_source(opts: SyncOptions, direction: str, *, lock: bool = False) -> ChangeSource:
    """The source of ``direction``, positioned where its applier stands: the SQLite
    change log after the to-postgres checkpoint; the logical slot when PostgreSQL
    capture is logical, else the trigger queue. ``lock`` takes the direction's applier
    lock (one applier at a time); without it the source may only look (fence,
    stranded, read) beside a running applier. The caller closes it."""
    if direction == TO_POSTGRES:
        source = SqliteLogSource(opts.sqlite_path)
        session = PgSession(opts, TO_POSTGRES, lock=lock)
        try:
            state = st.load(session.conn, opts.schema, TO_POSTGRES)
            session.conn.commit()
        except BaseException:
            source.close()
            raise
        finally:
            session.close()
        source.seek(state.last_seq if state is not None else 0)
        return source
    if direction != TO_SQLITE:
        raise UsageError(f"direction {direction!r}: use to-postgres or to-sqlite",
                         hint="pgshift sync drain SQLITE PG --direction to-sqlite")
    session = PgSession(opts, TO_SQLITE, lock=lock)
    try:
        if logical_slot.installed(session.conn, opts.schema) is not None:
            return LogicalSource(session, opts)
        return PgQueueSource(session, opts)
    except BaseException:
        session.close()
        raise
