"""Arguments and options shared by the ``pgshift sync`` commands (sync.py, sync_tables.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

SqlitePath = Annotated[Path, typer.Argument(help="The application's SQLite file.",
                                            show_default=False)]
PostgresDsn = Annotated[str, typer.Argument(help="The PostgreSQL copy (URI, keywords or "
                                            "env:VAR).", show_default=False)]
Schema = Annotated[str, typer.Option("--schema", help="Target schema.")]
Json = Annotated[bool, typer.Option("--json", help="JSON result on stdout.")]
Timeout = Annotated[float, typer.Option("--timeout", help="Give up draining after this many "
                                        "seconds (nothing is switched then).")]
