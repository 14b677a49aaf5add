"""``pgshift sync run --mode to-sqlite``: apply PostgreSQL's trigger queue to SQLite.

For after the flip (PostgreSQL is the system of record and blue takes no writes),
so that a rollback loses nothing. The source is
:class:`~pgshift.sync.pg_queue.PgQueueSource`, the sink
:class:`~pgshift.sync.sqlite_sink.SqliteSink`, driven by the one apply loop
(:mod:`pgshift.sync.loop`); conflicts are decided by
:func:`pgshift.sync.conflicts.decide`. :func:`run_dual` runs both directions for
dual-writer tables (``--mode dual``).

The names other modules imported from here before the seam (the SQLite writers,
the reverse conversion, the batch step) are re-exported.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from pgshift.dsn import connect
from pgshift.errors import UsageError
from pgshift.sync import mapped, pg_capture
from pgshift.sync import settings as cfg
from pgshift.sync import state as st
from pgshift.sync.apply import run
from pgshift.sync.common import (  # re-exported: their home before the seam
    BACKOFF_MAX,
    TO_SQLITE,
    PgSession,
    SyncOptions,
    SyncResult,
    open_sqlite,
    pg_session,
    to_sqlite_error,
)
from pgshift.sync.conflicts import decide
from pgshift.sync.pg_queue import PgQueueSource
from pgshift.sync.sqlite_sink import (
    STORED_KEY,
    SqliteSink,
    apply_batch,
    parked_record,
    record_batch,
    run_into_sqlite,
    sqlite_tables,
    stored_record,
)
from pgshift.sync.sqlite_table import (  # re-exported: their home before the seam
    Conflict,
    Context,
    PgChange,
    SqliteTable,
    reverse,
)

__all__ = [
    "BACKOFF_MAX", "DUAL_SQLITE_BATCH", "TO_SQLITE", "Conflict", "Context", "PgChange",
    "SqliteSink", "SqliteTable", "SyncOptions", "SyncResult", "record_batch", "reverse",
    "run_dual", "run_to_sqlite", "to_sqlite_error",
]

# the private names tests and older callers used
_apply_batch = apply_batch
_tables = sqlite_tables
_session = pg_session
_parked = parked_record
_decide = decide
_STORED_KEY = STORED_KEY


def run_to_sqlite(opts: SyncOptions, *, stop: threading.Event | None = None,
                  batch_lock: threading.Lock | None = None,
                  on_batch: Callable[[SyncResult], None] | None = None,
                  trim_log: bool = False) -> SyncResult:
    """Apply the PostgreSQL queue to SQLite once, or until ``stop`` with ``follow``.

    With ``follow``, a busy SQLite file or a lost PostgreSQL session is retried
    with backoff (re-applying a batch is harmless). ``opts.only_tables`` limits it
    to those tables (dual-writer tables before the flip: the other tables' queued
    changes wait for the flip). ``batch_lock`` (dual mode) serializes batches with
    the to-postgres applier of the same process: conflict resolution edits the
    other direction's pending changes. ``on_batch(result)`` is called after each
    committed batch (metrics). ``trim_log`` (after the flip: this applier is SQLite's
    only writer) deletes applied change-log rows, one short batch after each batch
    applied (:mod:`pgshift.sync.trim`).
    """
    return run_into_sqlite(opts, lambda session, _tables: PgQueueSource(session, opts),
                           stop=stop, batch_lock=batch_lock, on_batch=on_batch,
                           trim_log=trim_log)


DUAL_SQLITE_BATCH = 100  # dual mode: SQLite write transactions stay short (blue writes too)


def run_dual(opts: SyncOptions, *, stop: threading.Event | None = None
             ) -> dict[str, SyncResult]:
    """``--mode dual``: both directions in one process, for ``writes: dual-writer`` tables.

    The system of record (``opts.sor``, SQLite unless told) keeps its single-writer
    direction for every table; the other direction runs for the dual-writer tables
    only (``--sor sqlite``: PostgreSQL's queued changes of dual tables go to SQLite
    now, the others wait for the flip; ``--sor postgres``: every SQLite change goes
    to PostgreSQL, blue's writes to single-writer tables being incidental). Both
    appliers decide conflicts by the table's policy; their batches are serialized
    (one lock), because a resolved conflict edits the other direction's pending
    changes. SQLite is written in short ``BEGIN IMMEDIATE`` transactions (at most
    100 changes) with a busy timeout, *while blue writes too*: blue's deferred
    read-then-write transactions may fail with SQLITE_BUSY_SNAPSHOT, which is why
    dual is opt-in per table.
    """
    stop = stop or threading.Event()
    sor = opts.sor or cfg.SQLITE
    if mapped.is_mapped(opts.dsn, opts.schema):
        raise UsageError(f"--mode dual is not supported yet for schema {opts.schema!r}, "
                         "loaded with migrate --into-existing",
                         hint="run --mode to-postgres before the flip and --mode to-sqlite "
                              "after it")
    dual = _dual_tables(opts)
    sqlite_opts = replace(opts, sor=sor, batch_size=min(opts.batch_size, DUAL_SQLITE_BATCH),
                          only_tables=dual if sor == cfg.SQLITE else None)
    pg_opts = replace(opts, sor=sor)
    # A to-sqlite batch SQLite committed before a crash, whose PostgreSQL step did not
    # happen, is finished first: its changes are still queued although SQLite has them,
    # and the to-postgres applier would take them for pending green writes.
    con = open_sqlite(opts.sqlite_path)
    session = PgSession(sqlite_opts)
    try:
        PgQueueSource(session, sqlite_opts).recover(stored_record(con))
    finally:
        session.close()
        con.close()
    lock = threading.Lock()
    results: dict[str, SyncResult] = {}
    errors: list[BaseException] = []

    def one(name: str, fn: Any, o: SyncOptions) -> None:
        try:
            results[name] = fn(o, stop=stop, batch_lock=lock)
        except BaseException as exc:  # reported by the caller's thread
            errors.append(exc)
            stop.set()

    threads = [threading.Thread(target=one, args=(st.TO_POSTGRES, run, pg_opts),
                                name="pgshift-to-postgres", daemon=True),
               threading.Thread(target=one, args=(TO_SQLITE, run_to_sqlite, sqlite_opts),
                                name="pgshift-to-sqlite", daemon=True)]
    for th in threads:
        th.start()
    try:
        for th in threads:
            while th.is_alive():
                th.join(0.2)
    except KeyboardInterrupt:
        stop.set()
        for th in threads:
            th.join()
        raise
    if errors:
        raise errors[0]
    return results


def _dual_tables(opts: SyncOptions) -> list[str]:
    """The dual-writer tables; refuses when there are none or PostgreSQL does not
    capture them."""
    pg = connect(opts.dsn, application_name="pgshift-sync")
    try:
        if opts.settings is not None:
            dual = sorted(n for n, t in opts.settings.items() if t.dual)
        else:
            dual = sorted(n for n, row in st.stored_settings(pg, opts.schema).items()
                          if row["writes"] == "dual-writer")
        if not dual:
            raise UsageError("--mode dual needs tables declared writes: dual-writer",
                             hint="pgshift sync run SQLITE PG --mode dual --tables-config "
                                  "cutover.yaml")
        captured = set(pg_capture.installed(pg, opts.schema)) if st.scalar(
            pg, "SELECT to_regclass('pgshift.pg_changes') IS NOT NULL") else set()
        pg.commit()
        missing = [t for t in dual if t not in captured]
        if missing:
            raise UsageError(f"PostgreSQL capture is not installed on dual-writer tables: "
                             f"{', '.join(missing)}",
                             hint=f"pgshift sync install {opts.sqlite_path} PG "
                                  "--tables-config FILE")
        return dual
    finally:
        pg.close()
