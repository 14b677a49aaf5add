"""What ``pgshift migrate`` can be told, and what it reports back."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pgshift.dsn import Dsn
from pgshift.errors import ExitCode, UsageError
from pgshift.existing.plan import MappedPlan
from pgshift.migrate.steps import StepTiming
from pgshift.schema.model import Note
from pgshift.schema.plan import Plan
from pgshift.source.snapshot import Snapshot, check_snapshot_of, check_sqlite_file
from pgshift.state import StateDir

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
    # A snapshot of sqlite_path someone else took (the rollout engine takes one for
    # migrate, verify and sync): copied instead of taking a new one, never deleted.
    # Its high-water mark is recorded with the run, so sync starts right after it.
    snapshot: Snapshot | None = None
    # Keep migrate's own snapshot after a successful run (a given one is always kept).
    keep_snapshot: bool = False
    # --into-existing: load into the tables the application's migrations created
    into_existing: bool = False
    mapping: Path | None = None
    assume_tz: str | None = None
    truncate: bool = False
    keep_indexes: bool = False  # --into-existing: load with the app's plain indexes in place
    strict: bool = False  # --into-existing: a source column feeding nothing is a plan error
    # Rows whose non-rowid integer primary key is NULL get identity values past the
    # maximum (automatic when the declared type says AUTO_INCREMENT): schema.keys.
    fill_null_keys: bool = False


@dataclass
class TableSummary:
    """One table's figures for the summary table and ``--json``."""

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
    steps: list[StepTiming]
    rejects: int = 0
    violations: list[Note] = field(default_factory=list)
    rejects_file: Path | None = None
    dry_run: bool = False
    seconds: float = 0.0
    run_id: str | None = None
    allow_rejects: bool = False
    # False once migrate removed its own snapshot after success (``snapshot`` then names
    # a file that is gone); True while the file exists.
    snapshot_kept: bool = True

    @property
    def exit_code(self) -> ExitCode:
        """3 when values were rejected or constraints stayed unvalidated (unless allowed)."""
        if (self.rejects or self.violations) and not self.allow_rejects:
            return ExitCode.REJECTS
        return ExitCode.OK

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` form."""
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
            "snapshot_kept": self.snapshot_kept if self.snapshot else None,
            "steps": [s.to_dict() for s in self.steps],
            "tables": [t.__dict__ for t in self.tables],
            "violations": [n.to_dict() for n in self.violations],
            "plan": self.plan.to_dict() if self.dry_run else None,
            "notes": [n.to_dict() for n in self.plan.notes],
        }


def state_for(opts: MigrateOptions) -> StateDir:
    """The run's state directory: ``--state-dir``, or ``./.pgshift/<db name>``."""
    if opts.state_dir is not None:
        return StateDir(opts.state_dir)
    return StateDir.for_name(Path.cwd(), opts.sqlite_path.stem)


def validate(opts: MigrateOptions) -> None:
    """Refuse impossible option combinations and a source that is not a SQLite file."""
    if opts.data_only and opts.schema_only:
        raise UsageError("--data-only and --schema-only exclude each other",
                         hint="pick one; without either, migrate copies schema and data")
    if opts.resume and opts.restart:
        raise UsageError("--resume and --restart exclude each other")
    if opts.into_existing and opts.fill_null_keys:
        raise UsageError("--fill-null-keys is for tables migrate creates, not --into-existing",
                         hint="drop --fill-null-keys, or map the key in the mapping file")
    if not opts.into_existing:
        given = [n for n, v in (("--map", opts.mapping), ("--assume-tz", opts.assume_tz),
                                ("--truncate", opts.truncate),
                                ("--keep-indexes", opts.keep_indexes),
                                ("--strict", opts.strict)) if v]
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
    check_sqlite_file(opts.sqlite_path)
    if opts.snapshot is not None:
        check_snapshot_of(opts.snapshot, opts.sqlite_path)
        if opts.require_wal and opts.snapshot.source_journal_mode != "wal":
            raise UsageError(f"the snapshot {opts.snapshot.path} was taken of a source in "
                             f"journal_mode={opts.snapshot.source_journal_mode}; a live "
                             "snapshot needs WAL", hint="take it again once the source is in "
                             "WAL mode, or drop --require-wal")
