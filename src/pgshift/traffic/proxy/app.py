"""Run the proxy: in the foreground (``pgshift proxy``) or on a background thread (tests,
the demo), always with a clean shutdown: listeners closed, pooled sockets closed, tasks
cancelled, loop closed."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import threading
from collections.abc import Callable
from typing import Any

from pgshift.errors import UsageError
from pgshift.traffic.proxy.admin import AdminServer
from pgshift.traffic.proxy.config import Backend, ProxyConfig
from pgshift.traffic.proxy.events import emit, log_to_stderr
from pgshift.traffic.proxy.server import OUT_OF_DESCRIPTORS, ProxyServer
from pgshift.traffic.proxy.state import RoutingState

try:
    import resource
except ImportError:  # pragma: no cover - Windows
    resource = None  # type: ignore[assignment]

FD_RESERVE = 64  # descriptors kept for listeners, health checks, the admin API, logs

try:  # uvloop: measured about 2x the requests/s of the default loop (docs/traffic.md)
    import uvloop

    def new_loop() -> asyncio.AbstractEventLoop:
        return uvloop.new_event_loop()
except ImportError:  # pragma: no cover - Windows
    def new_loop() -> asyncio.AbstractEventLoop:
        return asyncio.new_event_loop()


def descriptor_limit(raise_soft: bool = False) -> int | None:
    """The process's descriptor limit (soft), raised to the hard limit first if asked
    (nginx's ``worker_rlimit_nofile``; HAProxy does it from ``maxconn``)."""
    if resource is None:  # pragma: no cover - Windows
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if raise_soft and soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return None if soft == resource.RLIM_INFINITY else soft


def connection_cap(wanted: int, fd_limit: int | None) -> int:
    """``--max-connections`` lowered so that every client plus its backend connection fits
    the descriptor limit: running out of descriptors fails everybody, a cap fails few."""
    if fd_limit is None:
        return wanted
    return max(1, min(wanted, (fd_limit - FD_RESERVE) // 2))


async def _check_once(backend: Backend, path: str, timeout: float) -> str | None:
    """One active check: ``None`` when healthy, else why not."""
    writer = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(backend.host, backend.port)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {backend.host}\r\n"
                         "User-Agent: pgshift-health\r\nConnection: close\r\n\r\n".encode())
            line = await reader.readline()
        parts = line.split()
        if len(parts) < 2 or not parts[1].isdigit():
            return "no HTTP answer"
        code = int(parts[1])
        return None if 200 <= code < 400 else f"HTTP {code}"
    except (OSError, TimeoutError) as exc:
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    finally:
        if writer is not None:
            writer.close()


class Proxy:
    """The embedded proxy: forwarding listener + admin listener + health checks."""

    def __init__(self, cfg: ProxyConfig) -> None:
        self.cfg = cfg
        self.state = RoutingState(cfg)
        self.server = ProxyServer(cfg, self.state)
        self.admin = AdminServer(self.state, cfg.token, cfg.max_header_size)
        self._servers: list[asyncio.AbstractServer] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.listen_port = cfg.listen[1]
        self.admin_port = cfg.admin[1]
        self.fd_limit: int | None = None

    async def start(self) -> None:
        cfg = self.cfg
        try:
            loop = asyncio.get_running_loop()
            fwd = await loop.create_server(self.server.protocol, cfg.listen[0], cfg.listen[1],
                                           backlog=1024, reuse_address=True)
            self._servers.append(fwd)
            adm = await asyncio.start_server(self.admin.handle, cfg.admin[0], cfg.admin[1],
                                             reuse_address=True)
            self._servers.append(adm)
        except OSError as exc:
            await self.stop()
            raise UsageError(f"cannot listen: {exc}",
                             hint="pick free ports with --listen/--admin") from exc
        self.listen_port = fwd.sockets[0].getsockname()[1]
        self.admin_port = adm.sockets[0].getsockname()[1]
        self.fd_limit = descriptor_limit()
        self.server.max_connections = connection_cap(cfg.max_connections, self.fd_limit)
        loop.set_exception_handler(self._loop_error)
        sweep = min(1.0, cfg.read_timeout / 4, cfg.connect_timeout / 2)
        self._tasks.append(asyncio.ensure_future(self.server.deadlines.sweep(sweep)))
        if cfg.health.path is not None:
            for side in ("blue", "green"):
                self._tasks.append(asyncio.ensure_future(self._health_loop(side)))

    def _log_start(self) -> None:
        cfg = self.cfg
        if self.server.max_connections < cfg.max_connections:
            emit("max_connections_lowered", logging.WARNING, wanted=cfg.max_connections,
                 effective=self.server.max_connections, descriptor_limit=self.fd_limit)
        emit("proxy_start", listen=f"{cfg.listen[0]}:{self.listen_port}",
             admin=f"{cfg.admin[0]}:{self.admin_port}", blue=cfg.blue.url, green=cfg.green.url,
             weight=self.state.weight, system_of_record=self.state.sor,
             write_paths=list(cfg.write_paths), cohort_header=cfg.cohort_header,
             max_connections=self.server.max_connections,
             max_header_size=cfg.max_header_size, header_timeout=cfg.header_timeout,
             health_path=cfg.health.path)

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """accept() failing for want of descriptors is logged as such (the loop retries);
        anything else goes to the default handler."""
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in OUT_OF_DESCRIPTORS:
            self.state.descriptors("accept", error=str(exc),
                                   clients=len(self.server.clients))
            return
        loop.default_exception_handler(context)

    async def _health_loop(self, side: str) -> None:
        h, backend = self.cfg.health, self.state.backends[side]
        assert h.path is not None
        while True:
            error = await _check_once(backend, h.path, h.timeout)
            self.state.health[side].checked(error is None, h.rise, h.fall, error)
            await asyncio.sleep(h.interval)

    async def stop(self) -> None:
        if self._servers:
            emit("proxy_stop", clients=len(self.server.clients))
        for s in self._servers:
            s.close()
        self.server.close()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for s in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(s.wait_closed(), 2)
        self._servers.clear()
        self._tasks.clear()

    async def serve_forever(self, stop: asyncio.Event | None = None,
                            ready: Callable[[Proxy], None] | None = None) -> None:
        await self.start()
        if ready:
            ready(self)  # first: `pgshift proxy`'s human line stays the first on stderr
        self._log_start()
        try:
            await (stop or asyncio.Event()).wait()
        finally:
            await self.stop()


def _drain_and_close(loop: asyncio.AbstractEventLoop) -> None:
    pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for t in pending:
        t.cancel()
    if pending:
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    loop.run_until_complete(asyncio.sleep(0.05))  # let closed transports finish closing
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()


def run_foreground(cfg: ProxyConfig, ready: Callable[[Proxy], None] | None = None) -> None:
    """Serve until SIGINT/SIGTERM (``pgshift proxy``)."""
    import signal

    loop = new_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    log_to_stderr()
    descriptor_limit(raise_soft=True)
    proxy = Proxy(cfg)
    # Everything imported so far (typer, rich, pydantic...) lives as long as the process:
    # keep it out of the collector's full passes, which otherwise stalled requests for
    # tens of milliseconds (p99 at 1,000 requests/s, docs/traffic.md).
    gc.collect()
    gc.freeze()
    try:
        loop.run_until_complete(proxy.serve_forever(stop, ready))
    finally:
        _drain_and_close(loop)


class ThreadedProxy:
    """The proxy on a background thread with its own loop (tests, the demo).

        with ThreadedProxy(cfg) as p:
            httpx.get(p.url)
    """

    def __init__(self, cfg: ProxyConfig) -> None:
        self.cfg = cfg
        self.proxy = Proxy(cfg)
        self.loop = new_loop()
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="pgshift-proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.cfg.listen[0]}:{self.proxy.listen_port}"

    @property
    def admin_url(self) -> str:
        return f"http://{self.cfg.admin[0]}:{self.proxy.admin_port}"

    @property
    def state(self) -> RoutingState:
        return self.proxy.state

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self._stop = asyncio.Event()
        try:
            self.loop.run_until_complete(
                self.proxy.serve_forever(self._stop, lambda _: self._ready.set()))
        except BaseException as exc:
            self._error = exc
        finally:
            _drain_and_close(self.loop)
            self._ready.set()

    def start(self) -> ThreadedProxy:
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error
        return self

    def call(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` on the proxy's loop (state changes from another thread)."""
        done = threading.Event()

        def run() -> None:
            try:
                fn()
            finally:
                done.set()
        self.loop.call_soon_threadsafe(run)
        done.wait(5)

    def stop(self) -> None:
        if self._thread.is_alive() and self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)

    def __enter__(self) -> ThreadedProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
