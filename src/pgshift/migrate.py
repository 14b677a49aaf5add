"""``pgshift migrate``: SQLite -> PostgreSQL, schema and data, exact and resumable.

Steps (each logged as ``STEP n`` with its timing, each idempotent):

1. snapshot   online backup of the source (or the recorded one on --resume)
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

import json
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from psycopg import sql as pgsql

from pgshift.copy import checkpoint
from pgshift.copy.checkpoint import RunRecord
from pgshift.copy.chunks import Chunk, decode_bound, encode_bound, plan_chunks
from pgshift.copy.pipeline import ChunkResult, CopyJob, TableSql, run_copy
from pgshift.dsn import Dsn, connect, redact
from pgshift.errors import ExitCode, PgshiftError, TargetError, UsageError
from pgshift.existing.plan import MappedPlan
from pgshift.progress import NullProgress, Progress
from pgshift.schema import ddl
from pgshift.schema.model import Note, Table, qident
from pgshift.schema.plan import Plan, build_plan, select_tables
from pgshift.source.catalog import read_catalog
from pgshift.source.profile import profile_tables, profiles_to_json
from pgshift.source.snapshot import Snapshot, take_snapshot
from pgshift.state import StateDir, atomic_write

T = TypeVar("T")
R = TypeVar("R")
DEFAULT_BATCH = 50_000  # rows per chunk: ~6 MB of CSV for hyperpage rows; see docs/benchmarks.md


@dataclass
class MigrateOptions:
    """Everything ``pgshift migrate`` can be told."""

    sqlite_path: Path
    dsn: Dsn
    schema: str = "public"
    tables: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    jobs: int = 2
    batch_size: int = DEFAULT_BATCH
    drop: bool = False
    data_only: bool = False
    schema_only: bool = False
    dry_run: bool = False
    resume: bool = False
    restart: bool = False
    allow_rejects: bool = False
    owner: str | None = None
    state_dir: Path | None = None
    require_wal: bool = False
    analyze: bool = True
    # --into-existing: load into the tables the application's migrations created
    into_existing: bool = False
    mapping: Path | None = None
    assume_tz: str | None = None
    truncate: bool = False
    keep_indexes: bool = False  # --into-existing: load with the app's plain indexes in place


@dataclass
class TableSummary:
    name: str
    source_rows: int
    rows: int = 0
    bytes: int = 0
    rejects: int = 0
    seconds: float = 0.0


@dataclass
class MigrateResult:
    """What happened, for the summary table and ``--json``."""

    plan: Plan | MappedPlan
    snapshot: Snapshot | None
    tables: list[TableSummary]
    steps: list[tuple[str, float]]
    rejects: int = 0
    violations: list[Note] = field(default_factory=list)
    rejects_file: Path | None = None
    dry_run: bool = False
    seconds: float = 0.0
    run_id: str | None = None
    allow_rejects: bool = False

    @property
    def exit_code(self) -> ExitCode:
        if (self.rejects or self.violations) and not self.allow_rejects:
            return ExitCode.REJECTS
        return ExitCode.OK

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.exit_code == ExitCode.OK,
            "exit_code": int(self.exit_code),
            "dry_run": self.dry_run,
            "run_id": self.run_id,
            "seconds": round(self.seconds, 3),
            "rows": sum(t.rows for t in self.tables),
            "rejects": self.rejects,
            "rejects_file": str(self.rejects_file) if self.rejects_file else None,
            "snapshot": self.snapshot.to_dict() if self.snapshot else None,
            "steps": [{"step": s, "seconds": round(d, 3)} for s, d in self.steps],
            "tables": [t.__dict__ for t in self.tables],
            "violations": [n.to_dict() for n in self.violations],
            "plan": self.plan.to_dict() if self.dry_run else None,
            "notes": [n.to_dict() for n in self.plan.notes],
        }


class Steps:
    def __init__(self, progress: Progress, state: StateDir) -> None:
        self.progress, self.state = progress, state
        self.timings: list[tuple[str, float]] = []

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        self.progress.step(name)
        t0 = time.perf_counter()
        self.state.audit("migrate", "step.start", name)
        result = fn()
        took = time.perf_counter() - t0
        self.timings.append((name, took))
        self.state.audit("migrate", "step.done", name, {"seconds": round(took, 3)})
        return result


def session_sql(schema: str) -> list[str]:
    """Settings every loading session uses (why: see docs/architecture.md#sessions)."""
    return [
        "SET statement_timeout = 0",
        "SET lock_timeout = 0",
        "SET idle_in_transaction_session_timeout = 0",
        "SET synchronous_commit = off",
        "SET client_encoding = 'UTF8'",
        "SET datestyle = 'ISO, YMD'",
        "SET timezone = 'UTC'",
        "SET maintenance_work_mem = '256MB'",
        pgsql.SQL("SET search_path = {}, pg_catalog").format(pgsql.Identifier(schema)).as_string(),
    ]


def migrate(opts: MigrateOptions, progress: Progress | None = None) -> MigrateResult:
    """Run the whole migration (or print its plan with ``dry_run``)."""
    progress = progress or NullProgress()
    _validate(opts)
    if opts.into_existing:
        from pgshift.existing.run import migrate_into_existing

        return migrate_into_existing(opts, progress)
    t_start = time.perf_counter()
    state = (StateDir(opts.state_dir) if opts.state_dir is not None
             else StateDir.for_name(Path.cwd(), opts.sqlite_path.stem)).ensure()
    steps = Steps(progress, state)

    if opts.dry_run:
        snap = steps.run("snapshot", lambda: take_snapshot(opts.sqlite_path, state.snapshots,
                                                           require_wal=opts.require_wal))
        try:
            plan = _make_plan(opts, snap, steps)
        finally:
            snap.path.unlink(missing_ok=True)
            snap.meta_path.unlink(missing_ok=True)
        return MigrateResult(plan, None, [TableSummary(t.name, t.rows) for t in plan.tables],
                             steps.timings, dry_run=True, seconds=time.perf_counter() - t_start)

    coord = connect(opts.dsn, autocommit=True)
    try:
        _prepare_target(coord, opts)
        checkpoint.acquire_lock(coord, opts.schema)
        run, snap = start_or_resume(coord, opts, state, steps)
        plan = _make_plan(opts, snap, steps)
        if run.status != "new" and set(run.chunks) != {t.name for t in plan.tables}:
            raise UsageError(
                "--resume must copy the same tables as the run it continues "
                f"({', '.join(sorted(run.chunks))})",
                hint="repeat the first run's --tables/--exclude, or use --restart")
        for stmt in session_sql(opts.schema):
            coord.execute(stmt)
        if opts.owner:
            coord.execute(pgsql.SQL("SET ROLE {}").format(pgsql.Identifier(opts.owner)))
        done_steps = checkpoint.step_done(coord, run.run_id)
        if opts.data_only:
            existing = _existing_tables(coord, opts.schema)
            missing = [t.name for t in plan.tables if t.name not in existing]
            if missing:
                raise UsageError(f"--data-only: table(s) missing in schema {opts.schema!r}: "
                                 f"{', '.join(missing[:5])}",
                                 hint="create them first, or run without --data-only")
        else:
            steps.run("schema", lambda: _create_tables(coord, opts, plan, run, done_steps))
        if run.status == "new":
            run.chunks = _chunk_plan(snap, plan, opts)
            checkpoint.start_run(coord, RunRecord(**{**run.__dict__, "status": "copying"}))
            checkpoint.save_profile(coord, run.run_id, profiles_to_json(plan.profiles))
            run.status = "copying"
        summaries = {t.name: TableSummary(t.name, t.rows) for t in plan.tables}
        if not opts.schema_only:
            steps.run("copy", lambda: _copy(opts, plan, snap, run, summaries, progress, coord))
        violations: list[Note] = []
        if not opts.data_only:
            violations = steps.run("keys and indexes", lambda: _post_load(opts, plan, run))
            violations += steps.run("constraints",
                                    lambda: _constraints(coord, opts, plan, run, done_steps))
        steps.run("finish", lambda: _finish(coord, opts, plan, run, done_steps))
        rejects_file = write_rejects(coord, run.run_id, state)
        checkpoint.set_status(coord, run.run_id, "done")
        total_rejects = sum(s.rejects for s in summaries.values())
        result = MigrateResult(plan, snap, list(summaries.values()), steps.timings,
                               total_rejects, violations, rejects_file,
                               seconds=time.perf_counter() - t_start, run_id=run.run_id,
                               allow_rejects=opts.allow_rejects)
        state.audit("migrate", "done", f"migrated {result.to_dict()['rows']} rows",
                    {"rejects": total_rejects, "seconds": round(result.seconds, 3)})
        return result
    except psycopg.errors.InsufficientPrivilege as exc:
        raise UsageError(f"missing privilege on the target: {exc.diag.message_primary}",
                         hint="grant CREATE on the database (and the schema) to this user, "
                              "or pass --owner ROLE") from exc
    except psycopg.OperationalError as exc:
        raise TargetError(f"PostgreSQL failed: {redact(str(exc)).strip()}",
                          operation="migrate") from exc
    except psycopg.Error as exc:
        raise TargetError(f"PostgreSQL error: {redact(str(exc)).strip().splitlines()[0]}",
                          operation="migrate") from exc
    finally:
        progress.close()
        coord.close()


def _validate(opts: MigrateOptions) -> None:
    if opts.data_only and opts.schema_only:
        raise UsageError("--data-only and --schema-only exclude each other",
                         hint="pick one; without either, migrate copies schema and data")
    if opts.resume and opts.restart:
        raise UsageError("--resume and --restart exclude each other")
    if not opts.into_existing:
        given = [n for n, v in (("--map", opts.mapping), ("--assume-tz", opts.assume_tz),
                                ("--truncate", opts.truncate),
                                ("--keep-indexes", opts.keep_indexes)) if v]
        if given:
            raise UsageError(f"{', '.join(given)} need(s) --into-existing",
                             hint="pgshift migrate SQLITE PG --into-existing --map mapping.yaml")
    elif opts.drop or opts.data_only or opts.schema_only or opts.owner:
        raise UsageError("--into-existing loads into the application's own tables: it takes no "
                         "--drop, --data-only, --schema-only or --owner",
                         hint="use --truncate to empty the target tables first")
    if opts.jobs < 1 or opts.jobs > 64:
        raise UsageError(f"--jobs must be between 1 and 64, not {opts.jobs}",
                         hint="--jobs 2 (one per core is a good start)")
    if opts.batch_size < 100:
        raise UsageError(f"--batch-size must be at least 100 rows, not {opts.batch_size}",
                         hint=f"--batch-size {DEFAULT_BATCH}")
    from pgshift.source.snapshot import check_sqlite_file

    check_sqlite_file(opts.sqlite_path)


def _prepare_target(conn: psycopg.Connection, opts: MigrateOptions) -> None:
    checkpoint.ensure_schema(conn)
    conn.execute(pgsql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(pgsql.Identifier(opts.schema)))
    if opts.owner:
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (opts.owner,)).fetchone()
        if not exists:
            raise UsageError(f"--owner role {opts.owner!r} does not exist",
                             hint=f"CREATE ROLE {opts.owner} (or pass an existing role)")
        ident = pgsql.Identifier(opts.owner)
        conn.execute(pgsql.SQL("GRANT USAGE ON SCHEMA pgshift TO {}").format(ident))
        # The run's own bookkeeping happens under SET ROLE too.
        conn.execute(pgsql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA "
                               "pgshift TO {}").format(ident))
        conn.execute(pgsql.SQL("GRANT CREATE, USAGE ON SCHEMA {} TO {}").format(
            pgsql.Identifier(opts.schema), ident))


def start_or_resume(conn: psycopg.Connection, opts: MigrateOptions, state: StateDir,
                     steps: Steps) -> tuple[RunRecord, Snapshot]:
    existing = checkpoint.load_run(conn, opts.schema)
    if existing and existing.status != "done" and not (opts.resume or opts.restart):
        raise UsageError(
            f"an earlier migrate into schema {opts.schema!r} did not finish "
            f"(run {existing.run_id}, status {existing.status})",
            hint="pgshift migrate ... --resume to continue it, or --restart to start over")
    if opts.resume:
        if existing is None:
            raise UsageError(f"nothing to resume: no earlier migrate into schema {opts.schema!r}",
                             hint="run without --resume")
        if existing.status == "done":
            raise UsageError(f"the last migrate into schema {opts.schema!r} already finished",
                             hint="use --restart --drop to migrate again")
        snap = steps.run("snapshot (resumed)", lambda: Snapshot.load(
            Path(existing.snapshot).with_suffix(".json")))
        if Path(existing.source) != opts.sqlite_path.resolve():
            raise UsageError(f"the run to resume copied {existing.source}, not {opts.sqlite_path}")
        return existing, snap
    if existing and opts.restart:
        checkpoint.forget_run(conn, existing.run_id)
    snap = steps.run("snapshot", lambda: take_snapshot(opts.sqlite_path, state.snapshots,
                                                       require_wal=opts.require_wal))
    state.audit("migrate", "snapshot", f"snapshot {snap.path}",
                {"bytes": snap.bytes, "hwm": snap.hwm, "seconds": snap.seconds})
    run = RunRecord(opts.schema, uuid.uuid4().hex, str(opts.sqlite_path.resolve()),
                    str(snap.path), snap.hwm, "new", {}, snap.capture_id)
    return run, snap


def _make_plan(opts: MigrateOptions, snap: Snapshot, steps: Steps) -> Plan:
    con = snap.connect()
    try:
        catalog = steps.run("catalog", lambda: read_catalog(con))
        chosen = select_tables(catalog, opts.tables, opts.exclude)
        profiles = steps.run("profile", lambda: profile_tables(snap.connect, chosen, opts.jobs))
        return steps.run("plan", lambda: build_plan(catalog, profiles, schema=opts.schema,
                                                    tables=chosen))
    finally:
        con.close()


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
    clash = [t.name for t in plan.tables if t.name in existing]
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


def _chunk_plan(snap: Snapshot, plan: Plan, opts: MigrateOptions) -> dict[str, list[list[Any]]]:
    con = snap.connect()
    try:
        out: dict[str, list[list[Any]]] = {}
        for t in plan.tables:
            out[t.name] = [[encode_bound(c.lo), encode_bound(c.hi)]
                           for c in plan_chunks(con, t.source, opts.batch_size)]
        return out
    finally:
        con.close()


def _copy(opts: MigrateOptions, plan: Plan, snap: Snapshot, run: RunRecord,
          summaries: dict[str, TableSummary], progress: Progress,
          coord: psycopg.Connection) -> None:
    done = checkpoint.done_chunks(coord, run.run_id)
    from pgshift.copy.chunks import key_columns

    todo: list[Chunk] = []
    for t in plan.tables:
        key = tuple(key_columns(t.source))
        bounds = run.chunks.get(t.name, [])
        already = 0
        for no, (lo, hi) in enumerate(bounds):
            if (t.name, no) in done:
                rows, rej = done[(t.name, no)]
                summaries[t.name].rows += rows
                summaries[t.name].rejects += rej
                already += rows + rej
                continue
            todo.append(Chunk(t.name, no, key, decode_bound(lo), decode_bound(hi)))
        progress.task(t.name, t.rows)
        if already:
            progress.advance(t.name, already)
    # Largest tables first so the last chunks of small tables fill the tail.
    size = {t.name: t.rows for t in plan.tables}
    todo.sort(key=lambda c: (-size[c.table], c.no))
    tables = {t.name: TableSql.build(opts.schema, t) for t in plan.tables}

    def on_chunk(r: ChunkResult) -> None:
        s = summaries[r.table]
        s.rows += r.rows
        s.rejects += r.rejects
        s.bytes += r.nbytes
        s.seconds += r.seconds
        progress.advance(r.table, r.rows + r.rejects)

    job = CopyJob(opts.schema, run.run_id, opts.dsn, snap.connect, tables,
                  session_sql(opts.schema), on_chunk)
    run_copy(job, todo, opts.jobs)


def in_sessions(opts: MigrateOptions, items: list[T], fn: Callable[[psycopg.Connection, T], R],
                 *, role: bool = True) -> list[R]:
    """Run ``fn(conn, item)`` for each item on ``opts.jobs`` threads, one session each.

    Post-load work is one statement per object, each run by its own backend:
    parallel sessions are how the index builds and validations use every core.
    """
    local = threading.local()
    opened: list[psycopg.Connection] = []
    lock = threading.Lock()

    def session() -> psycopg.Connection:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = connect(opts.dsn, autocommit=True)
            for stmt in session_sql(opts.schema):
                conn.execute(stmt)
            if role and opts.owner:
                conn.execute(pgsql.SQL("SET ROLE {}").format(pgsql.Identifier(opts.owner)))
            local.conn = conn
            with lock:
                opened.append(conn)
        return conn

    try:
        with ThreadPoolExecutor(max_workers=opts.jobs) as pool:
            return list(pool.map(lambda item: fn(session(), item), items))
    finally:
        for conn in opened:
            conn.close()


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

    def work(conn: psycopg.Connection, t: Table) -> list[Note]:
        notes: list[Note] = []
        done = checkpoint.step_done(conn, run.run_id)
        stmts = [s for s in ddl.post_load_statements(opts.schema, t)
                 if " CHECK (" not in s and " FOREIGN KEY " not in s]
        for stmt in stmts:
            try:
                _exec_step(conn, run.run_id, done, stmt)
            except psycopg.errors.UniqueViolation as exc:
                notes.append(Note("violation", t.name, f"{_short_stmt(stmt)} failed: "
                                  f"{exc.diag.message_primary}; {exc.diag.message_detail}"))
            except _REFUSED as exc:
                notes.append(Note("untranslated", t.name, f"{_short_stmt(stmt)} refused by "
                                  f"PostgreSQL: {exc.diag.message_primary}"))
        return notes

    order = sorted(plan.tables, key=lambda t: -t.rows)
    violations: list[Note] = []
    for notes in in_sessions(opts, order, work):
        plan.notes.extend(n for n in notes if n.level != "violation")
        violations.extend(n for n in notes if n.level == "violation")
    return violations


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
    rels = [ddl.qualified(opts.schema, t.name) for t in plan.tables]
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


def violating_keys(conn: psycopg.Connection, rel: str, conname: str, contype: str) -> str:
    """Up to 10 keys of rows breaking a constraint, for the report."""
    row = conn.execute(
        "SELECT pg_get_constraintdef(c.oid), "
        "(SELECT array_agg(a.attname ORDER BY k.ord) FROM unnest(c.conkey) WITH ORDINALITY "
        " k(attnum, ord) JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum), "
        "c.confrelid::regclass::text, "
        "(SELECT array_agg(a.attname ORDER BY k.ord) FROM unnest(c.confkey) WITH ORDINALITY "
        " k(attnum, ord) JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.attnum) "
        "FROM pg_constraint c WHERE c.conname = %s AND c.conrelid = %s::regclass",
        (conname, rel)).fetchone()
    if row is None:
        return "?"
    definition, cols, parent, pcols = row
    pk_row = conn.execute(
        "SELECT array_agg(a.attname ORDER BY array_position(i.indkey, a.attnum)) FROM pg_index i "
        "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
        "WHERE i.indrelid = %s::regclass AND i.indisprimary", (rel,)).fetchone()
    # An aggregate always returns one row: NULL (no primary key) falls back to ctid.
    pk = (pk_row[0] if pk_row is not None else None) or ["ctid"]
    key_sql = ", ".join(qident(c) if c != "ctid" else "ctid::text" for c in pk)
    if contype == "f":
        match = " AND ".join(f"p.{qident(pc)} = t.{qident(c)}" for c, pc in zip(cols, pcols,
                                                                               strict=True))
        notnull = " AND ".join(f"t.{qident(c)} IS NOT NULL" for c in cols)
        keys = ", ".join("t." + k for k in key_sql.split(", "))
        query = (f"SELECT {keys}, "
                 f"{', '.join('t.' + qident(c) for c in cols)} FROM {rel} t WHERE {notnull} AND "
                 f"NOT EXISTS (SELECT 1 FROM {parent} p WHERE {match}) LIMIT 10")
    else:
        expr = definition[len("CHECK "):] if definition.startswith("CHECK ") else definition
        expr = expr.replace(" NOT VALID", "")
        query = f"SELECT {key_sql} FROM {rel} WHERE NOT {expr} LIMIT 10"
    try:
        found = conn.execute(query).fetchall()
    except psycopg.Error:
        return "(could not list)"
    return "; ".join(", ".join(str(v) for v in r) for r in found)


def _finish(conn: psycopg.Connection, opts: MigrateOptions, plan: Plan, run: RunRecord,
            done: set[str]) -> None:
    for t in plan.tables:
        if t.identity_column and not opts.schema_only:
            col = qident(t.identity_column)
            max_row = conn.execute(
                f"SELECT max({col}) FROM {ddl.qualified(opts.schema, t.name)}").fetchone()
            # An aggregate always returns one row; NULL means an empty table.
            current = (max_row[0] if max_row is not None else None) or 0
            # Never reuse an id: restart past both max(id) and AUTOINCREMENT's high mark.
            start = max(int(current), t.sequence_floor) + 1
            with conn.transaction():
                conn.execute(f"ALTER TABLE {ddl.qualified(opts.schema, t.name)} ALTER COLUMN "
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
    if opts.analyze and not opts.schema_only:
        in_sessions(opts, plan.tables, lambda session, t: session.execute(
            f"ANALYZE {ddl.qualified(opts.schema, t.name)}"), role=False)


def write_rejects(conn: psycopg.Connection, run_id: str, state: StateDir) -> Path | None:
    lines = [json.dumps(r, ensure_ascii=False, default=str) for r in
             checkpoint.all_rejects(conn, run_id)]
    if not lines:
        state.rejects.unlink(missing_ok=True)
        return None
    atomic_write(state.rejects, "\n".join(lines) + "\n")
    return state.rejects


__all__ = ["MigrateOptions", "MigrateResult", "PgshiftError", "migrate"]
