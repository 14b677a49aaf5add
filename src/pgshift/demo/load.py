"""The load generator: many users at a target request rate, with the write ledger.

``run_load(LoadOptions(url=..., rps=..., duration=...))`` sends requests on an open-loop
schedule -- request *i* is due at ``start + i / rps`` whether or not earlier ones have
answered, so a slow server meets a growing queue instead of a politely slowing client -- and
measures each latency from the moment the request was *due* (no coordinated omission). When
more than ``max_inflight`` requests are outstanding, due requests are counted as ``dropped``
rather than silently slowing the rate.

Each virtual user has its own ``X-User-Id`` header (the cohort a sticky router keys on) and its
own cookie jar, and walks the reference app's critical paths with a realistic mix (~70 % reads,
one of which -- ``GET /rate-limits/{key}`` -- writes). Every write is recorded in the ledger
(:mod:`pgshift.demo.ledger`) with the values the app acknowledged.

Above ~1,500 requests/s the rate is split across worker processes (one per core); they append
to one ledger and stream per-second figures to the parent, which prints them.

Why not httpx for the requests: on the project's 2-core machine ``httpx.AsyncClient`` made
150-340 requests/s per process against nginx serving a static response (fewer with more
concurrent requests), far below the 3,000 requests/s this generator must sustain. The tiny
HTTP/1.1 client below writes request bytes itself and parses answers with ``httptools``
(uvicorn's parser, already a dependency): plain ``http://``, keep-alive, ``Content-Length`` or
chunked bodies, ``Set-Cookie``, per-request timeouts. httpx still performs the setup requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import queue as queue_mod
import random
import signal
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httptools

from pgshift.demo.ledger import Entry, LedgerWriter
from pgshift.errors import UsageError

__all__ = ["HttpClient", "LoadOptions", "LoadSummary", "Window", "run_load"]

# The seeded tool names (pgshift.demo.seed) and job types the virtual users work with.
TOOLS = ("github", "gitlab", "jira", "confluence", "slack", "linear", "notion", "sentry",
         "datadog", "pagerduty", "opsgenie", "circleci")
JOB_TYPES = ("sync_github", "refresh_jira", "send_digest", "poll_sentry", "sync_linear",
             "collect_datadog_metrics", "rebuild_search_index")
# One process of this generator sustains about this many requests/s on one core of the
# benchmark machine (see docs/reference-app.md); above it the rate is split across processes.
PER_PROCESS_RPS = 1500
# How many failed requests a run describes in full (the counts cover all of them).
FAILURES_KEPT = 20

# --------------------------------------------------------------------------- HTTP client


class Response:
    __slots__ = ("body", "cookies", "served_by", "status")

    def __init__(self, status: int, body: bytes, cookies: list[bytes],
                 served_by: str | None) -> None:
        self.status = status
        self.body = body
        self.cookies = cookies
        self.served_by = served_by  # the app's x-pgshift-served-by (blue/green), if any


class _Conn(asyncio.Protocol):
    """One keep-alive connection; at most one request in flight."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[Response] | None = None
        self.body: list[bytes] = []
        self.cookies: list[bytes] = []
        self.served_by: str | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.abort(ConnectionError(f"bad HTTP response: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(ConnectionError(f"connection lost: {exc or 'closed by the server'}"))

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) == 10 and name.lower() == b"set-cookie":
            self.cookies.append(value)
        elif len(name) == 19 and name.lower() == b"x-pgshift-served-by":
            self.served_by = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        response = Response(self.parser.get_status_code(), b"".join(self.body), self.cookies,
                            self.served_by)
        keep = self.parser.should_keep_alive()
        self.body, self.cookies, self.served_by = [], [], None
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(response)
        if not keep:
            self.close()

    def send(self, data: bytes) -> asyncio.Future[Response]:
        assert self.transport is not None
        fut: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self.waiter = fut
        self.transport.write(data)
        return fut

    def _fail(self, exc: Exception) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def abort(self, exc: Exception) -> None:
        self._fail(exc)
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


def parse_base_url(url: str) -> tuple[str, int, str]:
    """``http://host:port/prefix`` -> (host, port, prefix); UsageError for anything else."""
    parts = urlsplit(url.strip())
    if parts.scheme != "http" or not parts.hostname:
        raise UsageError(f"the load generator needs a plain http:// URL, not {url!r}",
                         hint="pgshift load run --url http://127.0.0.1:8000 --rps 100 "
                              "--duration 30")
    try:
        port = parts.port or 80
    except ValueError:
        raise UsageError(f"bad port in {url!r}", hint="--url http://127.0.0.1:8000") from None
    return parts.hostname, port, parts.path.rstrip("/")


class HttpClient:
    """A pool of at most ``max_connections`` keep-alive connections to one server."""

    def __init__(self, url: str, *, max_connections: int = 64, timeout: float = 10.0) -> None:
        self.host, self.port, self.prefix = parse_base_url(url)
        self.max_connections = max_connections
        self.timeout = timeout
        host = self.host if self.port == 80 else f"{self.host}:{self.port}"
        self._fixed = f"Host: {host}\r\nUser-Agent: pgshift-load/1\r\n".encode()
        self._idle: list[_Conn] = []
        self._all: set[_Conn] = set()
        self._waiters: deque[asyncio.Future[_Conn | None]] = deque()

    def encode(self, method: str, path: str, headers: dict[str, str] | None = None,
               body: bytes | None = None) -> bytes:
        """The request's bytes (header values must be latin-1)."""
        head = [f"{method} {self.prefix}{path} HTTP/1.1\r\n".encode(), self._fixed]
        if headers:
            head.append("".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode("latin-1"))
        if body is not None:
            head.append(b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                        % len(body))
            head.append(body)
        else:
            head.append(b"\r\n")
        return b"".join(head)

    async def request(self, raw: bytes) -> Response:
        """Send one encoded request; raises ConnectionError, OSError or TimeoutError."""
        loop = asyncio.get_running_loop()
        conn = await self._acquire(loop)
        fut = conn.send(raw)
        timer = loop.call_later(self.timeout, conn.abort,
                                TimeoutError(f"no answer within {self.timeout:g}s"))
        try:
            return await fut
        finally:
            timer.cancel()
            self._release(conn)

    async def _acquire(self, loop: asyncio.AbstractEventLoop) -> _Conn:
        while True:
            while self._idle:
                conn = self._idle.pop()
                if not conn.closed:
                    return conn
                self._all.discard(conn)
            if len(self._all) < self.max_connections:
                placeholder = _Conn()  # reserves the slot while connecting
                self._all.add(placeholder)
                try:
                    _, proto = await loop.create_connection(_Conn, self.host, self.port)
                finally:
                    self._all.discard(placeholder)
                self._all.add(proto)
                return proto
            waiter: asyncio.Future[_Conn | None] = loop.create_future()
            self._waiters.append(waiter)
            got = await waiter
            if got is not None and not got.closed:
                return got

    def _release(self, conn: _Conn) -> None:
        handoff: _Conn | None = conn
        if conn.closed or conn.waiter is not None:
            conn.close()
            self._all.discard(conn)
            handoff = None
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(handoff)
                return
        if handoff is not None:
            self._idle.append(handoff)

    async def aclose(self) -> None:
        for conn in list(self._all):
            conn.close()
        self._all.clear()
        self._idle.clear()
        await asyncio.sleep(0)  # let the transports run their close callbacks

    @property
    def connections(self) -> int:
        return len(self._all)


def cookie_pairs(set_cookies: list[bytes]) -> list[tuple[str, str | None]]:
    """``(name, value)`` of each ``Set-Cookie``; value None when the cookie is deleted."""
    out: list[tuple[str, str | None]] = []
    for raw in set_cookies:
        first, _, attrs = raw.decode("latin-1").partition(";")
        name, sep, value = first.partition("=")
        if not sep or not name.strip():
            continue
        low = attrs.lower().replace(" ", "")
        deleted = "max-age=0" in low or "max-age=-" in low or not value.strip()
        out.append((name.strip(), None if deleted else value.strip()))
    return out


# --------------------------------------------------------------------------- figures

_H_BASE = 1e-4  # seconds: the first bucket's upper bound
_H_GROWTH = 1.05  # each bucket 5 % wider: percentiles within 5 %
_H_N = 300  # up to ~0.2 ms * 1.05^300 > 200 s
_H_LOG = math.log(_H_GROWTH)


def _bucket(seconds: float) -> int:
    if seconds <= _H_BASE:
        return 0
    return min(_H_N - 1, int(math.log(seconds / _H_BASE) / _H_LOG) + 1)


@dataclass
class Window:
    """Figures of one period (a second, or the whole run)."""

    sent: int = 0
    done: int = 0
    errors: int = 0  # 5xx answers and transport failures
    transport_errors: int = 0
    dropped: int = 0  # due but not sent: too many in flight
    writes_acked: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    hist: list[int] = field(default_factory=lambda: [0] * _H_N)
    seconds: float = 0.0
    # The first few failed requests, whole enough to find the cause: when, what, which
    # answer (or transport error), which side served it and the start of the body.
    failures: list[dict[str, Any]] = field(default_factory=list)

    def observe(self, status: int | None, latency: float) -> None:
        self.done += 1
        self.hist[_bucket(latency)] += 1
        label = str(status) if status is not None else "transport"
        self.statuses[label] = self.statuses.get(label, 0) + 1
        if status is None:
            self.transport_errors += 1
            self.errors += 1
        elif status >= 500:
            self.errors += 1

    def note_failure(self, failure: dict[str, Any]) -> None:
        """Keep ``failure`` if fewer than :data:`FAILURES_KEPT` are kept already."""
        if len(self.failures) < FAILURES_KEPT:
            self.failures.append(failure)

    def merge(self, other: Window) -> None:
        for failure in other.failures:
            self.note_failure(failure)
        self.sent += other.sent
        self.done += other.done
        self.errors += other.errors
        self.transport_errors += other.transport_errors
        self.dropped += other.dropped
        self.writes_acked += other.writes_acked
        for k, v in other.statuses.items():
            self.statuses[k] = self.statuses.get(k, 0) + v
        self.hist = [a + b for a, b in zip(self.hist, other.hist, strict=True)]

    def percentile_ms(self, q: float) -> float:
        total = sum(self.hist)
        if not total:
            return 0.0
        target, seen = q * total, 0
        for i, n in enumerate(self.hist):
            seen += n
            if seen >= target and n:
                return round(_H_BASE * _H_GROWTH ** i * 1000, 3)
        return round(_H_BASE * _H_GROWTH ** (_H_N - 1) * 1000, 3)

    def to_msg(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_msg(cls, msg: dict[str, Any]) -> Window:
        return cls(**msg)


@dataclass
class LoadOptions:
    """What ``pgshift load run`` is told."""

    url: str
    rps: float
    duration: float | None = 30.0  # None: until stopped
    users: int = 50
    ledger: Path | None = None
    workers: int = 0  # 0: as many as the rate needs, at most one per core
    connections: int = 64  # per worker process
    timeout: float = 10.0
    max_inflight: int = 2000  # per worker process
    seed: int | None = None
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    rate_limit_keys: int = 8

    def validate(self) -> None:
        parse_base_url(self.url)
        if not self.rps > 0:
            raise UsageError("--rps must be positive", hint="--rps 100")
        if self.duration is not None and not self.duration > 0:
            raise UsageError("--duration must be positive", hint="--duration 30")
        if self.users < 1:
            raise UsageError("--users must be at least 1", hint="--users 50")
        if self.workers < 0 or self.connections < 1 or self.timeout <= 0:
            raise UsageError("workers >= 0, connections >= 1 and timeout > 0, please",
                             hint="--workers 0 picks a count from the rate")

    def worker_count(self) -> int:
        if self.workers:
            return max(1, min(self.workers, self.users))
        need = math.ceil(self.rps / PER_PROCESS_RPS)
        return max(1, min(need, os.cpu_count() or 1, self.users))


@dataclass
class LoadSummary:
    """The whole run's figures (``--json`` prints :meth:`to_dict`)."""

    url: str
    target_rps: float
    seconds: float
    workers: int
    users: int
    total: Window
    ledger: str | None
    run_id: str

    @property
    def achieved_rps(self) -> float:
        return self.total.done / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict[str, Any]:
        t = self.total
        return {
            "url": self.url, "run_id": self.run_id, "target_rps": self.target_rps,
            "achieved_rps": round(self.achieved_rps, 1), "seconds": round(self.seconds, 3),
            "workers": self.workers, "users": self.users, "requests": t.done, "sent": t.sent,
            "errors": t.errors, "error_rate": round(t.errors / t.done, 5) if t.done else 0.0,
            "transport_errors": t.transport_errors, "dropped": t.dropped,
            "statuses": dict(sorted(t.statuses.items())),
            "latency_ms": {"p50": t.percentile_ms(0.5), "p90": t.percentile_ms(0.9),
                           "p99": t.percentile_ms(0.99), "max": t.percentile_ms(1.0)},
            "writes_acknowledged": t.writes_acked, "ledger": self.ledger,
            "failures": list(t.failures),
        }


# --------------------------------------------------------------------------- the workload


@dataclass
class _User:
    name: str
    cookies: dict[str, str] = field(default_factory=dict)
    user_id: int | None = None
    creating: bool = False
    claimed: list[str] = field(default_factory=list)
    jobs: deque[str] = field(default_factory=lambda: deque(maxlen=16))


# A request to make: method, path, JSON body (or None), and what to do with a 2xx answer.
_Plan = tuple[str, str, Any, Callable[[dict[str, Any], float, float, int], None] | None,
              tuple[str, str, Any, dict[str, int]] | None]

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


class _Workload:
    """One process's share of the users and of the rate."""

    def __init__(self, opts: LoadOptions, index: int, n_workers: int,
                 ledger: LedgerWriter | None) -> None:
        self.opts = opts
        self.ledger = ledger
        self.rng = random.Random(None if opts.seed is None else opts.seed * 1000 + index)
        self.users = [_User(f"load-{opts.run_id}-{u}")
                      for u in range(index, opts.users, n_workers)]
        self.limit_keys = rate_limit_keys(opts)
        self.recent_jobs: deque[str] = deque(maxlen=256)
        self.window = Window()
        self.total = Window()
        self.inflight = 0
        self.served_by: str | None = None  # of the answer being handled
        self.client = HttpClient(opts.url, max_connections=opts.connections,
                                 timeout=opts.timeout)
        self._actions: list[Callable[[_User], _Plan | None]] = []
        for fn, weight in ((self._list_jobs, 22), (self._get_job, 14), (self._get_user, 12),
                           (self._get_tool, 12), (self._read_limit, 8), (self._health, 2),
                           (self._enqueue, 9), (self._claim, 7), (self._finish, 6),
                           (self._put_tool, 2), (self._toggle_tool, 1), (self._take_limit, 4),
                           (self._new_session, 1)):
            self._actions.extend([fn] * weight)

    # -- ledger

    def _record(self, op: str, table: str, key: Any, sent: float, ts: float, status: int,
                values: dict[str, Any] | None = None, delta: dict[str, int] | None = None,
                response: Any = None, ack: bool = True) -> None:
        if ack:
            self.window.writes_acked += 1
        if self.ledger is not None:
            self.ledger.record(Entry(op=op, table=table, key=key, sent=sent, ts=ts,
                                     values=values or {}, delta=delta or {}, ack=ack,
                                     status=status, response=response,
                                     served_by=self.served_by))

    def _history(self, data: dict[str, Any], sent: float, ts: float, status: int) -> None:
        hid = data.get("history_id")
        if isinstance(hid, int):
            self._record("job_history.insert", "job_history", hid, sent, ts, status,
                         {"job_id": data.get("id"), "status": data.get("status")})

    # -- actions: each returns a plan, or None to fall back to a list

    def _list_jobs(self, u: _User) -> _Plan:
        status = self.rng.choice(("pending", "pending", "processing", "completed", "failed"))

        def seen(data: dict[str, Any], sent: float, ts: float, code: int) -> None:
            jobs = data.get("jobs")
            if isinstance(jobs, list):
                self.recent_jobs.extend(j["id"] for j in jobs[:5]
                                        if isinstance(j, dict) and isinstance(j.get("id"), str))

        parse = seen if len(self.recent_jobs) < 32 or self.rng.random() < 0.05 else None
        return ("GET", f"/jobs?status={status}&limit=20", None, parse, None)

    def _get_job(self, u: _User) -> _Plan | None:
        pool = u.jobs or self.recent_jobs
        if not pool:
            return None
        return ("GET", f"/jobs/{self.rng.choice(pool)}", None, None, None)

    def _get_user(self, u: _User) -> _Plan | None:
        return None if not u.user_id else ("GET", f"/users/{u.user_id}", None, None, None)

    def _get_tool(self, u: _User) -> _Plan:
        return ("GET", f"/tools/{self.rng.choice(TOOLS)}", None, None, None)

    def _health(self, u: _User) -> _Plan:
        return ("GET", "/health", None, None, None)

    def _read_limit(self, u: _User) -> _Plan:
        key = self.rng.choice(self.limit_keys)

        def ack(data: dict[str, Any], sent: float, ts: float, code: int) -> None:
            if data.get("decremented"):
                self._record("rate_limit.read", "rate_limits", key, sent, ts, code,
                             delta={"remaining": -int(data["decremented"])}, response=data)

        return ("GET", f"/rate-limits/{key}", None, ack, ("rate_limit.read", "rate_limits", key,
                                                          {"remaining": -1}))

    def _take_limit(self, u: _User) -> _Plan:
        key = self.rng.choice(self.limit_keys)
        cost = self.rng.choice((1, 1, 1, 2, 5))

        def ack(data: dict[str, Any], sent: float, ts: float, code: int) -> None:
            self._record("rate_limit.take", "rate_limits", key, sent, ts, code,
                         delta={"remaining": -cost}, response=data)

        return ("POST", f"/rate-limits/{key}/take", {"cost": cost}, ack,
                ("rate_limit.take", "rate_limits", key, {"remaining": -cost}))

    def _create_user(self, u: _User) -> _Plan:
        u.creating = True
        email = f"{u.name}@load.pgshift.test"
        name = f"Load user {u.name.rsplit('-', 1)[-1]} ✓"

        def ack(data: dict[str, Any], sent: float, ts: float, code: int) -> None:
            uid = data.get("id")
            # 0: the server acknowledged without an id (not the reference app): carry on.
            u.user_id = uid if isinstance(uid, int) and not isinstance(uid, bool) else 0
            if u.user_id:
                self._record("user.create", "users", uid, sent, ts, code,
                             {"email": email, "name": name}, response=data)

        return ("POST", "/users", {"email": email, "name": name}, ack, None)

    def _new_session(self, u: _User) -> _Plan | None:
        if not u.user_id:
            return None
        uid = u.user_id

        def ack(data: dict[str, Any], sent: float, ts: float, code: int) -> None:
            sid = data.get("id")
            if isinstance(sid, str):
                self._record("session.create", "user_sessions", sid, sent, ts, code,
                             {"user_id": uid}, response=data)

        return ("POST", f"/users/{uid}/sessions", {}, ack, None)

    def _enqueue(self, u: _User) -> _Plan:
        r = self.rng
        job_type = r.choice(JOB_TYPES)
        payload = {"target": f"{r.choice(('acme', 'globex', 'hooli'))}/{r.randrange(1000)}",
                   "opts": {"full": r.random() < 0.1, "limit": r.choice((50, 100, 200))},
                   "by": u.name, "note": r.choice(("", "nightly", "café ☕", "日本"))}
        priority = 0 if r.random() < 0.7 else r.randrange(1, 11)
        body: dict[str, Any] = {"type": job_type, "payload": payload, "priority": priority}
        if u.user_id:
            body["user_id"] = u.user_id

        def ack(data: dict[str, Any], sent: float, ts: float, code: int) -> None:
            job_id = data.get("id")
            if isinstance(job_id, str):
                u.jobs.append(job_id)
                values = {"type": job_type, "payload": payload, "priority": priority,
                          "status": "pending", "user_id": body.get("user_id")}
                self._record("job.enqueue", "jobs", job_id, sent, ts, code, values,
                             response=data)
                self._history(data, sent, ts, code)

        return ("POST", "/jobs", body, ack, None)

    def _claim(self, u: _User) -> _Plan:
        def ack(data: dict[str, Any], sent: float, ts: float, code: int) -> None:
            job_id = data.get("id")
            if code == 200 and isinstance(job_id, str):
                u.claimed.append(job_id)
                self._record("job.claim", "jobs", job_id, sent, ts, code,
                             {"status": "processing", "attempts": data.get("attempts"),
                              "started_at": data.get("started_at")}, response=data)
                self._history(data, sent, ts, code)

        return ("POST", "/jobs/claim", {"worker": u.name}, ack, None)

    def _finish(self, u: _User) -> _Plan | None:
        if not u.claimed:
            return self._claim(u)
        job_id = u.claimed.pop(0)
        ok = self.rng.random() < 0.85
        body = ({"result": {"ok": True, "items": self.rng.randrange(500)}} if ok
                else {"error": "upstream returned 502", "message": "failed: HTTP 502"})

        def ack(data: dict[str, Any], sent: float, ts: float, code: int) -> None:
            if data.get("id") == job_id:
                self._record("job.complete" if ok else "job.fail", "jobs", job_id, sent, ts,
                             code, {"status": data.get("status"), "result": data.get("result"),
                                    "completed_at": data.get("completed_at")}, response=data)
                self._history(data, sent, ts, code)

        return ("POST", f"/jobs/{job_id}/{'complete' if ok else 'fail'}", body, ack, None)

    def _put_tool(self, u: _User) -> _Plan:
        tool = self.rng.choice(TOOLS)
        config = {"baseUrl": f"https://{tool}.example.com/api", "by": u.name,
                  "rev": self.rng.randrange(10**9), "labels": ["team:core", "p1"]}
        body: dict[str, Any] = {"config": config}
        if self.rng.random() < 0.3:
            body["refresh_interval"] = self.rng.choice((60_000, 300_000, 900_000))

        def ack(data: dict[str, Any], sent: float, ts: float, code: int) -> None:
            if data.get("tool_name") == tool:
                self._record("tool.put", "tool_configs", tool, sent, ts, code, dict(body),
                             response=data)

        return ("PUT", f"/tools/{tool}", body, ack, None)

    def _toggle_tool(self, u: _User) -> _Plan:
        tool = self.rng.choice(TOOLS)

        def ack(data: dict[str, Any], sent: float, ts: float, code: int) -> None:
            if data.get("tool_name") == tool and isinstance(data.get("enabled"), int):
                self._record("tool.toggle", "tool_configs", tool, sent, ts, code,
                             {"enabled": data["enabled"]}, response=data)

        return ("POST", f"/tools/{tool}/toggle", None, ack, None)

    # -- driving

    def _plan(self, u: _User) -> _Plan:
        if u.user_id is None and not u.creating:
            return self._create_user(u)
        plan = self.rng.choice(self._actions)(u)
        return plan if plan is not None else self._list_jobs(u)

    async def _one(self, scheduled: float, loop: asyncio.AbstractEventLoop) -> None:
        u = self.rng.choice(self.users)
        method, path, body, on_ack, unacked = self._plan(u)
        headers = {"X-User-Id": u.name}
        if u.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in u.cookies.items())
        raw = self.client.encode(method, path, headers,
                                 None if body is None else _dumps(body).encode())
        self.inflight += 1
        self.window.sent += 1
        sent = time.time()
        status: int | None = None
        error = ""
        try:
            response = await self.client.request(raw)
            status = response.status
        except Exception as exc:  # refused, reset, timed out, bad answer: a transport error
            response = None
            error = f"{type(exc).__name__}: {exc}"
        finally:
            self.inflight -= 1
            if method == "POST" and path == "/users" and u.user_id is None:
                u.creating = False
        ts = time.time()
        self.window.observe(status, loop.time() - scheduled)
        self.served_by = None if response is None else response.served_by
        if response is None or status is None or status >= 500:
            self.window.note_failure({
                "at": round(ts, 3), "method": method, "path": path, "status": status,
                "served_by": self.served_by,
                "error": error if response is None else
                response.body[:200].decode("utf-8", "replace")})
        if response is None or status is None:
            if unacked is not None:
                op, table, key, delta = unacked
                self._record(op, table, key, sent, ts, 0, delta=delta, ack=False)
            return
        if response.cookies:
            for name, value in cookie_pairs(response.cookies):
                if value is None:
                    u.cookies.pop(name, None)
                else:
                    u.cookies[name] = value
        if 200 <= status < 300:
            if on_ack is not None and response.body:
                try:
                    data = json.loads(response.body)
                except ValueError:
                    data = None
                if isinstance(data, dict):
                    on_ack(data, sent, ts, status)
        elif status >= 500 and unacked is not None:
            op, table, key, delta = unacked
            self._record(op, table, key, sent, ts, status, delta=delta, ack=False)

    async def drive(self, rate: float, duration: float | None, stop: Callable[[], bool],
                    report: Callable[[Window], None]) -> Window:
        """Send at ``rate`` until ``duration`` or ``stop()``; ``report`` gets each second."""
        loop = asyncio.get_running_loop()
        interval = 1.0 / rate
        start = loop.time()
        end = None if duration is None else start + duration
        next_report = start + 1.0
        tasks: set[asyncio.Task[None]] = set()
        i = 0
        try:
            while True:
                now = loop.time()
                if stop() or (end is not None and now >= end):
                    break
                due = start + i * interval
                while due <= now and (end is None or due < end):
                    i += 1
                    if self.inflight >= self.opts.max_inflight:
                        self.window.dropped += 1
                    else:
                        task = loop.create_task(self._one(due, loop))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
                    due = start + i * interval
                if now >= next_report:
                    self._flush_window(now - next_report + 1.0, report)
                    next_report += 1.0
                wake = min(due, next_report) if end is None else min(due, next_report, end)
                await asyncio.sleep(max(0.0, wake - loop.time()))
            if tasks:
                await asyncio.wait(set(tasks), timeout=self.opts.timeout + 1.0)
            for task in list(tasks):
                task.cancel()
            if tasks:
                await asyncio.wait(set(tasks), timeout=1.0)
        finally:
            self._flush_window(1.0, report)
            await self.client.aclose()
            if self.ledger is not None:
                self.ledger.flush()
        self.total.seconds = loop.time() - start
        return self.total

    def _flush_window(self, seconds: float, report: Callable[[Window], None]) -> None:
        w, self.window = self.window, Window()
        w.seconds = seconds
        self.total.merge(w)
        report(w)
        if self.ledger is not None:
            self.ledger.flush()


def rate_limit_keys(opts: LoadOptions) -> list[str]:
    return [f"load:{opts.run_id}:{i}" for i in range(opts.rate_limit_keys)]


def _setup(opts: LoadOptions, ledger: LedgerWriter | None) -> None:
    """Give every rate-limit key of the run a known initial value (recorded in the ledger)."""
    import httpx

    try:
        with httpx.Client(base_url=opts.url, timeout=opts.timeout, trust_env=False) as client:
            for i, key in enumerate(rate_limit_keys(opts)):
                # Most keys are generous; one in four runs dry so 429s happen too.
                remaining = 200 if i % 4 == 3 else 1_000_000
                sent = time.time()
                r = client.put(f"/rate-limits/{key}",
                               json={"remaining": remaining, "limit_total": remaining})
                ts = time.time()
                if r.status_code // 100 != 2:
                    raise UsageError(f"{opts.url} answered {r.status_code} to the setup "
                                     f"request PUT /rate-limits/{key}",
                                     hint="point --url at the pgshift reference app "
                                          "(python -m pgshift.demo.app)")
                if ledger is not None:
                    try:
                        response = r.json()
                    except ValueError:
                        response = None
                    ledger.record(Entry(op="rate_limit.set", table="rate_limits", key=key,
                                        sent=sent, ts=ts, values={"remaining": remaining,
                                                                  "limit_total": remaining},
                                        status=r.status_code, response=response,
                                        served_by=r.headers.get("x-pgshift-served-by")))
    except httpx.HTTPError as exc:
        raise UsageError(f"cannot reach {opts.url}: {exc}",
                         hint="start the app first: python -m pgshift.demo.app --port 8000"
                         ) from exc
    if ledger is not None:
        ledger.flush()


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        return asyncio.new_event_loop()


def _run_worker(opts: LoadOptions, index: int, n_workers: int, stop: Callable[[], bool],
                report: Callable[[Window], None]) -> Window:
    ledger = LedgerWriter(opts.ledger) if opts.ledger is not None else None
    try:
        work = _Workload(opts, index, n_workers, ledger)
        loop = _new_loop()
        try:
            return loop.run_until_complete(work.drive(opts.rps / n_workers, opts.duration,
                                                      stop, report))
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
    finally:
        if ledger is not None:
            ledger.close()


_WORKER_CODE = "from pgshift.demo.load import _worker_main; _worker_main()"


def _worker_main() -> None:
    """A worker process: options on the first stdin line, figures as JSON lines on stdout.

    Any further stdin line (or its end) stops it. A plain child interpreter rather than
    multiprocessing, whose spawn start re-imports the caller's ``__main__``.
    """
    import sys

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    spec = json.loads(sys.stdin.readline())
    index, n_workers = int(spec["index"]), int(spec["workers"])
    raw = spec["opts"]
    opts = LoadOptions(**{**raw, "ledger": Path(raw["ledger"]) if raw["ledger"] else None})
    stop = threading.Event()

    def watch() -> None:
        sys.stdin.readline()
        stop.set()

    threading.Thread(target=watch, name="stop-watch", daemon=True).start()
    lock = threading.Lock()

    def emit(kind: str, payload: Any) -> None:
        with lock:
            sys.stdout.write(json.dumps([kind, index, payload]) + "\n")
            sys.stdout.flush()

    try:
        total = _run_worker(opts, index, n_workers, stop.is_set,
                            lambda w: emit("window", w.to_msg()))
        emit("final", total.to_msg())
    except BaseException as exc:
        emit("error", f"{type(exc).__name__}: {exc}")


def run_load(opts: LoadOptions, *, on_second: Callable[[Window], None] | None = None,
             stop: threading.Event | None = None) -> LoadSummary:
    """Run the load until ``opts.duration`` passes or ``stop`` is set; return the summary.

    ``on_second`` receives the figures of each second (summed over worker processes).
    """
    opts.validate()
    n = opts.worker_count()
    report = on_second or (lambda w: None)
    setup_ledger = LedgerWriter(opts.ledger) if opts.ledger is not None else None
    try:
        _setup(opts, setup_ledger)
    finally:
        if setup_ledger is not None:
            setup_ledger.close()
    started = time.monotonic()
    stop_flag = stop or threading.Event()
    if n == 1:
        total = _run_worker(opts, 0, 1, stop_flag.is_set, report)
    else:
        total = _run_processes(opts, n, report, stop_flag)
    # From the first request to the last answer (in-flight requests drained at the end are
    # counted, so the time they took is too: an overloaded server is not flattered).
    seconds = total.seconds or (time.monotonic() - started)
    return LoadSummary(url=opts.url, target_rps=opts.rps, seconds=seconds, workers=n,
                       users=opts.users, total=total,
                       ledger=str(opts.ledger) if opts.ledger else None, run_id=opts.run_id)


def _run_processes(opts: LoadOptions, n: int, report: Callable[[Window], None],
                   stop: threading.Event) -> Window:
    import subprocess
    import sys

    out: queue_mod.Queue[list[Any] | None] = queue_mod.Queue()
    procs: list[subprocess.Popen[str]] = []
    readers: list[threading.Thread] = []

    def read(proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                out.put(json.loads(line))
            except ValueError:
                continue
        out.put(None)

    spec_opts = {**opts.__dict__, "ledger": str(opts.ledger) if opts.ledger else None}
    total = Window()
    finals: dict[int, Window] = {}
    errors: list[str] = []
    try:
        for i in range(n):
            proc = subprocess.Popen([sys.executable, "-c", _WORKER_CODE], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, text=True, bufsize=1)
            procs.append(proc)
            assert proc.stdin is not None
            proc.stdin.write(json.dumps({"index": i, "workers": n, "opts": spec_opts}) + "\n")
            proc.stdin.flush()
            t = threading.Thread(target=read, args=(proc,), name=f"load-reader-{i}", daemon=True)
            t.start()
            readers.append(t)
        pending, reported, last, ended = Window(), 0, time.monotonic(), 0
        stopped = False
        while ended < n:
            if stop.is_set() and not stopped:
                stopped = True
                _stop_workers(procs)
            try:
                msg = out.get(timeout=0.2)
            except queue_mod.Empty:
                continue
            if msg is None:
                ended += 1
                continue
            kind, index, payload = msg
            if kind == "window":
                pending.merge(Window.from_msg(payload))
                reported += 1
                if reported >= n or time.monotonic() - last > 1.2:
                    pending.seconds = 1.0
                    report(pending)
                    pending, reported, last = Window(), 0, time.monotonic()
            elif kind == "final":
                finals[index] = Window.from_msg(payload)
            else:
                errors.append(str(payload))
    finally:
        _stop_workers(procs)
        for proc in procs:
            try:
                proc.wait(timeout=opts.timeout + 10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        for t in readers:
            t.join(timeout=5)
    if errors:
        raise RuntimeError(f"load worker failed: {errors[0]}")
    if len(finals) < n:
        raise RuntimeError(f"{n - len(finals)} load worker(s) ended without a summary")
    for w in finals.values():
        total.merge(w)
    total.seconds = max((w.seconds for w in finals.values()), default=0.0)
    return total


def _stop_workers(procs: list[Any]) -> None:
    for proc in procs:
        if proc.stdin is None or proc.stdin.closed:
            continue
        try:
            proc.stdin.write("stop\n")
        except (OSError, ValueError):  # the worker already ended
            pass
        finally:
            with contextlib.suppress(OSError, ValueError):
                proc.stdin.close()
