"""The cutover verbs' machinery: fences, drains and the flips both ways.

- :func:`fence` / :func:`drain`: a marker behind every committed change, then apply
  until it is passed (to-postgres from the SQLite change log; to-sqlite from
  PostgreSQL's trigger queue or logical slot), with the stranded range when the
  deadline comes first;
- :func:`flip`: SQLite -> PostgreSQL as the system of record (drain, rebase green's
  early queue, sequences past every key, green's privileges back);
- :func:`flip_back`: the way back (drain green's writes into SQLite, SQLite's
  AUTOINCREMENT marks past green's ids).

Both flips run while the router holds writes (the fence); a missed deadline changes
nothing but the drained part, and running either twice is harmless.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg

from pgshift.dsn import connect
from pgshift.errors import LockedError, SourceError, TargetError, UsageError
from pgshift.sync import identity, pg_capture, pg_logical, privileges
from pgshift.sync import state as st
from pgshift.sync.apply import SyncOptions, SyncResult, open_sqlite, run
from pgshift.sync.ops import GREEN_IDS, TO_SQLITE
from pgshift.sync.results import DrainResult, FlipResult, StrandedRange
from pgshift.sync.sqlite_log import stranded_range, write_fence


def fence(path: Path) -> int:
    """Write a fence marker into the SQLite change log; its seq
    (:func:`pgshift.sync.sqlite_log.write_fence`)."""
    return write_fence(path)


def sqlite_stranded(path: Path, after: int, upto: int | None = None) -> dict[str, Any]:
    """The SQLite change-log rows (fence markers aside) with ``after < seq <= upto``
    (no upper bound without ``upto``): count, seq range, oldest age, tables."""
    con = open_sqlite(path)
    try:
        return stranded_range(con, after, upto)
    finally:
        con.close()


def drain(opts: SyncOptions, timeout: float = 30.0,
          direction: str = st.TO_POSTGRES) -> DrainResult:
    """Fence, then apply until everything before the fence is applied or ``timeout`` expires.

    ``to-postgres``: the marker goes into the SQLite change log (hold blue's writes
    first); ``to-sqlite`` (the rollback drain): into PostgreSQL's queue, or a logical
    message with logical capture (hold green's writes first), and green's changes are
    applied to SQLite until the marker is consumed. When another ``sync run --follow``
    of that direction is running (it holds the direction's lock), drain waits for it
    to pass the marker instead.

    The result has ``drained`` and, when the deadline came first, ``stranded``: the
    changes written before the fence that are not applied (count, first/last seq or
    queue id, age of the oldest, count per table), for the rollout to record. A
    missed deadline is a result, not an error; the applied part stays applied.
    """
    if direction not in (st.TO_POSTGRES, TO_SQLITE):
        raise UsageError(f"--direction {direction!r}: use to-postgres or to-sqlite",
                         hint="pgshift sync drain SQLITE PG --direction to-sqlite")
    if _with_pg(opts, lambda conn: st.is_paused(conn, opts.schema)):
        # A paused applier applies nothing: the drain could only time out.
        raise UsageError(f"sync into schema {opts.schema!r} is paused: a drain would apply "
                         "nothing and time out",
                         hint=f"pgshift sync resume {opts.sqlite_path} PG, then drain again")
    started = time.perf_counter()
    deadline = time.monotonic() + timeout
    slot = _logical_slot(opts) if direction == TO_SQLITE else None
    if direction == st.TO_POSTGRES:
        marker = fence(opts.sqlite_path)
    elif slot is not None:
        marker = _with_pg(opts, lambda conn: pg_logical.fence(conn, opts.schema))
    else:
        marker = _pg_fence(opts, timeout)
    stop = threading.Event()
    timer = threading.Timer(max(0.0, deadline - time.monotonic()), stop.set)
    timer.start()
    watched = False
    try:
        drain_opts = replace(opts, until_seq=marker, follow=direction == TO_SQLITE)
        if direction == st.TO_POSTGRES:
            result = run(drain_opts, stop=stop)
        elif slot is not None:
            result = pg_logical.run_logical(drain_opts, stop=stop)
        else:
            from pgshift.sync.apply_sqlite import run_to_sqlite

            result = run_to_sqlite(drain_opts, stop=stop)
    except LockedError:
        # another applier of this direction is running: watch it pass the marker
        watched = True
        result = SyncResult(direction, 0, _watch(opts, direction, marker, stop, slot))
    finally:
        timer.cancel()
    drained = result.last_seq >= marker
    if drained:
        stranded = StrandedRange()
    elif direction == st.TO_POSTGRES:
        stranded = StrandedRange.from_dict(
            sqlite_stranded(opts.sqlite_path, _checkpoint(opts), marker))
    elif slot is not None:
        stranded = StrandedRange.from_dict(_with_pg(opts, lambda conn: pg_logical.stranded(
            conn, opts.schema, slot, marker)))
    else:
        stranded = StrandedRange.from_dict(_pg_stranded(opts, marker))
    return DrainResult(direction, marker, drained, round(time.perf_counter() - started, 3),
                       result.applied, result.parked, result.conflicts, result.last_seq,
                       stranded, by_running_applier=watched)


def _with_pg(opts: SyncOptions, fn: Any) -> Any:
    conn = connect(opts.dsn, application_name="pgshift-sync")
    try:
        return fn(conn)
    finally:
        conn.close()


def _logical_slot(opts: SyncOptions) -> str | None:
    """The logical slot of ``opts.schema`` when PostgreSQL capture is logical."""
    return _with_pg(opts, lambda conn: pg_logical.installed(conn, opts.schema))


def run_back(opts: SyncOptions, *, stop: threading.Event | None = None,
             on_batch: Any = None, trim_log: bool = False) -> SyncResult:
    """``sync run --mode to-sqlite``: over the logical slot or the trigger queue, whichever
    PostgreSQL capture is installed."""
    from pgshift.sync.apply_sqlite import run_to_sqlite

    if _logical_slot(opts) is not None:
        return pg_logical.run_logical(opts, stop=stop, on_batch=on_batch, trim_log=trim_log)
    return run_to_sqlite(opts, stop=stop, on_batch=on_batch, trim_log=trim_log)


def _pg_fence(opts: SyncOptions, timeout: float) -> int:
    conn = connect(opts.dsn, application_name="pgshift-sync")
    try:
        if st.scalar(conn, "SELECT to_regclass('pgshift.pg_changes') IS NULL"):
            raise UsageError("PostgreSQL capture is not installed: nothing to drain "
                             "to SQLite",
                             hint=f"pgshift sync install {opts.sqlite_path} PG")
        conn.commit()
        try:
            return pg_capture.fence(conn, opts.schema, lock_timeout=max(timeout / 2, 0.1))
        except psycopg.errors.LockNotAvailable as exc:
            raise TargetError(
                "a long PostgreSQL transaction that wrote captured tables kept the fence "
                "from being placed", hint="hold green's writes (the router's fence), then "
                "drain again") from exc
    finally:
        conn.close()


def _checkpoint(opts: SyncOptions) -> int:
    conn = connect(opts.dsn, application_name="pgshift-sync")
    try:
        state = st.load(conn, opts.schema, st.TO_POSTGRES)
        conn.commit()
        return state.last_seq if state is not None else 0
    finally:
        conn.close()


def _pg_stranded(opts: SyncOptions, marker: int) -> dict[str, Any]:
    conn = connect(opts.dsn, application_name="pgshift-sync")
    try:
        return pg_capture.stranded(conn, opts.schema, marker)
    finally:
        conn.close()


def _watch(opts: SyncOptions, direction: str, marker: int, stop: threading.Event,
           slot: str | None = None) -> int:
    """Wait for the running applier to pass ``marker``; the position it reached."""
    conn = connect(opts.dsn, application_name="pgshift-sync")
    try:
        while True:
            if slot is not None:
                info = pg_logical.lag(conn, opts.schema)
                flushed = (info or {}).get("confirmed_flush_lsn")
                reached = pg_logical.lsn_int(flushed) if flushed else 0
                if reached >= marker:
                    return reached
            elif direction == st.TO_POSTGRES:
                state = st.load(conn, opts.schema, st.TO_POSTGRES)
                conn.commit()
                reached = state.last_seq if state is not None else 0
                if reached >= marker:
                    return reached
            elif not pg_capture.queued(conn, opts.schema, marker):
                return marker
            else:
                reached = 0
            if stop.wait(opts.poll):
                return reached
    finally:
        conn.close()


def flip(opts: SyncOptions, timeout: float = 30.0,
         check: Callable[[DrainResult], None] | None = None) -> FlipResult:
    """The switch to PostgreSQL as the system of record, while the router holds writes.

    1. drain to-postgres behind a fence (every blue write is in PostgreSQL); when the
       deadline comes first nothing else happens (``flipped`` false, the stranded range);
    2. rebase PostgreSQL's queue: green's incidental writes captured before the flip
       become the current row of each key they touched (:func:`pg_capture.rebase`), so
       the to-sqlite applier makes SQLite equal to PostgreSQL for them;
    3. leave every identity/serial sequence counting up past every key in its table
       (``max(id) + 1``, never backwards; :func:`identity.to_positive`): those that
       count down (``--green-ids negative``), and those that count up but lag behind
       the ids blue's rows brought (``--green-ids keep``);
    4. grant green's role back the write privileges ``green_writes: forbid`` took
       (:func:`privileges.restore`): they hold while SQLite is the system of record only.

    Then start ``pgshift sync run --mode to-sqlite --follow`` and release the writes.
    Running it twice is harmless. ``check`` is called between 1 and 2 with the drain
    (both sides equal up to its marker, nothing switched yet): an error it raises stops
    the flip there (the rollout's tail check).
    """
    out = FlipResult(st.TO_POSTGRES, drain(opts, timeout))
    if not out.drain.drained:
        return out
    if check is not None:
        check(out.drain)
    con = open_sqlite(opts.sqlite_path)
    try:
        floors = identity.sqlite_floors(con)
    finally:
        con.close()
    conn = connect(opts.dsn, application_name="pgshift-sync")
    try:
        has_queue = bool(st.scalar(conn, "SELECT to_regclass('pgshift.pg_changes') IS NOT NULL"))
        conn.commit()
        logical = pg_logical.installed(conn, opts.schema) is not None
        out.postgres_capture = "logical" if logical else "triggers" if has_queue and \
            pg_capture.installed(conn, opts.schema) else None
        conn.commit()  # the steps below are transactions of their own, not savepoints
        try:
            if logical:
                # green's decoded pre-flip writes: current rows straight into SQLite
                out.rebased = pg_logical.rebase_at_flip(opts)
            else:
                out.rebased = pg_capture.rebase(conn, opts.schema, lock_timeout=timeout) \
                    if has_queue else None
        except psycopg.errors.LockNotAvailable as exc:
            raise TargetError("a long PostgreSQL transaction that wrote captured tables kept "
                              "the flip from rebasing the queue",
                              hint="hold green's writes (the router's fence), then flip "
                                   "again") from exc
        out.identities = identity.to_positive(conn, opts.schema, floors)
        conn.commit()
        out.privileges_granted_back = privileges.restore(conn, opts.schema)
    finally:
        conn.close()
    out.flipped = True
    return out


def flip_back(opts: SyncOptions, timeout: float = 30.0, *, green_ids: str = "keep",
              app_role: str | None = None) -> FlipResult:
    """The way back to SQLite as the system of record, while the router holds writes.

    1. drain to-sqlite behind a fence (every green write is in SQLite); when the
       deadline comes first nothing else happens (``flipped`` false, the stranded range);
    2. raise SQLite's AUTOINCREMENT high marks past every id green's sequences handed
       out (:func:`identity.sqlite_past_green`), so blue's own inserts never reuse one
       (``INTEGER PRIMARY KEY`` tables allocate past the rows the drain brought);
    3. with ``green_ids="negative"``, PostgreSQL's sequences count down again
       (:func:`identity.to_negative`) for green's incidental inserts until the next
       flip; with ``keep`` they stay, and the next :func:`flip` moves them past
       blue's ids: a re-advance needs nothing else;
    4. with ``app_role``, revoke green's writes again on the ``green_writes: forbid``
       tables of the stored settings (SQLite is the system of record again).

    Then start ``pgshift sync run --mode to-postgres --follow`` and release the writes
    to blue. Running it twice is harmless.
    """
    if green_ids not in GREEN_IDS:
        raise UsageError(f"--green-ids {green_ids!r}: use keep or negative",
                         hint="pgshift sync flip-back SQLITE PG --green-ids keep")
    out = FlipResult(TO_SQLITE, drain(opts, timeout, direction=TO_SQLITE))
    if not out.drain.drained:
        return out
    con = open_sqlite(opts.sqlite_path, readonly=False)
    conn = connect(opts.dsn, application_name="pgshift-sync")
    try:
        try:
            out.sqlite_sequences = identity.sqlite_past_green(con, conn, opts.schema)
        except sqlite3.OperationalError as exc:
            raise SourceError(f"moving SQLite's AUTOINCREMENT marks in {opts.sqlite_path} "
                              f"failed: {exc}", hint="hold blue's writes, then flip back "
                                                     "again") from exc
        if green_ids == "negative":
            out.identities = identity.to_negative(conn, opts.schema)
        if app_role:
            forbid = [n for n, row in st.stored_settings(conn, opts.schema).items()
                      if row["green_writes"] == "forbid"]
            if forbid:
                out.privileges_revoked = privileges.revoke(conn, opts.schema, app_role,
                                                           forbid)
        conn.commit()
    finally:
        conn.close()
        con.close()
    out.flipped = True
    return out
