"""The one skeleton of ``pgshift migrate``, for the fresh load and the load into existing tables.

The run is the same for both: snapshot (taken, given, or the recorded one on
``--resume``), plan, the run record and its lock, the copy with its
exactly-once checkpoints, the rejects file, the result and the error mapping.
What differs (how the plan is made, what happens to the target before and
after the rows) is a ``LoadPath``: ``fresh.FreshLoad`` creates the schema from
the plan, ``into_existing.IntoExistingLoad`` loads into the application's.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import psycopg

from pgshift.copy import checkpoint
from pgshift.copy.checkpoint import RunRecord
from pgshift.dsn import connect, redact
from pgshift.errors import TargetError, UsageError
from pgshift.migrate.fresh import FreshLoad
from pgshift.migrate.options import MigrateOptions, MigrateResult, TableSummary, state_for, validate
from pgshift.migrate.sessions import session_sql
from pgshift.migrate.steps import Steps
from pgshift.progress import NullProgress, Progress
from pgshift.schema.model import Note
from pgshift.schema.plan import Plan
from pgshift.source.snapshot import Snapshot, sqlite_failure, take_snapshot
from pgshift.state import StateDir, atomic_write

if TYPE_CHECKING:  # the load into existing tables (and its mapping) is imported on use
    from pgshift.existing.plan import MappedPlan

PlanT = TypeVar("PlanT", bound="Plan | MappedPlan")


class LoadPath(Protocol[PlanT]):
    """What differs between the two loads; ``migrate()`` calls these in this order.

    Each method may run timed steps of its own through ``steps``. A dry run
    calls only ``check_target`` (when ``plans_against_target``) and ``plan``.
    """

    plans_against_target: bool  # the plan reads the target's catalog (dry runs connect)
    privilege_hint: str  # the Try: line for a missing privilege on the target
    resume_hint: str  # the Try: line when --resume names other tables than the run
    done_message: str  # the audit line at the end, with {rows}

    def check_target(self, coord: psycopg.Connection) -> None:
        """Read-only checks of the target before anything is planned."""

    def prepare_target(self, coord: psycopg.Connection) -> None:
        """The target ready for the run record (pgshift's schema, the target schema)."""

    def plan(self, snap: Snapshot, steps: Steps, coord: psycopg.Connection | None) -> PlanT:
        """Catalog, decisions, anomalies; ``coord`` is None in a fresh dry run."""

    def before_copy(self, coord: psycopg.Connection, plan: PlanT, run: RunRecord,
                    snap: Snapshot, steps: Steps) -> None:
        """Make the target take rows (create tables, or check/empty the app's)."""

    def chunk_plan(self, snap: Snapshot, plan: PlanT, run: RunRecord
                   ) -> dict[str, list[list[Any]]]:
        """Chunk boundaries per table, stored with a new run so a resume reuses them."""

    def stored_profile(self, plan: PlanT) -> Any:
        """What verify and sync read back from ``pgshift.migrate_runs.profile``."""

    def copy(self, coord: psycopg.Connection, plan: PlanT, snap: Snapshot, run: RunRecord,
             summaries: dict[str, TableSummary], progress: Progress) -> None:
        """Copy every chunk not yet committed."""

    def after_copy(self, coord: psycopg.Connection, plan: PlanT, run: RunRecord,
                   steps: Steps) -> list[Note]:
        """Keys, indexes, constraints, sequences, ANALYZE; the violations found."""

    def cleanup(self, run: RunRecord) -> None:
        """Remove what only this run needed, once it is done."""


def migrate(opts: MigrateOptions, progress: Progress | None = None) -> MigrateResult:
    """Run the whole migration (or print its plan with ``dry_run``).

    ``progress`` stays open: whoever made it closes it. With ``opts.snapshot``
    the rows come from that snapshot (its high-water mark is recorded for
    sync) and the file is left where it is.
    """
    progress = progress or NullProgress()
    validate(opts)
    state = state_for(opts)
    load = _load_path(opts, state)
    t_start = time.perf_counter()
    state.ensure()
    steps = Steps(progress, state)
    try:
        if opts.dry_run:
            return _dry_run(opts, load, state, steps, t_start)
        return _run(opts, load, state, steps, progress, t_start)
    except KeyboardInterrupt:
        # Committed chunks stay committed; the lock goes with the connection.
        state.audit("migrate", "interrupted", "interrupted (Ctrl-C); --resume continues",
                    {"seconds": round(time.perf_counter() - t_start, 3)})
        raise
    except sqlite3.DatabaseError as exc:
        raise sqlite_failure(exc, opts.sqlite_path, "reading") from exc
    except psycopg.errors.InsufficientPrivilege as exc:
        raise UsageError(f"missing privilege on the target: {exc.diag.message_primary}",
                         hint=load.privilege_hint) from exc
    except psycopg.OperationalError as exc:
        raise TargetError(f"PostgreSQL failed: {redact(str(exc)).strip()}",
                          operation="migrate") from exc
    except psycopg.Error as exc:
        raise TargetError(f"PostgreSQL error: {redact(str(exc)).strip().splitlines()[0]}",
                          operation="migrate") from exc


def _load_path(opts: MigrateOptions, state: StateDir) -> LoadPath[Any]:
    if opts.into_existing:
        # Imported on use: the mapping machinery is not needed by a fresh load.
        from pgshift.migrate.into_existing import IntoExistingLoad

        return IntoExistingLoad(opts, state)
    return FreshLoad(opts)


def _dry_run(opts: MigrateOptions, load: LoadPath[PlanT], state: StateDir, steps: Steps,
             t_start: float) -> MigrateResult:
    """Snapshot and plan; the target is only read, and only when the plan needs it."""
    coord = connect(opts.dsn, autocommit=True) if load.plans_against_target else None
    try:
        if coord is not None:
            load.check_target(coord)
        snap = _snapshot(opts, state, steps)
        try:
            plan = load.plan(snap, steps, coord)
        finally:
            if opts.snapshot is None:  # ours, and nothing will copy from it
                snap.path.unlink(missing_ok=True)
                snap.meta_path.unlink(missing_ok=True)
        return MigrateResult(plan, opts.snapshot, [TableSummary(t.name, t.rows)
                                                   for t in plan.tables],
                             steps.timings, dry_run=True, seconds=time.perf_counter() - t_start)
    finally:
        if coord is not None:
            coord.close()


def _run(opts: MigrateOptions, load: LoadPath[PlanT], state: StateDir, steps: Steps,
         progress: Progress, t_start: float) -> MigrateResult:
    coord = connect(opts.dsn, autocommit=True)
    try:
        load.check_target(coord)
        load.prepare_target(coord)
        checkpoint.acquire_lock(coord, opts.schema)
        run, snap = start_or_resume(coord, opts, state, steps)
        plan = load.plan(snap, steps, coord)
        if run.status != "new" and set(run.chunks) != {t.name for t in plan.tables}:
            raise UsageError("--resume must load the same tables as the run it continues "
                             f"({', '.join(sorted(run.chunks))})", hint=load.resume_hint)
        for stmt in session_sql(opts.schema):
            coord.execute(stmt)
        load.before_copy(coord, plan, run, snap, steps)
        if run.status == "new":
            run.chunks = load.chunk_plan(snap, plan, run)
            checkpoint.start_run(coord, RunRecord(**{**run.__dict__, "status": "copying"}))
            checkpoint.save_profile(coord, run.run_id, load.stored_profile(plan))
            run.status = "copying"
        summaries = {t.name: TableSummary(t.name, t.rows) for t in plan.tables}
        if not opts.schema_only:
            steps.run("copy", lambda: load.copy(coord, plan, snap, run, summaries, progress))
        violations = load.after_copy(coord, plan, run, steps)
        rejects_file = write_rejects(coord, run.run_id, state)
        checkpoint.set_status(coord, run.run_id, "done")
        load.cleanup(run)
        kept = _settle_snapshot(opts, state, snap)
        total_rejects = sum(s.rejects for s in summaries.values())
        result = MigrateResult(plan, snap, list(summaries.values()), steps.timings,
                               total_rejects, violations, rejects_file,
                               seconds=time.perf_counter() - t_start, run_id=run.run_id,
                               allow_rejects=opts.allow_rejects, snapshot_kept=kept)
        state.audit("migrate", "done", load.done_message.format(rows=result.to_dict()["rows"]),
                    {"rejects": total_rejects, "seconds": round(result.seconds, 3)})
        return result
    finally:
        coord.close()


def _snapshot(opts: MigrateOptions, state: StateDir, steps: Steps) -> Snapshot:
    """The snapshot a new run copies: the one given (checked by ``validate``), or a new one."""
    if opts.snapshot is not None:
        given = opts.snapshot
        return steps.run("snapshot (given)", lambda: given)
    return steps.run("snapshot", lambda: take_snapshot(opts.sqlite_path, state.snapshots,
                                                       require_wal=opts.require_wal))


def _settle_snapshot(opts: MigrateOptions, state: StateDir, snap: Snapshot) -> bool:
    """After success, remove migrate's own snapshot unless ``keep_snapshot``; True if kept.

    A snapshot a caller passed in (the rollout engine's, shared with verify and sync) is
    never touched; nor is one outside this run's state directory.
    """
    own = (opts.snapshot is None
           and snap.path.resolve().parent == state.snapshots.resolve())
    if opts.keep_snapshot or not own:
        return True
    snap.path.unlink(missing_ok=True)
    snap.meta_path.unlink(missing_ok=True)
    state.audit("migrate", "snapshot.removed", f"snapshot {snap.path} removed after success",
                {"bytes": snap.bytes})
    return False


def start_or_resume(conn: psycopg.Connection, opts: MigrateOptions, state: StateDir,
                    steps: Steps) -> tuple[RunRecord, Snapshot]:
    """The run to do (new, with its snapshot) or to continue (with the snapshot it recorded)."""
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
        if opts.snapshot is not None and opts.snapshot.path.resolve() != snap.path.resolve():
            # Rows from two snapshots would mix two points in time.
            raise UsageError(f"the run to resume copies from {snap.path}, not from the snapshot "
                             f"given ({opts.snapshot.path})",
                             hint="resume without a snapshot, or with the run's own")
        return existing, snap
    if existing and opts.restart:
        checkpoint.forget_run(conn, existing.run_id)
    snap = _snapshot(opts, state, steps)
    state.audit("migrate", "snapshot", f"snapshot {snap.path}",
                {"bytes": snap.bytes, "hwm": snap.hwm, "seconds": snap.seconds,
                 "given": opts.snapshot is not None})
    # The run records the snapshot's high-water mark: sync starts right after it.
    run = RunRecord(opts.schema, uuid.uuid4().hex, str(opts.sqlite_path.resolve()),
                    str(snap.path), snap.hwm, "new", {}, snap.capture_id)
    return run, snap


def write_rejects(conn: psycopg.Connection, run_id: str, state: StateDir) -> Path | None:
    """The run's rejects as ``rejects.jsonl`` in the state directory (removed when none)."""
    lines = [json.dumps(r, ensure_ascii=False, default=str) for r in
             checkpoint.all_rejects(conn, run_id)]
    if not lines:
        state.rejects.unlink(missing_ok=True)
        return None
    atomic_write(state.rejects, "\n".join(lines) + "\n")
    return state.rejects
