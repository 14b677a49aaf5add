"""The load generator's HTTP/1.1 client: keep-alive connections parsed with httptools.

Why not httpx for the requests: on the project's 2-core machine ``httpx.AsyncClient`` made
150-340 requests/s per process against nginx serving a static response (fewer with more
concurrent requests), far below the 3,000 requests/s :mod:`pgshift.demo.load` must sustain.
This tiny client writes request bytes itself and parses answers with ``httptools`` (uvicorn's
parser, already a dependency): plain ``http://``, keep-alive, ``Content-Length`` or chunked
bodies, ``Set-Cookie``, per-request timeouts. httpx still performs the setup requests.
"""

from __future__ import annotations

import asyncio
from collections import deque
from urllib.parse import urlsplit

import httptools

from pgshift.errors import UsageError

__all__ = ["HttpClient", "Response", "cookie_pairs", "parse_base_url"]


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
