"""pgshift.demo.seed: the hyperpage-shaped SQLite generator, checked on real files."""

from __future__ import annotations

import hashlib
import random
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from pgshift.demo import seed_build, seed_rows
from pgshift.demo.seed import SCHEMA_SQL, TABLES, SeedResult, create_schema, row_counts, seed
from pgshift.errors import ExitCode, UsageError

MODERATE = 2000


def _connect(path: Path) -> closing[sqlite3.Connection]:
    return closing(sqlite3.connect(path))


def _digest(path: Path) -> str:
    """Hash of every row of every table, in rowid order: equal digests = equal content."""
    h = hashlib.sha256()
    with _connect(path) as con:
        for table in TABLES:
            h.update(table.encode())
            for row in con.execute(f"SELECT * FROM {table} ORDER BY rowid"):
                h.update(repr(row).encode())
    return h.hexdigest()


@pytest.fixture(scope="module")
def moderate(tmp_path_factory: pytest.TempPathFactory) -> SeedResult:
    """One moderate database shared by the read-only checks."""
    return seed(tmp_path_factory.mktemp("seed") / "hp.db", MODERATE)


@pytest.fixture
def con(moderate: SeedResult) -> Iterator[sqlite3.Connection]:
    with _connect(moderate.path) as connection:
        yield connection


# ------------------------------------------------------------------ counts and schema


def test_row_counts_formula() -> None:
    assert tuple(row_counts(1)) == TABLES
    assert set(row_counts(1).values()) == {1}
    counts = row_counts(1_000_000)
    assert counts["jobs"] == counts["job_history"] == 1_000_000
    assert counts["users"] == counts["oauth_tokens"] == 50_000
    assert counts["user_sessions"] == 100_000
    assert counts["rate_limits"] == 10_000
    assert 10 <= counts["tool_configs"] <= 12
    assert 8 <= counts["app_state"] <= 10
    assert 2_150_000 <= sum(counts.values()) <= 2_250_000


@pytest.mark.parametrize("scale", [1, 7, 1001])
def test_counts_match_plan(tmp_path: Path, scale: int) -> None:
    result = seed(tmp_path / "hp.db", scale, seed=3)
    assert result.rows == row_counts(scale)
    assert result.scale == scale
    assert result.bytes == result.path.stat().st_size > 0
    with _connect(result.path) as con:
        actual = {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}
    assert actual == row_counts(scale)


def test_schema_is_exactly_the_blue_ddl(con: sqlite3.Connection) -> None:
    statements = {s.strip() for s in SCHEMA_SQL.split(";") if s.strip()}
    stored = {
        sql
        for (sql,) in con.execute(
            "SELECT sql FROM sqlite_master WHERE sql IS NOT NULL AND name != 'sqlite_sequence'"
        )
    }
    assert stored == statements
    assert len(stored) == len(TABLES) + 4  # 8 tables, 4 explicit indexes


def test_create_schema_on_empty_database(tmp_path: Path) -> None:
    with _connect(tmp_path / "empty.db") as con:
        create_schema(con)
        tables = [
            name
            for (name,) in con.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' "
                "AND name != 'sqlite_sequence' ORDER BY rowid"
            )
        ]
    assert tuple(tables) == TABLES


def test_tables_are_in_foreign_key_safe_order(con: sqlite3.Connection) -> None:
    for position, table in enumerate(TABLES):
        for fk in con.execute(f"PRAGMA foreign_key_list({table})"):
            assert TABLES.index(fk[2]) < position, (table, fk[2])


# ------------------------------------------------------------------ file state


def test_ends_in_wal_mode_fully_checkpointed(moderate: SeedResult) -> None:
    path = moderate.path
    wal = Path(f"{path}-wal")
    assert not wal.exists() or wal.stat().st_size == 0
    # Header bytes 18/19 are the read/write format versions: 2 means WAL, read without opening.
    header = path.read_bytes()[:100]
    assert header[:16] == b"SQLite format 3\x00"
    assert header[18] == header[19] == 2
    with _connect(path) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_file_mode_follows_the_umask(tmp_path: Path) -> None:
    reference = tmp_path / "plain"
    reference.write_bytes(b"")  # created like any tool would: 0o666 minus the umask
    result = seed(tmp_path / "hp.db", 5)
    assert result.path.stat().st_mode & 0o777 == reference.stat().st_mode & 0o777


def test_no_temporary_files_left(tmp_path: Path) -> None:
    seed(tmp_path / "hp.db", 50)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hp.db"]


def test_integrity_and_foreign_keys(con: sqlite3.Connection) -> None:
    assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert con.execute("PRAGMA foreign_key_check").fetchall() == []


def test_autoincrement_sequences_continue_after_the_seed(con: sqlite3.Connection) -> None:
    # The app inserts right after seeding: AUTOINCREMENT must not hand out a used id.
    sequences = dict(con.execute("SELECT name, seq FROM sqlite_sequence").fetchall())
    counts = row_counts(MODERATE)
    assert sequences == {t: counts[t] for t in ("users", "job_history", "oauth_tokens")}


# ------------------------------------------------------------------ determinism


def test_same_seed_same_content(tmp_path: Path) -> None:
    a = seed(tmp_path / "a.db", 500, seed=7)
    b = seed(tmp_path / "b.db", 500, seed=7)
    c = seed(tmp_path / "c.db", 500, seed=8)
    assert _digest(a.path) == _digest(b.path)
    assert _digest(a.path) != _digest(c.path)


def test_child_process_builds_the_same_database(tmp_path: Path) -> None:
    # From _PARALLEL_MIN_SCALE up a child process generates the rows and stages job_history in a
    # side file; that path must not change a single value, nor leave the side file behind.
    scale = 3000
    paths = {}
    for parallel in (False, True):
        paths[parallel] = tmp_path / f"parallel-{parallel}.db"
        seed_build._build(paths[parallel], scale, 11, row_counts(scale), None, parallel=parallel)
    assert _digest(paths[True]) == _digest(paths[False])
    with _connect(paths[True]) as con:
        assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        indexes = {n for (n,) in con.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        assert "idx_job_history_job" in indexes
        plan = con.execute(
            "EXPLAIN QUERY PLAN SELECT * FROM job_history WHERE job_id = 'x' ORDER BY created_at"
        ).fetchall()
        assert "idx_job_history_job" in str(plan)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths.values())


def test_uuid_helper_matches_uuid_module() -> None:
    rng = random.Random(5)
    for bits in [0, 2**128 - 1, *(rng.getrandbits(128) for _ in range(500))]:
        assert seed_rows._uuid4(bits) == str(uuid.UUID(int=bits, version=4))


# ------------------------------------------------------------------ content


def test_json_columns_are_valid(con: sqlite3.Connection) -> None:
    checks = {
        "jobs": "payload",
        "tool_configs": "config",
        "app_state": "value",
    }
    for table, column in checks.items():
        bad = con.execute(f"SELECT count(*) FROM {table} WHERE NOT json_valid({column})")
        assert bad.fetchone()[0] == 0, (table, column)
    bad = con.execute(
        "SELECT count(*) FROM jobs WHERE result IS NOT NULL AND NOT json_valid(result)"
    )
    assert bad.fetchone()[0] == 0
    # The payload really has the nested object and the array the copy path must carry.
    shapes = con.execute(
        "SELECT DISTINCT json_type(payload, '$.opts'), json_type(payload, '$.tags') FROM jobs"
    ).fetchall()
    assert shapes == [("object", "array")]


def test_job_states_are_consistent(con: sqlite3.Connection) -> None:
    statuses = dict(con.execute("SELECT status, count(*) FROM jobs GROUP BY status").fetchall())
    assert set(statuses) == {"pending", "processing", "completed", "failed", "cancelled"}
    assert statuses["completed"] > MODERATE // 2
    inconsistent = con.execute(
        """
        SELECT count(*) FROM jobs WHERE
          (started_at IS NULL) != (status IN ('pending', 'cancelled'))
          OR (completed_at IS NULL) != (status IN ('pending', 'processing', 'cancelled'))
          OR (result IS NULL) != (status IN ('pending', 'processing', 'cancelled'))
          OR scheduled_at < created_at
          OR started_at < scheduled_at
          OR completed_at < started_at
          OR updated_at < created_at
          OR attempts > max_attempts
        """
    ).fetchone()[0]
    assert inconsistent == 0
    assert con.execute("SELECT count(*) FROM jobs WHERE user_id IS NULL").fetchone()[0] > 0
    ok = con.execute("SELECT DISTINCT result ->> '$.ok' FROM jobs WHERE status = 'completed'")
    assert ok.fetchall() == [(1,)]


def test_ids_and_tokens_look_real(con: sqlite3.Connection) -> None:
    for (job_id,) in con.execute("SELECT id FROM jobs LIMIT 200"):
        assert uuid.UUID(job_id).version == 4
        assert str(uuid.UUID(job_id)) == job_id
    tokens = con.execute("SELECT access_token, refresh_token FROM oauth_tokens").fetchall()
    assert all(int(access, 16) >= 0 and len(access) == 40 for access, _ in tokens)
    assert any(refresh is None for _, refresh in tokens)
    ips = [ip for (ip,) in con.execute("SELECT ip FROM user_sessions WHERE ip IS NOT NULL")]
    assert any("." in ip for ip in ips) and any(":" in ip for ip in ips)


def test_history_per_job_is_zero_to_three(con: sqlite3.Connection) -> None:
    per_job = dict(
        con.execute(
            """
            SELECT n, count(*) FROM (
              SELECT (SELECT count(*) FROM job_history h WHERE h.job_id = j.id) AS n FROM jobs j
            ) GROUP BY n
            """
        ).fetchall()
    )
    assert set(per_job) == {0, 1, 2, 3}
    assert sum(n * jobs for n, jobs in per_job.items()) == MODERATE


def test_special_characters_survive(con: sqlite3.Connection) -> None:
    messages = [m for (m,) in con.execute("SELECT message FROM job_history") if m is not None]
    text = "".join(messages)
    for char in ("\t", "\n", "\r", "\\", '"', "'"):
        assert char in text, repr(char)
    assert any(not m.isascii() for m in messages)
    assert con.execute("SELECT count(*) FROM job_history WHERE message IS NULL").fetchone()[0] > 0
    names = [n for (n,) in con.execute("SELECT name FROM users")]
    assert None in names
    assert any(n is not None and not n.isascii() for n in names)
    payloads = con.execute("SELECT count(*) FROM jobs WHERE payload GLOB '*[^ -~]*'")
    assert payloads.fetchone()[0] > 0  # some payloads carry non-ASCII text


def test_oauth_tokens_unique_per_user_and_provider(con: sqlite3.Connection) -> None:
    duplicates = con.execute(
        "SELECT count(*) FROM (SELECT 1 FROM oauth_tokens GROUP BY user_id, provider "
        "HAVING count(*) > 1)"
    ).fetchone()[0]
    assert duplicates == 0
    assert con.execute("SELECT count(DISTINCT provider) FROM oauth_tokens").fetchone()[0] >= 4


# ------------------------------------------------------------------ API behaviour


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "hp.db"
    first = seed(path, 20, seed=1)
    before = _digest(path)
    with pytest.raises(UsageError) as excinfo:
        seed(path, 40, seed=2)
    assert excinfo.value.exit_code == ExitCode.USAGE
    assert excinfo.value.hint and "overwrite" in excinfo.value.hint
    assert _digest(path) == before
    second = seed(path, 40, seed=2, overwrite=True)
    assert second.rows["jobs"] == 40 != first.rows["jobs"]
    with _connect(path) as con:
        assert con.execute("SELECT count(*) FROM jobs").fetchone()[0] == 40


@pytest.mark.parametrize("scale", [0, -5, True, 2.5])
def test_bad_scale_is_a_usage_error(tmp_path: Path, scale: object) -> None:
    with pytest.raises(UsageError) as excinfo:
        seed(tmp_path / "hp.db", scale)  # type: ignore[arg-type]
    assert excinfo.value.hint
    assert not (tmp_path / "hp.db").exists()
    with pytest.raises(UsageError):
        row_counts(scale)  # type: ignore[arg-type]


def test_missing_directory_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        seed(tmp_path / "nope" / "hp.db", 10)
    with pytest.raises(UsageError):
        seed(tmp_path, 10, overwrite=True)


def test_progress_reports_every_table(tmp_path: Path) -> None:
    scale = 55_000  # just past one 50k step: start, one periodic report, end
    events: list[tuple[str, int, int]] = []
    seed(tmp_path / "hp.db", scale, progress=lambda *e: events.append(e))
    counts = row_counts(scale)
    for table in TABLES:
        mine = [(done, total) for t, done, total in events if t == table]
        assert mine[0] == (0, counts[table])
        assert mine[-1] == (counts[table], counts[table])
        assert [d for d, _ in mine] == sorted(d for d, _ in mine)
    assert [d for t, d, _ in events if t == "jobs"] == [0, 50_000, 55_000]


def test_failure_leaves_nothing_behind(tmp_path: Path) -> None:
    path = tmp_path / "hp.db"
    seed(path, 10)
    before = _digest(path)

    def explode(table: str, done: int, total: int) -> None:
        if table == "jobs" and done:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        seed(path, 100, overwrite=True, progress=explode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hp.db"]
    assert _digest(path) == before  # the old database survives a failed overwrite


def test_failure_with_child_process_cleans_up(tmp_path: Path) -> None:
    # Aborting mid-way must stop the generator child and remove the staging file.
    path = tmp_path / "hp.db"

    def explode(table: str, done: int, total: int) -> None:
        if table == "user_sessions" and done:  # early: the child is still generating jobs
            raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        seed_build._build(path, 30_000, 1, row_counts(30_000), explode, parallel=True)
    assert not Path(f"{path}.staging").exists()
    # _build leaves its own target to seed() to remove; nothing else may remain.
    assert {p.name for p in tmp_path.iterdir()} <= {"hp.db"}
