"""Read a SQLite database's catalog into plain data.

``PRAGMA table_list``/``table_xinfo``/``index_list``/``index_xinfo``/
``foreign_key_list`` give the structure (``table_info`` hides generated
columns); the stored DDL gives what no PRAGMA exposes: CHECK constraints,
generated-column expressions, column collations, constraint names, index
expressions and partial-index predicates.
"""

from __future__ import annotations

import itertools
import sqlite3
from dataclasses import dataclass, field

from pgshift.source import sqltokens as tk

# pgshift's own objects in the source (change log, capture state) are never migrated.
PGSHIFT_PREFIX = "_pgshift_"

_COLUMN_CONSTRAINT_WORDS = {
    "CONSTRAINT", "PRIMARY", "NOT", "NULL", "UNIQUE", "CHECK", "DEFAULT", "COLLATE",
    "REFERENCES", "GENERATED", "AS",
}
_TABLE_CONSTRAINT_WORDS = {"CONSTRAINT", "PRIMARY", "UNIQUE", "CHECK", "FOREIGN"}


@dataclass
class SourceColumn:
    """One column as SQLite declares it."""

    name: str
    cid: int
    declared_type: str
    notnull: bool
    default: str | None  # the DEFAULT clause's SQL text, as PRAGMA reports it
    pk_position: int  # 1-based position in the primary key, 0 if not part of it
    generated: str | None = None  # "VIRTUAL" / "STORED" for generated columns
    generated_expr: str | None = None
    collation: str | None = None
    checks: list[str] = field(default_factory=list)


@dataclass
class SourceCheck:
    name: str | None
    expr: str
    column: str | None = None  # set for column-level checks


@dataclass
class IndexPart:
    column: str | None  # None for an expression
    expr: str | None  # SQL text of an expression part
    desc: bool = False
    collation: str | None = None


@dataclass
class SourceIndex:
    name: str
    table: str
    unique: bool
    origin: str  # "c" CREATE INDEX, "u" UNIQUE constraint, "pk" primary key
    parts: list[IndexPart]
    where: str | None = None
    sql: str | None = None


@dataclass
class SourceForeignKey:
    columns: list[str]
    ref_table: str
    ref_columns: list[str]  # resolved to the parent's primary key when omitted
    on_update: str
    on_delete: str
    name: str | None = None
    deferred: bool = False


@dataclass
class SourceTable:
    """A table with everything the schema translator needs."""

    name: str
    sql: str
    columns: list[SourceColumn]
    primary_key: list[str]
    without_rowid: bool = False
    strict: bool = False
    autoincrement: bool = False
    sequence: int | None = None  # sqlite_sequence.seq for AUTOINCREMENT tables
    rowid_alias: str | None = None  # the INTEGER PRIMARY KEY column, if any
    pk_name: str | None = None
    indexes: list[SourceIndex] = field(default_factory=list)
    uniques: list[SourceIndex] = field(default_factory=list)
    foreign_keys: list[SourceForeignKey] = field(default_factory=list)
    checks: list[SourceCheck] = field(default_factory=list)

    @property
    def has_rowid(self) -> bool:
        return not self.without_rowid

    def column(self, name: str) -> SourceColumn:
        for col in self.columns:
            if col.name == name:
                return col
        raise KeyError(name)


@dataclass
class SourceView:
    name: str
    sql: str
    select_sql: str


@dataclass
class SourceTrigger:
    name: str
    table: str
    sql: str


@dataclass
class Catalog:
    """Everything migratable in one SQLite database, plus what was skipped and why."""

    tables: list[SourceTable]
    views: list[SourceView]
    triggers: list[SourceTrigger]
    skipped: list[tuple[str, str]]  # (object name, reason)
    sqlite_version: str

    def table(self, name: str) -> SourceTable:
        for t in self.tables:
            if t.name == name:
                return t
        raise KeyError(name)


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def read_catalog(con: sqlite3.Connection) -> Catalog:
    """Read tables, views, triggers and their constraints from an open connection."""
    version = con.execute("select sqlite_version()").fetchone()[0]
    rows = con.execute(
        "select type, name, tbl_name, sql from sqlite_schema order by rowid"
    ).fetchall()
    table_meta = {
        r[1]: r for r in con.execute(
            "select schema, name, type, ncol, wr, strict from pragma_table_list "
            "where schema = 'main'")
    }
    sequences: dict[str, int] = {}
    if any(r[1] == "sqlite_sequence" for r in rows):
        sequences = dict(con.execute("select name, seq from sqlite_sequence").fetchall())

    virtual = {r[1] for r in rows
               if r[0] == "table" and (r[3] or "").upper().startswith("CREATE VIRTUAL")}
    skipped: list[tuple[str, str]] = []
    tables: list[SourceTable] = []
    views: list[SourceView] = []
    triggers: list[SourceTrigger] = []
    for kind, name, tbl_name, sql in rows:
        if name.startswith("sqlite_"):
            if kind == "table" and name not in ("sqlite_sequence", "sqlite_stat1", "sqlite_stat4"):
                skipped.append((name, "SQLite internal table"))
            continue
        if name.startswith(PGSHIFT_PREFIX) or tbl_name.startswith(PGSHIFT_PREFIX):
            continue  # pgshift's own capture objects
        if kind == "table":
            if name in virtual:
                skipped.append((name, "virtual table (e.g. FTS): rebuild it with PostgreSQL "
                                      "full-text search (tsvector + GIN index)"))
                continue
            meta = table_meta.get(name)
            if meta is not None and meta[2] == "shadow":
                skipped.append((name, "shadow table of a virtual table"))
                continue
            if any(name.startswith(v + "_") for v in virtual):
                skipped.append((name, "shadow table of a virtual table"))
                continue
            tables.append(_read_table(con, name, sql, meta, sequences))
        elif kind == "view":
            views.append(SourceView(name, sql, _view_select(sql)))
        elif kind == "trigger":
            if tbl_name in virtual:
                continue
            triggers.append(SourceTrigger(name, tbl_name, sql))
    index_rows = [r for r in rows if r[0] == "index"]
    by_name = {t.name: t for t in tables}
    for _, name, tbl_name, sql in index_rows:
        if tbl_name in by_name and sql is not None and not name.startswith("sqlite_autoindex"):
            _attach_index_sql(by_name[tbl_name], name, sql)
    return Catalog(tables, views, triggers, skipped, version)


def _read_table(
    con: sqlite3.Connection,
    name: str,
    sql: str,
    meta: tuple | None,
    sequences: dict[str, int],
) -> SourceTable:
    cols: list[SourceColumn] = []
    for cid, cname, ctype, notnull, dflt, pk, hidden in con.execute(
        f"pragma table_xinfo({_q(name)})"
    ):
        generated = {2: "VIRTUAL", 3: "STORED"}.get(hidden)
        cols.append(SourceColumn(cname, cid, ctype or "", bool(notnull), dflt, pk, generated))
    pk = [c.name for c in sorted((c for c in cols if c.pk_position), key=lambda c: c.pk_position)]
    without_rowid = bool(meta[4]) if meta else False
    strict = bool(meta[5]) if meta else False
    table = SourceTable(name, sql, cols, pk, without_rowid=without_rowid, strict=strict)
    if len(pk) == 1 and not without_rowid:
        pkcol = table.column(pk[0])
        # Only the exact type name INTEGER makes a rowid alias ("INT PRIMARY KEY" does not).
        if pkcol.declared_type.upper() == "INTEGER" and not _pk_desc(sql, pkcol.name):
            table.rowid_alias = pkcol.name
    _parse_table_ddl(table, sql)
    if table.autoincrement:
        table.sequence = sequences.get(name)
    _read_indexes(con, table)
    _read_foreign_keys(con, table)
    return table


def _pk_desc(sql: str, column: str) -> bool:
    """``INTEGER PRIMARY KEY DESC`` is not a rowid alias (a documented SQLite quirk)."""
    tokens = tk.tokenize(sql)
    for i, t in enumerate(tokens[:-3]):
        if t.upper == "PRIMARY" and tokens[i + 1].upper == "KEY" and tokens[i + 2].upper == "DESC":
            return True
    return False


def _parse_table_ddl(table: SourceTable, sql: str) -> None:
    tokens = tk.tokenize(sql)
    try:
        open_i = next(i for i, t in enumerate(tokens) if t.kind == "punct" and t.text == "(")
        close_i = tk.paren_group(tokens, open_i)
    except (StopIteration, ValueError):
        return
    body = tokens[open_i + 1 : close_i]
    by_lower = {c.name.lower(): c for c in table.columns}
    for part in tk.split_top_level(body):
        first = part[0]
        if first.upper in _TABLE_CONSTRAINT_WORDS:
            _parse_table_constraint(table, sql, part)
            continue
        col = by_lower.get(tk.unquote(first.text).lower())
        if col is None:
            continue
        _parse_column_def(table, col, sql, part)


def _constraint_name(part: list[tk.Token], i: int) -> str | None:
    if i >= 2 and part[i - 2].upper == "CONSTRAINT":
        return tk.unquote(part[i - 1].text)
    return None


def _parse_column_def(table: SourceTable, col: SourceColumn, sql: str,
                      part: list[tk.Token]) -> None:
    i = 1
    while i < len(part):
        t = part[i]
        w = t.upper
        if w == "CHECK" and i + 1 < len(part) and part[i + 1].text == "(":
            end = tk.paren_group(part, i + 1)
            expr = tk.text_between(sql, part, i + 2, end - 1) if end > i + 2 else ""
            col.checks.append(expr)
            table.checks.append(SourceCheck(_constraint_name(part, i), expr, column=col.name))
            i = end + 1
            continue
        if w == "COLLATE" and i + 1 < len(part):
            col.collation = tk.unquote(part[i + 1].text)
        if w == "AS" and i + 1 < len(part) and part[i + 1].text == "(":
            end = tk.paren_group(part, i + 1)
            col.generated_expr = tk.text_between(sql, part, i + 2, end - 1)
            i = end + 1
            continue
        if w == "AUTOINCREMENT":
            table.autoincrement = True
        if w == "PRIMARY" and i >= 2 and part[i - 2].upper == "CONSTRAINT":
            table.pk_name = tk.unquote(part[i - 1].text)
        if w == "REFERENCES":
            _pending_fks(table).append(([col.name], _constraint_name(part, i), _deferred(part[i:])))
        i += 1


def _deferred(tokens: list[tk.Token]) -> bool:
    words = [t.upper for t in tokens]
    return any(a == "INITIALLY" and b == "DEFERRED" for a, b in itertools.pairwise(words))


def _pending_fks(table: SourceTable) -> list[tuple[list[str], str | None, bool]]:
    """FK names and deferral parsed from the DDL, matched to PRAGMA rows by child columns."""
    pending: list[tuple[list[str], str | None, bool]] = table.__dict__.setdefault("_fk_ddl", [])
    return pending


def _parse_table_constraint(table: SourceTable, sql: str, part: list[tk.Token]) -> None:
    for i, t in enumerate(part):
        if t.upper == "CHECK" and i + 1 < len(part) and part[i + 1].text == "(":
            end = tk.paren_group(part, i + 1)
            table.checks.append(
                SourceCheck(_constraint_name(part, i), tk.text_between(sql, part, i + 2, end - 1))
            )
            return
        if t.upper == "PRIMARY":
            table.pk_name = _constraint_name(part, i)
            if any(p.upper == "AUTOINCREMENT" for p in part):
                table.autoincrement = True
            return
        if t.upper == "FOREIGN" and i + 2 < len(part) and part[i + 2].text == "(":
            end = tk.paren_group(part, i + 2)
            cols = [tk.unquote(x.text) for x in part[i + 3 : end] if x.text != ","]
            _pending_fks(table).append((cols, _constraint_name(part, i), _deferred(part[end:])))
            return
        if t.upper == "UNIQUE":
            return


def _read_indexes(con: sqlite3.Connection, table: SourceTable) -> None:
    for _seq, iname, unique, origin, partial in con.execute(f"pragma index_list({_q(table.name)})"):
        parts: list[IndexPart] = []
        for _seqno, cid, cname, desc, coll, key in con.execute(f"pragma index_xinfo({_q(iname)})"):
            if not key:
                continue
            parts.append(IndexPart(cname if cid >= 0 else ("rowid" if cid == -1 else None), None,
                                   bool(desc), coll if coll and coll.upper() != "BINARY" else None))
        idx = SourceIndex(iname, table.name, bool(unique), origin, parts)
        if origin == "u":
            table.uniques.append(idx)
        elif origin == "c":
            table.indexes.append(idx)
        if partial and origin != "c":
            idx.where = None


def _attach_index_sql(table: SourceTable, name: str, sql: str) -> None:
    """Fill expression parts and the WHERE clause of a CREATE INDEX from its SQL."""
    idx = next((i for i in table.indexes if i.name == name), None)
    if idx is None:
        return
    idx.sql = sql
    tokens = tk.tokenize(sql)
    on_i = next((i for i, t in enumerate(tokens) if t.upper == "ON"), None)
    if on_i is None:
        return
    open_i = on_i + 2
    if open_i >= len(tokens) or tokens[open_i].text != "(":
        return
    close_i = tk.paren_group(tokens, open_i)
    items = tk.split_top_level(tokens[open_i + 1 : close_i])
    for part, item in zip(idx.parts, items, strict=False):
        if part.column is not None:
            continue
        # strip trailing COLLATE x / ASC / DESC from the expression
        end = len(item)
        while end > 0 and item[end - 1].upper in ("ASC", "DESC"):
            end -= 1
        if end >= 2 and item[end - 2].upper == "COLLATE":
            end -= 2
        part.expr = sql[item[0].start : item[end - 1].end]
    if close_i + 1 < len(tokens) and tokens[close_i + 1].upper == "WHERE":
        idx.where = sql[tokens[close_i + 2].start : tokens[-1].end].rstrip(" ;")


def _read_foreign_keys(con: sqlite3.Connection, table: SourceTable) -> None:
    groups: dict[int, list[tuple]] = {}
    for row in con.execute(f"pragma foreign_key_list({_q(table.name)})"):
        groups.setdefault(row[0], []).append(row)
    ddl: list[tuple[list[str], str | None, bool]] = table.__dict__.pop("_fk_ddl", [])
    for fk_id in sorted(groups, reverse=True):  # SQLite numbers the last-declared FK 0
        rows = sorted(groups[fk_id], key=lambda r: r[1])
        ref_table = rows[0][2]
        cols = [r[3] for r in rows]
        refs = [r[4] for r in rows]
        if any(r is None for r in refs):
            refs = _parent_pk(con, ref_table) or refs
        no_match: tuple[list[str], str | None, bool] = ([], None, False)
        match = next((d for d in ddl if [x.lower() for x in d[0]] == [x.lower() for x in cols]),
                     no_match)
        table.foreign_keys.append(
            SourceForeignKey(cols, ref_table, [r for r in refs if r is not None],
                             rows[0][5], rows[0][6], match[1], deferred=match[2])
        )


def _parent_pk(con: sqlite3.Connection, parent: str) -> list[str] | None:
    rows = con.execute(f"pragma table_info({_q(parent)})").fetchall()
    pk = [r[1] for r in sorted((r for r in rows if r[5]), key=lambda r: r[5])]
    return pk or None


def _view_select(sql: str) -> str:
    tokens = tk.tokenize(sql)
    for i, t in enumerate(tokens):
        nxt = tokens[i + 1].upper if i + 1 < len(tokens) else ""
        if t.upper == "AS" and nxt in ("SELECT", "WITH", "VALUES"):
            return sql[tokens[i + 1].start :].rstrip().rstrip(";")
    return sql
