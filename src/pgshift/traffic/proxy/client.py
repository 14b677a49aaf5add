"""One client connection of the embedded proxy: parse, bound, queue, answer in order.

Bounds every client gets, whatever it sends (docs/traffic.md, "Hostile clients"):

- a request head must be complete ``header_timeout`` seconds after the connection opened
  (first request) or after its first byte (later ones): else 408 and close -- a client
  that sends ``GET / HTTP/1.1\\r\\n`` and then nothing cannot hold a socket for ever;
- a request head larger than ``max_header_size`` bytes gets 431 and the connection is
  closed: counted as the head streams in, so one endless header line is cut off after
  at most one read (httptools would otherwise buffer it whole);
- past ``max_connections`` open connections a new one gets 503 and is closed;
- an idle keep-alive connection is closed after ``CLIENT_IDLE`` seconds.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import httptools

from pgshift.traffic.proxy.exchange import CLIENT_IDLE, MAX_PIPELINE, Exchange, simple_response


class ClientConn(asyncio.Protocol):
    """One client connection: parses requests (pipelined ones queue up) and answers in order."""

    def __init__(self, server: Any) -> None:
        self.server = server  # the ProxyServer
        self.cfg = server.cfg
        self.deadlines = server.deadlines
        self.parser = httptools.HttpRequestParser(self)
        self.queue: deque[Exchange] = deque()
        self.cur: Exchange | None = None
        self.transport: Any = None
        self.ip = b""
        self.trusted = False  # a --trusted-proxy: its X-Forwarded-* are kept
        self.closed = False
        self.registered = False  # counted in server.clients (not a refused connection)
        self.refused = False  # answered and closing: ignore anything more it sends
        self.tunnel: Any = None  # the UpstreamConn after a 101
        self.upgrade_tail: bytes | None = None  # bytes after an Upgrade request's head
        self.reading_paused = False
        self.key = b""
        self.bucket = 0
        self.new_key = b""  # the cohort key the proxy made up for this connection
        self.new_cookie: bytes | None = None
        self.in_head = False  # a request head is awaited or partly read
        self.head_size = 0  # bytes of the current head seen by the parser callbacks
        self.head_raw = 0  # bytes of the current head counted from whole reads

    # -- transport events ------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        server = self.server
        peer = transport.get_extra_info("peername")
        ip = peer[0] if isinstance(peer, tuple) else "unix"
        self.ip = ip.encode()
        if len(server.clients) >= server.max_connections:
            self.refused = True
            server.state.refusals("connection_limit", peer=ip, limit=server.max_connections)
            transport.write(simple_response(503, "Service Unavailable",
                                            "too many connections; retry",
                                            b"Retry-After: 1\r\n", keep_alive=False))
            transport.close()
            return
        self.registered = True
        self.trusted = server.cfg.trusts(ip)
        server.clients.add(self)
        server.state.clients += 1
        server.deadlines.on_expire[transport] = self._expired
        self.in_head = True
        server.deadlines.set(transport, server.cfg.header_timeout)

    def _expired(self) -> None:
        """The deadline passed: a late head gets 408, an idle keep-alive just a close."""
        if self.in_head and not self.queue:
            self.refuse(408, "Request Timeout", "request head not received in time",
                        "header_timeout")
        else:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.transport.write(data)
            return
        if self.refused:
            return
        if self.upgrade_tail is not None:
            self.upgrade_tail += data  # waiting for the backend's 101
            return
        started = self.in_head and self.cur is not None
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self.upgrade_tail = data[exc.args[0]:]
        except httptools.HttpParserError as exc:
            if not self.refused:
                self.refuse(400, "Bad Request", "bad request", "bad_request",
                            detail=str(exc)[:100])
            return
        if self.in_head and self.cur is not None and not self.refused:
            # the head is still incomplete: a read that began inside it is all head bytes
            if started:
                self.head_raw += len(data)
            if max(self.head_raw, self.head_size) > self.cfg.max_header_size:
                self._too_large()

    def _too_large(self) -> None:
        limit = self.server.cfg.max_header_size
        self.refuse(431, "Request Header Fields Too Large",
                    f"request head larger than {limit} bytes", "head_too_large", limit=limit)

    def refuse(self, status: int, reason: str, why: str, event: str, **fields: Any) -> None:
        """Answer ``status`` and close (only close if earlier answers are still owed)."""
        self.refused = True
        self.server.state.refusals(event, peer=self.ip.decode(), status=status, **fields)
        if not self.queue and not self.closed:
            self.transport.write(simple_response(status, reason, why, keep_alive=False))
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.registered:
            return
        server = self.server
        server.deadlines.clear(self.transport)
        server.deadlines.on_expire.pop(self.transport, None)
        server.clients.discard(self)
        server.state.clients -= 1
        for ex in self.queue:
            ex.settle()
            if ex.fence_timer is not None:
                ex.fence_timer.cancel()
                server.unqueue(ex)
            up = ex.upstream
            if up is not None and up.exchange is ex:
                server._settle(ex, up)
                up.abandon()
        self.queue.clear()
        if self.tunnel is not None:
            self.tunnel.transport.close()

    def pause_writing(self) -> None:
        ex = self.queue[0] if self.queue else None
        up = self.tunnel or (ex.upstream if ex else None)
        if up is not None and not up.transport.is_closing():
            up.transport.pause_reading()

    def resume_writing(self) -> None:
        ex = self.queue[0] if self.queue else None
        up = self.tunnel or (ex.upstream if ex else None)
        if up is not None and not up.transport.is_closing():
            up.transport.resume_reading()

    def pause_reading(self) -> None:
        if not self.reading_paused and not self.transport.is_closing():
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.reading_paused and not self.transport.is_closing():
            self.reading_paused = False
            self.transport.resume_reading()

    # -- parser callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.cur = Exchange(self)
        self.head_size = self.head_raw = 0
        if not self.in_head:  # a later request: its head's deadline runs from its first byte
            self.in_head = True
            self.deadlines.set(self.transport, self.cfg.header_timeout)

    def on_url(self, url: bytes) -> None:
        assert self.cur is not None
        self.cur.url += url
        self.head_size += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.cur is not None
        self.cur.headers.append((name, value))
        self.head_size += len(name) + len(value) + 4

    def on_headers_complete(self) -> None:
        ex = self.cur
        assert ex is not None
        self.in_head = False
        self.deadlines.clear(self.transport)
        if self.head_size > self.cfg.max_header_size:
            self._too_large()
            raise httptools.HttpParserError("head too large")  # stop this feed
        p = self.parser
        ex.method = p.get_method()
        ex.keep_alive = p.should_keep_alive()
        ex.http10 = p.get_http_version() == "1.0"
        self.queue.append(ex)
        ex.prepare(self.cfg, self.server.cohort_header)
        if len(self.queue) == 1:
            self.server.start(ex)
        elif len(self.queue) >= MAX_PIPELINE:
            self.pause_reading()  # answer some before reading more

    def on_body(self, body: bytes) -> None:
        assert self.cur is not None
        self.cur.body(body)

    def on_message_complete(self) -> None:
        assert self.cur is not None
        self.cur.end()

    # -- answers ----------------------------------------------------------------------------

    def local(self, ex: Exchange, response: bytes, keep: bool) -> None:
        """Answer ``ex`` from the proxy itself (its body, if any, is read and dropped)."""
        if self.closed:
            return
        self.transport.write(response)
        if ex.body_done:
            self.done(ex, keep)
        else:
            ex.pending.clear()
            ex.finish_on_body_end = keep
            self.resume_reading()

    def done(self, ex: Exchange, keep: bool) -> None:
        """``ex`` is answered: next pipelined request, idle wait, or close."""
        ex.settle()
        if self.closed:
            return
        if self.queue and self.queue[0] is ex:
            self.queue.popleft()
        if not keep or self.upgrade_tail is not None:  # (CONNECT, or an upgrade refused)
            self.transport.close()
            return
        self.resume_reading()
        if self.queue:
            self.server.start(self.queue[0])
        elif not self.in_head:
            self.deadlines.set(self.transport, CLIENT_IDLE)
