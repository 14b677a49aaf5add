"""``--sample`` (a share of the segments) and ``--live`` (re-check a differing segment after
the sync lag drains, so in-flight changes raise no false alarm)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import pgshift.verify.run as verify_run
from pgshift.embedded_pg import PostgresServer
from pgshift.errors import UsageError
from verify_helpers import (
    MigratedCopy,
    all_diffs,
    assert_identical,
    migrated_module,
    only_diff,
    pg_exec,
    sqlite_exec,
)

pytestmark = pytest.mark.data

DDL = """
CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL, qty INTEGER);
CREATE TABLE log (msg TEXT, n INTEGER);
"""
N = 5000


@pytest.fixture(scope="module")
def modes_module(pg_server: PostgresServer,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[MigratedCopy]:
    data = {"items": [(i, f"item {i}", i % 17) for i in range(1, N + 1)],
            "log": [(f"m{i % 7}", i % 3) for i in range(50)]}
    with migrated_module(pg_server, tmp_path_factory.mktemp("modes"), "modes", DDL,
                         data) as copy:
        yield copy


@pytest.fixture
def copy(modes_module: MigratedCopy, tmp_path: Path) -> Iterator[MigratedCopy]:
    yield modes_module.for_test(tmp_path)
    modes_module.restore()


@pytest.fixture
def small_segments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(verify_run, "SEGMENT_ROWS", 500)


def items(result: Any) -> Any:
    (v,) = [t for t in result.tables if t.table == "items"]
    return v


# ------------------------------------------------------------------------- sample


def test_sample_checks_fewer_segments_and_passes(copy: MigratedCopy,
                                                 small_segments: None) -> None:
    full = copy.verify()
    assert_identical(full)
    assert items(full).segments == items(full).segments_checked >= 10
    result = copy.verify(sample=0.01)
    assert_identical(result)
    v = items(result)
    assert 1 <= v.segments_checked < v.segments
    assert v.sqlite_rows == v.postgres_rows < N
    assert result.sampled == 0.01
    assert result.to_dict()["sample"] == 0.01


def test_sample_of_everything_finds_the_difference(copy: MigratedCopy,
                                                   small_segments: None) -> None:
    pg_exec(copy.dsn, "UPDATE items SET qty = qty + 1 WHERE id = 4321")
    d = only_diff(copy.verify(sample=1.0))
    assert (d.kind, d.key, d.columns) == ("changed", {"id": "4321"}, {"qty": ("3", "4")})


def test_sample_is_reproducible_and_seeded(copy: MigratedCopy, small_segments: None) -> None:
    a = items(copy.verify(sample=0.3, seed=1))
    b = items(copy.verify(sample=0.3, seed=1))
    assert (a.segments_checked, a.sqlite_rows) == (b.segments_checked, b.sqlite_rows)
    assert a.segments_checked < a.segments


def test_sample_finds_a_difference_in_a_checked_segment(copy: MigratedCopy,
                                                        small_segments: None) -> None:
    """Whatever the sampled segments, a change everywhere is in one of them."""
    pg_exec(copy.dsn, "UPDATE items SET name = name || '!' WHERE id % 50 = 0")
    result = copy.verify(sample=0.2)
    assert not result.identical
    diffs = all_diffs(result)
    assert diffs
    assert all(d.kind == "changed" and int(d.key["id"]) % 50 == 0 for d in diffs)
    assert len(diffs) < N // 50


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5])
def test_sample_out_of_range_is_a_usage_error(copy: MigratedCopy, bad: float) -> None:
    with pytest.raises(UsageError):
        copy.verify(sample=bad)


# --------------------------------------------------------------------------- live


def carry_over(dsn: Any, *statements: tuple[str, tuple[Any, ...]]) -> tuple[Callable[[], None],
                                                                           list[int]]:
    """A wait_for_lag that applies the given statements to PostgreSQL on its first call."""
    calls: list[int] = []

    def wait() -> None:
        if not calls:
            for sql, params in statements:
                pg_exec(dsn, sql, params)
        calls.append(1)

    return wait, calls


def test_live_in_flight_update_raises_no_false_alarm(copy: MigratedCopy,
                                                     small_segments: None) -> None:
    sqlite_exec(copy.db, "UPDATE items SET qty = 99 WHERE id = 2222")
    wait, calls = carry_over(copy.dsn, ("UPDATE items SET qty = 99 WHERE id = %s", (2222,)))
    result = copy.verify(live=True, wait_for_lag=wait, live_wait=0)
    assert_identical(result)
    assert calls  # the differing segment was re-checked after the lag drained


def test_live_in_flight_updates_in_several_segments(copy: MigratedCopy,
                                                    small_segments: None) -> None:
    ids = (3, 1500, 4999)
    for i in ids:
        sqlite_exec(copy.db, "UPDATE items SET name = 'moved' WHERE id = ?", (i,))
    wait, calls = carry_over(copy.dsn, *[("UPDATE items SET name = 'moved' WHERE id = %s",
                                          (i,)) for i in ids])
    assert_identical(copy.verify(live=True, wait_for_lag=wait, live_wait=0))
    assert len(calls) >= 1


def test_live_in_flight_insert_raises_no_false_alarm(copy: MigratedCopy,
                                                     small_segments: None) -> None:
    sqlite_exec(copy.db, "INSERT INTO items VALUES (5001, 'new', 1)")
    wait, calls = carry_over(copy.dsn, ("INSERT INTO items VALUES (%s, 'new', 1)", (5001,)))
    result = copy.verify(live=True, wait_for_lag=wait, live_wait=0)
    assert calls
    assert_identical(result)


def test_live_in_flight_delete_raises_no_false_alarm(copy: MigratedCopy,
                                                     small_segments: None) -> None:
    sqlite_exec(copy.db, "DELETE FROM items WHERE id = 777")
    wait, calls = carry_over(copy.dsn, ("DELETE FROM items WHERE id = %s", (777,)))
    result = copy.verify(live=True, wait_for_lag=wait, live_wait=0)
    assert calls
    assert_identical(result)


def test_live_in_flight_change_to_keyless_table_raises_no_false_alarm(
        copy: MigratedCopy) -> None:
    sqlite_exec(copy.db, "UPDATE log SET n = 42 WHERE rowid = 1")
    wait, _calls = carry_over(copy.dsn, ("UPDATE log SET n = 42 WHERE ctid = (SELECT ctid "
                                        "FROM log WHERE msg = 'm0' AND n = 0 LIMIT 1)", ()))
    result = copy.verify(live=True, wait_for_lag=wait, live_wait=0)
    assert_identical(result)


def test_live_real_difference_is_still_reported(copy: MigratedCopy,
                                                small_segments: None) -> None:
    pg_exec(copy.dsn, "UPDATE items SET qty = -1 WHERE id = 1234")
    calls: list[int] = []
    result = copy.verify(live=True, live_retries=1, live_wait=0,
                         wait_for_lag=lambda: calls.append(1))
    d = only_diff(result)
    assert (d.kind, d.key, d.columns) == ("changed", {"id": "1234"}, {"qty": ("10", "-1")})
    assert calls == [1]  # one re-check, then reported


def test_live_retries_wait_for_lag_each_time(copy: MigratedCopy,
                                             small_segments: None) -> None:
    pg_exec(copy.dsn, "DELETE FROM items WHERE id = 10")
    calls: list[int] = []
    result = copy.verify(live=True, live_retries=3, live_wait=0,
                         wait_for_lag=lambda: calls.append(1))
    d = only_diff(result)
    assert (d.kind, d.key) == ("missing_in_postgres", {"id": "10"})
    assert calls == [1, 1, 1]


def test_live_without_callback_sleeps_and_reports(copy: MigratedCopy,
                                                  small_segments: None) -> None:
    sqlite_exec(copy.db, "UPDATE items SET name = 'only in sqlite' WHERE id = 42")
    d = only_diff(copy.verify(live=True, live_retries=2, live_wait=0))
    assert (d.key, d.columns) == ({"id": "42"}, {"name": ("only in sqlite", "item 42")})


def test_live_identical_never_waits(copy: MigratedCopy, small_segments: None) -> None:
    calls: list[int] = []
    assert_identical(copy.verify(live=True, live_wait=0, wait_for_lag=lambda: calls.append(1)))
    assert calls == []
