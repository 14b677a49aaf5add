"""Consistent snapshots of a live SQLite database.

Migrate, rollout and archive never read the live file: they read an online
backup taken with SQLite's backup API in one step (one read transaction, so
the copy is a single point in time while the app keeps writing in WAL mode).
The change-log high-water mark is read from the snapshot file itself, so the
copy and the sync that follows it meet exactly: every change with
``seq <= hwm`` is in the snapshot, every later one is for sync to apply.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from pgshift.errors import SourceError, UsageError
from pgshift.state import atomic_write, private_dir, private_file

# Sync's change log on the source (created by `pgshift sync install`).
CHANGELOG_TABLE = "_pgshift_changes"
CAPTURE_STATE_TABLE = "_pgshift_state"  # holds the change log's install_id
SQLITE_MAGIC = b"SQLite format 3\x00"


def check_sqlite_file(path: Path) -> None:
    """Raise UsageError unless ``path`` is a readable SQLite database file."""
    if not path.exists():
        raise UsageError(f"SQLite file not found: {path}", hint="check the path (ls -l PATH)")
    if path.is_dir():
        raise UsageError(f"{path} is a directory, not a SQLite file",
                         hint=f"name the database file inside it: ls {path}")
    if not os.access(path, os.R_OK):
        raise UsageError(f"cannot read {path}: permission denied",
                         hint="run as a user that can read the file")
    # The header is read through SQLite, never with open()/close() of our own: closing any
    # descriptor of the file drops every POSIX lock this process holds on it, those of
    # SQLite connections to it included (an app or an applier in the same process); another
    # process may then checkpoint and reset the WAL under them (seen: SQLITE_IOERR_SHORT_READ
    # in a process that ran the reference app and the rollout engine). SQLite defers closing
    # its own descriptors while another connection of the process holds a lock.
    if path.stat().st_size == 0:
        raise UsageError(f"{path} is an empty file",
                         hint="point pgshift at the application's .db file")
    try:
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            con.execute("pragma schema_version").fetchone()
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        if "not a database" not in str(exc):
            return  # a readable header; a damaged body is reported where it is read
        raise UsageError(f"{path} is not a SQLite 3 database (bad header)",
                         hint="point pgshift at the application's .db file") from exc


def sqlite_failure(exc: sqlite3.Error, path: Path, doing: str) -> SourceError:
    """A SQLite error as a ``SourceError`` (exit 4) whose hint fits the failure.

    A locked file is not damaged and a read-only one is not busy: the hint follows
    SQLite's error code, not one guess for every failure.
    """
    code = getattr(exc, "sqlite_errorcode", None)
    name = getattr(exc, "sqlite_errorname", "") or ""
    text = str(exc).lower()
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in text:
        hint = (f"another process holds a lock on {path} (a long write transaction or an "
                "exclusive lock): retry when it is done (fuser -v FILE shows who)")
    elif name.startswith("SQLITE_READONLY") or "readonly" in text or "read-only" in text:
        hint = f"make {path} and its directory writable by this user (ls -l {path})"
    elif name.startswith("SQLITE_CANTOPEN") or "unable to open" in text:
        hint = f"check that {path} and its directory exist and are readable (ls -l {path})"
    elif name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) or "malformed" in text:
        hint = f"the file is damaged: sqlite3 {path} 'pragma integrity_check'"
    else:
        hint = f"sqlite3 {path} 'pragma integrity_check'"
    detail = f" ({name})" if name and code is not None else ""
    return SourceError(f"{doing} {path} failed: {exc}{detail}", hint=hint, operation=doing)


def open_source(path: Path, *, immutable: bool = False) -> sqlite3.Connection:
    """Open a SQLite file read-only; ``immutable`` skips locking (only for snapshots)."""
    check_sqlite_file(path)
    flag = "&immutable=1" if immutable else ""
    try:
        con = sqlite3.connect(f"file:{path.resolve()}?mode=ro{flag}", uri=True,
                              check_same_thread=False)
        con.execute("select count(*) from sqlite_schema").fetchone()
    except sqlite3.DatabaseError as exc:
        raise sqlite_failure(exc, path, "reading") from exc
    return con


def journal_mode(path: Path) -> str:
    """The source's journal mode ('wal', 'delete', ...), read without changing it."""
    con = open_source(path)
    try:
        return str(con.execute("pragma journal_mode").fetchone()[0]).lower()
    finally:
        con.close()


@dataclass(frozen=True)
class Snapshot:
    """A point-in-time copy of the source and where sync must start after it."""

    path: Path
    source: Path
    taken_at: str
    seconds: float
    bytes: int
    hwm: int | None  # max(seq) of the change log in the snapshot; None when capture is absent
    source_journal_mode: str
    sqlite_version: str
    # The change log's install_id in the snapshot: sync refuses a log reinstalled since.
    capture_id: str | None = None

    @property
    def meta_path(self) -> Path:
        return self.path.with_suffix(".json")

    def connect(self) -> sqlite3.Connection:
        """A read-only connection; the snapshot never changes, so no locks are taken."""
        return open_source(self.path, immutable=True)

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["path"], d["source"] = str(self.path), str(self.source)
        return d

    @classmethod
    def load(cls, meta_path: Path) -> Snapshot:
        """Read the metadata written next to a snapshot file."""
        try:
            d = json.loads(meta_path.read_text())
            d["path"], d["source"] = Path(d["path"]), Path(d["source"])
            snap = cls(**d)
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise UsageError(f"unreadable snapshot metadata {meta_path}: {exc}") from exc
        if not snap.path.exists():
            raise UsageError(f"snapshot file {snap.path} is gone",
                             hint="start over with --restart")
        return snap


def check_snapshot_of(snap: Snapshot, source: Path) -> None:
    """Raise UsageError unless ``snap`` is a snapshot of ``source`` whose file is still there.

    For a snapshot taken by someone else (the rollout engine) and handed to
    migrate or verify: copying or comparing a backup of another database would
    be silently wrong.
    """
    if snap.source.resolve() != source.resolve():
        raise UsageError(f"the snapshot {snap.path} is of {snap.source}, not {source}",
                         hint=f"take a snapshot of {source}, or name {snap.source}")
    if not snap.path.is_file():
        raise UsageError(f"snapshot file {snap.path} is gone",
                         hint="take a new snapshot (or run without one)")


def read_hwm(con: sqlite3.Connection) -> int | None:
    """The change-log high-water mark inside an open database, or None without capture."""
    found = con.execute(
        "select 1 from sqlite_schema where type = 'table' and name = ?", (CHANGELOG_TABLE,)
    ).fetchone()
    if not found:
        return None
    value = con.execute(f'select max(seq) from "{CHANGELOG_TABLE}"').fetchone()[0]
    return int(value) if value is not None else 0


def read_capture_id(con: sqlite3.Connection) -> str | None:
    """The change log's install_id inside an open database, or None without capture."""
    found = con.execute(
        "select 1 from sqlite_schema where type = 'table' and name = ?", (CAPTURE_STATE_TABLE,)
    ).fetchone()
    if not found:
        return None
    row = con.execute(
        f'select v from "{CAPTURE_STATE_TABLE}" where k = \'install_id\'').fetchone()
    return str(row[0]) if row else None


def take_snapshot(source: Path, dest_dir: Path, *, require_wal: bool = True) -> Snapshot:
    """Back up ``source`` into ``dest_dir`` in one step and record its high-water mark.

    WAL mode lets the backup's read transaction run beside the app's writers;
    in rollback-journal mode the same read blocks writers for its duration, so
    it is refused unless ``require_wal`` is False (offline files, tests).
    """
    check_sqlite_file(source)
    mode = journal_mode(source)
    if require_wal and mode != "wal":
        raise UsageError(
            f"{source} is in journal_mode={mode}; a live snapshot needs WAL",
            hint=f"sqlite3 {source} 'PRAGMA journal_mode=WAL' (once, while the app is stopped)",
        )
    private_dir(dest_dir)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    dest = dest_dir / f"{source.stem}-{stamp}-{os.getpid()}.sqlite"
    tmp = dest.with_suffix(".partial")
    tmp.unlink(missing_ok=True)
    # Created 0600 before SQLite opens it: SQLite keeps an existing file's mode and gives
    # its journal the same one, so the copy is never readable by others, not even briefly.
    private_file(tmp)
    started = time.perf_counter()
    src = open_source(source)
    dst = sqlite3.connect(tmp)
    try:
        # pages=-1: the whole database in one step, i.e. inside one read transaction.
        src.backup(dst, pages=-1)
        # The copy inherits WAL mode from page 1; switch it to a self-contained file.
        dst.execute("pragma journal_mode=delete")
        hwm = read_hwm(dst)
        capture_id = read_capture_id(dst)
        version = dst.execute("select sqlite_version()").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        raise sqlite_failure(exc, source, "the snapshot of") from exc
    finally:
        dst.close()
        src.close()
    with tmp.open("rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, dest)
    snap = Snapshot(
        path=dest, source=source.resolve(),
        taken_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        seconds=round(time.perf_counter() - started, 3), bytes=dest.stat().st_size,
        hwm=hwm, source_journal_mode=mode, sqlite_version=version, capture_id=capture_id,
    )
    atomic_write(snap.meta_path, json.dumps(snap.to_dict(), indent=2))
    return snap
