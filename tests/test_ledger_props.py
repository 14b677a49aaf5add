"""Properties of the ledger checker over random write histories, on a real SQLite file.

Any final value some valid commit order could leave passes; a definitely superseded value is a
reverted update; a value nobody wrote is a lost update; a counter off by one is caught.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgshift.demo.ledger import Entry, check_ledger
from pgshift.demo.seed import create_schema

# (sent offset, duration) per write, in ms.
writes = st.lists(st.tuples(st.integers(0, 50), st.integers(1, 30)), min_size=1, max_size=8)


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("ledger-props") / "app.db"
    with closing(sqlite3.connect(path)) as con:
        create_schema(con)
        con.execute("INSERT INTO tool_configs (tool_name, config, updated_at) VALUES ('t', '', 0)")
        con.execute("INSERT INTO rate_limits VALUES ('k', 0, 100, 0, 0)")
        con.commit()
    yield path


def _set(db: Path, sql: str, value: object) -> Path:
    with closing(sqlite3.connect(db)) as con:
        con.execute(sql, (value,))
        con.commit()
    return db


def _puts(spec: list[tuple[int, int]]) -> list[Entry]:
    return [Entry(op="tool.put", table="tool_configs", key="t", sent=sent / 1000,
                  ts=(sent + dur) / 1000, values={"config": {"v": i}})
            for i, (sent, dur) in enumerate(sorted(spec))]


def _config(db: Path, config: object) -> Path:
    return _set(db, "UPDATE tool_configs SET config = ?", json.dumps(config))


@given(spec=writes, data=st.data())
def test_any_possible_last_write_passes(db: Path, spec: list[tuple[int, int]],
                                        data: st.DataObject) -> None:
    entries = _puts(spec)
    # Possibly last: no other write was sent after it was acknowledged.
    possible = [e for e in entries if not any(o.sent > e.ts for o in entries)]
    final = data.draw(st.sampled_from(possible))
    assert check_ledger(entries, sqlite_path=_config(db, final.values["config"])).ok


@given(spec=writes)
def test_superseded_or_unknown_values_fail(db: Path, spec: list[tuple[int, int]]) -> None:
    entries = _puts(spec)
    stale = [e for e in entries if any(o.sent > e.ts for o in entries)]
    if stale:
        [v] = check_ledger(entries, sqlite_path=_config(db, stale[0].values["config"])).violations
        assert v.kind == "reverted-update"
    [v] = check_ledger(entries, sqlite_path=_config(db, {"v": "nobody"})).violations
    assert v.kind == "lost-update"


@given(costs=st.lists(st.integers(1, 5), max_size=20), off=st.integers(-3, 3))
def test_counter_arithmetic(db: Path, costs: list[int], off: int) -> None:
    entries = [Entry(op="rate_limit.set", table="rate_limits", key="k", sent=0.0, ts=0.001,
                     values={"remaining": 100})]
    for i, cost in enumerate(costs):
        entries.append(Entry(op="rate_limit.take", table="rate_limits", key="k",
                             sent=0.01 * (i + 1), ts=0.01 * (i + 1) + 0.005,
                             delta={"remaining": -cost}))
    final = 100 - sum(costs) + off
    result = check_ledger(entries, sqlite_path=_set(db, "UPDATE rate_limits SET remaining = ?",
                                                      final))
    if off == 0:
        assert result.ok
    else:
        [v] = result.violations
        assert v.kind == ("lost-decrement" if off > 0 else "extra-decrement")
