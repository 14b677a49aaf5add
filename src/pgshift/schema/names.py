"""PostgreSQL names for SQLite identifiers: the 63-byte limit and what it collides.

PostgreSQL cuts every identifier to 63 bytes (NAMEDATALEN - 1), silently, at
a character boundary. A name that stays unique after the cut keeps working
exactly as the application spells it (PostgreSQL cuts the application's
queries the same way), so it is left alone. Names that *collide* once cut
(``..._aaax`` / ``..._aaay``) would fail the DDL; each of them gets a
deterministic short name instead: its first bytes, ``_`` and 8 hex digits of
the SHA-1 of the full name. The choice depends only on the names of one
namespace, so every consumer that rebuilds the plan from the catalog (migrate,
verify) arrives at the same names without reading them from anywhere; sync,
which still addresses PostgreSQL by SQLite's spelling, refuses such a table
(``refuse_shortened``) with the rename to make.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import TYPE_CHECKING

from pgshift.errors import UsageError

if TYPE_CHECKING:
    from pgshift.schema.model import Table

PG_MAX_BYTES = 63
_HASH_HEX = 8


def pg_truncate(name: str, limit: int = PG_MAX_BYTES) -> str:
    """``name`` as PostgreSQL stores it: at most ``limit`` UTF-8 bytes, whole characters."""
    raw = name.encode("utf-8")
    if len(raw) <= limit:
        return name
    return raw[:limit].decode("utf-8", "ignore")


def shortened(name: str) -> str:
    """The deterministic short form of a too-long name: a prefix, ``_`` and a hash."""
    digest = hashlib.sha1(name.encode("utf-8")).hexdigest()[:_HASH_HEX]
    return pg_truncate(name, PG_MAX_BYTES - _HASH_HEX - 1) + "_" + digest


def assign(names: Iterable[str]) -> dict[str, str]:
    """name -> PostgreSQL name for one namespace (a table's columns, a schema's relations).

    A long name that stays unique maps to its cut form (what PostgreSQL would
    store anyway); long names whose cut forms collide get :func:`shortened` names;
    a name of at most 63 bytes never changes (the long one is shortened instead).
    """
    unique = list(dict.fromkeys(names))
    groups: dict[str, list[str]] = {}
    for n in unique:
        groups.setdefault(pg_truncate(n), []).append(n)
    out = {n: pg_truncate(n) for n in unique}
    taken = {n for n in unique if len(n.encode("utf-8")) <= PG_MAX_BYTES}
    for members in groups.values():
        if len(members) < 2:
            continue
        for n in members:
            if len(n.encode("utf-8")) > PG_MAX_BYTES:
                short = shortened(n)
                if short in taken:  # a 63-byte name already spelled like our hash: vanishingly rare
                    short = shortened(n + "\x00")
                out[n] = short
                taken.add(short)
    return out


def renamed(mapping: dict[str, str]) -> list[tuple[str, str]]:
    """The (original, PostgreSQL) pairs that differ, for the plan's notes."""
    return [(a, b) for a, b in mapping.items() if a != b]


class Names:
    """Every PostgreSQL name of one catalog: relations (tables, views, indexes, key
    constraints, which PostgreSQL backs with an index of the same name) share the
    schema's namespace; columns and the other constraints are per table."""

    def __init__(self, relations: Iterable[str], columns: dict[str, list[str]]) -> None:
        self.relations = assign(relations)
        self.columns = {t: assign(cols) for t, cols in columns.items()}

    def relation(self, name: str) -> str:
        """A table's, view's, index's or key constraint's PostgreSQL name."""
        return self.relations.get(name) or pg_truncate(name)

    def column(self, table: str, column: str) -> str:
        """A column's PostgreSQL name."""
        return self.columns.get(table, {}).get(column) or pg_truncate(column)

    def notes(self) -> list[tuple[str, str]]:
        """(object, message) for every name PostgreSQL will not store as SQLite spells it."""
        out = [(a, _why(a, b)) for a, b in renamed(self.relations)]
        for table, cols in self.columns.items():
            out.extend((f"{table}.{a}", _why(a, b)) for a, b in renamed(cols))
        return out


def _why(original: str, pg: str) -> str:
    if pg == pg_truncate(original):
        return (f"longer than {PG_MAX_BYTES} bytes: PostgreSQL stores it as {pg!r} (queries "
                "spelling the full name still find it)")
    return (f"longer than {PG_MAX_BYTES} bytes and equal to another name once PostgreSQL cuts "
            f"it to {pg_truncate(original)!r}: created as {pg!r} (deterministic; verify uses "
            "the same name, sync refuses the table until it is renamed). Rename it in the "
            f"application's schema to at most {PG_MAX_BYTES} bytes to choose the name yourself")


def refuse_shortened(tables: Iterable[Table], consumer: str) -> None:
    """Raise UsageError when a planned table or column carries a hash-shortened name.

    ``consumer`` (sync) addresses PostgreSQL by the SQLite spelling, which PostgreSQL
    cuts to 63 bytes: right for a long name that stayed unique, wrong for a shortened one.
    """
    for t in tables:
        bad = [(t.name, t.pg_name)] if t.pg_name != pg_truncate(t.name) else []
        bad += [(f"{t.name}.{c.name}", c.pg_name) for c in t.columns
                if c.pg_name != pg_truncate(c.name)]
        for original, pg in bad[:1]:
                raise UsageError(
                    f"{consumer} cannot follow a shortened name yet: SQLite's {original!r} is "
                    f"{pg!r} in PostgreSQL (longer than {PG_MAX_BYTES} bytes and equal to "
                    "another name once cut)",
                    hint=f"rename it in the application's schema to at most {PG_MAX_BYTES} "
                         "bytes (ALTER TABLE ... RENAME), then migrate again")
