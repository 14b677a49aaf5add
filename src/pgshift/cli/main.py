"""``pgshift``: the entry point. Every command is one library call plus output.

Start-up imports only what the command line needs: a command's module (and the
libraries behind it) is imported when that command runs, and ``pgshift --help``
lists the commands from the summaries below without importing any of them
(measured: ``pgshift --help`` took ~0.6 s of imports when every command module
was imported first; tests/test_cli_startup.py keeps the summaries in step).
"""

from __future__ import annotations

import importlib
import os
import signal
import sqlite3
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any

import typer
from typer._click.exceptions import ClickException  # Typer 0.2x vendors Click

from pgshift import __version__
from pgshift import cli as _cli_package
from pgshift.errors import ExitCode, PgshiftError

_HELP = (
    "Move a live application from SQLite to PostgreSQL with a blue-green deployment.\n\n"
    "Start with `pgshift demo` for a full rehearsal on this machine, or "
    "`pgshift migrate app.db postgresql://user@host/db` to copy schema and data."
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"pgshift {__version__}")
        raise typer.Exit()


def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.",
                                        envvar="PGSHIFT_DEBUG")] = False,
) -> None:
    """Move a live application from SQLite to PostgreSQL with a blue-green deployment."""
    if debug:
        os.environ["PGSHIFT_DEBUG"] = "1"


def _new_app() -> typer.Typer:
    app = typer.Typer(
        name="pgshift",
        help=_HELP,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    app.callback()(_root)
    return app


def _command(name: str, attr: str) -> Callable[[typer.Typer, ModuleType], None]:
    return lambda app, m: app.command(name=name, no_args_is_help=True)(getattr(m, attr))


def _group(name: str, attr: str) -> Callable[[typer.Typer, ModuleType], None]:
    return lambda app, m: app.add_typer(getattr(m, attr), name=name)


def _rollout(app: typer.Typer, m: ModuleType) -> None:
    m.register(app)


_ROLLOUT_WORDS = ("rollout", "plan", "status", "promote", "pause", "resume", "abort",
                  "rollback", "approve", "note")

# (command words, module, how it registers), in the order ``--help`` lists them:
# commands first, then groups (as Typer does).
_ENTRIES: tuple[tuple[tuple[str, ...], str, Callable[[typer.Typer, ModuleType], None]], ...] = (
    (("migrate",), "pgshift.cli.migrate", _command("migrate", "migrate_command")),
    (("verify",), "pgshift.cli.verify", _command("verify", "verify_command")),
    (("proxy",), "pgshift.cli.proxy", _command("proxy", "proxy_command")),
    (("provision",), "pgshift.cli.provision", _command("provision", "provision_command")),
    (("optimize",), "pgshift.cli.optimize", _command("optimize", "optimize_command")),
    (_ROLLOUT_WORDS, "pgshift.cli.rollout", _rollout),
    (("init",), "pgshift.cli.init", _command("init", "init_command")),
    (("preflight",), "pgshift.cli.preflight", _command("preflight", "preflight_command")),
    (("report",), "pgshift.cli.report", _command("report", "report_command")),
    (("dashboard",), "pgshift.cli.dashboard", _command("dashboard", "dashboard_command")),
    (("sync",), "pgshift.cli.sync", _group("sync", "sync_app")),
    (("traffic",), "pgshift.cli.traffic", _group("traffic", "traffic_app")),
    (("load",), "pgshift.cli.load", _group("load", "load_app")),
    (("demo",), "pgshift.cli.demo", _group("demo", "demo_app")),
    (("archive",), "pgshift.cli.archive", _group("archive", "archive_app")),
)

SUMMARIES: dict[str, str] = {
    "migrate": "Copy a SQLite database into PostgreSQL: schema, data, keys, indexes, constraints.",
    "verify": "Prove SQLite and PostgreSQL hold the same data; point at every differing row.",
    "proxy": "Run the embedded reverse proxy: weighted sticky cohorts, write routing, write "
             "fence.",
    "provision": "Prepare the production PostgreSQL: app role, database, extensions, grants, "
                 "defaults.",
    "optimize": "Index work from real usage, built without blocking writes; settings worth "
                "tuning.",
    "rollout": "Run the whole blue-green cutover the cutover file describes, step by step.",
    "plan": "What a rollout of this cutover file would do; changes nothing.",
    "status": "The rollout's state: phase, weight, blue/green figures, sync lag, next decision.",
    "promote": "Approve a held step (manual gate, inconclusive analysis) or end a bake early.",
    "pause": "Hold the current weight (checks and automatic rollback keep running).",
    "resume": "Continue after `pgshift pause`.",
    "abort": "Stop advancing: all traffic to the current system of record; sync keeps running.",
    "rollback": "Everything back to blue, green's writes carried into SQLite (emergency).",
    "approve": "Record an approval (with who and when) that finalize requires.",
    "note": "Add an operator remark or user feedback to the audit trail (and the report).",
    "init": "Write a commented cutover.yaml and deploy templates for your setup.",
    "preflight": "Check everything that can be known before touching production; change "
                 "nothing.",
    "report": "The deployment report (runbook 5.10) from the rollout's journal and audit trail.",
    "dashboard": "The live rollout page: step, weight, blue vs green charts, sync lag, the "
                 "next decision, the audit trail, and promote / pause / abort / rollback "
                 "buttons (admin token and a typed confirmation).",
    "sync": "Keep PostgreSQL converged with SQLite while SQLite takes writes (to-postgres).",
    "traffic": "Steer traffic between blue and green through a router: status, weight, system "
               "of record, write fence, and the HAProxy config.",
    "load": "Drive the reference app with many users at a target rate, and prove afterwards "
            "that no acknowledged write was lost.",
    "demo": "Rehearse on this machine: seed a hyperpage-shaped database, migrate it to an "
            "embedded PostgreSQL and check the result.",
    "archive": "Archive blue's SQLite database and config files (checksummed, zstd), verify "
               "an archive, restore one.",
}
"""What ``pgshift --help`` lists for each command (its help's first sentence)."""


def _command_word(args: list[str]) -> str | None:
    """The command the arguments name (the root options take no value)."""
    return next((a for a in args if not a.startswith("-")), None)


def build_app(args: list[str] | None = None) -> typer.Typer:
    """The Typer app for ``args``: only the named command's module is imported.

    A command line naming no command (``pgshift --help``) gets the list of
    commands from ``SUMMARIES``; an unknown word gets every command (so the
    error can suggest one); ``None`` gets every command (tests, ``app``).
    """
    app = _new_app()
    word = _command_word(args) if args is not None else None
    if args is not None and word is None:
        for name, summary in SUMMARIES.items():
            app.command(name=name, help=summary)(_listed_only)
        return app
    chosen = [e for e in _ENTRIES if word in e[0]] or list(_ENTRIES)
    for _words, module, register in chosen:
        register(app, importlib.import_module(module))
    return app


def _listed_only() -> None:
    """Never runs: a command line that names a command builds the real one."""


_FULL_APP: typer.Typer | None = None


def __getattr__(name: str) -> Any:
    # ``app`` (every command registered) is built on first use: the console script
    # never needs it, and building it imports every command module.
    global _FULL_APP
    if name == "app":
        if _FULL_APP is None:
            _FULL_APP = build_app()
        return _FULL_APP
    raise AttributeError(name)


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
        app = build_app(args)
        _startup_done()
        # Not standalone: Click's usage errors come back here, so their text (which
        # quotes the arguments, DSNs included) is redacted before it is shown.
        code = app(args=args, prog_name="pgshift", standalone_mode=False)
        if code == _TYPER_INTERRUPTED:  # Typer turns Ctrl-C into Exit(130)
            return _interrupted(args)
        return code if isinstance(code, int) else 0
    except ClickException as exc:
        from pgshift.dsn import redact

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
        from pgshift.cli.output import print_error

        if os.environ.get("PGSHIFT_DEBUG"):
            traceback.print_exc()
        print_error(exc)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        return _interrupted(args)
    except sqlite3.Error as exc:  # a SQLite failure no library call turned into SourceError
        from pgshift.cli.output import print_error
        from pgshift.source.snapshot import sqlite_failure

        _debug_traceback()
        print_error(sqlite_failure(exc, Path("the SQLite file"), "a SQLite operation on"))
        return int(ExitCode.SOURCE)
    except Exception as exc:
        return _unexpected(exc)


def _unexpected(exc: Exception) -> int:
    """A PostgreSQL failure no library call mapped (exit 5), or a bug (exit 10)."""
    from pgshift.dsn import redact

    # psycopg is imported by whatever raised its error; never imported here for nothing.
    psycopg = sys.modules.get("psycopg")
    if psycopg is not None and isinstance(exc, psycopg.Error):
        _debug_traceback()
        print(f"Error: PostgreSQL failed: {_first_line(redact(str(exc)))}", file=sys.stderr)
        print("Try: check the PostgreSQL server's log; rerun with --debug for the traceback",
              file=sys.stderr)
        return int(ExitCode.TARGET)
    # The last line of defence: a bug, not a user error.
    if os.environ.get("PGSHIFT_DEBUG"):
        traceback.print_exc()
    print(f"Error: internal error: {type(exc).__name__}: {redact(str(exc))}", file=sys.stderr)
    print("Try: rerun with --debug and report the traceback", file=sys.stderr)
    return int(ExitCode.INTERNAL)


def _startup_done() -> None:
    if (_cli_package.STARTUP_SIGINT is not None
            and threading.current_thread() is threading.main_thread()):
        # Start-up is over: Ctrl-C is a KeyboardInterrupt again, handled in main().
        signal.signal(signal.SIGINT, signal.default_int_handler)  # what it was (checked there)
        _cli_package.STARTUP_SIGINT = None


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
    from pgshift.dsn import redact

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

__all__ = ["SUMMARIES", "build_app", "main", "run"]
