"""Secrets out of config files before they go into an archive.

Env files (``KEY=value``, ``export KEY=value``) and compose files (``KEY: value``,
``- KEY=value``) name their secrets by key: a value whose key looks secret is
replaced whole. Any other line still loses the password of every URL in it
(``redis://:pw@cache``, ``amqp://u:pw@mq``) and of every PostgreSQL DSN
(:func:`pgshift.dsn.redact`), wherever it appears.
"""

from __future__ import annotations

import re

from pgshift.dsn import redact

REDACTED = "***redacted***"
SECRET_KEY = re.compile(
    r"(pass(word|wd)?|secret|token|api[_-]?key|private[_-]?key|credential|auth|"
    r"(^|_)key$|salt|signing|cookie)",
    re.IGNORECASE)
# scheme://[user]:password@host — any scheme; the user part may be empty (redis://:pw@h).
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)(?P<pw>[^@\s/]+)@")
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
            new = _URL_PASSWORD.sub(r"\g<head>***@", redact(body))
        changed += new != body
        out.append(new + ending)
    return "".join(out), changed
