"""Long-lived helper processes the engine starts and re-attaches to: the embedded proxy and
the sync applier.

They run detached (their own session), so when the engine dies traffic and sync carry on
as they were, and ``pgshift rollout --resume`` finds them again through their pid files
(``.pgshift/<name>/procs/<service>.json``, with the command line, checked against
``/proc`` so a recycled pid is not mistaken for ours). Their output goes to
``procs/<service>.log``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgshift.state import atomic_write


def pgshift_argv(*args: str) -> list[str]:
    """The command line of a ``pgshift`` subcommand run by this Python."""
    return [sys.executable, "-m", "pgshift.cli.main", *args]


@dataclass(frozen=True)
class Service:
    name: str
    pid: int
    argv: list[str]
    started: float

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "pid": self.pid, "argv": self.argv, "started": self.started}


def _cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    if stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X"):  # exited, not yet reaped
        return None
    return [p.decode(errors="replace") for p in raw.split(b"\0") if p]


class Supervisor:
    """Starts, finds and stops the services of one cutover."""

    def __init__(self, root: Path) -> None:
        self.root = root / "procs"
        self.root.mkdir(parents=True, exist_ok=True)

    def _file(self, name: str) -> Path:
        return self.root / f"{name}.json"

    def log(self, name: str) -> Path:
        return self.root / f"{name}.log"

    def find(self, name: str) -> Service | None:
        """The running service ``name``, or None (dead, never started, or pid reused)."""
        try:
            data = json.loads(self._file(name).read_text())
        except (OSError, ValueError):
            return None
        svc = Service(name, int(data["pid"]), list(data["argv"]), float(data["started"]))
        cmd = _cmdline(svc.pid)
        if cmd is None or cmd != svc.argv:
            return None
        return svc

    def start(self, name: str, argv: list[str], *, env: dict[str, str] | None = None,
              cwd: Path | None = None) -> Service:
        """Start ``argv`` detached unless the service already runs (idempotent)."""
        found = self.find(name)
        if found is not None:
            return found
        log = self.log(name)
        with open(log, "ab") as out:
            out.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} start\n".encode())
        # Started by a shell that exits at once: the service is nobody's child here (no
        # zombie to reap, no Popen object to outlive), in a session of its own.
        launcher = subprocess.run(
            ["sh", "-c", '"$@" >>"$PGSHIFT_SERVICE_LOG" 2>&1 </dev/null & echo $!', "sh",
             *argv], capture_output=True, text=True, cwd=cwd, start_new_session=True,
            env={**os.environ, **(env or {}), "PGSHIFT_SERVICE_LOG": str(log)}, check=True)
        svc = Service(name, int(launcher.stdout.strip()), argv, time.time())
        atomic_write(self._file(name), json.dumps(svc.to_dict()))
        return svc

    def stop(self, name: str, *, timeout: float = 10.0) -> bool:
        """SIGTERM, then SIGKILL after ``timeout``; True when it was running."""
        svc = self.find(name)
        if svc is None:
            with contextlib.suppress(FileNotFoundError):
                self._file(name).unlink()
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(svc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.find(name) is not None and time.monotonic() < deadline:
            time.sleep(0.02)
        if self.find(name) is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(svc.pid, signal.SIGKILL)
            while self.find(name) is not None:
                time.sleep(0.02)
        with contextlib.suppress(FileNotFoundError):
            self._file(name).unlink()
        return True

    def kill(self, name: str) -> None:
        """SIGKILL (tests: a service that dies)."""
        svc = self.find(name)
        if svc is not None:
            os.kill(svc.pid, signal.SIGKILL)
            while self.find(name) is not None:
                time.sleep(0.02)

    def tail(self, name: str, chars: int = 2000) -> str:
        try:
            return self.log(name).read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def services(self) -> dict[str, Service | None]:
        return {p.stem: self.find(p.stem) for p in sorted(self.root.glob("*.json"))}
