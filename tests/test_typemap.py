"""pgshift.schema.typemap.decide: a PostgreSQL type per column from declaration and data."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

import pytest

from pgshift.schema.typemap import decide, epoch_unit
from pgshift.source.catalog import SourceColumn, read_catalog
from pgshift.source.profile import ColumnProfile, declared_family, profile_table


def col(declared: str, name: str = "c") -> SourceColumn:
    return SourceColumn(name=name, cid=0, declared_type=declared, notnull=False, default=None,
                        pk_position=0)


def prof(**kw: int | None) -> ColumnProfile:
    return ColumnProfile(**kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("declared, family", [
    ("INTEGER", "integer"), ("BIGINT", "integer"), ("int8", "integer"), ("TINYINT", "integer"),
    ("BOOLEAN", "boolean"), ("bool", "boolean"), ("DATE", "date"), ("TIME", "time"),
    ("DATETIME", "timestamp"), ("TIMESTAMP", "timestamp"), ("TIMESTAMPTZ", "timestamptz"),
    ("TIMESTAMP WITH TIME ZONE", "timestamptz"), ("JSON", "json"), ("JSONB", "json"),
    ("UUID", "uuid"), ("TEXT", "text"), ("VARCHAR(20)", "text"), ("CLOB", "text"),
    ("NCHAR(3)", "text"), ("BLOB", "blob"), ("REAL", "real"), ("FLOAT", "real"),
    ("DOUBLE PRECISION", "real"), ("NUMERIC", "numeric"), ("DECIMAL(10,2)", "numeric"),
    ("", "none"), ("STRING", "numeric_affinity"), ("ANY", "numeric_affinity"),
])
def test_declared_family(declared: str, family: str) -> None:
    assert declared_family(declared) == family


def test_rowid_alias_is_a_bigint_identity() -> None:
    d = decide(col("INTEGER", "id"), prof(integers=3), rowid_alias=True)
    assert (d.pg_type, d.conversion, d.identity) == ("bigint", "int", True)


@pytest.mark.parametrize("declared", ["INTEGER", "BIGINT", "INT"])
def test_integer_family(declared: str) -> None:
    d = decide(col(declared), prof(integers=5, nulls=1, int_min=-(2**63), int_max=2**63 - 1))
    assert (d.pg_type, d.conversion, d.identity, d.anomalies) == ("bigint", "int", False, [])


def test_integer_with_reals_becomes_numeric_with_an_anomaly() -> None:
    d = decide(col("INTEGER"), prof(integers=5, reals=2))
    assert (d.pg_type, d.conversion) == ("numeric", "numeric")
    assert d.anomalies == ["2 real value(s) in an integer column"]


def test_integer_with_text_keeps_bigint_and_announces_rejects() -> None:
    d = decide(col("INTEGER"), prof(integers=5, texts=1, blobs=2))
    assert (d.pg_type, d.conversion) == ("bigint", "int")
    assert d.anomalies == ["1 text value(s) cannot become bigint: they will be rejects",
                           "2 blob value(s) cannot become bigint: they will be rejects"]


def test_boolean() -> None:
    d = decide(col("BOOLEAN"), prof(integers=4, bool_ints=4, texts=2, bool_texts=2))
    assert (d.pg_type, d.conversion, d.anomalies) == ("boolean", "bool", [])
    bad = decide(col("BOOLEAN"), prof(integers=4, bool_ints=3, texts=2, bool_texts=1))
    assert bad.anomalies == ["2 value(s) are neither 0/1 nor a boolean word: rejects"]


@pytest.mark.parametrize("lo, hi, unit", [
    (10**8, 10**11 - 1, "epoch_s"),
    (1704067200, 1704067200, "epoch_s"),
    (1704067200123, 1704067200999, "epoch_ms"),
    (10**11, 10**14 - 1, "epoch_ms"),
    (1704067200123456, 1704067200123456, "epoch_us"),
    (10**14, 10**17 - 1, "epoch_us"),
])
def test_epoch_units_detected_from_the_range(lo: int, hi: int, unit: str) -> None:
    assert epoch_unit(lo, hi) == unit
    d = decide(col("DATETIME"), prof(integers=2, int_min=lo, int_max=hi, nulls=1))
    assert (d.pg_type, d.conversion) == ("timestamptz", unit)
    assert any(f"unit {unit} detected" in a for a in d.anomalies)


@pytest.mark.parametrize("lo, hi", [
    (0, 10), (1704067200, 1704067200123),  # seconds and milliseconds mixed
    (-1704067200, 1704067200), (10**17, 10**18), (None, None),
])
def test_integers_of_no_epoch_unit_stay_bigint(lo: int | None, hi: int | None) -> None:
    assert epoch_unit(lo, hi) is None
    if lo is None:
        return
    d = decide(col("TIMESTAMP"), prof(integers=2, int_min=lo, int_max=hi))
    assert (d.pg_type, d.conversion) == ("bigint", "int")
    assert d.anomalies == [f"integers {lo}..{hi} in a TIMESTAMP column"]


def test_temporal_text() -> None:
    d = decide(col("DATETIME"), prof(texts=3, date_texts=3, datetime_texts=3))
    assert (d.pg_type, d.conversion, d.anomalies) == ("timestamp", "ts_text", [])
    d = decide(col("DATETIME"), prof(texts=3, date_texts=3, datetime_texts=3, offset_texts=1))
    assert (d.pg_type, d.conversion) == ("timestamptz", "tstz_text")
    assert d.anomalies == ["2 value(s) without a UTC offset read as UTC (SQLite's date "
                           "functions produce UTC)"]
    d = decide(col("TIMESTAMPTZ"), prof(texts=1, date_texts=1, offset_texts=1))
    assert (d.pg_type, d.conversion, d.anomalies) == ("timestamptz", "tstz_text", [])
    d = decide(col("DATETIME"), prof(texts=4, date_texts=2, integers=1))
    assert d.pg_type == "timestamp"
    assert d.anomalies == ["1 integer value(s) cannot become timestamp: they will be rejects",
                           "2 text value(s) are not dates: rejects"]


def test_date_and_time() -> None:
    assert decide(col("DATE"), prof(texts=2, date_texts=2)).pg_type == "date"
    d = decide(col("DATE"), prof(texts=2, date_texts=2, datetime_texts=1))
    assert (d.pg_type, d.conversion) == ("timestamp", "ts_text")
    assert "carry a time" in d.anomalies[0]
    d = decide(col("TIME"), prof(texts=2))
    assert (d.pg_type, d.conversion) == ("time", "time_text")


@pytest.mark.parametrize("declared, p, expected", [
    ("JSON", prof(texts=2, integers=1), ("jsonb", "json", [])),
    ("JSON", prof(texts=2, blobs=1),
     ("jsonb", "json", ["1 blob value(s) cannot become jsonb: they will be rejects"])),
    ("UUID", prof(texts=2, blobs=1), ("uuid", "uuid", [])),
    ("TEXT", prof(texts=2), ("text", "text", [])),
    ("VARCHAR(5)", prof(texts=2, integers=1, reals=1),
     ("text", "text", ["2 number(s) stored in a text column: carried as their text form"])),
    ("BLOB", prof(blobs=3), ("bytea", "bytea", [])),
    ("BLOB", prof(texts=3), ("text", "text", ["3 text value(s) in a BLOB column: kept as text"])),
    ("BLOB", prof(blobs=1, texts=2),
     ("bytea", "bytea", ["2 text value(s) in a BLOB column: stored as their UTF-8 bytes"])),
    ("REAL", prof(reals=3), ("double precision", "float", [])),
    ("DOUBLE", prof(reals=3, integers=1, int_min=0, int_max=2**60),
     ("double precision", "float",
      ["integers beyond 2^53 in a REAL column: not exact in double precision"])),
    ("NUMERIC", prof(integers=1, reals=1), ("numeric", "numeric", [])),
    ("DECIMAL(10,2)", prof(reals=1, blobs=1),
     ("numeric", "numeric", ["1 blob value(s) cannot become numeric: they will be rejects"])),
])
def test_declared_families(declared: str, p: ColumnProfile,
                           expected: tuple[str, str, list[str]]) -> None:
    d = decide(col(declared), p)
    assert (d.pg_type, d.conversion, d.anomalies) == expected
    assert d.reason


@pytest.mark.parametrize("declared", ["", "STRING", "ANY"])
@pytest.mark.parametrize("p, pg_type, conversion, noted", [
    (prof(), "text", "text", False),
    (prof(nulls=4), "text", "text", False),
    (prof(texts=2), "text", "text", False),
    (prof(integers=2, int_min=1, int_max=9), "bigint", "int", False),
    (prof(integers=2, reals=1, int_min=1, int_max=9), "double precision", "float", False),
    (prof(integers=2, reals=1, int_min=-(2**63), int_max=9), "numeric", "numeric", False),
    (prof(blobs=2), "bytea", "bytea", False),
    (prof(blobs=2, texts=1), "bytea", "bytea", True),
    (prof(texts=2, integers=1), "text", "text", True),
])
def test_no_declared_type_chosen_from_the_data(declared: str, p: ColumnProfile, pg_type: str,
                                               conversion: str, noted: bool) -> None:
    d = decide(col(declared), p)
    assert (d.pg_type, d.conversion) == (pg_type, conversion)
    assert bool(d.anomalies) == noted
    assert "chosen from the data" in d.reason


# ------------------------------------------------------------------------- from real data


@pytest.fixture
def con() -> Iterator[sqlite3.Connection]:
    c = sqlite3.connect(":memory:")
    yield c
    c.close()


def _decisions(con: sqlite3.Connection, ddl: str, rows: list[tuple]) -> dict[str, tuple]:
    con.execute(ddl)
    con.executemany(f"INSERT INTO t VALUES ({', '.join('?' for _ in rows[0])})", rows)
    [table] = read_catalog(con).tables
    p = profile_table(con, table)
    return {c.name: (d.pg_type, d.conversion)
            for c in table.columns
            for d in [decide(c, p.columns[c.name], rowid_alias=c.name == table.rowid_alias)]}


def test_profile_then_decide_on_real_sqlite(con: sqlite3.Connection) -> None:
    got = _decisions(con, "CREATE TABLE t (id INTEGER PRIMARY KEY, s_ep DATETIME, ms DATETIME, "
                          "us TIMESTAMP, txt DATETIME, tz DATETIME, flag BOOLEAN, j JSON, "
                          "untyped, r REAL, n NUMERIC, blob_text BLOB)", [
        (1, 1704067200, 1704067200123, 1704067200123456, "2024-01-02 03:04:05",
         "2024-01-02T03:04:05+02:00", 1, '{"a": 1}', 5, 1.5, 2, "abc"),
        (2, 1600000000, 1600000000000, None, "2024-01-31 10:00", "2024-01-02 03:04:05Z", 0,
         "[1]", 7, 2.0, 3.25, "def"),
    ])
    assert got == {
        "id": ("bigint", "int"), "s_ep": ("timestamptz", "epoch_s"),
        "ms": ("timestamptz", "epoch_ms"), "us": ("timestamptz", "epoch_us"),
        "txt": ("timestamp", "ts_text"), "tz": ("timestamptz", "tstz_text"),
        "flag": ("boolean", "bool"), "j": ("jsonb", "json"), "untyped": ("bigint", "int"),
        "r": ("double precision", "float"), "n": ("numeric", "numeric"),
        "blob_text": ("text", "text"),
    }
