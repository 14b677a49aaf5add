"""``green_writes: forbid``: take write privileges on a table away from green's role.

While SQLite is the system of record, a table declared ``green_writes: forbid``
must not be written by green at all (a queue's claims, a counter's decrements):
:func:`revoke` removes INSERT, UPDATE, DELETE and TRUNCATE on it from the app
role and records, in ``pgshift.sync_tables``, exactly the privileges the role
held directly, so :func:`restore` (at the flip, or on uninstall) grants back
those and nothing more.

Privileges the role holds through another role or PUBLIC cannot be taken from
it by a REVOKE naming it: :func:`revoke` checks ``has_table_privilege``
afterwards and refuses (exit 2) with the way the role still writes.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql as pgsql

from pgshift.errors import UsageError
from pgshift.sync import state as st

WRITE_PRIVILEGES = ("INSERT", "UPDATE", "DELETE", "TRUNCATE")


def revoke(conn: psycopg.Connection, schema: str, role: str,
           tables: list[str]) -> dict[str, list[str]]:
    """Revoke write privileges on ``tables`` from ``role``; {table: privileges revoked}.

    Idempotent: a table already revoked for the same role keeps its first record.
    """
    if not st.scalar(conn, "SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)):
        conn.rollback()
        raise UsageError(f"role {role!r} does not exist in PostgreSQL",
                         hint="give green's role: --app-role ROLE (target.app_role)")
    conn.commit()
    st.ensure_schema(conn)
    out: dict[str, list[str]] = {}
    with conn.transaction():
        for table in tables:
            rel = pgsql.Identifier(schema, table)
            prior = conn.execute(
                "SELECT revoked_role, revoked FROM pgshift.sync_tables WHERE target_schema = %s "
                "AND table_name = %s", (schema, table)).fetchone()
            held = [r[0] for r in conn.execute(
                "SELECT DISTINCT a.privilege_type FROM pg_class c, aclexplode(c.relacl) a "
                "WHERE c.oid = %s::regclass AND a.grantee = %s::regrole "
                "AND a.privilege_type = ANY(%s) ORDER BY 1",
                (rel.as_string(conn), role, list(WRITE_PRIVILEGES))).fetchall()]
            if prior and prior[0] == role and prior[1] is not None:
                held = sorted(set(held) | set(prior[1]))
            conn.execute(pgsql.SQL("REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON {} FROM {}")
                         .format(rel, pgsql.Identifier(role)))
            still = [p for p in WRITE_PRIVILEGES if conn.execute(
                "SELECT has_table_privilege(%s, %s, %s)",
                (role, rel.as_string(conn), p)).fetchone()[0]]  # type: ignore[index]
            if still:
                raise UsageError(
                    f"role {role!r} may still {', '.join(still)} on {table} after the "
                    "REVOKE: it holds them through another role or PUBLIC (or it owns "
                    "the table)",
                    hint=f"revoke them from that role, or from PUBLIC: REVOKE {still[0]} ON "
                         f"{schema}.{table} FROM PUBLIC", table=table)
            conn.execute(
                "INSERT INTO pgshift.sync_tables (target_schema, table_name, green_writes, "
                "revoked_role, revoked) VALUES (%s, %s, 'forbid', %s, %s) ON CONFLICT "
                "(target_schema, table_name) DO UPDATE SET revoked_role = EXCLUDED."
                "revoked_role, revoked = EXCLUDED.revoked, updated_at = now()",
                (schema, table, role, held))
            out[table] = held
    return out


def restore(conn: psycopg.Connection, schema: str) -> dict[str, Any]:
    """Grant back what :func:`revoke` took (the flip, uninstall); {table: privileges}."""
    present = st.scalar(conn, "SELECT to_regclass('pgshift.sync_tables') IS NOT NULL")
    conn.commit()  # the grants below are a transaction of their own, not a savepoint
    if not present:
        return {}
    out: dict[str, Any] = {}
    with conn.transaction():
        rows = conn.execute(
            "SELECT table_name, revoked_role, revoked FROM pgshift.sync_tables WHERE "
            "target_schema = %s AND revoked_role IS NOT NULL", (schema,)).fetchall()
        for table, role, privileges in rows:
            exists = st.scalar(conn, "SELECT to_regclass(%s) IS NOT NULL AND EXISTS (SELECT 1 "
                               "FROM pg_roles WHERE rolname = %s)",
                               (pgsql.Identifier(schema, table).as_string(conn), role))
            if exists and privileges:
                conn.execute(pgsql.SQL("GRANT {} ON {} TO {}").format(
                    pgsql.SQL(", ").join(pgsql.SQL(p) for p in privileges
                                         if p in WRITE_PRIVILEGES),
                    pgsql.Identifier(schema, table), pgsql.Identifier(role)))
            conn.execute("UPDATE pgshift.sync_tables SET revoked_role = NULL, revoked = NULL, "
                         "updated_at = now() WHERE target_schema = %s AND table_name = %s",
                         (schema, table))
            out[table] = {"role": role, "granted": list(privileges or [])}
    return out
