"""The reference app's routes: request parsing, one handler per critical path, the route table.

Every handler reads and checks its input (a bad one is a 400 :class:`BadRequest`), runs one
blocking :class:`~pgshift.demo.db_base.Store` call in the thread pool and answers JSON;
:func:`_app_error` maps the store's errors to their statuses (404, 409, 429, 503).
:mod:`pgshift.demo.app` builds the Starlette app on :data:`ROUTES`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, TypeVar

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Match, Route
from starlette.types import Scope

from pgshift.demo.app_faults import Faults, parse_faults
from pgshift.demo.app_metrics import Metrics
from pgshift.demo.db_base import (
    JOB_STATUSES,
    AppDbError,
    Conflict,
    DbUnavailable,
    Exhausted,
    NotFound,
    Store,
)
from pgshift.errors import UsageError

__all__ = ["ROUTES", "SESSION_COOKIE", "BadRequest"]

T = TypeVar("T")
SESSION_COOKIE = "pgshift_session"
_INT_BOUND = 2**62


class BadRequest(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class _State:
    """What every handler needs: the store, metrics, and the (mutable) fault switch."""

    def __init__(self, store: Store, faults: Faults, name: str) -> None:
        self.store = store
        self.served_by = (b"x-pgshift-served-by", (name or store.engine).encode("latin-1"))
        self.metrics = Metrics(store.engine)
        self.faults = faults
        self.templates: dict[Any, str] = {}
        self.routes: list[Route] = []

    def label(self, scope: Scope) -> None:
        """Set ``scope['endpoint']`` as routing would (for answers made before routing)."""
        for route in self.routes:
            match, child = route.matches(scope)
            if match == Match.FULL:
                scope["endpoint"] = child["endpoint"]
                return


def _state(request: Request) -> _State:
    state: _State = request.app.state.demo
    return state


async def _db(request: Request, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a blocking Store call in the thread pool, honouring ``db=dead``."""
    st = _state(request)
    if st.faults.db_dead:
        st.metrics.db_error("fault")
        raise DbUnavailable("the database is unreachable (fault injected: db=dead)")
    try:
        return await run_in_threadpool(fn, *args, **kwargs)
    except DbUnavailable:
        st.metrics.db_error("unavailable")
        raise


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        raise BadRequest("the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object")
    return data


def _int(value: Any, name: str, *, default: int | None = None, low: int | None = None,
         high: int | None = None) -> int:
    if value is None:
        if default is None:
            raise BadRequest(f"{name} is required")
        return default
    if isinstance(value, bool):
        raise BadRequest(f"{name} must be an integer")
    try:
        out = int(value)
    except (TypeError, ValueError):
        raise BadRequest(f"{name} must be an integer") from None
    # Bounded so that no value overflows a 64-bit column (a 503 would blame the database).
    low = -_INT_BOUND if low is None else low
    high = _INT_BOUND if high is None else high
    if not low <= out <= high:
        raise BadRequest(f"{name} must be between {low} and {high}")
    return out


def _opt_int(value: Any, name: str, **kw: Any) -> int | None:
    return None if value is None else _int(value, name, **kw)


def _opt_bool(value: Any, name: str) -> bool | None:
    if value is None:
        return None
    if isinstance(value, bool) or value in (0, 1):
        return bool(value)
    raise BadRequest(f"{name} must be true or false")


def _text(value: Any, name: str, *, required: bool = True, max_len: int = 1000) -> str | None:
    if value is None:
        if required:
            raise BadRequest(f"{name} is required")
        return None
    if not isinstance(value, str) or not value or len(value) > max_len:
        raise BadRequest(f"{name} must be a non-empty string of at most {max_len} characters")
    return value


def _json(data: Any, status: int = 200, **kw: Any) -> JSONResponse:
    return JSONResponse(data, status_code=status, **kw)


# --------------------------------------------------------------------------- handlers


async def health(request: Request) -> Response:
    st = _state(request)
    t0 = time.perf_counter()
    try:
        await _db(request, st.store.ping)
    except DbUnavailable as exc:
        return _json({"db": "down", "engine": st.store.engine, "error": exc.message,
                      "latency_ms": round((time.perf_counter() - t0) * 1000, 3)}, 503)
    return _json({"db": "ok", "engine": st.store.engine,
                  "latency_ms": round((time.perf_counter() - t0) * 1000, 3),
                  "faults": st.faults.describe()})


async def metrics(request: Request) -> Response:
    return PlainTextResponse(_state(request).metrics.render(),
                             media_type="text/plain; version=0.0.4")


async def enqueue_job(request: Request) -> Response:
    b = await _body(request)
    job = await _db(request, _state(request).store.enqueue_job,
                    _text(b.get("type"), "type", max_len=100),
                    b.get("payload", {}),
                    priority=_int(b.get("priority"), "priority", default=0, low=0, high=100),
                    user_id=_opt_int(b.get("user_id"), "user_id"),
                    max_attempts=_int(b.get("max_attempts"), "max_attempts", default=3, low=1,
                                      high=100),
                    delay_ms=_int(b.get("delay_ms"), "delay_ms", default=0, low=0))
    return _json(job, 201)


async def claim_job(request: Request) -> Response:
    b = await _body(request)
    job = await _db(request, _state(request).store.claim_job,
                    _text(b.get("worker"), "worker", required=False, max_len=200))
    if job is None:
        return Response(status_code=204)
    return _json(job)


async def complete_job(request: Request) -> Response:
    b = await _body(request)
    job = await _db(request, _state(request).store.finish_job, request.path_params["id"],
                    ok=True, result=b.get("result"),
                    message=_text(b.get("message"), "message", required=False))
    return _json(job)


async def fail_job(request: Request) -> Response:
    b = await _body(request)
    error = b.get("error", "failed")
    job = await _db(request, _state(request).store.finish_job, request.path_params["id"],
                    ok=False, result={"ok": False, "error": error},
                    message=_text(b.get("message"), "message", required=False))
    return _json(job)


async def list_jobs(request: Request) -> Response:
    q = request.query_params
    status = q.get("status") or None
    if status is not None and status not in JOB_STATUSES:
        raise BadRequest(f"status must be one of {', '.join(JOB_STATUSES)}")
    jobs = await _db(request, _state(request).store.list_jobs, status=status,
                     job_type=q.get("type") or None,
                     user_id=_opt_int(q.get("user_id"), "user_id"),
                     limit=_int(q.get("limit"), "limit", default=50, low=1, high=500))
    return _json({"jobs": jobs, "count": len(jobs)})


async def get_job(request: Request) -> Response:
    return _json(await _db(request, _state(request).store.get_job, request.path_params["id"]))


async def get_tool(request: Request) -> Response:
    return _json(await _db(request, _state(request).store.get_tool,
                           request.path_params["name"]))


async def put_tool(request: Request) -> Response:
    b = await _body(request)
    if "config" not in b:
        raise BadRequest("config is required")
    row = await _db(request, _state(request).store.put_tool, request.path_params["name"],
                    b["config"], enabled=_opt_bool(b.get("enabled"), "enabled"),
                    refresh_interval=_opt_int(b.get("refresh_interval"), "refresh_interval",
                                              low=1000),
                    notifications=_opt_bool(b.get("notifications"), "notifications"))
    return _json(row)


async def toggle_tool(request: Request) -> Response:
    return _json(await _db(request, _state(request).store.toggle_tool,
                           request.path_params["name"]))


async def get_rate_limit(request: Request) -> Response:
    return _json(await _db(request, _state(request).store.read_rate_limit,
                           request.path_params["key"]))


async def put_rate_limit(request: Request) -> Response:
    b = await _body(request)
    row = await _db(request, _state(request).store.set_rate_limit, request.path_params["key"],
                    _int(b.get("remaining"), "remaining", low=0),
                    _opt_int(b.get("limit_total"), "limit_total", low=0),
                    _opt_int(b.get("reset_at"), "reset_at", low=0))
    return _json(row)


async def take_rate_limit(request: Request) -> Response:
    b = await _body(request)
    row = await _db(request, _state(request).store.take_rate_limit, request.path_params["key"],
                    _int(b.get("cost"), "cost", default=1, low=1, high=1_000_000))
    return _json(row)


async def create_user(request: Request) -> Response:
    b = await _body(request)
    row = await _db(request, _state(request).store.create_user,
                    _text(b.get("email"), "email", max_len=320),
                    _text(b.get("name"), "name", required=False, max_len=200),
                    bool(_opt_bool(b.get("is_admin"), "is_admin")))
    return _json(row, 201)


async def create_session(request: Request) -> Response:
    b = await _body(request)
    user_id = _int(request.path_params["id"], "user id")
    client = request.client.host if request.client else None
    row = await _db(request, _state(request).store.create_session, user_id,
                    user_agent=request.headers.get("user-agent"), ip=client,
                    ttl_ms=_int(b.get("ttl_ms"), "ttl_ms", default=7 * 86_400_000, low=1000))
    response = _json(row, 201)
    response.set_cookie(SESSION_COOKIE, row["id"], httponly=True, samesite="lax")
    return response


async def get_user(request: Request) -> Response:
    user_id = _int(request.path_params["id"], "user id")
    return _json(await _db(request, _state(request).store.get_user, user_id))


async def faults_endpoint(request: Request) -> Response:
    st = _state(request)
    if request.method == "POST":
        b = await _body(request)
        try:
            st.faults = parse_faults(str(b.get("spec", "off")))
        except UsageError as exc:
            raise BadRequest(exc.message) from None
    return _json(st.faults.to_dict())


_STATUS_OF: tuple[tuple[type[Exception], int], ...] = (
    (NotFound, 404), (Conflict, 409), (Exhausted, 429), (DbUnavailable, 503),
)


async def _app_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, BadRequest):
        return _json({"error": exc.message}, 400)
    assert isinstance(exc, AppDbError)
    status = next((s for cls, s in _STATUS_OF if isinstance(exc, cls)), 500)
    body: dict[str, Any] = {"error": exc.message}
    if isinstance(exc, Exhausted):
        body["rate_limit"] = exc.row
    return _json(body, status)


ROUTES: tuple[tuple[str, Callable[[Request], Any], tuple[str, ...]], ...] = (
    ("/health", health, ("GET",)),
    ("/metrics", metrics, ("GET",)),
    ("/jobs", enqueue_job, ("POST",)),
    ("/jobs", list_jobs, ("GET",)),
    ("/jobs/claim", claim_job, ("POST",)),
    ("/jobs/{id}", get_job, ("GET",)),
    ("/jobs/{id}/complete", complete_job, ("POST",)),
    ("/jobs/{id}/fail", fail_job, ("POST",)),
    ("/tools/{name}", get_tool, ("GET",)),
    ("/tools/{name}", put_tool, ("PUT",)),
    ("/tools/{name}/toggle", toggle_tool, ("POST",)),
    ("/rate-limits/{key}", get_rate_limit, ("GET",)),
    ("/rate-limits/{key}", put_rate_limit, ("PUT",)),
    ("/rate-limits/{key}/take", take_rate_limit, ("POST",)),
    ("/users", create_user, ("POST",)),
    ("/users/{id}", get_user, ("GET",)),
    ("/users/{id}/sessions", create_session, ("POST",)),
    ("/_admin/faults", faults_endpoint, ("GET", "POST")),
)
