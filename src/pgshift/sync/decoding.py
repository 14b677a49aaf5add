"""Reading ``test_decoding`` output: rows of ``pg_logical_slot_peek_changes`` into
transactions (:func:`parse`), and their row changes into the images the trigger
queue writes (:func:`to_changes`: ``to_jsonb`` of ``jsonb_populate_record`` of the
decoded text values, so the types' own input functions parse them).

Echo suppression: a transaction that updates ``pgshift.sync_state`` is the
to-postgres applier's (it moves its checkpoint in the same transaction as the data,
always), and is skipped whole (:func:`is_echo`). This needs no privilege and no
change to the to-postgres applier; a replication origin (``only-local``) would need
superuser or a GRANT on the origin functions in the to-postgres session.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql as pgsql

from pgshift.sync.common import FENCE_OP
from pgshift.sync.logical_slot import lsn_int
from pgshift.sync.sqlite_table import PgChange

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


def key_columns(conn: psycopg.Connection, schema: str, table: str) -> list[str]:
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
            self.keys[table] = key_columns(self.conn, self.schema, table)
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
               captured: set[str] | None) -> list[PgChange]:
    """The PgChange list of the non-echo transactions (each ends with a marker whose id is
    the transaction's end LSN). One conversion query per table for the whole batch."""
    kept = [(txn, [d for d in txn.changes if d.schema == schema
                   and (captured is None or d.table in captured)])
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
