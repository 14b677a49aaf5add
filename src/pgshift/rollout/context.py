"""What every step of a rollout works with: the cutover file, the journal, the router, the
services, and one place to say, audit and notify."""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pgshift.dsn import Dsn, redact, redact_all, resolve
from pgshift.errors import UsageError
from pgshift.rollout import hooks
from pgshift.rollout.config import Cutover
from pgshift.rollout.journal import Journal
from pgshift.rollout.procs import Supervisor
from pgshift.state import StateDir
from pgshift.traffic.router import Router

PROXY = "proxy"


@dataclass
class Context:
    cfg: Cutover
    cutover_path: Path
    state: StateDir
    journal: Journal
    procs: Supervisor
    confirmations: dict[str, str] = field(default_factory=dict)
    say: Callable[[str], None] = field(default=lambda line: print(line, file=sys.stderr,
                                                                   flush=True))
    on_event: Callable[[str, dict[str, Any]], None] | None = None
    _router: Router | None = None

    @classmethod
    def open(cls, cutover_path: Path, cfg: Cutover, base: Path, **kw: Any) -> Context:
        state = StateDir.for_name(base, cfg.name).ensure()
        return cls(cfg, cutover_path, state, Journal(state), Supervisor(state.root), **kw)

    def close(self) -> None:
        if self._router is not None:
            close = getattr(self._router, "close", None)
            if callable(close):
                close()
            self._router = None
        self.journal.close()

    # -- settings as they run ----------------------------------------------------------------

    def secs(self, value: float) -> float:
        return self.cfg.seconds(value)

    def dsn(self) -> Dsn:
        return resolve(self.cfg.target.dsn)

    @property
    def schema(self) -> str:
        return self.cfg.target.schema_

    @property
    def public_url(self) -> str:
        r = self.cfg.router
        if r.kind in ("embedded", "haproxy"):
            return f"http://{r.listen}"
        return r.options.get("url", self.cfg.apps.blue.url)

    def values(self) -> dict[str, str]:
        """What hooks may substitute."""
        return {"green_url": self.cfg.apps.green.url, "blue_url": self.cfg.apps.blue.url,
                "url": self.public_url, "state_dir": str(self.state.root),
                "sqlite": str(self.cfg.source.sqlite), "name": self.cfg.name}

    # -- the router ----------------------------------------------------------------------------

    def admin_token(self) -> str:
        """The embedded proxy's admin token: the variable ``router.token`` names, else one
        generated for a managed proxy and kept (0600) in the state directory so a resumed
        engine and the operator verbs reach the same proxy."""
        var = self.cfg.router.token[4:]
        if os.environ.get(var):
            return os.environ[var]
        path = self.state.root / "procs" / "proxy.token"
        if path.exists():
            return path.read_text().strip()
        if not self.cfg.router.managed:
            raise UsageError(f"the embedded proxy's admin token is needed: ${var} is not set",
                             hint=f"export {var}=<the proxy's --token>")
        # Two processes may get here at once (the engine and a dashboard or a verb): the
        # first to publish wins and the other reads its token, never overwrites it (the
        # proxy would keep a token nobody else has). Written aside, then hard-linked into
        # place: the link fails when the file exists and is never seen half written.
        path.parent.mkdir(parents=True, exist_ok=True)
        aside = path.with_name(f".proxy.token.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(24))
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(aside, path)
        except FileExistsError:
            pass
        finally:
            aside.unlink()
        return path.read_text().strip()

    @property
    def router(self) -> Router:
        if self._router is None:
            from pgshift.traffic.factory import open_router

            r = self.cfg.router
            if r.kind == "embedded":
                from pgshift.traffic.embedded import EmbeddedRouter

                self._router = EmbeddedRouter(f"http://{r.admin}", self.admin_token())
            elif r.kind == "haproxy":
                assert r.haproxy is not None
                self._router = open_router("haproxy", socket_path=str(r.haproxy.socket),
                                           map_file=str(r.haproxy.map_file))
            else:
                self._router = open_router(r.kind, options=dict(r.options))
        # Every change carries this controller's epoch where the router can check it, so a
        # controller that lost its lease is refused by the router too, not only by the
        # journal (the lease may move between our last journal write and a router call).
        fence = getattr(self._router, "fence_epoch", None)
        if fence is not None and self.journal.epoch is not None:
            fence(self.journal.epoch)
        return self._router

    # -- telling ---------------------------------------------------------------------------------

    def event(self, step: str, kind: str, message: str,
              figures: dict[str, Any] | None = None, *, notify: bool = False) -> None:
        """One line for the operator, one audit event; a notification when it matters.
        The message and figures may quote a DSN (an error's text): redacted once, here,
        for the terminal, the audit trail and the webhook alike."""
        message, figures = redact(message), redact_all(figures or {})
        self.say(f"[{step}] {message}")
        self.state.audit(step, kind, message, figures or {})
        if self.on_event is not None:
            self.on_event(kind, {"step": step, "message": message, **(figures or {})})
        if notify and (self.cfg.notify.webhook or self.cfg.notify.apprise):
            failures = hooks.notify(self.cfg.notify, {"cutover": self.cfg.name, "step": step,
                                                      "kind": kind, "message": message,
                                                      "figures": figures or {}})
            for f in failures:
                self.state.audit(step, "notify-failed", f)

    def hook(self, step: str, command: str, *, timeout: float = 600.0) -> hooks.HookResult:
        """Run a user hook and record it (command, exit code, output tail)."""
        result = hooks.run_hook(command, self.values(), timeout=timeout,
                                cwd=self.cutover_path.parent)
        self.state.audit(step, "hook", f"`{result.command}` exited {result.exit_code}",
                         result.to_dict())
        return result
