"""One request and its answer (``Exchange``), the timers that bound every connection
(``Deadlines``), and how a client's request head becomes the head sent upstream.

Head rules (docs/traffic.md, "Hostile clients"): hop-by-hop headers are dropped;
``X-Forwarded-For``/``-Proto`` are overwritten unless the peer is a ``--trusted-proxy``
(then appended to / kept); a repeated cohort header or ``Host`` is ambiguous and refused
with 400; an absolute-form target is forwarded in origin form and routed on its path.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from pgshift.traffic.proxy import cohort, paths
from pgshift.traffic.proxy.config import ProxyConfig
from pgshift.traffic.router import Side

HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te",
    b"trailer", b"trailers", b"transfer-encoding", b"upgrade", b"proxy-connection",
})
CLIENT_IDLE = 75.0  # seconds an idle keep-alive client connection is kept
REPLAY_LIMIT = 1 << 20  # request bodies up to 1 MiB can be replayed on a stale pooled socket
PAUSE_AT = 1 << 20  # request body bytes buffered (fence, connecting) before reading pauses
MAX_PIPELINE = 64  # pipelined requests queued on one connection before reading pauses
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class Deadlines:
    """Idle and read deadlines for many transports, enforced by one sweep per interval.

    Arming a timer per read (``call_later``/``wait_for``) cost about 10 % of the proxy's
    time in a profile; a dict write per request and one sweep a second cost next to
    nothing. Deadlines are as precise as the sweep interval (at most a quarter of the
    timeout). A transport with a registered ``on_expire`` gets that call instead of an
    abort (a client whose head is late is told 408 first).
    """

    def __init__(self) -> None:
        self.due: dict[Any, float] = {}
        self.expired: set[Any] = set()
        self.on_expire: dict[Any, Callable[[], None]] = {}
        self.now = time.monotonic()  # coarse clock, advanced by the sweep

    def set(self, transport: Any, seconds: float) -> None:
        self.due[transport] = self.now + seconds

    def clear(self, transport: Any) -> bool:
        """Forget ``transport``; ``True`` if its deadline had passed (it was aborted)."""
        self.due.pop(transport, None)
        if transport in self.expired:
            self.expired.discard(transport)
            return True
        return False

    async def sweep(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            self.now = now = time.monotonic()
            for transport, due in list(self.due.items()):
                if due <= now:
                    del self.due[transport]
                    self.expired.add(transport)
                    handler = self.on_expire.get(transport)
                    if handler is not None:
                        handler()
                    else:
                        transport.abort()


def simple_response(status: int, reason: str, body: str, extra: bytes = b"",
                    keep_alive: bool = True) -> bytes:
    """A complete small text/plain answer from the proxy itself."""
    data = (body + "\n").encode()
    conn = b"keep-alive" if keep_alive else b"close"
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(data)}\r\n").encode() + extra + \
        b"Connection: " + conn + b"\r\n\r\n" + data


class Exchange:
    """One request and its answer."""

    __slots__ = ("body_done", "chunked", "client", "counted", "expect", "extra", "fence_timer",
                 "finish_on_body_end", "has_body", "head", "headers", "http10", "is_write",
                 "keep_alive", "key", "method", "pending", "pending_size", "refusal", "replay",
                 "replay_size", "side", "t0", "tried_fresh", "upgrade", "upstream", "url")

    def __init__(self, client: Any) -> None:
        self.client = client  # the ClientConn
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.method = b""
        self.key = b""
        self.keep_alive = True
        self.http10 = False
        self.head = b""  # request head as sent upstream
        self.chunked = self.has_body = self.upgrade = self.expect = self.is_write = False
        self.body_done = False
        self.pending: list[bytes] = []  # body bytes not yet written upstream
        self.pending_size = 0
        self.replay: list[bytes] | None = []  # every body byte sent, for one retry
        self.replay_size = 0
        self.extra = b""  # Set-Cookie for a new cohort key
        self.side: Side = "blue"
        self.upstream: Any = None  # the UpstreamConn while one carries this exchange
        self.t0 = 0.0
        self.tried_fresh = False
        self.fence_timer: asyncio.TimerHandle | None = None
        self.finish_on_body_end: bool | None = None
        self.counted = False  # counted in state.writes_in_flight
        self.refusal: tuple[int, str, str] | None = None  # answered locally: status, reason, why

    def settle(self) -> None:
        if self.counted:
            self.counted = False
            self.client.server.state.writes_in_flight -= 1

    def body(self, data: bytes) -> None:
        if self.chunked:
            data = b"%x\r\n%b\r\n" % (len(data), data)
        self._emit(data)

    def end(self) -> None:
        self.body_done = True
        if self.chunked:
            self._emit(b"0\r\n\r\n")
        if self.finish_on_body_end is not None:
            keep, self.finish_on_body_end = self.finish_on_body_end, None
            self.client.done(self, keep)

    def _emit(self, data: bytes) -> None:
        if self.finish_on_body_end is not None or self.refusal is not None:
            return  # answered locally: the body is read and dropped
        if self.replay is not None:
            self.replay_size += len(data)
            if self.replay_size <= REPLAY_LIMIT:
                self.replay.append(data)
            else:
                self.replay = None
        up = self.upstream
        if up is not None and up.exchange is self:
            up.transport.write(data)
        else:
            self.pending.append(data)
            self.pending_size += len(data)
            if self.pending_size > PAUSE_AT:
                self.client.pause_reading()

    def prepare(self, cfg: ProxyConfig, cohort_header: bytes | None) -> None:
        """Headers -> the upstream head, cohort key, write flag (no decision yet); a head
        that cannot be forwarded safely sets ``refusal`` instead."""
        out: list[bytes] = []
        drop: set[bytes] = set()
        ckey = hkey = xff = None
        length = None
        upgrade_value = b""
        proto = None
        hosts = 0
        trusted = self.client.trusted
        for name, value in self.headers:
            n = name.lower()
            if n == b"connection":
                drop.update(t.strip().lower() for t in value.split(b","))
            elif n == b"cookie":
                ckey = ckey or cohort.cookie_value(value)
            elif n == b"host":
                hosts += 1
            elif n == b"x-forwarded-for":
                xff = value if xff is None else xff + b", " + value
                continue
            elif n == b"x-forwarded-proto":
                proto = value
                continue
            elif n == b"content-length":
                length = value
            elif n == b"transfer-encoding":
                self.chunked = b"chunked" in value.lower()
            elif n == b"upgrade":
                upgrade_value = value
            elif n == b"expect":
                self.expect = value.lower() == b"100-continue"
                continue
            if n == cohort_header and value:
                if hkey is not None:
                    self.refusal = (400, "Bad Request",
                                    f"more than one {cfg.cohort_header} header")
                hkey = value
            if n not in HOP_BY_HOP:
                out.append(name + b": " + value + b"\r\n")
        if hosts > 1:
            self.refusal = (400, "Bad Request", "more than one Host header")
        if drop - {b"keep-alive", b"close", b"upgrade"}:
            out = [line for line in out if line.split(b":", 1)[0].lower() not in drop]
        self.upgrade = bool(upgrade_value) and b"upgrade" in drop
        key = hkey or ckey
        client = self.client
        if key is None:
            # a client without the cookie keeps one key for the whole connection (clients
            # that ignore cookies at least stay on one side per connection)
            if client.new_cookie is None:
                new_key = cohort.new_key()
                client.new_key = new_key.encode()
                client.new_cookie = b"Set-Cookie: " + cohort.set_cookie(new_key) + b"\r\n"
            key = client.new_key
            self.extra = client.new_cookie
        self.key = key
        self.headers = []
        target = self.url
        if self.method != b"CONNECT" and target != b"*":
            try:
                target = paths.origin_form(target)
                self.is_write = cfg.is_write_target(self.method, target)
            except paths.BadTarget:
                self.refusal = (400, "Bad Request", "request target is not a path or http URL")
        else:
            self.is_write = cfg.is_write_target(self.method, b"/")
        self.has_body = self.chunked or (length is not None and length.strip() != b"0")
        ip = client.ip
        out.append(b"X-Forwarded-For: " + (xff + b", " + ip if trusted and xff else ip)
                   + b"\r\n")
        out.append(b"X-Forwarded-Proto: " + (proto if trusted and proto else b"http") + b"\r\n")
        if self.upgrade:
            out.append(b"Connection: Upgrade\r\nUpgrade: " + upgrade_value + b"\r\n")
        elif self.chunked:
            out.append(b"Transfer-Encoding: chunked\r\n")
        self.head = b"".join([self.method, b" ", target, b" HTTP/1.1\r\n", *out, b"\r\n"])
        if not self.has_body:
            self.body_done = True
