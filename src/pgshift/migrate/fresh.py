"""The fresh load: tables created from the plan the data chose (``pgshift migrate``).

Steps (``migrate()`` runs them; each logged as ``STEP n`` with its timing, each
idempotent):

1. snapshot   online backup of the source (given, or the recorded one on --resume)
2. catalog    tables, keys, indexes, constraints, views, triggers
3. profile    storage classes of every column -> type decisions
4. plan       DDL, conversions, anomalies (``--dry-run`` stops here)
5. schema     CREATE TABLE (bare: columns, NOT NULL, defaults, identity)
6. copy       chunks in parallel, each COPY + rejects + checkpoint in one transaction
7. keys       primary keys, UNIQUE, indexes (tables in parallel)
8. constraints CHECK and FOREIGN KEY added NOT VALID, then VALIDATEd (violations reported)
9. finish     identity restarts, views, ANALYZE, rejects file
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql as pgsql

from pgshift.copy import checkpoint
from pgshift.copy.checkpoint import RunRecord
from pgshift.copy.chunks import encode_bound, plan_chunks
from pgshift.errors import UsageError
from pgshift.migrate.fidelity import checked_plan, create_triggers
from pgshift.migrate.fresh_copy import FreshCopy, from_stored, stored_json
from pgshift.migrate.options import MigrateOptions, TableSummary
from pgshift.migrate.sessions import in_sessions, violating_keys
from pgshift.migrate.steps import Steps
from pgshift.progress import Progress
from pgshift.schema import ddl
from pgshift.schema.model import Note, Table, qident
from pgshift.schema.plan import Plan, build_plan, select_tables
from pgshift.source.catalog import Catalog, read_catalog
from pgshift.source.profile import profile_tables, sample_tables
from pgshift.source.snapshot import Snapshot


class FreshLoad:
    """The ``LoadPath`` (see ``migrate.run``) that creates the target's tables itself."""

    plans_against_target = False
    privilege_hint = ("grant CREATE on the database (and the schema) to this user, "
                      "or pass --owner ROLE")
    resume_hint = "repeat the first run's --tables/--exclude, or use --restart"
    done_message = "migrated {rows} rows"

    def __init__(self, opts: MigrateOptions) -> None:
        self.opts = opts
        self.done: set[str] = set()  # DDL steps already done by this run (resume skips them)
        self.catalog: Catalog | None = None
        self.sampled: set[str] = set()  # tables planned from a sample (see fresh_copy)
        self.planned_notes = 0
        self.analyzed: set[str] = set()  # tables the copy step already ANALYZEd

    def check_target(self, coord: psycopg.Connection) -> None:
        """Nothing to read first: the plan comes from the source alone."""

    def prepare_target(self, coord: psycopg.Connection) -> None:
        """pgshift's schema, the target schema, and the grants ``--owner`` needs."""
        opts = self.opts
        checkpoint.ensure_schema(coord)
        coord.execute(pgsql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(
            pgsql.Identifier(opts.schema)))
        if not opts.owner:
            return
        exists = coord.execute("SELECT 1 FROM pg_roles WHERE rolname = %s",
                               (opts.owner,)).fetchone()
        if not exists:
            raise UsageError(f"--owner role {opts.owner!r} does not exist",
                             hint=f"CREATE ROLE {opts.owner} (or pass an existing role)")
        ident = pgsql.Identifier(opts.owner)
        coord.execute(pgsql.SQL("GRANT USAGE ON SCHEMA pgshift TO {}").format(ident))
        # The run's own bookkeeping happens under SET ROLE too.
        coord.execute(pgsql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA "
                                "pgshift TO {}").format(ident))
        coord.execute(pgsql.SQL("GRANT CREATE, USAGE ON SCHEMA {} TO {}").format(
            pgsql.Identifier(opts.schema), ident))

    def plan(self, snap: Snapshot, steps: Steps, coord: psycopg.Connection | None) -> Plan:
        """Catalog, profile (one scan per table) and the type decisions."""
        opts = self.opts
        con = snap.connect()
        try:
            catalog = steps.run("catalog", lambda: read_catalog(con))
            chosen = select_tables(catalog, opts.tables, opts.exclude)
            self.catalog = catalog
            stored = (checkpoint.load_profile(coord, opts.schema)
                      if coord is not None and opts.resume else None)
            counts: dict[str, int] = {}
            if stored:
                profiles, self.sampled, counts = from_stored(stored)
            elif coord is not None and not (opts.schema_only or opts.data_only):
                # The copy scan profiles every row (fresh_copy): a sample makes the plan.
                profiles, counts = steps.run("sample", lambda: sample_tables(
                    snap.connect, chosen, opts.jobs))
                self.sampled = {t.name for t in chosen}
            else:
                profiles = steps.run("profile", lambda: profile_tables(snap.connect, chosen,
                                                                       opts.jobs))

            def make() -> Plan:
                built = build_plan(catalog, profiles, schema=opts.schema, tables=chosen,
                                   fill_null_keys=opts.fill_null_keys)
                self.planned_notes = len(built.notes)  # the profile's; the copy may redo them
                return checked_plan(built, opts, coord)

            plan = steps.run("plan", make)
            for t in plan.tables:
                t.rows = counts.get(t.name, t.rows)
            return plan
        finally:
            con.close()

    def before_copy(self, coord: psycopg.Connection, plan: Plan, run: RunRecord,
                    snap: Snapshot, steps: Steps) -> None:
        """The tables (step ``schema``), or with ``--data-only`` a check that they exist."""
        opts = self.opts
        if opts.owner:
            coord.execute(pgsql.SQL("SET ROLE {}").format(pgsql.Identifier(opts.owner)))
        self.done = checkpoint.step_done(coord, run.run_id)
        if not opts.data_only:
            steps.run("schema", lambda: _create_tables(coord, opts, plan, run, self.done))
            return
        existing = _existing_tables(coord, opts.schema)
        missing = [t.pg_name for t in plan.tables if t.pg_name not in existing]
        if missing:
            raise UsageError(f"--data-only: table(s) missing in schema {opts.schema!r}: "
                             f"{', '.join(missing[:5])}",
                             hint="create them first, or run without --data-only")

    def chunk_plan(self, snap: Snapshot, plan: Plan, run: RunRecord
                   ) -> dict[str, list[list[Any]]]:
        """Boundaries every ``batch_size`` keys (rowid, or the WITHOUT ROWID key)."""
        con = snap.connect()
        try:
            return {t.name: [[encode_bound(c.lo), encode_bound(c.hi)]
                             for c in plan_chunks(con, t.source, self.opts.batch_size)]
                    for t in plan.tables}
        finally:
            con.close()

    def stored_profile(self, plan: Plan) -> Any:
        """The source profile: verify and sync reuse its type decisions."""
        return stored_json(plan.profiles, self.sampled, {t.name: t.rows for t in plan.tables})

    def copy(self, coord: psycopg.Connection, plan: Plan, snap: Snapshot, run: RunRecord,
             summaries: dict[str, TableSummary], progress: Progress) -> None:
        """Every chunk not yet committed, largest tables first; keys as tables finish."""
        assert self.catalog is not None
        step = FreshCopy(coord, self.opts, plan, self.catalog, self.sampled, snap, run,
                         summaries, progress, post_load_table, self.planned_notes)
        step.run_copy()
        self.analyzed = step.analyzed

    def after_copy(self, coord: psycopg.Connection, plan: Plan, run: RunRecord,
                   steps: Steps) -> list[Note]:
        """Keys and indexes, constraints (unless ``--data-only``), then ``finish``."""
        opts = self.opts
        violations: list[Note] = []
        if not opts.data_only:
            violations = steps.run("keys and indexes", lambda: _post_load(opts, plan, run))
            violations += steps.run("constraints",
                                    lambda: _constraints(coord, opts, plan, run, self.done))
        steps.run("finish", lambda: _finish(coord, opts, plan, run, self.done, self.analyzed))
        return violations

    def cleanup(self, run: RunRecord) -> None:
        """Nothing: the fresh load leaves no scratch behind."""


def _existing_tables(conn: psycopg.Connection, schema: str) -> set[str]:
    rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,))
    return {r[0] for r in rows}


def _exec_step(conn: psycopg.Connection, run_id: str, done: set[str], statement: str) -> bool:
    """Run one DDL statement and record it in the same transaction; skip if done."""
    key = checkpoint.step_key(statement)
    if key in done:
        return False
    with conn.transaction():
        conn.execute(statement)
        checkpoint.record_step(conn, run_id, statement)
    done.add(key)
    return True


def _create_tables(conn: psycopg.Connection, opts: MigrateOptions, plan: Plan, run: RunRecord,
                   done: set[str]) -> None:
    existing = _existing_tables(conn, opts.schema)
    clash = [t.pg_name for t in plan.tables if t.pg_name in existing]
    fresh = run.status == "new"
    if clash and fresh:
        if not (opts.drop or opts.restart):
            raise UsageError(
                f"table(s) already exist in schema {opts.schema!r}: {', '.join(clash[:5])}"
                + (" ..." if len(clash) > 5 else ""),
                hint="add --drop to replace them, or --data-only to load into them")
        with conn.transaction():
            for v in plan.views:
                conn.execute(f"DROP VIEW IF EXISTS {ddl.qualified(opts.schema, v.name)} CASCADE")
            for name in clash:
                conn.execute(f"DROP TABLE IF EXISTS {ddl.qualified(opts.schema, name)} CASCADE")
    for t in plan.tables:
        _exec_step(conn, run.run_id, done, ddl.create_table(opts.schema, t))
        for stmt in ddl.defaults(opts.schema, t):
            try:
                _exec_step(conn, run.run_id, done, stmt)
            except _REFUSED as exc:
                plan.notes.append(Note("untranslated", t.name, f"{_short_stmt(stmt)} refused by "
                                       f"PostgreSQL: {exc.diag.message_primary}"))


_REFUSED = (psycopg.errors.SyntaxError, psycopg.errors.UndefinedFunction,
            psycopg.errors.DatatypeMismatch, psycopg.errors.UndefinedColumn,
            psycopg.errors.InvalidObjectDefinition, psycopg.errors.InvalidForeignKey,
            psycopg.errors.InvalidTextRepresentation, psycopg.errors.UndefinedTable,
            psycopg.errors.UndefinedObject, psycopg.errors.InvalidDatetimeFormat,
            psycopg.errors.InvalidParameterValue)


def _post_load(opts: MigrateOptions, plan: Plan, run: RunRecord) -> list[Note]:
    """PKs, UNIQUEs and indexes, tables in parallel (each table's statements in order).

    A key PostgreSQL cannot build (values that were distinct in SQLite became
    equal, e.g. 1 and '1' in an untyped column) is a violation: exit code 3.
    """

    order = sorted(plan.tables, key=lambda t: -t.rows)
    violations: list[Note] = []
    for notes in in_sessions(opts, order, lambda conn, t: post_load_table(conn, opts,
                                                                          run.run_id, t)):
        plan.notes.extend(n for n in notes if n.level != "violation")
        violations.extend(n for n in notes if n.level == "violation")
    return violations


def post_load_table(conn: psycopg.Connection, opts: MigrateOptions, run_id: str,
                    t: Table) -> list[Note]:
    """One table's primary key, UNIQUEs and indexes in order (done ones skipped); the notes."""
    notes: list[Note] = []
    done = checkpoint.step_done(conn, run_id)
    stmts = [s for s in ddl.post_load_statements(opts.schema, t)
             if " CHECK (" not in s and " FOREIGN KEY " not in s]
    for stmt in stmts:
        try:
            _exec_step(conn, run_id, done, stmt)
        except psycopg.errors.UniqueViolation as exc:
            notes.append(Note("violation", t.name, f"{_short_stmt(stmt)} failed: "
                              f"{exc.diag.message_primary}; {exc.diag.message_detail}"))
        except _REFUSED as exc:
            notes.append(Note("untranslated", t.name, f"{_short_stmt(stmt)} refused by "
                              f"PostgreSQL: {exc.diag.message_primary}"))
    return notes


def _short_stmt(stmt: str) -> str:
    return " ".join(stmt.split())[:160]


def _constraints(conn: psycopg.Connection, opts: MigrateOptions, plan: Plan, run: RunRecord,
                 done: set[str]) -> list[Note]:
    """CHECKs and FKs NOT VALID, then VALIDATE in parallel; violations reported with keys."""
    for t in plan.tables:
        for stmt in ddl.post_load_statements(opts.schema, t):
            if " CHECK (" not in stmt and " FOREIGN KEY " not in stmt:
                continue
            try:
                _exec_step(conn, run.run_id, done, stmt)
            except _REFUSED as exc:
                plan.notes.append(Note("untranslated", t.name, f"{_short_stmt(stmt)} refused "
                                       f"by PostgreSQL: {exc.diag.message_primary}"))
    rels = [ddl.qualified(opts.schema, t.pg_name) for t in plan.tables]
    rows = conn.execute(
        "SELECT c.conrelid::regclass::text, c.conname, c.contype FROM pg_constraint c "
        "WHERE c.conrelid = ANY(%s::regclass[]) AND NOT c.convalidated "
        "AND c.contype IN ('c', 'f') ORDER BY c.contype DESC",
        (rels,)).fetchall()

    def validate(session: psycopg.Connection, item: tuple[str, str, str]) -> Note | None:
        rel, conname, contype = item
        try:
            session.execute(f"ALTER TABLE {rel} VALIDATE CONSTRAINT {qident(conname)}")
        except (psycopg.errors.ForeignKeyViolation, psycopg.errors.CheckViolation) as exc:
            keys = violating_keys(session, rel, conname, contype)
            kind = "foreign key" if contype == "f" else "check"
            return Note("violation", rel, f"{kind} {conname} left NOT VALID (enforced for new "
                        f"rows): {exc.diag.message_primary}; rows: {keys}")
        return None

    return [n for n in in_sessions(opts, [tuple(r) for r in rows], validate) if n is not None]


def _finish(conn: psycopg.Connection, opts: MigrateOptions, plan: Plan, run: RunRecord,
            done: set[str], analyzed: set[str]) -> None:
    for t in plan.tables:
        if t.identity_column and not opts.schema_only:
            col = qident(t.pg(t.identity_column))
            max_row = conn.execute(
                f"SELECT max({col}) FROM {ddl.qualified(opts.schema, t.pg_name)}").fetchone()
            # An aggregate always returns one row; NULL means an empty table.
            current = (max_row[0] if max_row is not None else None) or 0
            # Never reuse an id: restart past both max(id) and AUTOINCREMENT's high mark.
            start = max(int(current), t.sequence_floor) + 1
            with conn.transaction():
                conn.execute(f"ALTER TABLE {ddl.qualified(opts.schema, t.pg_name)} ALTER COLUMN "
                             f"{col} RESTART WITH {start}")
    if not opts.data_only:
        for v in plan.views:
            try:
                _exec_step(conn, run.run_id, done, ddl.create_view(opts.schema, v))
            except psycopg.errors.DuplicateTable:
                pass
            except psycopg.Error as exc:
                plan.notes.append(Note("untranslated", v.name, f"view refused by PostgreSQL: "
                                       f"{exc.diag.message_primary}"))
        create_triggers(conn, plan, lambda stmt: _exec_step(conn, run.run_id, done, stmt))
    if opts.analyze and not opts.schema_only:
        in_sessions(opts, [t for t in plan.tables if t.name not in analyzed],
                    lambda session, t: session.execute(
            f"ANALYZE {ddl.qualified(opts.schema, t.pg_name)}"), role=False)
