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

The slot itself (install, uninstall, fence, lag, advance) is
:mod:`pgshift.sync.logical_slot`; reading ``test_decoding`` output is
:mod:`pgshift.sync.decoding`. :class:`LogicalSource` is the
:class:`~pgshift.sync.source.ChangeSource`: it *peeks* at the slot
(``pg_logical_slot_peek_changes``: whole committed transactions, in commit
order), turns each row change into the same image the trigger writes, and the
one apply loop applies a batch to SQLite with the trigger path's sink
(:class:`~pgshift.sync.sqlite_sink.SqliteSink`, one short ``BEGIN IMMEDIATE``);
the ack records conflicts and parked changes in PostgreSQL, and only then
advances the slot (``pg_replication_slot_advance``) past the batch's last commit.
Each batch ends with a marker change whose id is that commit's end LSN; the batch
record the SQLite transaction stores holds it, so a crash between the SQLite commit
and the advance is finished on restart (the records written, the slot advanced)
instead of being applied twice.

Echo suppression: a transaction that updates ``pgshift.sync_state`` is the
to-postgres applier's, and is skipped whole (:func:`pgshift.sync.decoding.is_echo`).

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

import json
import sqlite3
import threading
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
from psycopg import sql as pgsql

from pgshift.errors import UsageError
from pgshift.sync import pg_capture, sqlite_sink
from pgshift.sync.common import (
    FENCE_OP,
    TO_SQLITE,
    PgSession,
    SyncOptions,
    SyncResult,
    open_sqlite,
)
from pgshift.sync.decoding import (  # re-exported: their home before the seam
    _TOAST,
    Decoded,
    Images,
    Txn,
    is_echo,
    key_columns,
    parse,
    parse_tuple,
    to_changes,
)
from pgshift.sync.logical_slot import (  # re-exported: their home before the seam
    MESSAGE_PREFIX,
    PEEK_OPTIONS,
    PLUGIN,
    STATE_SQL,
    advance,
    fence,
    install,
    installed,
    lag,
    lsn_int,
    lsn_text,
    mark_recorded,
    recorded,
    slot_name,
    uninstall,
)
from pgshift.sync.source import Outcome
from pgshift.sync.sqlite_table import PgChange

__all__ = [
    "MESSAGE_PREFIX", "PEEK_OPTIONS", "PLUGIN", "STATE_SQL", "_TOAST", "Decoded", "Images",
    "LogicalSource", "Txn", "advance", "fence", "install", "installed", "is_echo",
    "key_columns", "lag", "lsn_int", "lsn_text", "parse", "parse_tuple", "rebase_at_flip",
    "run_logical", "slot_name", "stranded", "to_changes", "uninstall",
]


class LogicalSource:
    """The logical slot of one target schema, read by commit LSN."""

    direction = TO_SQLITE

    def __init__(self, session: PgSession, opts: SyncOptions,
                 captured: set[str] | None = None) -> None:
        self.session = session
        self.opts = opts
        # the tables the sink writes (PostgreSQL's names); None: every table of the schema
        self.captured = captured
        slot = installed(session.conn, opts.schema)
        if slot is None:
            raise UsageError("logical capture is not installed",
                             hint=f"pgshift sync install {opts.sqlite_path} PG "
                                  "--pg-capture logical")
        self.slot = slot
        self._pos = self._confirmed()

    def _confirmed(self) -> int:
        pg = self.session.conn
        row = pg.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots "
                         "WHERE slot_name = %s", (self.slot,)).fetchone()
        pg.commit()
        if row is None:
            raise UsageError(f"replication slot {self.slot} is gone",
                             hint="pgshift sync uninstall SQLITE PG, then install again")
        return lsn_int(row[0])

    def position(self) -> int:
        return self._pos

    def seek(self, position: int) -> None:
        pass  # the slot keeps its position

    def read(self, limit: int) -> list[PgChange]:
        """Whole transactions (up to about ``limit`` decoded rows), echoes skipped; each
        ends with a marker change whose id is its commit's end LSN."""
        pg = self.session.conn
        rows = pg.execute(
            f"SELECT lsn::text, data FROM pg_logical_slot_peek_changes(%s, NULL, %s, "
            f"{PEEK_OPTIONS})", (self.slot, limit)).fetchall()
        pg.commit()
        txns = parse(rows)
        if not txns:
            return []
        return to_changes(txns, Images(pg, self.opts.schema), self.opts.schema,
                          self.captured)

    def ack(self, outcome: Outcome) -> None:
        """Record the batch (the ids are LSNs: nothing to dequeue) with the LSN it ends
        at, then advance the slot (which no transaction can include)."""
        assert outcome.record is not None
        pg = self.session.conn
        with pg.transaction():
            sqlite_sink.record_batch(pg, self.opts.schema, outcome.record, dequeue=False)
            mark_recorded(pg, self.opts.schema, outcome.position)
        advance(pg, self.slot, outcome.position)
        self._pos = max(self._pos, outcome.position)

    def recover(self, record: dict[str, Any] | None) -> Outcome | None:
        """A batch SQLite committed past the slot's position: record it unless its
        records are written already (a crash before the advance), then advance."""
        self._pos = self._confirmed()
        if not (record and record.get("ids") and record["ids"][-1] > self._pos):
            return None
        outcome = sqlite_sink.outcome_of(record)
        if recorded(self.session.conn, self.opts.schema) >= outcome.position:
            advance(self.session.conn, self.slot, outcome.position)
            self._pos = outcome.position
            return None
        self.ack(outcome)
        return outcome

    def fence(self) -> int:
        return fence(self.session.conn, self.opts.schema)

    def stranded(self, upto: int) -> dict[str, Any]:
        return stranded(self.session.conn, self.opts.schema, self.slot, upto)

    def rebase(self) -> dict[str, Any] | None:
        con = open_sqlite(self.opts.sqlite_path, readonly=False)
        try:
            return _rebase(con, self.session, self.opts)
        finally:
            con.close()

    def pending(self) -> int:
        return 0  # counting would decode the WAL again: ``lag`` gives bytes instead

    def horizon(self) -> int | None:
        # --once: everything committed before now (flushed, so decoding sees it)
        return fence(self.session.conn, self.opts.schema, "flush")

    def close(self) -> None:
        self.session.close()


def run_logical(opts: SyncOptions, *, stop: threading.Event | None = None,
                on_batch: Callable[[SyncResult], None] | None = None,
                trim_log: bool = False) -> SyncResult:
    """The to-sqlite applier over the logical slot (see the module docstring).

    ``opts.until_seq`` (a drain) stops once the slot advanced past that LSN.
    ``trim_log`` (after the flip) trims the SQLite change log as the trigger path's
    applier does (:mod:`pgshift.sync.trim`).
    """
    return sqlite_sink.run_into_sqlite(
        opts, lambda session, tables: LogicalSource(session, opts, tables),
        stop=stop, on_batch=on_batch, trim_log=trim_log)


def stranded(conn: psycopg.Connection, schema: str, slot: str, upto: int) -> dict[str, Any]:
    """The decoded changes of ``schema``'s tables not consumed yet, up to LSN ``upto``
    (echoes aside): count, first/last LSN, age of the oldest, tables."""
    rows = conn.execute(
        f"SELECT lsn::text, data FROM pg_logical_slot_peek_changes(%s, %s::pg_lsn, NULL, "
        f"{PEEK_OPTIONS})", (slot, lsn_text(upto))).fetchall()
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


def _stream(conn: psycopg.Connection, slot: str, upto: int) -> Iterator[Txn]:
    """Decoded transactions committed before LSN ``upto``, read through a server-side
    cursor (a long pre-flip window does not have to fit in memory as rows)."""
    with conn.transaction(), conn.cursor(name="pgshift_peek") as cur:
        cur.itersize = 2000
        cur.execute(f"SELECT lsn::text, data FROM pg_logical_slot_peek_changes(%s, "
                    f"%s::pg_lsn, NULL, {PEEK_OPTIONS})", (slot, lsn_text(upto)))
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
    con = open_sqlite(opts.sqlite_path, readonly=False)
    session = PgSession(opts)
    try:
        return _rebase(con, session, opts)
    finally:
        con.close()
        session.close()


def _rebase(con: sqlite3.Connection, session: PgSession, opts: SyncOptions
            ) -> dict[str, Any]:
    pg = session.conn
    sink = sqlite_sink.SqliteSink(con, session, opts)
    try:
        source = LogicalSource(session, opts, set(sink.tables))
        source.recover(sink.last_record())
        marker = fence(pg, opts.schema, "flip")
        touched: dict[str, dict[str, list[Any]]] = {}
        key_of: dict[str, list[str]] = {}
        changes = 0
        for txn in _stream(pg, source.slot, marker):
            if is_echo(txn):
                continue
            for d in txn.changes:
                if d.schema != opts.schema or d.table not in sink.tables:
                    continue
                changes += 1
                if d.table not in key_of:
                    key_of[d.table] = key_columns(pg, opts.schema, d.table)
                key = key_of[d.table]
                for img in (d.new, d.old):
                    if img:
                        values = [img.get(k) for k in key]
                        touched.setdefault(d.table, {})[json.dumps(values)] = values
        batch: list[PgChange] = []
        for table, keys in touched.items():
            batch += _current(pg, opts.schema, table, list(keys.values()))
        deletes = [ch for ch in batch if ch.op == "D"]
        images = [ch for ch in batch if ch.op != "D"]
        batch = deletes + images  # deletes first: an image may take a deleted row's value
        for i, ch in enumerate(batch, start=1):
            ch.id = i  # below any LSN: never taken for an unfinished batch on restart
        batch.append(PgChange(marker, "", FENCE_OP, None, None, None, None, 0))
        stored = sqlite_sink.apply_batch(con, sink.tables, batch,
                                         sink.context(checkpoint=False))
        outcome = sqlite_sink.outcome_of(stored)
        source.ack(outcome)
        return {"changes": changes, "keys": len(batch) - 1, "rows": len(images),
                "deletes": len(deletes), "parked": outcome.parked, "lsn": lsn_text(marker)}
    finally:
        sink.close()


def _current(pg: psycopg.Connection, schema: str, table: str,
             keys: list[list[Any]]) -> list[PgChange]:
    """A PgChange per key: an insert of the current row, or a delete when it is gone."""
    types: dict[str, str] = dict(pg.execute(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
        (pgsql.Identifier(schema, table).as_string(),)).fetchall())
    cols = key_columns(pg, schema, table)
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
