"""``pgshift``: the entry point. Every command is one library call plus output."""

from __future__ import annotations

import os
import signal
import sqlite3
import sys
import threading
import traceback
from pathlib import Path
from typing import Annotated

import psycopg
import typer
from typer._click.exceptions import ClickException  # Typer 0.2x vendors Click

from pgshift import __version__
from pgshift import cli as _cli_package
from pgshift.cli.output import print_error
from pgshift.dsn import redact
from pgshift.errors import ExitCode, PgshiftError
from pgshift.source.snapshot import sqlite_failure

app = typer.Typer(
    name="pgshift",
    help=(
        "Move a live application from SQLite to PostgreSQL with a blue-green deployment.\n\n"
        "Start with `pgshift demo` for a full rehearsal on this machine, or "
        "`pgshift migrate app.db postgresql://user@host/db` to copy schema and data."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"pgshift {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.",
                                        envvar="PGSHIFT_DEBUG")] = False,
) -> None:
    """Move a live application from SQLite to PostgreSQL with a blue-green deployment."""
    if debug:
        os.environ["PGSHIFT_DEBUG"] = "1"


def _register() -> None:
    import pgshift.cli.archive as archive_cli
    import pgshift.cli.dashboard as dashboard_cli
    import pgshift.cli.init as init_cli
    import pgshift.cli.optimize as optimize_cli
    import pgshift.cli.preflight as preflight_cli
    import pgshift.cli.provision as provision_cli
    import pgshift.cli.report as report_cli
    from pgshift.cli import demo, load, migrate, proxy, rollout, sync, traffic, verify

    app.command(name="migrate", no_args_is_help=True)(migrate.migrate_command)
    app.command(name="verify", no_args_is_help=True)(verify.verify_command)
    app.add_typer(sync.sync_app, name="sync")
    app.command(name="proxy", no_args_is_help=True)(proxy.proxy_command)
    app.add_typer(traffic.traffic_app, name="traffic")
    app.add_typer(load.load_app, name="load")
    app.add_typer(demo.demo_app, name="demo")
    app.command(name="provision", no_args_is_help=True)(provision_cli.provision_command)
    app.add_typer(archive_cli.archive_app, name="archive")
    app.command(name="optimize", no_args_is_help=True)(optimize_cli.optimize_command)
    rollout.register(app)
    app.command(name="init", no_args_is_help=True)(init_cli.init_command)
    app.command(name="preflight", no_args_is_help=True)(preflight_cli.preflight_command)
    app.command(name="report", no_args_is_help=True)(report_cli.report_command)
    app.command(name="dashboard", no_args_is_help=True)(dashboard_cli.dashboard_command)


_register()

if (_cli_package.STARTUP_SIGINT is not None
        and threading.current_thread() is threading.main_thread()):
    # Start-up is over: Ctrl-C is a KeyboardInterrupt again, handled in main().
    signal.signal(signal.SIGINT, signal.default_int_handler)  # what it was (checked there)

_TYPER_INTERRUPTED = 130  # Typer's exit code for a KeyboardInterrupt (128 + SIGINT)

# Commands that run long enough to be interrupted, and the hint for each. ``{argv}`` is
# the command line as given with anything DSN-like replaced (never a password).
_RESUME_HINTS = {
    "migrate": "pgshift {argv} --resume",
    "sync run": "pgshift {argv}  (continues from its checkpoint; nothing is applied twice)",
    "sync drain": "pgshift {argv}  (the fence marker is written again; applying continues)",
    "rollout": "pgshift {argv} --resume  (continues from its journal)",
    "verify": "pgshift {argv}  (verify only reads; rerun it)",
    "archive": "pgshift {argv}  (the partial archive was not published; rerun it)",
    "load run": "pgshift load check-ledger LEDGER  (acknowledged writes so far are in it)",
}


def main(argv: list[str] | None = None) -> int:
    """Console-script entry: map pgshift errors to exit codes and one-line messages.

    Typer itself reports usage errors (exit 2, with a ``Try 'pgshift ... --help'``).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        # Not standalone: Click's usage errors come back here, so their text (which
        # quotes the arguments, DSNs included) is redacted before it is shown.
        code = app(args=args, prog_name="pgshift", standalone_mode=False)
        if code == _TYPER_INTERRUPTED:  # Typer turns Ctrl-C into Exit(130)
            return _interrupted(args)
        return code if isinstance(code, int) else 0
    except ClickException as exc:
        exc.message = redact(exc.message)
        exc.show()
        return exc.exit_code
    except typer.Abort:  # Ctrl-C or end of input at a prompt
        return _interrupted(args)
    except SystemExit as exc:
        if _caused_by_interrupt(exc):
            return _interrupted(args)
        return int(exc.code or 0) if not isinstance(exc.code, str) else int(ExitCode.USAGE)
    except PgshiftError as exc:
        if os.environ.get("PGSHIFT_DEBUG"):
            traceback.print_exc()
        print_error(exc)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        return _interrupted(args)
    except sqlite3.Error as exc:  # a SQLite failure no library call turned into SourceError
        _debug_traceback()
        print_error(sqlite_failure(exc, Path("the SQLite file"), "a SQLite operation on"))
        return int(ExitCode.SOURCE)
    except psycopg.Error as exc:  # the same for PostgreSQL, after the connection was made
        _debug_traceback()
        print(f"Error: PostgreSQL failed: {_first_line(redact(str(exc)))}", file=sys.stderr)
        print("Try: check the PostgreSQL server's log; rerun with --debug for the traceback",
              file=sys.stderr)
        return int(ExitCode.TARGET)
    except Exception as exc:  # the last line of defence: a bug, not a user error
        if os.environ.get("PGSHIFT_DEBUG"):
            traceback.print_exc()
        print(f"Error: internal error: {type(exc).__name__}: {redact(str(exc))}", file=sys.stderr)
        print("Try: rerun with --debug and report the traceback", file=sys.stderr)
        return int(ExitCode.INTERNAL)


def _debug_traceback() -> None:
    if os.environ.get("PGSHIFT_DEBUG"):
        traceback.print_exc()


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else "unknown error"


def _caused_by_interrupt(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    for _ in range(10):  # Typer: SystemExit <- click Exit(130) <- KeyboardInterrupt
        if seen is None:
            return False
        if isinstance(seen, KeyboardInterrupt):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _interrupted(args: list[str]) -> int:
    """``Interrupted.``, the way to continue where there is one, exit 6 (an abort)."""
    print("Interrupted.", file=sys.stderr)
    hint = interrupt_hint(args)
    if hint:
        print(f"Try: {hint}", file=sys.stderr)
    return int(ExitCode.ABORTED)


def interrupt_hint(args: list[str]) -> str | None:
    """The ``Try:`` line after Ctrl-C for the command in ``args``, or None."""
    words = [a for a in args if not a.startswith("-")]
    for name in sorted(_RESUME_HINTS, key=len, reverse=True):
        if " ".join(words[:len(name.split())]) == name:
            return _RESUME_HINTS[name].format(argv=" ".join(_safe_args(args, name)))
    return None


def _safe_args(args: list[str], command: str) -> list[str]:
    """``args`` with DSN-looking words replaced, and migrate's start-over flags removed."""
    out = []
    for a in args:
        if a == "--resume" or (command == "migrate" and a in ("--restart", "--drop")):
            continue
        if a.startswith("env:") or not any(c in a for c in "=@:") or a.startswith("--"):
            out.append(redact(a))
        else:
            out.append("DSN")
    return out


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()

__all__ = ["app", "main", "run"]
