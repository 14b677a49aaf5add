"""Secrets out of config files before they go into an archive.

Env files (``KEY=value``, ``export KEY=value``) and compose files (``KEY: value``,
``- KEY=value``) name their secrets by key: a value whose key looks secret is
replaced whole. Any other line still passes through :func:`pgshift.dsn.redact`,
so a password inside a connection URL is removed wherever it appears.
"""

from __future__ import annotations

import re

from pgshift.dsn import redact

REDACTED = "***redacted***"
SECRET_KEY = re.compile(
    r"(pass(word|wd)?|secret|token|api[_-]?key|private[_-]?key|credential|auth|"
    r"(^|_)key$|salt|signing|cookie)",
    re.IGNORECASE)
_ASSIGNMENT = re.compile(
    r"^(?P<head>\s*(?:export\s+|-\s+)?[\"']?(?P<key>[A-Za-z_][A-Za-z0-9_.\-]*)[\"']?"
    r"\s*(?:=|:(?=\s)|:$)\s*)(?P<value>.*?)(?P<tail>\s*(?:#.*)?)$")


def redact_config(text: str) -> tuple[str, int]:
    """``text`` with secret values replaced, and how many lines were changed."""
    out: list[str] = []
    changed = 0
    for line in text.splitlines(keepends=True):
        body = line.rstrip("\r\n")
        ending = line[len(body):]
        new = body
        m = _ASSIGNMENT.match(body)
        if m and m.group("value") and SECRET_KEY.search(m.group("key")):
            new = m.group("head") + REDACTED + m.group("tail")
        else:
            new = redact(body)
        changed += new != body
        out.append(new + ending)
    return "".join(out), changed
