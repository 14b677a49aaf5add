"""``pgshift report``: the deployment report of a cutover (library: ``pgshift.report``)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Literal

import typer

from pgshift.cli.output import print_json


def report_command(
    cutover: Annotated[Path, typer.Argument(help="The cutover file (cutover.yaml).",
                                            show_default=False)],
    fmt: Annotated[str, typer.Option("--format", "-f",
                                     help="md (Markdown) or html (one self-contained file "
                                          "with charts).")] = "md",
    output: Annotated[Path | None, typer.Option("--output", "-o",
                                                help="Write here instead of stdout.")] = None,
    document: Annotated[str | None, typer.Option(
        "--document", "-d", help="Only one operational document: rollback (the procedure "
                                 "for this deployment), decommission (blue's checklist) or "
                                 "incident (the communication template).",
        show_default=False)] = None,
    json_output: Annotated[bool, typer.Option("--json", help="The report's facts as JSON "
                                              "on stdout.")] = False,
) -> None:
    """The deployment report (runbook 5.10) from the rollout's journal and audit trail.

      pgshift report cutover.yaml
      pgshift report cutover.yaml --format html --output report.html
      pgshift report cutover.yaml --document decommission
    """
    from pgshift.errors import UsageError
    from pgshift.report import make_report

    if fmt not in ("md", "html"):
        raise UsageError(f"--format {fmt}: expected md or html",
                         hint=f"pgshift report {cutover} --format html")
    kind: Literal["md", "html"] = "html" if fmt == "html" else "md"
    rep = make_report(cutover, kind, output, document)
    if json_output:
        print_json(rep.to_dict())
    elif output is None:
        sys.stdout.write(rep.text)
    else:
        print(f"report written to {output}", file=sys.stderr)
