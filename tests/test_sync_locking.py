"""Removing capture while the application writes: no deadlock, no long stall.

The e2e rig once failed finalize with ``deadlock detected``: capture's triggers were
dropped all in one transaction while an application transaction wrote two tables
in the other order. Rebuilt here with two real connections.
"""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from pgshift.dsn import Dsn, connect
from pgshift.sync import locking, pg_capture

pytestmark = pytest.mark.data


def _setup(dsn: Dsn) -> None:
    with connect(dsn) as c:
        c.execute("CREATE TABLE a (id int PRIMARY KEY, v text)")
        c.execute("CREATE TABLE b (id int PRIMARY KEY, v text)")
        c.commit()
        pg_capture.install(c, "public", {"a": ["id"], "b": ["id"]})


def _waiting_for_lock(dsn: Dsn, app_name: str) -> bool:
    with connect(dsn, autocommit=True) as c:
        row = c.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
                        "AND wait_event_type = 'Lock'", (app_name,)).fetchone()
        return bool(row and row[0])


def test_uninstall_waits_its_turn_instead_of_deadlocking(pg_dsn: Dsn) -> None:
    _setup(pg_dsn)
    app = connect(pg_dsn, application_name="the-app")
    # the application's transaction has written b (its trigger queued a change) ...
    app.execute("INSERT INTO b VALUES (1, 'x')")
    result: dict[str, object] = {}

    def remove() -> None:
        with connect(pg_dsn, application_name="pgshift-remove") as c:
            try:
                result["removed"] = pg_capture.uninstall(c, "public")
            except psycopg.Error as exc:  # pragma: no cover - the failure this guards
                result["error"] = exc

    t = threading.Thread(target=remove)
    t.start()
    deadline = time.monotonic() + 10
    while not _waiting_for_lock(pg_dsn, "pgshift-remove"):
        assert time.monotonic() < deadline, "uninstall never waited for b's lock"
        time.sleep(0.02)
    # ... uninstall dropped a's trigger and waits for b; the app now writes a. With
    # both drops in one transaction this closed a cycle and PostgreSQL killed one side.
    app.execute("INSERT INTO a VALUES (1, 'y')")
    app.commit()
    app.close()
    t.join(30)
    assert not t.is_alive()
    assert result == {"removed": True}
    with connect(pg_dsn) as c:
        assert pg_capture.installed(c, "public") == []
        assert c.execute("SELECT to_regclass('pgshift.pg_changes')").fetchone() == (None,)
        assert c.execute("SELECT (SELECT count(*) FROM a), (SELECT count(*) FROM b)"
                         ).fetchone() == (1, 1)


def test_briefly_retries_a_lock_timeout_then_gives_up_at_its_deadline(pg_dsn: Dsn) -> None:
    _setup(pg_dsn)
    holder = connect(pg_dsn)
    holder.execute("LOCK TABLE a IN ACCESS EXCLUSIVE MODE")
    naps: list[float] = []
    with connect(pg_dsn) as c:
        t0 = time.monotonic()
        with pytest.raises(psycopg.errors.LockNotAvailable):
            locking.briefly(c, lambda x: x.execute("ALTER TABLE a REPLICA IDENTITY FULL"),
                            lock_timeout=0.05, deadline=0.6, sleep=lambda s: (naps.append(s),
                                                                             time.sleep(s)))
        assert time.monotonic() - t0 < 3
        assert len(naps) >= 2 and naps[1] == 2 * naps[0]  # backed off, then gave up
        # the lock is released: the same call goes through
        holder.rollback()
        locking.briefly(c, lambda x: x.execute("ALTER TABLE a REPLICA IDENTITY FULL"))
        assert c.execute("SELECT relreplident FROM pg_class WHERE relname = 'a'"
                         ).fetchone() == ("f",)
    holder.close()


def test_briefly_refuses_to_run_inside_a_callers_transaction(pg_dsn: Dsn) -> None:
    with connect(pg_dsn) as c:
        c.execute("SELECT 1")
        with pytest.raises(RuntimeError, match="outside a transaction"):
            locking.briefly(c, lambda x: x.execute("SELECT 1"))
