"""``pgshift migrate --into-existing``: the load into a schema the application created.

Steps (each logged and timed like the base command's; same snapshot, run
record, checkpoints, rejects, resume and progress):

1. snapshot      online backup of the source (or the recorded one on --resume)
2. catalog       the source's tables and the target's (pg_catalog)
3. plan          per target column: source expression, conversion, anomalies
                 (``--dry-run`` stops here); bad mappings fail here, before any row
4. prepare       empty-target check (or --truncate), query sources materialized
5. copy          the base command's COPY pipeline over the mapped rows
6. indexes       the plain indexes set aside for the load rebuilt (existing/indexes.py)
7. foreign keys  orphans reported with their keys (the load ran with FK triggers off)
8. finish        identity/serial sequences moved past max(), ANALYZE, rejects file
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

from pgshift.copy import checkpoint
from pgshift.copy.checkpoint import RunRecord
from pgshift.copy.chunks import Chunk, decode_bound, encode_bound, plan_chunks
from pgshift.copy.pipeline import ChunkResult, CopyJob, TableSql, run_copy
from pgshift.dsn import connect, redact
from pgshift.errors import TargetError, UsageError
from pgshift.existing import indexes, sqlfuncs
from pgshift.existing.mapping import Mapping, load_mapping
from pgshift.existing.plan import (
    SCRATCH,
    MappedPlan,
    MappedTable,
    build_mapped_plan,
    check_reverse,
    q,
)
from pgshift.existing.target import TargetTable, load_order, read_target
from pgshift.existing.verify_plan import stored_plan
from pgshift.progress import NullProgress, Progress
from pgshift.schema.ddl import qualified
from pgshift.schema.model import Note, qident
from pgshift.source.catalog import SourceTable, read_catalog
from pgshift.source.snapshot import Snapshot, take_snapshot
from pgshift.state import StateDir

if TYPE_CHECKING:
    from pgshift.migrate import MigrateOptions, MigrateResult, Steps, TableSummary


def migrate_into_existing(opts: MigrateOptions, progress: Progress | None = None,
                          ) -> MigrateResult:
    """Load the source into the target schema's existing tables (see module doc)."""
    from pgshift import migrate as base

    progress = progress or NullProgress()
    mapping = load_mapping(opts.mapping) if opts.mapping else Mapping()
    t_start = time.perf_counter()
    state = (StateDir(opts.state_dir) if opts.state_dir is not None
             else StateDir.for_name(Path.cwd(), opts.sqlite_path.stem)).ensure()
    steps = base.Steps(progress, state)
    coord = connect(opts.dsn, autocommit=True)
    try:
        _require_schema(coord, opts.schema)
        if opts.dry_run:
            snap = steps.run("snapshot", lambda: take_snapshot(
                opts.sqlite_path, state.snapshots, require_wal=opts.require_wal))
            try:
                plan = _plan(opts, mapping, snap, coord, steps)
            finally:
                snap.path.unlink(missing_ok=True)
                snap.meta_path.unlink(missing_ok=True)
            return base.MigrateResult(plan, None, [base.TableSummary(t.name, t.rows)
                                                   for t in plan.tables],
                                      steps.timings, dry_run=True,
                                      seconds=time.perf_counter() - t_start)
        checkpoint.ensure_schema(coord)
        checkpoint.acquire_lock(coord, opts.schema)
        run, snap = base.start_or_resume(coord, opts, state, steps)
        plan = _plan(opts, mapping, snap, coord, steps)
        if run.status != "new" and set(run.chunks) != {t.name for t in plan.tables}:
            raise UsageError("--resume must load the same tables as the run it continues "
                             f"({', '.join(sorted(run.chunks))})",
                             hint="repeat the first run's mapping and --tables/--exclude, "
                                  "or use --restart")
        for stmt in base.session_sql(opts.schema):
            coord.execute(stmt)
        scratch = state.root / f"scratch-{run.run_id}.db"
        if run.status == "new":
            steps.run("prepare", lambda: _prepare(coord, opts, plan, snap, scratch))
            run.chunks = _chunk_plan(snap, plan, scratch, opts.batch_size)
            checkpoint.start_run(coord, RunRecord(**{**run.__dict__, "status": "copying"}))
            checkpoint.save_profile(coord, run.run_id,
                                    stored_plan([t.stored() for t in plan.tables]))
            run.status = "copying"
        summaries = {t.name: base.TableSummary(t.name, t.rows) for t in plan.tables}
        steps.run("copy", lambda: _copy(opts, plan, snap, scratch, run, summaries, progress,
                                        coord))
        saved = indexes.recorded(coord, opts.schema)
        if saved:
            steps.run("indexes", lambda: indexes.rebuild(
                opts.schema, saved, lambda items, fn: base.in_sessions(opts, items, fn)))
        violations = steps.run("foreign keys", lambda: _check_foreign_keys(opts, plan))
        steps.run("finish", lambda: _finish(coord, opts, plan))
        rejects_file = base.write_rejects(coord, run.run_id, state)
        checkpoint.set_status(coord, run.run_id, "done")
        scratch.unlink(missing_ok=True)
        total_rejects = sum(s.rejects for s in summaries.values())
        result = base.MigrateResult(plan, snap, list(summaries.values()), steps.timings,
                                    total_rejects, violations, rejects_file,
                                    seconds=time.perf_counter() - t_start, run_id=run.run_id,
                                    allow_rejects=opts.allow_rejects)
        state.audit("migrate", "done", f"loaded {result.to_dict()['rows']} rows into existing "
                    "tables", {"rejects": total_rejects, "seconds": round(result.seconds, 3)})
        return result
    except psycopg.errors.InsufficientPrivilege as exc:
        raise UsageError(f"missing privilege on the target: {exc.diag.message_primary}",
                         hint="grant INSERT (and TRUNCATE for --truncate) on the tables, and "
                              "CREATE on the database for pgshift's own schema") from exc
    except psycopg.OperationalError as exc:
        raise TargetError(f"PostgreSQL failed: {redact(str(exc)).strip()}",
                          operation="migrate") from exc
    except psycopg.Error as exc:
        raise TargetError(f"PostgreSQL error: {redact(str(exc)).strip().splitlines()[0]}",
                          operation="migrate") from exc
    finally:
        progress.close()
        coord.close()


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


def _plan(opts: MigrateOptions, mapping: Mapping, snap: Snapshot, conn: psycopg.Connection,
          steps: Steps) -> MappedPlan:
    con = open_mapped(snap)
    try:
        catalog = steps.run("catalog", lambda: read_catalog(con))
        target = read_target(conn, opts.schema)
        if not target:
            raise UsageError(f"--into-existing: schema {opts.schema!r} has no tables",
                             hint="run the application's migrations against the target first")
        plan = steps.run("plan", lambda: build_mapped_plan(
            lambda: open_mapped(snap), catalog, target, mapping, schema=opts.schema,
            tables=opts.tables, exclude=opts.exclude, assume_tz=opts.assume_tz,
            jobs=opts.jobs, json_check=opts.dry_run))
        check_reverse(conn, plan)
        return plan
    finally:
        con.close()


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
    if full:
        # All loaded tables in one statement: PostgreSQL refuses to truncate a parent
        # alone while its children's foreign keys point at it.
        rels = ", ".join(qualified(opts.schema, t.name) for t in plan.tables)
        try:
            with conn.transaction():
                conn.execute(f"TRUNCATE {rels}")
        except psycopg.errors.FeatureNotSupported as exc:
            raise UsageError(f"--truncate: {exc.diag.message_primary}; "
                             f"{exc.diag.message_detail or ''}".strip("; "),
                             hint="empty the referencing table first, or load it too") from exc
    if not opts.keep_indexes:
        indexes.set_aside(conn, opts.schema, [t.name for t in plan.tables])
    queries = [t for t in plan.tables if t.source is None]
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


def _chunk_plan(snap: Snapshot, plan: MappedPlan, scratch: Path, batch: int
                ) -> dict[str, list[list[object]]]:
    con = open_mapped(snap, scratch)
    try:
        out: dict[str, list[list[object]]] = {}
        for t in plan.tables:
            src = t.source or SourceTable(t.scratch_table, "", [], [])
            out[t.name] = [[encode_bound(c.lo), encode_bound(c.hi)] for c in plan_chunks(
                con, src, batch, from_sql=t.from_sql(materialized=True))]
        return out
    finally:
        con.close()


def _may_skip_fk_triggers(conn: psycopg.Connection) -> bool:
    """True when this role may set session_replication_role (FK triggers off)."""
    try:
        with conn.transaction():
            conn.execute("SET LOCAL session_replication_role = replica")
        return True
    except psycopg.errors.InsufficientPrivilege:
        return False


def _copy(opts: MigrateOptions, plan: MappedPlan, snap: Snapshot, scratch: Path,
          run: RunRecord, summaries: dict[str, TableSummary], progress: Progress,
          coord: psycopg.Connection) -> None:
    from pgshift import migrate as base

    done = checkpoint.done_chunks(coord, run.run_id)
    by_name = {t.name: t for t in plan.tables}
    todo: dict[str, list[Chunk]] = {}
    for t in plan.tables:
        key = tuple(t.key_columns())
        already = 0
        for no, (lo, hi) in enumerate(run.chunks.get(t.name, [])):
            if (t.name, no) in done:
                rows, rej = done[(t.name, no)]
                summaries[t.name].rows += rows
                summaries[t.name].rejects += rej
                already += rows + rej
                continue
            todo.setdefault(t.name, []).append(
                Chunk(t.name, no, key, decode_bound(lo), decode_bound(hi)))
        progress.task(t.name, t.rows)
        if already:
            progress.advance(t.name, already)
    tables = {t.name: TableSql.build(opts.schema, t.as_table(), t.row_source())
              for t in plan.tables}
    session = base.session_sql(opts.schema)
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

    def on_chunk(r: ChunkResult) -> None:
        s = summaries[r.table]
        s.rows += r.rows
        s.rejects += r.rejects
        s.bytes += r.nbytes
        s.seconds += r.seconds
        progress.advance(r.table, r.rows + r.rejects)

    job = CopyJob(opts.schema, run.run_id, opts.dsn, lambda: open_mapped(snap, scratch), tables,
                  session, on_chunk)
    for level in levels:
        chunks = [c for t in sorted(level, key=lambda t: -t.rows) for c in todo.get(t.name, [])]
        if chunks:
            run_copy(job, chunks, opts.jobs)


def _check_foreign_keys(opts: MigrateOptions, plan: MappedPlan) -> list[Note]:
    """Orphans of every foreign key of the loaded tables (with their keys)."""
    from pgshift import migrate as base

    items = [(t.target, fk.name) for t in plan.tables for fk in t.target.foreign_keys]

    def check(conn: psycopg.Connection, item: tuple[TargetTable, str]) -> Note | None:
        table, conname = item
        rel = qualified(opts.schema, table.name)
        keys = base.violating_keys(conn, rel, conname, "f")
        if not keys:
            return None
        return Note("violation", table.name, f"foreign key {conname}: rows without a parent "
                    f"(loaded as they are, the constraint stays as the application made it): "
                    f"{keys}")

    return [n for n in base.in_sessions(opts, items, check) if n is not None]


def _finish(conn: psycopg.Connection, opts: MigrateOptions, plan: MappedPlan) -> None:
    """Sequences past max() of the loaded values; ANALYZE."""
    from pgshift import migrate as base

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
        base.in_sessions(opts, plan.tables, lambda session, t: session.execute(
            f"ANALYZE {qualified(opts.schema, t.name)}"), role=False)


__all__ = ["MappedTable", "migrate_into_existing"]
