"""The target's own schema, read from pg_catalog (``migrate --into-existing``).

The application's migrations (Django, Alembic, Rails, Drizzle) created these
tables; pgshift loads into them as they are and never alters them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import psycopg


@dataclass
class TargetColumn:
    """One column of an existing PostgreSQL table."""

    name: str
    type: str  # format_type(), e.g. "timestamp with time zone", "character varying(40)"
    base: str  # the type name behind domains: "timestamptz", "varchar", "int8", "my_enum"
    category: str  # pg_type.typcategory of the base type (E = enum, A = array, ...)
    not_null: bool
    has_default: bool  # DEFAULT, identity or serial: may be left unmapped
    identity: bool
    generated: bool  # GENERATED ALWAYS AS (...) STORED: never loaded
    sequence: str | None  # the serial/identity sequence, moved past max() after the load


@dataclass
class TargetForeignKey:
    name: str
    columns: list[str]
    parent: str
    parent_columns: list[str] = field(default_factory=list)  # the referenced key, in order


@dataclass
class TargetTable:
    """One existing table: its columns in order, key and foreign keys."""

    name: str
    columns: list[TargetColumn]
    primary_key: list[str] = field(default_factory=list)
    foreign_keys: list[TargetForeignKey] = field(default_factory=list)

    def column(self, name: str) -> TargetColumn | None:
        """The column called ``name``, matched exactly first, then case-insensitively."""
        for c in self.columns:
            if c.name == name:
                return c
        folded = [c for c in self.columns if c.name.lower() == name.lower()]
        return folded[0] if len(folded) == 1 else None


_COLUMNS = """
SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod),
       coalesce(bt.typname, t.typname), coalesce(bt.typcategory, t.typcategory),
       a.attnotnull OR coalesce(t.typnotnull, false),
       a.atthasdef OR a.attidentity <> '' OR t.typdefault IS NOT NULL,
       a.attidentity <> '', a.attgenerated <> '',
       pg_get_serial_sequence(quote_ident(n.nspname) || '.' || quote_ident(c.relname),
                              a.attname)
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_type bt ON t.typtype = 'd' AND bt.oid = t.typbasetype
WHERE n.nspname = %s AND c.relkind IN ('r', 'p')
ORDER BY c.relname, a.attnum
"""

_KEYS = """
SELECT r.relname, c.conname, c.contype,
       (SELECT array_agg(a.attname ORDER BY k.ord) FROM unnest(c.conkey) WITH ORDINALITY
          k(attnum, ord) JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum),
       pc.relname,
       (SELECT array_agg(a.attname ORDER BY k.ord) FROM unnest(c.confkey) WITH ORDINALITY
          k(attnum, ord) JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.attnum)
FROM pg_constraint c
JOIN pg_class r ON r.oid = c.conrelid
JOIN pg_namespace n ON n.oid = r.relnamespace
LEFT JOIN pg_class pc ON pc.oid = c.confrelid
WHERE n.nspname = %s AND c.contype IN ('p', 'f')
ORDER BY c.conname
"""


def read_target(conn: psycopg.Connection, schema: str) -> dict[str, TargetTable]:
    """Every ordinary or partitioned table of ``schema``, by name."""
    tables: dict[str, TargetTable] = {}
    for rel, name, typ, base, cat, notnull, hasdef, ident, gen, seq in conn.execute(
            _COLUMNS, (schema,)).fetchall():
        table = tables.setdefault(rel, TargetTable(rel, []))
        base = str(base).lstrip("_") if str(cat) == "A" else str(base)
        table.columns.append(TargetColumn(name, typ, base, str(cat), bool(notnull), bool(hasdef),
                                          bool(ident), bool(gen), seq))
    for rel, conname, contype, cols, parent, pcols in conn.execute(_KEYS, (schema,)).fetchall():
        if rel not in tables:
            continue
        if contype == "p":
            tables[rel].primary_key = list(cols)
        else:
            tables[rel].foreign_keys.append(TargetForeignKey(conname, list(cols), parent,
                                                             list(pcols or [])))
    return tables


def load_order(tables: list[TargetTable]) -> list[list[TargetTable]]:
    """Tables in levels: each level's parents are in earlier levels (cycles: last level).

    Used when the session may not switch foreign-key triggers off, so parents
    are complete before any child row arrives.
    """
    names = {t.name for t in tables}
    pending = {t.name: {fk.parent for fk in t.foreign_keys if fk.parent in names} - {t.name}
               for t in tables}
    by_name = {t.name: t for t in tables}
    levels: list[list[TargetTable]] = []
    while pending:
        ready = sorted(n for n, parents in pending.items() if not parents)
        if not ready:  # a cycle: nothing orders it, load the rest together
            levels.append([by_name[n] for n in sorted(pending)])
            break
        levels.append([by_name[n] for n in ready])
        for n in ready:
            del pending[n]
        for parents in pending.values():
            parents.difference_update(ready)
    return levels
