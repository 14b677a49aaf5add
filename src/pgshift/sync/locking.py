"""DDL on tables a live application writes to: one lock at a time, briefly, retried.

Removing capture (``DROP TRIGGER``, ``ALTER TABLE ... REPLICA IDENTITY``) takes an
ACCESS EXCLUSIVE lock on each table. Done for every table in one transaction, it
holds table A's lock while it waits for table B's, and an application transaction
that wrote B and now writes A closes the circle: PostgreSQL kills one side with
``deadlock detected`` (this happened at finalize under the e2e rig's load). And a
waiting ACCESS EXCLUSIVE request queues every later query on that table behind it,
so a long wait is an outage of its own.

Hence the usual online-DDL discipline: each statement in its own short transaction
(never two table locks held, so no cycle through us), under ``lock_timeout``
(the application waits at most that long behind us), retried with backoff on a
lock timeout or a deadlock until ``deadline`` seconds have passed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TypeVar

import psycopg
from psycopg import sql as pgsql

T = TypeVar("T")

RETRYABLE = (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected)


def set_lock_timeout(conn: psycopg.Connection, seconds: float) -> None:
    """``SET LOCAL lock_timeout`` for the current transaction (whole milliseconds, at
    least 1: 0 would mean no timeout at all)."""
    conn.execute(pgsql.SQL("SET LOCAL lock_timeout = {}").format(
        pgsql.Literal(f"{max(1, int(seconds * 1000))}ms")))


def briefly(conn: psycopg.Connection, work: Callable[[psycopg.Connection], T], *,
            lock_timeout: float = 1.0, deadline: float = 120.0,
            sleep: Callable[[float], None] = time.sleep) -> T:
    """Run ``work(conn)`` in a transaction under ``SET LOCAL lock_timeout``; on a lock
    timeout or a deadlock roll back, wait (50 ms doubling to 2 s) and run it again.
    The last error is raised once ``deadline`` seconds have passed."""
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        # inside a caller's transaction the lock would be held until *its* commit
        raise RuntimeError("briefly() needs a connection outside a transaction")
    started, pause = time.monotonic(), 0.05
    while True:
        try:
            with conn.transaction():
                set_lock_timeout(conn, lock_timeout)
                return work(conn)
        except RETRYABLE:
            if time.monotonic() - started + pause > deadline:
                raise
        sleep(pause)
        pause = min(pause * 2, 2.0)


def each_briefly(conn: psycopg.Connection, statements: Iterable[pgsql.Composed], *,
                 lock_timeout: float = 1.0, deadline: float = 120.0) -> int:
    """Each statement through :func:`briefly`, alone; how many ran."""
    n = 0
    for stmt in statements:
        def run(c: psycopg.Connection, s: pgsql.Composed = stmt) -> None:
            c.execute(s)

        briefly(conn, run, lock_timeout=lock_timeout, deadline=deadline)
        n += 1
    return n
