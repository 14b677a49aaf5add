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

Conflict candidates (a PostgreSQL row that is not SQLite's before-image, an
insert over another row, a row evicted on another unique key, and on dual-writer
tables a key with queued PostgreSQL changes) are written by the same statements
into the session table ``pg_temp.pgshift_cand``; the applier decides them per
policy before the batch commits (:meth:`pgshift.sync.apply.Applier._resolve`).

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

# The applier's session table of conflict candidates; emptied at each commit.
CANDIDATES_SQL = ("CREATE TEMP TABLE IF NOT EXISTS pgshift_cand (seq bigint NOT NULL, "
                  "kind text NOT NULL, img jsonb) ON COMMIT DELETE ROWS")


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
    origin: str = "sqlite"


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
        # Conflict candidates go to a session temp table (pg_temp.pgshift_cand, see
        # CANDIDATES_SQL) in the apply pipeline; the applier decides them per policy
        # before the batch commits (apply.Applier._resolve).
        self.rel = rel
        self.key_vals = key_vals
        t_key = ", ".join("_r." + qident(c.name) for c in self.key)
        t_cols = ", ".join("_r." + qident(c.name) for _, c in self.columns)
        first_key = qident(self.key[0].name)
        probe = (f"FROM (SELECT 1) AS one LEFT JOIN {rel} AS _r ON ROW({t_key}) = "
                 f"ROW({key_vals})")
        # before-image check: the PostgreSQL row differs from SQLite's before-image (or is
        # gone; for a delete, gone is no conflict): someone else changed it
        self.before_sql = (f"INSERT INTO pg_temp.pgshift_cand (seq, kind, img) SELECT %s, "
                           f"'before', to_jsonb(_r) {probe} WHERE _r.{first_key} IS NULL OR "
                           f"ROW({t_cols}) IS DISTINCT FROM ROW({values})")
        self.before_delete_sql = self.before_sql.replace(
            f"WHERE _r.{first_key} IS NULL OR ", f"WHERE _r.{first_key} IS NOT NULL AND ")
        # an insert over an existing, different PostgreSQL row (INSERT OR REPLACE of a key)
        self.insert_sql = (f"INSERT INTO pg_temp.pgshift_cand (seq, kind, img) SELECT %s, "
                           f"'insert', to_jsonb(_r) FROM {rel} AS _r WHERE ROW({t_key}) = "
                           f"ROW({key_vals}) AND ROW({t_cols}) IS DISTINCT FROM ROW({values})")
        # a change the policy gave to PostgreSQL: keep its current row for the record
        self.lost_sql = (f"INSERT INTO pg_temp.pgshift_cand (seq, kind, img) SELECT %s, "
                         f"'lost', to_jsonb(_r) {probe}")
        # evictions (other unique keys, the row at a key update's new key) are recorded
        self.evict_key_sql = (f"WITH ev AS (DELETE FROM {rel} AS _r WHERE {self.key_match} "
                              "RETURNING to_jsonb(_r) AS img) INSERT INTO pg_temp.pgshift_cand "
                              "(seq, kind, img) SELECT %s, 'unique', img FROM ev")
        # the PostgreSQL row equals a SQLite image (jsonb row vs converted SQLite values)
        self.same_sql = (f"SELECT ROW({t_cols}) IS NOT DISTINCT FROM ROW({values}) FROM "
                         f"jsonb_populate_record(NULL::{rel}, %s::jsonb) AS _r")
        self.key_json_sql = ("SELECT jsonb_build_array("
                             + ", ".join(f"to_jsonb(%s::{c.pg_type})" for c in self.key) + ")")
        self._probe, self._t_cols, self._first_key = probe, t_cols, first_key
        self.pending_check = False
        self.schema = schema
        position = {c.name: k for k, (_, c) in enumerate(self.columns)}
        self.uniques: list[tuple[str, list[int]]] = []
        for cols in _unique_sets(table):
            if sorted(cols) == sorted(shape.key) or not all(c in position for c in cols):
                continue
            where = " AND ".join(f"{qident(c)} = %s::{by_name[c].pg_type}" for c in cols)
            sql = (f"WITH ev AS (DELETE FROM {rel} AS _r WHERE {where} AND ROW({key_cols}) IS "
                   f"DISTINCT FROM ROW({key_vals}) RETURNING to_jsonb(_r) AS img) "
                   "INSERT INTO pg_temp.pgshift_cand (seq, kind, img) SELECT %s, 'unique', "
                   "img FROM ev")
            self.uniques.append((sql, [position[c] for c in cols]))

    def check_pending(self) -> None:
        """Dual-writer tables: a key with queued PostgreSQL changes SQLite has not seen
        is a conflict even when PostgreSQL's row equals SQLite's before-image (both
        sides wrote the same value): otherwise a queued change would later be carried
        to SQLite on top of newer SQLite writes the applier put in PostgreSQL."""
        key = "jsonb_build_array(" + ", ".join(f"to_jsonb(%s::{c.pg_type})"
                                               for c in self.key) + ")"
        pending = ("EXISTS (SELECT 1 FROM pgshift.pg_changes AS q WHERE q.target_schema = %s "
                   f"AND q.tbl = %s AND q.op <> 'F' AND (q.key_new = {key} OR "
                   f"q.key_old = {key}))")
        values = ", ".join(f"%s::{c.pg_type}" for _, c in self.columns)
        distinct = f"ROW({self._t_cols}) IS DISTINCT FROM ROW({values})"
        head = "INSERT INTO pg_temp.pgshift_cand (seq, kind, img) SELECT %s, "
        self.before_sql = (f"{head}'before', to_jsonb(_r) {self._probe} WHERE _r."
                           f"{self._first_key} IS NULL OR {distinct} OR {pending}")
        self.before_delete_sql = (f"{head}'before', to_jsonb(_r) {self._probe} WHERE _r."
                                  f"{self._first_key} IS NOT NULL AND ({distinct} OR "
                                  f"{pending})")
        # an insert where green deleted the row and the delete is still queued counts too
        self.insert_sql = (f"{head}'insert', to_jsonb(_r) {self._probe} WHERE (_r."
                           f"{self._first_key} IS NOT NULL AND {distinct}) OR {pending}")
        # an update or delete whose before-image the to-sqlite applier dropped (it decided
        # that conflict already): a newer queued PostgreSQL change is still a conflict
        self.pending_only_sql = f"{head}'before', to_jsonb(_r) {self._probe} WHERE {pending}"
        # after the batch: any queued change for the keys it wrote (arrays of key values)
        cols = ", ".join(f"k{i}" for i in range(len(self.key)))
        arrays = ", ".join("%s::text[]" for _ in self.key)
        built = "jsonb_build_array(" + ", ".join(f"to_jsonb(k{i}::{c.pg_type})"
                                                 for i, c in enumerate(self.key)) + ")"
        self.recheck_sql = (
            f"SELECT EXISTS (SELECT 1 FROM (SELECT {built} AS key FROM unnest({arrays}) "
            f"AS u({cols})) AS w JOIN pgshift.pg_changes AS q ON q.target_schema = %s AND "
            "q.tbl = %s AND q.op <> 'F' AND (q.key_new = w.key OR q.key_old = w.key))")
        self.pending_check = True

    def _pending_params(self, key: list[str | None]) -> list[str | None]:
        return [self.schema, self.name, *key, *key] if self.pending_check else []

    def statements(self, change: Change, *, lost: bool = False,
                   check_inserts: bool = True) -> list[Statement]:
        """What applies ``change``; raises Reject for a value that cannot be carried.

        Conflict candidates (before-image mismatches, evictions, inserts over another
        row) are recorded in ``pg_temp.pgshift_cand`` by the same statements. ``lost``:
        the policy gave this key to PostgreSQL: only record its row, change nothing.
        """
        seq = str(change.seq)
        if lost:
            key = change.key_old if change.op == "D" else change.key_new
            return [(self.lost_sql, [seq, *self._key(key)])]
        out: list[Statement] = []
        if change.before is not None:
            sql = self.before_delete_sql if change.op == "D" else self.before_sql
            old_key = self._key(change.key_old)
            out.append((sql, [seq, *old_key, *self._row(change.before),
                              *self._pending_params(old_key)]))
        elif self.pending_check and change.op in ("U", "D"):
            old_key = self._key(change.key_old)
            out.append((self.pending_only_sql, [seq, *old_key,
                                                *self._pending_params(old_key)]))
        if change.op == "D":
            return [*out, (self.delete_sql, self._key(change.key_old))]
        values = self._row(change.row)
        new_key = self._key(change.key_new)
        if change.op == "I" and check_inserts:
            out.append((self.insert_sql, [seq, *new_key, *values,
                                          *self._pending_params(new_key)]))
        out += [(sql, [values[i] for i in idx] + new_key + [seq]) for sql, idx in self.uniques]
        if change.op == "U" and change.key_old != change.key_new:
            out.append((self.evict_key_sql, [*new_key, seq]))
            out.append((self.move_sql, values + self._key(change.key_old) + values))
        else:
            out.append((self.upsert_sql, values))
        return out

    def row_params(self, raw: bytes | None) -> list[str | None]:
        """The converted values of a SQLite row image (for :attr:`same_sql`)."""
        return self._row(raw)

    def key_params(self, raw: bytes | None) -> list[str | None]:
        """The converted values of a SQLite key image."""
        return self._key(raw)

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
