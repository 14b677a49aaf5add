"""``pgshift migrate``."""

from __future__ import annotations

from contextlib import closing
from pathlib import Path
from typing import Annotated

import typer

from pgshift.cli.output import err_console, out_console, print_json
from pgshift.dsn import resolve
from pgshift.errors import PgshiftError, UsageError
from pgshift.existing.plan import MappedPlan
from pgshift.migrate import DEFAULT_BATCH, MigrateOptions, MigrateResult, migrate
from pgshift.progress import for_terminal
from pgshift.report_tables import mapped_plan_text, migrate_summary, plan_text
from pgshift.schema.keys import FILL_OPTION


def migrate_command(
    sqlite_path: Annotated[Path, typer.Argument(help="The application's SQLite file.",
                                                show_default=False)],
    postgres_dsn: Annotated[str, typer.Argument(
        help="Target: postgresql://user@host:5432/db, 'host=... dbname=...', or env:VAR. "
             "Passwords may come from PGPASSWORD or ~/.pgpass.", show_default=False)],
    schema: Annotated[str, typer.Option("--schema", help="Target schema.")] = "public",
    tables: Annotated[list[str] | None, typer.Option(
        "--tables", "-t", help="Only these tables (repeatable; shell patterns).")] = None,
    exclude: Annotated[list[str] | None, typer.Option(
        "--exclude", "-x", help="Skip these tables (repeatable; shell patterns).")] = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="Parallel workers.")] = 2,
    batch_size: Annotated[int, typer.Option(
        "--batch-size", help="Rows per chunk (the unit of parallelism and resume).")
    ] = DEFAULT_BATCH,
    drop: Annotated[bool, typer.Option("--drop", help="Drop existing target tables first.")
                    ] = False,
    data_only: Annotated[bool, typer.Option("--data-only", help="Load into existing tables; "
                                            "no DDL.")] = False,
    schema_only: Annotated[bool, typer.Option("--schema-only", help="Create the schema; "
                                              "copy no rows.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan (DDL, type "
                                          "decisions, anomalies, row counts) and stop.")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run "
                                         "(skips committed chunks).")] = False,
    restart: Annotated[bool, typer.Option("--restart", help="Forget an interrupted run and "
                                          "start over.")] = False,
    allow_rejects: Annotated[bool, typer.Option("--allow-rejects", help="Exit 0 even when "
                                                "values were rejected.")] = False,
    owner: Annotated[str | None, typer.Option("--owner", help="Create objects as this role "
                                              "(SET ROLE).")] = None,
    state_dir: Annotated[Path | None, typer.Option("--state-dir", help="Where snapshots and "
                                                   "rejects go (default ./.pgshift/<db name>).")]
    = None,
    require_wal: Annotated[bool, typer.Option("--require-wal", help="Refuse a source that is "
                                              "not in WAL mode (live databases).")] = False,
    into_existing: Annotated[bool, typer.Option(
        "--into-existing", help="Load into the tables the application's own migrations "
        "created (names matched case-insensitively, values converted to each column's real "
        "type); pgshift creates and alters nothing.")] = False,
    mapping: Annotated[Path | None, typer.Option(
        "--map", help="With --into-existing: a mapping file renaming, merging and converting "
        "columns (docs/mapping.md).", show_default=False)] = None,
    assume_tz: Annotated[str | None, typer.Option(
        "--assume-tz", help="With --into-existing: the zone of text timestamps without a UTC "
        "offset loaded into timestamptz (e.g. UTC); without it such columns are refused.",
        show_default=False)] = None,
    truncate: Annotated[bool, typer.Option(
        "--truncate", help="With --into-existing: empty the target tables first (otherwise "
        "tables holding rows are refused).")] = False,
    keep_indexes: Annotated[bool, typer.Option(
        "--keep-indexes", help="With --into-existing: load with the tables' plain indexes in "
        "place (default: set aside and rebuilt after the load, which is faster).")] = False,
    strict: Annotated[bool, typer.Option(
        "--strict", help="With --into-existing: a source column that feeds no target column "
        "is a plan error unless the mapping's `drop:` names it.")] = False,
    fill_null_keys: Annotated[bool, typer.Option(
        "--fill-null-keys", help="Rows whose (non-rowid) integer primary key is NULL get "
        "identity values past the maximum instead of being rejected; automatic when the "
        "declared type says AUTO_INCREMENT.")] = False,
    keep_snapshot: Annotated[bool, typer.Option(
        "--keep-snapshot", help="Keep the snapshot (a 0600 copy of the source in the state "
        "directory) after a successful run; by default it is removed.")] = False,
    json_output: Annotated[bool, typer.Option(
        "--json", help="Print the result (or with --dry-run the plan) as JSON on stdout: the "
        "machine-readable form; the tables are for people.")] = False,
) -> None:
    """Copy a SQLite database into PostgreSQL: schema, data, keys, indexes, constraints.

    Reads a consistent online backup of the file (never the live file), picks each
    column's type from its declaration *and* its data, loads with COPY in parallel, then
    builds keys and indexes and validates constraints. Values PostgreSQL cannot hold are
    never altered: they go to .pgshift/<db>/rejects.jsonl and pgshift.rejects.

    Exit codes: 0 ok, 2 bad input, 3 finished with rejects, 4 SQLite failure,
    5 PostgreSQL failure.

    Examples:

      pgshift migrate app.db postgresql://app@localhost/app --dry-run

      pgshift migrate app.db env:DATABASE_URL --jobs 2 --drop

      pgshift migrate app.db env:DATABASE_URL --resume

      pgshift migrate app.db env:DATABASE_URL --into-existing --map mapping.yaml --dry-run
    """
    opts = MigrateOptions(
        sqlite_path=sqlite_path, dsn=resolve(postgres_dsn), schema=schema,
        tables=list(tables or []), exclude=list(exclude or []), jobs=jobs,
        batch_size=batch_size, drop=drop, data_only=data_only, schema_only=schema_only,
        dry_run=dry_run, resume=resume, restart=restart, allow_rejects=allow_rejects,
        owner=owner, state_dir=state_dir, require_wal=require_wal,
        into_existing=into_existing, mapping=mapping, assume_tz=assume_tz, truncate=truncate,
        keep_indexes=keep_indexes, strict=strict, keep_snapshot=keep_snapshot,
        fill_null_keys=fill_null_keys,
    )
    with closing(for_terminal(json_output)) as progress:
        result = migrate(opts, progress)
    if json_output:
        print_json(result.to_dict())
    elif dry_run:
        if isinstance(result.plan, MappedPlan):
            out_console().print(mapped_plan_text(result.plan))
        else:
            out_console().print(plan_text(result.plan))
    else:
        out_console().print(migrate_summary(result))
        if result.rejects_file:
            err_console().print(f"rejects: {result.rejects_file}")
        if result.snapshot is not None:
            err_console(markup=False).print(snapshot_line(result))
    code = result.exit_code
    if code:
        raise _ExitWith(result)


def snapshot_line(result: MigrateResult) -> str:
    """Where the snapshot is and how big, or that it was removed."""
    snap = result.snapshot
    assert snap is not None
    size = f"{snap.bytes / 2**20:.1f} MiB"
    if result.snapshot_kept:
        return f"snapshot: {snap.path} ({size}, mode 0600; delete it when no longer needed)"
    return f"snapshot: removed {snap.path} ({size}); --keep-snapshot keeps it"


class _ExitWith(PgshiftError):
    """Completed, but the result itself sets a non-zero exit code."""

    def __init__(self, result: MigrateResult) -> None:
        n, v = result.rejects, len(result.violations)
        null_keys = any(FILL_OPTION in note.message for note in result.plan.notes)
        super().__init__(f"completed with {n} rejected row(s) and {v} unvalidated constraint(s)",
                         hint="read the rejects file, fix the source or rerun with "
                              "--allow-rejects" + (f" (rows with NULL keys: rerun with "
                                                   f"--restart --drop {FILL_OPTION})"
                                                   if null_keys else ""))
        self.exit_code = result.exit_code


__all__ = ["UsageError", "migrate_command"]
