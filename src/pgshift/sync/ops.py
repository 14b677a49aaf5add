"""Install, uninstall and status: the library calls behind ``pgshift sync``."""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql as pgsql

from pgshift.dsn import Dsn, connect
from pgshift.errors import LockedError, SourceError, TargetError, UsageError
from pgshift.source.snapshot import CHANGELOG_TABLE
from pgshift.sync import identity, mapped, pg_capture, pg_logical
from pgshift.sync import sqlite_capture as capture
from pgshift.sync import state as st
from pgshift.sync.apply import FENCE_OP, SyncOptions, SyncResult, open_sqlite, run

TO_SQLITE = "to-sqlite"


GREEN_IDS = ("keep", "negative")
PG_CAPTURE = ("triggers", "logical")


def install(path: Path, tables: list[str] | None = None,
            exclude: list[str] | None = None, *, dsn: Dsn | None = None,
            schema: str = "public", green_ids: str = "keep",
            pg_capture_mode: str = "triggers") -> capture.InstallResult:
    """Install capture on ``path`` and, with ``dsn``, on the migrated tables (idempotent).

    PostgreSQL capture (for the way back) needs the tables migrate created there.
    Installed before green takes traffic, it records green's incidental writes from
    the start; ``pgshift sync flip`` turns that early queue into current rows.
    ``green_ids="negative"`` makes PostgreSQL's identity/serial sequences count down
    from -1 until the flip (:mod:`pgshift.sync.identity`). ``pg_capture_mode``:
    ``triggers`` (any PostgreSQL, a queue table) or ``logical`` (a logical slot,
    nothing on the write path, needs ``wal_level = logical``: :mod:`pg_logical`).
    """
    if pg_capture_mode not in PG_CAPTURE:
        raise UsageError(f"--pg-capture {pg_capture_mode!r}: use triggers or logical",
                         hint="pgshift sync install SQLITE PG --pg-capture triggers")
    if green_ids not in GREEN_IDS:
        raise UsageError(f"--green-ids {green_ids!r}: use keep or negative",
                         hint="pgshift sync install SQLITE PG --green-ids negative")
    if green_ids != "keep" and dsn is None:
        raise UsageError("--green-ids needs the PostgreSQL DSN",
                         hint="pgshift sync install SQLITE PG --green-ids negative")
    # PostgreSQL first: an unreachable server must stop install before SQLite is touched
    conn = connect(dsn, application_name="pgshift-sync") if dsn is not None else None
    try:
        con = open_sqlite(path, readonly=False)
        try:
            fresh = capture.install_id(con) is None and not capture.installed(con)
            try:
                result = capture.install(con, tables or None, exclude=exclude)
            except sqlite3.OperationalError as exc:
                raise SourceError(f"installing capture on {path} failed: {exc}",
                                  hint="retry when the app is not holding a long write "
                                       "transaction") from exc
            if conn is None:
                return result
            try:
                _install_postgres(conn, path, schema, result, green_ids, pg_capture_mode)
            except BaseException:
                # never leave a half install: what this call added to SQLite goes again
                if fresh:
                    capture.uninstall(con)
                raise
            return result
        finally:
            con.close()
    finally:
        if conn is not None:
            conn.close()


def _install_postgres(conn: psycopg.Connection, path: Path, schema: str,
                      result: capture.InstallResult, green_ids: str,
                      pg_capture_mode: str) -> None:
    """PostgreSQL capture on the migrated tables, and ``--green-ids``."""
    try:
        feeds = mapped.stored_feeds(conn, schema)
        if feeds is not None:
            # loaded --into-existing: capture the target tables the captured source
            # tables feed, keyed by the target columns their `key:` maps to
            if pg_capture_mode == "logical":
                raise UsageError("--pg-capture logical is not supported yet for a "
                                 "schema loaded --into-existing",
                                 hint="pgshift sync install SQLITE PG --pg-capture "
                                      "triggers")
            keys = mapped.capture_targets(conn, schema, feeds, result.tables)
        else:
            keys = {t.name: list(t.key) for t in result.tables}
        missing = [name for name in keys if st.scalar(
            conn, "SELECT to_regclass(%s) IS NULL",
            (pgsql.Identifier(schema, name).as_string(),))]
        conn.commit()
        if missing:
            raise UsageError(f"tables missing in PostgreSQL schema {schema!r}: "
                             f"{', '.join(missing)}",
                             hint=f"pgshift migrate {path} PG, then install again")
        names = list(keys)
        if pg_capture_mode == "logical":
            result.postgres_capture = pg_logical.install(conn, schema, names)
        else:
            if pg_logical.installed(conn, schema):
                raise UsageError("logical capture is installed on this schema; one "
                                 "PostgreSQL capture at a time",
                                 hint="pgshift sync uninstall SQLITE PG, then install "
                                      "again")
            pg_capture.install(conn, schema, keys)
            result.postgres_capture = {"mode": "triggers", "tables": names}
        result.identities = identity.to_negative(conn, schema, names) \
            if green_ids == "negative" else [
                {"table": c.table, "column": c.column, "kind": c.kind,
                 "sequence": c.sequence, "restart": None,
                 "state": "counts down" if c.negative else "counts up"}
                for c in identity.find(conn, schema, names)]
        conn.commit()
    except psycopg.Error:
        conn.rollback()
        raise


def uninstall(path: Path, dsn: Dsn | None = None, schema: str = "public") -> dict[str, Any]:
    """Remove capture from SQLite and, with ``dsn``, sync's state from PostgreSQL."""
    con = open_sqlite(path, readonly=False)
    try:
        floors = identity.sqlite_floors(con)
        removed = capture.uninstall(con)
    except sqlite3.OperationalError as exc:
        raise SourceError(f"removing capture from {path} failed: {exc}",
                          hint="retry when the app is not holding a long write transaction"
                          ) from exc
    finally:
        con.close()
    out: dict[str, Any] = {"sqlite_removed": removed, "postgres_state_removed": False}
    if dsn is not None:
        conn = connect(dsn, application_name="pgshift-sync")
        try:
            # sequences counting down (--green-ids negative) count up again, past max(id)
            out["identities_restored"] = identity.to_positive(conn, schema, floors)
            out["postgres_logical_removed"] = pg_logical.uninstall(conn, schema)
            out["postgres_capture_removed"] = pg_capture.uninstall(conn, schema)
            st.drop(conn, schema)
            out["postgres_state_removed"] = True
        finally:
            conn.close()
    return out


def status(path: Path | None, dsn: Dsn | None, schema: str = "public", *,
           con: sqlite3.Connection | None = None) -> dict[str, Any]:
    """Capture, checkpoint, pending changes and lag, from whichever sides are given.

    ``con``: an open connection to ``path`` to read SQLite with (left open), for a
    process that asks again and again (the metrics endpoint).
    """
    out: dict[str, Any] = {"schema": schema}
    max_seq = None
    oldest: dict[int, int] = {}
    own = con is None
    if path is not None:
        if con is None:
            con = open_sqlite(path)
        try:
            out["captured_tables"] = capture.installed(con)
            has_log = con.execute("select 1 from sqlite_schema where name = ?",
                                  (CHANGELOG_TABLE,)).fetchone() is not None
            out["capture_installed"] = has_log
            if has_log:
                max_seq = con.execute(f'select max(seq) from "{CHANGELOG_TABLE}"').fetchone()[0]
                max_seq = out["max_seq"] = max_seq or 0  # an empty log still has pending 0
        finally:
            if own:
                con.close()
    if dsn is not None:
        conn = connect(dsn, application_name="pgshift-sync")
        try:
            state = st.load(conn, schema, st.TO_POSTGRES)
            out["to_postgres"] = state.to_dict() if state else None
            if state is not None:
                out["parked"] = st.parked_rows(conn, schema, limit=20)
            out["postgres_captured_tables"] = pg_capture.installed(conn, schema)
            logical = pg_logical.lag(conn, schema)
            if logical is not None:
                out["to_sqlite_logical"] = logical
            queued = conn.execute(
                "SELECT count(*), min(ts) FROM pgshift.pg_changes WHERE target_schema = %s "
                "AND op <> 'F' AND to_regclass('pgshift.pg_changes') IS NOT NULL", (schema,)
            ).fetchone() if out["postgres_captured_tables"] else None
            conn.commit()
            out.update(_counters(conn, schema))
            if queued is not None:
                out["to_sqlite_pending"] = queued[0]
                out["to_sqlite_lag_ms"] = (int(time.time() * 1000) - queued[1]) \
                    if queued[1] is not None else 0
        except psycopg.Error:
            conn.rollback()
            raise
        finally:
            conn.close()
        if state is not None and path is not None and max_seq is not None:
            reader = open_sqlite(path) if own else con
            assert reader is not None
            try:
                row = reader.execute(
                    f'select count(*), min(ts) from "{CHANGELOG_TABLE}" where seq > ?',
                    (state.last_seq,)).fetchone()
            finally:
                if own:
                    reader.close()
            oldest = {0: row[1]} if row[1] is not None else {}
            out["pending"] = row[0]
            out["lag_ms"] = (int(time.time() * 1000) - oldest[0]) if oldest else 0
    return out


def _counters(conn: psycopg.Connection, schema: str) -> dict[str, Any]:
    """Persistent counters by direction: conflicts, parked, applied to SQLite."""
    out: dict[str, Any] = {}
    present = conn.execute(
        "SELECT to_regclass('pgshift.sync_conflicts') IS NOT NULL, "
        "to_regclass('pgshift.sync_parked') IS NOT NULL, "
        "to_regclass('pgshift.sync_tables') IS NOT NULL").fetchone()
    if present is None:
        return out
    for flag, key, table in ((present[0], "conflicts_by_direction", "sync_conflicts"),
                             (present[1], "parked_by_direction", "sync_parked")):
        if flag:
            out[key] = dict(conn.execute(
                f"SELECT direction, count(*) FROM pgshift.{table} WHERE target_schema = %s "
                "GROUP BY direction", (schema,)).fetchall())
    if present[2]:
        out["to_sqlite_applied"] = int(st.scalar(
            conn, "SELECT coalesce(sum(applied_to_sqlite), 0) FROM pgshift.sync_tables "
                  "WHERE target_schema = %s", (schema,)))
    conn.commit()
    return out


def set_paused(path: Path, dsn: Dsn, schema: str, paused: bool) -> None:
    """``pgshift sync pause|resume``: set or clear the flag every applier of ``schema``
    honours within one poll. ``path`` is checked to be a readable SQLite file (the
    flag lives in PostgreSQL, but a wrong SQLite argument is a mistake to report)."""
    con = open_sqlite(path)
    try:
        con.execute("select count(*) from sqlite_schema").fetchone()
    finally:
        con.close()
    conn = connect(dsn, application_name="pgshift-sync")
    try:
        st.set_paused(conn, schema, paused)
    finally:
        conn.close()


def fence(path: Path) -> int:
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
                          hint="retry; the app may hold a long write transaction") from exc
    finally:
        con.close()


def sqlite_stranded(path: Path, after: int, upto: int | None = None) -> dict[str, Any]:
    """The SQLite change-log rows (fence markers aside) with ``after < seq <= upto``
    (no upper bound without ``upto``): count, seq range, oldest age, tables."""
    con = open_sqlite(path)
    try:
        rows = con.execute(
            f'SELECT tbl, count(*), min(seq), max(seq), min(ts) FROM "{CHANGELOG_TABLE}" '
            "WHERE seq > ? AND seq <= ? AND op <> ? GROUP BY tbl ORDER BY tbl",
            (after, upto if upto is not None else 2**63 - 1, FENCE_OP)).fetchall()
    finally:
        con.close()
    return pg_capture.range_summary(rows)


def drain(opts: SyncOptions, timeout: float = 30.0,
          direction: str = st.TO_POSTGRES) -> dict[str, Any]:
    """Fence, then apply until everything before the fence is applied or ``timeout`` expires.

    ``to-postgres``: the marker goes into the SQLite change log (hold blue's writes
    first); ``to-sqlite`` (the rollback drain): into PostgreSQL's queue, or a logical
    message with logical capture (hold green's writes first), and green's changes are
    applied to SQLite until the marker is consumed. When another ``sync run --follow``
    of that direction is running (it holds the direction's lock), drain waits for it
    to pass the marker instead.

    The result has ``drained`` and, when the deadline came first, ``stranded``: the
    changes written before the fence that are not applied (count, first/last seq or
    queue id, age of the oldest, count per table), for the rollout to record.
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
    out: dict[str, Any] = {
        "direction": direction, "fence_seq": marker, "drained": drained,
        "seconds": round(time.perf_counter() - started, 3), "applied": result.applied,
        "parked": result.parked, "conflicts": result.conflicts, "last_seq": result.last_seq,
        "by_running_applier": watched}
    if direction == st.TO_POSTGRES:
        out["stranded"] = sqlite_stranded(opts.sqlite_path, _checkpoint(opts), marker) \
            if not drained else pg_capture.range_summary([])
    elif slot is not None:
        out["stranded"] = _with_pg(opts, lambda conn: pg_logical.stranded(
            conn, opts.schema, slot, marker)) if not drained else pg_capture.range_summary([])
    else:
        out["stranded"] = _pg_stranded(opts, marker) if not drained \
            else pg_capture.range_summary([])
    return out


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


def flip(opts: SyncOptions, timeout: float = 30.0) -> dict[str, Any]:
    """The switch to PostgreSQL as the system of record, while the router holds writes.

    1. drain to-postgres behind a fence (every blue write is in PostgreSQL); when the
       deadline comes first nothing else happens (``flipped`` false, the stranded range);
    2. rebase PostgreSQL's queue: green's incidental writes captured before the flip
       become the current row of each key they touched (:func:`pg_capture.rebase`), so
       the to-sqlite applier makes SQLite equal to PostgreSQL for them;
    3. leave every identity/serial sequence counting up past every key in its table
       (``max(id) + 1``, never backwards; :func:`identity.to_positive`): those that
       count down (``--green-ids negative``), and those that count up but lag behind
       the ids blue's rows brought (``--green-ids keep``).

    Then start ``pgshift sync run --mode to-sqlite --follow`` and release the writes.
    Running it twice is harmless.
    """
    drained = drain(opts, timeout)
    out: dict[str, Any] = {"drain": drained, "flipped": False}
    if not drained["drained"]:
        return out
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
        out["postgres_capture"] = "logical" if logical else "triggers" if has_queue and \
            pg_capture.installed(conn, opts.schema) else None
        conn.commit()  # the steps below are transactions of their own, not savepoints
        try:
            if logical:
                # green's decoded pre-flip writes: current rows straight into SQLite
                out["rebased"] = pg_logical.rebase_at_flip(opts)
            else:
                out["rebased"] = pg_capture.rebase(conn, opts.schema, lock_timeout=timeout) \
                    if has_queue else None
        except psycopg.errors.LockNotAvailable as exc:
            raise TargetError("a long PostgreSQL transaction that wrote captured tables kept "
                              "the flip from rebasing the queue",
                              hint="hold green's writes (the router's fence), then flip "
                                   "again") from exc
        out["identities"] = identity.to_positive(conn, opts.schema, floors)
        conn.commit()
    finally:
        conn.close()
    out["flipped"] = True
    return out


def flip_back(opts: SyncOptions, timeout: float = 30.0, *,
              green_ids: str = "keep") -> dict[str, Any]:
    """The way back to SQLite as the system of record, while the router holds writes.

    1. drain to-sqlite behind a fence (every green write is in SQLite); when the
       deadline comes first nothing else happens (``flipped`` false, the stranded range);
    2. raise SQLite's AUTOINCREMENT high marks past every id green's sequences handed
       out (:func:`identity.sqlite_past_green`), so blue's own inserts never reuse one;
    3. with ``green_ids="negative"``, PostgreSQL's sequences count down again
       (:func:`identity.to_negative`), for green's incidental inserts until the next
       flip; with ``keep`` they stay, and the next flip moves them past blue's ids.

    Then start ``pgshift sync run --mode to-postgres --follow`` and release the writes
    to blue. A later :func:`flip` (the re-advance) needs nothing else. Running it
    twice is harmless.
    """
    if green_ids not in GREEN_IDS:
        raise UsageError(f"--green-ids {green_ids!r}: use keep or negative",
                         hint="pgshift sync flip-back SQLITE PG --green-ids keep")
    drained = drain(opts, timeout, direction=TO_SQLITE)
    out: dict[str, Any] = {"drain": drained, "flipped": False}
    if not drained["drained"]:
        return out
    con = open_sqlite(opts.sqlite_path, readonly=False)
    conn = connect(opts.dsn, application_name="pgshift-sync")
    try:
        try:
            out["sqlite_sequences"] = identity.sqlite_past_green(con, conn, opts.schema)
        except sqlite3.OperationalError as exc:
            raise SourceError(f"moving SQLite's AUTOINCREMENT marks in {opts.sqlite_path} "
                              f"failed: {exc}", hint="hold blue's writes, then flip back "
                                                     "again") from exc
        out["identities"] = identity.to_negative(conn, opts.schema) \
            if green_ids == "negative" else []
        conn.commit()
    finally:
        conn.close()
        con.close()
    out["flipped"] = True
    return out
