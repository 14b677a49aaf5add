"""The server interface the tests and benchmarks use, and a server someone else runs.

:class:`PostgresServer` is what a fixture hands out: :class:`ExistingPostgres` (a server named by
``PGSHIFT_TEST_DSN``) and :class:`~pgshift.embedded_pg.EmbeddedPostgres` both implement it, on
top of the admin calls :func:`create_database` and :func:`drop_database`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from psycopg import sql

from pgshift.dsn import Dsn, connect

__all__ = ["ExistingPostgres", "PostgresServer", "create_database", "drop_database"]


class PostgresServer(Protocol):
    """What the tests and benchmarks need from a server, embedded or not."""

    def dsn(self, dbname: str = "postgres") -> Dsn:
        """The DSN of ``dbname`` on this server."""
        ...

    def create_database(self, name: str) -> Dsn:
        """Create ``name`` (from template0) and return its DSN."""
        ...

    def drop_database(self, name: str) -> None:
        """Drop ``name`` if it exists, disconnecting its sessions."""
        ...


def create_database(admin: Dsn, name: str) -> Dsn:
    """Create database ``name`` from template0 on the server of ``admin``; return its DSN."""
    with connect(admin, autocommit=True, application_name="pgshift-admin") as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8'").format(
                sql.Identifier(name)
            )
        )
    return admin.with_dbname(name)


def drop_database(admin: Dsn, name: str) -> None:
    """Drop database ``name`` on the server of ``admin`` if it exists, with ``FORCE``."""
    with connect(admin, autocommit=True, application_name="pgshift-admin") as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def _server_version(dsn: Dsn) -> str:
    with connect(dsn, autocommit=True, application_name="pgshift-admin") as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return str(row[0]) if row else ""


@dataclass
class ExistingPostgres:
    """A server someone else runs (e.g. ``PGSHIFT_TEST_DSN``), with the same interface.

    ``admin`` must be able to create and drop databases; ``start``/``stop`` do nothing.
    """

    admin: Dsn

    def start(self) -> None:
        """Nothing to start: the server is already running."""

    def stop(self) -> None:
        """Nothing to stop: the server is not ours."""

    def dsn(self, dbname: str = "postgres") -> Dsn:
        """The admin DSN pointed at ``dbname``."""
        return self.admin.with_dbname(dbname)

    def create_database(self, name: str) -> Dsn:
        """Create ``name`` from template0 and return its DSN."""
        return create_database(self.admin, name)

    def drop_database(self, name: str) -> None:
        """Drop ``name`` if it exists, with ``FORCE``."""
        drop_database(self.admin, name)

    @property
    def version(self) -> str:
        """The server's ``server_version``."""
        return _server_version(self.admin)
