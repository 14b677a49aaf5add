"""Compare the target's catalog with what the plan intended.

Schema drift (a dropped NOT NULL, a missing index, a column of another type)
is reported apart from data differences: the data can be identical while the
schema no longer protects it.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from pgshift.schema.defaults import refused
from pgshift.schema.plan import Plan

_TYPE_NAMES = {
    "timestamp without time zone": "timestamp",
    "timestamp with time zone": "timestamptz",
    "time without time zone": "time",
}


@dataclass(frozen=True)
class SchemaDiff:
    obj: str
    what: str
    expected: str
    actual: str

    def to_dict(self) -> dict[str, str]:
        return {"object": self.obj, "what": self.what, "expected": self.expected,
                "actual": self.actual}


def check_schema(conn: psycopg.Connection, plan: Plan) -> list[SchemaDiff]:
    """Every difference between the planned and the actual target schema."""
    out: list[SchemaDiff] = []
    for t in plan.tables:
        rel = conn.execute("SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = "
                           "c.relnamespace WHERE n.nspname = %s AND c.relname = %s "
                           "AND c.relkind IN ('r', 'p')", (plan.schema, t.pg_name)).fetchone()
        if rel is None:
            out.append(SchemaDiff(t.name, "table", "present", "missing"))
            continue
        oid = rel[0]
        # name -> (type, not null, has default, identity, generated)
        cols: dict[str, tuple[str, bool, bool, str, str]] = {r[0]: r[1:] for r in conn.execute(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, "
            "a.atthasdef, a.attidentity, a.attgenerated FROM pg_attribute a "
            "WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped", (oid,))}
        for c in t.columns:
            name = f"{t.name}.{c.name}"
            if c.pg_name not in cols:
                out.append(SchemaDiff(name, "column", "present", "missing"))
                continue
            typ, notnull, hasdef, identity, generated = cols[c.pg_name]
            typ = _TYPE_NAMES.get(typ, typ)
            if typ != c.pg_type:
                out.append(SchemaDiff(name, "type", c.pg_type, typ))
            if c.not_null != notnull:
                out.append(SchemaDiff(name, "not null", str(c.not_null), str(notnull)))
            if c.decision.identity and identity != "d":
                out.append(SchemaDiff(name, "identity", "by default", identity or "none"))
            # A DEFAULT PostgreSQL refuses was left out by migrate (and noted there).
            if c.default is not None and not c.decision.identity and not hasdef \
                    and refused(conn, c.pg_type, c.default) is None:
                out.append(SchemaDiff(name, "default", c.default, "none"))
            if c.generated is not None and generated != "s":
                out.append(SchemaDiff(name, "generated", c.generated, "not generated"))
        for extra in sorted(set(cols) - {c.pg_name for c in t.columns}):
            out.append(SchemaDiff(f"{t.name}.{extra}", "column", "absent", "present"))
        cons = conn.execute(
            "SELECT c.contype, (SELECT array_agg(a.attname ORDER BY k.ord) FROM "
            "unnest(c.conkey) WITH ORDINALITY k(attnum, ord) JOIN pg_attribute a ON "
            "a.attrelid = c.conrelid AND a.attnum = k.attnum), c.confrelid::regclass::text, "
            "c.convalidated FROM pg_constraint c WHERE c.conrelid = %s", (oid,)).fetchall()
        pk = [list(r[1]) for r in cons if r[0] == "p"]
        if t.primary_key and pk != [[t.pg(k) for k in t.primary_key]]:
            out.append(SchemaDiff(t.name, "primary key", ", ".join(t.primary_key),
                                  ", ".join(pk[0]) if pk else "none"))
        uniques = [list(r[1]) for r in cons if r[0] == "u"]
        for _, ucols in t.uniques:
            if [t.pg(c) for c in ucols] not in uniques:
                out.append(SchemaDiff(t.name, "unique", ", ".join(ucols), "missing"))
        fks = [(list(r[1]), r[2].split(".")[-1].strip('"')) for r in cons if r[0] == "f"]
        for fk in t.foreign_keys:
            if ([t.pg(c) for c in fk.columns], fk.pg_ref_table or fk.ref_table) not in fks:
                out.append(SchemaDiff(t.name, "foreign key",
                                      f"({', '.join(fk.columns)}) -> {fk.ref_table}", "missing"))
        checks = sum(1 for r in cons if r[0] == "c")
        if checks < len(t.checks):
            out.append(SchemaDiff(t.name, "check constraints", str(len(t.checks)), str(checks)))
        indexes = {r[0] for r in conn.execute(
            "SELECT indexname FROM pg_indexes WHERE schemaname = %s AND tablename = %s",
            (plan.schema, t.pg_name))}
        for idx in t.indexes:
            if idx.name not in indexes:
                out.append(SchemaDiff(idx.name, "index", "present", "missing"))
    return out
