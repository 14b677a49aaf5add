"""PostgreSQL connection strings: ``env:VAR`` indirection, libpq defaults, redaction.

A DSN may be a URI (``postgresql://u:p@h/db``), a libpq keyword string
(``host=h dbname=db``), empty (libpq's ``PG*`` variables and ``~/.pgpass``
decide), or ``env:VAR`` naming an environment variable holding one of those.
Passwords never leave this module in anything meant for humans.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import psycopg
from psycopg import conninfo

from pgshift.errors import ConnectError, UsageError

_URI_PASSWORD = re.compile(r"(?P<head>postgres(?:ql)?://[^:/@?#]*:)(?P<pw>[^@/?#]*)(?P<tail>@)",
                           re.IGNORECASE)
# Keyword form: a quoted value may be unterminated (a malformed DSN is still redacted
# to its end); the query-parameter form is handled first so '&' ends the value there.
_QUERY_PASSWORD = re.compile(r"(?P<head>[?&]password=)(?P<pw>[^&#\s]*)", re.IGNORECASE)
_KW_PASSWORD = re.compile(
    r"(?P<head>(?<![?&\w])password\s*=\s*)(?P<pw>'(?:[^'\\]|\\.)*(?:'|$)|[^\s&]+)",
    re.IGNORECASE)


def redact(text: str) -> str:
    """Replace every password that looks embedded in ``text`` with ``***``.

    Used on DSNs and on any message that might quote one (driver errors do).
    """
    text = _URI_PASSWORD.sub(r"\g<head>***\g<tail>", text)
    text = _QUERY_PASSWORD.sub(r"\g<head>***", text)
    return _KW_PASSWORD.sub(r"\g<head>***", text)


@dataclass(frozen=True)
class Dsn:
    """A resolved connection string that prints without its password."""

    conninfo: str

    @property
    def safe(self) -> str:
        """The DSN with its password replaced, fit for logs and errors."""
        params = conninfo.conninfo_to_dict(self.conninfo)
        if "password" in params:
            params["password"] = "***"
        # The empty base conninfo is passed positionally so the keywords only fill kwargs.
        return conninfo.make_conninfo("", **params) if params else "(libpq defaults)"

    def __str__(self) -> str:
        return self.safe

    def __repr__(self) -> str:
        return f"Dsn({self.safe!r})"

    def with_dbname(self, dbname: str) -> Dsn:
        """The same server and credentials, another database."""
        return Dsn(conninfo.make_conninfo(self.conninfo, dbname=dbname))


def resolve(raw: str, *, environ: dict[str, str] | None = None) -> Dsn:
    """Resolve ``env:VAR`` and validate the syntax; raise UsageError when malformed."""
    env = os.environ if environ is None else environ
    value = raw.strip()
    if value.startswith("env:"):
        var = value[4:]
        if not var:
            raise UsageError("empty variable name in DSN 'env:'", hint="write env:DATABASE_URL")
        if var not in env:
            raise UsageError(
                f"environment variable {var} (named by the DSN env:{var}) is not set",
                hint=f"export {var}=postgresql://user@host/db",
            )
        value = env[var].strip()
    try:
        conninfo.conninfo_to_dict(value)
    except psycopg.ProgrammingError as exc:
        raise UsageError(
            f"invalid PostgreSQL DSN {redact(raw)!r}: {redact(str(exc)).strip()}",
            hint="use postgresql://user@host:5432/dbname or 'host=... dbname=...'",
        ) from exc
    return Dsn(value)


def connect(dsn: Dsn, *, autocommit: bool = False, application_name: str = "pgshift",
            connect_timeout: int = 10) -> psycopg.Connection:
    """Open a connection, turning libpq's failures into one clean ConnectError."""
    try:
        return psycopg.connect(
            dsn.conninfo,
            autocommit=autocommit,
            application_name=application_name,
            connect_timeout=connect_timeout,
        )
    except psycopg.OperationalError as exc:
        raise ConnectError(
            f"cannot connect to PostgreSQL {dsn.safe}: {_first_line(redact(str(exc)))}",
            hint=_connect_hint(str(exc)),
            operation="connect",
        ) from exc


def _first_line(message: str) -> str:
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    # libpq prefixes "connection to server at ... failed:"; the cause is what follows.
    return "; ".join(lines[:2]) if lines else "unknown error"


def _connect_hint(message: str) -> str:
    low = message.lower()
    if "password authentication failed" in low or "no password supplied" in low:
        return "check the password (DSN, PGPASSWORD or ~/.pgpass)"
    if "does not exist" in low and "database" in low:
        return "create the database first: createdb -h HOST -U USER DBNAME"
    if "connection refused" in low or "could not connect" in low or "timeout" in low:
        return "check that PostgreSQL is running and the host/port are right (pg_isready -h HOST)"
    if "could not translate host name" in low:
        return "check the host name in the DSN"
    return "check the DSN with: psql 'DSN' -c 'select 1'"
