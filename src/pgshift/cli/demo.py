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
                                       "in all per job).")] = 20_000,
    workdir: Annotated[Path, typer.Option("--workdir", help="Where the demo lives "
                                          "(recreated).")] = Path(".pgshift/demo"),
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="Parallel copy workers.")] = 2,
    rps: Annotated[float, typer.Option("--rps", help="Load through the proxy, requests/s, "
                                       "for the whole rollout.")] = 300.0,
    bake: Annotated[float, typer.Option("--bake", help="Seconds each traffic step bakes.")
                    ] = 12.0,
    fault: Annotated[str | None, typer.Option(
        "--fault", help="green-errors: green fails 30 % of its requests from the 25 % "
                        "step on; green-errors-after-flip: from the flip on (its writes "
                        "must come back to SQLite). The rollout must roll back by itself.")
    ] = None,
    keep: Annotated[bool, typer.Option("--keep", help="Leave PostgreSQL running afterwards.")]
    = False,
    json_output: Annotated[bool, typer.Option("--json", help="JSON summary on stdout.")] = False,
) -> None:
    """A real blue-green rollout on this machine, under live load, then its summary.

    Seeds a SQLite database, starts blue (the reference app on it), an embedded
    PostgreSQL and green (the same app on it), writes a cutover.yaml with compressed
    timings and runs `pgshift rollout` on it while the load generator drives the
    embedded proxy and records every acknowledged write; the ledger is then checked
    against the system of record. Needs nothing but this package.

      pgshift demo

      pgshift demo --fault green-errors     # green starts failing: automatic rollback

      pgshift demo --json --rps 500
    """
    if ctx.invoked_subcommand is not None:
        return
    from pgshift.demo.run import run_demo

    with closing(for_terminal(json_output)) as progress:
        result = run_demo(workdir, scale, jobs=jobs, keep=keep, rps=rps, bake=bake,
                          fault=fault, progress=progress)
    out = result.to_dict()
    if json_output:
        print_json(out)
    else:
        _print_summary(out)
    if not result.ok:
        raise _DemoFailed()


def _print_summary(out: dict[str, object]) -> None:
    con = out_console()
    t = Table(title="traffic steps (green's share of reads; writes go to the system of "
                    "record)", title_justify="left")
    for heading in ("weight %", "green requests", "error rate", "upper bound", "p99 ms",
                    "blue p99 ms", "decision"):
        t.add_column(heading, justify="right" if heading != "decision" else "left")
    steps = out["steps"]
    assert isinstance(steps, list)
    for s in steps:
        t.add_row(f"{s['weight']:g}", f"{s['requests']:,}", _pct(s["error_rate"]),
                  _pct(s["error_rate_upper"]), _ms(s["p99_ms"]), _ms(s["blue_p99_ms"]),
                  str(s["decision"]))
    con.print(t)
    verdict = "OK" if out["ok"] else "FAILED"
    con.print(
        f"demo {verdict}: rollout {out['status']} in {out['seconds']}s; "
        f"{out['requests']:,} requests ({out['achieved_rps']}/s), {out['failed_requests']} "
        f"failed, p99 {_ms(out['p99_ms'])} ms; {out['writes_acknowledged']:,} acknowledged "
        f"writes, {out['lost_writes']} lost (ledger checked against "
        f"{out['ledger_checked_against']})")
    failures = out.get("failures") or []
    assert isinstance(failures, list)
    for f in failures:  # the first few, whole: when, what, which side answered what
        con.print(f"  failed: {f['at']:.3f} {f['method']} {f['path']} -> "
                  f"{f['status'] or 'transport error'} from {f['served_by'] or 'the proxy'}: "
                  f"{f['error']}", markup=False, highlight=False)
    tail = out.get("tail_check")
    flip = (f"fence held {out['fence_hold_ms']} ms" + (
        f" (tail check: the {tail['checked']} rows changed last compared in "
        f"{tail['seconds'] * 1000:.0f} ms, {'equal' if tail['ok'] else 'DIFFERENT'})"
        if isinstance(tail, dict) and tail.get("checked") is not None else "")
        if out["flipped"] else "not reached (rolled back before it)")
    con.print(f"flip: {flip}; rollback "
              f"{'drill' if out['rollback_was_drill'] else 'run'}: traffic on blue after "
              f"{out['rollback_traffic_back_ms']} ms, complete in {out['rollback_seconds']}s"
              + (f"; stranded {out['stranded']}" if out["stranded"] else ""))
    con.print(f"sync: lag at most {out['sync_lag_ms_max']} ms at the end of a step; "
              f"{out['conflicts']} conflicts")
    con.print(f"the cutover file it ran: {out['cutover']}")
    if out.get("report"):
        con.print(f"the deployment report: {out['report']} (and .md beside it)")


def _pct(v: object) -> str:
    return f"{v:.2%}" if isinstance(v, int | float) else "-"


def _ms(v: object) -> str:
    return f"{v:.1f}" if isinstance(v, int | float) else "-"


class _DemoFailed(PgshiftError):
    exit_code = ExitCode.DIFFERENCES

    def __init__(self) -> None:
        super().__init__("the demo did not end as it should (see the summary above)",
                         hint="rerun with --json for details; .pgshift/demo/ keeps the "
                              "journal, audit trail and logs")


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
