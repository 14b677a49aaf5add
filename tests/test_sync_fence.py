"""Fence and drain in both directions; the stranded range a timed-out drain reports."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from pgshift.cli.main import main
from pgshift.dsn import Dsn, connect
from pgshift.sync import pg_capture, verbs
from pgshift.sync import state as st
from pgshift.sync.apply import SyncOptions
from pgshift.sync.apply_sqlite import run_to_sqlite
from sync_helpers import captured_seed, check, flipped_seed, migrate_to, pg_exec, write

pytestmark = pytest.mark.data


@pytest.fixture
def flipped(tmp_path: Path, pg_dsn: Dsn) -> Path:
    return flipped_seed(tmp_path, pg_dsn)


def test_rollback_drain_carries_green_writes_to_sqlite(flipped: Path, pg_dsn: Dsn,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    pg_exec(pg_dsn, "update users set name = 'green 1' where id = 1",
            "delete from job_history where id = (select min(id) from job_history)",
            "update app_state set value = 'green' where key = (select min(key) from app_state)")
    out = verbs.drain(SyncOptions(sqlite_path=flipped, dsn=pg_dsn), timeout=20,
                    direction="to-sqlite")
    assert out.drained and out.applied == 3 and out.parked == 0
    assert out.stranded.count == 0 and not out.by_running_applier
    assert pg_exec(pg_dsn, "select count(*) from pgshift.pg_changes") == [(0,)]
    check(flipped, pg_dsn)
    pg_exec(pg_dsn, "update users set name = 'green 2' where id = 1")
    assert main(["sync", "drain", str(flipped), pg_dsn.conninfo, "--direction", "to-sqlite",
                 "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    assert cli["drained"] and cli["applied"] == 1 and cli["direction"] == "to-sqlite"
    check(flipped, pg_dsn)


def test_rollback_drain_times_out_and_reports_the_stranded_range(
        flipped: Path, pg_dsn: Dsn, capsys: pytest.CaptureFixture[str]) -> None:
    pg_exec(pg_dsn, "update users set name = 'green' where id = 1",
            "update users set name = 'green' where id = 2",
            "update app_state set value = 'green' where key = (select min(key) from app_state)")
    first, last = pg_exec(pg_dsn, "select min(id), max(id) from pgshift.pg_changes")[0]
    # blue still holds the SQLite write lock (it was not stopped): nothing can be applied
    blue = sqlite3.connect(flipped, isolation_level=None)
    blue.execute("begin immediate")
    try:
        t0 = time.monotonic()
        out = verbs.drain(SyncOptions(sqlite_path=flipped, dsn=pg_dsn), timeout=1.5,
                        direction="to-sqlite")
        assert time.monotonic() - t0 < 6  # the deadline holds despite the busy file
        assert not out.drained and out.applied == 0
        s = out.stranded
        assert (s.count, s.first, s.last) == (3, first, last)
        assert s.tables == {"app_state": 1, "users": 2}
        assert s.oldest_age_ms is not None and s.oldest_age_ms >= 1000
        assert main(["sync", "drain", str(flipped), pg_dsn.conninfo, "--direction",
                     "to-sqlite", "--timeout", "0.5", "--json"]) == 1
        cli = json.loads(capsys.readouterr().out)
        assert not cli["drained"] and cli["stranded"]["count"] == 3
    finally:
        blue.execute("rollback")
        blue.close()
    # the markers of the timed-out drains stay queued and are passed over, not applied
    out = verbs.drain(SyncOptions(sqlite_path=flipped, dsn=pg_dsn), timeout=20,
                    direction="to-sqlite")
    assert out.drained and out.applied == 3
    assert pg_exec(pg_dsn, "select count(*) from pgshift.pg_changes") == [(0,)]
    check(flipped, pg_dsn)


def test_fence_waits_for_a_transaction_that_queued_a_lower_id(flipped: Path,
                                                              pg_dsn: Dsn) -> None:
    late = connect(pg_dsn)
    try:
        late.execute("update users set name = 'late committer' where id = 3")
        (pending_id,) = late.execute("select max(id) from pgshift.pg_changes").fetchone()
        got: list[int] = []
        conn = connect(pg_dsn)
        fencer = threading.Thread(target=lambda: got.append(
            pg_capture.fence(conn, "public", lock_timeout=20)))
        fencer.start()
        time.sleep(0.5)
        assert fencer.is_alive() and not got  # held back until the writer ends
        late.commit()
        fencer.join(20)
        conn.close()
    finally:
        late.close()
    assert got and got[0] > pending_id
    out = verbs.drain(SyncOptions(sqlite_path=flipped, dsn=pg_dsn), timeout=20,
                    direction="to-sqlite")
    assert out.drained and out.applied == 1
    check(flipped, pg_dsn)


def test_drain_waits_for_the_running_follower(flipped: Path, pg_dsn: Dsn) -> None:
    stop = threading.Event()
    follower = threading.Thread(target=run_to_sqlite, args=(SyncOptions(
        sqlite_path=flipped, dsn=pg_dsn, follow=True, poll=0.02),), kwargs={"stop": stop})
    follower.start()
    try:
        deadline = time.monotonic() + 10
        while not pg_exec(pg_dsn, "select 1 from pg_stat_activity where application_name "
                                  "= 'pgshift-sync'") and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)  # the follower holds the to-sqlite lock by now
        pg_exec(pg_dsn, "update users set name = 'followed' where id = 1")
        out = verbs.drain(SyncOptions(sqlite_path=flipped, dsn=pg_dsn), timeout=20,
                        direction="to-sqlite")
    finally:
        stop.set()
        follower.join(20)
    assert out.drained and out.by_running_applier
    check(flipped, pg_dsn)


def test_to_postgres_drain_reports_the_stranded_range(tmp_path: Path, pg_dsn: Dsn) -> None:
    db = captured_seed(tmp_path)
    migrate_to(db, pg_dsn, tmp_path)
    verbs.drain(SyncOptions(sqlite_path=db, dsn=pg_dsn), timeout=20)  # creates the state
    write(db, "update users set name = 'a' where id = 1",
          "update users set name = 'b' where id = 2")
    write(db, "delete from app_state where key = (select min(key) from app_state)")
    # an applier that does not move holds the to-postgres lock: the drain watches it
    holder = connect(pg_dsn, autocommit=True)
    try:
        st.acquire_lock(holder, "public", st.TO_POSTGRES)
        out = verbs.drain(SyncOptions(sqlite_path=db, dsn=pg_dsn), timeout=1)
    finally:
        holder.close()
    assert not out.drained and out.by_running_applier
    s = out.stranded
    assert s.count == 3 and s.tables == {"app_state": 1, "users": 2}
    assert s.last < out.fence_seq and s.last - s.first == 2
    out = verbs.drain(SyncOptions(sqlite_path=db, dsn=pg_dsn), timeout=20)
    assert out.drained and out.stranded.count == 0 and out.applied >= 3
    check(db, pg_dsn)
