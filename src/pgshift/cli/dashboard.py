"""``pgshift dashboard``: the live rollout page (library: ``pgshift.dashboard``)."""

from __future__ import annotations

import sys
import time
import webbrowser
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from pgshift.errors import UsageError

if TYPE_CHECKING:
    from pgshift.dashboard import Dashboard


def start(cutover: Path, *, host: str = "127.0.0.1", port: int = 0,
          interval: float = 1.0) -> Dashboard:
    """Serve the dashboard in a thread and print its URL once (stderr)."""
    from pgshift.dashboard import Dashboard
    from pgshift.traffic.proxy.config import is_loopback

    if interval <= 0:
        raise UsageError("--interval must be a positive number of seconds", hint="--interval 1")
    dash = Dashboard(cutover, host=host, port=port, interval=interval).start()
    print(f"dashboard: {dash.startup_url()}", file=sys.stderr, flush=True)
    if dash.token_source == "cutover":
        print(f"  sign in with the admin token (${dash.token_var})", file=sys.stderr)
    if not is_loopback(dash.host):
        print(f"  warning: listening on {dash.host}, plain HTTP: prefer 127.0.0.1 and "
              f"`ssh -L {dash.port}:127.0.0.1:{dash.port}`", file=sys.stderr)
    return dash


def dashboard_command(
    cutover: Annotated[Path, typer.Argument(help="The cutover file (cutover.yaml).",
                                            show_default=False)],
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port (0: a free one, printed).")] = 0,
    open_browser: Annotated[bool, typer.Option("--open/--no-open",
                                               help="Open the page in a browser.")] = False,
    interval: Annotated[float, typer.Option("--interval", help="Seconds between readings "
                                            "of the rollout's state.")] = 1.0,
) -> None:
    """The live rollout page: step, weight, blue vs green charts, sync lag, the next
    decision, the audit trail, and promote / pause / abort / rollback buttons (admin
    token and a typed confirmation). Runs until Ctrl-C.

      pgshift dashboard cutover.yaml

      pgshift dashboard cutover.yaml --port 8765 --open
    """
    dash = start(cutover, host=host, port=port, interval=interval)
    if open_browser:
        webbrowser.open(dash.startup_url())
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:  # the way to stop it: not an interruption of work
        print("dashboard stopped", file=sys.stderr)
    finally:
        dash.stop()
