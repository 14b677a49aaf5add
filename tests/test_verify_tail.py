"""The flip's tail check: the rows of the latest changes, compared on both engines after a
drain (a real SQLite file with capture, a real PostgreSQL, sync's own applier)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pgshift.dsn import Dsn
from pgshift.sync import verbs
from pgshift.verify.tail import verify_tail
from sync_helpers import captured_seed, max_seq, migrate_to, pg_exec, sync_once, write

pytestmark = pytest.mark.data


@pytest.fixture
def synced(tmp_path: Path, pg_dsn: Dsn) -> Path:
    db = captured_seed(tmp_path)
    migrate_to(db, pg_dsn, tmp_path)
    return db


def _drained(db: Path, dsn: Dsn) -> int:
    """Drain to a fence marker (as the flip does behind the write fence): its position."""
    result = verbs.drain(verbs.options(db, dsn), timeout=30)
    assert result.drained
    return result.fence_seq


def test_after_a_drain_the_latest_changes_agree(synced: Path, pg_dsn: Dsn) -> None:
    write(synced,
          "update users set name = 'Renamed' where id in (1, 2, 3)",
          "delete from job_history where id in (select id from job_history limit 4)",
          "insert into rate_limits(key, remaining, limit_total, reset_at, updated_at) "
          "values ('k1', 1, 10, 1, 1)",
          "update jobs set status = 'completed' where id = (select min(id) from jobs)")
    upto = _drained(synced, pg_dsn)
    result = verify_tail(synced, pg_dsn, "public", after=0, upto=upto)
    assert result.ok, result.to_dict()
    # every changed key of every table was looked up, deleted rows included
    assert result.keys["users"] == 3 and result.keys["job_history"] == 4
    assert result.keys["rate_limits"] == 1 and result.keys["jobs"] == 1
    assert result.checked == 9 and result.diffs == [] and result.not_checked == {}
    # the window is the latest `limit` changes: one key per change here
    assert verify_tail(synced, pg_dsn, "public", after=0, upto=upto, limit=2).checked == 2


def test_a_row_postgres_does_not_have_as_blue_wrote_it_fails(synced: Path, pg_dsn: Dsn
                                                             ) -> None:
    write(synced, "update users set name = 'Blue' where id = 1",
          "insert into rate_limits(key, remaining, limit_total, reset_at, updated_at) "
          "values ('gone', 1, 10, 1, 1)")
    upto = _drained(synced, pg_dsn)
    # what a lost change looks like: PostgreSQL holds another value, or not the row
    pg_exec(pg_dsn, "update users set name = 'Other' where id = 1",
            "delete from rate_limits where key = 'gone'")
    result = verify_tail(synced, pg_dsn, "public", after=0, upto=upto)
    assert not result.ok
    found = {(d.table, d.kind): d for d in result.diffs}
    assert found[("users", "changed")].key == {"id": "1"}
    assert "name" in found[("users", "changed")].columns
    assert found[("rate_limits", "missing_in_postgres")].key == {"key": "gone"}
    # changes before `after` are outside the window
    assert verify_tail(synced, pg_dsn, "public", after=upto, upto=upto).checked == 0


def test_a_parked_change_is_explained_not_failed(synced: Path, pg_dsn: Dsn) -> None:
    before = max_seq(synced)
    # a real in an integer column: sync parks it (PostgreSQL cannot hold it as blue has it)
    write(synced, "insert into rate_limits(key, remaining, limit_total, reset_at, "
                  "updated_at) values ('bad', 1.5, 10, 1, 1)")
    assert sync_once(synced, pg_dsn).parked == 1
    upto = _drained(synced, pg_dsn)
    result = verify_tail(synced, pg_dsn, "public", after=before, upto=upto)
    assert result.ok, result.to_dict()
    assert [(d.table, d.key, d.kind) for d in result.explained] == [
        ("rate_limits", {"key": "bad"}, "missing_in_postgres")]
