"""``pgshift preflight``: one library call, one line per check."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pgshift.cli.output import out_console, print_json
from pgshift.setup.preflight import preflight

_MARK = {"pass": "PASS", "warn": "WARN", "fail": "FAIL", "skip": "SKIP"}


def preflight_command(
    cutover: Annotated[Path, typer.Argument(help="The cutover file.", show_default=False)],
    assume_remote: Annotated[bool, typer.Option(
        "--assume-remote", help="Apply the remote-target rules (ssl, password auth) to a "
        "local server too.")] = False,
    migrate_plan: Annotated[bool, typer.Option(
        "--migrate-plan", help="Also summarize `pgshift migrate --dry-run`'s anomalies "
        "(snapshots the source into a temporary directory).")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="JSON result on stdout.")] = False,
) -> None:
    """Check everything that can be known before touching production; change nothing.

    The source (readable, WAL, quick_check, keys, disk space for the snapshot), the
    target (version, CREATE privilege, the app role, PUBLIC's CREATE, ssl and auth for
    remote targets), both apps' health, the router, table settings, prerequisites
    (listed; JUnit reports read), hooks, and secrets (none in the file, env vars set,
    state dir not world-readable).

    Exit codes: 0 nothing failed (warnings allowed), 1 a check failed, 2 bad cutover file.

      pgshift preflight cutover.yaml

      pgshift preflight cutover.yaml --json

      pgshift preflight cutover.yaml --migrate-plan --assume-remote
    """
    report = preflight(cutover, assume_remote=assume_remote,
                       migrate_plan=migrate_plan)
    if json_output:
        print_json(report.to_dict())
    else:
        con = out_console(markup=False)
        for c in report.checks:
            con.print(f"{_MARK[c.status]}  {c.name:<28} {c.detail}"
                      + (f"\n      Try: {c.hint}" if c.hint and c.status != "pass" else ""))
        n = report.to_dict()["counts"]
        con.print(f"{n['pass']} passed, {n['warn']} warnings, {n['fail']} failed, "
                  f"{n['skip']} not checked")
    if not report.ok:
        raise typer.Exit(1)
