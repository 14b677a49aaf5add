"""``pgshift sync``: install capture, run the applier, status, uninstall."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Any

import typer

from pgshift.cli.output import out_console, print_json
from pgshift.cli.sync_args import Json, PostgresDsn, Schema, SqlitePath, Timeout
from pgshift.cli.sync_tables import print_paused
from pgshift.dsn import resolve
from pgshift.errors import ExitCode, PgshiftError, UsageError
from pgshift.sync import verbs
from pgshift.sync.apply import DEFAULT_BATCH, SyncOptions, SyncResult, open_sqlite
from pgshift.sync.metrics import MetricsServer, RunMetrics, render
from pgshift.sync.results import DrainResult, FlipResult, SyncStatus

sync_app = typer.Typer(
    help="Keep PostgreSQL converged with SQLite while SQLite takes writes (to-postgres).",
    no_args_is_help=True,
)

MetricsPort = Annotated[int | None, typer.Option(
    "--metrics-port", help="Serve Prometheus metrics on http://HOST:PORT/metrics while "
                           "running (0 picks a free port).", show_default=False)]
MetricsHost = Annotated[str, typer.Option("--metrics-host", help="Address the metrics "
                                          "endpoint listens on.")]
TablesConfig = Annotated[Path | None, typer.Option(
    "--tables-config", help="Per-table settings (kind, writes, conflict, green_writes): a "
                            "cutover file or a file with a tables: mapping.",
    show_default=False)]


@sync_app.command("install", no_args_is_help=True)
def install_command(
    sqlite_path: SqlitePath,
    postgres_dsn: Annotated[str | None, typer.Argument(
        help="Also capture on these migrated PostgreSQL tables (for the way back).",
        show_default=False)] = None,
    schema: Schema = "public",
    tables: Annotated[list[str] | None, typer.Option("--tables", "-t",
                                                     help="Only these tables.")] = None,
    exclude: Annotated[list[str] | None, typer.Option("--exclude", "-x",
                                                      help="Skip these tables.")] = None,
    green_ids: Annotated[str, typer.Option(
        "--green-ids", help="negative: PostgreSQL identity/serial columns count down from "
                            "-1 until `sync flip`, so rows green inserts before the flip "
                            "never collide with SQLite's (risky for apps that assume "
                            "positive ids); keep: leave them.")] = "keep",
    pg_capture_mode: Annotated[str, typer.Option(
        "--pg-capture", help="With PG: triggers (a queue table, any PostgreSQL) or logical "
                             "(a logical replication slot: nothing on the write path, needs "
                             "wal_level=logical).")] = "triggers",
    tables_config: TablesConfig = None,
    app_role: Annotated[str | None, typer.Option(
        "--app-role", help="Green's PostgreSQL role: loses INSERT/UPDATE/DELETE/TRUNCATE on "
                           "green_writes: forbid tables until the flip (needs PG and "
                           "--tables-config).")] = None,
    json_output: Json = False,
) -> None:
    """Add capture triggers and the change log to SQLite (idempotent).

    Run it before `pgshift migrate`, so migrate's snapshot records where sync starts.
    Every captured table needs a primary key. With PG (after migrate), also install
    PostgreSQL capture for `sync run --mode to-sqlite`.

      pgshift sync install app.db

      pgshift sync install app.db env:DATABASE_URL
    """
    result = verbs.install(sqlite_path, list(tables or []), list(exclude or []),
                           dsn=resolve(postgres_dsn) if postgres_dsn else None,
                           schema=schema, green_ids=green_ids,
                           pg_capture_mode=pg_capture_mode, tables_config=tables_config,
                           app_role=app_role)
    if json_output:
        print_json(result.to_dict())
        return
    for table, privileges in (result.revoked or {}).items():
        out_console().print(f"green_writes forbid: revoked {', '.join(privileges) or 'nothing'}"
                            f" on {table} from {app_role}")
    names = ", ".join(t.name for t in result.tables) or "(none)"
    verb = "installed on" if result.created else "already installed on"
    out_console().print(f"capture {verb} {len(result.tables)} tables: {names}")
    up = [i for i in result.identities if i["state"] == "counts up"]
    if up:
        out_console().print(
            f"note: {len(up)} PostgreSQL identity/serial columns allocate positive ids that "
            "SQLite allocates too; if green may insert before the flip, use --green-ids "
            "negative")
    elif result.identities:
        out_console().print(f"{len(result.identities)} PostgreSQL identity/serial columns "
                            "count down from -1 until `pgshift sync flip`")


@sync_app.command("run", no_args_is_help=True)
def run_command(
    sqlite_path: SqlitePath,
    postgres_dsn: PostgresDsn,
    schema: Schema = "public",
    mode: Annotated[str, typer.Option(
        "--mode", help="to-postgres (SQLite is the system of record), to-sqlite (after "
                       "the flip, while blue takes no writes), dual (both directions for "
                       "writes: dual-writer tables) or pause (set the paused flag).")
    ] = "to-postgres",
    tables_config: TablesConfig = None,
    sor: Annotated[str | None, typer.Option(
        "--sor", help="The system of record for sor-wins and for --mode dual: sqlite "
                      "(before the flip) or postgres (after). Default: the direction's.")
    ] = None,
    once: Annotated[bool, typer.Option("--once", help="Apply what is pending, then exit "
                                       "(the default).")] = False,
    follow: Annotated[bool, typer.Option("--follow", help="Keep applying until interrupted "
                                         "(SIGINT/SIGTERM).")] = False,
    from_hwm: Annotated[int | None, typer.Option(
        "--from-hwm", help="Start after this change-log seq (default: the high-water mark "
                           "of migrate's snapshot).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Changes per PostgreSQL "
                                            "transaction.")] = DEFAULT_BATCH,
    metrics_port: MetricsPort = None,
    metrics_host: MetricsHost = "127.0.0.1",
    trim_log: Annotated[bool, typer.Option(
        "--trim", help="--mode to-sqlite after the flip: also delete the SQLite change-log "
                       "rows the to-postgres direction applied (see `sync trim`).")] = False,
    json_output: Json = False,
) -> None:
    """Apply captured changes: SQLite -> PostgreSQL (default), or back with --mode to-sqlite.

    Exit codes: 0 done, 3 some changes were parked (see `pgshift sync status`),
    2 bad input, 4 SQLite failure or DDL on a captured table, 5 PostgreSQL failure.

      pgshift sync run app.db env:DATABASE_URL --once

      pgshift sync run app.db env:DATABASE_URL --follow
    """
    if once and follow:
        raise UsageError("--once and --follow exclude each other",
                         hint="pgshift sync run SQLITE PG --follow")
    if mode == "pause":
        print_paused(verbs.pause(sqlite_path, resolve(postgres_dsn), schema), json_output)
        return
    verbs.check_mode(mode, trim_log=trim_log, from_hwm=from_hwm)
    opts = verbs.options(sqlite_path, resolve(postgres_dsn), schema,
                         tables_config=tables_config, from_hwm=from_hwm,
                         batch_size=batch_size, follow=follow, sor=sor)
    stop = threading.Event()
    if follow and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    run_metrics, server = _serve_metrics(metrics_host, metrics_port, sqlite_path, opts)
    try:
        # dual: the metrics serve the database figures, not per-process batch figures
        results = verbs.run_dual(opts, stop=stop) if mode == verbs.DUAL else {
            mode: verbs.run(opts, direction=mode, stop=stop, on_batch=run_metrics.observe,
                            trim_log=trim_log)}
    except KeyboardInterrupt:
        stop.set()
        raise
    finally:
        if server is not None:
            server.stop()
    if json_output:
        print_json({k: v.to_dict() for k, v in results.items()} if mode == verbs.DUAL
                   else results[mode].to_dict())
    else:
        for r in results.values():
            _print_run(r)
    if any(r.parked for r in results.values()):
        raise typer.Exit(int(ExitCode.REJECTS))


def _serve_metrics(host: str, port: int | None, sqlite_path: Path | None,
                   opts: SyncOptions) -> tuple[RunMetrics, MetricsServer | None]:
    """Start the /metrics endpoint (when a port is given); its address goes to stderr."""
    run_metrics = RunMetrics()
    if port is None:
        return run_metrics, None
    # One SQLite connection for every scrape, scrapes one at a time: a connection opened
    # and closed per scrape in the applier's process made the applier's own connection
    # stop seeing new commits from the app's process now and then (measured: about one
    # run in five under load; never with one long-lived connection).
    reader = open_sqlite(sqlite_path) if sqlite_path is not None else None
    lock = threading.Lock()

    def status() -> dict[str, Any]:
        with lock:
            return verbs.status(sqlite_path, opts.dsn, opts.schema, con=reader).to_dict()

    try:
        server = MetricsServer(host, port, lambda: render(opts.schema, status, run_metrics),
                               on_stop=reader.close if reader is not None else None)
    except OSError as exc:
        if reader is not None:
            reader.close()
        raise UsageError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}",
                         hint="pick another --metrics-port") from exc
    server.start()
    print(f"metrics: http://{host}:{server.port}/metrics", file=sys.stderr, flush=True)
    return run_metrics, server


def _print_run(r: SyncResult) -> None:
    out_console().print(
        f"{r.direction}: applied {r.applied} changes in {r.batches} batches "
        f"({r.seconds:.2f}s), parked {r.parked}, conflicts {r.conflicts} (see "
        f"pgshift.sync_conflicts); checkpoint {r.last_seq}, pending {r.pending}")
    for p in r.parked_reasons:
        key = p["key_new"] or p["key_old"]
        print(f"parked seq {p['seq']} {p['table_name']} {p['op']} key {key}: {p['reason']}",
              file=sys.stderr)


@sync_app.command("drain", no_args_is_help=True)
def drain_command(
    sqlite_path: SqlitePath,
    postgres_dsn: PostgresDsn,
    schema: Schema = "public",
    timeout: Annotated[float, typer.Option("--timeout", help="Give up after this many "
                                           "seconds.")] = 30.0,
    direction: Annotated[str, typer.Option(
        "--direction", help="to-postgres (fence in the SQLite change log, before the flip) "
                            "or to-sqlite (fence in PostgreSQL's queue: the rollback "
                            "drain).")] = "to-postgres",
    json_output: Json = False,
) -> None:
    """Write a fence marker into the change log and apply until it is passed.

    Every write committed before the fence is then on the other side (hold the
    app's writes first to drain to zero). Exit 1 when the timeout expired first;
    the changes left behind (the stranded range: count, seq/id range, age of the
    oldest, tables) are in the output for the rollout to record.

      pgshift sync drain app.db env:DATABASE_URL --timeout 10

      pgshift sync drain app.db env:DATABASE_URL --direction to-sqlite --timeout 30
    """
    opts = SyncOptions(sqlite_path=sqlite_path, dsn=resolve(postgres_dsn), schema=schema)
    out = verbs.drain(opts, timeout, direction=direction)
    if json_output:
        print_json(out.to_dict())
    else:
        _print_drain(out)
    if not out.drained:
        raise typer.Exit(int(ExitCode.DIFFERENCES))
    if out.parked:
        raise typer.Exit(int(ExitCode.REJECTS))


def _print_drain(out: DrainResult) -> None:
    state = "drained" if out.drained else "NOT drained"
    out_console().print(f"{out.direction} {state}: fence {out.fence_seq}, reached "
                        f"{out.last_seq}, applied {out.applied} in {out.seconds}s")
    s = out.stranded
    if s.count:
        out_console().print(
            f"stranded: {s.count} changes, {s.first}..{s.last}, oldest "
            f"{s.oldest_age_ms} ms, tables "
            + ", ".join(f"{k} ({v})" for k, v in s.tables.items()))


@sync_app.command("flip", no_args_is_help=True)
def flip_command(
    sqlite_path: SqlitePath,
    postgres_dsn: PostgresDsn,
    schema: Schema = "public",
    timeout: Timeout = 30.0,
    json_output: Json = False,
) -> None:
    """Switch the system of record to PostgreSQL (hold the app's writes first).

    Drains to-postgres behind a fence, turns green's incidental writes queued before
    the flip into the current rows (for the way back), leaves every identity/serial
    sequence past every key in its table (max(id) + 1, never backwards, whatever
    --green-ids), and grants green's role back what --app-role revoked. Then run
    `pgshift sync run --mode to-sqlite --follow` and release the writes.
    Exit 1 when the drain timed out (nothing was switched).

      pgshift sync flip app.db env:DATABASE_URL --timeout 10
    """
    opts = SyncOptions(sqlite_path=sqlite_path, dsn=resolve(postgres_dsn), schema=schema)
    out = verbs.flip(opts, timeout)
    if json_output:
        print_json(out.to_dict())
    elif not _print_not_flipped(out):
        con = out_console()
        rebased = out.rebased or {}
        con.print(f"flipped: drained to fence {out.drain.fence_seq}; "
                  f"{rebased.get('changes', 0)} queued PostgreSQL changes rebased onto "
                  f"{rebased.get('keys', 0)} keys; {len(out.identities)} identity sequences "
                  "moved past every key")
        if out.postgres_capture is None:
            con.print("warning: PostgreSQL capture is not installed: green's writes will "
                      "not flow back (pgshift sync install SQLITE PG)")
    if not out.flipped:
        raise typer.Exit(int(ExitCode.DIFFERENCES))


def _print_not_flipped(out: FlipResult) -> bool:
    """Say so when the drain missed its deadline; True then."""
    if out.flipped:
        return False
    d = out.drain
    out_console().print(f"NOT flipped: the drain did not reach fence {d.fence_seq} in "
                        f"{d.seconds}s; stranded {d.stranded.count} changes")
    return True


@sync_app.command("flip-back", no_args_is_help=True)
def flip_back_command(
    sqlite_path: SqlitePath,
    postgres_dsn: PostgresDsn,
    schema: Schema = "public",
    timeout: Timeout = 30.0,
    green_ids: Annotated[str, typer.Option(
        "--green-ids", help="negative: PostgreSQL's sequences count down again until the "
                            "next flip; keep: leave them (the next flip moves them).")
    ] = "keep",
    app_role: Annotated[str | None, typer.Option(
        "--app-role", help="Green's role: revoke its writes again on green_writes: forbid "
                           "tables.")] = None,
    json_output: Json = False,
) -> None:
    """Switch the system of record back to SQLite (the rollback; hold green's writes first).

    Drains green's writes into SQLite behind a fence and moves SQLite's AUTOINCREMENT
    marks past every id green used. Then run `pgshift sync run --mode to-postgres
    --follow` and release the writes to blue. Exit 1 when the drain timed out
    (nothing was switched; the stranded range is printed).

      pgshift sync flip-back app.db env:DATABASE_URL --timeout 30
    """
    opts = SyncOptions(sqlite_path=sqlite_path, dsn=resolve(postgres_dsn), schema=schema)
    out = verbs.flip_back(opts, timeout, green_ids=green_ids, app_role=app_role)
    if json_output:
        print_json(out.to_dict())
    elif not _print_not_flipped(out):
        out_console().print(
            f"flipped back: drained to fence {out.drain.fence_seq} ({out.drain.applied} "
            f"changes); {len(out.sqlite_sequences)} SQLite AUTOINCREMENT marks moved past "
            "green's ids")
    if not out.flipped:
        raise typer.Exit(int(ExitCode.DIFFERENCES))


@sync_app.command("trim", no_args_is_help=True)
def trim_command(
    sqlite_path: SqlitePath,
    postgres_dsn: PostgresDsn,
    schema: Schema = "public",
    batch_size: Annotated[int, typer.Option("--batch-size", help="Rows deleted per SQLite "
                                            "transaction.")] = 500,
    max_seconds: Annotated[float, typer.Option("--max-seconds", help="Stop after this many "
                                               "seconds (run again to go on).")] = 30.0,
    json_output: Json = False,
) -> None:
    """Delete the SQLite change-log rows the to-postgres applier has applied.

    A SQLite write that competes with the app: run it while the fence holds at the
    flip, or after the flip (then `sync run --mode to-sqlite --trim` keeps trimming).
    Never deletes an unapplied row, nor the newest one. Exit 1 when the time budget
    ran out first.

      pgshift sync trim app.db env:DATABASE_URL
    """
    out = verbs.trim(sqlite_path, resolve(postgres_dsn), schema, batch=batch_size,
                     max_seconds=max_seconds)
    if json_output:
        print_json(out.to_dict())
    else:
        p = out.plan
        if p is None:
            out_console().print("nothing applied yet: nothing to trim")
        else:
            out_console().print(
                f"trimmed {out.deleted} change-log rows at or below seq {p['upto']} in "
                f"{out.batches} batches ({out.seconds}s); {out.left} rows left"
                + (f"; kept the history of {', '.join(p['keep'])}" if p["keep"] else ""))
    if not out.complete:
        raise typer.Exit(int(ExitCode.DIFFERENCES))


@sync_app.command("status")
def status_command(
    sqlite_path: Annotated[Path | None, typer.Argument(help="The SQLite file (optional).",
                                                       show_default=False)] = None,
    postgres_dsn: Annotated[str | None, typer.Argument(help="The PostgreSQL copy (optional).",
                                                       show_default=False)] = None,
    schema: Schema = "public",
    json_output: Json = False,
    prometheus: Annotated[bool, typer.Option("--prometheus", help="Prometheus text format "
                                             "on stdout (lag, pending, applied, parked).")]
    = False,
    serve: Annotated[int | None, typer.Option(
        "--serve", help="Serve the metrics on http://HOST:PORT/metrics until interrupted "
                        "(a scrape reads the status afresh).", show_default=False)] = None,
    metrics_host: MetricsHost = "127.0.0.1",
) -> None:
    """Capture, checkpoint, pending changes, lag and parked changes.

      pgshift sync status app.db env:DATABASE_URL --json

      pgshift sync status app.db env:DATABASE_URL --prometheus > sync.prom

      pgshift sync status app.db env:DATABASE_URL --serve 9187
    """
    if serve is not None:
        if postgres_dsn is None:
            raise UsageError("--serve needs the PostgreSQL DSN",
                             hint="pgshift sync status app.db env:DATABASE_URL --serve 9187")
        stop = threading.Event()
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
        _, server = _serve_metrics(metrics_host, serve, sqlite_path, SyncOptions(
            sqlite_path=sqlite_path or Path(), dsn=resolve(postgres_dsn), schema=schema))
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            if server is not None:
                server.stop()
        return
    status = verbs.status(sqlite_path, resolve(postgres_dsn) if postgres_dsn else None,
                          schema)
    if prometheus:
        from pgshift.sync.metrics import prometheus as render

        sys.stdout.write(render(status.to_dict()))
        return
    if json_output:
        print_json(status.to_dict())
        return
    _print_status(status)


def _print_status(status: SyncStatus) -> None:
    out = status.to_dict()
    con = out_console()
    if "capture_installed" in out:
        con.print(f"capture: {'installed' if out['capture_installed'] else 'not installed'}"
                  f" on {len(out.get('captured_tables', []))} tables, max seq "
                  f"{out.get('max_seq', '-')}")
    state = out.get("to_postgres")
    if "to_postgres" in out:
        if state is None:
            con.print("to-postgres: never run")
        else:
            con.print(f"to-postgres: checkpoint seq {state['last_seq']} (started at "
                      f"{state['start_seq']}), applied {state['applied']}, parked "
                      f"{state['parked']}")
    if "pending" in out:
        con.print(f"pending: {out['pending']} changes, lag {out['lag_ms']} ms")
    if out.get("postgres_captured_tables"):
        con.print(f"to-sqlite: PostgreSQL capture on {len(out['postgres_captured_tables'])} "
                  f"tables, {out.get('to_sqlite_pending', 0)} queued, lag "
                  f"{out.get('to_sqlite_lag_ms', 0)} ms")
    logical = out.get("to_sqlite_logical")
    if logical:
        con.print(f"to-sqlite: logical capture, slot {logical['slot']}, "
                  f"{logical['lag_bytes']} bytes of WAL not consumed")
    for direction, n in sorted((out.get("conflicts_by_direction") or {}).items()):
        con.print(f"{direction}: {n} conflicts recorded (pgshift.sync_conflicts)")
    if out.get("paused"):
        con.print("PAUSED: nothing is applied, changes accumulate (pgshift sync resume)")
    for name, t in (out.get("tables") or {}).items():
        if (t["kind"], t["writes"], t["conflict"], t["green_writes"]) != \
                ("plain", "single-writer", "sor-wins", "allow"):
            con.print(f"table {name}: kind {t['kind']}, {t['writes']}, {t['conflict']}, "
                      f"green_writes {t['green_writes']}")
    for p in out.get("parked", []):
        con.print(f"parked seq {p['seq']} {p['table_name']} {p['op']}: {p['reason']}")


@sync_app.command("uninstall", no_args_is_help=True)
def uninstall_command(
    sqlite_path: SqlitePath,
    postgres_dsn: Annotated[str | None, typer.Argument(
        help="Also remove sync's state from this PostgreSQL.", show_default=False)] = None,
    schema: Schema = "public",
    json_output: Json = False,
) -> None:
    """Remove the triggers and the change log from SQLite (and sync's state from PostgreSQL).

      pgshift sync uninstall app.db env:DATABASE_URL
    """
    out = verbs.uninstall(sqlite_path, resolve(postgres_dsn) if postgres_dsn else None,
                          schema)
    if json_output:
        print_json(out.to_dict())
        return
    con = out_console()
    con.print("capture removed from SQLite" if out.sqlite_removed
              else "capture was not installed in SQLite")
    if postgres_dsn:
        con.print("sync state removed from PostgreSQL")


__all__ = ["PgshiftError", "sync_app"]


from pgshift.cli import sync_tables as _sync_tables  # noqa: E402  (plan, pause, resume)

_sync_tables.register(sync_app)
