"""Conflict decisions of both directions, in one place.

The policy itself (who wins: ``sor-wins``, ``last-writer-wins``, ...) is
:func:`pgshift.sync.settings.winner`; here is what each direction does with it.

To PostgreSQL (:class:`ToPostgresConflicts`, inside the batch's transaction): the
candidates the apply statements collect in ``pg_temp.pgshift_cand`` are decided per
table policy before the batch commits. When PostgreSQL's version wins, the
transaction is rolled back and the batch redone without that change (:class:`Redo`),
which is then recorded as the loser; when SQLite's wins, PostgreSQL's row is the
recorded loser and overwritten, and its queued changes are superseded.

To SQLite (:func:`decide`, per change inside the SQLite batch transaction):
SQLite's row is not PostgreSQL's before-image, or the change would evict a row blue
wrote that the to-postgres applier has not carried yet. PostgreSQL wins: the change
is applied, blue's pending changes of the key are marked lost in the change log (the
to-postgres applier passes over them). SQLite wins: the change is not applied, and
blue's first pending change of the key loses its before-image (so the to-postgres
applier carries it without recording the conflict again).
"""

from __future__ import annotations

import json
import math
import sqlite3
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from pgshift.copy.convert import Reject
from pgshift.source.snapshot import CHANGELOG_TABLE
from pgshift.sync import settings as cfg
from pgshift.sync import state as st
from pgshift.sync.common import FENCE_OP, LOST_ORIGIN, text
from pgshift.sync.image import decode
from pgshift.sync.sqlite_table import Context, PgChange, SqliteTable, reverse
from pgshift.sync.tables import Change, TableApplier

MAX_RECHECKS = 10  # batch redos for green writes that raced a batch, then go on


@dataclass
class Decision:
    """A conflict the policy gave to PostgreSQL: the SQLite change is not applied."""

    rule: str
    reason: str
    postgres_ts: int | None
    loser_change: int | None = None


class Redo(Exception):
    """Some changes lost to PostgreSQL: redo the batch without them."""

    def __init__(self, losers: dict[int, Decision]) -> None:
        super().__init__(f"{len(losers)} changes lost to PostgreSQL")
        self.losers = losers


class ToPostgresConflicts:
    """The to-postgres applier's conflict decisions over one set of tables."""

    def __init__(self, schema: str, sor: str | None, src: sqlite3.Connection,
                 tables: dict[str, TableApplier], settings: dict[str, cfg.TableSettings],
                 pg_captured: set[str]) -> None:
        self.schema = schema
        self.sor = sor
        self.src = src
        self.tables = tables
        self.settings = settings
        self.pg_captured = pg_captured
        self.rechecks = 0

    def resolve(self, cur: psycopg.Cursor, planned: list[tuple[Change, Any]],
                lose: dict[int, Decision]) -> None:
        """Decide the batch's conflict candidates per table policy, before it commits.

        Candidates (``pg_temp.pgshift_cand``): ``before`` (PostgreSQL's row is not
        SQLite's before-image), ``insert`` (an insert over another PostgreSQL row),
        ``unique`` (a row evicted on another unique key, or at a key update's new key)
        and ``lost`` (a change already given to PostgreSQL). ``insert``/``unique`` are
        conflicts only when the PostgreSQL row was not SQLite's own (see
        :meth:`_foreign_row`). When SQLite wins, the PostgreSQL row is the recorded
        loser and queued PostgreSQL changes of that key are superseded (recorded and
        removed from the queue); when PostgreSQL wins, :class:`Redo` is raised and the
        batch is redone without the change, which is then recorded as the loser.
        """
        rows = [(seq, kind, None if img is None else json.loads(img)) for seq, kind, img in
                cur.execute("SELECT seq, kind, img::text FROM pg_temp.pgshift_cand "
                            "ORDER BY seq, kind").fetchall()]
        if not rows:
            self.recheck(cur, planned, lose)
            return
        by_seq = {ch.seq: ch for ch, _ in planned}
        new: dict[int, Decision] = {}
        records: list[tuple[Any, ...]] = []
        for seq, kind, img in rows:
            ch = by_seq[seq]
            ta = self.tables[ch.table]
            ts = self.settings.get(ch.table, cfg.DEFAULT)
            qkey = self._queue_key(cur, ta, ch, img)
            pending = self._pending(cur, ta.name, qkey)
            if kind == "lost":
                d = lose[seq]
                records.append(self.record(
                    ch, ts.conflict, cfg.POSTGRES, d.rule, d.reason, d.postgres_ts,
                    winner_image=None if img is None else json.dumps(img),
                    loser_image=Jsonb(image_json(ta, ch.before if ch.op == "D" else ch.row)),
                    loser_origin=cfg.SQLITE, loser_change=ch.seq))
                if pending:
                    # the queued PostgreSQL change now goes to SQLite as the winner:
                    # without a before-image it is applied there without a second conflict
                    cur.execute("UPDATE pgshift.pg_changes SET before = NULL WHERE id = %s",
                                (pending[0][0],))
                continue
            if kind in ("insert", "unique") and not self._foreign_row(cur, ta, ch, img,
                                                                       pending):
                continue
            pg_ts = max((p[1] for p in pending), default=None)
            side, rule = cfg.winner(ts.conflict, self.sor or cfg.SQLITE, sqlite_ts=ch.ts,
                                    postgres_ts=pg_ts)
            if side == cfg.POSTGRES:
                new[seq] = Decision(rule, kind, pg_ts)
                continue
            image = None if img is None else Jsonb(img)
            newest = pending[-1][0] if pending else None
            records.append(self.record(
                ch, ts.conflict, cfg.SQLITE, rule, kind, pg_ts,
                winner_image=text(ch.row), loser_image=image, loser_origin=cfg.POSTGRES,
                loser_change=newest))
            for change_id, _ in pending[:-1]:
                records.append(self.record(
                    ch, ts.conflict, cfg.SQLITE, rule, "superseded", pg_ts,
                    winner_image=text(ch.row), loser_image=image,
                    loser_origin=cfg.POSTGRES, loser_change=change_id))
            if pending:
                cur.execute("DELETE FROM pgshift.pg_changes WHERE id = ANY(%s)",
                            ([p[0] for p in pending],))
        if new:
            raise Redo(new)
        self.recheck(cur, planned, lose)
        cur.executemany(
            "INSERT INTO pgshift.sync_conflicts (target_schema, direction, seq, table_name, "
            "op, key, policy, winner, winner_image, loser_image, reason, rule, sqlite_ts, "
            "postgres_ts, loser_origin, loser_change) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, "
            "%s, %s, %s, %s, %s, %s, %s, %s)", records)

    def recheck(self, cur: psycopg.Cursor, planned: list[tuple[Change, Any]],
                 lose: dict[int, Decision]) -> None:
        """A green write that committed between a change's conflict check and its write
        (the write waited for green's row lock, then overwrote it) is seen now: its queue
        entry is pending for a key this batch wrote. Redo the batch: the checks see it.

        Only tables whose queue the to-sqlite applier carries while this applier runs
        (:meth:`TableApplier.check_pending`); bounded, a busy key cannot stall the loop.
        """
        if self.rechecks >= MAX_RECHECKS:
            return
        keys: dict[str, list[list[str | None]]] = {}
        for ch, work in planned:
            ta = self.tables.get(ch.table)
            if ta is None or not ta.pending_check or isinstance(work, str) \
                    or ch.seq in lose or ch.op == FENCE_OP or ch.origin == LOST_ORIGIN:
                continue
            for raw in {ch.key_old, ch.key_new} - {None}:
                keys.setdefault(ch.table, []).append(ta.key_params(raw))
        for table, found in sorted(keys.items()):
            ta = self.tables[table]
            columns = [list(col) for col in zip(*found, strict=True)]
            hit = cur.execute(ta.recheck_sql, [*columns, self.schema, ta.name]
                              ).fetchone()
            if hit and hit[0]:
                raise Redo({})

    def record(self, ch: Change, policy: str, winner: str, rule: str, reason: str,
                pg_ts: int | None, *, winner_image: str | None, loser_image: Any,
                loser_origin: str, loser_change: int | None) -> tuple[Any, ...]:
        return (self.schema, st.TO_POSTGRES, ch.seq, ch.table, ch.op,
                text(ch.key_old if ch.key_old is not None else ch.key_new), policy, winner,
                winner_image, loser_image, reason, rule, ch.ts, pg_ts, loser_origin,
                loser_change)

    def _queue_key(self, cur: psycopg.Cursor, ta: TableApplier, ch: Change,
                   img: dict[str, Any] | None) -> Any:
        """The key as PostgreSQL's capture queue writes it (a JSON array)."""
        if img is not None:
            return [img.get(c.name) for c in ta.key]
        raw = ch.key_old if ch.op != "I" else ch.key_new
        row = cur.execute(ta.key_json_sql, ta.key_params(raw)).fetchone()
        return row[0] if row else None

    def _pending(self, cur: psycopg.Cursor, table: str, qkey: Any) -> list[tuple[int, int]]:
        """(id, ts) of the queued PostgreSQL changes of one key, oldest first."""
        if table not in self.pg_captured or qkey is None:
            return []
        return [(int(r[0]), int(r[1])) for r in cur.execute(
            "SELECT id, ts FROM pgshift.pg_changes WHERE target_schema = %s AND tbl = %s "
            "AND op <> %s AND (key_new = %s OR key_old = %s) ORDER BY id",
            (self.schema, table, FENCE_OP, Jsonb(qkey), Jsonb(qkey))).fetchall()]

    def _foreign_row(self, cur: psycopg.Cursor, ta: TableApplier, ch: Change,
                     img: dict[str, Any] | None, pending: list[tuple[int, int]]) -> bool:
        """Was this PostgreSQL row (evicted, or under an insert) written by someone else?

        A table with PostgreSQL capture: yes when the queue holds changes of its key
        that did not reach SQLite. Without capture, SQLite's change log decides: yes
        when the last change SQLite logged for that key (before this one) left another
        image, or removed or moved the key away; no when SQLite never logged the key
        (a row of migrate's snapshot, which SQLite itself replaced: the common case;
        a row green inserted into a table without capture under a key SQLite never
        wrote is not told apart).
        """
        if ta.name in self.pg_captured or img is None:
            return bool(pending)
        mapped_key = getattr(ta, "sqlite_key", None)
        key = mapped_key(self.src, cur, img) if mapped_key is not None \
            else sqlite_key(self.src, ta, img)
        if key is None:
            return False
        last = self.src.execute(
            f'SELECT key_new, CAST(row AS BLOB) FROM "{CHANGELOG_TABLE}" WHERE tbl = ? '
            "AND (key_new = ? OR key_old = ?) AND seq < ? AND op <> ? ORDER BY seq DESC "
            "LIMIT 1", (ch.table, key, key, ch.seq, FENCE_OP)).fetchone()
        if last is None:
            return False
        if last[0] != key:
            return True  # SQLite deleted or moved the key away: PostgreSQL's row is not its
        same = cur.execute(ta.same_sql, [*ta.row_params(last[1]), Jsonb(img)]).fetchone()
        return not (same and same[0])


def sqlite_key(con: sqlite3.Connection, ta: TableApplier, img: dict[str, Any]) -> str | None:
    """A PostgreSQL row's key as the capture triggers write it (``quote()`` literals)."""
    try:
        values = [reverse(c.decision.conversion, img.get(c.name)) for c in ta.key]
    except (Reject, ValueError, TypeError):
        return None
    row = con.execute("SELECT " + " || ',' || ".join("quote(?)" for _ in values),
                      values).fetchone()
    return str(row[0]) if row else None


def image_json(ta: TableApplier, raw: bytes | None) -> dict[str, Any] | None:
    """A SQLite row image as JSON (blobs as \\x hex, non-finite reals as text)."""
    if raw is None:
        return None
    out: dict[str, Any] = {}
    for name, value in zip(ta.shape.columns, decode(raw), strict=False):
        if isinstance(value, bytes):
            value = "\\x" + value.hex()
        elif (isinstance(value, float) and not math.isfinite(value)) \
                or not isinstance(value, int | float | str | type(None)):
            value = str(value)
        out[name] = value
    return out


# ---------------------------------------------------------------- to SQLite


def decide(con: sqlite3.Connection, t: SqliteTable, ch: PgChange, ctx: Context
           ) -> tuple[list[dict[str, Any]], bool]:
    """(conflict records, apply the change?) for one PostgreSQL change."""
    candidates: list[tuple[str, tuple[Any, ...] | None, list[Any]]] = []
    found = t.conflict(con, ch)
    own_key = t.key_values(ch.key_new if ch.op == "I" else ch.key_old)
    if found is not None or blue_pending(con, t, own_key, ctx):
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
        if blue_pending(con, t, key, ctx):
            candidates.append(("insert" if key == t.key_values(ch.key_new) else "unique",
                               row, key))
    if not candidates:
        return [], True
    policy = ctx.settings.get(ch.table, cfg.DEFAULT).conflict
    decided = []
    for reason, row, key in candidates:
        pending = blue_pending(con, t, key, ctx)
        sqlite_ts = max((p[1] for p in pending), default=None)
        if sqlite_ts is None and policy == "last-writer-wins":
            sqlite_ts = last_ts(con, t, key)
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
        return [sqlite_record(ch, key_json, policy, cfg.SQLITE, rule, reason, sqlite_ts,
                        winner_image=json.dumps(t.row_json(row)), loser_image=pg_image,
                        loser_origin=cfg.POSTGRES, loser_change=ch.id)], False
    records = []
    for _, rule, reason, row, _key, pending, sqlite_ts in decided:
        winner_image = json.dumps(ch.row) if ch.row is not None else None
        loser = t.row_json(row)
        seqs = [p[0] for p in pending]
        records.append(sqlite_record(ch, key_json, policy, cfg.POSTGRES, rule, reason, sqlite_ts,
                               winner_image=winner_image, loser_image=loser,
                               loser_origin=cfg.SQLITE,
                               loser_change=seqs[-1] if seqs else None))
        records += [sqlite_record(ch, key_json, policy, cfg.POSTGRES, rule, "superseded", sqlite_ts,
                            winner_image=winner_image, loser_image=loser,
                            loser_origin=cfg.SQLITE, loser_change=seq) for seq in seqs[:-1]]
        if seqs:
            # blue's pending changes of the key lost: the to-postgres applier passes them
            con.execute(f'UPDATE "{CHANGELOG_TABLE}" SET origin = ? WHERE seq IN '
                        f'({", ".join("?" for _ in seqs)})', [LOST_ORIGIN, *seqs])
    return records, True


def sqlite_record(ch: PgChange, key: str, policy: str, winner: str, rule: str,
                  reason: str, sqlite_ts: int | None, *, winner_image: str | None, loser_image: Any,
            loser_origin: str, loser_change: int | None) -> dict[str, Any]:
    return {"seq": ch.id, "table": ch.table, "op": ch.op, "key": key, "policy": policy,
            "winner": winner, "winner_image": winner_image, "loser_image": loser_image,
            "reason": reason, "rule": rule, "sqlite_ts": sqlite_ts, "postgres_ts": ch.ts,
            "loser_origin": loser_origin, "loser_change": loser_change}


def key_text(con: sqlite3.Connection, key: list[Any]) -> str:
    """A key as the capture triggers write it (``quote()`` literals joined by ``,``)."""
    row = con.execute("SELECT " + " || ',' || ".join("quote(?)" for _ in key), key).fetchone()
    return str(row[0])


def blue_pending(con: sqlite3.Connection, t: SqliteTable, key: list[Any],
                 ctx: Context) -> list[tuple[int, int]]:
    """(seq, ts) of blue's changes of one key the to-postgres applier has not applied."""
    if ctx.checkpoint is None:
        return []
    literal = key_text(con, key)
    return [(int(r[0]), int(r[1])) for r in con.execute(
        f'SELECT seq, ts FROM "{CHANGELOG_TABLE}" WHERE seq > ? AND tbl = ? AND '
        "(key_new = ? OR key_old = ?) AND op <> ? AND origin <> ? ORDER BY seq",
        (ctx.checkpoint, t.table.name, literal, literal, FENCE_OP, LOST_ORIGIN))]


def last_ts(con: sqlite3.Connection, t: SqliteTable, key: list[Any]) -> int | None:
    """The capture time of the last change SQLite logged for one key (a log scan)."""
    literal = key_text(con, key)
    row = con.execute(f'SELECT max(ts) FROM "{CHANGELOG_TABLE}" WHERE tbl = ? AND '
                      "(key_new = ? OR key_old = ?)", (t.table.name, literal, literal)).fetchone()
    return int(row[0]) if row and row[0] is not None else None
