"""Per-table SQL for applying SQLite changes to PostgreSQL.

One :class:`TableApplier` per captured table turns a change (op, keys, image)
into the statements that make the PostgreSQL row equal to SQLite's:

- insert/update: first delete the rows that conflict with the new image on
  any other unique key (``INSERT OR REPLACE``/``UPDATE OR REPLACE`` evict
  them in SQLite without firing a delete trigger), then upsert by primary key
  (``INSERT ... ON CONFLICT (pk) DO UPDATE``);
- key update (old key != new key): delete the row already at the new key
  (evicted in SQLite), then ``UPDATE ... WHERE pk = old`` (so ``ON UPDATE``
  foreign-key actions behave as in SQLite) or insert when there is no old row;
- delete: ``DELETE ... WHERE pk = old``.

Values are rendered by :func:`pgshift.copy.convert.convert`, the slow form
migrate uses, and cast to the column's PostgreSQL type: the applied value is
the one migrate would have copied.
"""

from __future__ import annotations

from dataclasses import dataclass

from pgshift.copy.convert import Reject, convert
from pgshift.schema.ddl import qualified
from pgshift.schema.model import Table, qident
from pgshift.sync import image
from pgshift.sync.sqlite_capture import CapturedTable

Statement = tuple[str, list[str | None]]


@dataclass
class Change:
    """One row of ``_pgshift_changes``."""

    seq: int
    table: str
    op: str
    key_old: bytes | None
    key_new: bytes | None
    row: bytes | None
    schema_version: int
    ts: int
    before: bytes | None = None


def to_param(conversion: str, value: object) -> str | None:
    """The PostgreSQL text of one SQLite value (migrate's CSV field, unquoted)."""
    if value is None:
        return None
    field = convert(conversion, value)
    if field.startswith('"'):
        return field[1:-1].replace('""', '"')
    return field


class TableApplier:
    """Statements for one table; see the module docstring."""

    def __init__(self, schema: str, table: Table, shape: CapturedTable) -> None:
        self.name = table.name
        self.shape = shape
        by_name = {c.name: c for c in table.columns}
        self.columns = [(i, by_name[n]) for i, n in enumerate(shape.columns)
                        if by_name[n].generated is None]
        self.key = [by_name[n] for n in shape.key]
        rel = qualified(schema, table.name)
        names = ", ".join(qident(c.name) for _, c in self.columns)
        values = ", ".join(f"%s::{c.pg_type}" for _, c in self.columns)
        key_cols = ", ".join(qident(c.name) for c in self.key)
        key_vals = ", ".join(f"%s::{c.pg_type}" for c in self.key)
        self.key_match = f"ROW({key_cols}) = ROW({key_vals})"
        non_key = [c for _, c in self.columns if c.name not in shape.key]
        action = ("DO UPDATE SET " + ", ".join(f"{qident(c.name)} = EXCLUDED.{qident(c.name)}"
                                               for c in non_key)) if non_key else "DO NOTHING"
        override = " OVERRIDING SYSTEM VALUE" if table.identity_column else ""
        conflict = f"ON CONFLICT ({key_cols}) {action}"
        self.upsert_sql = f"INSERT INTO {rel} ({names}){override} VALUES ({values}) {conflict}"
        self.delete_sql = f"DELETE FROM {rel} WHERE {self.key_match}"
        self.move_sql = (
            f"WITH moved AS (UPDATE {rel} SET ({names}) = ROW({values}) WHERE {self.key_match} "
            f"RETURNING 1) INSERT INTO {rel} ({names}){override} SELECT {values} "
            f"WHERE NOT EXISTS (SELECT 1 FROM moved) {conflict}")
        # Conflict check (sor-wins): the PostgreSQL row differs from SQLite's before-image
        # (or is gone): someone else changed it. The losing row is kept, then overwritten.
        first_key = qident(self.key[0].name)
        self.conflict_sql = (
            "INSERT INTO pgshift.sync_conflicts (target_schema, direction, seq, table_name, "
            "op, key, policy, winner, winner_image, loser_image) SELECT %s, 'to-postgres', "
            "%s, %s, %s, %s, 'sor-wins', 'sqlite', %s, to_jsonb(t) FROM (SELECT 1) AS one "
            f"LEFT JOIN {rel} AS t ON ROW({', '.join('t.' + qident(c.name) for c in self.key)})"
            f" = ROW({key_vals}) WHERE t.{first_key} IS NULL OR "
            f"ROW({', '.join('t.' + qident(c.name) for _, c in self.columns)}) "
            f"IS DISTINCT FROM ROW({values})")
        self.conflict_delete_sql = self.conflict_sql.replace(
            f"WHERE t.{first_key} IS NULL OR ", f"WHERE t.{first_key} IS NOT NULL AND ")
        self.schema = schema
        position = {c.name: k for k, (_, c) in enumerate(self.columns)}
        self.uniques: list[tuple[str, list[int]]] = []
        for cols in _unique_sets(table):
            if sorted(cols) == sorted(shape.key) or not all(c in position for c in cols):
                continue
            where = " AND ".join(f"{qident(c)} = %s::{by_name[c].pg_type}" for c in cols)
            sql = f"DELETE FROM {rel} WHERE {where} AND ROW({key_cols}) IS DISTINCT FROM " \
                  f"ROW({key_vals})"
            self.uniques.append((sql, [position[c] for c in cols]))

    def statements(self, change: Change) -> list[Statement]:
        """What applies ``change``; raises Reject for a value that cannot be carried."""
        out: list[Statement] = []
        if change.before is not None:
            old_key = self._key(change.key_old)
            head: list[str | None] = [self.schema, str(change.seq), self.name, change.op,
                                      _text(change.key_old), _text(change.row)]
            sql = self.conflict_delete_sql if change.op == "D" else self.conflict_sql
            out.append((sql, head + old_key + self._row(change.before)))
        if change.op == "D":
            return [*out, (self.delete_sql, self._key(change.key_old))]
        values = self._row(change.row)
        new_key = self._key(change.key_new)
        out += [(sql, [values[i] for i in idx] + new_key) for sql, idx in self.uniques]
        if change.op == "U" and change.key_old != change.key_new:
            out.append((self.delete_sql, new_key))
            out.append((self.move_sql, values + self._key(change.key_old) + values))
        else:
            out.append((self.upsert_sql, values))
        return out

    def _key(self, raw: bytes | None) -> list[str | None]:
        vals = image.decode(raw)
        if len(vals) != len(self.key):
            raise image.ImageError(f"key image of {self.name} has {len(vals)} values, "
                                   f"expected {len(self.key)}")
        return [_param(c.name, c.decision.conversion, v) for c, v in zip(self.key, vals,
                                                                         strict=True)]

    def _row(self, raw: bytes | None) -> list[str | None]:
        vals = image.decode(raw)
        if len(vals) != len(self.shape.columns):
            raise image.ImageError(f"row image of {self.name} has {len(vals)} values, "
                                   f"expected {len(self.shape.columns)}")
        return [_param(c.name, c.decision.conversion, vals[i]) for i, c in self.columns]


def _text(raw: bytes | None) -> str | None:
    return raw.decode("utf-8", "backslashreplace") if raw is not None else None


def _param(column: str, conversion: str, value: object) -> str | None:
    try:
        return to_param(conversion, value)
    except Reject as exc:
        raise Reject(f"column {column}: {exc}") from exc


def _unique_sets(table: Table) -> list[list[str]]:
    """Column sets of the table's unique constraints and plain (non-partial) unique indexes."""
    sets = [list(cols) for _, cols in table.uniques if cols]
    for idx in table.source.indexes:
        if idx.unique and idx.where is None and all(p.column for p in idx.parts):
            sets.append([p.column for p in idx.parts if p.column])
    seen: list[list[str]] = []
    for s in sets:
        if s not in seen:
            seen.append(s)
    return seen
