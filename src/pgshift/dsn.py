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
from typing import Any

import psycopg
from psycopg import conninfo

from pgshift.errors import ConnectError, UsageError

# Any scheme's userinfo (SQLAlchemy's ``postgresql+psycopg2://``, ``mysql://``, ...). The
# password runs greedily to the *last* '@' of the token, so an unencoded '/' or '@' inside
# it is redacted whole rather than cut at its first '/' or '@'.
_URI_PASSWORD = re.compile(
    r"(?P<head>\b[a-z][a-z0-9+.\-]*://[^\s:/@'\"]*:)(?P<pw>[^\s'\"]*)(?P<tail>@)",
    re.IGNORECASE)
# Words that name a credential in keyword strings, query parameters and JSON-ish text.
_SECRET_WORDS = (r"(?:ssl)?password|passwd|pwd|passphrase|secret|(?:access_|auth_|api_)?token"
                 r"|api_?key|access_?key|secret_?key|private_?key")
# Keyword form: a quoted value may be unterminated (a malformed DSN is still redacted
# to its end); the query-parameter form is handled first so '&' ends the value there.
_QUERY_PASSWORD = re.compile(rf"(?P<head>[?&](?:{_SECRET_WORDS})=)(?P<pw>[^&#\s]*)",
                             re.IGNORECASE)
_KW_PASSWORD = re.compile(
    rf"(?P<head>(?<![?&\w])(?:{_SECRET_WORDS})\s*=\s*)"
    r"(?P<pw>'(?:[^'\\]|\\.)*(?:'|$)|[^\s&]+)",
    re.IGNORECASE)
_JSON_PASSWORD = re.compile(
    rf"(?P<head>[\"'](?:{_SECRET_WORDS})[\"']\s*:\s*)(?P<pw>\"(?:[^\"\\]|\\.)*\"?|'[^']*'?)",
    re.IGNORECASE)
_SCHEME = re.compile(r"^(?P<scheme>[a-z][a-z0-9+.\-]*)://", re.IGNORECASE)
_PG_SCHEMES = ("postgresql", "postgres")


def redact_all(value: Any) -> Any:
    """``value`` with :func:`redact` applied to every string in it (dicts, lists and
    tuples walked): for views built from journals and audit trails, whose texts are
    written by people and errors and may quote a DSN."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_all(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact_all(v) for v in value)
    return value


def redact(text: str) -> str:
    """Replace every credential that looks embedded in ``text`` with ``***``.

    Used on DSNs and on any message that might quote one (driver errors do): URI
    userinfo of any scheme, ``password=``/``passwd=``/``token=``-style keywords and
    query parameters, and ``"password": "..."`` pairs.
    """
    text = _URI_PASSWORD.sub(r"\g<head>***\g<tail>", text)
    text = _QUERY_PASSWORD.sub(r"\g<head>***", text)
    text = _JSON_PASSWORD.sub(r"\g<head>***", text)
    return _KW_PASSWORD.sub(r"\g<head>***", text)


@dataclass(frozen=True)
class Dsn:
    """A resolved connection string that prints without its password."""

    conninfo: str

    @property
    def safe(self) -> str:
        """The DSN with its password replaced, fit for logs and errors."""
        params = conninfo.conninfo_to_dict(self.conninfo)
        for secret in ("password", "sslpassword"):
            if secret in params:
                params[secret] = "***"
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
    """Resolve ``env:VAR`` and validate the syntax; raise UsageError when malformed.

    A SQLAlchemy-style ``postgresql+DRIVER://`` URL (what many apps keep in
    ``DATABASE_URL``) is accepted as ``postgresql://``. A DSN that cannot be parsed is
    never echoed, not even redacted: the error names only its shape and where it came from.
    """
    env = os.environ if environ is None else environ
    value = raw.strip()
    origin = "the DSN argument"
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
        origin = f"the DSN in ${var}"
    value = _normalise_scheme(value, origin)
    _refuse_unencoded_userinfo(value, origin)
    try:
        conninfo.conninfo_to_dict(value)
    except psycopg.ProgrammingError as exc:
        raise UsageError(
            f"{origin} is not a valid PostgreSQL DSN ({_parse_problem(str(exc))})",
            hint="use postgresql://user@host:5432/dbname or 'host=... dbname=...' "
                 "(password in PGPASSWORD or ~/.pgpass)",
        ) from None  # the cause quotes the DSN, password included
    return Dsn(value)


def _normalise_scheme(value: str, origin: str) -> str:
    """``postgresql+psycopg2://`` -> ``postgresql://``; refuse other databases' URLs."""
    match = _SCHEME.match(value)
    if not match:
        return value
    scheme = match.group("scheme").lower()
    base = scheme.split("+", 1)[0]
    if base not in _PG_SCHEMES:
        raise UsageError(
            f"{origin} is a {base!r} URL, not a PostgreSQL DSN",
            hint="give the PostgreSQL target: postgresql://user@host:5432/dbname")
    return "postgresql://" + value[match.end():]


def _refuse_unencoded_userinfo(value: str, origin: str) -> None:
    """Refuse a URI whose password holds an unencoded '/', '@', '?' or '#'.

    libpq would cut the URI at that character and take the rest of the password for a
    host, port or database name, which then appears in every connection error.
    """
    if not value.startswith("postgresql://"):
        return
    rest = value[len("postgresql://"):]
    at = rest.rfind("@")
    if at < 0:
        return
    userinfo = rest[:at]
    if ":" in userinfo and re.search(r"[/@?#]", userinfo.split(":", 1)[1]):
        raise UsageError(
            f"the password in {origin} holds an unencoded '/', '@', '?' or '#'",
            hint="percent-encode it (/ -> %2F, @ -> %40, ? -> %3F, # -> %23) or move it to "
                 "PGPASSWORD or ~/.pgpass")
    if "@" in userinfo:
        raise UsageError(
            f"the user name in {origin} holds an unencoded '@'",
            hint="percent-encode it (@ -> %40)")


# libpq's parse errors quote the whole DSN; only these fixed facts are repeated.
_PARSE_PROBLEMS = (
    ("unterminated quoted string", "unterminated quoted string"),
    ('missing "="', "a keyword without '=' (a URI must start with postgresql://)"),
    ("invalid connection option", "an unknown keyword (the password keyword is 'password')"),
    ("invalid uri query parameter", "an unknown URI query parameter"),
    ("ipv6", "an unterminated IPv6 address"),
    ("percent-encoded", "a malformed percent-encoding"),
    ("invalid integer", "a port that is not a number"),
)


def _parse_problem(message: str) -> str:
    low = message.lower()
    for needle, fact in _PARSE_PROBLEMS:
        if needle in low:
            return fact
    return "libpq cannot parse it"


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
