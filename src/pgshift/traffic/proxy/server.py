"""The forwarding path: asyncio Protocols on uvloop with httptools parsers.

Callbacks all the way: a client's bytes are parsed in ``data_received``, a request's side
is decided when its head is complete (weight, cohort, write routing, fence, health) and
never changes afterwards, so weight and fence changes cannot fail a request in flight.
A pooled backend connection gets the head and whatever body has arrived in one write;
the backend's answer is parsed as it comes and written to the client once per received
chunk (head and a small body in one syscall). Coroutines appear only on slow paths:
opening a backend connection and waiting at the write fence.

Measured on 2 loaded cores, wrk -c64 to nginx: an earlier asyncio-streams version of this
module reached 3.5k requests/s (0.31x HAProxy); callbacks remove two task wake-ups and
several awaits per request (docs/traffic.md has the current figures).

Bodies stream both ways with flow control (a full client buffer pauses the backend
socket and vice versa); chunked bodies are re-chunked, content-length bodies keep their
length. After a ``101`` the two sockets are spliced into a raw byte tunnel (WebSocket).
"""

from __future__ import annotations

import asyncio
import errno
import time
from typing import Any

import httptools

from pgshift.traffic.proxy import cohort
from pgshift.traffic.proxy.client import ClientConn
from pgshift.traffic.proxy.config import ProxyConfig
from pgshift.traffic.proxy.exchange import (
    CONTINUE,
    HOP_BY_HOP,
    Deadlines,
    Exchange,
    simple_response,
)
from pgshift.traffic.proxy.state import RoutingState
from pgshift.traffic.router import Side

OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE)

class UpstreamConn(asyncio.Protocol):
    """A connection to one backend; pooled between exchanges."""

    def __init__(self, server: ProxyServer, side: Side) -> None:
        self.server = server
        self.side = side
        self.transport: Any = None
        self.exchange: Exchange | None = None
        self.reused = False
        self.closed = False
        self.tunnel: ClientConn | None = None
        self._reset()

    def _reset(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.headers: list[tuple[bytes, bytes]] = []
        self.reason = b""
        self.out: list[bytes] = []
        self.got_any = False
        self.status = 0
        self.interim = False
        self.complete = False
        self.rechunk = False
        self.close_delimited = False
        self.keep = False
        self.upgrading = False

    # -- transport events ------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.transport.write(data)
            return
        ex = self.exchange
        if ex is None:
            self.transport.close()  # bytes on an idle pooled socket: not trustworthy
            return
        self.got_any = True
        deadlines = self.server.deadlines
        deadlines.set(self.transport, self.server.cfg.read_timeout)
        tail = None
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            tail = data[exc.args[0]:]
        except httptools.HttpParserError as exc:
            self.out.clear()
            self.server.no_answer(ex, self, f"bad response: {exc}", sent=True, timeout=False)
            self.transport.close()
            return
        client = ex.client
        if self.out:
            client.transport.write(b"".join(self.out))
            self.out.clear()
        if self.upgrading:
            self.server.splice(ex, self, tail or b"")
        elif self.complete:
            self.server.finish(ex, self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        server = self.server
        timed_out = server.deadlines.clear(self.transport)
        server.pools[self.side].discard(self)
        if self.tunnel is not None:
            self.tunnel.transport.close()
            return
        ex = self.exchange
        if ex is None or ex.upstream is not self:
            return
        if not self.got_any or not self.status:
            why = "timed out" if timed_out else "closed without answering"
            server.no_answer(ex, self, why, sent=True, timeout=timed_out)
        elif self.close_delimited and not self.complete:
            if self.rechunk:
                ex.client.transport.write(b"0\r\n\r\n")
            self.complete = True
            self.keep = False
            server.finish(ex, self)
        else:
            server.finish_broken(ex, self)  # the answer was cut: close the client too

    def pause_writing(self) -> None:
        ex = self.exchange
        client = self.tunnel or (ex.client if ex else None)
        if client is not None:
            client.pause_reading()

    def resume_writing(self) -> None:
        ex = self.exchange
        client = self.tunnel or (ex.client if ex else None)
        if client is not None:
            client.resume_reading()

    def abandon(self) -> None:
        """The client went away mid-exchange: this socket's state is unknown, drop it."""
        self.exchange = None
        self.transport.close()

    # -- parser callbacks -------------------------------------------------------------------

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self.interim = True  # 100 Continue and friends: wait for the real answer
            self.headers, self.reason = [], b""
            return
        self.status = status
        ex = self.exchange
        assert ex is not None
        self.keep = self.parser.should_keep_alive()
        self.out.append(self.server.response_head(ex, self))
        if status == 101:
            self.upgrading = True
        elif ex.method == b"HEAD" or status in (204, 304):
            self.complete = True

    def on_body(self, body: bytes) -> None:
        if self.interim or self.complete:
            return
        self.out.append(b"%x\r\n%b\r\n" % (len(body), body) if self.rechunk else body)

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        if self.complete:
            return
        if self.rechunk:
            self.out.append(b"0\r\n\r\n")
        self.complete = True


class Pool:
    """Idle keep-alive connections to one backend (LIFO: the warmest socket first)."""

    def __init__(self) -> None:
        self.idle: list[UpstreamConn] = []

    def take(self, deadlines: Deadlines) -> UpstreamConn | None:
        while self.idle:
            up = self.idle.pop()
            deadlines.clear(up.transport)
            if not up.closed and not up.transport.is_closing():
                return up
        return None

    def put(self, up: UpstreamConn, deadlines: Deadlines, idle: float, limit: int) -> None:
        if len(self.idle) >= limit:
            up.transport.close()
            return
        up.exchange = None
        up.transport.resume_reading()  # it may have been paused for a slow client
        self.idle.append(up)
        deadlines.set(up.transport, idle)

    def discard(self, up: UpstreamConn) -> None:
        if up in self.idle:
            self.idle.remove(up)

    def close(self) -> None:
        for up in self.idle:
            up.transport.close()
        self.idle.clear()


class ProxyServer:
    """Routing decisions and exchange plumbing; the admin API shares its ``RoutingState``."""

    def __init__(self, cfg: ProxyConfig, state: RoutingState) -> None:
        self.cfg = cfg
        self.state = state
        self.pools: dict[str, Pool] = {"blue": Pool(), "green": Pool()}
        self.clients: set[ClientConn] = set()
        self.deadlines = Deadlines()
        self.fence_waiters: list[Exchange] = []
        self.cohort_header = cfg.cohort_header.encode() if cfg.cohort_header else None
        self.max_connections = cfg.max_connections  # lowered by Proxy.start to fit the fds
        self._tasks: set[asyncio.Task[None]] = set()
        state.on_release = self.release_fence

    def protocol(self) -> ClientConn:
        return ClientConn(self)

    def close(self) -> None:
        for pool in self.pools.values():
            pool.close()
        for c in list(self.clients):
            c.transport.close()
        for t in self._tasks:
            t.cancel()

    # -- a request head is complete ---------------------------------------------------------

    def start(self, ex: Exchange) -> None:
        """``ex`` is first in its connection's queue: refuse it, hold it at the fence, or
        dispatch it."""
        state = self.state
        if ex.refusal is not None:
            status, reason, why = ex.refusal
            ex.client.queue.popleft()  # (ex is first) nothing is owed before this answer
            ex.client.refuse(status, reason, why, "bad_request", detail=why)
            return
        if ex.is_write and state.fence.held:
            state.fence.queued += 1
            self.fence_waiters.append(ex)
            loop = asyncio.get_running_loop()
            ex.fence_timer = loop.call_later(self.cfg.fence_timeout, self._fence_expired, ex)
            return
        self.dispatch(ex)

    def unqueue(self, ex: Exchange) -> None:
        if ex in self.fence_waiters:
            self.fence_waiters.remove(ex)
            self.state.fence.queued -= 1

    def _fence_expired(self, ex: Exchange) -> None:
        ex.fence_timer = None
        self.unqueue(ex)
        self.state.refusals("fence_timeout", timeout=self.cfg.fence_timeout)
        ex.client.local(ex, simple_response(503, "Service Unavailable",
                                    "write fence held too long; retry",
                                    b"Retry-After: 1\r\n", ex.keep_alive), ex.keep_alive)

    def release_fence(self) -> None:
        """Called by the admin API after ``state.release()``: held writes go now."""
        waiters, self.fence_waiters = self.fence_waiters, []
        for ex in waiters:
            self.state.fence.queued -= 1
            if ex.fence_timer is not None:
                ex.fence_timer.cancel()
                ex.fence_timer = None
            if not ex.client.closed:
                self.dispatch(ex)

    def dispatch(self, ex: Exchange) -> None:
        state = self.state
        client = ex.client
        if client.key != ex.key:  # one client connection usually carries one key
            client.key, client.bucket = ex.key, cohort.bucket(ex.key)
        green = client.bucket < state.threshold
        side = state.choose(ex.is_write, green)
        if side is None:
            state.refused += 1
            state.refusals("no_backend", side=state.sor if ex.is_write else
                           ("green" if green else "blue"))
            ex.client.local(ex, simple_response(503, "Service Unavailable",
                                                "no backend available",
                                                keep_alive=ex.keep_alive), ex.keep_alive)
            return
        if ex.expect and not ex.body_done:
            ex.client.transport.write(CONTINUE)
            ex.expect = False
        if ex.is_write and not ex.counted:
            ex.counted = True
            state.writes_in_flight += 1
        self.send(ex, side)

    def send(self, ex: Exchange, side: Side, fresh: bool = False) -> None:
        ex.side = side
        up = None if fresh else self.pools[side].take(self.deadlines)
        if up is None:
            task = asyncio.ensure_future(self._connect(ex, side))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        self._attach(ex, up, reused=True)

    async def _connect(self, ex: Exchange, side: Side) -> None:
        backend = self.state.backends[side]
        loop = asyncio.get_running_loop()
        try:
            _, up = await asyncio.wait_for(
                loop.create_connection(lambda: UpstreamConn(self, side), backend.host,
                                       backend.port), self.cfg.connect_timeout)
        except OSError as exc:  # (TimeoutError is one)
            if exc.errno in OUT_OF_DESCRIPTORS:  # our limit, not the backend's fault
                self.state.descriptors("backend_connect", side=side)
                if not ex.client.closed:
                    ex.client.local(ex, simple_response(
                        503, "Service Unavailable", "proxy out of file descriptors; retry",
                        b"Retry-After: 1\r\n", keep_alive=False), False)
                return
            if not ex.client.closed:
                self.state.stats[side].failed()
                self.state.health[side].failure()
                self._fail(ex, side, str(exc) or type(exc).__name__, sent=False,
                           timeout=False)
            return
        if ex.client.closed:
            self.pools[side].put(up, self.deadlines, self.cfg.idle_timeout,
                                 self.cfg.max_idle_per_backend)
            return
        self._attach(ex, up, reused=False)

    def _attach(self, ex: Exchange, up: UpstreamConn, reused: bool) -> None:
        up.exchange = ex
        up.reused = reused
        up._reset()
        ex.upstream = up
        self.state.stats[ex.side].active += 1
        ex.t0 = time.perf_counter()
        body = ex.replay if (ex.tried_fresh and ex.replay) else ex.pending
        up.transport.write(b"".join([ex.head, *body]) if body else ex.head)
        ex.pending = []
        ex.pending_size = 0
        ex.client.resume_reading()
        self.deadlines.set(up.transport, self.cfg.read_timeout)

    # -- answers -----------------------------------------------------------------------------

    def response_head(self, ex: Exchange, up: UpstreamConn) -> bytes:
        out = [b"HTTP/1.1 %d %b\r\n" % (up.status, up.reason or b"OK")]
        drop: set[bytes] = set()
        length = None
        chunked = False
        for name, value in up.headers:
            n = name.lower()
            if n == b"connection":
                drop.update(t.strip().lower() for t in value.split(b","))
            elif n == b"content-length":
                length = value
            elif n == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            if n not in HOP_BY_HOP:
                out.append(name + b": " + value + b"\r\n")
        if drop - {b"keep-alive", b"close", b"upgrade"}:
            out = [out[0]] + [line for line in out[1:]
                              if line.split(b":", 1)[0].lower() not in drop]
        out.append(ex.extra)
        if up.status == 101:
            value = next((v for n, v in up.headers if n.lower() == b"upgrade"), b"websocket")
            out.append(b"Connection: Upgrade\r\nUpgrade: " + value + b"\r\n\r\n")
            return b"".join(out)
        no_body = ex.method == b"HEAD" or up.status in (204, 304)
        up.close_delimited = not no_body and length is None and not chunked
        up.rechunk = not no_body and (chunked or up.close_delimited)
        if up.rechunk and ex.http10:
            up.rechunk = False  # HTTP/1.0 knows no chunks: the body ends when we close
            ex.keep_alive = False
        if up.rechunk:
            out.append(b"Transfer-Encoding: chunked\r\n")
        out.append(b"Connection: keep-alive\r\n\r\n" if ex.keep_alive else
                   b"Connection: close\r\n\r\n")
        return b"".join(out)

    def _settle(self, ex: Exchange, up: UpstreamConn) -> None:
        ex.upstream = None
        self.deadlines.clear(up.transport)
        stats = self.state.stats[ex.side]
        stats.active -= 1

    def finish(self, ex: Exchange, up: UpstreamConn) -> None:
        self._settle(ex, up)
        state = self.state
        state.stats[ex.side].answered(up.status, time.perf_counter() - ex.t0)
        if up.status >= 500:
            state.health[ex.side].failure()
        else:
            state.health[ex.side].success()
        reusable = up.keep and ex.body_done and not up.closed and not up.close_delimited \
            and not ex.upgrade
        if reusable:
            self.pools[ex.side].put(up, self.deadlines, self.cfg.idle_timeout,
                                    self.cfg.max_idle_per_backend)
        else:
            up.exchange = None
            up.transport.close()
        keep = ex.keep_alive and ex.body_done and not ex.upgrade
        ex.client.done(ex, keep)

    def finish_broken(self, ex: Exchange, up: UpstreamConn) -> None:
        self._settle(ex, up)
        self.state.stats[ex.side].failed()
        self.state.health[ex.side].failure()
        ex.client.transport.close()  # headers already went out: closing is the only signal

    def no_answer(self, ex: Exchange, up: UpstreamConn, why: str, *, sent: bool,
                  timeout: bool) -> None:
        """The backend gave no (usable) answer on ``up``."""
        self._settle(ex, up)
        up.exchange = None
        self.state.stats[ex.side].failed()
        self.state.health[ex.side].failure()
        if ex.client.closed:
            return
        if up.reused and not up.got_any and not ex.tried_fresh and ex.replay is not None \
                and not timeout:
            ex.tried_fresh = True  # a stale pooled socket: once more on a fresh one
            self.send(ex, ex.side, fresh=True)
            return
        self._fail(ex, ex.side, why, sent=sent, timeout=timeout)

    def _fail(self, ex: Exchange, side: Side, why: str, *, sent: bool, timeout: bool) -> None:
        if not sent:
            alt = self.state.fallback(side)  # refused before sending: safe for any method
            if alt is not None and alt != side:
                self.send(ex, alt)
                return
        status = (504, "Gateway Timeout") if timeout else (502, "Bad Gateway")
        keep = ex.keep_alive and not ex.upgrade
        ex.client.local(ex, simple_response(*status, f"{side}: {why}", keep_alive=keep), keep)

    def splice(self, ex: Exchange, up: UpstreamConn, tail: bytes) -> None:
        """After a 101: raw bytes both ways until either side closes."""
        self._settle(ex, up)
        self.state.stats[ex.side].answered(101, time.perf_counter() - ex.t0)
        client = ex.client
        up.exchange = None
        up.tunnel = client
        client.tunnel = up
        for queued in client.queue:
            queued.settle()
        client.queue.clear()
        if tail:
            client.transport.write(tail)
        pending, client.upgrade_tail = client.upgrade_tail, None
        if pending:
            up.transport.write(pending)
