"""One error hierarchy for the whole product.

Every error a user can cause or meet carries the exit code of DESIGN.md's table,
the operation it interrupted, and a hint (``Try: ...``). The CLI turns them into
one ``Error:`` line; nothing below the CLI prints.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Exit codes shared by every command (docs/architecture.md)."""

    OK = 0
    DIFFERENCES = 1  # verify found differences, preflight/ledger checks failed
    USAGE = 2  # bad input or usage
    REJECTS = 3  # completed, but some values were rejected
    SOURCE = 4  # SQLite failure
    TARGET = 5  # PostgreSQL failure
    ABORTED = 6  # aborted / rolled back
    INTERNAL = 10  # a bug: please report


class PgshiftError(Exception):
    """Base of every error pgshift raises on purpose.

    ``hint`` is an exact next step for the user; ``table``/``key`` locate data
    problems. Subclasses fix the exit code.
    """

    exit_code: ExitCode = ExitCode.INTERNAL

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        operation: str | None = None,
        table: str | None = None,
        key: object | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.operation = operation
        self.table = table
        self.key = key

    def __str__(self) -> str:
        return self.message


class UsageError(PgshiftError):
    """Bad input: a wrong path, a malformed DSN, an impossible option combination."""

    exit_code = ExitCode.USAGE


class SourceError(PgshiftError):
    """The SQLite side failed (I/O, corruption, locking) after the input was accepted."""

    exit_code = ExitCode.SOURCE


class TargetError(PgshiftError):
    """The PostgreSQL side failed after the connection was accepted."""

    exit_code = ExitCode.TARGET


class ConnectError(UsageError):
    """The target cannot be reached or refuses our credentials: an input problem (exit 2)."""


class LockedError(UsageError):
    """Another pgshift run holds the lock on the same target."""


class AbortedError(PgshiftError):
    """The run was aborted or rolled back on purpose."""

    exit_code = ExitCode.ABORTED
