"""``pgshift archive``, ``pgshift archive verify`` and ``pgshift archive restore``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from pgshift.cli.output import out_console, print_json
from pgshift.errors import ExitCode, PgshiftError
from pgshift.ops.archive import DEFAULT_LEVEL, archive, restore_archive, verify_archive


class _CreateByDefault(TyperGroup):
    """``pgshift archive SQLITE DEST`` means ``pgshift archive create SQLITE DEST``."""

    # ctx is Typer's vendored click Context, which it does not export under a public name.
    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["create", *args]
        return super().parse_args(ctx, args)


archive_app = typer.Typer(
    cls=_CreateByDefault,
    help="Archive blue's SQLite database and config files (checksummed, zstd), verify "
         "an archive, restore one. `pgshift archive SQLITE DEST` is short for "
         "`pgshift archive create`.",
    no_args_is_help=True,
)


class _VerifyFailed(PgshiftError):
    exit_code = ExitCode.DIFFERENCES


@archive_app.command("create", no_args_is_help=True)
def create_command(
    sqlite_path: Annotated[Path, typer.Argument(help="The application's SQLite file.",
                                                show_default=False)],
    dest: Annotated[str, typer.Argument(help="A directory, or a URL such as "
                                        "s3://bucket/prefix (needs pgshift[remote]).",
                                        show_default=False)],
    config: Annotated[list[Path] | None, typer.Option(
        "--config", "-c", help="A config file to keep with it (compose, env...); "
        "repeatable.")] = None,
    include_secrets: Annotated[bool, typer.Option(
        "--include-secrets", help="Store config files as they are (default: secret "
        "values redacted).")] = False,
    keep: Annotated[int | None, typer.Option("--keep", help="Keep only the newest N "
                                             "archives of this database in DEST.")] = None,
    require_wal: Annotated[bool, typer.Option("--require-wal", help="Refuse a source not "
                                              "in WAL mode (its backup would block "
                                              "writers).")] = False,
    level: Annotated[int, typer.Option("--level", help="zstd level.")] = DEFAULT_LEVEL,
    json_output: Annotated[bool, typer.Option("--json", help="JSON result on stdout.")] = False,
) -> None:
    """Back up the SQLite database online, with config files and a checksummed manifest.

    The backup is consistent while the app still runs; the copy must pass PRAGMA
    integrity_check; each member is zstd-compressed separately and the manifest holds
    the sha256 of every member and the source's row counts.

    Exit codes: 0 ok, 2 bad input, 4 SQLite failure.

      pgshift archive app.db /backups/app --config compose.yaml --config .env --keep 7

      pgshift archive app.db s3://backups/app
    """
    result = archive(sqlite_path, dest, config_files=list(config or []),
                     include_secrets=include_secrets, keep=keep, require_wal=require_wal,
                     level=level)
    if json_output:
        print_json(result.to_dict())
        return
    con = out_console(markup=False)
    con.print(f"archived {sqlite_path} -> {result.location} ({result.bytes:,} bytes, "
              f"{result.seconds:.2f} s, integrity_check {result.integrity_check})")
    for m in result.members:
        extra = f", {m.redacted_lines} line(s) redacted" if m.redacted_lines else ""
        con.print(f"  {m.name}: {m.content_bytes:,} -> {m.bytes:,} bytes{extra}")
    con.print(f"  rows: {sum(result.row_counts.values()):,} in "
              f"{len(result.row_counts)} tables")
    for name in result.removed:
        con.print(f"  removed (retention): {name}")


@archive_app.command("verify", no_args_is_help=True)
def verify_command(
    location: Annotated[str, typer.Argument(help="The archive file (path or URL).",
                                            show_default=False)],
    json_output: Annotated[bool, typer.Option("--json", help="JSON result on stdout.")] = False,
) -> None:
    """Re-check every member's checksums and restore the database to prove it opens.

    Exit codes: 0 intact, 1 a problem found (named), 2 not an archive.

      pgshift archive verify /backups/app/app-20261204T181500123Z.pgshift.tar
    """
    result = verify_archive(location)
    if json_output:
        print_json(result.to_dict())
    else:
        con = out_console(markup=False)
        for m in result.members:
            con.print(f"  {m.name}: {'ok' if m.ok else 'FAILED: ' + str(m.problem)}")
        if result.restored_integrity is not None:
            con.print(f"  restored database: integrity_check {result.restored_integrity}, "
                      f"row counts {'match' if result.row_counts_match else 'DIFFER'}")
        for p in result.problems:
            con.print(f"  problem: {p}")
        con.print(f"{location}: {'intact' if result.ok else 'DAMAGED'}")
    if not result.ok:
        bad = [m.name for m in result.members if not m.ok] or result.problems[:1]
        raise _VerifyFailed(f"archive verification failed: {', '.join(bad)}",
                            hint="restore from another archive of this database (ls the archive "
                                 "directory; pgshift archive restore ARCHIVE --to DIR)")


@archive_app.command("restore", no_args_is_help=True)
def restore_command(
    location: Annotated[str, typer.Argument(help="The archive file (path or URL).",
                                            show_default=False)],
    to: Annotated[Path, typer.Option("--to", help="Directory to restore into (created if "
                                     "missing): the database under its original file "
                                     "name, config files under config/.",
                                     show_default=False)],
    force: Annotated[bool, typer.Option("--force", help="Replace files already there.")
                     ] = False,
    json_output: Annotated[bool, typer.Option("--json", help="JSON result on stdout.")] = False,
) -> None:
    """Write an archive's database and config files back, checked first.

    Every member's checksums, the database's integrity_check and its row counts are
    checked against the manifest before anything is put in place; an existing file is
    never replaced without --force. Config files come back as archived (secrets
    redacted unless it was made with --include-secrets).

    Exit codes: 0 restored, 1 the archive is damaged (nothing restored), 2 bad input.

      pgshift archive restore /backups/app/app-20261204T181500123Z.pgshift.tar \\
          --to /srv/app/restored
    """
    result = restore_archive(location, to, force=force)
    if json_output:
        print_json(result.to_dict())
        return
    con = out_console(markup=False)
    rows = sum(result.row_counts.values())
    con.print(f"  database: {result.database} ({rows:,} rows in {len(result.row_counts)} "
              f"tables, integrity_check {result.integrity_check}"
              + (f", as of {result.snapshot_taken_at}" if result.snapshot_taken_at else "")
              + ")")
    for c in result.configs:
        con.print(f"  config: {c}" + ("" if result.secrets_included else " (secrets redacted)"))
    con.print(f"{location}: restored into {to}")
