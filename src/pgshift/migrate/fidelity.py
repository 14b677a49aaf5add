"""The fresh load's fidelity steps: DEFAULTs checked by PostgreSQL, triggers, renamed names.

- ``checked_plan``: every planned DEFAULT evaluated by the target (also in a dry
  run, when the target is reachable), and the untranslated triggers written to
  a reviewable SQL file in the state directory.
- ``load_sql``: the copy SQL of a table whose PostgreSQL names differ from
  SQLite's (identifiers past 63 bytes, ``schema.names``) or whose NULL keys are
  filled (``--fill-null-keys``): rows are read under their PostgreSQL names.
- ``create_triggers``: the translated triggers, after the load.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import psycopg

from pgshift.copy.convert import q
from pgshift.copy.pipeline import RowSource, TableSql
from pgshift.dsn import connect
from pgshift.errors import PgshiftError
from pgshift.migrate.options import MigrateOptions, state_for
from pgshift.schema.defaults import check_defaults
from pgshift.schema.model import Note, Table
from pgshift.schema.plan import Plan
from pgshift.schema.triggers import REVIEW_FILE, review_sql
from pgshift.state import atomic_write

_KEY = "_pgshift_key"


def checked_plan(plan: Plan, opts: MigrateOptions, coord: psycopg.Connection | None) -> Plan:
    """The plan with its DEFAULTs checked by the target and the trigger review file written."""
    conn = coord
    if conn is None:  # a dry run: check when the target answers, say so when it does not
        try:
            conn = connect(opts.dsn, autocommit=True, connect_timeout=5)
        except PgshiftError as exc:
            if any(c.default is not None for t in plan.tables for c in t.columns):
                plan.notes.append(Note("info", "DEFAULT", "the DEFAULTs were not checked "
                                       f"against PostgreSQL: {exc.message}"))
    if conn is not None:
        try:
            check_defaults(conn, plan.tables, plan.notes,
                           lambda t, c: t.source.column(c.name).default or "")
        finally:
            if coord is None:
                conn.close()
    text = review_sql(plan.schema, plan.tables, plan.triggers)
    state = state_for(opts)
    if text is not None:
        state.ensure()
        atomic_write(state.root / REVIEW_FILE, text + "\n")
        plan.notes.append(Note("info", REVIEW_FILE, f"untranslated triggers written to "
                               f"{state.root / REVIEW_FILE} for review"))
    return plan


def load_sql(schema: str, t: Table) -> TableSql:
    """The copy SQL of one table, reading its rows under their PostgreSQL names."""
    renamed = t.pg_name != t.name or any(c.pg_name != c.name for c in t.columns)
    if not renamed and not t.fill_null_keys:
        return TableSql.build(schema, t)
    keys = list(t.source.primary_key) or ["rowid"]
    aliases = [f"{_KEY}{i}" for i in range(len(keys))]
    key_sql = ", ".join(("rowid" if k == "rowid" else q(k)) + f" AS {a}"
                        for k, a in zip(keys, aliases, strict=True))
    values = ", ".join(f"{q(c.name)} AS {q(c.pg_name)}" for c in t.copy_columns)
    rows = RowSource(f"SELECT {key_sql}, {values} FROM {q(t.name)} WHERE {{where}}",
                     aliases, keys)
    as_loaded = dataclasses.replace(
        t, name=t.pg_name,
        columns=[dataclasses.replace(c, name=c.pg_name) for c in t.columns],
        # Filled keys load their NULLs; ddl.fill_keys numbers them before the key is built.
        primary_key=[] if t.fill_null_keys else [t.pg(k) for k in t.primary_key])
    return TableSql.build(schema, as_loaded, rows)


def create_triggers(conn: psycopg.Connection, plan: Plan,
                    execute: Callable[[str], object]) -> None:
    """The translated triggers (after the load, so they never fire on copied rows)."""
    for trig in plan.triggers:
        for stmt in trig.statements():
            try:
                execute(stmt)
            except psycopg.Error as exc:
                why = exc.diag.message_primary or str(exc).splitlines()[0]
                plan.notes.append(Note("untranslated", trig.name, f"trigger refused by "
                                       f"PostgreSQL: {why}"))
                break
