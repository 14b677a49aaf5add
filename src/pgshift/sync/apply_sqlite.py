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
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from pgshift.copy.checkpoint import load_profile
from pgshift.copy.convert import Reject
from pgshift.dsn import connect
from pgshift.errors import ConnectError, LockedError, SourceError, TargetError, UsageError
from pgshift.schema.model import Table
from pgshift.schema.plan import build_plan
from pgshift.source.catalog import read_catalog
from pgshift.source.profile import profile_table, profiles_from_json
from pgshift.sync import sqlite_capture as capture
from pgshift.sync import state as st
from pgshift.sync.apply import (
    BACKOFF_MAX,
    SchemaChangedError,
    SyncOptions,
    SyncResult,
    open_sqlite,
    session_sql,
)

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


@dataclass
class Conflict:
    """SQLite's row differed from PostgreSQL's before-image (sor-wins: PostgreSQL won)."""

    change: PgChange
    loser: dict[str, Any] | None  # SQLite's row, None when it was gone


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
        assert ch.row is not None
        values = [self._value(c.name, c.decision.conversion, ch.row.get(c.name))
                  for c in self.columns]
        moved = ch.op == "U" and ch.key_old != ch.key_new and con.execute(
            self.move_sql, values + self._key(ch.key_old)).rowcount
        if not moved:
            con.execute(self.replace_sql, values)

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


def run_to_sqlite(opts: SyncOptions, *, stop: threading.Event | None = None) -> SyncResult:
    """Apply the PostgreSQL queue to SQLite once, or until ``stop`` with ``follow``.

    With ``follow``, a busy SQLite file or a lost PostgreSQL session is retried
    with backoff (re-applying a batch is harmless).
    """
    stop = stop or threading.Event()
    started = time.perf_counter()
    con = open_sqlite(opts.sqlite_path, readonly=False)
    pg: psycopg.Connection | None = None
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
        result = SyncResult(TO_SQLITE, 0, 0)
        backoff = opts.poll
        while not stop.is_set():
            try:
                if pg is None:
                    pg = _session(opts)
                done = _one_batch(con, pg, tables, opts, result)
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
    except sqlite3.OperationalError as exc:
        raise SourceError(f"writing {opts.sqlite_path} failed: {exc}",
                          hint="is blue still writing? to-sqlite runs only while blue is "
                               "quiet") from exc
    except psycopg.OperationalError as exc:
        raise TargetError(f"PostgreSQL failed during to-sqlite: {exc}",
                          hint="rerun: applying again is harmless") from exc
    finally:
        con.close()
        if pg is not None:
            pg.close()


def _one_batch(con: sqlite3.Connection, pg: psycopg.Connection,
               tables: dict[str, SqliteTable], opts: SyncOptions, result: SyncResult) -> bool:
    """Apply one batch of the queue; True when the queue was empty."""
    rows = pg.execute(
        "SELECT id, tbl, op, key_old, key_new, row, before FROM pgshift.pg_changes "
        "WHERE target_schema = %s ORDER BY id LIMIT %s",
        (opts.schema, opts.batch_size)).fetchall()
    pg.commit()
    if not rows:
        return True
    batch = [PgChange(*r) for r in rows]
    parked, conflicts = _apply_batch(con, tables, batch)
    with pg.transaction():
        for cf in conflicts:
            ch = cf.change
            pg.execute(
                "INSERT INTO pgshift.sync_conflicts (target_schema, direction, seq, "
                "table_name, op, key, policy, winner, winner_image, loser_image) "
                "VALUES (%s, %s, %s, %s, %s, %s, 'sor-wins', 'postgres', %s, %s)",
                (opts.schema, TO_SQLITE, ch.id, ch.table, ch.op, json.dumps(ch.key_old),
                 json.dumps(ch.row) if ch.row is not None else None,
                 Jsonb(cf.loser) if cf.loser is not None else None))
        for ch, reason in parked:
            pg.execute(
                "INSERT INTO pgshift.sync_parked (target_schema, direction, seq, "
                "table_name, op, key_old, key_new, row_image, reason) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (opts.schema, TO_SQLITE, ch.id, ch.table, ch.op, json.dumps(ch.key_old),
                 json.dumps(ch.key_new), json.dumps(ch.row), reason))
        pg.execute("DELETE FROM pgshift.pg_changes WHERE id = ANY(%s)",
                   ([ch.id for ch in batch],))
    result.batches += 1
    result.applied += len(batch) - len(parked)
    result.parked += len(parked)
    result.conflicts += len(conflicts)
    result.last_seq = batch[-1].id
    return False


def _tables(con: sqlite3.Connection, pg: psycopg.Connection,
            opts: SyncOptions) -> dict[str, SqliteTable]:
    names = set(capture.installed(con))
    catalog = read_catalog(con)
    chosen = [t for t in catalog.tables if t.name in names]
    stored = load_profile(pg, opts.schema)
    pg.commit()
    profiles = profiles_from_json(stored) if stored else {}
    for t in chosen:
        if t.name not in profiles:
            profiles[t.name] = profile_table(con, t)
    plan = build_plan(catalog, profiles, schema=opts.schema, tables=chosen)
    return {t.name: SqliteTable(t) for t in plan.tables}


def _apply_batch(con: sqlite3.Connection, tables: dict[str, SqliteTable], batch: list[PgChange]
                 ) -> tuple[list[tuple[PgChange, str]], list[Conflict]]:
    """One short SQLite write transaction, echo flag set: (parked changes, conflicts)."""
    parked: list[tuple[PgChange, str]] = []
    conflicts: list[Conflict] = []
    con.execute("pragma foreign_keys = off")
    con.execute("BEGIN IMMEDIATE")
    try:
        con.execute(f"UPDATE {_q(capture.STATE_TABLE)} SET v = '1' WHERE k = 'applying'")
        for ch in batch:
            t = tables.get(ch.table)
            if t is None:
                parked.append((ch, f"table {ch.table} is not captured in SQLite"))
                continue
            try:
                t.check_shape(ch)
                con.execute("SAVEPOINT change")
                found = t.conflict(con, ch)
                t.apply(con, ch)
                con.execute("RELEASE change")
                if found is not None:
                    conflicts.append(found)
            except (Reject, sqlite3.IntegrityError) as exc:
                con.execute("ROLLBACK TO change")
                con.execute("RELEASE change")
                parked.append((ch, str(exc)))
        con.execute(f"UPDATE {_q(capture.STATE_TABLE)} SET v = '0' WHERE k = 'applying'")
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return parked, conflicts
