"""The tail check before the flip: the rows changed last, compared on both engines.

Behind the write fence, once the drain has passed the fence marker, every change blue
committed is in PostgreSQL. The full comparison ran once, on the snapshot migrate
copied; what changed since reached PostgreSQL through sync alone. The flip re-checks
the most recently changed rows -- the ones a drain that stopped short, a conversion
difference or a lost change would show first -- before PostgreSQL becomes the system
of record ("verify the tail before flipping", docs/rollout.md; DMS treats a mismatch as
a failure, never a silent suspend).

A difference at a key whose change sync parked (PostgreSQL refused it) or lost a
conflict to PostgreSQL's version is *explained*: sync already recorded it. Any other
difference fails the check. Tables whose keys do not compare the same way on both
engines (no primary key, or one that is not a plain integer or text) are named as not
checked, as are tables loaded ``--into-existing`` (mapped).
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from pgshift.dsn import Dsn, connect
from pgshift.errors import TargetError
from pgshift.source.snapshot import CHANGELOG_TABLE, open_source, sqlite_failure
from pgshift.sync.common import FENCE_OP
from pgshift.sync.image import ImageError, decode
from pgshift.verify.redaction import redact_diff
from pgshift.verify.run import VerifyOptions, plan_tables
from pgshift.verify.segments import RowDiff, TableComparer

DEFAULT_KEYS = 1000


@dataclass
class TailResult:
    """What the tail check compared and found."""

    after: int  # change-log positions checked: (after, upto]
    upto: int
    keys: dict[str, int] = field(default_factory=dict)  # keys compared per table
    diffs: list[RowDiff] = field(default_factory=list)  # unexplained: the check fails
    explained: list[RowDiff] = field(default_factory=list)  # parked or conflict lost
    not_checked: dict[str, str] = field(default_factory=dict)  # table -> why
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.diffs

    @property
    def checked(self) -> int:
        return sum(self.keys.values())

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "after": self.after, "upto": self.upto,
                "checked": self.checked, "keys": self.keys,
                "diffs": [d.to_dict() for d in self.diffs],
                "explained": [d.to_dict() for d in self.explained],
                "not_checked": self.not_checked, "seconds": round(self.seconds, 3)}


def changed_keys(con: sqlite3.Connection, after: int, upto: int, limit: int
                 ) -> dict[str, list[tuple[Any, ...]]]:
    """The keys of the last ``limit`` changes in ``(after, upto]``, newest first, per table
    (the old and the new key of an update both)."""
    keys: dict[str, dict[tuple[Any, ...], None]] = {}
    rows = con.execute(
        f'SELECT tbl, key_old, key_new FROM "{CHANGELOG_TABLE}" '
        "WHERE seq > ? AND seq <= ? AND op != ? ORDER BY seq DESC LIMIT ?",
        (after, upto, FENCE_OP, limit))
    for tbl, key_old, key_new in rows:
        for image in (key_new, key_old):
            if image is not None:
                keys.setdefault(tbl, {})[tuple(decode(image))] = None
    return {t: list(k) for t, k in keys.items()}


def _explained_keys(pg: psycopg.Connection, schema: str, after: int, upto: int
                    ) -> set[tuple[str, tuple[Any, ...]]]:
    """(table, key) of changes in ``(after, upto]`` sync parked, or whose conflict
    PostgreSQL's version won: a difference there is sync's recorded decision."""
    rows = pg.execute(
        "SELECT table_name, key_old, key_new FROM pgshift.sync_parked "
        "WHERE target_schema = %s AND direction = 'to-postgres' AND seq > %s AND seq <= %s "
        "UNION ALL SELECT table_name, key, NULL FROM pgshift.sync_conflicts "
        "WHERE target_schema = %s AND direction = 'to-postgres' AND winner = 'postgres' "
        "AND seq > %s AND seq <= %s",
        (schema, after, upto, schema, after, upto)).fetchall()
    out: set[tuple[str, tuple[Any, ...]]] = set()
    for table, *images in rows:
        for image in images:
            try:
                if image is not None:
                    out.add((table, tuple(decode(image))))
            except ImageError:  # a conflict key stored as JSON: matched by table below
                out.add((table, ()))
    return out


def verify_tail(sqlite_path: Path, dsn: Dsn, schema: str, *, after: int, upto: int,
                limit: int = DEFAULT_KEYS, show_values: bool = False) -> TailResult:
    """Compare the rows of the last ``limit`` changes blue made in change-log positions
    ``(after, upto]`` (``upto``: the drain's fence marker) on both engines. Run it
    while writes are held and after the drain reached ``upto``; otherwise a row changed
    meanwhile is reported."""
    started = time.perf_counter()
    result = TailResult(after, upto)
    src = open_source(sqlite_path)
    pg = connect(dsn)
    try:
        src.execute("BEGIN")
        keys = changed_keys(src, after, upto, limit)
        if not keys:
            return result
        plan, mapped = plan_tables(VerifyOptions(sqlite_path, dsn, schema,
                                                 tables=sorted(keys)), src, pg)
        explained = _explained_keys(pg, schema, after, upto)
        pg.rollback()
        pg.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        pg.execute("SET search_path = pg_catalog")
        planned = {t.name for t in plan.tables}
        for name, wanted in sorted(keys.items()):
            if mapped:
                result.not_checked[name] = "loaded --into-existing (mapped): run pgshift verify"
                continue
            if name not in planned:
                result.not_checked[name] = "not in the migration plan"
                continue
            cmp = TableComparer(plan.table(name), plan.schema, src, pg)
            if not cmp.segmentable:
                result.not_checked[name] = ("its key is not a plain integer or text, or it "
                                            "has none")
                continue
            result.keys[name] = len(wanted)
            for d in cmp.diff_keys(wanted):
                key = tuple(d.key[k] for k in cmp.keys)
                hit = any(t == name and (not k or _same_key(k, key)) for t, k in explained)
                (result.explained if hit else result.diffs).append(
                    d if show_values else redact_diff(d))
        pg.rollback()
    except psycopg.OperationalError as exc:
        raise TargetError(f"PostgreSQL failed during the tail check: {exc}") from exc
    except sqlite3.DatabaseError as exc:
        raise sqlite_failure(exc, sqlite_path, "tail check: reading") from exc
    finally:
        src.close()
        pg.close()
        result.seconds = time.perf_counter() - started
    return result


def _same_key(image_key: tuple[Any, ...], canon_key: tuple[Any, ...]) -> bool:
    """A change-log key (SQLite values) against a difference's key (canonical texts)."""
    return len(image_key) == len(canon_key) and all(
        str(a) == str(b) for a, b in zip(image_key, canon_key, strict=True))
