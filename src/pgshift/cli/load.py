"""``pgshift load run`` and ``pgshift load check-ledger``."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Any

import typer

from pgshift.cli.output import print_json
from pgshift.errors import UsageError

load_app = typer.Typer(
    help="Drive the reference app with many users at a target rate, and prove afterwards "
         "that no acknowledged write was lost.",
    no_args_is_help=True,
)


@load_app.command("run")
def run_command(
    url: Annotated[str, typer.Option("--url", help="Base URL of the app (or of the router in "
                                     "front of it), plain http://.", show_default=False)],
    rps: Annotated[float, typer.Option("--rps", help="Target requests per second "
                                       "(open loop: sent on schedule, answered or not).")]
    = 50.0,
    duration: Annotated[float, typer.Option("--duration", help="Seconds to run; 0 runs until "
                                            "Ctrl-C.")] = 30.0,
    users: Annotated[int, typer.Option("--users", help="Distinct virtual users, each with "
                                       "its own X-User-Id and cookie jar.")] = 50,
    ledger: Annotated[Path | None, typer.Option("--ledger", help="Append every write "
                                                "(acknowledged or not) to this JSON-lines "
                                                "file.")] = None,
    workers: Annotated[int, typer.Option("--workers", help="Worker processes; 0 picks one "
                                         "per 1,500 requests/s, at most one per core.")] = 0,
    connections: Annotated[int, typer.Option("--connections", help="Keep-alive connections "
                                             "per worker process.")] = 64,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds before a request "
                                           "counts as a transport error.")] = 10.0,
    seed: Annotated[int | None, typer.Option("--seed", help="Random seed of the request "
                                             "mix.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No per-second figures.")]
    = False,
    json_output: Annotated[bool, typer.Option("--json", help="JSON summary on stdout.")]
    = False,
) -> None:
    """Send a realistic read/write mix to the reference app and print live figures.

    Every second, stderr gets the rate, errors and p50/p99 latency (measured from when each
    request was due); at the end, a summary.

      pgshift load run --url http://127.0.0.1:8000 --rps 200 --duration 60 --ledger w.jsonl
    """
    from pgshift.demo.load import LoadOptions, Window, run_load

    opts = LoadOptions(url=url, rps=rps, duration=duration or None, users=users, ledger=ledger,
                       workers=workers, connections=connections, timeout=timeout, seed=seed)
    elapsed = [0]

    def live(w: Window) -> None:
        elapsed[0] += 1
        if not quiet:
            print(f"[{elapsed[0]:>4}s] rps {w.done:>6,}  errors {w.errors:>4}  "
                  f"dropped {w.dropped:>4}  p50 {w.percentile_ms(0.5):>8.2f} ms  "
                  f"p99 {w.percentile_ms(0.99):>8.2f} ms", file=sys.stderr, flush=True)

    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        summary = run_load(opts, on_second=live, stop=stop)
    finally:
        signal.signal(signal.SIGINT, previous)
    data = summary.to_dict()
    if json_output:
        print_json(data)
        return
    lat = data["latency_ms"]
    statuses = ", ".join(f"{k}: {v:,}" for k, v in data["statuses"].items())
    print(f"{data['requests']:,} requests in {data['seconds']:.1f}s = "
          f"{data['achieved_rps']:,.1f}/s (target {data['target_rps']:,.0f}/s, "
          f"{data['workers']} worker(s), {data['users']} users)\n"
          f"errors {data['errors']:,} ({data['error_rate']:.3%}), transport "
          f"{data['transport_errors']:,}, dropped {data['dropped']:,}\n"
          f"latency p50 {lat['p50']:.2f} ms, p90 {lat['p90']:.2f} ms, p99 {lat['p99']:.2f} ms, "
          f"max {lat['max']:.2f} ms\nstatuses {statuses or '-'}\n"
          f"writes acknowledged {data['writes_acknowledged']:,}"
          + (f", ledger {data['ledger']}" if data["ledger"] else ""))


@load_app.command("check-ledger")
def check_ledger_command(
    ledger: Annotated[Path, typer.Argument(help="The ledger file of pgshift load run.",
                                           show_default=False)],
    sqlite: Annotated[Path | None, typer.Option("--sqlite", help="Check against this SQLite "
                                                "file (the system of record).")] = None,
    postgres: Annotated[str | None, typer.Option("--postgres", help="Check against this "
                                                 "PostgreSQL DSN (env:VAR allowed).")] = None,
    limit: Annotated[int, typer.Option("--limit", help="Violations to list in the text "
                                       "output.")] = 50,
    json_output: Annotated[bool, typer.Option("--json", help="JSON result on stdout.")] = False,
) -> None:
    """Prove every acknowledged write is in the database, or report each missing one.

    A write counts as kept when its row holds its values, or those of a later acknowledged
    write to the same key. Also catches a job claimed twice and a lost counter decrement.
    Exit 0: clean; 1: violations, or no acknowledged write at all (an empty ledger proves
    nothing); 2: bad input.

      pgshift load check-ledger w.jsonl --postgres env:DATABASE_URL
    """
    from pgshift.demo.ledger import LedgerViolations, check_ledger, read_ledger

    if (sqlite is None) == (postgres is None):
        raise UsageError("give exactly one of --sqlite PATH and --postgres DSN",
                         hint=f"pgshift load check-ledger {ledger} --sqlite app.db")
    result = check_ledger(read_ledger(ledger), sqlite_path=sqlite, postgres_dsn=postgres)
    data: dict[str, Any] = result.to_dict()
    if json_output:
        print_json(data)
    else:
        print(f"{result.database}: {result.acknowledged:,} acknowledged writes of "
              f"{result.entries:,} ledger entries; {result.keys_checked:,} keys, "
              f"{result.columns_checked:,} columns, {result.counters_checked:,} counters "
              "checked")
        for v in result.violations[:limit]:
            print(f"  {v.kind}: {v.detail}")
        if len(result.violations) > limit:
            print(f"  ... and {len(result.violations) - limit:,} more (--json lists all)")
        for u in result.unverifiable[:limit]:
            print(f"  unverifiable: {u['table']} {u['key']!r}.{u['column']}: {u['reason']}")
        if result.ok:
            print("OK: every acknowledged write is present")
    if result.empty:
        raise LedgerViolations(
            f"{ledger} holds no acknowledged write ({result.entries:,} entries): an empty "
            "ledger proves nothing",
            hint=f"check that pgshift load run --ledger {ledger} ran and that its requests "
                 "succeeded (its summary counts them)")
    if not result.ok:
        kinds = ", ".join(f"{n} {k}" for k, n in result.by_kind().items())
        raise LedgerViolations(f"{len(result.violations)} violation(s): {kinds}",
                               hint="rerun with --json for every violation and its ledger "
                                    "lines")
