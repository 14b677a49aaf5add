"""How the CLI speaks: one ``Error:`` line with a ``Try:`` hint, JSON for machines."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console

from pgshift.dsn import redact
from pgshift.errors import PgshiftError


def err_console(*, markup: bool = True) -> Console:
    """Stderr; ``markup=False`` for text that may hold brackets (paths, SQL)."""
    return Console(stderr=True, highlight=False, soft_wrap=True, markup=markup)


# Width of tables printed to a pipe or file (CI logs): wide enough that no name, key or
# number is ever cut or folded; each table is only as wide as its content.
LOG_WIDTH = 100_000


def out_console(*, markup: bool = True) -> Console:
    """Stdout; ``markup=False`` for text that may hold brackets (SQL, ``[scope]``).

    On a terminal, tables fit its width; anywhere else (a CI log) they are printed
    at full width, never cut at 80 columns. ``--json`` is the machine-readable form.
    """
    width = None if sys.stdout.isatty() else LOG_WIDTH
    return Console(highlight=False, soft_wrap=True, markup=markup, width=width)


def print_error(exc: PgshiftError) -> None:
    """``Error: <fact>`` then ``Try: <exact command>``; never a traceback, never a password."""
    print(f"Error: {redact(exc.message)}", file=sys.stderr)
    if exc.hint:
        print(f"Try: {redact(exc.hint)}", file=sys.stderr)


def print_json(payload: Any) -> None:
    sys.stdout.write(json.dumps(payload, indent=2, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()
