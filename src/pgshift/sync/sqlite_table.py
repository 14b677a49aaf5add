"""Writing PostgreSQL's row images into SQLite: the change record of the way back, the
reverse of migrate's value conversions, and the statements of one table.

Per change: insert/update = ``INSERT OR REPLACE`` (which also evicts rows that
conflict on another unique key, as PostgreSQL's state implies); key update =
``UPDATE OR REPLACE ... WHERE pk = old``, or insert when there is no old row;
delete by key. Values go back through the reverse of migrate's conversion (epoch
columns to integers, booleans to 0/1, bytea to blobs, jsonb to JSON text); a value
with no reverse conversion yet (text timestamps with a zone) raises ``Reject``
(the change is parked, never dropped).
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from dataclasses import dataclass
from typing import Any

from pgshift.copy.convert import Reject
from pgshift.schema.model import Table
from pgshift.sync import settings as cfg
from pgshift.sync.common import SchemaChangedError
from pgshift.sync.common import q as _q
from pgshift.sync.tables import _unique_sets

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
