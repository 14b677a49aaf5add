"""``pgshift sync`` of a schema loaded with ``migrate --into-existing --map``.

Migrate stores each target table's feed (source table, SQLite expressions,
conversions, and for ``sync: true`` tables the ``key:`` and ``reverse:``
mappings) in ``pgshift.migrate_runs``. Sync reads it instead of a type-map
profile and plugs the row mappers of :mod:`pgshift.existing.sync_map` into
the ordinary appliers (same loops, checkpoints, conflicts and parking):

- to PostgreSQL (:class:`MappedTableApplier`): a change logged on source table
  S is applied to its target table T; the row image goes through the column
  expressions (evaluated by SQLite with the mapping's helper functions) and
  each column's conversion, the key image through the target key columns'
  expressions over the source key columns only;
- to SQLite (:class:`MappedSqliteTable`): PostgreSQL capture sits on T (its
  trigger logs T's key columns named by ``key:``); a change of T becomes a row
  of S through the ``reverse:`` expressions, evaluated by PostgreSQL.

Refused, with one line naming the table: a captured table whose feed is not
``sync: true``, a captured table that feeds no target table or several, a
synced table with a ``where:`` filter, a key expression that reads non-key
columns, ``--mode dual`` and logical PostgreSQL capture.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import replace
from typing import Any

import psycopg

from pgshift.copy.checkpoint import load_profile
from pgshift.copy.convert import Reject
from pgshift.dsn import Dsn, connect
from pgshift.errors import UsageError
from pgshift.existing.sync_map import ForwardMapper, MappedSync, ReverseMapper, sqlite_value
from pgshift.existing.target import read_target
from pgshift.existing.verify_plan import PROFILE_MARK, is_into_existing
from pgshift.schema.ddl import qualified
from pgshift.schema.model import Column, Table, qident
from pgshift.schema.typemap import TypeDecision
from pgshift.source.catalog import SourceTable, read_catalog
from pgshift.sync import image
from pgshift.sync import sqlite_capture as capture
from pgshift.sync.common import session_sql
from pgshift.sync.sqlite_capture import CapturedTable
from pgshift.sync.sqlite_table import Conflict, PgChange, SqliteTable
from pgshift.sync.tables import Change, Statement, TableApplier, _param

MAPPED = "mapped"  # the conversion name the to-sqlite side's columns carry (no type map)
EXCLUDE_HINT = ("leave it out of capture: pgshift sync uninstall SQLITE PG, then "
                "pgshift sync install SQLITE --exclude TABLE (docs/sync.md)")


def q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def stored_feeds(pg: psycopg.Connection, schema: str) -> list[dict[str, Any]] | None:
    """The stored feeds when ``schema`` was loaded ``--into-existing``, else None."""
    stored = load_profile(pg, schema)
    pg.commit()
    if not is_into_existing(stored):
        return None
    assert stored is not None
    return list(stored[PROFILE_MARK]["tables"])


def is_mapped(dsn: Dsn, schema: str) -> bool:
    """True when ``schema`` was loaded ``--into-existing`` (one short session)."""
    conn = connect(dsn, application_name="pgshift-sync")
    try:
        return stored_feeds(conn, schema) is not None
    finally:
        conn.close()


def _find(names: list[str] | tuple[str, ...], name: str) -> str | None:
    for n in names:
        if n == name:
            return n
    folded = [n for n in names if n.lower() == name.lower()]
    return folded[0] if len(folded) == 1 else None


def feed_of(feeds: list[dict[str, Any]], source: str, schema: str) -> dict[str, Any]:
    """The one synced feed of source table ``source``; refuses the cases sync cannot carry."""
    fed = [t for t in feeds if t.get("source") == source]
    if not fed:
        raise UsageError(f"captured table {source} feeds no table of schema {schema!r} "
                         "(loaded --into-existing): sync cannot carry its changes",
                         hint=EXCLUDE_HINT.replace("TABLE", source))
    if len(fed) > 1:
        raise UsageError(f"captured table {source} feeds {len(fed)} target tables "
                         f"({', '.join(sorted(t['table'] for t in fed))}): sync of one "
                         "source table into several target tables is not supported yet",
                         hint=EXCLUDE_HINT.replace("TABLE", source))
    feed = fed[0]
    if feed.get("sync") and feed.get("where"):
        raise UsageError(f"table {feed['table']}: sync of a table loaded with a `where:` "
                         "filter is not supported yet",
                         hint="drop the filter from the mapping and migrate again, or "
                              + EXCLUDE_HINT.replace("TABLE", source))
    return feed


def mapped_sync(feed: dict[str, Any], columns: list[str], source_key: list[str]) -> MappedSync:
    """MappedSync of one feed, ``key:``/``reverse:`` named as the source's columns and the
    key in the source key's order (the order of SQLite's key images)."""
    m = MappedSync.from_stored(feed, columns)  # refuses tables without sync: true
    key: dict[str, str] = {}
    for s in source_key:
        given = _find(list(m.key), s)
        if given is None:
            raise UsageError(f"table {m.table}: `key:` lacks source key column {s} "
                             f"of {m.source}", hint="fix the mapping and migrate again")
        key[s] = m.key[given]
    reverse = {}
    for c in columns:
        given = _find(list(m.reverse), c)
        if given is not None:
            reverse[c] = m.reverse[given]
    return replace(m, key=key, reverse=reverse)


def capture_targets(pg: psycopg.Connection, schema: str, feeds: list[dict[str, Any]],
                    shapes: list[CapturedTable]) -> dict[str, list[str]]:
    """{target table: target key columns} for PostgreSQL capture of a mapped schema."""
    out: dict[str, list[str]] = {}
    target = read_target(pg, schema)
    pg.commit()
    for shape in shapes:
        feed = feed_of(feeds, shape.name, schema)
        m = mapped_sync(feed, list(shape.columns), list(shape.key))
        t = target.get(m.table)
        if t is None:
            raise UsageError(f"table {m.table} is missing in PostgreSQL schema {schema!r}",
                             hint="pgshift migrate SQLITE PG --into-existing --map FILE")
        out[m.table] = [_real(t.column(c), c, m.table) for c in m.target_key]
    return out


def _real(col: Any, name: str, table: str) -> str:
    if col is None:
        raise UsageError(f"table {table}: `key:` names no column {name!r} of the target")
    return str(col.name)


def _unique_sets(pg: psycopg.Connection, rel: str) -> list[list[str]]:
    """Column sets of the plain unique indexes (primary key included) of a table."""
    rows = pg.execute(
        "SELECT i.indisprimary, (SELECT array_agg(a.attname ORDER BY k.ord) FROM "
        "unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) JOIN pg_attribute a "
        "ON a.attrelid = i.indrelid AND a.attnum = k.attnum) FROM pg_index i "
        "WHERE i.indrelid = %s::regclass AND i.indisunique AND i.indpred IS NULL "
        "AND i.indexprs IS NULL ORDER BY i.indisprimary DESC, i.indexrelid",
        (rel,)).fetchall()
    return [list(r[1]) for r in rows if r[1]]


def _always_identity(pg: psycopg.Connection, rel: str) -> set[str]:
    """The GENERATED ALWAYS identity columns of a table."""
    return {r[0] for r in pg.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 "
        "AND NOT attisdropped AND attidentity = 'a'", (rel,)).fetchall()}


# ---------------------------------------------------------------- to PostgreSQL


class MappedTableApplier(TableApplier):
    """The statements of one mapped table: changes of source table S applied to T.

    The base class builds its SQL over a table made of T's fed columns and key;
    :meth:`_row` and :meth:`_key` turn SQLite images of S into T's values first.
    """

    def __init__(self, pg: psycopg.Connection, schema: str, feed: dict[str, Any],
                 shape: CapturedTable) -> None:
        m = mapped_sync(feed, list(shape.columns), list(shape.key))
        target = read_target(pg, schema).get(m.table)
        if target is None:
            raise UsageError(f"table {m.table} is missing in PostgreSQL schema {schema!r}",
                             hint="pgshift migrate SQLITE PG --into-existing --map FILE")
        rel = qualified(schema, m.table)
        uniques = _unique_sets(pg, rel)
        pg.commit()
        fed = [c["name"] for c in m.columns]
        for k in m.target_key:
            if k not in fed:
                raise UsageError(f"table {m.table}: key column {k} is not fed from "
                                 f"{m.source} (left to its default): sync cannot find rows "
                                 "by key", hint="map it from the source key in the mapping")
        if not any(sorted(u) == sorted(m.target_key) for u in uniques):
            raise UsageError(f"table {m.table}: the `key:` columns "
                             f"({', '.join(m.target_key)}) are neither its primary key nor "
                             "a unique constraint: sync cannot upsert by them",
                             hint="map the source key onto the target's primary key or a "
                                  "unique column")
        ident = next((c["name"] for c in m.columns
                      if (tc := target.column(c["name"])) is not None and tc.identity), None)
        cols = [Column(c["name"], c["type"], bool(c["not_null"]),
                       TypeDecision(c["type"], c["conversion"], MAPPED)) for c in m.columns]
        table = Table(m.table, cols, SourceTable(m.table, "", [], []),
                      primary_key=list(m.target_key),
                      uniques=[(None, u) for u in uniques], identity_column=ident)
        fake = CapturedTable(m.table, tuple(fed), tuple(m.target_key), shape.fingerprint)
        super().__init__(schema, table, fake)
        self.shape = shape  # the source's: image checks, fingerprints, conflict records
        self.mapped = m
        # GENERATED ALWAYS identity columns fed from the source take values on INSERT
        # (OVERRIDING SYSTEM VALUE) but can only be UPDATEd to DEFAULT: the upsert leaves
        # them out of DO UPDATE and a key update is a delete and an insert
        self.always = [n for n in fed if n in _always_identity(pg, rel)]
        pg.commit()
        if self.always:
            self._without_identity_updates(rel)
        self.forward = ForwardMapper(m)
        self.key_sql = self._key_query(m, shape)
        self.reverse_key_sql = (
            "SELECT " + ", ".join(f"({m.reverse[s]})" for s in shape.key)
            + f" FROM jsonb_populate_record(NULL::{rel}, %s::jsonb) AS t")

    def _without_identity_updates(self, rel: str) -> None:
        names = ", ".join(qident(c.name) for _, c in self.columns)
        values = ", ".join(f"%s::{c.pg_type}" for _, c in self.columns)
        key = [c.name for c in self.key]
        sets = [f"{qident(c.name)} = EXCLUDED.{qident(c.name)}" for _, c in self.columns
                if c.name not in key and c.name not in self.always]
        action = "DO UPDATE SET " + ", ".join(sets) if sets else "DO NOTHING"
        self.upsert_sql = (f"INSERT INTO {rel} ({names}) OVERRIDING SYSTEM VALUE VALUES "
                           f"({values}) ON CONFLICT ({', '.join(qident(k) for k in key)}) "
                           f"{action}")

    def statements(self, change: Change, *, lost: bool = False,
                   check_inserts: bool = True) -> list[Statement]:
        out = super().statements(change, lost=lost, check_inserts=check_inserts)
        if not self.always:
            return out
        n = len(self.columns)
        fixed: list[Statement] = []
        for sql, params in out:
            if sql == self.move_sql:  # params: values, old key, values
                fixed += [(self.delete_sql, params[n:-n]), (self.upsert_sql, params[:n])]
            else:
                fixed.append((sql, params))
        return fixed

    def _key_query(self, m: MappedSync, shape: CapturedTable) -> str:
        """Target key expressions over the source key columns alone (a key image)."""
        exprs = {c["name"]: c["expr"] for c in m.columns}
        cols = ", ".join(f"? AS {q(k)}" for k in shape.key)
        sql = (f"SELECT {', '.join('(' + exprs[k] + ')' for k in m.target_key)} "
               f"FROM (SELECT {cols})")
        try:
            self.forward.con.execute(sql, [None] * len(shape.key)).fetchone()
        except sqlite3.Error as exc:
            raise UsageError(f"table {m.table}: a key column's expression reads more than "
                             f"the key of {m.source} ({', '.join(shape.key)}): {exc}",
                             hint="sync finds rows by the key image alone: map the target "
                                  "key from the source key columns only") from exc
        return sql

    def _row(self, raw: bytes | None) -> list[str | None]:
        vals = image.decode(raw)
        if len(vals) != len(self.shape.columns):
            raise image.ImageError(f"row image of {self.shape.name} has {len(vals)} values, "
                                   f"expected {len(self.shape.columns)}")
        return self.target_params(vals)

    def target_params(self, vals: list[object]) -> list[str | None]:
        """The converted target values of one source row (image order): what migrate
        would have loaded."""
        try:
            mapped = self.forward.target_row(vals)
        except sqlite3.Error as exc:
            raise Reject(f"mapping {self.name}: {exc}") from exc
        return [_param(c.name, c.decision.conversion, mapped[i]) for i, c in self.columns]

    def _key(self, raw: bytes | None) -> list[str | None]:
        vals = image.decode(raw)
        if len(vals) != len(self.shape.key):
            raise image.ImageError(f"key image of {self.shape.name} has {len(vals)} values, "
                                   f"expected {len(self.shape.key)}")
        try:
            mapped = self.forward.con.execute(self.key_sql, vals).fetchone()
        except sqlite3.Error as exc:
            raise Reject(f"mapping {self.name}: {exc}") from exc
        return [_param(c.name, c.decision.conversion, v)
                for c, v in zip(self.key, mapped, strict=True)]

    def sqlite_key(self, con: sqlite3.Connection, cur: psycopg.Cursor,
                   img: dict[str, Any]) -> str | None:
        """A PostgreSQL row's source key as SQLite's capture triggers write it."""
        try:
            with cur.connection.transaction():
                row = cur.execute(self.reverse_key_sql, (json.dumps(img),)).fetchone()
        except psycopg.Error:
            return None
        if row is None:
            return None
        values = [sqlite_value(v) for v in row]
        out = con.execute("SELECT " + " || ',' || ".join("quote(?)" for _ in values),
                          values).fetchone()
        return str(out[0]) if out else None


def forward_appliers(pg: psycopg.Connection, schema: str, feeds: list[dict[str, Any]],
                     shapes: dict[str, CapturedTable]) -> dict[str, MappedTableApplier]:
    """One applier per captured source table, keyed by the source table's name."""
    return {name: MappedTableApplier(pg, schema, feed_of(feeds, name, schema), shape)
            for name, shape in shapes.items()}


# ---------------------------------------------------------------- to SQLite


def _same(have: Any, want: Any) -> bool:
    """Equal as SQLite values; JSON texts by value (jsonb normalizes spacing)."""
    if have is None or want is None:
        return have is None and want is None
    if isinstance(have, int | float) and isinstance(want, int | float):
        return have == want and isinstance(have, float) == isinstance(want, float)
    if have == want:
        return True
    if isinstance(have, str) and isinstance(want, str) and have[:1] in "{[" and \
            want[:1] in "{[":
        try:
            return bool(json.loads(have) == json.loads(want))
        except ValueError:
            return False
    return False


def sqlite_tables(con: sqlite3.Connection, pg: psycopg.Connection, dsn: Dsn, schema: str,
                  feeds: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    """One SQLite writer per synced target table, keyed by the target table's name (the
    name PostgreSQL's capture queues changes under)."""
    catalog = {t.name: t for t in read_catalog(con).tables}
    target = read_target(pg, schema)
    pg.commit()
    # The reverse expressions run on a session of their own: the applier reconnects its
    # session on errors, and these are reads outside its transactions.
    rev = connect(dsn, autocommit=True, application_name="pgshift-sync")
    for s in session_sql(schema):
        rev.execute(s)
    out: dict[str, Any] = {}
    try:
        for name in names:
            shape = capture.describe(con, name)
            feed = feed_of(feeds, name, schema)
            m = mapped_sync(feed, list(shape.columns), list(shape.key))
            t = target.get(m.table)
            if t is None:
                raise UsageError(f"table {m.table} is missing in PostgreSQL schema "
                                 f"{schema!r}", hint="pgshift migrate SQLITE PG "
                                 "--into-existing --map FILE")
            out[m.table] = MappedSqliteTable(rev, schema, m, catalog[name],
                                             [c.name for c in t.columns],
                                             MappedTableApplier(rev, schema, feed, shape))
    except BaseException:
        rev.close()
        raise
    if not out:
        rev.close()
    return out


def _base_table(src: SourceTable) -> Table:
    cols = [Column(c.name, "", False, TypeDecision("", MAPPED, MAPPED)) for c in src.columns]
    return Table(src.name, cols, src, primary_key=list(src.primary_key),
                 uniques=[(None, [p.column for p in u.parts if p.column])
                          for u in src.uniques])


class MappedSqliteTable(SqliteTable):
    """Writes one target table's PostgreSQL images into its source table, through
    ``reverse:``: the ordinary SQLite statements over the source table, values and keys
    from the reverse expressions (evaluated by PostgreSQL on the ``rev`` session)."""

    def __init__(self, rev: psycopg.Connection, schema: str, m: MappedSync,
                 src: SourceTable, target_columns: list[str],
                 forward: MappedTableApplier) -> None:
        super().__init__(_base_table(src))
        self.mapped = m
        self.pg = rev
        self.forward = forward
        # SQLite's row, mapped forward, compared with a PostgreSQL image (in PostgreSQL):
        # a lossy reverse (coalesce, ms from µs, jsonb spacing) is not a difference
        self.forward_ok = [c.name for c in self.columns] == list(forward.shape.columns)
        self.all_names = set(target_columns)  # what T's images hold (check_shape)
        self.reverse = ReverseMapper(rev, schema, replace(
            m, source_columns=[c.name for c in self.columns]))
        self.reverse_key = ReverseMapper(rev, schema,
                                         replace(m, source_columns=list(src.primary_key)))

    def close(self) -> None:
        if not self.pg.closed:
            self.pg.close()

    def _source(self, img: dict[str, Any]) -> list[Any]:
        try:
            return self.reverse.source_row(img)
        except psycopg.Error as exc:
            raise Reject(f"reverse mapping of {self.mapped.table}: "
                         f"{str(exc).strip().splitlines()[0]}") from exc

    def values(self, ch: PgChange) -> list[Any]:
        assert ch.row is not None
        return self._source(ch.row)

    def _key(self, key: list[Any] | None) -> list[Any]:
        """A queue key (T's key columns) as the source key, through ``reverse:``."""
        assert key is not None
        m = self.mapped
        try:
            vals = self.reverse_key.source_row(dict(zip(m.target_key, key, strict=True)))
        except psycopg.Error as exc:
            raise Reject(f"reverse mapping of {m.table}'s key: "
                         f"{str(exc).strip().splitlines()[0]}") from exc
        if any(v is None for v in vals) and any(v is not None for v in key):
            raise Reject(f"the `reverse:` of {m.source}'s key reads other columns of "
                         f"{m.table} than its key ({', '.join(m.target_key)}), and this "
                         "change carries only the key")
        return vals

    def _old_key(self, ch: PgChange) -> list[Any]:
        """The source key of the row before the change (from the before-image if any)."""
        if ch.before is not None:
            return self.row_key(tuple(self._source(ch.before)))
        return self._key(ch.key_old)

    def _matches(self, cur: tuple[Any, ...], image: dict[str, Any]) -> bool:
        """SQLite's row is this PostgreSQL image: equal to its reverse mapping, or (the
        reverse may lose information) mapped forward, equal to the image itself."""
        if all(_same(have, want) for have, want in zip(cur, self._source(image), strict=True)):
            return True
        if not self.forward_ok:
            return False
        try:
            params = self.forward.target_params(list(cur))
            row = self.pg.execute(self.forward.same_sql,
                                  [*params, json.dumps(image)]).fetchone()
        except (Reject, psycopg.Error):
            return False
        return bool(row and row[0])

    def conflict(self, con: sqlite3.Connection, ch: PgChange) -> Conflict | None:
        if ch.before is None or ch.op == "I":
            return None
        cur = con.execute(self.select_sql, self._old_key(ch)).fetchone()
        if cur is None:
            return None if ch.op == "D" else Conflict(ch, None)
        if self._matches(cur, ch.before):
            return None
        if ch.row is not None and self._matches(cur, ch.row):
            return None  # the same change applied again (a replayed batch)
        return Conflict(ch, self.row_json(cur))

    def apply(self, con: sqlite3.Connection, ch: PgChange) -> None:
        if ch.op == "D":
            con.execute(self.delete_sql, self._old_key(ch))
            return
        values = self.values(ch)
        moved = ch.op == "U" and ch.key_old != ch.key_new and con.execute(
            self.move_sql, values + self._old_key(ch)).rowcount
        if not moved:
            con.execute(self.replace_sql, values)

