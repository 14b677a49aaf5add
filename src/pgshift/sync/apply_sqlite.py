"""``pgshift sync run --mode to-sqlite``: apply PostgreSQL's changes to SQLite.

For after the flip (PostgreSQL is the system of record and blue takes no
writes), so that a rollback loses nothing. Reads the committed rows of the
``pgshift.pg_changes`` queue in id order, applies a batch in one short SQLite
``BEGIN IMMEDIATE`` transaction with the echo-suppression flag set (the
capture triggers skip it), then deletes the batch from the queue.

At least once, and harmless when repeated: a crash between the SQLite commit
and the queue delete re-applies the same full row images in the same order
before anything newer, which leaves the same rows.

Per change: insert/update = ``INSERT OR REPLACE`` (which also evicts rows that
conflict on another unique key, as PostgreSQL's state implies); key update =
``UPDATE OR REPLACE ... WHERE pk = old``, or insert when there is no old row;
delete by key. The applier's connection runs with ``foreign_keys`` off:
PostgreSQL already enforced them, and its cascades are captured as changes.

Values go back through the reverse of migrate's conversion (epoch columns to
integers, booleans to 0/1, bytea to blobs, jsonb to JSON text); a value with
no reverse conversion yet (text timestamps with a zone) is parked in
``pgshift.sync_parked`` (direction ``to-sqlite``), never dropped.

Conflicts (SQLite's row is not PostgreSQL's before-image; blue changed the key
and the to-postgres applier has not carried it; a row ``INSERT OR REPLACE``
would evict that blue wrote) are decided per table policy, see
:func:`_apply_batch`. :func:`run_dual` runs both directions for dual-writer
tables (``--mode dual``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from pgshift.copy.checkpoint import load_profile
from pgshift.copy.convert import Reject
from pgshift.dsn import connect
from pgshift.errors import ConnectError, LockedError, SourceError, TargetError, UsageError
from pgshift.existing.verify_plan import PROFILE_MARK, is_into_existing
from pgshift.schema.model import Table
from pgshift.schema.plan import build_plan
from pgshift.source.catalog import read_catalog
from pgshift.source.profile import profile_table, profiles_from_json
from pgshift.source.snapshot import CHANGELOG_TABLE
from pgshift.sync import settings as cfg
from pgshift.sync import sqlite_capture as capture
from pgshift.sync import state as st
from pgshift.sync import trim
from pgshift.sync.apply import (
    BACKOFF_MAX,
    FENCE_OP,
    LOST_ORIGIN,
    SchemaChangedError,
    SyncOptions,
    SyncResult,
    effective_settings,
    open_sqlite,
    session_sql,
)
from pgshift.sync.tables import _unique_sets

TO_SQLITE = "to-sqlite"
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_SCALE = {"epoch_s": 1, "epoch_ms": 1000, "epoch_us": 1000000}


def reverse(conversion: str, value: Any) -> Any:
    """The SQLite value for one ``to_jsonb`` value of a column migrate converted."""
    if value is None:
        return None
    if conversion in ("int", "numeric") and isinstance(value, str):
        raise Reject(f"{value!r} cannot go back into an integer/numeric column")
    if conversion == "int":
        return int(value)
    if conversion == "numeric":
        return value if isinstance(value, int) else float(value)
    if conversion == "float":
        return float(value)
    if conversion == "bool":
        return 1 if value else 0
    if conversion == "bytea":
        return bytes.fromhex(str(value)[2:])
    if conversion == "json":
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    if conversion in _SCALE:
        moment = dt.datetime.fromisoformat(str(value))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=dt.UTC)
        micros = (moment - _EPOCH) // dt.timedelta(microseconds=1)
        return micros * _SCALE[conversion] // 1000000
    if conversion == "ts_text":
        return str(value).replace("T", " ")
    if conversion in ("text", "uuid", "date_text", "time_text"):
        return str(value)
    raise Reject(f"no reverse conversion for {conversion} columns yet")


@dataclass
class PgChange:
    id: int
    table: str
    op: str
    key_old: list[Any] | None
    key_new: list[Any] | None
    row: dict[str, Any] | None
    before: dict[str, Any] | None = None
    ts: int | None = None  # capture time, ms since the epoch


@dataclass
class Conflict:
    """SQLite's row differed from PostgreSQL's before-image (the policy decides)."""

    change: PgChange
    loser: dict[str, Any] | None  # SQLite's row, None when it was gone


@dataclass
class Context:
    """What the to-sqlite applier decides conflicts with, per batch."""

    settings: dict[str, cfg.TableSettings]
    sor: str
    checkpoint: int | None  # the to-postgres applier's last seq (None: it never ran)
    schema: str = "public"


def _same(conversion: str, have: Any, want: Any) -> bool:
    """Equal as PostgreSQL would see them (JSON by value, numbers by value)."""
    if have is None or want is None:
        return have is None and want is None
    if conversion == "json" and isinstance(have, str) and isinstance(want, str):
        try:
            return bool(json.loads(have) == json.loads(want))
        except ValueError:
            return have == want
    if isinstance(have, int | float) and isinstance(want, int | float):
        return float(have) == float(want) if conversion in ("float", "numeric") \
            else have == want and type(have) is type(want)
    return bool(have == want)


def _jsonable(v: Any) -> Any:
    return "\\x" + v.hex() if isinstance(v, bytes) else v


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class SqliteTable:
    """Statements writing one table's PostgreSQL images into SQLite."""

    def __init__(self, table: Table) -> None:
        self.table = table
        self.columns = [c for c in table.columns
                        if not table.source.column(c.name).generated]
        by_name = {c.name: c for c in table.columns}
        self.key = [by_name[k] for k in table.primary_key]
        self.all_names = set(by_name)
        names = ", ".join(_q(c.name) for c in self.columns)
        marks = ", ".join("?" for _ in self.columns)
        where = " AND ".join(f"{_q(c.name)} = ?" for c in self.key)
        sets = ", ".join(f"{_q(c.name)} = ?" for c in self.columns)
        self.replace_sql = f"INSERT OR REPLACE INTO {_q(table.name)} ({names}) VALUES ({marks})"
        self.move_sql = f"UPDATE OR REPLACE {_q(table.name)} SET {sets} WHERE {where}"
        self.delete_sql = f"DELETE FROM {_q(table.name)} WHERE {where}"
        self.select_sql = f"SELECT {names} FROM {_q(table.name)} WHERE {where}"
        position = {c.name: i for i, c in enumerate(self.columns)}
        key_names = [c.name for c in self.key]
        not_key = " AND ".join(f"{_q(c)} IS ?" for c in key_names)
        # rows INSERT OR REPLACE would evict on another unique key (NULLs never collide)
        self.uniques: list[tuple[str, list[int]]] = []
        for cols in _unique_sets(table):
            if sorted(cols) == sorted(key_names) or not all(c in position for c in cols):
                continue
            match = " AND ".join(f"{_q(c)} = ?" for c in cols)
            self.uniques.append((f"SELECT {names} FROM {_q(table.name)} WHERE {match} AND "
                                 f"NOT ({not_key})", [position[c] for c in cols]))
        self.key_positions = [position[c] for c in key_names]

    def close(self) -> None:
        """Release what the writer holds (mapped tables: their PostgreSQL session)."""

    def evictions(self, con: sqlite3.Connection, ch: PgChange) -> list[tuple[Any, ...]]:
        """SQLite rows applying ``ch`` would remove besides its own row: rows on another
        unique key, and the different row already at its key (an insert, a key update)."""
        if ch.op == "D" or ch.row is None:
            return []
        values = self.values(ch)
        new_key = [values[i] for i in self.key_positions]
        out = []
        if ch.op == "I" or ch.key_old != ch.key_new:
            at = con.execute(self.select_sql, new_key).fetchone()
            if at is not None and not self._matches(at, ch.row):
                out.append(at)
        for sql, idx in self.uniques:
            out += con.execute(sql, [values[i] for i in idx] + new_key).fetchall()
        return out

    def values(self, ch: PgChange) -> list[Any]:
        assert ch.row is not None
        return [self._value(c.name, c.decision.conversion, ch.row.get(c.name))
                for c in self.columns]

    def row_json(self, row: tuple[Any, ...] | None) -> dict[str, Any] | None:
        return None if row is None else {k.name: _jsonable(v) for k, v in
                                         zip(self.columns, row, strict=True)}

    def row_key(self, row: tuple[Any, ...]) -> list[Any]:
        return [row[i] for i in self.key_positions]

    def conflict(self, con: sqlite3.Connection, ch: PgChange) -> Conflict | None:
        """Compare SQLite's current row with PostgreSQL's before-image (updates, deletes)."""
        if ch.before is None or ch.op == "I":
            return None
        cur = con.execute(self.select_sql, self._key(ch.key_old)).fetchone()
        if cur is None:
            return None if ch.op == "D" else Conflict(ch, None)
        if self._matches(cur, ch.before):
            return None
        if ch.row is not None and self._matches(cur, ch.row):
            return None  # the same change applied again (a replayed batch), not a conflict
        return Conflict(ch, {k.name: _jsonable(v) for k, v in zip(self.columns, cur,
                                                                   strict=True)})

    def _matches(self, cur: tuple[Any, ...], image: dict[str, Any]) -> bool:
        return all(_same(c.decision.conversion, have,
                         self._value(c.name, c.decision.conversion, image.get(c.name)))
                   for c, have in zip(self.columns, cur, strict=True))

    def check_shape(self, ch: PgChange) -> None:
        """Stop on DDL: an image whose columns are not the migrated table's."""
        for image in (ch.row, ch.before):
            if image is not None and set(image) != self.all_names:
                extra = sorted(set(image) - self.all_names)
                gone = sorted(self.all_names - set(image))
                raise SchemaChangedError(
                    f"PostgreSQL change {ch.id} on {ch.table} has other columns than the "
                    f"migrated table (added: {', '.join(extra) or '-'}; missing: "
                    f"{', '.join(gone) or '-'}): DDL during the sync window",
                    hint="apply the same DDL to SQLite, then rerun; DDL is refused during "
                         "the sync window", table=ch.table)

    def apply(self, con: sqlite3.Connection, ch: PgChange) -> None:
        if ch.op == "D":
            con.execute(self.delete_sql, self._key(ch.key_old))
            return
        values = self.values(ch)
        moved = ch.op == "U" and ch.key_old != ch.key_new and con.execute(
            self.move_sql, values + self._key(ch.key_old)).rowcount
        if not moved:
            con.execute(self.replace_sql, values)

    def key_values(self, key: list[Any] | None) -> list[Any]:
        """A queue key (JSON values) as SQLite values."""
        return self._key(key)

    def _key(self, key: list[Any] | None) -> list[Any]:
        assert key is not None
        return [self._value(c.name, c.decision.conversion, v)
                for c, v in zip(self.key, key, strict=True)]

    @staticmethod
    def _value(column: str, conversion: str, value: Any) -> Any:
        try:
            return reverse(conversion, value)
        except (Reject, ValueError, TypeError) as exc:
            raise Reject(f"column {column}: {exc}") from exc


def _session(opts: SyncOptions) -> psycopg.Connection:
    """The applier's PostgreSQL session: settings, state tables, the direction's lock."""
    pg = connect(opts.dsn, application_name="pgshift-sync")
    try:
        for s in session_sql(opts.schema):
            pg.execute(s)
        pg.commit()
        st.ensure_schema(pg)
        st.acquire_lock(pg, opts.schema, TO_SQLITE)
    except BaseException:
        pg.close()
        raise
    return pg


def to_sqlite_error(opts: SyncOptions, exc: Exception) -> SourceError | TargetError:
    """The one-line error for a failure of either to-sqlite applier (trigger queue or
    logical decoding) that a retry may cure."""
    if isinstance(exc, sqlite3.OperationalError):
        return SourceError(f"writing {opts.sqlite_path} failed: {exc}",
                           hint="is blue still writing? to-sqlite runs only while blue is "
                                "quiet")
    return TargetError(f"PostgreSQL failed during to-sqlite: {exc}",
                       hint="rerun: applying again is harmless")


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
    stop = stop or threading.Event()
    started = time.perf_counter()
    con = open_sqlite(opts.sqlite_path, readonly=False)
    if opts.until_seq is not None:
        # a drain has a deadline: wait for a busy file in short steps (retried with
        # backoff, which watches ``stop``) rather than in one 10 s busy wait
        con.execute("pragma busy_timeout = 500")
    pg: psycopg.Connection | None = None
    closing: list[SqliteTable] = []
    try:
        pg = _session(opts)
        if not capture.installed(con):
            raise UsageError(f"capture is not installed in {opts.sqlite_path}",
                             hint=f"pgshift sync install {opts.sqlite_path} PG")
        if st.scalar(pg, "SELECT to_regclass('pgshift.pg_changes') IS NULL"):
            raise UsageError("PostgreSQL capture is not installed",
                             hint=f"pgshift sync install {opts.sqlite_path} PG")
        pg.commit()
        tables = _tables(con, pg, opts)
        closing.extend(tables.values())
        # settings are the SQLite table's (a mapped target table's source table)
        sources = {name: t.table.name for name, t in tables.items()}
        by_source = effective_settings(pg, opts.schema, sorted(set(sources.values())),
                                       opts.settings)
        settings = {name: by_source[src] for name, src in sources.items()}
        result = SyncResult(TO_SQLITE, 0, 0)
        trim_plan = trim.plan(con, pg, opts.schema) \
            if trim_log and opts.only_tables is None else None
        backoff = opts.poll
        while not stop.is_set():
            if opts.until_seq is not None and result.last_seq >= opts.until_seq:
                break  # drain: the fence marker left the queue, and everything before it
            try:
                if pg is None:
                    pg = _session(opts)
                if st.is_paused(pg, opts.schema):
                    # `pgshift sync pause`: the queue keeps growing, nothing is applied
                    result.paused = True
                    if not opts.follow:
                        break
                    stop.wait(opts.poll)
                    continue
                result.paused = False
                batch_started = time.perf_counter()
                with batch_lock or contextlib.nullcontext():
                    done = _one_batch(con, pg, tables, opts, result, settings)
                if not done:
                    result.last_batch_seconds = time.perf_counter() - batch_started
                    if trim_plan is not None:
                        result.trimmed += trim.trim_batch(con, trim_plan)
                    if on_batch is not None:
                        on_batch(result)
            except (sqlite3.OperationalError, psycopg.OperationalError, ConnectError,
                    LockedError):
                if not opts.follow:
                    raise
                if pg is not None and pg.closed:
                    pg = None
                elif pg is not None and pg.broken:
                    pg.close()
                    pg = None
                stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            backoff = opts.poll
            if done:
                if not opts.follow:
                    break
                stop.wait(opts.poll)
        if pg is None:
            pg = _session(opts)
        result.pending = int(st.scalar(
            pg, "SELECT count(*) FROM pgshift.pg_changes WHERE target_schema = %s",
            (opts.schema,)))
        pg.commit()
        result.seconds = time.perf_counter() - started
        return result
    except (sqlite3.OperationalError, psycopg.OperationalError) as exc:
        raise to_sqlite_error(opts, exc) from exc
    finally:
        con.close()
        if pg is not None:
            pg.close()
        for t in closing:
            t.close()


def _one_batch(con: sqlite3.Connection, pg: psycopg.Connection,
               tables: dict[str, SqliteTable], opts: SyncOptions, result: SyncResult,
               settings: dict[str, cfg.TableSettings] | None = None) -> bool:
    """Apply one batch of the queue; True when the queue was empty.

    The SQLite transaction also stores what the PostgreSQL step must record (the
    batch's ids, conflicts, parked changes, per-table counts) in ``_pgshift_state``;
    a crash between the SQLite commit and the PostgreSQL commit is finished from it
    (:func:`_finish_stored`) instead of re-deciding conflicts against rows the batch
    already changed.
    """
    if _finish_stored(con, pg, opts, result):
        return False
    only = opts.only_tables
    rows = pg.execute(
        "SELECT id, tbl, op, key_old, key_new, row, before, ts FROM pgshift.pg_changes "
        "WHERE target_schema = %s AND (%s::text[] IS NULL OR tbl = ANY(%s) OR op = %s) "
        "ORDER BY id LIMIT %s",
        (opts.schema, only, only, FENCE_OP, opts.batch_size)).fetchall()
    checkpoint = st.scalar(pg, "SELECT last_seq FROM pgshift.sync_state WHERE "
                           "target_schema = %s AND direction = %s AND "
                           "to_regclass('pgshift.sync_state') IS NOT NULL",
                           (opts.schema, st.TO_POSTGRES))
    pg.commit()
    if not rows:
        return True
    batch = [PgChange(*r) for r in rows]
    ctx = Context(settings or {}, opts.sor or cfg.POSTGRES, checkpoint, opts.schema)
    stored = _apply_batch(con, tables, batch, ctx)
    _finish(pg, opts, stored, result)
    return False


def _finish_stored(con: sqlite3.Connection, pg: psycopg.Connection, opts: SyncOptions,
                   result: SyncResult) -> bool:
    """Finish a batch SQLite committed but PostgreSQL did not (a crash in between)."""
    row = con.execute(f"SELECT v FROM {_q(capture.STATE_TABLE)} WHERE k = ?",
                      (_STORED_KEY,)).fetchone()
    if row is None or not row[0]:
        return False
    stored = json.loads(row[0])
    left = st.scalar(pg, "SELECT count(*) FROM pgshift.pg_changes WHERE id = ANY(%s)",
                     (stored["ids"],))
    pg.commit()
    if not left:
        return False
    _finish(pg, opts, stored, result)
    return True


def _finish(pg: psycopg.Connection, opts: SyncOptions, stored: dict[str, Any],
            result: SyncResult) -> None:
    """The PostgreSQL step of a batch: conflicts, parked changes, counters, queue delete."""
    with pg.transaction():
        for rec in stored["conflicts"]:
            pg.execute(
                "INSERT INTO pgshift.sync_conflicts (target_schema, direction, seq, "
                "table_name, op, key, policy, winner, winner_image, loser_image, reason, "
                "rule, sqlite_ts, postgres_ts, loser_origin, loser_change) VALUES (%s, %s, "
                "%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (opts.schema, TO_SQLITE, rec["seq"], rec["table"], rec["op"], rec["key"],
                 rec["policy"], rec["winner"], rec["winner_image"],
                 Jsonb(rec["loser_image"]) if rec["loser_image"] is not None else None,
                 rec["reason"], rec["rule"], rec["sqlite_ts"], rec["postgres_ts"],
                 rec["loser_origin"], rec["loser_change"]))
        for p in stored["parked"]:
            pg.execute(
                "INSERT INTO pgshift.sync_parked (target_schema, direction, seq, "
                "table_name, op, key_old, key_new, row_image, reason) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (opts.schema, TO_SQLITE, p["id"], p["table"], p["op"], p["key_old"],
                 p["key_new"], p["row"], p["reason"]))
        for table, n in sorted(stored["applied"].items()):  # sorted: no lock-order deadlock
            pg.execute("UPDATE pgshift.sync_tables SET applied_to_sqlite = applied_to_sqlite "
                       "+ %s WHERE target_schema = %s AND table_name = %s",
                       (n, opts.schema, table))
        pg.execute("DELETE FROM pgshift.pg_changes WHERE id = ANY(%s)", (stored["ids"],))
    result.batches += 1
    result.applied += sum(stored["applied"].values())
    result.parked += len(stored["parked"])
    result.conflicts += len(stored["conflicts"])
    result.last_seq = stored["ids"][-1]


_STORED_KEY = "to_sqlite_batch"


def _tables(con: sqlite3.Connection, pg: psycopg.Connection,
            opts: SyncOptions) -> dict[str, SqliteTable]:
    """The SQLite writers, keyed by the PostgreSQL table their changes are queued under
    (a schema loaded ``--into-existing``: the mapped target tables, :mod:`.mapped`)."""
    names = set(capture.installed(con))
    catalog = read_catalog(con)
    chosen = [t for t in catalog.tables if t.name in names]
    stored = load_profile(pg, opts.schema)
    pg.commit()
    if is_into_existing(stored):
        from pgshift.sync import mapped

        assert stored is not None
        return mapped.sqlite_tables(con, pg, opts.dsn, opts.schema,
                                    list(stored[PROFILE_MARK]["tables"]),
                                    [t.name for t in chosen])
    profiles = profiles_from_json(stored) if stored else {}
    for t in chosen:
        if t.name not in profiles:
            profiles[t.name] = profile_table(con, t)
    plan = build_plan(catalog, profiles, schema=opts.schema, tables=chosen)
    return {t.name: SqliteTable(t) for t in plan.tables}


def _apply_batch(con: sqlite3.Connection, tables: dict[str, SqliteTable],
                 batch: list[PgChange], ctx: Context | None = None) -> dict[str, Any]:
    """One short SQLite write transaction, echo flag set; what the PostgreSQL step records.

    Per change, in a savepoint: conflict candidates (SQLite's row is not PostgreSQL's
    before-image; rows the change would evict that blue wrote and the to-postgres
    applier has not carried yet) are decided by the table's policy. PostgreSQL wins:
    the change is applied, SQLite's row is the recorded loser, and blue's pending
    changes of that key are marked lost in the change log (the to-postgres applier
    passes over them). SQLite wins: the change is not applied, it is the recorded
    loser, and blue's first pending change of the key loses its before-image (so the
    to-postgres applier carries it without recording the conflict again).
    """
    ctx = ctx or Context({}, "postgres", None)
    parked: list[dict[str, Any]] = []
    conflicts: list[dict[str, Any]] = []
    applied: dict[str, int] = {}
    con.execute("pragma foreign_keys = off")
    con.execute("BEGIN IMMEDIATE")
    try:
        con.execute(f"UPDATE {_q(capture.STATE_TABLE)} SET v = '1' WHERE k = 'applying'")
        for ch in batch:
            if ch.op == FENCE_OP:
                continue  # a fence marker (pgshift sync drain): nothing to apply, only to pass
            t = tables.get(ch.table)
            if t is None:
                parked.append(_parked(ch, f"table {ch.table} is not captured in SQLite"))
                continue
            try:
                t.check_shape(ch)
                con.execute("SAVEPOINT change")
                records, apply = _decide(con, t, ch, ctx)
                if apply:
                    t.apply(con, ch)
                    applied[t.table.name] = applied.get(t.table.name, 0) + 1
                con.execute("RELEASE change")
                conflicts += records
            except (Reject, sqlite3.IntegrityError) as exc:
                con.execute("ROLLBACK TO change")
                con.execute("RELEASE change")
                parked.append(_parked(ch, str(exc)))
        con.execute(f"UPDATE {_q(capture.STATE_TABLE)} SET v = '0' WHERE k = 'applying'")
        stored = {"ids": [ch.id for ch in batch], "conflicts": conflicts, "parked": parked,
                  "applied": applied}
        con.execute(f"INSERT OR REPLACE INTO {_q(capture.STATE_TABLE)} VALUES (?, ?)",
                    (_STORED_KEY, json.dumps(stored)))
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return stored


def _parked(ch: PgChange, reason: str) -> dict[str, Any]:
    return {"id": ch.id, "table": ch.table, "op": ch.op, "key_old": json.dumps(ch.key_old),
            "key_new": json.dumps(ch.key_new), "row": json.dumps(ch.row), "reason": reason}


def _decide(con: sqlite3.Connection, t: SqliteTable, ch: PgChange, ctx: Context
            ) -> tuple[list[dict[str, Any]], bool]:
    """(conflict records, apply the change?) for one PostgreSQL change."""
    candidates: list[tuple[str, tuple[Any, ...] | None, list[Any]]] = []
    found = t.conflict(con, ch)
    own_key = t.key_values(ch.key_new if ch.op == "I" else ch.key_old)
    if found is not None or _pending(con, t, own_key, ctx):
        # SQLite's row is not PostgreSQL's before-image, or blue changed the key and the
        # to-postgres applier has not carried it yet (even to the same value): both
        # sides wrote it. Otherwise the pending SQLite change would later be applied to
        # PostgreSQL on top of this newer PostgreSQL change.
        row = con.execute(t.select_sql, own_key).fetchone()
        candidates.append(("before", row, own_key))
    for row in t.evictions(con, ch):
        key = t.row_key(row)
        if candidates and key == own_key:
            continue  # the row at its own key is already a candidate
        if _pending(con, t, key, ctx):
            candidates.append(("insert" if key == t.key_values(ch.key_new) else "unique",
                               row, key))
    if not candidates:
        return [], True
    policy = ctx.settings.get(ch.table, cfg.DEFAULT).conflict
    decided = []
    for reason, row, key in candidates:
        pending = _pending(con, t, key, ctx)
        sqlite_ts = max((p[1] for p in pending), default=None)
        if sqlite_ts is None and policy == "last-writer-wins":
            sqlite_ts = _last_ts(con, t, key)
        side, rule = cfg.winner(policy, ctx.sor, sqlite_ts=sqlite_ts, postgres_ts=ch.ts)
        decided.append((side, rule, reason, row, key, pending, sqlite_ts))
    key_json = json.dumps(ch.key_old if ch.key_old is not None else ch.key_new)
    pg_image = ch.before if ch.op == "D" else ch.row
    sqlite_won = [d for d in decided if d[0] == cfg.SQLITE]
    if sqlite_won:
        _, rule, reason, row, key, pending, sqlite_ts = sqlite_won[0]
        if pending:
            # blue's first pending change of the key is carried to PostgreSQL as the
            # winner: without its before-image, it is not recorded a second time
            con.execute(f'UPDATE "{CHANGELOG_TABLE}" SET before = NULL WHERE seq = ?',
                        (pending[0][0],))
        return [_record(ch, key_json, policy, cfg.SQLITE, rule, reason, sqlite_ts,
                        winner_image=json.dumps(t.row_json(row)), loser_image=pg_image,
                        loser_origin=cfg.POSTGRES, loser_change=ch.id)], False
    records = []
    for _, rule, reason, row, _key, pending, sqlite_ts in decided:
        winner_image = json.dumps(ch.row) if ch.row is not None else None
        loser = t.row_json(row)
        seqs = [p[0] for p in pending]
        records.append(_record(ch, key_json, policy, cfg.POSTGRES, rule, reason, sqlite_ts,
                               winner_image=winner_image, loser_image=loser,
                               loser_origin=cfg.SQLITE,
                               loser_change=seqs[-1] if seqs else None))
        records += [_record(ch, key_json, policy, cfg.POSTGRES, rule, "superseded", sqlite_ts,
                            winner_image=winner_image, loser_image=loser,
                            loser_origin=cfg.SQLITE, loser_change=seq) for seq in seqs[:-1]]
        if seqs:
            # blue's pending changes of the key lost: the to-postgres applier passes them
            con.execute(f'UPDATE "{CHANGELOG_TABLE}" SET origin = ? WHERE seq IN '
                        f'({", ".join("?" for _ in seqs)})', [LOST_ORIGIN, *seqs])
    return records, True


def _record(ch: PgChange, key: str, policy: str, winner: str, rule: str, reason: str,
            sqlite_ts: int | None, *, winner_image: str | None, loser_image: Any,
            loser_origin: str, loser_change: int | None) -> dict[str, Any]:
    return {"seq": ch.id, "table": ch.table, "op": ch.op, "key": key, "policy": policy,
            "winner": winner, "winner_image": winner_image, "loser_image": loser_image,
            "reason": reason, "rule": rule, "sqlite_ts": sqlite_ts, "postgres_ts": ch.ts,
            "loser_origin": loser_origin, "loser_change": loser_change}


def _key_text(con: sqlite3.Connection, key: list[Any]) -> str:
    """A key as the capture triggers write it (``quote()`` literals joined by ``,``)."""
    row = con.execute("SELECT " + " || ',' || ".join("quote(?)" for _ in key), key).fetchone()
    return str(row[0])


def _pending(con: sqlite3.Connection, t: SqliteTable, key: list[Any],
             ctx: Context) -> list[tuple[int, int]]:
    """(seq, ts) of blue's changes of one key the to-postgres applier has not applied."""
    if ctx.checkpoint is None:
        return []
    text = _key_text(con, key)
    return [(int(r[0]), int(r[1])) for r in con.execute(
        f'SELECT seq, ts FROM "{CHANGELOG_TABLE}" WHERE seq > ? AND tbl = ? AND '
        "(key_new = ? OR key_old = ?) AND op <> ? AND origin <> ? ORDER BY seq",
        (ctx.checkpoint, t.table.name, text, text, FENCE_OP, LOST_ORIGIN))]


def _last_ts(con: sqlite3.Connection, t: SqliteTable, key: list[Any]) -> int | None:
    """The capture time of the last change SQLite logged for one key (a log scan)."""
    text = _key_text(con, key)
    row = con.execute(f'SELECT max(ts) FROM "{CHANGELOG_TABLE}" WHERE tbl = ? AND '
                      "(key_new = ? OR key_old = ?)", (t.table.name, text, text)).fetchone()
    return int(row[0]) if row and row[0] is not None else None


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
    from pgshift.sync import mapped

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
    try:
        pg = _session(sqlite_opts)
        try:
            _finish_stored(con, pg, sqlite_opts, SyncResult(TO_SQLITE, 0, 0))
        finally:
            pg.close()
    finally:
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

    from pgshift.sync.apply import run

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
    from pgshift.sync import pg_capture

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
