"""The reference app: a small job dashboard on SQLite or PostgreSQL, the workload of every demo.

It is the app pgshift moves: the same code runs as "blue" (``DB_ENGINE=sqlite``,
``DATABASE_PATH``) and as "green" (``DB_ENGINE=postgres``, ``DATABASE_URL``, which may be
``env:VAR``), on the schema ``pgshift demo seed`` creates and ``pgshift migrate`` moves.

Critical paths (JSON in, JSON out)::

    POST /jobs                      enqueue (201)           GET  /jobs?status=&type=&limit=
    POST /jobs/claim                claim next (200 | 204)  GET  /jobs/{id}   (with history)
    POST /jobs/{id}/complete|fail   finish, with history    GET|PUT /tools/{name}
    POST /tools/{name}/toggle       flip enabled            PUT  /rate-limits/{key}  (set)
    POST /rate-limits/{key}/take    check-and-decrement (429 when exhausted)
    GET  /rate-limits/{key}         read -- and consume one token (a write inside a GET)
    POST /users                     (201; 409 on a taken email)
    POST /users/{id}/sessions       (201, sets the ``pgshift_session`` cookie)
    GET  /users/{id}                user, sessions, OAuth connections, job counts
    GET  /health                    200 {"db": "ok", ...} | 503 when the database is unreachable
    GET  /metrics                   Prometheus text
    GET|POST /_admin/faults         read / change the fault switch at run time

Run it with ``python -m pgshift.demo.app --port 8000`` (reads the variables above and
``PGSHIFT_DEMO_FAULTS``), with :func:`serve`, or in a background thread with :class:`AppServer`.

The handlers and the route table are :mod:`pgshift.demo.app_routes`; this module is the app's
configuration, its middleware and how it is served.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pgshift.demo.app_faults import ENV as FAULTS_ENV
from pgshift.demo.app_faults import Faults, parse_faults
from pgshift.demo.app_routes import ROUTES, BadRequest, _app_error, _json, _State
from pgshift.demo.db_base import AppDbError, Database, Store
from pgshift.errors import UsageError

__all__ = ["AppConfig", "AppServer", "create_app", "open_database", "serve"]

# Never delayed nor failed by the fault switch (see app_faults).
_EXEMPT_PREFIXES = ("/health", "/metrics", "/_admin")


@dataclass(frozen=True)
class AppConfig:
    """Which database the app serves, and its fault switch."""

    engine: str = "sqlite"
    database_path: Path | None = None
    database_url: str | None = None
    pool_size: int = 8
    faults: Faults = field(default_factory=Faults)
    #: Sent as ``x-pgshift-served-by`` on every answer (e.g. blue/green); default: the engine.
    name: str = ""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AppConfig:
        """``DB_ENGINE``, ``DATABASE_PATH``, ``DATABASE_URL``, ``DB_POOL_SIZE`` and faults."""
        env = os.environ if environ is None else environ
        path = env.get("DATABASE_PATH", "").strip()
        try:
            pool = int(env.get("DB_POOL_SIZE", "8"))
        except ValueError:
            raise UsageError("DB_POOL_SIZE must be an integer", hint="DB_POOL_SIZE=8") from None
        config = cls(engine=env.get("DB_ENGINE", "sqlite").strip().lower() or "sqlite",
                     database_path=Path(path) if path else None,
                     database_url=env.get("DATABASE_URL", "").strip() or None,
                     pool_size=pool, faults=parse_faults(env.get(FAULTS_ENV)),
                     name=env.get("PGSHIFT_APP_NAME", "").strip())
        config.validate()
        return config

    def validate(self) -> None:
        if self.engine not in ("sqlite", "postgres"):
            raise UsageError(f"DB_ENGINE must be sqlite or postgres, not {self.engine!r}",
                             hint="DB_ENGINE=sqlite DATABASE_PATH=app.db")
        if self.engine == "sqlite" and self.database_path is None:
            raise UsageError("DB_ENGINE=sqlite needs DATABASE_PATH",
                             hint="DATABASE_PATH=/path/to/app.db (pgshift demo seed makes one)")
        if self.engine == "postgres" and not self.database_url:
            raise UsageError("DB_ENGINE=postgres needs DATABASE_URL",
                             hint="DATABASE_URL=postgresql://user@host/db (or env:VAR)")
        if self.pool_size < 1:
            raise UsageError("the pool size must be at least 1", hint="DB_POOL_SIZE=8")

    def environ(self) -> dict[str, str]:
        """The environment variables that describe this config (for a child process)."""
        env = {"DB_ENGINE": self.engine, "DB_POOL_SIZE": str(self.pool_size),
               FAULTS_ENV: self.faults.describe(), "PGSHIFT_APP_NAME": self.name}
        if self.database_path is not None:
            env["DATABASE_PATH"] = str(self.database_path)
        if self.database_url:
            env["DATABASE_URL"] = self.database_url
        return env


def open_database(config: AppConfig) -> Database:
    """The engine's :class:`~pgshift.demo.db_base.Database` (connections open lazily)."""
    config.validate()
    if config.engine == "sqlite":
        from pgshift.demo.db_sqlite import SqliteDatabase

        assert config.database_path is not None
        return SqliteDatabase(config.database_path, pool_size=config.pool_size)
    from pgshift.demo.db_postgres import PostgresDatabase
    from pgshift.dsn import resolve

    assert config.database_url is not None
    return PostgresDatabase(resolve(config.database_url), pool_size=config.pool_size)


class _Observe:
    """Pure ASGI middleware: metrics for every request, and the fault switch's latency/5xx."""

    def __init__(self, app: ASGIApp, state: _State) -> None:
        self.app = app
        self.st = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        st = self.st
        t0 = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), st.served_by]}
            await send(message)

        faults = st.faults
        try:
            if faults.active and not scope["path"].startswith(_EXEMPT_PREFIXES):
                if faults.latency_ms:
                    st.metrics.fault("latency")
                    await asyncio.sleep(faults.latency_ms / 1000)
                if faults.error_rate and random.random() < faults.error_rate:
                    st.metrics.fault("error")
                    st.label(scope)
                    await _json({"error": "injected fault (PGSHIFT_DEMO_FAULTS)"}, 500,
                                headers={"x-pgshift-fault": "error"})(scope, receive,
                                                                     send_status)
                    return
            await self.app(scope, receive, send_status)
        finally:
            route = st.templates.get(scope.get("endpoint"), "(unmatched)")
            st.metrics.observe(route, scope["method"], status, time.perf_counter() - t0)


def create_app(config: AppConfig | None = None, *, database: Database | None = None) -> Starlette:
    """The Starlette app on ``database`` (or the one ``config`` names); closes it on shutdown."""
    config = config or AppConfig.from_env()
    db = database if database is not None else open_database(config)
    state = _State(Store(db), config.faults, config.name)
    routes = [Route(path, fn, methods=list(methods)) for path, fn, methods in ROUTES]
    state.templates = {fn: path for path, fn, _ in ROUTES}
    state.routes = routes

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await run_in_threadpool(db.close)

    app = Starlette(routes=routes, lifespan=lifespan,
                    middleware=[Middleware(_Observe, state=state)],
                    exception_handlers={AppDbError: _app_error, BadRequest: _app_error})
    app.state.demo = state
    return app


def app_from_env() -> Starlette:
    """Factory for ``uvicorn --factory pgshift.demo.app:app_from_env`` (multi-worker serving)."""
    return create_app(AppConfig.from_env())


# --------------------------------------------------------------------------- serving


def _uvicorn_config(app: Any, **kw: Any) -> uvicorn.Config:
    return uvicorn.Config(app, log_level=kw.pop("log_level", "warning"), access_log=False,
                          lifespan="on", **kw)


def serve(config: AppConfig, *, host: str = "127.0.0.1", port: int = 8000,
          workers: int = 1, log_level: str = "warning") -> None:
    """Serve until interrupted (blocking). ``workers > 1`` forks uvicorn workers."""
    if workers > 1:
        open_database(config).close()  # a missing SQLite file is created once, not per worker
        os.environ.update(config.environ())
        uvicorn.run("pgshift.demo.app:app_from_env", factory=True, host=host, port=port,
                    workers=workers, log_level=log_level, access_log=False)
        return
    uvicorn.Server(_uvicorn_config(create_app(config), host=host, port=port,
                                   log_level=log_level)).run()


class AppServer:
    """The app on uvicorn in a background thread, on a free port of 127.0.0.1.

    ::

        with AppServer(AppConfig(engine="sqlite", database_path=db)) as server:
            httpx.get(server.url + "/health")
    """

    def __init__(self, config: AppConfig, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.config = config
        self.host = host
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.port: int = self._sock.getsockname()[1]
        self.app = create_app(config)
        self._server = uvicorn.Server(_uvicorn_config(self.app))
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def set_faults(self, faults: Faults) -> None:
        """Change the fault switch of the running app."""
        self.app.state.demo.faults = faults

    def start(self, timeout: float = 15.0) -> AppServer:
        def run() -> None:
            try:
                self._server.run(sockets=[self._sock])
            except BaseException as exc:  # surfaced by start()/stop()
                self._error = exc

        self._thread = threading.Thread(target=run, name=f"pgshift-app-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if self._error is not None or not self._thread.is_alive():
                self.stop()
                raise RuntimeError(f"the app failed to start: {self._error!r}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the app did not start within {timeout:.0f}s")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=15)
            self._thread = None
        self._sock.close()

    def __enter__(self) -> AppServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """``python -m pgshift.demo.app [--port N] [--host H] [--workers N]``; config from env."""
    parser = argparse.ArgumentParser(prog="python -m pgshift.demo.app",
                                     description="Serve the pgshift reference app.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--engine", choices=("sqlite", "postgres"),
                        help="overrides DB_ENGINE")
    parser.add_argument("--database-path", help="overrides DATABASE_PATH")
    parser.add_argument("--database-url", help="overrides DATABASE_URL (env:VAR allowed)")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    try:
        config = AppConfig.from_env()
        if args.engine:
            config = replace(config, engine=args.engine)
        if args.database_path:
            config = replace(config, database_path=Path(args.database_path))
        if args.database_url:
            config = replace(config, database_url=args.database_url)
        config.validate()
    except UsageError as exc:
        print(f"Error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"Try: {exc.hint}", file=sys.stderr)
        return 2
    serve(config, host=args.host, port=args.port, workers=args.workers,
          log_level=args.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
