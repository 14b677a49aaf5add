"""The write ledger: every write the app acknowledged, and the proof that none was lost.

The load generator appends one JSON object per line for every write it sent::

    {"sent": 1764170000.101, "ts": 1764170000.104, "op": "tool.put", "table": "tool_configs",
     "key": "github", "values": {"config": {...}}, "ack": true, "status": 200, "response": {...}}

``sent``/``ts`` are the wall-clock times (epoch seconds) the request left and its answer came
back; ``served_by`` the answering app's ``x-pgshift-served-by`` header (blue/green);
``values`` are the columns the write set (absolute), ``delta`` the counter changes it made
(``{"remaining": -1}``); ``ack`` is true for a 2xx answer. Writes that failed are recorded too
(``ack: false``) when their key is known: they may or may not have landed.

:func:`check_ledger` proves, against the database that is the system of record, that

* every acknowledged write is present: its row exists and each column it set holds its value,
  or the value of a write to the same column that was *acknowledged* and not definitely older
  (a write is definitely superseded only by one sent after it was acknowledged; concurrent
  writes may land in either order) -- else ``missing``, ``reverted-update`` (the column holds an
  older acknowledged value) or ``lost-update`` (it holds a value nobody acknowledged);
* no job was claimed twice (``double-claim``: two acknowledged claims of one job id);
* every counter equals its last acknowledged absolute value plus the acknowledged deltas sent
  after it (``lost-decrement`` when higher; ``extra-decrement`` when lower than even the
  ambiguous and unacknowledged attempts can explain). A counter whose initial value the ledger
  does not hold cannot be proven and is reported as unverifiable, not as a violation.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pgshift.errors import ExitCode, PgshiftError, UsageError

__all__ = [
    "Entry",
    "LedgerCheck",
    "LedgerWriter",
    "Violation",
    "check_ledger",
    "read_ledger",
]

#: Primary key column of every table the app writes.
KEY_COLUMNS: dict[str, str] = {
    "jobs": "id",
    "job_history": "id",
    "tool_configs": "tool_name",
    "rate_limits": "key",
    "users": "id",
    "user_sessions": "id",
    "app_state": "key",
    "oauth_tokens": "id",
}
#: Columns holding JSON text: compared as parsed JSON, not byte for byte.
JSON_COLUMNS: frozenset[tuple[str, str]] = frozenset(
    {("jobs", "payload"), ("jobs", "result"), ("tool_configs", "config"), ("app_state", "value")})
#: Counter columns: checked by arithmetic (initial value plus deltas), never as plain values.
COUNTER_COLUMNS: frozenset[tuple[str, str]] = frozenset({("rate_limits", "remaining")})
#: Ops that take a job: two acknowledged ones on one id is a double claim.
CLAIM_OPS = frozenset({"job.claim"})


@dataclass
class Entry:
    """One line of the ledger."""

    op: str
    table: str
    key: Any
    sent: float
    ts: float
    values: dict[str, Any] = field(default_factory=dict)
    delta: dict[str, int] = field(default_factory=dict)
    ack: bool = True
    status: int | None = None
    response: Any = None
    served_by: str | None = None  # the app that answered (x-pgshift-served-by), if known
    line: int = 0

    def to_json(self) -> str:
        d: dict[str, Any] = {"sent": round(self.sent, 6), "ts": round(self.ts, 6), "op": self.op,
                             "table": self.table, "key": self.key, "ack": self.ack,
                             "status": self.status}
        if self.values:
            d["values"] = self.values
        if self.delta:
            d["delta"] = self.delta
        if self.served_by:
            d["served_by"] = self.served_by
        if self.response is not None:
            d["response"] = self.response
        return json.dumps(d, ensure_ascii=False, separators=(",", ":"), default=str)

    def brief(self) -> dict[str, Any]:
        return {"op": self.op, "table": self.table, "key": self.key, "sent": self.sent,
                "ts": self.ts, "line": self.line, "served_by": self.served_by}


class LedgerWriter:
    """Appends entries to a ledger file; safe across processes and threads.

    Lines are buffered and written with one ``write`` on an ``O_APPEND`` descriptor per
    :meth:`flush`, so writers in several processes never interleave inside a line.
    :meth:`close` flushes and fsyncs.
    """

    def __init__(self, path: Path | str, *, flush_every: int = 256) -> None:
        self.path = Path(path)
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            raise UsageError(f"cannot write the ledger {self.path}: {exc.strerror}",
                             hint="choose a path in a directory you can write to") from exc
        self._buf: list[str] = []
        self._lock = threading.Lock()
        self._flush_every = flush_every
        self.count = 0

    def record(self, entry: Entry) -> None:
        line = entry.to_json() + "\n"
        with self._lock:
            self._buf.append(line)
            self.count += 1
            full = len(self._buf) >= self._flush_every
        if full:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            if not self._buf:
                return
            data = "".join(self._buf).encode()
            self._buf.clear()
            view = memoryview(data)
            while view:
                n = os.write(self._fd, view)
                view = view[n:]

    def close(self) -> None:
        if self._fd < 0:
            return
        self.flush()
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = -1

    def __enter__(self) -> LedgerWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_ledger(path: Path | str) -> list[Entry]:
    """Parse a ledger file; a malformed line is bad input (UsageError, exit 2)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"ledger {path} does not exist",
                         hint="pgshift load run --url URL --rps 50 --duration 30 --ledger "
                              f"{path}")
    entries: list[Entry] = []
    hint = "the ledger must be the file written by pgshift load run --ledger"
    with path.open("rb") as f:
        for n, raw in enumerate(f, start=1):
            # a ledger cut short (a crash, a full disk) ends in a partial line
            partial = not raw.endswith(b"\n")
            if partial:
                hint = (f"the last line is incomplete (a truncated ledger?): keep the "
                        f"whole lines: head -n {n - 1} {path} > whole.jsonl")
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise UsageError(f"ledger {path} line {n} is not UTF-8 text"
                                 + (" (it is cut short)" if partial else ""),
                                 hint=hint) from None
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                key = d["key"]
                if isinstance(key, bool) or not isinstance(key, str | int | None):
                    raise ValueError(f"key {key!r} is not a string, an integer or null")
                entries.append(Entry(op=str(d["op"]), table=str(d["table"]), key=key,
                                     sent=float(d["sent"]), ts=float(d["ts"]),
                                     values=dict(d.get("values") or {}),
                                     delta={k: int(v) for k, v in (d.get("delta") or {}).items()},
                                     ack=bool(d.get("ack", True)), status=d.get("status"),
                                     response=d.get("response"),
                                     served_by=d.get("served_by"), line=n))
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise UsageError(f"ledger {path} line {n} is not a ledger entry: {exc}",
                                 hint=hint) from None
            if entries[-1].table not in KEY_COLUMNS:
                raise UsageError(f"ledger {path} line {n}: unknown table "
                                 f"{entries[-1].table!r}",
                                 hint=f"tables: {', '.join(KEY_COLUMNS)}")
    return entries


# --------------------------------------------------------------------------- checking


@dataclass
class Violation:
    """One acknowledged write the database does not hold (or a claim it should not have)."""

    kind: str  # missing | reverted-update | lost-update | double-claim | lost-decrement | ...
    table: str
    key: Any
    column: str | None
    expected: Any
    actual: Any
    entries: list[dict[str, Any]]
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class LedgerCheck:
    """What :func:`check_ledger` found."""

    entries: int = 0
    acknowledged: int = 0
    keys_checked: int = 0
    columns_checked: int = 0
    counters_checked: int = 0
    violations: list[Violation] = field(default_factory=list)
    unverifiable: list[dict[str, Any]] = field(default_factory=list)
    database: str = ""

    @property
    def empty(self) -> bool:
        """No acknowledged write to check: the ledger proves nothing."""
        return self.acknowledged == 0

    @property
    def ok(self) -> bool:
        """No violation, and at least one acknowledged write was checked."""
        return not self.violations and not self.empty

    @property
    def exit_code(self) -> ExitCode:
        return ExitCode.OK if self.ok else ExitCode.DIFFERENCES

    def by_kind(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for v in self.violations:
            out[v.kind] += 1
        return dict(sorted(out.items()))

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "empty": self.empty, "database": self.database,
                "entries": self.entries,
                "acknowledged": self.acknowledged, "keys_checked": self.keys_checked,
                "columns_checked": self.columns_checked,
                "counters_checked": self.counters_checked, "violations_by_kind": self.by_kind(),
                "violations": [v.to_dict() for v in self.violations],
                "unverifiable": self.unverifiable}


class LedgerViolations(PgshiftError):
    """Acknowledged writes are missing (exit 1)."""

    exit_code = ExitCode.DIFFERENCES


def check_ledger(entries: Iterable[Entry], *, sqlite_path: Path | None = None,
                 postgres_dsn: Any = None) -> LedgerCheck:
    """Check ``entries`` against the SQLite file or the PostgreSQL DSN (exactly one)."""
    if (sqlite_path is None) == (postgres_dsn is None):
        raise UsageError("check the ledger against exactly one database",
                         hint="pass --sqlite PATH or --postgres DSN")
    entries = list(entries)
    result = LedgerCheck(entries=len(entries), acknowledged=sum(e.ack for e in entries))
    groups: dict[tuple[str, Any], list[Entry]] = defaultdict(list)
    for e in entries:
        groups[(e.table, e.key)].append(e)
    keys_by_table: dict[str, list[Any]] = defaultdict(list)
    for (table, key), group in groups.items():
        if any(e.ack for e in group):
            keys_by_table[table].append(key)
    fetch = _SqliteFetcher(sqlite_path) if sqlite_path is not None else _PgFetcher(postgres_dsn)
    try:
        result.database = fetch.label
        rows: dict[tuple[str, Any], dict[str, Any]] = {}
        for table, keys in keys_by_table.items():
            for fetched in fetch.rows(table, KEY_COLUMNS[table], keys):
                rows[(table, _norm_key(fetched[KEY_COLUMNS[table]]))] = fetched
    finally:
        fetch.close()
    for (table, key), group in sorted(groups.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
        acked = [e for e in group if e.ack]
        if not acked:
            continue
        result.keys_checked += 1
        _check_claims(table, key, acked, result)
        row = rows.get((table, _norm_key(key)))
        if row is None:
            first = min(acked, key=lambda e: e.ts)
            result.violations.append(Violation(
                "missing", table, key, None, "row present", None,
                [e.brief() for e in acked],
                f"{len(acked)} acknowledged write(s) to {table} {key!r}, first {first.op} at "
                f"line {first.line}; the row does not exist"))
            continue
        counters = {c for e in group for c in e.delta} | {
            c for e in acked for c in e.values if (table, c) in COUNTER_COLUMNS}
        _check_columns(table, key, acked, row, counters, result)
        for column in sorted(counters):
            _check_counter(table, key, column, group, row, result)
    return result


def _norm_key(key: Any) -> Any:
    return str(key)


def _same(table: str, column: str, expected: Any, actual: Any) -> bool:
    if (table, column) in JSON_COLUMNS and isinstance(actual, str):
        try:
            actual = json.loads(actual)
        except ValueError:
            return bool(expected == actual)
    if isinstance(expected, bool):
        expected = int(expected)
    return bool(expected == actual)


def _check_claims(table: str, key: Any, acked: list[Entry], result: LedgerCheck) -> None:
    claims = [e for e in acked if e.op in CLAIM_OPS]
    if len(claims) > 1:
        result.violations.append(Violation(
            "double-claim", table, key, None, "claimed once", f"claimed {len(claims)} times",
            [e.brief() for e in claims],
            f"job {key} was acknowledged as claimed {len(claims)} times (lines "
            f"{', '.join(str(e.line) for e in claims)})"))


def _check_columns(table: str, key: Any, acked: list[Entry], row: dict[str, Any],
                   counters: set[str], result: LedgerCheck) -> None:
    columns = {c for e in acked for c in e.values if c not in counters}
    for column in sorted(columns):
        if column not in row:
            raise UsageError(f"the ledger writes {table}.{column}, which the database lacks",
                             hint="check the ledger against the app's database")
        writes = [e for e in acked if column in e.values]
        # A write is out of the running only if another one was sent after it was acknowledged.
        candidates = [w for w in writes if not any(o.sent > w.ts for o in writes)]
        result.columns_checked += 1
        actual = row[column]
        if any(_same(table, column, w.values[column], actual) for w in candidates):
            continue
        latest = max(candidates, key=lambda e: e.ts)
        older = [w for w in writes if w not in candidates
                 and _same(table, column, w.values[column], actual)]
        kind = "reverted-update" if older else "lost-update"
        why = (f"holds the value of the older write at line {older[-1].line}" if older
               else "holds a value no acknowledged write set")
        result.violations.append(Violation(
            kind, table, key, column, latest.values[column], actual,
            [e.brief() for e in candidates],
            f"{table} {key!r}.{column}: acknowledged {latest.op} at line {latest.line} is "
            f"missing; the column {why}"))


def _check_counter(table: str, key: Any, column: str, group: list[Entry],
                   row: dict[str, Any], result: LedgerCheck) -> None:
    sets = [e for e in group if e.ack and column in e.values]
    if not sets:
        result.unverifiable.append({"table": table, "key": key, "column": column,
                                    "reason": "the ledger holds no initial value"})
        return
    base = max(sets, key=lambda e: e.ts)
    after = overlap = unacked = 0
    used: list[Entry] = [base]
    for e in group:
        d = e.delta.get(column)
        if not d:
            continue
        if not e.ack:
            if e.ts >= base.sent:  # might have landed after the base value
                unacked += d
        elif e.sent >= base.ts:
            after += d
            used.append(e)
        elif e.ts > base.sent:  # concurrent with the base write: either order
            overlap += d
    result.counters_checked += 1
    expected = int(base.values[column]) + after
    actual = row[column]
    low = expected + min(0, overlap) + min(0, unacked)
    high = expected + max(0, overlap) + max(0, unacked)
    if actual is None or not low <= actual <= high:
        kind = "lost-decrement" if actual is not None and actual > high else "extra-decrement"
        result.violations.append(Violation(
            kind, table, key, column, expected, actual, [e.brief() for e in used[:20]],
            f"{table} {key!r}.{column}: {base.values[column]} (line {base.line}) with "
            f"{after:+d} acknowledged since should be {expected}"
            + (f" (between {low} and {high} counting concurrent or unacknowledged attempts)"
               if low != high else "") + f", found {actual}"))


class _SqliteFetcher:
    def __init__(self, path: Path) -> None:
        path = Path(path)
        if not path.is_file():
            raise UsageError(f"SQLite database {path} does not exist",
                             hint="pass the app's DATABASE_PATH to --sqlite")
        self.label = f"sqlite:{path}"
        try:
            self.con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        except sqlite3.Error as exc:
            raise UsageError(f"cannot open {path}: {exc}", hint="check the path") from exc
        self.con.row_factory = sqlite3.Row

    def rows(self, table: str, key_column: str, keys: list[Any]) -> Iterator[dict[str, Any]]:
        for i in range(0, len(keys), 500):
            chunk = keys[i:i + 500]
            marks = ",".join("?" * len(chunk))
            try:
                cur = self.con.execute(
                    f'SELECT * FROM "{table}" WHERE "{key_column}" IN ({marks})', chunk)
            except sqlite3.Error as exc:
                raise UsageError(f"cannot read {table} from {self.label}: {exc}",
                                 hint="check against the app's database") from exc
            for r in cur:
                yield dict(r)

    def close(self) -> None:
        self.con.close()


class _PgFetcher:
    def __init__(self, dsn: Any) -> None:
        from pgshift.dsn import Dsn, connect, resolve

        resolved = dsn if isinstance(dsn, Dsn) else resolve(str(dsn))
        self.label = f"postgres:{resolved.safe}"
        self.con = connect(resolved, autocommit=True, application_name="pgshift-ledger")

    def rows(self, table: str, key_column: str, keys: list[Any]) -> Iterator[dict[str, Any]]:
        import psycopg
        from psycopg import sql
        from psycopg.rows import dict_row

        # Typed arrays, so the primary key's index serves the lookup.
        ints = all(isinstance(k, int) and not isinstance(k, bool) for k in keys)
        query = sql.SQL("SELECT * FROM {} WHERE {} = ANY(%s::{}[])").format(
            sql.Identifier(table), sql.Identifier(key_column),
            sql.SQL("bigint" if ints else "text"))
        for i in range(0, len(keys), 5000):
            chunk = [k if ints else str(k) for k in keys[i:i + 5000]]
            try:
                with self.con.cursor(row_factory=dict_row) as cur:
                    cur.execute(query, (chunk,))
                    yield from cur.fetchall()
            except psycopg.Error as exc:
                raise UsageError(f"cannot read {table} from {self.label}: "
                                 f"{str(exc).strip().splitlines()[0]}",
                                 hint="check against the app's database") from exc

    def close(self) -> None:
        self.con.close()
