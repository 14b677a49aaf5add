"""The reference app's data layer: the critical paths, written once, over two engines.

:class:`Store` holds every query of the app (enqueue, claim, complete/fail, tool configs, rate
limits, users and sessions). It talks to a :class:`Database` -- one implementation per engine
(:mod:`pgshift.demo.db_sqlite`, :mod:`pgshift.demo.db_postgres`) -- through a tiny transaction
interface (:class:`Tx`). SQL is written with ``?`` placeholders and the SQL both engines share
(``RETURNING``, ``ON CONFLICT ... DO UPDATE``); the one statement that must differ, the atomic
claim, comes from the engine.

Contracts every :class:`Database` keeps:

* ``write()`` is one transaction that serialises with other writers where the engine needs it
  (SQLite: ``BEGIN IMMEDIATE``); it commits when the block ends, rolls back on any exception.
* integrity violations (unique, foreign key, check) surface as :class:`Conflict`; anything that
  means "the database is not doing its job" (unreachable, locked past the busy timeout, missing
  table) surfaces as :class:`DbUnavailable`; the app maps them to 409 and 503.
* every method is blocking and thread-safe: the app runs them in a thread pool.
"""

from __future__ import annotations

import contextlib
import json
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any, Generic, Protocol, TypeVar

__all__ = [
    "Conflict",
    "Database",
    "DbUnavailable",
    "Exhausted",
    "NotFound",
    "Pool",
    "Store",
    "Tx",
    "now_ms",
]

JOB_STATUSES = ("pending", "processing", "completed", "failed", "cancelled")
SESSION_TTL_MS = 7 * 86_400_000


class AppDbError(Exception):
    """Base of the data layer's errors; ``message`` is safe to show to a client."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class DbUnavailable(AppDbError):
    """The database cannot serve the request (unreachable, locked, broken): HTTP 503."""


class NotFound(AppDbError):
    """The addressed row does not exist: HTTP 404."""


class Conflict(AppDbError):
    """An integrity rule or a state rule refused the write: HTTP 409."""


class Exhausted(AppDbError):
    """A rate limit has too few tokens left: HTTP 429. ``row`` is the limit's current state."""

    def __init__(self, message: str, row: dict[str, Any]) -> None:
        super().__init__(message)
        self.row = row


class Tx(Protocol):
    """One open transaction (or autocommit session for reads)."""

    def one(self, sql: str, params: tuple[Any, ...] = ()) -> dict[str, Any] | None:
        """First row of ``sql`` as a dict, or None."""
        ...

    def all(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        """Every row of ``sql`` as dicts."""
        ...


class Database(Protocol):
    """One engine behind the :class:`Store` (see the module docstring for the contracts)."""

    engine: str
    #: The atomic claim: one statement taking (now, now, now) and returning the claimed row.
    claim_sql: str

    def read(self) -> AbstractContextManager[Tx]: ...

    def write(self) -> AbstractContextManager[Tx]: ...

    def ping(self) -> None:
        """Raise :class:`DbUnavailable` unless a trivial query succeeds."""
        ...

    def close(self) -> None: ...


C = TypeVar("C")


class Pool(Generic[C]):
    """A small thread-safe pool of connections, opened lazily, at most ``size`` at once.

    ``put(con, broken=True)`` closes a connection instead of reusing it (after a connection
    error), so the next request reconnects: a restarted database heals without an app restart.
    """

    def __init__(self, connect: Callable[[], C], close: Callable[[C], None], size: int,
                 *, wait_s: float = 10.0) -> None:
        if size < 1:
            raise ValueError("pool size must be >= 1")
        self._connect, self._close, self._size, self._wait = connect, close, size, wait_s
        self._idle: queue.LifoQueue[C] = queue.LifoQueue()
        self._lock = threading.Lock()
        self._open = 0
        self._closed = False

    def get(self) -> C:
        if self._closed:
            raise DbUnavailable("the database pool is closed")
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            grow = self._open < self._size
            if grow:
                self._open += 1
        if grow:
            try:
                return self._connect()
            except BaseException:
                with self._lock:
                    self._open -= 1
                raise
        try:
            return self._idle.get(timeout=self._wait)
        except queue.Empty:
            raise DbUnavailable(f"no database connection free within {self._wait:.0f}s") from None

    def put(self, con: C, *, broken: bool = False) -> None:
        if broken or self._closed:
            with self._lock:
                self._open -= 1
            self._safe_close(con)
        else:
            self._idle.put(con)

    def discard_idle(self) -> None:
        """Close every idle connection (after an error suggesting they all broke at once)."""
        while True:
            try:
                con = self._idle.get_nowait()
            except queue.Empty:
                return
            with self._lock:
                self._open -= 1
            self._safe_close(con)

    def close(self) -> None:
        self._closed = True
        self.discard_idle()

    def _safe_close(self, con: C) -> None:
        # Closing a broken connection may fail; it is gone either way.
        with contextlib.suppress(Exception):
            self._close(con)


def now_ms() -> int:
    """Epoch milliseconds: the app's timestamp format (like the seeded data)."""
    return time.time_ns() // 1_000_000


_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


def _json(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:  # seeded or foreign rows may hold non-JSON text: show it as it is
        return text


def _job(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    out["payload"] = _json(out.get("payload"))
    out["result"] = _json(out.get("result"))
    return out


def _tool(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    out["config"] = _json(out.get("config"))
    return out


_JOB_INSERT = (
    "INSERT INTO jobs (id, type, status, priority, payload, attempts, max_attempts, user_id, "
    "scheduled_at, created_at, updated_at) VALUES (?, ?, 'pending', ?, ?, 0, ?, ?, ?, ?, ?) "
    "RETURNING *"
)
_HISTORY_INSERT = (
    "INSERT INTO job_history (job_id, status, message, created_at) VALUES (?, ?, ?, ?) RETURNING id"
)
_TOOL_UPSERT = (
    "INSERT INTO tool_configs (tool_name, enabled, config, refresh_interval, notifications, "
    "updated_at) VALUES (?, COALESCE(?, 1), ?, COALESCE(?, 300000), COALESCE(?, 1), ?) "
    "ON CONFLICT (tool_name) DO UPDATE SET "
    "enabled = COALESCE(?, tool_configs.enabled), config = excluded.config, "
    "refresh_interval = COALESCE(?, tool_configs.refresh_interval), "
    "notifications = COALESCE(?, tool_configs.notifications), updated_at = excluded.updated_at "
    "RETURNING *"
)
_LIMIT_UPSERT = (
    "INSERT INTO rate_limits (key, remaining, limit_total, reset_at, updated_at) "
    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET remaining = excluded.remaining, "
    "limit_total = excluded.limit_total, reset_at = excluded.reset_at, "
    "updated_at = excluded.updated_at RETURNING *"
)


class Store:
    """The app's critical paths; every method is one short transaction on ``db``."""

    def __init__(self, db: Database) -> None:
        self.db = db

    @property
    def engine(self) -> str:
        return self.db.engine

    def ping(self) -> None:
        self.db.ping()

    # ---------------------------------------------------------------- jobs

    def enqueue_job(self, job_type: str, payload: Any, *, priority: int = 0,
                    user_id: int | None = None, max_attempts: int = 3,
                    delay_ms: int = 0) -> dict[str, Any]:
        """Insert a pending job (text UUID id) and its 'pending' history row."""
        now = now_ms()
        job_id = str(uuid.uuid4())
        with self.db.write() as tx:
            if user_id is not None and tx.one("SELECT 1 AS x FROM users WHERE id = ?",
                                              (user_id,)) is None:
                raise NotFound(f"user {user_id} does not exist")
            row = tx.one(_JOB_INSERT, (job_id, job_type, priority, _dumps(payload), max_attempts,
                                       user_id, now + max(0, delay_ms), now, now))
            hist = tx.one(_HISTORY_INSERT, (job_id, "pending", "enqueued", now))
        assert row is not None and hist is not None
        return {**_job(row), "history_id": hist["id"]}

    def claim_job(self, worker: str | None = None) -> dict[str, Any] | None:
        """Atomically move the next due pending job to 'processing'; None when none is due.

        Highest priority first, then the earliest scheduled. Never returns one job twice.
        """
        now = now_ms()
        with self.db.write() as tx:
            row = tx.one(self.db.claim_sql, (now, now, now))
            if row is None:
                return None
            hist = tx.one(_HISTORY_INSERT, (row["id"], "processing",
                                            f"claimed by {worker or 'worker'}", now))
        assert hist is not None
        return {**_job(row), "history_id": hist["id"]}

    def finish_job(self, job_id: str, *, ok: bool, result: Any = None,
                   message: str | None = None) -> dict[str, Any]:
        """Complete (``ok``) or fail a processing job, with its history row."""
        now = now_ms()
        status = "completed" if ok else "failed"
        with self.db.write() as tx:
            row = tx.one(
                "UPDATE jobs SET status = ?, result = ?, completed_at = ?, updated_at = ? "
                "WHERE id = ? AND status = 'processing' RETURNING *",
                (status, None if result is None else _dumps(result), now, now, job_id))
            if row is None:
                current = tx.one("SELECT status FROM jobs WHERE id = ?", (job_id,))
                if current is None:
                    raise NotFound(f"job {job_id} does not exist")
                raise Conflict(f"job {job_id} is {current['status']}, not processing")
            hist = tx.one(_HISTORY_INSERT, (job_id, status, message or status, now))
        assert hist is not None
        return {**_job(row), "history_id": hist["id"]}

    def list_jobs(self, *, status: str | None = None, job_type: str | None = None,
                  user_id: int | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Newest-scheduled first, filtered by any of status, type and user."""
        where, params = [], []
        for column, value in (("status", status), ("type", job_type), ("user_id", user_id)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        sql = "SELECT * FROM jobs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY scheduled_at DESC LIMIT ?"
        with self.db.read() as tx:
            rows = tx.all(sql, (*params, limit))
        return [_job(r) for r in rows]

    def get_job(self, job_id: str) -> dict[str, Any]:
        """One job with its history, oldest first."""
        with self.db.read() as tx:
            row = tx.one("SELECT * FROM jobs WHERE id = ?", (job_id,))
            if row is None:
                raise NotFound(f"job {job_id} does not exist")
            history = tx.all("SELECT id, status, message, created_at FROM job_history "
                             "WHERE job_id = ? ORDER BY created_at, id", (job_id,))
        return {**_job(row), "history": history}

    # ---------------------------------------------------------------- tool configs

    def get_tool(self, name: str) -> dict[str, Any]:
        with self.db.read() as tx:
            row = tx.one("SELECT * FROM tool_configs WHERE tool_name = ?", (name,))
        if row is None:
            raise NotFound(f"tool {name} has no configuration")
        return _tool(row)

    def put_tool(self, name: str, config: Any, *, enabled: bool | None = None,
                 refresh_interval: int | None = None,
                 notifications: bool | None = None) -> dict[str, Any]:
        """Create or replace a tool's config; omitted settings keep their value (or default)."""
        en = None if enabled is None else int(enabled)
        no = None if notifications is None else int(notifications)
        with self.db.write() as tx:
            row = tx.one(_TOOL_UPSERT, (name, en, _dumps(config), refresh_interval, no, now_ms(),
                                        en, refresh_interval, no))
        assert row is not None
        return _tool(row)

    def toggle_tool(self, name: str) -> dict[str, Any]:
        with self.db.write() as tx:
            row = tx.one("UPDATE tool_configs SET enabled = 1 - enabled, updated_at = ? "
                         "WHERE tool_name = ? RETURNING *", (now_ms(), name))
        if row is None:
            raise NotFound(f"tool {name} has no configuration")
        return _tool(row)

    # ---------------------------------------------------------------- rate limits

    def set_rate_limit(self, key: str, remaining: int, limit_total: int | None = None,
                       reset_at: int | None = None) -> dict[str, Any]:
        now = now_ms()
        total = remaining if limit_total is None else limit_total
        with self.db.write() as tx:
            row = tx.one(_LIMIT_UPSERT, (key, remaining, total,
                                         now + 3_600_000 if reset_at is None else reset_at, now))
        assert row is not None
        return row

    def take_rate_limit(self, key: str, cost: int = 1) -> dict[str, Any]:
        """Check-and-decrement in one statement; :class:`Exhausted` when too few remain."""
        with self.db.write() as tx:
            row = tx.one("UPDATE rate_limits SET remaining = remaining - ?, updated_at = ? "
                         "WHERE key = ? AND remaining >= ? RETURNING *",
                         (cost, now_ms(), key, cost))
            if row is None:
                current = tx.one("SELECT * FROM rate_limits WHERE key = ?", (key,))
                if current is None:
                    raise NotFound(f"rate limit {key} does not exist")
                raise Exhausted(f"rate limit {key} has {current['remaining']} left, "
                                f"{cost} asked", current)
        return {**row, "decremented": cost}

    def read_rate_limit(self, key: str) -> dict[str, Any]:
        """Read a limit -- and consume one token, as the app's dashboard poll does.

        A write inside a GET, on purpose: the cutover must cope with apps that do this.
        ``decremented`` says whether a token was taken (0 when none was left).
        """
        with self.db.write() as tx:
            row = tx.one("UPDATE rate_limits SET remaining = remaining - 1, updated_at = ? "
                         "WHERE key = ? AND remaining > 0 RETURNING *", (now_ms(), key))
            if row is not None:
                return {**row, "decremented": 1}
            current = tx.one("SELECT * FROM rate_limits WHERE key = ?", (key,))
        if current is None:
            raise NotFound(f"rate limit {key} does not exist")
        return {**current, "decremented": 0}

    # ---------------------------------------------------------------- users

    def create_user(self, email: str, name: str | None = None,
                    is_admin: bool = False) -> dict[str, Any]:
        now = now_ms()
        with self.db.write() as tx:
            if tx.one("SELECT 1 AS x FROM users WHERE email = ?", (email,)) is not None:
                raise Conflict(f"a user with email {email} exists")
            row = tx.one("INSERT INTO users (email, name, is_admin, created_at, updated_at) "
                         "VALUES (?, ?, ?, ?, ?) RETURNING *",
                         (email, name, int(is_admin), now, now))
        assert row is not None
        return row

    def create_session(self, user_id: int, *, user_agent: str | None = None,
                       ip: str | None = None, ttl_ms: int = SESSION_TTL_MS) -> dict[str, Any]:
        now = now_ms()
        with self.db.write() as tx:
            if tx.one("SELECT 1 AS x FROM users WHERE id = ?", (user_id,)) is None:
                raise NotFound(f"user {user_id} does not exist")
            row = tx.one("INSERT INTO user_sessions (id, user_id, user_agent, ip, created_at, "
                         "expires_at) VALUES (?, ?, ?, ?, ?, ?) RETURNING *",
                         (str(uuid.uuid4()), user_id, user_agent, ip, now, now + ttl_ms))
        assert row is not None
        return row

    def get_user(self, user_id: int) -> dict[str, Any]:
        """A user with its latest sessions, its OAuth connections (never the tokens) and jobs."""
        with self.db.read() as tx:
            user = tx.one("SELECT * FROM users WHERE id = ?", (user_id,))
            if user is None:
                raise NotFound(f"user {user_id} does not exist")
            sessions = tx.all("SELECT id, user_agent, ip, created_at, expires_at FROM "
                              "user_sessions WHERE user_id = ? ORDER BY created_at DESC LIMIT 20",
                              (user_id,))
            tokens = tx.all("SELECT provider, scope, expires_at, updated_at FROM oauth_tokens "
                            "WHERE user_id = ? ORDER BY provider", (user_id,))
            jobs = tx.all("SELECT status, COUNT(*) AS n FROM jobs WHERE user_id = ? "
                          "GROUP BY status ORDER BY status", (user_id,))
        return {**user, "sessions": sessions, "oauth": tokens,
                "jobs": {r["status"]: r["n"] for r in jobs}}


def iter_chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    """``items`` in lists of at most ``size`` (for IN lists under SQLite's parameter limit)."""
    for i in range(0, len(items), size):
        yield items[i:i + size]
