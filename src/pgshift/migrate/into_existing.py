"""The load into a schema the application created (``pgshift migrate --into-existing``).

Steps (``migrate()`` runs them, logged and timed like the fresh load's; same
snapshot, run record, checkpoints, rejects, resume and progress):

1. snapshot      online backup of the source (given, or the recorded one on --resume)
2. catalog       the source's tables and the target's (pg_catalog)
3. plan          per target column: source expression, conversion, anomalies
                 (``--dry-run`` stops here); bad mappings fail here, before any row
4. prepare       empty-target check (or --truncate); query sources were materialized
                 into the scratch file by the plan (a resumed run reuses that file)
5. copy          the fresh load's COPY pipeline over the mapped rows
6. indexes       the plain indexes set aside for the load rebuilt (existing/indexes.py)
7. foreign keys  orphans reported with their keys (the load ran with FK triggers off)
8. finish        identity/serial sequences moved past max(), ANALYZE, rejects file
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import psycopg

from pgshift.copy.checkpoint import RunRecord, ensure_schema
from pgshift.copy.chunks import encode_bound, plan_chunks
from pgshift.copy.pipeline import CopyJob, TableSql, run_copy
from pgshift.errors import UsageError
from pgshift.existing import indexes, sqlfuncs
from pgshift.existing.mapping import Mapping, load_mapping
from pgshift.existing.plan import SCRATCH, MappedPlan, build_mapped_plan, q, scratch_name
from pgshift.existing.target import TargetTable, load_order, read_target
from pgshift.existing.verify_plan import stored_plan
from pgshift.migrate.copying import ChunkCounter, pending_chunks
from pgshift.migrate.options import MigrateOptions, TableSummary
from pgshift.migrate.sessions import in_sessions, session_sql, violating_keys
from pgshift.migrate.steps import Steps
from pgshift.progress import Progress
from pgshift.schema.ddl import qualified
from pgshift.schema.model import Note, qident
from pgshift.source.catalog import SourceTable, read_catalog
from pgshift.source.snapshot import Snapshot
from pgshift.state import StateDir


class IntoExistingLoad:
    """The ``LoadPath`` (see ``migrate.run``) into the tables the app's migrations made."""

    plans_against_target = True
    privilege_hint = ("grant INSERT (and TRUNCATE for --truncate) on the tables, and "
                      "CREATE on the database for pgshift's own schema")
    resume_hint = "repeat the first run's mapping and --tables/--exclude, or use --restart"
    done_message = "loaded {rows} rows into existing tables"

    def __init__(self, opts: MigrateOptions, state: StateDir) -> None:
        self.opts, self.state = opts, state
        self.mapping = load_mapping(opts.mapping) if opts.mapping else Mapping()
        self._scratch: Path | None = None

    def scratch(self, run: RunRecord) -> Path:
        """Where the plan materialized query sources (one pass instead of one per chunk)."""
        return self._scratch or self.state.root / f"scratch-{run.run_id}.db"

    def check_target(self, coord: psycopg.Connection) -> None:
        """The target schema must exist: the application's migrations made it."""
        _require_schema(coord, self.opts.schema)

    def prepare_target(self, coord: psycopg.Connection) -> None:
        """pgshift's own schema (run record, checkpoints); the app's is left as it is."""
        ensure_schema(coord)

    def plan(self, snap: Snapshot, steps: Steps, coord: psycopg.Connection | None
             ) -> MappedPlan:
        """Both catalogs, then per target column its feed, conversion and anomalies."""
        assert coord is not None  # plans_against_target: the skeleton always connects
        opts = self.opts
        con = open_mapped(snap)
        try:
            catalog = steps.run("catalog", lambda: read_catalog(con))
            target = read_target(coord, opts.schema)
            if not target:
                raise UsageError(f"--into-existing: schema {opts.schema!r} has no tables",
                                 hint="run the application's migrations against the target "
                                      "first")
            # Named by the snapshot and the queries: a resumed run (same snapshot) reuses
            # the file its first run made, whose rowid ranges its chunks are.
            scratch = self.state.root / (("dry-run-" if opts.dry_run else "")
                                         + scratch_name(snap.path.stem, self.mapping))
            self._scratch = scratch
            try:
                return steps.run("plan", lambda: build_mapped_plan(
                    lambda: open_mapped(snap, scratch), catalog, target, self.mapping,
                    schema=opts.schema, tables=opts.tables, exclude=opts.exclude,
                    assume_tz=opts.assume_tz, jobs=opts.jobs, json_check=opts.dry_run,
                    strict=opts.strict, pg=coord, scratch=scratch))
            finally:
                if opts.dry_run:
                    scratch.unlink(missing_ok=True)
        finally:
            con.close()

    def before_copy(self, coord: psycopg.Connection, plan: MappedPlan, run: RunRecord,
                    snap: Snapshot, steps: Steps) -> None:
        """A new run: step ``prepare`` (empty targets, indexes set aside, scratch)."""
        if run.status == "new":
            steps.run("prepare", lambda: _prepare(coord, self.opts, plan, snap,
                                                  self.scratch(run)))

    def chunk_plan(self, snap: Snapshot, plan: MappedPlan, run: RunRecord
                   ) -> dict[str, list[list[Any]]]:
        """Boundaries over each feed (the source table, or the materialized query)."""
        con = open_mapped(snap, self.scratch(run))
        try:
            out: dict[str, list[list[Any]]] = {}
            for t in plan.tables:
                src = t.source or SourceTable(t.scratch_table, "", [], [])
                out[t.name] = [[encode_bound(c.lo), encode_bound(c.hi)] for c in plan_chunks(
                    con, src, self.opts.batch_size, from_sql=t.from_sql(materialized=True))]
            return out
        finally:
            con.close()

    def stored_profile(self, plan: MappedPlan) -> Any:
        """Each table's feeds and conversions: verify and sync rebuild the mapping from it."""
        return stored_plan([t.stored() for t in plan.tables])

    def copy(self, coord: psycopg.Connection, plan: MappedPlan, snap: Snapshot,
             run: RunRecord, summaries: dict[str, TableSummary], progress: Progress) -> None:
        """The mapped rows through the COPY pipeline, FK triggers off when the role may."""
        opts = self.opts
        pending = pending_chunks(coord, run, ((t.name, t.rows, t.key_columns())
                                              for t in plan.tables), summaries, progress)
        by_name = {t.name: t for t in plan.tables}
        tables = {t.name: TableSql.build(opts.schema, t.as_table(), t.row_source())
                  for t in plan.tables}
        session = session_sql(opts.schema)
        # The application's foreign keys are enforced by triggers: with them off,
        # chunks of children and parents load in any order, in parallel; orphans are
        # then found by one query per foreign key (step "foreign keys").
        replica = _may_skip_fk_triggers(coord)
        if replica:
            session = [*session, "SET session_replication_role = replica"]
            levels = [list(by_name.values())]
        else:
            levels = [[by_name[t.name] for t in level]
                      for level in load_order([t.target for t in plan.tables])]
        scratch = self.scratch(run)
        job = CopyJob(opts.schema, run.run_id, opts.dsn, lambda: open_mapped(snap, scratch),
                      tables, session, ChunkCounter(summaries, progress))
        for level in levels:
            chunks = [c for t in sorted(level, key=lambda t: -t.rows)
                      for c in pending.get(t.name, [])]
            if chunks:
                run_copy(job, chunks, opts.jobs)

    def after_copy(self, coord: psycopg.Connection, plan: MappedPlan, run: RunRecord,
                   steps: Steps) -> list[Note]:
        """Indexes set aside rebuilt, orphans reported, sequences moved, ANALYZE."""
        opts = self.opts
        saved = indexes.recorded(coord, opts.schema)
        if saved:
            steps.run("indexes", lambda: indexes.rebuild(
                opts.schema, saved, lambda items, fn: in_sessions(opts, items, fn)))
        violations = steps.run("foreign keys", lambda: _check_foreign_keys(opts, plan))
        steps.run("finish", lambda: _finish(coord, opts, plan))
        return violations

    def cleanup(self, run: RunRecord) -> None:
        """The scratch file of materialized queries."""
        self.scratch(run).unlink(missing_ok=True)


def _require_schema(conn: psycopg.Connection, schema: str) -> None:
    if conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone():
        return
    raise UsageError(f"--into-existing: schema {schema!r} does not exist in the target",
                     hint="run the application's migrations first (e.g. `python manage.py "
                          "migrate`), or drop --into-existing to let pgshift create the schema")


def open_mapped(snap: Snapshot, scratch: Path | None = None) -> sqlite3.Connection:
    """A snapshot connection with the mapping helper functions (and the scratch file)."""
    con = sqlfuncs.register(snap.connect())
    if scratch is not None and scratch.exists():
        con.execute(f"ATTACH DATABASE 'file:{scratch}?mode=ro' AS {SCRATCH}")
    return con


def _prepare(conn: psycopg.Connection, opts: MigrateOptions, plan: MappedPlan, snap: Snapshot,
             scratch: Path) -> None:
    """Refuse to mix with rows already there (or TRUNCATE them); materialize queries."""
    full = [t.name for t in plan.tables
            if _scalar(conn, f"SELECT EXISTS (SELECT 1 FROM {qualified(opts.schema, t.name)})")]
    if full and not opts.truncate:
        raise UsageError(f"--into-existing: table(s) already hold rows: {', '.join(full[:5])}"
                         + (" ..." if len(full) > 5 else ""),
                         hint="add --truncate to empty them first (the rows the application's "
                              "migrations seeded are replaced by the source's), or --exclude "
                              "them")
    if opts.truncate:
        # All loaded tables in one statement: PostgreSQL refuses to truncate a parent
        # alone while its children's foreign keys point at it. RESTART IDENTITY: every
        # row is replaced, so ids the identity assigns start again as in the first run.
        rels = ", ".join(qualified(opts.schema, t.name) for t in plan.tables)
        try:
            with conn.transaction():
                conn.execute(f"TRUNCATE {rels} RESTART IDENTITY")
        except psycopg.errors.FeatureNotSupported as exc:
            raise UsageError(f"--truncate: {exc.diag.message_primary}; "
                             f"{exc.diag.message_detail or ''}".strip("; "),
                             hint="empty the referencing table first, or load it too") from exc
    if not opts.keep_indexes:
        indexes.set_aside(conn, opts.schema, [t.name for t in plan.tables])
    queries = [t for t in plan.tables if t.source is None and not t.materialized]
    if not queries:
        return
    scratch.unlink(missing_ok=True)
    con = sqlfuncs.register(snap.connect())
    try:
        con.execute(f"ATTACH DATABASE 'file:{scratch}?mode=rwc' AS {SCRATCH}")
        con.execute(f"PRAGMA {SCRATCH}.journal_mode = OFF")
        con.execute(f"PRAGMA {SCRATCH}.synchronous = OFF")
        for t in queries:
            # One pass of the query (joins, window functions) instead of one per chunk.
            con.execute(f"CREATE TABLE {SCRATCH}.{q(t.scratch_table)} AS {t.query}")
        con.commit()
    except sqlite3.Error as exc:
        raise UsageError(f"mapping {t.name}: the query failed: {exc}") from exc
    finally:
        con.close()


def _scalar(conn: psycopg.Connection, query: str) -> Any:
    row = conn.execute(query).fetchone()
    return None if row is None else row[0]


def _may_skip_fk_triggers(conn: psycopg.Connection) -> bool:
    """True when this role may set session_replication_role (FK triggers off)."""
    try:
        with conn.transaction():
            conn.execute("SET LOCAL session_replication_role = replica")
        return True
    except psycopg.errors.InsufficientPrivilege:
        return False


def _check_foreign_keys(opts: MigrateOptions, plan: MappedPlan) -> list[Note]:
    """Orphans of every foreign key of the loaded tables (with their keys)."""
    items = [(t.target, fk.name) for t in plan.tables for fk in t.target.foreign_keys]

    def check(conn: psycopg.Connection, item: tuple[TargetTable, str]) -> Note | None:
        table, conname = item
        rel = qualified(opts.schema, table.name)
        keys = violating_keys(conn, rel, conname, "f")
        if not keys:
            return None
        return Note("violation", table.name, f"foreign key {conname}: rows without a parent "
                    f"(loaded as they are, the constraint stays as the application made it): "
                    f"{keys}")

    return [n for n in in_sessions(opts, items, check) if n is not None]


def _finish(conn: psycopg.Connection, opts: MigrateOptions, plan: MappedPlan) -> None:
    """Sequences past max() of the loaded values; ANALYZE."""
    for t in plan.tables:
        for c in t.columns:
            seq = c.target.sequence
            if not seq:
                continue
            rel = qualified(opts.schema, t.name)
            top = _scalar(conn, f"SELECT max({qident(c.target.name)}) FROM {rel}")
            if top is None:
                continue
            # Never move a sequence backwards: the app may already have used it.
            conn.execute("SELECT setval(%s::regclass, greatest(%s, coalesce("
                         "pg_sequence_last_value(%s::regclass), 0)))", (seq, int(top), seq))
    if opts.analyze:
        in_sessions(opts, plan.tables, lambda session, t: session.execute(
            f"ANALYZE {qualified(opts.schema, t.name)}"), role=False)
