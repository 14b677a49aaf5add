"""User hooks: shell commands from the cutover file, prerequisite gates, notifications.

A hook is a shell command (``docker compose -f docker-compose.green.yml up -d``,
``kubectl apply -f green.yaml``, ``systemctl stop worker@blue``) with ``{green_url}``,
``{blue_url}``, ``{url}`` (the router's public address) and ``{state_dir}`` substituted.
Its exit code decides; the tail of its output goes to the audit trail so the report
can say what happened. Steps that belong to commands pgshift does not have yet
(provision, archive, optimize, report) run as hooks and are recorded as hooks.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from pgshift.errors import UsageError
from pgshift.rollout.config import Notify, Prerequisite

TAIL = 2000  # characters of a hook's output kept in the audit trail


@dataclass(frozen=True)
class HookResult:
    command: str
    exit_code: int | None  # None: timed out
    seconds: float
    output: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def to_dict(self) -> dict[str, Any]:
        return {"command": self.command, "exit_code": self.exit_code,
                "seconds": round(self.seconds, 3), "output": self.output}


def substitute(command: str, values: dict[str, str]) -> str:
    """``{name}`` -> shell-quoted value, for the names given; other braces stay as written."""
    out = command
    for name, value in values.items():
        out = out.replace("{" + name + "}", shlex.quote(value))
    return out


def run_hook(command: str, values: dict[str, str], *, timeout: float = 600.0,
             cwd: Path | None = None) -> HookResult:
    """Run one hook through ``sh -c``; never raises for the command's own failure."""
    cmd = substitute(command, values)
    started = time.monotonic()
    try:
        proc = subprocess.run(["sh", "-c", cmd], cwd=cwd, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL, errors="replace")
        code: int | None = proc.returncode
        output = (proc.stdout + proc.stderr)[-TAIL:]
    except subprocess.TimeoutExpired as exc:
        code = None
        raw = (exc.stdout or b"") + (exc.stderr or b"")
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        output = (text + f"\n(timed out after {timeout:g}s)")[-TAIL:]
    return HookResult(cmd, code, time.monotonic() - started, output)


@dataclass(frozen=True)
class GateOutcome:
    name: str
    passed: bool
    detail: str
    figures: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "detail": self.detail,
                **self.figures}


def junit_pass_rate(path: Path) -> tuple[int, int]:
    """(passed, total) over every testcase of a JUnit XML report (skipped ones left out)."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        raise UsageError(f"cannot read the JUnit report {path}: {exc}",
                         hint="point prerequisites[].junit at a JUnit XML file") from exc
    total = passed = 0
    for case in root.iter("testcase"):
        tags = {child.tag for child in case}
        if "skipped" in tags:
            continue
        total += 1
        passed += not ({"failure", "error"} & tags)
    return passed, total


def check_prerequisite(p: Prerequisite, values: dict[str, str], *,
                       confirmations: dict[str, str]) -> GateOutcome:
    """One prerequisite gate: a command that must pass, a JUnit pass rate, or a typed
    confirmation (given up front with ``--confirm NAME=TEXT``)."""
    if p.command is not None:
        r = run_hook(p.command, values, timeout=p.timeout)
        return GateOutcome(p.name, r.ok, f"`{r.command}` exited {r.exit_code}", r.to_dict())
    if p.junit is not None:
        passed, total = junit_pass_rate(p.junit)
        rate = passed / total if total else 0.0
        ok = total > 0 and rate >= p.min_pass_rate
        return GateOutcome(p.name, ok, f"{passed}/{total} tests passed ({rate:.1%}, "
                           f"{p.min_pass_rate:.1%} required)" + ("" if total else
                                                                 ": no tests in the report"),
                           {"passed": passed, "total": total, "rate": rate})
    typed = confirmations.get(p.name)
    ok = typed is not None and typed.strip() == (p.confirm or "").strip()
    return GateOutcome(p.name, ok, "confirmed" if ok else
                       f"type the confirmation: --confirm {p.name}={p.confirm!r}", {})


def notify(settings: Notify, event: dict[str, Any]) -> list[str]:
    """Send an event to the webhook and apprise URLs; the failures (never raised)."""
    failures: list[str] = []
    url = settings.webhook
    if url and url.startswith("env:"):
        url = os.environ.get(url[4:])
    if url:
        try:
            httpx.post(url, json=event, timeout=5.0).raise_for_status()
        except httpx.HTTPError as exc:
            failures.append(f"webhook: {exc}")
    for target in settings.apprise:
        try:
            import apprise
        except ImportError:
            failures.append("apprise URLs need `pip install apprise`")
            break
        sender = apprise.Apprise()
        sender.add(os.environ.get(target[4:], "") if target.startswith("env:") else target)
        if not sender.notify(title=f"pgshift: {event.get('kind')}",
                             body=json.dumps(event, default=str)):
            failures.append(f"apprise: {target.split(':', 1)[0]} refused")
    return failures
