"""migrate and verify as the rollout engine calls them: one snapshot taken by the caller
for migrate, verify and sync; the caller's progress left open; the timed ``Steps`` runner.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgshift.dsn import Dsn
from pgshift.errors import UsageError
from pgshift.migrate import MigrateOptions, Steps, migrate
from pgshift.source.snapshot import take_snapshot
from pgshift.state import StateDir
from pgshift.sync import ops
from pgshift.verify.run import VerifyOptions, verify
from sqlite_helpers import make_db, pg_rows
from sync_helpers import max_seq, sync_once, write

pytestmark = pytest.mark.integration

SCHEMA = """
CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE notes (id INTEGER PRIMARY KEY, user_id INTEGER REFERENCES users(id), body TEXT);
"""


class RecordingProgress:
    """A real ``Progress`` that remembers what it was told, and whether it was closed."""

    def __init__(self) -> None:
        self.steps: list[str] = []
        self.advanced: dict[str, int] = {}
        self.closed = False

    def step(self, name: str) -> None:
        assert not self.closed, f"step {name!r} reported after close()"
        self.steps.append(name)

    def task(self, key: str, total: int) -> None:
        self.advanced.setdefault(key, 0)

    def advance(self, key: str, amount: int, seconds: float | None = None) -> None:
        self.advanced[key] = self.advanced.get(key, 0) + amount

    def close(self) -> None:
        self.closed = True


def _captured(tmp: Path) -> Path:
    """A WAL file with sync's capture installed and some captured writes."""
    db = make_db(tmp / "app.db", SCHEMA, {
        "users": [(i, f"user {i}") for i in range(1, 51)],
        "notes": [(i, 1 + i % 50, f"note {i}") for i in range(1, 201)]}, wal=True)
    ops.install(db)
    write(db, "update users set name = 'renamed' where id = 7",
          "insert into notes values (1000, 7, 'captured before the snapshot')")
    return db


def _snapshot_files(state: Path) -> set[Path]:
    return set((state / "snapshots").glob("*"))


def test_migrate_copies_the_given_snapshot_and_sync_starts_at_its_mark(
        tmp_path: Path, pg_dsn: Dsn, pg_conn: psycopg.Connection) -> None:
    db = _captured(tmp_path)
    snap = take_snapshot(db, tmp_path / "engine", require_wal=True)
    assert snap.hwm == max_seq(db) > 0
    # The app keeps writing after the snapshot: these rows are for sync, not migrate.
    write(db, "insert into users values (51, 'after the snapshot')",
          "update notes set body = 'edited after' where id = 3")
    state = tmp_path / "state"
    progress = RecordingProgress()

    result = migrate(MigrateOptions(sqlite_path=db, dsn=pg_dsn, state_dir=state,
                                    snapshot=snap), progress)

    assert result.exit_code == 0 and result.snapshot == snap
    assert result.steps[0].name == "snapshot (given)"
    assert result.to_dict()["snapshot"]["hwm"] == snap.hwm
    # exactly the snapshot's rows
    assert pg_rows(pg_conn, "SELECT count(*), max(id) FROM users") == [(50, 50)]
    assert pg_rows(pg_conn, "SELECT name FROM users WHERE id = 7") == [("renamed",)]
    assert pg_rows(pg_conn, "SELECT body FROM notes WHERE id = 3") == [("note 3",)]
    # the run records the given snapshot and its high-water mark for sync
    assert pg_rows(pg_conn, "SELECT snapshot, snapshot_hwm, status FROM pgshift.migrate_runs"
                   ) == [(str(snap.path), snap.hwm, "done")]
    # not taken, so not deleted, and no other snapshot taken
    assert snap.path.is_file() and snap.meta_path.is_file()
    assert _snapshot_files(state) == set()
    assert not progress.closed and progress.steps[0] == "snapshot (given)"
    assert progress.advanced == {"users": 50, "notes": 201}

    # verify compares what was copied: the snapshot is identical, the live file is not yet
    on_snap = verify(VerifyOptions(sqlite_path=db, dsn=pg_dsn, snapshot=snap), progress)
    assert on_snap.identical, on_snap.to_dict()
    live = verify(VerifyOptions(sqlite_path=db, dsn=pg_dsn))
    assert {t.table for t in live.tables if not t.equal} == {"users", "notes"}
    assert not progress.closed

    # sync starts right after the snapshot's mark: exactly the two later changes
    assert sync_once(db, pg_dsn).applied == 2
    assert verify(VerifyOptions(sqlite_path=db, dsn=pg_dsn)).identical


def test_a_dry_run_keeps_a_given_snapshot_and_removes_its_own(
        tmp_path: Path, pg_dsn: Dsn) -> None:
    db = _captured(tmp_path)
    snap = take_snapshot(db, tmp_path / "engine")
    state = tmp_path / "state"
    given = migrate(MigrateOptions(sqlite_path=db, dsn=pg_dsn, state_dir=state,
                                   snapshot=snap, dry_run=True))
    assert given.dry_run and given.snapshot == snap
    assert snap.path.is_file() and snap.meta_path.is_file()
    own = migrate(MigrateOptions(sqlite_path=db, dsn=pg_dsn, state_dir=state, dry_run=True))
    assert own.snapshot is None and _snapshot_files(state) == set()
    assert [t.name for t in own.plan.tables] == [t.name for t in given.plan.tables]


def test_into_existing_copies_the_given_snapshot(tmp_path: Path, pg_dsn: Dsn,
                                                 pg_conn: psycopg.Connection) -> None:
    db = _captured(tmp_path)
    pg_conn.execute("CREATE TABLE users (id bigint PRIMARY KEY, name text NOT NULL);"
                    "CREATE TABLE notes (id bigint PRIMARY KEY, "
                    "user_id bigint REFERENCES users(id), body text)")
    snap = take_snapshot(db, tmp_path / "engine")
    write(db, "insert into users values (51, 'after the snapshot')")
    progress = RecordingProgress()
    result = migrate(MigrateOptions(sqlite_path=db, dsn=pg_dsn, state_dir=tmp_path / "state",
                                    snapshot=snap, into_existing=True), progress)
    assert result.exit_code == 0 and result.snapshot == snap
    assert pg_rows(pg_conn, "SELECT count(*) FROM users") == [(50,)]
    assert pg_rows(pg_conn, "SELECT snapshot_hwm FROM pgshift.migrate_runs") == [(snap.hwm,)]
    assert snap.path.is_file() and not progress.closed
    assert "snapshot (given)" in progress.steps and "prepare" in progress.steps


def test_resume_keeps_to_the_run_s_own_snapshot(tmp_path: Path, pg_dsn: Dsn,
                                                pg_conn: psycopg.Connection) -> None:
    db = _captured(tmp_path)
    first = take_snapshot(db, tmp_path / "engine")
    state = tmp_path / "state"
    migrate(MigrateOptions(sqlite_path=db, dsn=pg_dsn, state_dir=state, snapshot=first))
    # what a run killed after its copy leaves behind
    pg_conn.execute("UPDATE pgshift.migrate_runs SET status = 'copying'")
    other = take_snapshot(db, tmp_path / "engine2")
    with pytest.raises(UsageError, match="the run to resume copies from") as info:
        migrate(MigrateOptions(sqlite_path=db, dsn=pg_dsn, state_dir=state, snapshot=other,
                               resume=True))
    assert info.value.exit_code == 2
    resumed = migrate(MigrateOptions(sqlite_path=db, dsn=pg_dsn, state_dir=state,
                                     snapshot=first, resume=True))
    assert resumed.steps[0].name == "snapshot (resumed)"
    assert resumed.snapshot is not None and resumed.snapshot.path == first.path
    assert pg_rows(pg_conn, "SELECT status FROM pgshift.migrate_runs") == [("done",)]


def test_a_snapshot_of_another_file_or_a_gone_one_is_refused(
        tmp_path: Path, pg_dsn: Dsn, pg_conn: psycopg.Connection) -> None:
    db = _captured(tmp_path)
    other = make_db(tmp_path / "other.db", SCHEMA)
    snap_other = take_snapshot(other, tmp_path / "engine", require_wal=False)
    with pytest.raises(UsageError, match=r"is of .*other\.db, not"):
        migrate(MigrateOptions(sqlite_path=db, dsn=pg_dsn, state_dir=tmp_path / "s",
                               snapshot=snap_other))
    with pytest.raises(UsageError, match=r"is of .*other\.db, not"):
        verify(VerifyOptions(sqlite_path=db, dsn=pg_dsn, snapshot=snap_other))
    with pytest.raises(UsageError, match="a live snapshot needs WAL"):
        migrate(MigrateOptions(sqlite_path=other, dsn=pg_dsn, state_dir=tmp_path / "s",
                               snapshot=snap_other, require_wal=True))
    gone = take_snapshot(db, tmp_path / "engine")
    gone.path.unlink()
    with pytest.raises(UsageError, match="is gone"):
        migrate(MigrateOptions(sqlite_path=db, dsn=pg_dsn, state_dir=tmp_path / "s",
                               snapshot=gone))
    live_snap = take_snapshot(db, tmp_path / "engine")
    with pytest.raises(UsageError, match="--live re-reads the live file"):
        verify(VerifyOptions(sqlite_path=db, dsn=pg_dsn, snapshot=live_snap, live=True))
    # refused before touching the target
    assert pg_rows(pg_conn, "SELECT to_regclass('pgshift.migrate_runs')") == [(None,)]


def test_a_failed_migrate_leaves_the_caller_s_progress_open(
        tmp_path: Path, pg_dsn: Dsn, pg_conn: psycopg.Connection) -> None:
    db = make_db(tmp_path / "app.db", SCHEMA, {"users": [(1, "a")]})
    pg_conn.execute("CREATE TABLE users (id int)")
    progress = RecordingProgress()
    with pytest.raises(UsageError, match="already exist"):
        migrate(MigrateOptions(sqlite_path=db, dsn=pg_dsn, state_dir=tmp_path / "s"), progress)
    assert not progress.closed and progress.steps[-1] == "schema"
    failed = [json.loads(line) for line in (tmp_path / "s" / "audit.jsonl").read_text()
              .splitlines() if '"step.failed"' in line]
    assert [(e["message"], e["figures"]["error"]) for e in failed] == [("schema",
                                                                        "UsageError")]


def test_steps_time_report_and_audit_each_step(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    progress = RecordingProgress()
    steps = Steps(progress, state, phase="rollout")
    assert steps.run("first", lambda: 41 + 1) == 42

    def boom() -> Any:
        raise ValueError("no")

    with pytest.raises(ValueError, match="no"):
        steps.run("second", boom)
    assert [t.name for t in steps.timings] == ["first"]
    assert steps.timings[0].seconds >= 0
    assert steps.to_list() == [{"step": "first", "seconds": round(steps.timings[0].seconds, 3)}]
    assert progress.steps == ["first", "second"]
    events = [json.loads(line) for line in state.audit_log.read_text().splitlines()]
    assert [(e["step"], e["kind"], e["message"]) for e in events] == [
        ("rollout", "step.start", "first"), ("rollout", "step.done", "first"),
        ("rollout", "step.start", "second"), ("rollout", "step.failed", "second")]
    # without a state directory nothing is audited, the timings still are
    quiet = Steps(RecordingProgress())
    quiet.run("only", lambda: None)
    assert [t.name for t in quiet.timings] == ["only"]

