"""``pgshift verify`` finds rows present on one side only, multiset differences of keyless
tables, and the classic diff-tool traps: NULL vs '' vs 'NULL', column boundaries, and
1 vs 1.0 vs '1' in a column without declared type."""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pgshift.dsn import Dsn
from pgshift.embedded_pg import PostgresServer
from verify_helpers import (
    MigratedCopy,
    all_diffs,
    assert_identical,
    make_db,
    migrate_into,
    migrated_module,
    only_diff,
    pg_exec,
    run_verify,
    sqlite_exec,
)

pytestmark = pytest.mark.data

DDL = """
CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT NOT NULL, note TEXT);
CREATE TABLE events (kind TEXT, n INTEGER, note TEXT);
CREATE TABLE pairs (id INTEGER PRIMARY KEY, a TEXT, b TEXT);
CREATE TABLE untyped (id INTEGER PRIMARY KEY, v);
CREATE TABLE untyped_num (id INTEGER PRIMARY KEY, v);
CREATE TABLE longtext (id INTEGER PRIMARY KEY, body TEXT);
CREATE TABLE empty (id INTEGER PRIMARY KEY, v TEXT);
"""

NOTES = [None, "", "NULL", "null", "x", " "]


def rows() -> dict[str, list[tuple[Any, ...]]]:
    people = [(i, f"person {i}", NOTES[(i // 2) % len(NOTES)]) for i in range(2, 602, 2)]
    events = [("a", 1, None), ("a", 1, None), ("a", 1, ""), ("b", 2, "NULL"), ("b", 2, "NULL"),
              ("c", None, None), (None, None, None), (None, None, None)] * 5
    pairs = [(1, "ab", "c"), (2, "a", "bc"), (3, "", "abc"), (4, None, "abc"), (5, "N", "")]
    untyped = [(1, 1), (2, 1.0), (3, "1"), (4, "one"), (5, 1.5), (6, None), (7, "1.0")]
    untyped_num = [(1, 1), (2, 1.0), (3, 2.5), (4, None), (5, -7)]
    longtext = [(1, "a" * 500 + "b" + "a" * 500), (2, "short")]
    return {"people": people, "events": events, "pairs": pairs, "untyped": untyped,
            "untyped_num": untyped_num, "longtext": longtext}


@pytest.fixture(scope="module")
def rows_module(pg_server: PostgresServer,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[MigratedCopy]:
    with migrated_module(pg_server, tmp_path_factory.mktemp("rows"), "rows", DDL,
                         rows()) as copy:
        assert copy.result is not None
        plan = copy.result.plan
        # The untyped columns' types are decided from their data.
        assert plan.table("untyped").column("v").pg_type == "text"
        assert plan.table("untyped_num").column("v").pg_type == "double precision"
        yield copy


@pytest.fixture
def copy(rows_module: MigratedCopy, tmp_path: Path) -> Iterator[MigratedCopy]:
    yield rows_module.for_test(tmp_path)
    rows_module.restore()


def table_verdict(result: Any, name: str) -> Any:
    (v,) = [t for t in result.tables if t.table == name]
    return v


# ------------------------------------------------------------ rows on one side only


def test_missing_row_is_found(copy: MigratedCopy) -> None:
    pg_exec(copy.dsn, "DELETE FROM people WHERE id = 124")
    result = copy.verify()
    d = only_diff(result)
    assert (d.table, d.kind, d.key, d.columns) == ("people", "missing_in_postgres",
                                                   {"id": "124"}, {})
    v = table_verdict(result, "people")
    assert (v.sqlite_rows, v.postgres_rows) == (300, 299)


def test_extra_row_in_a_key_gap_is_found(copy: MigratedCopy) -> None:
    pg_exec(copy.dsn, "INSERT INTO people VALUES (125, 'intruder', NULL)")
    d = only_diff(copy.verify())
    assert (d.table, d.kind, d.key) == ("people", "extra_in_postgres", {"id": "125"})


def test_extra_rows_beyond_both_ends_are_found(copy: MigratedCopy) -> None:
    pg_exec(copy.dsn, "INSERT INTO people VALUES (-5, 'before', NULL), (10000, 'after', '')")
    result = copy.verify()
    assert not result.identical
    got = sorted((d.kind, d.key["id"]) for d in all_diffs(result))
    assert got == [("extra_in_postgres", "-5"), ("extra_in_postgres", "10000")]


def test_rows_in_postgres_for_an_empty_sqlite_table_are_all_extra(copy: MigratedCopy) -> None:
    pg_exec(copy.dsn, "INSERT INTO empty SELECT g, 'x' FROM generate_series(1, 300) g")
    result = copy.verify()
    diffs = all_diffs(result)
    assert {d.kind for d in diffs} == {"extra_in_postgres"}
    assert sorted(int(d.key["id"]) for d in diffs) == list(range(1, 301))
    v = table_verdict(result, "empty")
    assert (v.sqlite_rows, v.postgres_rows) == (0, 300)


def test_row_added_in_sqlite_is_missing_in_postgres(copy: MigratedCopy) -> None:
    sqlite_exec(copy.db, "INSERT INTO people VALUES (601, 'late', 'x')")
    d = only_diff(copy.verify())
    assert (d.kind, d.key) == ("missing_in_postgres", {"id": "601"})


def test_primary_key_changed_in_postgres_is_one_missing_and_one_extra(
        copy: MigratedCopy) -> None:
    pg_exec(copy.dsn, "UPDATE people SET id = 3 WHERE id = 2")
    result = copy.verify()
    got = sorted((d.kind, d.key["id"]) for d in all_diffs(result))
    assert got == [("extra_in_postgres", "3"), ("missing_in_postgres", "2")]


# ------------------------------------------------------------- keyless: multisets


def test_duplicated_row_in_keyless_table_is_found(copy: MigratedCopy) -> None:
    pg_exec(copy.dsn, "INSERT INTO events VALUES ('b', 2, 'NULL')")
    result = copy.verify()
    d = only_diff(result)
    assert d.table == "events"
    assert d.kind == "count_differs"
    assert d.columns == {"*": ("10", "11")}
    assert "NULL" in d.key["row"] and "b" in d.key["row"]
    v = table_verdict(result, "events")
    assert (v.mode, v.sqlite_rows, v.postgres_rows) == ("multiset", 40, 41)


def test_one_copy_of_a_duplicate_removed_is_found(copy: MigratedCopy) -> None:
    pg_exec(copy.dsn, "DELETE FROM events WHERE ctid = (SELECT ctid FROM events "
                      "WHERE kind IS NULL LIMIT 1)")
    d = only_diff(copy.verify())
    assert (d.kind, d.columns) == ("count_differs", {"*": ("10", "9")})


def test_keyless_swapped_duplicates_same_count_still_found(copy: MigratedCopy) -> None:
    """Same row count: one ('a', 1, NULL) turned into a third ('a', 1, '')."""
    pg_exec(copy.dsn, "UPDATE events SET note = '' WHERE ctid = (SELECT ctid FROM events "
                      "WHERE kind = 'a' AND note IS NULL LIMIT 1)")
    result = copy.verify()
    diffs = all_diffs(result)
    assert sorted(d.columns["*"] for d in diffs) == [("10", "9"), ("5", "6")]
    v = table_verdict(result, "events")
    assert v.sqlite_rows == v.postgres_rows == 40


def test_keyless_null_vs_empty_is_found(copy: MigratedCopy) -> None:
    pg_exec(copy.dsn, "UPDATE events SET kind = '' WHERE ctid = (SELECT ctid FROM events "
                      "WHERE kind IS NULL LIMIT 1)")
    diffs = all_diffs(copy.verify())
    assert sorted(d.columns["*"] for d in diffs) == [("0", "1"), ("10", "9")]


# ------------------------------------------------------ NULL vs '' vs 'NULL' in text


@pytest.mark.parametrize(("where", "set_to", "values"), [
    ("note IS NULL", "''", (None, "")),
    ("note = ''", "'NULL'", ("", "NULL")),
    ("note = 'NULL'", "NULL", ("NULL", None)),
    ("note = 'null'", "'NULL'", ("null", "NULL")),
    ("note = ' '", "''", (" ", "")),
    ("note = ''", "NULL", ("", None)),
], ids=["null-to-empty", "empty-to-NULL-text", "NULL-text-to-null", "case", "space-to-empty",
        "empty-to-null"])
def test_null_empty_and_null_text_are_distinct(copy: MigratedCopy, where: str, set_to: str,
                                               values: tuple[str | None, str | None]) -> None:
    (target,) = pg_exec(copy.dsn, f"SELECT min(id) FROM people WHERE {where}")[0]
    pg_exec(copy.dsn, f"UPDATE people SET note = {set_to} WHERE id = %s", (target,))
    d = only_diff(copy.verify())
    assert (d.kind, d.key, d.columns) == ("changed", {"id": str(target)}, {"note": values})


def test_column_boundaries_are_unambiguous(copy: MigratedCopy) -> None:
    """('ab', 'c') and ('a', 'bc') concatenate alike: the encoding must still tell them apart."""
    pg_exec(copy.dsn, "UPDATE pairs SET a = 'a', b = 'bc' WHERE id = 1")
    pg_exec(copy.dsn, "UPDATE pairs SET a = NULL, b = 'abc' WHERE id = 3")
    pg_exec(copy.dsn, "UPDATE pairs SET a = 'N', b = NULL WHERE id = 5")
    result = copy.verify()
    got = {d.key["id"]: d.columns for d in all_diffs(result)}
    assert got == {"1": {"a": ("ab", "a"), "b": ("c", "bc")},
                   "3": {"a": ("", None)},
                   "5": {"b": ("", None)}}


# ------------------------------------------- 1 vs 1.0 vs '1' without declared type


@pytest.mark.parametrize(("row", "set_to", "values"), [
    (2, "'1'", ("1.0", "1")),
    (1, "'1.0'", ("1", "1.0")),
    (3, "'1.0'", ("1", "1.0")),
    (7, "'1'", ("1.0", "1")),
    (5, "'1.50'", ("1.5", "1.50")),
    (6, "'1'", (None, "1")),
], ids=["1.0-became-1", "1-became-1.0", "text-1-became-1.0", "text-1.0-became-1",
        "1.5-became-1.50", "null-became-1"])
def test_untyped_text_column_one_vs_one_point_zero(copy: MigratedCopy, row: int, set_to: str,
                                                   values: tuple[str | None, str]) -> None:
    pg_exec(copy.dsn, f"UPDATE untyped SET v = {set_to} WHERE id = %s", (row,))
    d = only_diff(copy.verify())
    assert (d.table, d.kind, d.key, d.columns) == ("untyped", "changed", {"id": str(row)},
                                                   {"v": values})


def test_untyped_sqlite_side_changes(copy: MigratedCopy) -> None:
    # integer 1 -> real 1.0 in SQLite: the text form the copy carries differs.
    sqlite_exec(copy.db, "UPDATE untyped SET v = 1.0 WHERE id = 1")
    d = only_diff(copy.verify())
    assert (d.key, d.columns) == ({"id": "1"}, {"v": ("1.0", "1")})


def test_untyped_float_column_last_bit(copy: MigratedCopy) -> None:
    bumped = math.nextafter(1.0, 2.0)
    pg_exec(copy.dsn, "UPDATE untyped_num SET v = %s WHERE id = 2", (bumped,))
    d = only_diff(copy.verify())
    assert (d.table, d.key) == ("untyped_num", {"id": "2"})
    assert d.columns == {"v": (struct.pack(">d", 1.0).hex(), struct.pack(">d", bumped).hex())}


def test_untyped_float_column_integer_and_real_one_are_equal(copy: MigratedCopy) -> None:
    """1 and 1.0 in a column that became double precision are the same float8."""
    sqlite_exec(copy.db, "UPDATE untyped_num SET v = 1 WHERE id = 2")
    sqlite_exec(copy.db, "UPDATE untyped_num SET v = 1.0 WHERE id = 1")
    assert_identical(copy.verify())


def test_untyped_float_column_text_one_is_a_difference(copy: MigratedCopy) -> None:
    """Text '1' in SQLite where PostgreSQL holds the float8 1: a value migrate would reject."""
    sqlite_exec(copy.db, "UPDATE untyped_num SET v = '1' WHERE id = 1")
    d = only_diff(copy.verify())
    assert (d.key, list(d.columns)) == ({"id": "1"}, ["v"])
    assert d.columns["v"][1] == struct.pack(">d", 1.0).hex()
    assert d.columns["v"][0] != d.columns["v"][1]


def test_migrate_keeps_a_trailing_null_row_of_a_one_column_table(tmp_path: Path,
                                                                 pg_dsn: Dsn) -> None:
    db = make_db(tmp_path / "one.db", "CREATE TABLE t (c TEXT);", {"t": [("a",), (None,)]})
    state = tmp_path / "state"
    result = migrate_into(db, pg_dsn, state)
    assert result.tables[0].rows == 2
    verdict = run_verify(db, pg_dsn, state)
    assert [d.to_dict() for d in all_diffs(verdict)] == []
    assert pg_exec(pg_dsn, "SELECT count(*) FROM t") == [(2,)]


def test_long_values_are_cut_around_the_first_difference(copy: MigratedCopy) -> None:
    pg_exec(copy.dsn, "UPDATE longtext SET body = overlay(body placing 'c' from 501) "
                      "WHERE id = 1")
    d = only_diff(copy.verify())
    assert d.key == {"id": "1"}
    before, after = d.columns["body"]
    assert before is not None and after is not None
    assert before.startswith("...") and after.startswith("...")
    assert len(before) <= 80 and len(after) <= 80
    assert "b" in before and "b" not in after and "c" in after
    assert before.index("b") == after.index("c")  # both cut at the same place


def test_wide_quoted_without_rowid_and_generated_tables(tmp_path: Path, pg_dsn: Dsn) -> None:
    """>99 columns (several printf calls per row), quoted names, WITHOUT ROWID, generated."""
    wide_cols = ", ".join(f"c{i} TEXT" for i in range(120))
    script = f"""
    CREATE TABLE g (id INTEGER PRIMARY KEY, a INT, b INT GENERATED ALWAYS AS (a * 2) VIRTUAL,
                    t TEXT);
    CREATE TABLE "odd name" ("key col" TEXT PRIMARY KEY, "select" INTEGER, "x""y" TEXT)
      WITHOUT ROWID;
    CREATE TABLE wide (id INTEGER PRIMARY KEY, {wide_cols});
    """
    db = make_db(tmp_path / "edge.db", script, {
        "odd name": [("k1", 1, "a"), ("K1", 2, None), ("é", None, "")],
        "wide": [(i, *[f"v{i}_{j}" if (i + j) % 3 else None for j in range(120)])
                 for i in range(50)]})
    sqlite_exec(db, "INSERT INTO g (id, a, t) VALUES (1, 2, 'ab'), (2, NULL, NULL)")
    state = tmp_path / "state"
    migrate_into(db, pg_dsn, state)
    assert_identical(run_verify(db, pg_dsn, state))
    pg_exec(pg_dsn, "UPDATE wide SET c119 = 'zz' WHERE id = 7")
    pg_exec(pg_dsn, "UPDATE wide SET c0 = NULL WHERE id = 8")
    pg_exec(pg_dsn, 'UPDATE "odd name" SET "x""y" = \'b\' WHERE "key col" = \'K1\'')
    pg_exec(pg_dsn, "UPDATE g SET t = 'AB' WHERE id = 1")
    got = {(d.table, tuple(d.key.values())): d.columns
           for d in all_diffs(run_verify(db, pg_dsn, state))}
    assert got == {("wide", ("7",)): {"c119": (None, "zz")},
                   ("wide", ("8",)): {"c0": ("v8_0", None)},
                   ("odd name", ("K1",)): {'x"y': (None, "b")},
                   ("g", ("1",)): {"t": ("ab", "AB")}}
