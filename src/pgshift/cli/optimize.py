"""``pgshift optimize`` (and ``--watch``)."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from pgshift.cli.output import out_console, print_json
from pgshift.dsn import Dsn, resolve
from pgshift.errors import TargetError, UsageError
from pgshift.ops.exporter import HealthExporter
from pgshift.ops.optimize import DEFAULT_MIN_ROWS, OptimizeResult, optimize
from pgshift.ops.watch import HealthSample, watch


def optimize_command(
    postgres_dsn: Annotated[str, typer.Argument(help="The PostgreSQL database (URI, keywords "
                                                "or env:VAR).", show_default=False)],
    apply: Annotated[bool, typer.Option("--apply", help="Build the proposed and planned "
                                        "indexes (CREATE INDEX CONCURRENTLY).")] = False,
    planned_file: Annotated[Path | None, typer.Option(
        "--file", "-f", help="A SQL file of planned CREATE INDEX statements.")] = None,
    planned_only: Annotated[bool, typer.Option("--planned-only", help="Only the --file "
                                               "statements; no proposals from usage.")]
    = False,
    schema: Annotated[str, typer.Option("--schema", help="The app's schema.")] = "public",
    min_rows: Annotated[int, typer.Option("--min-rows", help="Ignore smaller tables.")]
    = DEFAULT_MIN_ROWS,
    lock_timeout: Annotated[str, typer.Option("--lock-timeout", help="Bound on every lock "
                                              "wait while building.")] = "5s",
    app_instances: Annotated[int | None, typer.Option("--app-instances",
                                                      help="App instances (pool sizing).")]
    = None,
    pool_size: Annotated[int | None, typer.Option("--pool-size",
                                                  help="Pool size per instance.")] = None,
    watch_mode: Annotated[bool, typer.Option("--watch", help="Keep reporting health "
                                             "(connections, slow queries, replication, "
                                             "archiving) until Ctrl-C.")] = False,
    interval: Annotated[float, typer.Option("--interval", help="Seconds between --watch "
                                            "samples.")] = 60.0,
    count: Annotated[int | None, typer.Option("--count", help="Stop --watch after N "
                                              "samples.")] = None,
    slow_ms: Annotated[float, typer.Option("--slow-ms", help="--watch: a statement slower "
                                           "than this on average is reported.")] = 100.0,
    metrics_port: Annotated[int | None, typer.Option(
        "--metrics-port", help="--watch: also serve the samples as Prometheus metrics on "
        "this port (GET /metrics).")] = None,
    metrics_host: Annotated[str, typer.Option("--metrics-host", help="Address for "
                                              "--metrics-port.")] = "127.0.0.1",
    json_output: Annotated[bool, typer.Option("--json", help="JSON on stdout (--watch: one "
                                              "line per sample).")] = False,
) -> None:
    """Index work from real usage, built without blocking writes; settings worth tuning.

    Reads pg_stat_statements and the table/index statistics: sequential scans on large
    tables (with the queries behind them), foreign keys without an index, unused indexes.
    --apply builds the proposals with CREATE INDEX CONCURRENTLY under --lock-timeout,
    drops the INVALID index a failed build leaves, runs ANALYZE and times a
    representative query before and after. --file adds planned indexes, checked by
    PostgreSQL first: a predicate that is not IMMUTABLE is refused with an alternative.

    Exit codes: 0 ok, 2 bad input (including a refused planned statement; nothing is
    built then), 5 an index build failed (cleaned up).

      pgshift optimize env:DATABASE_URL

      pgshift optimize env:DATABASE_URL --file planned-indexes.sql --apply

      pgshift optimize env:DATABASE_URL --watch --interval 30 --metrics-port 9188
    """
    dsn = resolve(postgres_dsn)
    if watch_mode:
        _watch(dsn, json_output, interval, count, slow_ms, metrics_host, metrics_port)
        return
    if metrics_port is not None:
        raise UsageError("--metrics-port serves the --watch samples",
                         hint="add --watch")
    result = optimize(dsn, apply=apply, planned_sql=planned_file, schema=schema,
                      min_rows=min_rows, lock_timeout=lock_timeout,
                      app_instances=app_instances, pool_size=pool_size, auto=not planned_only)
    if json_output:
        print_json(result.to_dict())
    else:
        _print(result)
    if result.refused:
        first = result.refused[0]
        raise UsageError(f"planned index refused: {first.refused}",
                         hint=f"replace it in {planned_file} with: {first.alternative};"
                         if first.alternative else f"fix the statement in {planned_file}")
    if result.failed:
        raise TargetError("index build failed: " + "; ".join(
            f"{b.name}: {b.error}" + (" (its INVALID index was dropped)" if b.dropped_invalid
                                      else " (its INVALID index remains)" if b.invalid_left
                                      else "") for b in result.failed),
            hint="fix the cause and rerun with --apply (built indexes are skipped, INVALID "
                 "ones dropped first)")


def _watch(dsn: Dsn, json_output: bool, interval: float, count: int | None, slow_ms: float,
           metrics_host: str, metrics_port: int | None) -> None:
    show = _print_sample_json if json_output else _print_sample
    exporter = None
    if metrics_port is not None:
        try:
            exporter = HealthExporter(metrics_host, metrics_port).start()
        except OSError as exc:
            raise UsageError(f"cannot serve metrics on {metrics_host}:{metrics_port}: "
                             f"{exc.strerror}", hint="choose another --metrics-port") from exc

    def on_sample(s: HealthSample) -> None:
        if exporter is not None:
            exporter.update(s)
        show(s)

    try:
        # Ctrl-C is how --watch normally ends: exit 0, not "aborted".
        with contextlib.suppress(KeyboardInterrupt):
            watch(dsn, on_sample, interval=interval, count=count, slow_ms=slow_ms)
    finally:
        if exporter is not None:
            exporter.stop()


def _print(result: OptimizeResult) -> None:
    con = out_console(markup=False)
    con.print(f"pgshift optimize: database {result.database} (pg_stat_statements: "
              f"{'yes' if result.pg_stat_statements else 'no'})")
    if not result.proposals and not result.planned:
        con.print("no index to propose")
    for p in result.proposals:
        con.print(f"\n{p.definition()};\n  why: {p.reason}")
        for q in p.queries[:3]:
            con.print(f"  query ({q.calls:,} calls, mean {q.mean_ms:.2f} ms): {q.query[:160]}")
    for planned in result.planned:
        if planned.refused:
            con.print(f"\nREFUSED: {planned.statement}\n  why: {planned.refused}")
            if planned.alternative:
                con.print(f"  instead: {planned.alternative};\n  ({planned.advice})")
        elif planned.proposal:
            con.print(f"\n{planned.proposal.definition()};\n  why: planned (--file)")
    for b in result.builds:
        line = f"\n{b.name}: {b.status}"
        if b.status == "built":
            line += f" in {b.seconds:.2f} s"
        if b.error:
            line += f": {b.error}"
        if b.dropped_invalid:
            line += " (an INVALID index was dropped)"
        if b.invalid_left:
            line += " (the INVALID index remains: the next --apply drops it first)"
        con.print(line)
        if b.before and b.after:
            con.print(f"  {b.before.query}\n  before: {b.before.ms:.3f} ms ({b.before.plan}); "
                      f"after: {b.after.ms:.3f} ms ({b.after.plan})")
    if result.proposals and not result.applied and not result.refused:
        con.print("\n(nothing built: add --apply)")
    if result.findings:
        con.print("\nworth a look:")
    for f in result.findings:
        con.print(f"  {f.kind}: {f.subject}: {f.message}")
        if f.suggestion:
            con.print(f"    suggestion: {f.suggestion}")


def _print_sample(s: HealthSample) -> None:
    lag = f"{s.replay_lag_s:.1f}s" if s.replay_lag_s is not None else "-"
    archived = f"{s.archived_age_s:.0f}s ago" if s.archived_age_s is not None else "-"
    oldest = f"{s.oldest_transaction_s:.0f}s" if s.oldest_transaction_s is not None else "-"
    out_console(markup=False).print(
        f"{s.ts} connections {s.connections}/{s.max_connections} (active {s.active}, idle in "
        f"tx {s.idle_in_transaction}), oldest tx {oldest}, replicas {s.replicas} lag {lag}, "
        f"WAL archived {archived} (failures {s.archive_failures}), slow {len(s.slow_queries)}")
    for q in s.slow_queries:
        out_console(markup=False).print(f"  slow: {q.mean_ms:.1f} ms x {q.calls}: {q.query[:160]}")


def _print_sample_json(s: HealthSample) -> None:
    sys.stdout.write(json.dumps(s.to_dict()) + "\n")
    sys.stdout.flush()
