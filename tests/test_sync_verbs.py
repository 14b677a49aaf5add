"""The sync verbs as the rollout engine calls them: typed results, privileges both ways,
and no half install when a late step is refused."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from pgshift.demo.seed import seed
from pgshift.dsn import Dsn, connect
from pgshift.errors import UsageError
from pgshift.sync import verbs
from pgshift.sync.apply import SyncOptions
from sync_helpers import green_role, migrate_to, schema_of, small_synced

pytestmark = pytest.mark.data


def _can_insert(dsn: Dsn) -> bool:
    conn = connect(dsn, autocommit=True)
    try:
        with conn.transaction(force_rollback=True):
            conn.execute("insert into jobs values (50, 'green')")
        return True
    except psycopg.errors.InsufficientPrivilege:
        return False
    finally:
        conn.close()


def test_flip_grants_green_its_writes_back_and_flip_back_takes_them_again(
        tmp_path: Path, pg_dsn: Dsn) -> None:
    db = small_synced(tmp_path, pg_dsn)
    cutover = tmp_path / "cutover.yaml"
    cutover.write_text("tables:\n  jobs:\n    kind: queue\n    green_writes: forbid\n")
    opts = SyncOptions(sqlite_path=db, dsn=pg_dsn)
    with green_role(pg_dsn, "greenv") as (role, green):
        installed = verbs.install(db, dsn=pg_dsn, tables_config=cutover, app_role=role)
        assert installed.revoked == {"jobs": ["INSERT", "UPDATE"]}
        assert installed.to_dict()["settings"]["jobs"]["green_writes"] == "forbid"
        assert not _can_insert(green)

        flipped = verbs.flip(opts, timeout=20)  # no CLI involved: the library grants back
        assert flipped.flipped and flipped.drain.drained and flipped.drain.stranded.count == 0
        assert flipped.privileges_granted_back == {
            "jobs": {"role": role, "granted": ["INSERT", "UPDATE"]}}
        assert flipped.to_dict()["privileges_granted_back"] == flipped.privileges_granted_back
        assert _can_insert(green)

        back = verbs.flip_back(opts, timeout=20, app_role=role)
        assert back.flipped and back.direction == "to-sqlite"
        assert back.privileges_revoked == {"jobs": ["INSERT", "UPDATE"]}
        assert not _can_insert(green)
        status = verbs.status(db, pg_dsn)
        assert status.paused is False and status.pending == 0
        assert status.lag_ms_by_direction["to-postgres"] == 0
        assert status.tables is not None and status.tables["jobs"]["revoked_role"] == role

        assert verbs.uninstall(db, pg_dsn).privileges_granted_back["jobs"]["role"] == role
        assert _can_insert(green)


def test_install_refused_at_the_privileges_step_leaves_sqlite_as_it_was(
        tmp_path: Path, pg_dsn: Dsn) -> None:
    db = tmp_path / "app.db"
    seed(db, 30, seed=7)
    migrate_to(db, pg_dsn, tmp_path)
    before = schema_of(db)
    cutover = tmp_path / "cutover.yaml"
    cutover.write_text("tables:\n  jobs:\n    green_writes: forbid\n")
    with pytest.raises(UsageError, match="does not exist"):
        verbs.install(db, dsn=pg_dsn, tables_config=cutover, app_role="no_such_role_xyz")
    assert schema_of(db) == before
    cutover.write_text("tables:\n  not_a_table:\n    kind: queue\n")
    with pytest.raises(UsageError, match="not captured"):
        verbs.install(db, tables_config=cutover)
    assert schema_of(db) == before
