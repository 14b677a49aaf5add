"""The dashboard's web server: stdlib ``http.server``, one thread per request, local by
default.

Routes: ``GET /`` (the page, server-rendered), ``GET /api/state`` (the snapshot as JSON),
``GET /events`` (the same, as server-sent events whenever a new reading is taken),
``POST /api/verb`` (an operator verb through ``pgshift.rollout.verbs.request``, the
library call behind ``pgshift pause|rollback|...``), ``POST /login`` and ``GET /?token=``
(sign in: an HttpOnly, SameSite=Strict cookie for this browser, then a redirect that drops
the token from the address bar).

Security model (docs/dashboard.md):
- Every route but the sign-in needs the admin token: the variable the cutover's
  ``router.token`` names when it is set, else a token generated at start and printed once
  in the startup URL (like Jupyter). ``Authorization: Bearer`` or the session cookie
  (an HMAC of the token, never the token itself). Missing: 401; wrong: 403.
- A POST must come from the page itself: an ``Origin`` (or ``Sec-Fetch-Site``) that is
  not this server's is refused (403, CSRF); a cookie-authenticated POST without either is
  refused too. On a loopback address the ``Host`` header must name the server (DNS
  rebinding).
- A verb needs a reason and the verb typed again as confirmation.
- Nothing is logged: the request line of the sign-in URL holds the token. Pages carry a
  strict Content-Security-Policy (inline style and script admitted by a per-response nonce).
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from collections.abc import Callable
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from pgshift.dashboard.live import Sampler, Snapshot
from pgshift.dashboard.page import render_login, render_page, render_result, texts
from pgshift.dsn import redact
from pgshift.errors import PgshiftError, UsageError
from pgshift.rollout.journal import VERBS
from pgshift.rollout.verbs import (
    VerbResult,
    approve,
    note,
    open_context,
    open_for_rollback,
    request,
)
from pgshift.traffic.proxy.config import is_loopback

MAX_BODY = 64 * 1024
KEEPALIVE = 15.0  # seconds between SSE comments when nothing changed (proxies drop idle streams)


def _session(token: str) -> str:
    """The cookie's value: proves the token was given without storing it in the browser."""
    return hmac.new(token.encode(), b"pgshift-dashboard-session", hashlib.sha256).hexdigest()


# what people add besides the engine's verbs: an approval (as a role) and a note
PEOPLE = ("approve", "note")


def run_verb(cutover: Path, verb: str, reason: str, actor: str, role: str = "") -> VerbResult:
    """What ``pgshift VERB CUTOVER -m REASON --actor ACTOR`` does, as a library call
    (``approve --as ROLE -m NOTE`` and ``note TEXT`` too)."""
    opener = open_for_rollback if verb == "rollback" else open_context
    ctx = opener(cutover, say=lambda _: None)
    try:
        if verb == "approve":
            done = approve(ctx, role, actor=actor, note=reason)
            return VerbResult(verb, f"{role} approved by {done.actor}; still missing: "
                                    f"{', '.join(done.missing) or 'none'}", False)
        if verb == "note":
            note(ctx, reason, actor=actor)
            return VerbResult(verb, "noted in the audit trail", False)
        return request(ctx, verb, reason=reason, actor=actor)
    finally:
        ctx.close()


class Dashboard:
    """A dashboard server for one cutover. ``start()`` serves in a thread (what
    ``pgshift rollout --dashboard`` does); ``stop()`` ends it."""

    def __init__(self, cutover: Path, *, host: str = "127.0.0.1", port: int = 0,
                 interval: float = 1.0) -> None:
        self.cutover = cutover
        self.sampler = Sampler(cutover, interval=interval)
        var = self.sampler.cfg.router.token[4:]  # config guarantees env:VAR
        given = os.environ.get(var)
        self.token_var = var
        self.token_source = "cutover" if given else "generated"
        self._token = given or secrets.token_urlsafe(24)
        try:
            self.httpd = _Server((host, port), _Handler)
        except OSError as exc:
            raise UsageError(f"the dashboard cannot listen on {host}:{port}: {exc.strerror}",
                             hint="--port 0 picks a free port") from exc
        self.httpd.dashboard = self
        self.host = host
        self.port = int(self.httpd.server_address[1])
        self._thread: threading.Thread | None = None
        self._busy = 0  # verbs being carried out
        self._busy_lock = threading.Lock()

    @property
    def busy(self) -> bool:
        """Whether a verb is being carried out."""
        return self._busy > 0

    def verb(self, verb: str, reason: str, actor: str, role: str = "") -> VerbResult:
        """Carry out an operator verb (counted, so ``stop(grace)`` can wait for it)."""
        with self._busy_lock:
            self._busy += 1
        try:
            return run_verb(self.cutover, verb, reason, actor, role)
        finally:
            with self._busy_lock:
                self._busy -= 1

    @property
    def url(self) -> str:
        """The page's address, without the token."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def startup_url(self) -> str:
        """The URL to print once at start: with the token when it was generated here (the
        operator has no other way to learn it); without it when it is the cutover's own."""
        return self.url + (f"?token={self._token}" if self.token_source == "generated" else "")

    @property
    def cookie_name(self) -> str:
        """The session cookie's name."""
        return f"pgshift_dashboard_{self.port}"  # cookies ignore ports: one per dashboard

    def check_token(self, given: str) -> bool:
        """Whether ``given`` is the admin token (constant time)."""
        return hmac.compare_digest(given.encode(), self._token.encode())

    def check_session(self, value: str) -> bool:
        """Whether ``value`` is this dashboard's session cookie (constant time)."""
        return hmac.compare_digest(value.encode(), _session(self._token).encode())

    def session_cookie(self) -> str:
        """The ``Set-Cookie`` value after a sign-in."""
        return (f"{self.cookie_name}={_session(self._token)}; HttpOnly; SameSite=Strict; "
                "Path=/")

    def start(self) -> Dashboard:
        """Sample and serve in threads; returns once the first reading is published."""
        self.sampler.start()
        self._thread = threading.Thread(target=self.httpd.serve_forever,
                                        kwargs={"poll_interval": 0.2},
                                        name="pgshift-dashboard", daemon=True)
        self._thread.start()
        return self

    def stop(self, grace: float = 0.0) -> None:
        """Stop serving (open event streams end too) and close the journal. With ``grace``
        (seconds), first publish one last reading to the open pages and let verbs in flight
        answer: ``rollout --dashboard`` ends with the rollout, and the page should show how
        it ended."""
        if grace > 0 and self._thread is not None:
            deadline = time.monotonic() + grace
            self.sampler.refresh(grace)
            while self.busy and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))  # streams flush
        self.sampler.stop()
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join(timeout=10)
        self.httpd.server_close()

    def payload(self, snap: Snapshot | None = None) -> dict[str, Any]:
        """The snapshot plus the page's strings (what ``/api/state`` and ``/events`` send)."""
        d = (snap or self.sampler.latest()).to_dict()
        d["text"] = texts(d)
        return d


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    dashboard: Dashboard


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "pgshift-dashboard"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        """Silent on purpose: the sign-in URL's request line holds the token."""

    @property
    def dash(self) -> Dashboard:
        return self.server.dashboard

    # -- responses ---------------------------------------------------------------------------

    def _send(self, code: int, body: str | bytes, ctype: str, *, nonce: str | None = None,
              headers: dict[str, str] | None = None) -> None:
        raw = body.encode() if isinstance(body, str) else body
        self.send_response(code)
        self._common_headers(ctype, nonce)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(raw)

    def _common_headers(self, ctype: str, nonce: str | None) -> None:
        csp = ("default-src 'none'; connect-src 'self'; img-src 'self' data:; "
               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
        if nonce:
            csp += f"; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'"
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Security-Policy", csp)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Cache-Control", "no-store")

    def _json(self, code: int, obj: Any) -> None:
        self._send(code, json.dumps(obj, default=str), "application/json")

    def _html(self, code: int, render: Callable[[str], str],
              headers: dict[str, str] | None = None) -> None:
        nonce = secrets.token_urlsafe(16)
        self._send(code, render(nonce), "text/html; charset=utf-8", nonce=nonce,
                   headers=headers)

    def _denied(self, code: int, why: str, *, html: bool) -> None:
        if html:
            self._html(code, lambda n: render_login(n, why))
        else:
            self._json(code, {"error": why})

    def _redirect_home(self, cookie: bool) -> None:
        self._send(303, b"", "text/plain", headers={
            "Location": "/", **({"Set-Cookie": self.dash.session_cookie()} if cookie else {})})

    # -- checks ------------------------------------------------------------------------------

    def _host_ok(self) -> bool:
        """On a loopback address the Host header must name this server (DNS rebinding)."""
        if not is_loopback(self.dash.host):
            return True
        port = self.dash.port
        allowed = {f"{h}:{port}" for h in ("127.0.0.1", "localhost", "[::1]", self.dash.host)}
        return (self.headers.get("Host") or "").lower() in allowed

    def _auth(self) -> tuple[str, str]:
        """(``ok`` | ``missing`` | ``wrong``, ``header`` | ``cookie`` | ``""``)."""
        header = self.headers.get("Authorization") or ""
        if header:
            scheme, _, value = header.partition(" ")
            ok = scheme.lower() == "bearer" and self.dash.check_token(value.strip())
            return ("ok" if ok else "wrong"), "header"
        cookie = SimpleCookie()
        try:
            cookie.load(self.headers.get("Cookie") or "")
        except Exception:  # a malformed Cookie header is no cookie
            cookie = SimpleCookie()
        morsel = cookie.get(self.dash.cookie_name)
        if morsel is not None:
            return ("ok" if self.dash.check_session(morsel.value) else "wrong"), "cookie"
        return "missing", ""

    def _same_origin(self, via: str) -> bool:
        """CSRF: a browser names where a POST comes from; it must be this page."""
        origin = self.headers.get("Origin")
        if origin is not None:
            return origin.lower() == f"http://{self.headers.get('Host', '')}".lower()
        site = self.headers.get("Sec-Fetch-Site")
        if site is not None:
            return site in ("same-origin", "none")
        return via == "header"  # not a browser: a header token cannot be sent cross-site

    def _body(self) -> dict[str, str] | None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            return None
        raw = self.rfile.read(length) if length else b""
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        try:
            if ctype == "application/json":
                data = json.loads(raw or b"{}")
                return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) \
                    else None
            return {k: v[0] for k, v in parse_qs(raw.decode(), keep_blank_values=True).items()}
        except (ValueError, UnicodeDecodeError):
            return None

    # -- GET ---------------------------------------------------------------------------------

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if not self._host_ok():
            return self._json(403, {"error": "unknown Host header"})
        token = parse_qs(url.query).get("token")
        if url.path == "/" and token:
            if self.dash.check_token(token[0]):
                return self._redirect_home(cookie=True)
            return self._denied(403, "that token is not this dashboard's", html=True)
        status, _ = self._auth()
        wants_html = url.path == "/"
        if url.path not in ("/", "/api/state", "/events"):
            return self._json(404, {"error": "not found"})
        if status != "ok":
            return self._denied(401 if status == "missing" else 403,
                                "sign in with the admin token" if status == "missing"
                                else "the token or session is not this dashboard's",
                                html=wants_html)
        if url.path == "/":
            snap = self.dash.payload()
            return self._html(200, lambda n: render_page(snap, n))
        if url.path == "/api/state":
            return self._json(200, self.dash.payload())
        return self._events()

    def _events(self) -> None:
        self.send_response(200)
        self._common_headers("text/event-stream", None)
        self.end_headers()
        sampler = self.dash.sampler
        seq = -1
        try:
            self.wfile.write(b"retry: 2000\n\n")
            while not sampler.stopped:
                snap = sampler.wait_newer(seq, KEEPALIVE)
                if sampler.stopped:
                    break
                if snap.seq == seq:
                    self.wfile.write(b": keep-alive\n\n")
                else:
                    seq = snap.seq
                    data = json.dumps(self.dash.payload(snap), default=str)
                    self.wfile.write(f"id: {seq}\ndata: {data}\n\n".encode())
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            return  # the page went away

    # -- POST --------------------------------------------------------------------------------

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        html = "application/json" not in (self.headers.get("Accept") or "") and \
            "application/json" not in (self.headers.get("Content-Type") or "")
        if not self._host_ok():
            return self._json(403, {"error": "unknown Host header"})
        if url.path == "/login":
            return self._login()
        if url.path != "/api/verb":
            return self._json(404, {"error": "not found"})
        status, via = self._auth()
        if status != "ok":
            return self._denied(401 if status == "missing" else 403,
                                "the admin token is required" if status == "missing"
                                else "the token or session is not this dashboard's", html=html)
        if not self._same_origin(via):
            return self._denied(403, "cross-site request refused", html=False)
        form = self._body()
        if form is None:
            return self._json(400, {"error": "unreadable request body"})
        verb, reason = form.get("verb", ""), form.get("reason", "").strip()
        role = form.get("role", "").strip()
        problem = _problem(verb, reason, role, form.get("confirm", "").strip())
        if problem:
            return self._verb_answer(400, verb, problem, html)
        try:
            res = self.dash.verb(verb, reason[:500], _actor(), role)
        except PgshiftError as exc:
            return self._verb_answer(409 if isinstance(exc, UsageError) else 502, verb,
                                     redact(exc.message), html)
        if html:
            return self._html(200, lambda n: render_result(verb, res.outcome, True, n))
        return self._json(200, {"verb": verb, "outcome": redact(res.outcome),
                                "by_engine": res.by_engine})

    def _verb_answer(self, code: int, verb: str, problem: str, html: bool) -> None:
        if html:
            return self._html(code, lambda n: render_result(verb, problem, False, n))
        return self._json(code, {"verb": verb, "error": problem})

    def _login(self) -> None:
        if not self._same_origin(""):
            return self._denied(403, "cross-site request refused", html=True)
        form = self._body() or {}
        if self.dash.check_token(form.get("token", "")):
            return self._redirect_home(cookie=True)
        return self._denied(403, "that token is not this dashboard's", html=True)


def _problem(verb: str, reason: str, role: str, confirm: str) -> str | None:
    """Why a control's form is refused (checked again here: a browser's form validation
    is no guarantee), or None. A note changes nothing: it needs only its text."""
    if verb not in (*VERBS, *PEOPLE):
        return f"unknown verb {verb!r}"
    if not reason:
        return "a note is required" if verb == "note" else "a reason is required"
    if verb == "approve" and not role:
        return "the role to approve as is required"
    if verb != "note" and confirm != verb:
        return f"type {verb!r} to confirm"
    return None


def _actor() -> str:
    """Who pressed the button, as far as this process knows, marked as the dashboard's."""
    try:
        who = getpass.getuser()
    except (KeyError, OSError):
        who = f"uid:{os.getuid()}"
    return f"{who} (dashboard)"
