"""Trimming the SQLite change log: delete what the to-postgres applier has applied.

The change log grows until ``pgshift sync uninstall``. Trimming is a SQLite
*write*, and any commit from a second writer makes the app's deferred
read-then-write transactions fail with SQLITE_BUSY_SNAPSHOT. So it never runs
by itself:

- ``pgshift sync trim SQLITE PG`` is run on purpose, at the flip while the
  fence holds (blue is quiet), or after the flip. It deletes in small batches,
  each its own short ``BEGIN IMMEDIATE`` transaction with a short busy timeout,
  pausing between batches, within a time budget;
- ``pgshift sync run --mode to-sqlite --trim`` (after the flip, when SQLite's
  only writer is that applier) trims one batch after each batch it applies.

What is deleted (:func:`plan`): rows at or below the to-postgres checkpoint
(applied, never read again by the applier), fence markers included, except

- the newest row of the log: migrate's snapshot and ``sync status`` read the
  high-water mark as ``max(seq)``; AUTOINCREMENT keeps new ``seq`` values
  increasing anyway (a deleted ``seq`` is never reused);
- every row of a table whose conflict decisions read SQLite's history: tables
  without PostgreSQL *trigger* capture (the to-postgres applier asks the log who
  wrote a row last; with logical capture there is no queue to ask instead, so
  nothing but fence markers is trimmed) and ``last-writer-wins`` tables (the
  to-sqlite applier reads the capture time of the key's last change).

A row above the checkpoint (not applied yet) is never deleted; the checkpoint
must belong to this change log (same ``install_id``), or nothing is trimmed.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pgshift.dsn import Dsn, connect
from pgshift.errors import SourceError, UsageError
from pgshift.source.snapshot import CHANGELOG_TABLE
from pgshift.sync import logical_slot, mapped, pg_capture
from pgshift.sync import sqlite_capture as capture
from pgshift.sync import state as st
from pgshift.sync.common import open_sqlite

DEFAULT_BATCH = 500  # rows per trim transaction: a few ms of SQLite write lock
BUSY_MS = 200  # wait this long for the write lock, then back off (the app goes first)


@dataclass
class TrimPlan:
    """What may be deleted: ``seq <= upto`` outside the ``keep`` tables."""

    checkpoint: int
    upto: int
    keep: list[str] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def plan(con: sqlite3.Connection, pg: Any, schema: str) -> TrimPlan | None:
    """The trim plan from the to-postgres checkpoint; None when nothing was applied.

    Raises UsageError when the checkpoint belongs to another change log.
    """
    state = st.load(pg, schema, st.TO_POSTGRES)
    pg.commit()
    if state is None:
        return None
    log_id = capture.install_id(con)
    if state.install_id is not None and state.install_id != log_id:
        raise UsageError(
            "the to-postgres checkpoint belongs to another change log (capture was "
            "reinstalled): trimming by it could delete unapplied changes",
            hint="nothing was trimmed; start over with pgshift sync uninstall SQLITE PG")
    max_seq = con.execute(f'SELECT max(seq) FROM "{CHANGELOG_TABLE}"').fetchone()[0] or 0
    captured = set(pg_capture.installed(pg, schema))
    feeds = mapped.stored_feeds(pg, schema)
    if feeds is not None:
        # loaded --into-existing: PostgreSQL captures the target tables the sources feed
        captured |= {f["source"] for f in feeds if f["table"] in captured and f["source"]}
    settings = st.stored_settings(pg, schema)
    pg.commit()
    logical = logical_slot.installed(pg, schema) is not None
    reasons: dict[str, str] = {}
    for table in capture.installed(con):
        if table not in captured:
            # (logical capture has no queue the to-postgres applier could ask instead)
            reasons[table] = ("logical capture" if logical else "no PostgreSQL capture") + \
                ": the to-postgres applier asks the log who wrote a row last"
        elif (settings.get(table) or {}).get("conflict") == "last-writer-wins":
            reasons[table] = "last-writer-wins reads the capture time of a key's last change"
    return TrimPlan(state.last_seq, min(state.last_seq, max_seq - 1), sorted(reasons),
                    reasons)


def trim_batch(con: sqlite3.Connection, p: TrimPlan, limit: int = DEFAULT_BATCH) -> int:
    """Delete up to ``limit`` trimmable rows in one short ``BEGIN IMMEDIATE``; how many."""
    keep = ", ".join("?" for _ in p.keep)
    not_kept = f"AND (op = 'F' OR tbl NOT IN ({keep}))" if p.keep else ""
    con.execute("BEGIN IMMEDIATE")
    try:
        cur = con.execute(
            f'DELETE FROM "{CHANGELOG_TABLE}" WHERE seq IN (SELECT seq FROM '
            f'"{CHANGELOG_TABLE}" WHERE seq <= ? {not_kept} ORDER BY seq LIMIT ?)',
            (p.upto, *p.keep, limit))
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return cur.rowcount


def trim(path: Path, dsn: Dsn, schema: str = "public", *, batch: int = DEFAULT_BATCH,
         max_seconds: float = 30.0, pause: float = 0.005,
         stop: threading.Event | None = None) -> dict[str, Any]:
    """``pgshift sync trim``: delete the applied rows in batches, within ``max_seconds``.

    Each batch waits at most ``BUSY_MS`` for SQLite's write lock; a busy file is
    retried after a pause (the app's writes go first) until the budget is spent.
    """
    if batch < 1:
        raise UsageError(f"--batch-size must be at least 1, not {batch}")
    started = time.monotonic()
    stop = stop or threading.Event()
    con = open_sqlite(path, readonly=False)
    con.execute(f"pragma busy_timeout = {BUSY_MS}")
    pg = connect(dsn, application_name="pgshift-sync")
    deleted = batches = busy = 0
    try:
        if not capture.installed(con):
            raise UsageError(f"capture is not installed in {path}: nothing to trim",
                             hint=f"pgshift sync status {path}")
        p = plan(con, pg, schema)
        if p is None:
            return {"deleted": 0, "batches": 0, "busy_retries": 0, "complete": True,
                    "plan": None, "seconds": 0.0, "left": _count(con)}
        complete = False
        while not stop.is_set() and time.monotonic() - started < max_seconds:
            try:
                n = trim_batch(con, p, batch)
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise SourceError(f"trimming the change log of {path} failed: {exc}",
                                      hint="retry later") from exc
                busy += 1
                stop.wait(min(0.5, 0.02 * busy))
                continue
            deleted += n
            batches += 1
            if n < batch:
                complete = True
                break
            stop.wait(pause)
        return {"deleted": deleted, "batches": batches, "busy_retries": busy,
                "complete": complete, "plan": p.to_dict(),
                "seconds": round(time.monotonic() - started, 3), "left": _count(con)}
    finally:
        con.close()
        pg.close()


def _count(con: sqlite3.Connection) -> int:
    return int(con.execute(f'SELECT count(*) FROM "{CHANGELOG_TABLE}"').fetchone()[0])
