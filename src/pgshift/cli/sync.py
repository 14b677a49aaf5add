"""``pgshift sync``: install capture, run the applier, status, uninstall."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Any

import typer

from pgshift.cli.output import out_console, print_json
from pgshift.dsn import resolve
from pgshift.errors import ExitCode, PgshiftError, UsageError
from pgshift.sync import ops
from pgshift.sync.apply import DEFAULT_BATCH, SyncOptions, SyncResult, run

sync_app = typer.Typer(
    help="Keep PostgreSQL converged with SQLite while SQLite takes writes (to-postgres).",
    no_args_is_help=True,
)

SqlitePath = Annotated[Path, typer.Argument(help="The application's SQLite file.",
                                            show_default=False)]
Schema = Annotated[str, typer.Option("--schema", help="Target schema.")]
Json = Annotated[bool, typer.Option("--json", help="JSON result on stdout.")]


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
    json_output: Json = False,
) -> None:
    """Add capture triggers and the change log to SQLite (idempotent).

    Run it before `pgshift migrate`, so migrate's snapshot records where sync starts.
    Every captured table needs a primary key. With PG (after migrate), also install
    PostgreSQL capture for `sync run --mode to-sqlite`.

      pgshift sync install app.db

      pgshift sync install app.db env:DATABASE_URL
    """
    result = ops.install(sqlite_path, list(tables or []), list(exclude or []),
                         dsn=resolve(postgres_dsn) if postgres_dsn else None, schema=schema)
    if json_output:
        print_json(result.to_dict())
        return
    names = ", ".join(t.name for t in result.tables) or "(none)"
    verb = "installed on" if result.created else "already installed on"
    out_console().print(f"capture {verb} {len(result.tables)} tables: {names}")


@sync_app.command("run", no_args_is_help=True)
def run_command(
    sqlite_path: SqlitePath,
    postgres_dsn: Annotated[str, typer.Argument(help="The PostgreSQL copy (URI, keywords or "
                                                "env:VAR).", show_default=False)],
    schema: Schema = "public",
    mode: Annotated[str, typer.Option(
        "--mode", help="to-postgres (SQLite is the system of record) or to-sqlite (after "
                       "the flip, while blue takes no writes).")] = "to-postgres",
    once: Annotated[bool, typer.Option("--once", help="Apply what is pending, then exit "
                                       "(the default).")] = False,
    follow: Annotated[bool, typer.Option("--follow", help="Keep applying until interrupted "
                                         "(SIGINT/SIGTERM).")] = False,
    from_hwm: Annotated[int | None, typer.Option(
        "--from-hwm", help="Start after this change-log seq (default: the high-water mark "
                           "of migrate's snapshot).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Changes per PostgreSQL "
                                            "transaction.")] = DEFAULT_BATCH,
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
    if mode not in ("to-postgres", "to-sqlite"):
        raise UsageError(f"--mode {mode!r} is not built; use to-postgres or to-sqlite",
                         hint="pgshift sync run SQLITE PG --mode to-postgres")
    if mode == "to-sqlite" and from_hwm is not None:
        raise UsageError("--from-hwm applies to --mode to-postgres only",
                         hint="pgshift sync run SQLITE PG --mode to-sqlite")
    opts = SyncOptions(sqlite_path=sqlite_path, dsn=resolve(postgres_dsn), schema=schema,
                       from_hwm=from_hwm, batch_size=batch_size, follow=follow)
    stop = threading.Event()
    if follow and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        if mode == "to-sqlite":
            from pgshift.sync.apply_sqlite import run_to_sqlite

            result = run_to_sqlite(opts, stop=stop)
        else:
            result = run(opts, stop=stop)
    except KeyboardInterrupt:
        stop.set()
        raise
    if json_output:
        print_json(result.to_dict())
    else:
        _print_run(result)
    if result.parked:
        raise typer.Exit(int(ExitCode.REJECTS))


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
    postgres_dsn: Annotated[str, typer.Argument(help="The PostgreSQL copy (URI, keywords or "
                                                "env:VAR).", show_default=False)],
    schema: Schema = "public",
    timeout: Annotated[float, typer.Option("--timeout", help="Give up after this many "
                                           "seconds.")] = 30.0,
    json_output: Json = False,
) -> None:
    """Write a fence marker into the SQLite change log and apply until it is passed.

    Every write committed before the fence is then in PostgreSQL (hold the app's
    writes first to drain to zero). Exit 1 when the timeout expired first.

      pgshift sync drain app.db env:DATABASE_URL --timeout 10
    """
    opts = SyncOptions(sqlite_path=sqlite_path, dsn=resolve(postgres_dsn), schema=schema)
    out = ops.drain(opts, timeout)
    if json_output:
        print_json(out)
    else:
        state = "drained" if out["drained"] else "NOT drained"
        out_console().print(f"{state}: fence seq {out['fence_seq']}, checkpoint seq "
                            f"{out['last_seq']}, applied {out['applied']} in {out['seconds']}s")
    if not out["drained"]:
        raise typer.Exit(int(ExitCode.DIFFERENCES))
    if out["parked"]:
        raise typer.Exit(int(ExitCode.REJECTS))


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
) -> None:
    """Capture, checkpoint, pending changes, lag and parked changes.

      pgshift sync status app.db env:DATABASE_URL --json

      pgshift sync status app.db env:DATABASE_URL --prometheus > sync.prom
    """
    if sqlite_path is None and postgres_dsn is None:
        raise UsageError("give the SQLite file, the PostgreSQL DSN or both",
                         hint="pgshift sync status app.db env:DATABASE_URL")
    out = ops.status(sqlite_path, resolve(postgres_dsn) if postgres_dsn else None, schema)
    if prometheus:
        from pgshift.sync.metrics import prometheus as render

        sys.stdout.write(render(out))
        return
    if json_output:
        print_json(out)
        return
    _print_status(out)


def _print_status(out: dict[str, Any]) -> None:
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
    out = ops.uninstall(sqlite_path, resolve(postgres_dsn) if postgres_dsn else None, schema)
    if json_output:
        print_json(out)
        return
    con = out_console()
    con.print("capture removed from SQLite" if out["sqlite_removed"]
              else "capture was not installed in SQLite")
    if postgres_dsn:
        con.print("sync state removed from PostgreSQL")


__all__ = ["PgshiftError", "sync_app"]
