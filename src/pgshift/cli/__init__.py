"""The command line: thin Typer commands over library calls."""

import os as _os
import signal as _signal
import sys as _sys
import threading as _threading


def _interrupted_at_startup(signum: int, frame: object) -> None:
    # Ctrl-C while typer, rich and psycopg are still importing: no traceback, the
    # documented message and exit code (nothing has started, so nothing to clean up).
    _os.write(2, b"Interrupted.\n")
    _os._exit(6)


# Installed for the import of pgshift.cli.main only; it restores the previous handler
# once its imports are done (tests and library users keep their own Ctrl-C handling).
STARTUP_SIGINT: object = None
# Only where Ctrl-C would raise anyway: a SIGINT the parent ignores (``cmd &`` in a
# script) stays ignored.
if (_os.path.basename(_sys.argv[0] if _sys.argv else "") == "pgshift"
        and _threading.current_thread() is _threading.main_thread()
        and _signal.getsignal(_signal.SIGINT) is _signal.default_int_handler):
    STARTUP_SIGINT = _signal.signal(_signal.SIGINT, _interrupted_at_startup)
