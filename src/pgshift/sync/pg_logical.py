"""Change capture on PostgreSQL by logical decoding (the alternative to the trigger queue).

``pgshift sync install SQLITE PG --pg-capture logical`` creates a logical
replication slot with the built-in ``test_decoding`` plugin (shipped with
every PostgreSQL, including the embedded 18 and Debian's 15; ``pgoutput`` is
binary and needs a publication) and sets ``REPLICA IDENTITY FULL`` on the
captured tables, so that updates and deletes carry the whole before-image that
conflict detection compares (the previous setting is stored and restored by
uninstall). Nothing runs on the write path: no trigger, no queue insert.
Needs ``wal_level = logical`` (a server restart on most hosts) and a free
replication slot; the slot keeps WAL from being recycled until it is consumed.

The to-sqlite applier (:func:`run_logical`) *peeks* at the slot
(``pg_logical_slot_peek_changes``: whole committed transactions, in commit
order), turns each row change into the same image the trigger writes
(``to_jsonb`` of ``jsonb_populate_record`` of the decoded text values: the
types' own input functions parse them), applies a batch to SQLite with the
trigger path's code (:func:`pgshift.sync.apply_sqlite._apply_batch`, one short
``BEGIN IMMEDIATE``), records conflicts and parked changes in PostgreSQL, and
only then advances the slot (``pg_replication_slot_advance``) past the
batch's last commit. Each batch ends with a marker change whose id is that
commit's end LSN; the batch record the SQLite transaction stores holds it, so a
crash between the SQLite commit and the advance is finished on restart (the
records written, the slot advanced) instead of being applied twice.

Echo suppression: a transaction that updates ``pgshift.sync_state`` is the
to-postgres applier's (it moves its checkpoint in the same transaction as the
data, always), and is skipped whole. This needs no privilege and no change to
the to-postgres applier; a replication origin (``only-local``) would need
superuser or a GRANT on the origin functions in the to-postgres session.

Fence: :func:`fence` writes a transactional logical message
(``pg_logical_emit_message``); every transaction committed before it has a
lower commit LSN, so a drain is done once the applier advanced past the
message's LSN.

At the flip (:func:`rebase_at_flip`), green's writes decoded before it are
rebased like the trigger queue's: the keys they touched get their current rows.

Not supported with logical capture: ``--mode dual`` (it reads the trigger
queue), TRUNCATE (parked: the changes of a TRUNCATE are not rows).
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql as pgsql
from psycopg.types.json import Jsonb

from pgshift.errors import UsageError
from pgshift.sync import pg_capture
from pgshift.sync import sqlite_capture as capture
from pgshift.sync.apply import (
    BACKOFF_MAX,
    FENCE_OP,
    SyncOptions,
    SyncResult,
    effective_settings,
    open_sqlite,
)

PLUGIN = "test_decoding"
MESSAGE_PREFIX = "pgshift"
STATE_SQL = """
CREATE SCHEMA IF NOT EXISTS pgshift;
CREATE TABLE IF NOT EXISTS pgshift.logical_capture (
    target_schema text PRIMARY KEY,
    slot text NOT NULL,
    replica_identity jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
"""
_PEEK_OPTIONS = ("'include-xids', '0', 'skip-empty-xacts', '1', 'include-timestamp', '1'")


def slot_name(conn: psycopg.Connection, schema: str) -> str:
    """One slot per database and target schema (slot names are cluster-wide)."""
    db = conn.execute("SELECT current_database()").fetchone()
    digest = hashlib.sha256(f"{db[0] if db else ''}:{schema}".encode()).hexdigest()[:16]
    return f"pgshift_{digest}"


def _true(conn: psycopg.Connection, query: str, params: tuple[Any, ...] = ()) -> bool:
    row = conn.execute(query, params).fetchone()
    return bool(row and row[0])


def installed(conn: psycopg.Connection, schema: str) -> str | None:
    """The slot of ``schema``'s logical capture, or None. Leaves no transaction open
    that was not open before."""
    idle = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    row = None
    if _true(conn, "SELECT to_regclass('pgshift.logical_capture') IS NOT NULL"):
        row = conn.execute("SELECT slot FROM pgshift.logical_capture "
                           "WHERE target_schema = %s", (schema,)).fetchone()
    if idle:
        conn.commit()
    return str(row[0]) if row else None


def install(conn: psycopg.Connection, schema: str, tables: list[str]) -> dict[str, Any]:
    """Create the slot and set REPLICA IDENTITY FULL on ``tables`` (idempotent)."""
    level = conn.execute("SHOW wal_level").fetchone()
    conn.commit()
    if not level or level[0] != "logical":
        raise UsageError(
            f"logical capture needs wal_level = logical (the server has "
            f"{level[0] if level else '?'})",
            hint="set wal_level = logical and restart PostgreSQL, or use --pg-capture "
                 "triggers (no restart)")
    if pg_capture.installed(conn, schema):
        raise UsageError("trigger capture is installed on this schema; one PostgreSQL "
                         "capture at a time",
                         hint="pgshift sync uninstall SQLITE PG, then install again")
    conn.commit()
    slot = slot_name(conn, schema)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('pgshift.schema'))")
        conn.execute(STATE_SQL)
        # the to-sqlite applier's batch bookkeeping deletes from the queue table by id
        conn.execute(pg_capture.SCHEMA_SQL)
        previous = dict(conn.execute(
            "SELECT c.relname, c.relreplident FROM pg_class c JOIN pg_namespace n "
            "ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = ANY(%s)",
            (schema, tables)).fetchall())
        stored = conn.execute("SELECT replica_identity FROM pgshift.logical_capture "
                              "WHERE target_schema = %s", (schema,)).fetchone()
        if stored is not None:  # reinstall: keep what was there before the first install
            previous.update({k: v for k, v in stored[0].items()})
        for table in tables:
            conn.execute(pgsql.SQL("ALTER TABLE {} REPLICA IDENTITY FULL").format(
                pgsql.Identifier(schema, table)))
        conn.execute(
            "INSERT INTO pgshift.logical_capture (target_schema, slot, replica_identity) "
            "VALUES (%s, %s, %s) ON CONFLICT (target_schema) DO UPDATE SET "
            "replica_identity = EXCLUDED.replica_identity", (schema, slot, Jsonb(previous)))
    exists = conn.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s",
                          (slot,)).fetchone()
    conn.commit()
    created = False
    if exists is None:
        # a slot cannot be created in a transaction that wrote: autocommit, alone
        old = conn.autocommit
        conn.autocommit = True
        try:
            conn.execute("SELECT pg_create_logical_replication_slot(%s, %s)", (slot, PLUGIN))
            created = True
        finally:
            conn.autocommit = old
    return {"slot": slot, "plugin": PLUGIN, "created": created, "tables": tables}


def uninstall(conn: psycopg.Connection, schema: str) -> bool:
    """Drop the slot and restore the tables' replica identity; True when something went."""
    slot = installed(conn, schema)
    if slot is None:
        return False
    exists = conn.execute("SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s",
                          (slot,)).fetchone()
    conn.commit()
    if exists is not None:
        if exists[0] is not None:
            raise UsageError(f"replication slot {slot} is in use (pid {exists[0]})",
                             hint="stop pgshift sync run --mode to-sqlite first")
        conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
        conn.commit()
    names = {"d": "DEFAULT", "n": "NOTHING", "f": "FULL", "i": "DEFAULT"}
    with conn.transaction():
        row = conn.execute("SELECT replica_identity FROM pgshift.logical_capture "
                           "WHERE target_schema = %s", (schema,)).fetchone()
        for table, ident in (row[0] if row else {}).items():
            if _true(conn, "SELECT to_regclass(%s) IS NOT NULL",
                     (pgsql.Identifier(schema, table).as_string(),)):
                conn.execute(pgsql.SQL("ALTER TABLE {} REPLICA IDENTITY {}").format(
                    pgsql.Identifier(schema, table), pgsql.SQL(names.get(ident, "DEFAULT"))))
        conn.execute("DELETE FROM pgshift.logical_capture WHERE target_schema = %s", (schema,))
        if not _true(conn, "SELECT EXISTS (SELECT 1 FROM pgshift.logical_capture)"):
            conn.execute("DROP TABLE pgshift.logical_capture")
            if not _true(conn, "SELECT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = %s)",
                         (pg_capture.TRIGGER,)):
                conn.execute("DROP TABLE IF EXISTS pgshift.pg_changes")
                conn.execute("DROP FUNCTION IF EXISTS pgshift.capture()")
    return True


def fence(conn: psycopg.Connection, schema: str, content: str = "fence") -> int:
    """Write a fence message into the WAL; its LSN (as an integer).

    Committed with ``synchronous_commit = on``: decoding reads WAL only up to the
    flushed position, and a server running with ``synchronous_commit = off`` may
    not have flushed the commits before it yet; this commit flushes them all.
    """
    if conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS:
        conn.commit()
    with conn.transaction():
        conn.execute("SET LOCAL synchronous_commit = on")
        row = conn.execute("SELECT pg_logical_emit_message(true, %s, %s)::text",
                           (MESSAGE_PREFIX, f"{content}:{schema}")).fetchone()
    assert row is not None
    return lsn_int(row[0])


def lsn_int(text: str) -> int:
    high, low = text.split("/")
    return (int(high, 16) << 32) | int(low, 16)


def lsn_text(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def lag(conn: psycopg.Connection, schema: str) -> dict[str, Any] | None:
    """Bytes of WAL the slot has not consumed (None without logical capture)."""
    slot = installed(conn, schema)
    if slot is None:
        return None
    row = conn.execute(
        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint, "
        "confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
        (slot,)).fetchone()
    conn.commit()
    return {"slot": slot, "lag_bytes": int(row[0]) if row else None,
            "confirmed_flush_lsn": row[1] if row else None}


# ---------------------------------------------------------------- decoding

_TABLE = re.compile(r"table (?P<rel>.+?): (?P<op>INSERT|UPDATE|DELETE|TRUNCATE): (?P<rest>.*)",
                    re.S)
_COLUMN = re.compile(
    r"""(?P<name>"(?:[^"]|"")*"|[^\s\[]+)\[(?P<type>[^\[\]]+(?:\[\])*)\]:"""
    r"""(?P<val>'(?:[^']|'')*'|B'[01]*'|null|unchanged-toast-datum|[^\s]+)""", re.S)
_COMMIT_TS = re.compile(r"COMMIT(?: \d+)?(?: \(at (?P<ts>.+)\))?$")
_TOAST = object()


def _ident(text: str) -> str:
    return text[1:-1].replace('""', '"') if text.startswith('"') else text


def _split_rel(rel: str) -> tuple[str, str]:
    m = re.match(r'("(?:[^"]|"")*"|[^.]+)\.(.+)$', rel)
    if not m:
        return "", _ident(rel)
    return _ident(m.group(1)), _ident(m.group(2))


def parse_tuple(text: str) -> dict[str, Any]:
    """``name[type]:value ...`` of test_decoding -> {name: JSON value for
    jsonb_populate_record} (text, parsed JSON for json columns, None, or _TOAST)."""
    out: dict[str, Any] = {}
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _COLUMN.match(text, pos)
        if not m:
            raise ValueError(f"cannot read decoded tuple at {pos}: {text[pos:pos + 60]!r}")
        raw = m.group("val")
        value: Any
        if raw == "null":
            value = None
        elif raw == "unchanged-toast-datum":
            value = _TOAST
        elif raw.startswith("'"):
            value = raw[1:-1].replace("''", "'")
            if m.group("type") in ("json", "jsonb"):
                value = json.loads(value)
        elif raw.startswith("B'"):
            value = raw[2:-1]
        else:
            value = raw
        out[_ident(m.group("name"))] = value
        pos = m.end()
        while pos < len(text) and text[pos] == " ":
            pos += 1
    return out


@dataclass
class Decoded:
    """One row change of a decoded transaction."""

    lsn: int
    schema: str
    table: str
    op: str  # I, U, D or T (truncate)
    new: dict[str, Any] | None
    old: dict[str, Any] | None


@dataclass
class Txn:
    changes: list[Decoded] = field(default_factory=list)
    tables: set[tuple[str, str]] = field(default_factory=set)
    messages: list[str] = field(default_factory=list)
    end_lsn: int = 0
    ts: int = 0


def parse(rows: list[tuple[str, str]]) -> list[Txn]:
    """Group ``(lsn, data)`` rows of pg_logical_slot_peek_changes into transactions."""
    out: list[Txn] = []
    cur: Txn | None = None
    for lsn_txt, data in rows:
        if data.startswith("BEGIN"):
            cur = Txn()
            continue
        if data.startswith("COMMIT"):
            assert cur is not None
            cur.end_lsn = lsn_int(lsn_txt)
            m = _COMMIT_TS.match(data)
            if m and m.group("ts"):
                stamp = m.group("ts").replace(" ", "T", 1)
                if re.search(r"[+-]\d\d$", stamp):
                    stamp += ":00"
                from datetime import datetime

                cur.ts = int(datetime.fromisoformat(stamp).timestamp() * 1000)
            out.append(cur)
            cur = None
            continue
        if data.startswith("message:"):
            content = data.split("content:", 1)[1] if "content:" in data else ""
            if cur is not None:
                cur.messages.append(content)
            else:  # a non-transactional message: a transaction of its own
                out.append(Txn(messages=[content], end_lsn=lsn_int(lsn_txt)))
            continue
        m = _TABLE.match(data)
        if m is None or cur is None:
            continue
        schema, table = _split_rel(m.group("rel"))
        cur.tables.add((schema, table))
        op, rest = m.group("op"), m.group("rest")
        new = old = None
        if op == "INSERT":
            new = parse_tuple(rest)
        elif op == "UPDATE":
            if rest.startswith("old-key: "):
                old_text, _, new_text = rest[len("old-key: "):].partition(" new-tuple: ")
                old, new = parse_tuple(old_text), parse_tuple(new_text)
            else:
                new = parse_tuple(rest)
        elif op == "DELETE":
            old = parse_tuple(rest) if rest != "(no-tuple-data)" else {}
        cur.changes.append(Decoded(lsn_int(lsn_txt), schema, table, op[0], new, old))
    return out


def is_echo(txn: Txn) -> bool:
    """The to-postgres applier's transaction: it moved its checkpoint in it."""
    return ("pgshift", "sync_state") in txn.tables


# ---------------------------------------------------------------- applying

def _key_columns(conn: psycopg.Connection, schema: str, table: str) -> list[str]:
    rows = conn.execute(
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
        "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s::regclass AND i.indisprimary "
        "ORDER BY array_position(i.indkey::int2[], a.attnum)",
        (pgsql.Identifier(schema, table).as_string(),)).fetchall()
    return [r[0] for r in rows]


class Images:
    """Decoded text values -> the ``to_jsonb`` images the trigger path writes."""

    def __init__(self, conn: psycopg.Connection, schema: str) -> None:
        self.conn = conn
        self.schema = schema
        self.keys: dict[str, list[str]] = {}

    def key(self, table: str) -> list[str]:
        if table not in self.keys:
            self.keys[table] = _key_columns(self.conn, self.schema, table)
        return self.keys[table]

    def convert(self, table: str, values: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if not values:
            return []
        # one JSON array parameter (a jsonb[] of many values is slow to send)
        rows = self.conn.execute(pgsql.SQL(
            "SELECT to_jsonb(jsonb_populate_record(NULL::{}, u.x)) FROM "
            "jsonb_array_elements(%s::text::jsonb) WITH ORDINALITY AS u(x, n) ORDER BY u.n"
        ).format(pgsql.Identifier(self.schema, table)),
            (json.dumps(values, separators=(",", ":")),)).fetchall()
        return [r[0] for r in rows]


def to_changes(txns: list[Txn], images: Images, schema: str,
               captured: set[str]) -> list[Any]:
    """The PgChange list of the non-echo transactions (each ends with a marker whose id is
    the transaction's end LSN). One conversion query per table for the whole batch."""
    from pgshift.sync.apply_sqlite import PgChange

    kept = [(txn, [d for d in txn.changes if d.schema == schema and d.table in captured])
            for txn in txns if not is_echo(txn)]
    per_table: dict[str, list[dict[str, Any]]] = {}
    for _, mine in kept:
        for d in mine:
            if d.op == "U" and d.new is not None and d.old:
                for k, v in d.new.items():
                    if v is _TOAST:  # an unchanged TOAST value: the old tuple (FULL) has it
                        d.new[k] = d.old.get(k)
            for img in (d.new, d.old):
                if img:
                    per_table.setdefault(d.table, []).append(img)
    converted = {t: iter(images.convert(t, v)) for t, v in per_table.items()}
    out: list[PgChange] = []
    echo_ends = [txn for txn in txns if is_echo(txn)]
    for txn, mine in kept:
        for d in mine:
            it = converted.get(d.table)
            new = next(it) if d.new and it is not None else None
            old = next(it) if d.old and it is not None else None
            key = images.key(d.table)
            kn = [new.get(k) for k in key] if new is not None else None
            ko = [old.get(k) for k in key] if old is not None else None
            if d.op == "T":
                out.append(PgChange(d.lsn, d.table, "T", None, None, None, None, txn.ts))
            elif d.op == "U" and old is None:
                # no before-image (replica identity changed behind our back): an upsert
                out.append(PgChange(d.lsn, d.table, "I", None, kn, new, None, txn.ts))
            else:
                out.append(PgChange(d.lsn, d.table, d.op, ko, kn, new, old, txn.ts))
        out.append(PgChange(txn.end_lsn, "", FENCE_OP, None, None, None, None, txn.ts))
    if echo_ends and (not out or out[-1].id < max(t.end_lsn for t in echo_ends)):
        # the batch ends with skipped transactions: its marker still advances past them
        last = max(echo_ends, key=lambda t: t.end_lsn)
        out.append(PgChange(last.end_lsn, "", FENCE_OP, None, None, None, None, last.ts))
    return out


def run_logical(opts: SyncOptions, *, stop: threading.Event | None = None,
                on_batch: Callable[[SyncResult], None] | None = None,
                trim_log: bool = False) -> SyncResult:
    """The to-sqlite applier over the logical slot (see the module docstring).

    ``opts.until_seq`` (a drain) stops once the slot advanced past that LSN.
    ``trim_log`` (after the flip) trims the SQLite change log as the trigger path's
    applier does (:mod:`pgshift.sync.trim`).
    """
    from pgshift.sync import apply_sqlite as back
    from pgshift.sync import trim

    stop = stop or threading.Event()
    started = time.perf_counter()
    con = open_sqlite(opts.sqlite_path, readonly=False)
    if opts.until_seq is not None:
        con.execute("pragma busy_timeout = 500")
    pg: psycopg.Connection | None = None
    result = SyncResult(back.TO_SQLITE, 0, 0)
    try:
        pg = back._session(opts)
        slot = installed(pg, opts.schema)
        if slot is None:
            raise UsageError("logical capture is not installed",
                             hint=f"pgshift sync install {opts.sqlite_path} PG "
                                  "--pg-capture logical")
        if not capture.installed(con):
            raise UsageError(f"capture is not installed in {opts.sqlite_path}",
                             hint=f"pgshift sync install {opts.sqlite_path} PG")
        tables = back._tables(con, pg, opts)
        settings = effective_settings(pg, opts.schema, list(tables), opts.settings)
        result.last_seq = _finish_stored(con, pg, slot, opts, result)
        trim_plan = trim.plan(con, pg, opts.schema) if trim_log else None
        until = opts.until_seq
        if until is None and not opts.follow:
            # --once: everything committed before now (flushed, so decoding sees it)
            until = fence(pg, opts.schema, "flush")
        backoff = opts.poll
        while not stop.is_set():
            if until is not None and result.last_seq >= until:
                break
            try:
                if pg is None:
                    pg = back._session(opts)
                batch_started = time.perf_counter()
                done = _one_batch(con, pg, slot, tables, settings, opts, result)
            except (sqlite3.OperationalError, psycopg.OperationalError):
                if not opts.follow:
                    raise
                if pg is not None and (pg.closed or pg.broken):
                    pg.close()
                    pg = None
                stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            backoff = opts.poll
            if not done:
                result.last_batch_seconds = time.perf_counter() - batch_started
                if trim_plan is not None:
                    result.trimmed += trim.trim_batch(con, trim_plan)
                if on_batch is not None:
                    on_batch(result)
            else:
                stop.wait(opts.poll)
        result.seconds = time.perf_counter() - started
        return result
    except (sqlite3.OperationalError, psycopg.OperationalError) as exc:
        raise back.to_sqlite_error(opts, exc) from exc
    finally:
        con.close()
        if pg is not None:
            pg.close()


def _one_batch(con: sqlite3.Connection, pg: psycopg.Connection, slot: str,
               tables: dict[str, Any], settings: dict[str, Any], opts: SyncOptions,
               result: SyncResult) -> bool:
    """Peek, apply, record, advance; True when the slot had nothing new."""
    from pgshift.sync import apply_sqlite as back
    from pgshift.sync import settings as cfg
    from pgshift.sync import state as st

    rows = pg.execute(
        f"SELECT lsn::text, data FROM pg_logical_slot_peek_changes(%s, NULL, %s, "
        f"{_PEEK_OPTIONS})", (slot, opts.batch_size)).fetchall()
    pg.commit()
    txns = parse(rows)
    if not txns:
        return True
    images = Images(pg, opts.schema)
    batch = to_changes(txns, images, opts.schema, set(tables))
    checkpoint = st.scalar(pg, "SELECT last_seq FROM pgshift.sync_state WHERE "
                               "target_schema = %s AND direction = %s AND "
                               "to_regclass('pgshift.sync_state') IS NOT NULL",
                           (opts.schema, st.TO_POSTGRES))
    pg.commit()
    truncates = [ch for ch in batch if ch.op == "T"]
    batch = [ch for ch in batch if ch.op != "T"]
    if all(ch.op == FENCE_OP for ch in batch) and not truncates:
        # only echoes, markers and pgshift's own bookkeeping: nothing to write to SQLite
        _advance(pg, slot, batch[-1].id)
        result.last_seq = batch[-1].id
        return False
    ctx = back.Context(settings, opts.sor or cfg.POSTGRES, checkpoint, opts.schema)
    stored = back._apply_batch(con, tables, batch, ctx)
    stored["parked"] += [back._parked(ch, "TRUNCATE is not carried to SQLite: empty the "
                                          "table in SQLite by hand") for ch in truncates]
    _finish(pg, slot, opts, stored, result)
    return False


def _finish(pg: psycopg.Connection, slot: str, opts: SyncOptions, stored: dict[str, Any],
            result: SyncResult) -> None:
    """Record the batch's conflicts and parked changes (and drop nothing from the queue:
    the ids are LSNs), then advance the slot past its last commit."""
    from pgshift.sync import apply_sqlite as back

    back._finish(pg, opts, stored, result)
    _advance(pg, slot, stored["ids"][-1])


_snapshot_logged = [0.0]  # monotonic time of the last pg_log_standby_snapshot() call


def _advance(pg: psycopg.Connection, slot: str, lsn: int) -> None:
    """Move the slot past ``lsn``; now and then log a running-transactions record.

    Every peek decodes from the slot's ``restart_lsn``, which only moves past a
    running-transactions record (the server logs one every 15 s): under load each
    peek would re-read up to 15 s of WAL. ``pg_log_standby_snapshot()`` (PostgreSQL
    16+, superuser unless granted) logs one at once; without it, the 15 s remain.
    """
    pg.execute("SELECT pg_replication_slot_advance(%s, %s::pg_lsn)", (slot, lsn_text(lsn)))
    pg.commit()
    if time.monotonic() - _snapshot_logged[0] < 1.0:
        return
    _snapshot_logged[0] = time.monotonic()
    try:
        pg.execute("SELECT pg_log_standby_snapshot()")
        pg.commit()
    except (psycopg.errors.UndefinedFunction, psycopg.errors.InsufficientPrivilege):
        pg.rollback()


def _finish_stored(con: sqlite3.Connection, pg: psycopg.Connection, slot: str,
                   opts: SyncOptions, result: SyncResult) -> int:
    """A batch SQLite committed but whose slot advance did not happen (a crash in
    between): record it and advance now. The position the slot is at."""
    from pgshift.sync import apply_sqlite as back

    row = pg.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots "
                     "WHERE slot_name = %s", (slot,)).fetchone()
    pg.commit()
    if row is None:
        raise UsageError(f"replication slot {slot} is gone",
                         hint="pgshift sync uninstall SQLITE PG, then install again")
    confirmed = lsn_int(row[0])
    got = con.execute(f"SELECT v FROM {back._q(capture.STATE_TABLE)} WHERE k = ?",
                      (back._STORED_KEY,)).fetchone()
    if got is None or not got[0]:
        return confirmed
    stored = json.loads(got[0])
    if stored.get("ids") and stored["ids"][-1] > confirmed:
        _finish(pg, slot, opts, stored, result)
        return int(stored["ids"][-1])
    return confirmed


def stranded(conn: psycopg.Connection, schema: str, slot: str, upto: int) -> dict[str, Any]:
    """The decoded changes of ``schema``'s tables not consumed yet, up to LSN ``upto``
    (echoes aside): count, first/last LSN, age of the oldest, tables."""
    rows = conn.execute(
        f"SELECT lsn::text, data FROM pg_logical_slot_peek_changes(%s, %s::pg_lsn, NULL, "
        f"{_PEEK_OPTIONS})", (slot, lsn_text(upto))).fetchall()
    conn.commit()
    per: dict[str, list[int]] = {}
    for txn in parse(rows):
        if is_echo(txn):
            continue
        for d in txn.changes:
            if d.schema == schema:
                entry = per.setdefault(d.table, [0, d.lsn, d.lsn, txn.ts])
                entry[0] += 1
                entry[1], entry[2] = min(entry[1], d.lsn), max(entry[2], d.lsn)
                entry[3] = min(entry[3], txn.ts)
    return pg_capture.range_summary([(t, v[0], v[1], v[2], v[3])
                                     for t, v in sorted(per.items())])


def _stream(conn: psycopg.Connection, slot: str, upto: int) -> Any:
    """Decoded transactions committed before LSN ``upto``, read through a server-side
    cursor (a long pre-flip window does not have to fit in memory as rows)."""
    with conn.transaction(), conn.cursor(name="pgshift_peek") as cur:
        cur.itersize = 2000
        cur.execute(f"SELECT lsn::text, data FROM pg_logical_slot_peek_changes(%s, "
                    f"%s::pg_lsn, NULL, {_PEEK_OPTIONS})", (slot, lsn_text(upto)))
        pending: list[tuple[str, str]] = []
        for row in cur:
            pending.append(row)
            if row[1].startswith("COMMIT") or (row[1].startswith("message:")
                                                and len(pending) == 1):
                yield from parse(pending)
                pending = []


def rebase_at_flip(opts: SyncOptions) -> dict[str, Any]:
    """The flip's step for green's writes decoded before it (see
    :func:`pgshift.sync.pg_capture.rebase` for why): every key they touched gets the
    *current* PostgreSQL row in SQLite (or is deleted there), in one SQLite transaction,
    then the slot moves past the flip. Blue is quiet and writes are held meanwhile."""
    from pgshift.sync import apply_sqlite as back
    from pgshift.sync import settings as cfg

    con = open_sqlite(opts.sqlite_path, readonly=False)
    pg = back._session(opts)
    result = SyncResult(back.TO_SQLITE, 0, 0)
    try:
        slot = installed(pg, opts.schema)
        if slot is None:
            raise UsageError("logical capture is not installed")
        _finish_stored(con, pg, slot, opts, result)
        tables = back._tables(con, pg, opts)
        marker = fence(pg, opts.schema, "flip")
        touched: dict[str, dict[str, list[Any]]] = {}
        key_of: dict[str, list[str]] = {}
        changes = 0
        for txn in _stream(pg, slot, marker):
            if is_echo(txn):
                continue
            for d in txn.changes:
                if d.schema != opts.schema or d.table not in tables:
                    continue
                changes += 1
                if d.table not in key_of:
                    key_of[d.table] = _key_columns(pg, opts.schema, d.table)
                key = key_of[d.table]
                for img in (d.new, d.old):
                    if img:
                        values = [img.get(k) for k in key]
                        touched.setdefault(d.table, {})[json.dumps(values)] = values
        batch: list[Any] = []
        for table, keys in touched.items():
            batch += _current(pg, opts.schema, table, list(keys.values()))
        deletes = [ch for ch in batch if ch.op == "D"]
        images = [ch for ch in batch if ch.op != "D"]
        batch = deletes + images  # deletes first: an image may take a deleted row's value
        for i, ch in enumerate(batch, start=1):
            ch.id = i  # below any LSN: never taken for an unfinished batch on restart
        batch.append(back.PgChange(marker, "", FENCE_OP, None, None, None, None, 0))
        settings = effective_settings(pg, opts.schema, list(tables), opts.settings)
        ctx = back.Context(settings, opts.sor or cfg.POSTGRES, None, opts.schema)
        stored = back._apply_batch(con, tables, batch, ctx)
        _finish(pg, slot, opts, stored, result)
        return {"changes": changes, "keys": len(batch) - 1, "rows": len(images),
                "deletes": len(deletes), "parked": result.parked, "lsn": lsn_text(marker)}
    finally:
        con.close()
        pg.close()


def _current(pg: psycopg.Connection, schema: str, table: str,
             keys: list[list[Any]]) -> list[Any]:
    """A PgChange per key: an insert of the current row, or a delete when it is gone."""
    from pgshift.sync.apply_sqlite import PgChange

    types: dict[str, str] = dict(pg.execute(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
        (pgsql.Identifier(schema, table).as_string(),)).fetchall())
    cols = _key_columns(pg, schema, table)
    typed = [pgsql.SQL("(k.key ->> {})::{}").format(pgsql.Literal(i), pgsql.SQL(types[c]))
             for i, c in enumerate(cols)]
    match = pgsql.SQL(" AND ").join(
        pgsql.SQL("t.{} = {}").format(pgsql.Identifier(c), v) for c, v in zip(cols, typed,
                                                                               strict=True))
    rows = pg.execute(pgsql.SQL(
        "SELECT jsonb_build_array({}), to_jsonb(t) FROM jsonb_array_elements(%s::text::jsonb)"
        " AS k(key) LEFT JOIN {} AS t ON {}").format(
            pgsql.SQL(", ").join(typed), pgsql.Identifier(schema, table), match),
        (json.dumps(keys),)).fetchall()
    pg.commit()
    return [PgChange(0, table, "D", key, None, None, None, 0) if row is None
            else PgChange(0, table, "I", None, key, row, None, 0) for key, row in rows]
