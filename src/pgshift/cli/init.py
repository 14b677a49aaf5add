"""``pgshift init``: flags (and prompts in a terminal) -> ``pgshift.setup.init.init``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from pgshift.cli.output import out_console, print_json
from pgshift.errors import UsageError
from pgshift.setup.init import InitResult, default_name, init
from pgshift.setup.templates import DEPLOYS, ROUTERS, Setup


def _ask(value: str | None, flag: str, question: str, default: str | None = None) -> str:
    """The flag's value; else a prompt in a terminal; else the default; else exit 2."""
    if value is not None:
        return value
    if sys.stdin.isatty():
        return str(typer.prompt(question, default=default))
    if default is not None:
        return default
    raise UsageError(f"{flag} is required (no terminal to ask in)",
                     hint=f"pgshift init SQLITE {flag} http://10.0.1.10:3000 ...")


def init_command(
    sqlite_path: Annotated[Path, typer.Argument(help="The application's live SQLite file.",
                                                show_default=False)],
    blue_url: Annotated[str | None, typer.Option("--blue-url", help="Blue (the app on "
                                                 "SQLite) as the router reaches it.",
                                                 show_default=False)] = None,
    green_url: Annotated[str | None, typer.Option("--green-url", help="Green (the app on "
                                                  "PostgreSQL).", show_default=False)] = None,
    deploy: Annotated[str | None, typer.Option("--deploy", help="How green is deployed: "
                                               + " | ".join(DEPLOYS) + " (default compose)",
                                               show_default=False)] = None,
    router: Annotated[str | None, typer.Option("--router", help="The router: "
                                               + " | ".join(ROUTERS) + " (default embedded)",
                                               show_default=False)] = None,
    dsn_var: Annotated[str | None, typer.Option("--dsn-var", help="The environment variable "
                                                "holding the target DSN (default "
                                                "DATABASE_URL).", show_default=False)] = None,
    name: Annotated[str | None, typer.Option("--name", help="The cutover's name (default: "
                                             "the file's stem).", show_default=False)] = None,
    health: Annotated[str, typer.Option("--health", help="Both apps' health path.")] = "/health",
    image: Annotated[str, typer.Option("--image", help="The app's image (compose, "
                                       "kubernetes).")] = "app:latest",
    app_port: Annotated[int, typer.Option("--app-port", help="The app's port inside its "
                                          "container.")] = 3000,
    app_role: Annotated[str | None, typer.Option("--app-role", help="Green's database role.",
                                                 show_default=False)] = None,
    out_dir: Annotated[Path, typer.Option("--out-dir", help="Where the files go.")] = Path("."),
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing files.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="JSON result on stdout.")] = False,
) -> None:
    """Write a commented cutover.yaml and deploy templates for your setup.

    Profiles the database (tables, rows, tables sync cannot capture), then writes
    cutover.yaml plus, by --deploy/--router: docker-compose.blue.yml and
    docker-compose.green.yml, k8s/*.yaml, a systemd unit, haproxy.cfg + pgshift.map.
    Each file is checked by the tool that reads it (haproxy -c, docker compose config
    where it works, a schema check for manifests, pgshift's own cutover loader).
    Never overwrites a file without --force. Prompts for what is missing in a terminal.

    Exit codes: 0 ok, 1 a generated file failed its check, 2 bad input, 4 SQLite failure.

      pgshift init app.db --blue-url http://10.0.1.10:3000 --green-url http://10.0.1.11:3000

      pgshift init app.db --blue-url ... --green-url ... --deploy kubernetes --router gateway
    """
    setup = Setup(
        name=name or default_name(sqlite_path),
        sqlite=sqlite_path.resolve(),
        blue_url=_ask(blue_url, "--blue-url", "Blue's URL (the app on SQLite)"),
        green_url=_ask(green_url, "--green-url", "Green's URL (the app on PostgreSQL)"),
        deploy=_ask(deploy, "--deploy", "How is green deployed (" + "|".join(DEPLOYS) + ")",
                    "compose"),  # type: ignore[arg-type]  # check_setup refuses the rest
        router=_ask(router, "--router", "Router (" + "|".join(ROUTERS) + ")",
                    "embedded"),  # type: ignore[arg-type]
        dsn_var=_ask(dsn_var, "--dsn-var", "Variable holding the target DSN", "DATABASE_URL"),
        health=health, image=image, app_port=app_port, app_role=app_role)
    result = init(setup, out_dir, force=force)
    if json_output:
        print_json(result.to_dict())
    else:
        _print(result)
    if not result.ok:
        raise typer.Exit(1)


def _print(result: InitResult) -> None:
    con = out_console(markup=False)
    p = result.profile
    con.print(f"profiled {p.path}: {len(p.tables)} tables, "
              f"{sum(t.rows for t in p.tables)} rows, journal_mode={p.journal_mode}")
    for t in p.tables:
        con.print(f"  {t.name:<32} {t.rows:>12} rows  "
                  + ("key " + ",".join(t.key) if t.key else "NO PRIMARY KEY"))
    for f in result.files:
        v = f.validation
        con.print(f"wrote {f.path}  [{v.tool}: {v.status}{': ' + v.detail if v.detail else ''}]")
    for w in result.warnings:
        con.print(f"warning: {w}")
    con.print("next: review cutover.yaml, then pgshift plan cutover.yaml and "
              "pgshift preflight cutover.yaml")
