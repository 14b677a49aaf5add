"""``verify --live`` while ``pgshift sync`` carries a steady write load: no false alarm.

The app keeps writing to SQLite during the whole comparison; sync applies the change
log to PostgreSQL only when verify asks (its ``wait_for_lag`` hook), so every segment
the writer touched differs at first sight and must settle, never be reported.
"""

from __future__ import annotations

import random
import threading
from pathlib import Path

import pytest

from pgshift.dsn import Dsn
from pgshift.verify.run import VerifyOptions, verify
from sync_helpers import app_con, captured_seed, check, migrate_to, sync_once

pytestmark = pytest.mark.data


def _writer(db: Path, stop: threading.Event, counts: dict[str, int]) -> None:
    rng = random.Random(7)
    con = app_con(db)
    try:
        while not stop.is_set():
            n = counts["writes"]
            con.execute("UPDATE jobs SET priority = priority + 1 WHERE rowid = ?",
                        (rng.randint(1, 2000),))
            con.execute("INSERT INTO app_state (key, value, updated_at) VALUES (?, ?, ?)",
                        (f"live-{n}", "{}", n))
            con.commit()
            counts["writes"] = n + 1
            stop.wait(0.01)
    finally:
        con.close()


def test_live_verify_under_sync_raises_no_false_alarm(tmp_path: Path, pg_dsn: Dsn,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("pgshift.verify.run.SEGMENT_ROWS", 500)
    db = captured_seed(tmp_path, scale=2000)
    migrate_to(db, pg_dsn, tmp_path)
    sync_once(db, pg_dsn)
    stop, counts = threading.Event(), {"writes": 0}
    writer = threading.Thread(target=_writer, args=(db, stop, counts))
    writer.start()
    try:
        while counts["writes"] < 20:  # the load is running before verify starts
            stop.wait(0.01)
        # Without live mode the unsynced writes are differences: the load is real.
        assert not verify(VerifyOptions(sqlite_path=db, dsn=pg_dsn)).identical
        result = verify(VerifyOptions(sqlite_path=db, dsn=pg_dsn, live=True, live_retries=30,
                                      wait_for_lag=lambda: sync_once(db, pg_dsn)))
    finally:
        stop.set()
        writer.join()
    assert result.identical, result.to_dict()
    assert counts["writes"] > 20
    sync_once(db, pg_dsn)
    check(db, pg_dsn)  # and once the load stops, a plain verify agrees
