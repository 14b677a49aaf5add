"""The flip and the way back leave every key allocator past every key the other side made.

End to end with the reference app's own inserts (default ids: ``job_history`` and
``users`` are AUTOINCREMENT tables, allocated by SQLite before the flip and by
PostgreSQL's identity sequences after it), with the default ``--green-ids keep``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pgshift.cli.main import main
from pgshift.demo.app import AppConfig, open_database
from pgshift.demo.db_base import Store
from pgshift.dsn import Dsn
from pgshift.sync import ops, verbs
from pgshift.sync.apply import SyncOptions
from pgshift.sync.apply_sqlite import run_to_sqlite
from sync_helpers import captured_seed, check, migrate_to, pg_exec, sqlite_rows, sync_once, write

pytestmark = pytest.mark.data


def _writes(store: Store, n: int, tag: str) -> list[str]:
    """``n`` rounds of the app's default-id inserts; the errors (none expected)."""
    errors = []
    calls: list[Callable[[int], Any]] = [
        lambda i: store.enqueue_job("report", {"i": i, "tag": tag}),  # a job_history row
        lambda i: store.create_user(f"{tag}-{i}@example.com", f"{tag} {i}"),  # a users row
    ]
    for i in range(n):
        for call in calls:
            try:
                call(i)
            except Exception as exc:  # every failure counts, whatever its kind
                errors.append(f"{type(exc).__name__}: {exc}")
    return errors


def _with_store(config: AppConfig, fn: Callable[[Store], Any]) -> Any:
    db = open_database(config)
    try:
        return fn(Store(db))
    finally:
        db.close()


def test_flip_then_flip_back_with_the_apps_default_ids(tmp_path: Path, pg_dsn: Dsn) -> None:
    db = captured_seed(tmp_path)
    migrate_to(db, pg_dsn, tmp_path)
    ops.install(db, dsn=pg_dsn)  # --green-ids keep: PostgreSQL's sequences count up
    blue = AppConfig(engine="sqlite", database_path=db, pool_size=2)
    green = AppConfig(engine="postgres", database_url=pg_dsn.conninfo, pool_size=2)
    opts = SyncOptions(sqlite_path=db, dsn=pg_dsn)

    # blue, the system of record, inserts after migrate; the applier carries its ids
    assert _with_store(blue, lambda s: _writes(s, 40, "blue")) == []
    # and deletes its newest history row: AUTOINCREMENT never hands that id out again
    top = sqlite_rows(db, "select max(id) from job_history")[0][0]
    write(db, f"delete from job_history where id = {top}")
    assert sync_once(db, pg_dsn).parked == 0

    flipped = verbs.flip(opts, timeout=20)
    assert flipped.flipped
    moved = {i["table"]: i for i in flipped.identities}
    assert moved["job_history"]["restart"] == top + 1  # past the deleted id too
    assert moved["job_history"]["state"] == "counts up"
    # green, now the system of record, inserts with PostgreSQL's own allocation
    assert _with_store(green, lambda s: _writes(s, 40, "green")) == []
    assert run_to_sqlite(SyncOptions(sqlite_path=db, dsn=pg_dsn)).parked == 0
    check(db, pg_dsn)
    # a second flip moves nothing backwards
    assert verbs.flip(opts, timeout=20).identities == []

    # green inserts and deletes its newest row (never seen by SQLite as a live key)
    assert _with_store(green, lambda s: _writes(s, 10, "green2")) == []
    green_top = pg_exec(pg_dsn, "select max(id) from job_history")[0][0]
    pg_exec(pg_dsn, f"delete from job_history where id = {green_top}")

    back = verbs.flip_back(opts, timeout=20)
    assert back.flipped and back.drain.drained
    assert sqlite_rows(db, "select seq from sqlite_sequence where name = 'job_history'"
                       )[0][0] >= green_top
    # blue, the system of record again, inserts with SQLite's own allocation
    assert _with_store(blue, lambda s: _writes(s, 40, "blue2")) == []
    assert sqlite_rows(db, "select count(*) from job_history where id = ?", (green_top,)) \
        == [(0,)]
    assert sync_once(db, pg_dsn).parked == 0
    check(db, pg_dsn)

    # and the re-advance: flip again, green inserts again
    assert verbs.flip(opts, timeout=20).flipped
    assert _with_store(green, lambda s: _writes(s, 10, "green3")) == []
    assert run_to_sqlite(SyncOptions(sqlite_path=db, dsn=pg_dsn)).parked == 0
    check(db, pg_dsn)


def test_flip_back_moves_sqlite_past_ids_green_used_but_sqlite_never_saw(
        tmp_path: Path, pg_dsn: Dsn, capsys: pytest.CaptureFixture[str]) -> None:
    db = captured_seed(tmp_path, scale=30)
    migrate_to(db, pg_dsn, tmp_path)
    ops.install(db, dsn=pg_dsn)
    opts = SyncOptions(sqlite_path=db, dsn=pg_dsn)
    assert verbs.flip(opts, timeout=20).flipped
    before = sqlite_rows(db, "select seq from sqlite_sequence where name = 'users'")[0][0]
    # green's transactions that rolled back still took ids from the sequence
    taken = pg_exec(pg_dsn, "select nextval(pg_get_serial_sequence('users', 'id')) "
                            "from generate_series(1, 5)")
    highest = max(r[0] for r in taken)
    assert highest > before

    back = verbs.flip_back(opts, timeout=20)
    assert back.flipped
    assert [(s["table"], s["seq"], s["was"]) for s in back.sqlite_sequences] == [
        ("users", highest, before)]
    write(db, "insert into users (email, name, is_admin, created_at, updated_at) "
              "values ('after@x', 'after', 0, 2, 2)")
    assert sqlite_rows(db, "select max(id) from users") == [(highest + 1,)]
    assert verbs.flip_back(opts, timeout=20).sqlite_sequences == []  # nothing to move
    assert main(["sync", "flip-back", str(db), pg_dsn.conninfo, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["flipped"] and out["direction"] == "to-sqlite" and out["drain"]["drained"]
    assert out["sqlite_sequences"] == [] and out["identities"] == []
    assert sync_once(db, pg_dsn).parked == 0
    check(db, pg_dsn)
