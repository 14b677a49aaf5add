"""``pgshift sync plan|pause|resume``: parse, call :mod:`pgshift.sync.verbs`, print."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pgshift.cli.output import out_console, print_json
from pgshift.cli.sync_args import Json, PostgresDsn, Schema, SqlitePath
from pgshift.dsn import resolve
from pgshift.errors import ExitCode
from pgshift.sync import verbs
from pgshift.sync.results import PauseResult


def print_paused(out: PauseResult, json_output: bool) -> None:
    """Say that sync is paused or resumed."""
    if json_output:
        print_json(out.to_dict())
    else:
        out_console().print(
            f"sync into schema {out.schema} {'paused' if out.paused else 'resumed'}"
            + (": running appliers stop applying within one poll; changes keep being "
               "captured" if out.paused else ""))


def register(app: typer.Typer) -> None:
    """Add ``plan``, ``pause`` and ``resume`` to ``pgshift sync``."""

    @app.command("plan", no_args_is_help=True)
    def plan_command(
        sqlite_path: SqlitePath,
        postgres_dsn: Annotated[str | None, typer.Argument(
            help="The PostgreSQL copy (optional: stored settings, PostgreSQL capture).",
            show_default=False)] = None,
        tables_config: Annotated[Path | None, typer.Option(
            "--tables-config", help="Per-table settings: a cutover file or a tables: "
                                    "mapping.", show_default=False)] = None,
        schema: Schema = "public",
        json_output: Json = False,
    ) -> None:
        """Per table: kind, writes, conflict policy, green_writes, key, and refusals.

        Exit 2 when a table's settings are refused (the reason is printed).

          pgshift sync plan app.db env:DATABASE_URL --tables-config cutover.yaml
        """
        out = verbs.plan(sqlite_path, resolve(postgres_dsn) if postgres_dsn else None,
                         schema, tables_config)
        if json_output:
            print_json(out.to_dict())
        else:
            con = out_console()
            con.print(f"sync plan for schema {schema} (settings from {out.source}):")
            for r in out.tables:
                key = ", ".join(r.key) if r.key else "-"
                con.print(f"  {r.table}: kind {r.kind}, {r.writes}, conflict "
                          f"{r.conflict}, green_writes {r.green_writes}, key ({key})",
                          highlight=False)
                for note in r.notes:
                    con.print(f"      note: {note}", highlight=False)
                for why in r.refusals:
                    con.print(f"      REFUSED: {why}", highlight=False)
        if out.refused:
            raise typer.Exit(int(ExitCode.USAGE))

    @app.command("pause", no_args_is_help=True)
    def pause_command(sqlite_path: SqlitePath, postgres_dsn: PostgresDsn,
                      schema: Schema = "public", json_output: Json = False) -> None:
        """Pause applying in both directions (captures keep accumulating).

        A running `sync run --follow` stops applying within one poll; status shows
        `paused` and the growing lag.

          pgshift sync pause app.db env:DATABASE_URL
        """
        print_paused(verbs.pause(sqlite_path, resolve(postgres_dsn), schema), json_output)

    @app.command("resume", no_args_is_help=True)
    def resume_command(sqlite_path: SqlitePath, postgres_dsn: PostgresDsn,
                       schema: Schema = "public", json_output: Json = False) -> None:
        """Resume applying after `pgshift sync pause`.

          pgshift sync resume app.db env:DATABASE_URL
        """
        print_paused(verbs.resume(sqlite_path, resolve(postgres_dsn), schema), json_output)
