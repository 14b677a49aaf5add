"""The state directory every command shares: ``.pgshift/<name>/``.

Layout (docs/architecture.md):

    .pgshift/<name>/
        journal.sqlite   steps and decisions, written before acting
        audit.jsonl      one event per line: ts, step, kind, message, figures, actor
        snapshots/       online backups of the source, with their metadata
        rejects.jsonl    values that could not be carried, one per line
        report/          the deployment report

Migrate's resume checkpoints are *not* here: they live in the target's
``pgshift`` schema because they must commit with the data.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import sqlite3
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgshift.dsn import redact

STATE_ROOT = ".pgshift"
# State holds snapshots of production databases and rejected values: owner-only, like the
# database file itself usually is (a 0644 copy of a chmod-600 database would widen access).
DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) and make it owner-only (0700); idempotent."""
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    if path.stat().st_mode & 0o777 != DIR_MODE:
        os.chmod(path, DIR_MODE)
    return path


def private_file(path: Path) -> Path:
    """Create ``path`` empty with mode 0600 unless it exists (then make it 0600)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)
    return path


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write ``path`` so a crash leaves either the old or the new content: temp, fsync, rename.

    The file is 0600 (``mkstemp``'s mode survives the rename).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@dataclass(frozen=True)
class StateDir:
    """Paths of one cutover's (or one standalone run's) state."""

    root: Path

    @classmethod
    def for_name(cls, base: Path, name: str) -> StateDir:
        """``base/.pgshift/name``: next to the cutover file, or the working directory."""
        return cls(base / STATE_ROOT / name)

    @property
    def journal(self) -> Path:
        return self.root / "journal.sqlite"

    @property
    def audit_log(self) -> Path:
        return self.root / "audit.jsonl"

    @property
    def snapshots(self) -> Path:
        return self.root / "snapshots"

    @property
    def rejects(self) -> Path:
        return self.root / "rejects.jsonl"

    @property
    def report(self) -> Path:
        return self.root / "report"

    def ensure(self) -> StateDir:
        """Create the directory tree (idempotent)."""
        for d in (self.root, self.snapshots, self.report):
            private_dir(d)
        return self

    def audit(
        self,
        step: str,
        kind: str,
        message: str,
        figures: Mapping[str, Any] | None = None,
        actor: str | None = None,
    ) -> None:
        """Append one audit event; the message is redacted so no DSN password lands on disk."""
        private_dir(self.root)
        event = {
            "ts": _now_iso(),
            "step": step,
            "kind": kind,
            "message": redact(message),
            "figures": dict(figures or {}),
            "actor": actor or _actor(),
        }
        line = json.dumps(event, default=str, ensure_ascii=False) + "\n"
        # O_APPEND makes each event one atomic write, so concurrent writers interleave whole lines.
        fd = os.open(self.audit_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def journal_db(self) -> Iterator[sqlite3.Connection]:
        """The journal (steps and decisions); created on first use."""
        private_dir(self.root)
        private_file(self.journal)
        con = sqlite3.connect(self.journal, isolation_level=None)
        try:
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=FULL")
            con.executescript(_JOURNAL_SCHEMA)
            yield con
        finally:
            con.close()


_JOURNAL_SCHEMA = """
CREATE TABLE IF NOT EXISTS steps (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('started', 'done', 'failed', 'skipped')),
    started_at TEXT NOT NULL,
    finished_at TEXT,
    figures TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY,
    ts TEXT NOT NULL,
    step TEXT NOT NULL,
    decision TEXT NOT NULL,
    reason TEXT NOT NULL
);
"""


def _now_iso() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"


def _actor() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid:{os.getuid()}"
