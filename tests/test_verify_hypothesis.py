"""Property: a random small table migrated, then ONE random change in PostgreSQL — verify
always reports it, and for keyed tables points at the changed key (and column).

One database serves every example: each example migrates into a schema of its own and
drops it afterwards, so an example costs a migrate and two verifies (~0.5 s).
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from pgshift.dsn import Dsn
from pgshift.embedded_pg import PostgresServer
from verify_helpers import (
    all_diffs,
    fresh_database,
    make_db,
    migrate_into,
    pg_exec,
    qi,
    run_verify,
)

pytestmark = pytest.mark.data

_chars = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
_text = st.text(_chars, max_size=8)
# -0.0 is left out: its sign is a known migrate issue (tests/test_migrate_values.py).
_float = st.floats(allow_nan=False).map(lambda x: 0.0 if x == 0 else x)
_finite = st.floats(allow_nan=False, allow_infinity=False).map(lambda x: 0.0 if x == 0 else x)
_int64 = st.integers(-(2**63), 2**63 - 1)
_json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-(10**20), 10**20), _finite, _text)
_json_doc = st.recursive(_json_leaf, lambda kids: st.lists(kids, max_size=3)
                         | st.dictionaries(_text, kids, max_size=3), max_leaves=6)

# (declared type, value strategy) — the values each column kind holds in SQLite.
COLUMN_KINDS: dict[str, tuple[str, st.SearchStrategy[Any]]] = {
    "integer": ("INTEGER", _int64),
    "real": ("REAL", _float),
    "text": ("TEXT", _text),
    "blob": ("BLOB", st.binary(max_size=8)),
    "json": ("JSON", _json_doc.map(json.dumps)),
    "untyped-int": ("", _int64),
    "untyped-num": ("", st.integers(-(2**53), 2**53) | _finite),
    "untyped-text": ("", _text),
    "untyped-mixed": ("", st.integers(-(2**53), 2**53) | _finite | _text),
    "untyped-blob": ("", st.binary(max_size=8) | _text),
}
NAME_SETS = [["c0", "c1", "c2", "c3"], ["select", "Mixed Case", 'q"uote', "naïve"]]


@dataclass
class Case:
    key: str  # "rowid", "text", "none"
    names: list[str]
    kinds: list[str]
    keys: list[Any]
    rows: list[list[Any]]
    mutation: str  # "update", "delete", "insert"
    row: int
    column: int
    to_null: bool

    def ddl(self) -> str:
        cols = [f"{qi(n)} {COLUMN_KINDS[k][0]}".rstrip() for n, k in zip(self.names, self.kinds,
                                                                          strict=True)]
        if self.key == "rowid":
            cols.insert(0, "id INTEGER PRIMARY KEY")
        elif self.key == "text":
            cols.insert(0, "k TEXT PRIMARY KEY NOT NULL")
        return f"CREATE TABLE t ({', '.join(cols)});"

    def sqlite_rows(self) -> list[tuple[Any, ...]]:
        if self.key == "none":
            return [tuple(r) for r in self.rows]
        return [(k, *r) for k, r in zip(self.keys, self.rows, strict=True)]


@st.composite
def cases(draw: st.DrawFn) -> Case:
    ncols = draw(st.integers(1, 4))
    names = draw(st.sampled_from(NAME_SETS))[:ncols]
    kinds = draw(st.lists(st.sampled_from(sorted(COLUMN_KINDS)), min_size=ncols,
                          max_size=ncols))
    nrows = draw(st.integers(1, 60))
    key = draw(st.sampled_from(["rowid", "text", "none"]))
    if key == "rowid":
        keys: list[Any] = draw(st.lists(st.integers(-(10**6), 10**6), min_size=nrows,
                                        max_size=nrows, unique=True))
    elif key == "text":
        keys = draw(st.lists(_text, min_size=nrows, max_size=nrows, unique=True))
    else:
        keys = [None] * nrows
    rows = [[draw(st.none() | COLUMN_KINDS[k][1]) for k in kinds] for _ in range(nrows)]
    return Case(key, names, kinds, keys, rows,
                mutation=draw(st.sampled_from(["update", "delete", "insert"])),
                row=draw(st.integers(0, nrows - 1)), column=draw(st.integers(0, ncols - 1)),
                to_null=draw(st.booleans()))


@dataclass
class Workspace:
    dsn: Dsn
    base: Path
    counter: Iterator[int]


@pytest.fixture(scope="module")
def workspace(pg_server: PostgresServer,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    with fresh_database(pg_server, "hypothesis") as dsn:
        yield Workspace(dsn, tmp_path_factory.mktemp("hypo"), itertools.count())


def _row_filter(case: Case, schema: str) -> tuple[str, tuple[Any, ...]]:
    """SQL (and params) selecting the chosen row in PostgreSQL."""
    if case.key == "rowid":
        return "id = %s", (case.keys[case.row],)
    if case.key == "text":
        return 'k COLLATE "C" = %s', (case.keys[case.row],)
    # Keyless: the chosen row's ctid, found by its rank in an arbitrary but fixed order.
    return (f"ctid = (SELECT ctid FROM {qi(schema)}.t ORDER BY ctid OFFSET %s LIMIT 1)",
            (case.row,))


def _new_value_sql(pg_type: str, col: str, current: Any, is_null: bool, to_null: bool
                   ) -> tuple[str, tuple[Any, ...]]:
    """A SET expression that surely changes the cell's canonical value."""
    if not is_null and to_null:
        return "NULL", ()
    if is_null:
        return {"bigint": "0", "double precision": "0.5", "numeric": "0", "text": "''",
                "bytea": "'\\x'::bytea", "jsonb": "'null'::jsonb"}[pg_type], ()
    if pg_type == "double precision":
        bumped = math.nextafter(current, 0.0) if math.isinf(current) \
            else math.nextafter(current, math.inf)
        return "%s::float8", (bumped,)
    c = qi(col)
    return {"bigint": f"CASE WHEN {c} = 9223372036854775807 THEN {c} - 1 ELSE {c} + 1 END",
            "numeric": f"{c} + 1", "text": f"{c} || 'x'",
            "bytea": f"{c} || '\\x00'::bytea", "jsonb": f"jsonb_build_array({c})"}[pg_type], ()


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=cases())
def test_random_single_change_is_always_found(workspace: Workspace, case: Case) -> None:
    n = next(workspace.counter)
    schema = f"h{n}"
    db = make_db(workspace.base / f"h{n}.db", case.ddl(), {"t": case.sqlite_rows()})
    state = workspace.base / f"state{n}"
    note(case.ddl())
    try:
        result = migrate_into(db, workspace.dsn, state, schema=schema)
        before = run_verify(db, workspace.dsn, state, schema=schema)
        assert before.identical, before.to_dict()
        table = result.plan.table("t")
        where, params = _row_filter(case, schema)
        target = f"{qi(schema)}.t"
        expected_key: dict[str, str] | None = None
        if case.key == "rowid":
            expected_key = {"id": str(case.keys[case.row])}
        elif case.key == "text":
            expected_key = {"k": case.keys[case.row]}
        col = case.names[case.column]
        mutation = case.mutation
        if mutation == "update":
            pg_type = table.column(col).pg_type
            # (psycopg loads jsonb 'null' as None too: ask PostgreSQL about SQL NULL)
            current, is_null = pg_exec(workspace.dsn, f"SELECT {qi(col)}, {qi(col)} IS NULL "
                                       f"FROM {target} WHERE {where}", params)[0]
            set_sql, set_params = _new_value_sql(pg_type, col, current, is_null, case.to_null)
            note(f"UPDATE {col} ({pg_type}) from {current!r} via {set_sql} {set_params}")
            pg_exec(workspace.dsn, f"UPDATE {target} SET {qi(col)} = {set_sql} WHERE {where}",
                    (*set_params, *params))
        elif mutation == "delete":
            note(f"DELETE row {case.row}")
            pg_exec(workspace.dsn, f"DELETE FROM {target} WHERE {where}", params)
        elif case.key == "rowid":
            new_id = max(case.keys) + 1
            expected_key = {"id": str(new_id)}
            pg_exec(workspace.dsn, f"INSERT INTO {target} (id) VALUES (%s)", (new_id,))
        elif case.key == "text":
            new_key = max(case.keys) + "\U0010fffd"
            expected_key = {"k": new_key}
            pg_exec(workspace.dsn, f"INSERT INTO {target} (k) VALUES (%s)", (new_key,))
        else:  # keyless: a duplicate of an existing row
            pg_exec(workspace.dsn, f"INSERT INTO {target} SELECT * FROM {target} WHERE {where}",
                    params)
        after = run_verify(db, workspace.dsn, state, schema=schema)
        note(json.dumps(after.to_dict(), ensure_ascii=False, default=str))
        assert not after.identical
        assert int(after.exit_code) == 1
        assert after.schema_diffs == []
        diffs = all_diffs(after)
        assert diffs
        if case.key == "none":
            assert all(d.kind == "count_differs" for d in diffs)
            return
        (d,) = diffs
        assert d.key == expected_key
        if mutation == "update":
            assert (d.kind, list(d.columns)) == ("changed", [col])
        elif mutation == "delete":
            assert d.kind == "missing_in_postgres"
        else:
            assert d.kind == "extra_in_postgres"
    finally:
        pg_exec(workspace.dsn, f"DROP SCHEMA IF EXISTS {qi(schema)} CASCADE")
