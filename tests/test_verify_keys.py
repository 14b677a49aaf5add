"""Text and composite primary keys: key ranges agree on both engines (bytewise order), and
bisection through many small segments reports exactly the planted keys."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

import pgshift.verify.run as verify_run
import pgshift.verify.segments as verify_segments
from pgshift.embedded_pg import PostgresServer
from verify_helpers import (
    MigratedCopy,
    all_diffs,
    assert_identical,
    migrated_module,
    pg_exec,
    qi,
)

pytestmark = pytest.mark.data

# Bytewise (SQLite BINARY, PostgreSQL "C") these sort ' ' < '-' < '0' < 'A' < 'Z' < '_' < 'a'
# < 'z' < 'ß' < 'É' < 'é' < '日本' < '😀'; any natural-language collation disagrees.
PREFIXES = ["Z", "a", "é", "日本", "A", "z", "É", "ß", "😀", " ", "-", "0", "_", "e\u0301"]
N = 5000

DDL = """
CREATE TABLE tkeys (k TEXT PRIMARY KEY NOT NULL, v INTEGER NOT NULL, note TEXT);
CREATE TABLE ckeys (a INTEGER NOT NULL, b TEXT NOT NULL, v REAL, PRIMARY KEY (a, b));
CREATE TABLE mixedkey (k PRIMARY KEY, v TEXT);
CREATE TABLE nocase (k TEXT PRIMARY KEY COLLATE NOCASE, v INTEGER);
"""


def tkey(i: int) -> str:
    return f"{PREFIXES[i % len(PREFIXES)]}{i}"


def ckey(i: int) -> tuple[int, str]:
    return i // 7, f"{PREFIXES[i % len(PREFIXES)]}{i % 7}"


def key_rows() -> dict[str, list[tuple[Any, ...]]]:
    return {
        "tkeys": [(tkey(i), i, None if i % 5 == 0 else f"n{i}") for i in range(N)],
        "ckeys": [(*ckey(i), i / 7) for i in range(N)],
        "mixedkey": [(i if i % 2 else f"k{i}", f"v{i}") for i in range(300)],
        # SQLite's own index order (NOCASE) puts 'a1' before 'Z2'; bytewise it is after.
        "nocase": [(f"{'Za_é0'[i % 5]}{i}", i) for i in range(2000)],
    }


@pytest.fixture(scope="module")
def keys_module(pg_server: PostgresServer,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[MigratedCopy]:
    with migrated_module(pg_server, tmp_path_factory.mktemp("keys"), "keys", DDL,
                         key_rows()) as copy:
        yield copy


@pytest.fixture
def copy(keys_module: MigratedCopy, tmp_path: Path) -> Iterator[MigratedCopy]:
    yield keys_module.for_test(tmp_path)
    keys_module.restore()


@pytest.fixture
def small_segments(monkeypatch: pytest.MonkeyPatch) -> None:
    """Segments of 500 rows, bisected (fan-out 16) down to 16 rows: several levels."""
    monkeypatch.setattr(verify_run, "SEGMENT_ROWS", 500)
    monkeypatch.setattr(verify_run, "ROWS_TO_COMPARE", 16, raising=False)
    monkeypatch.setattr(verify_segments, "ROWS_TO_COMPARE", 16)


def verdict(result: Any, name: str) -> Any:
    (v,) = [t for t in result.tables if t.table == name]
    return v


def test_identical_with_small_segments(copy: MigratedCopy, small_segments: None) -> None:
    result = copy.verify()
    assert_identical(result)
    v = verdict(result, "tkeys")
    assert v.mode == "segments"
    assert v.segments >= 10
    assert v.segments_checked == v.segments
    assert verdict(result, "ckeys").segments >= 10
    assert verdict(result, "mixedkey").mode == "whole table"


def test_text_keys_planted_differences_found_exactly(copy: MigratedCopy, small_segments: None,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    split_sizes: list[int] = []
    real_split = verify_segments.TableComparer.split

    def spy(self: Any, r: Any, parts: int, rows: int) -> Any:
        split_sizes.append(rows)
        return real_split(self, r, parts, rows)

    monkeypatch.setattr(verify_segments.TableComparer, "split", spy)
    changed = [17, 2003, 4999, 8, 3]  # keys '日本17', 'ß2003', 'a4999', '😀8', '日本3'
    for i in changed:
        pg_exec(copy.dsn, "UPDATE tkeys SET v = v + 1 WHERE k = %s", (tkey(i),))
    pg_exec(copy.dsn, "UPDATE tkeys SET note = NULL WHERE k = %s", (tkey(1234),))
    pg_exec(copy.dsn, "DELETE FROM tkeys WHERE k = %s", (tkey(2500),))
    pg_exec(copy.dsn, "INSERT INTO tkeys VALUES (%s, 1, NULL), (%s, 2, NULL), (%s, 3, NULL)",
            ("é17x", "Zz", "日本"))
    result = copy.verify()
    assert not result.identical
    assert result.schema_diffs == []
    got = {(d.kind, d.key["k"]): d.columns for d in all_diffs(result)}
    expected: dict[tuple[str, str], dict[str, tuple[str | None, str | None]]] = {
        ("changed", tkey(i)): {"v": (str(i), str(i + 1))} for i in changed}
    expected[("changed", tkey(1234))] = {"note": ("n1234", None)}
    expected[("missing_in_postgres", tkey(2500))] = {}
    for k in ("é17x", "Zz", "日本"):
        expected[("extra_in_postgres", k)] = {}
    assert got == expected
    v = verdict(result, "tkeys")
    assert v.segments >= 10
    assert 1 <= v.differing_segments <= 9
    # Bisection went below the first split of a segment (~500 rows) before comparing rows.
    assert any(16 < n < 500 for n in split_sizes), split_sizes
    assert {t.table for t in result.tables if not t.equal} == {"tkeys"}


def test_composite_keys_planted_differences_found_exactly(copy: MigratedCopy,
                                                          small_segments: None) -> None:
    a1, b1 = ckey(100)
    a2, b2 = ckey(4317)  # (616, 'z5'): 'Z5' is not a key
    a3, b3 = ckey(7)
    pg_exec(copy.dsn, "UPDATE ckeys SET v = v * 2 WHERE a = %s AND b = %s", (a1, b1))
    pg_exec(copy.dsn, "UPDATE ckeys SET v = NULL WHERE a = %s AND b = %s", (a2, b2))
    pg_exec(copy.dsn, "DELETE FROM ckeys WHERE a = %s AND b = %s", (a3, b3))
    # Same a, a b between existing ones; and a b that only differs by case.
    pg_exec(copy.dsn, "INSERT INTO ckeys VALUES (%s, %s, 0.5), (%s, %s, 0.5)",
            (a1, b1 + "!", a2, b2.swapcase()))
    result = copy.verify()
    got = sorted((d.kind, d.key["a"], d.key["b"], tuple(d.columns)) for d in all_diffs(result))
    assert got == sorted([
        ("changed", str(a1), b1, ("v",)),
        ("changed", str(a2), b2, ("v",)),
        ("missing_in_postgres", str(a3), b3, ()),
        ("extra_in_postgres", str(a1), b1 + "!", ()),
        ("extra_in_postgres", str(a2), b2.swapcase(), ()),
    ])
    v = verdict(result, "ckeys")
    assert v.segments >= 10


def test_non_segmentable_key_whole_table_compare(copy: MigratedCopy) -> None:
    pg_exec(copy.dsn, "UPDATE mixedkey SET v = 'changed' WHERE k = '7'")
    pg_exec(copy.dsn, "DELETE FROM mixedkey WHERE k = 'k8'")
    result = copy.verify()
    got = sorted((d.kind, d.key["k"], tuple(d.columns.items())) for d in all_diffs(result))
    assert got == [("changed", "7", (("v", ("v7", "changed")),)),
                   ("missing_in_postgres", "k8", ())]
    assert verdict(result, "mixedkey").mode == "whole table"


def test_many_differences_are_capped(copy: MigratedCopy, small_segments: None,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(verify_run, "MAX_ROW_DIFFS", 10)
    pg_exec(copy.dsn, "UPDATE tkeys SET v = v + 1 WHERE v % 100 = 0")
    result = copy.verify()
    v = verdict(result, "tkeys")
    assert len(v.diffs) == 10
    assert v.more_diffs
    assert result.to_dict()["tables"][0]["more_differences"] in (True, False)
    assert not result.identical


def test_sqlite_nocase_key_is_still_ranged_bytewise(copy: MigratedCopy,
                                                   small_segments: None) -> None:
    """The SQLite index orders NOCASE; verify must range and sort keys bytewise anyway."""
    result = copy.verify()
    v = verdict(result, "nocase")
    assert (v.mode, v.equal, v.segments >= 4) == ("segments", True, True)
    pg_exec(copy.dsn, "UPDATE nocase SET v = -1 WHERE k IN ('a1', 'Z1000', 'é1998')")
    got = sorted((d.kind, d.key["k"]) for d in all_diffs(copy.verify()))
    assert got == [("changed", "Z1000"), ("changed", "a1"), ("changed", "é1998")]


def _non_c_collation(copy: MigratedCopy) -> str | None:
    """A usable collation on this server that does not order bytewise."""
    names = [r[0] for r in pg_exec(copy.dsn, "SELECT collname FROM pg_collation WHERE collname "
             "IN ('unicode', 'und-x-icu', 'en-x-icu', 'en_US.utf8', 'en_US', 'de_DE.utf8')")]
    for name in names:
        try:
            (a_first,) = pg_exec(copy.dsn, f"SELECT 'a' < 'Z' COLLATE {qi(name)}")[0]
        except psycopg.Error:  # listed but not usable (e.g. a build without ICU)
            continue
        if a_first:
            return name
    return None


def test_text_key_order_is_bytewise_whatever_the_column_collation(
        copy: MigratedCopy, small_segments: None) -> None:
    coll = _non_c_collation(copy)
    if coll is None:
        pytest.skip("no natural-language collation usable on this server")
    try:
        pg_exec(copy.dsn, f"ALTER TABLE tkeys ALTER COLUMN k TYPE text COLLATE {qi(coll)}")
        pg_exec(copy.dsn, f"ALTER TABLE ckeys ALTER COLUMN b TYPE text COLLATE {qi(coll)}")
        result = copy.verify()
        assert all_diffs(result) == [], [d.to_dict() for d in all_diffs(result)]
        assert all(t.differing_segments == 0 for t in result.tables)
        pg_exec(copy.dsn, "UPDATE tkeys SET v = -1 WHERE k = %s", (tkey(4242),))
        got = [(d.kind, d.key) for d in all_diffs(copy.verify())]
        assert got == [("changed", {"k": tkey(4242)})]
    finally:
        pg_exec(copy.dsn, 'ALTER TABLE tkeys ALTER COLUMN k TYPE text COLLATE "default"')
        pg_exec(copy.dsn, 'ALTER TABLE ckeys ALTER COLUMN b TYPE text COLLATE "default"')
