"""``pgshift provision``."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from pgshift.cli.output import out_console, print_json
from pgshift.dsn import resolve
from pgshift.ops.provision import ProvisionResult, provision


def _password(env_var: str, prompt: bool) -> str | None:
    value = os.environ.get(env_var)
    if value:
        return value
    if prompt and sys.stdin.isatty():
        return str(typer.prompt("Password for the app role", hide_input=True,
                                confirmation_prompt=True))
    return None


def provision_command(
    admin_dsn: Annotated[str, typer.Argument(help="An admin connection (superuser, or "
                                             "CREATEROLE + CREATEDB): URI, keywords or env:VAR.",
                                             show_default=False)],
    app_user: Annotated[str, typer.Option("--app-user", help="The application's role.",
                                          show_default=False)],
    database: Annotated[str, typer.Option("--database", help="The application's database.",
                                          show_default=False)],
    password_env: Annotated[str, typer.Option(
        "--password-env", help="Environment variable holding the app role's password "
        "(prompted for in a terminal when unset; never a flag).")] = "PGSHIFT_APP_PASSWORD",
    connection_limit: Annotated[int, typer.Option("--connection-limit",
                                                  help="The app role's connection limit "
                                                  "(-1: none).")] = 50,
    extension: Annotated[list[str] | None, typer.Option(
        "--extension", "-e", help="Another extension to create (pg_trgm always is).")] = None,
    statement_timeout: Annotated[str, typer.Option("--statement-timeout",
                                                   help="The app role's default.")] = "30s",
    idle_timeout: Annotated[str, typer.Option("--idle-in-transaction-timeout",
                                              help="The app role's default.")] = "60s",
    schema: Annotated[str, typer.Option("--schema", help="The app's schema.")] = "public",
    app_instances: Annotated[int | None, typer.Option("--app-instances",
                                                      help="Planned app instances.")] = None,
    pool_size: Annotated[int | None, typer.Option("--pool-size",
                                                  help="Planned pool size per instance.")] = None,
    pgbouncer: Annotated[Path | None, typer.Option("--pgbouncer", help="Write a PgBouncer "
                                                   "config here (needs the planned pools).")]
    = None,
    print_sql: Annotated[bool, typer.Option("--print-sql", help="Show the statements; run "
                                            "nothing.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="JSON result on stdout.")] = False,
) -> None:
    """Prepare the production PostgreSQL: app role, database, extensions, grants, defaults.

    Idempotent: each statement is planned from what the server holds, so a second
    run changes nothing and says so. Afterwards the app user connects, creates a
    table in a rolled-back transaction, and the server's settings are checked against
    the planned pools.

    Exit codes: 0 ok, 2 bad input or a missing privilege (named), 5 PostgreSQL failure.

      PGSHIFT_APP_PASSWORD=... pgshift provision env:ADMIN_URL --app-user app --database app

      pgshift provision env:ADMIN_URL --app-user app --database app --print-sql

      pgshift provision env:ADMIN_URL --app-user app --database app \\
          --app-instances 4 --pool-size 10 --pgbouncer pgbouncer.ini
    """
    result = provision(
        resolve(admin_dsn), app_user, database,
        password=_password(password_env, prompt=not print_sql),
        connection_limit=connection_limit, extensions=list(extension or []),
        statement_timeout=statement_timeout, idle_in_transaction_timeout=idle_timeout,
        schema=schema, print_sql=print_sql, app_instances=app_instances, pool_size=pool_size,
        pgbouncer_path=pgbouncer)
    if json_output:
        print_json(result.to_dict())
    else:
        _print(result)


def _print(result: ProvisionResult) -> None:
    con = out_console(markup=False)
    if result.applied:
        head = ("provisioned" if result.changed else
                "nothing to change: already provisioned")
    else:
        head = "the plan (nothing run)" if result.statements else "nothing to change"
    con.print(f"{head}: role {result.app_user}, database {result.database} ({result.admin})")
    for st in result.statements:
        con.print(f"  -- {st.reason} [{st.scope}]\n  {st.sql};")
    for note in result.notes:
        con.print(f"note: {note}")
    c = result.connectivity
    if c is not None:
        if c.ok and c.server:
            con.print(f"app user connects: PostgreSQL {c.server.version}, round trip "
                      f"{c.server.latency_ms:.2f} ms, can create tables: "
                      f"{'yes' if c.can_create_table else 'NO'}")
        else:
            con.print(f"app user connection test failed: {c.error}")
    for f in result.findings:
        con.print(f"warning: {f.subject}: {f.message}" +
                  (f"\n  suggestion: {f.suggestion}" if f.suggestion else ""))
    if result.pgbouncer_path:
        state = "written" if result.pgbouncer_written else (
            "unchanged" if result.applied else "would be written")
        con.print(f"PgBouncer config {result.pgbouncer_path}: {state}")
