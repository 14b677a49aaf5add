"""The request mix of the load generator: virtual users walking the reference app's paths.

:class:`Workload` is one process's share of the users and of the rate. Each user has its own
``X-User-Id`` and cookie jar and picks weighted actions (~70 % reads, one of which --
``GET /rate-limits/{key}`` -- writes); every acknowledged write goes to the ledger
(:mod:`pgshift.demo.ledger`) with the values the app answered. :meth:`Workload.drive` sends on
the open-loop schedule described in :mod:`pgshift.demo.load`.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pgshift.demo.ledger import Entry, LedgerWriter
from pgshift.demo.load_http import HttpClient, cookie_pairs
from pgshift.demo.load_options import LoadOptions, Window, rate_limit_keys

__all__ = ["JOB_TYPES", "TOOLS", "Workload"]

# The seeded tool names (pgshift.demo.seed) and job types the virtual users work with.
TOOLS = ("github", "gitlab", "jira", "confluence", "slack", "linear", "notion", "sentry",
         "datadog", "pagerduty", "opsgenie", "circleci")
JOB_TYPES = ("sync_github", "refresh_jira", "send_digest", "poll_sentry", "sync_linear",
             "collect_datadog_metrics", "rebuild_search_index")


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


class Workload:
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
