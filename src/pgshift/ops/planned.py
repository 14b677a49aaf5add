"""A SQL file of planned index work, checked by PostgreSQL itself before anything is built.

Each statement must be a named ``CREATE [UNIQUE] INDEX``; it is rewritten to build
``CONCURRENTLY IF NOT EXISTS``. Before anything is built, every statement is tried
on an empty temporary copy of its table (``CREATE TEMP TABLE ... (LIKE ...)``, in a
transaction that is rolled back), so the server's own rules judge it: unknown
columns, type errors and, the case the runbook meets, predicates that are not
IMMUTABLE (``WHERE reset_at > NOW()``: an index's contents are fixed when a row is
written, ``now()`` is not). Such a predicate is refused with an alternative that
PostgreSQL accepts, checked the same way: the time column moves into the index key
and the comparison stays in the query.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import psycopg
import sqlglot
from psycopg import sql
from sqlglot import exp

from pgshift.errors import UsageError
from pgshift.ops.usage import IndexProposal

_HEAD = re.compile(
    r"^\s*create\s+(?P<unique>unique\s+)?index\s+(?:concurrently\s+)?(?:if\s+not\s+exists\s+)?"
    r"(?P<name>\"(?:[^\"]|\"\")+\"|[A-Za-z_][\w$]*)\s+on\s+(?:only\s+)?"
    r"(?P<table>(?:(?:\"(?:[^\"]|\"\")+\"|[A-Za-z_][\w$]*)\.)?(?:\"(?:[^\"]|\"\")+\"|[A-Za-z_][\w$]*))"
    r"\s*(?:using\s+(?P<using>\w+)\s*)?\(",
    re.IGNORECASE | re.DOTALL)


@dataclass
class PlannedIndex:
    """One statement of the file: what it builds, or why it is refused and what instead."""

    statement: str
    proposal: IndexProposal | None
    refused: str | None = None
    alternative: str | None = None  # a statement PostgreSQL accepts (checked)
    advice: str | None = None  # how the alternative serves the same queries

    def to_dict(self) -> dict[str, object]:
        return {"statement": self.statement, "refused": self.refused,
                "alternative": self.alternative, "advice": self.advice,
                "definition": self.proposal.definition() if self.proposal else None}


def split_statements(text: str) -> list[str]:
    """Statements separated by ``;`` outside quotes, parentheses and comments."""
    out, buf, depth, i = [], [], 0, 0
    while i < len(text):
        ch = text[i]
        if text.startswith("--", i):
            end = text.find("\n", i)
            i = len(text) if end < 0 else end
            continue
        if ch in "'\"":
            end = i + 1
            while end < len(text) and not (text[end] == ch and text[end:end + 2] != ch * 2):
                end += 2 if text[end:end + 2] == ch * 2 else 1
            buf.append(text[i:end + 1])
            i = end + 1
            continue
        depth += (ch == "(") - (ch == ")")
        if ch == ";" and depth == 0:
            out.append("".join(buf).strip())
            buf = []
        else:
            buf.append(ch)
        i += 1
    out.append("".join(buf).strip())
    return [s for s in out if s]


def _closing(text: str, start: int) -> int:
    """Index of the parenthesis closing the one at ``start - 1`` (quotes respected)."""
    depth, i = 1, start
    while i < len(text):
        ch = text[i]
        if ch in "'\"":
            i = text.index(ch, i + 1) + 1
            continue
        depth += (ch == "(") - (ch == ")")
        if depth == 0:
            return i
        i += 1
    raise ValueError("unbalanced parentheses")


def _ident(text: str) -> str:
    return text[1:-1].replace('""', '"') if text.startswith('"') else text.lower()


def _split_top(text: str, sep: str = ",") -> list[str]:
    parts: list[str] = []
    buf: list[str] = []
    depth = 0
    for ch in text:
        depth += (ch == "(") - (ch == ")")
        if ch == sep and depth == 0:
            parts.append("".join(buf).strip())
            buf = []
        else:
            buf.append(ch)
    parts.append("".join(buf).strip())
    return [p for p in parts if p]


def parse_create_index(statement: str, default_schema: str) -> IndexProposal:
    """The parts of a named CREATE INDEX; UsageError for anything else."""
    m = _HEAD.match(statement)
    if not m:
        raise UsageError(f"not a named CREATE INDEX statement: {statement[:80]!r}",
                         hint="the file may hold only CREATE [UNIQUE] INDEX name ON table "
                              "(...) [WHERE ...]; statements")
    try:
        close = _closing(statement, m.end())
    except (ValueError, IndexError) as exc:
        raise UsageError(f"unbalanced parentheses in {statement[:80]!r}") from exc
    columns = _split_top(statement[m.end():close])
    rest = statement[close + 1:].strip()
    where = re.search(r"\bwhere\b", rest, re.IGNORECASE)
    tail, predicate = (rest[:where.start()].strip(), rest[where.end():].strip()) if where \
        else (rest, None)
    schema, _, table = m.group("table").rpartition(".")
    return IndexProposal(
        name=_ident(m.group("name")), schema=_ident(schema) if schema else default_schema,
        table=_ident(table), columns=columns, reason="planned (from the SQL file)",
        source="planned", predicate=predicate, unique=bool(m.group("unique")),
        using=m.group("using"), tail=tail)


def _try_on_empty_copy(conn: psycopg.Connection, p: IndexProposal,
                       columns: list[str] | None = None,
                       predicate: str | None = "same") -> psycopg.Error | None:
    """Build the index on an empty temp copy of the table; the server's error, or None."""
    cols = columns if columns is not None else p.columns
    pred = p.predicate if predicate == "same" else predicate
    text = " ".join(x for x in [
        "CREATE", "UNIQUE" if p.unique else "", "INDEX ON pg_temp.pgshift_index_probe",
        f"USING {p.using}" if p.using else "", f"({', '.join(cols)})", p.tail,
        f"WHERE {pred}" if pred else ""] if x)
    try:
        with conn.transaction(force_rollback=True):
            conn.execute(sql.SQL("CREATE TEMP TABLE pgshift_index_probe (LIKE {}) "
                                 "ON COMMIT DROP").format(sql.Identifier(p.schema, p.table)))
            # Search the table's schema first so unqualified functions and types resolve.
            conn.execute(sql.SQL("SET LOCAL search_path = {}, public").format(
                sql.Identifier(p.schema)))
            conn.execute(text.encode())
    except psycopg.Error as exc:
        return exc
    return None


def check_planned(conn: psycopg.Connection, path: Path, schema: str) -> list[PlannedIndex]:
    """Read ``path`` and judge every statement (nothing is built)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}", hint="check the path") from exc
    out = []
    for statement in split_statements(text):
        proposal = parse_create_index(statement, schema)
        error = _try_on_empty_copy(conn, proposal)
        if error is None:
            out.append(PlannedIndex(statement, proposal))
        elif proposal.predicate and _try_on_empty_copy(conn, proposal, predicate=None) is None:
            out.append(_bad_predicate(conn, statement, proposal, error))
        else:
            out.append(PlannedIndex(statement, None,
                                    refused=f"PostgreSQL refuses it: "
                                            f"{error.diag.message_primary or error}"))
    return out


def _bad_predicate(conn: psycopg.Connection, statement: str, p: IndexProposal,
                   error: psycopg.Error) -> PlannedIndex:
    """Refuse a predicate PostgreSQL rejects and build the alternative that works.

    The usual case is a predicate that is not IMMUTABLE; a comparison of a column with
    the wrong type (an epoch-integer ``reset_at > NOW()``) gets the same alternative.
    """
    keep, moved = _split_predicate(conn, p)
    columns = list(p.columns)
    columns += [c for c in moved if c not in columns and f'"{c}"' not in columns]
    predicate = " AND ".join(keep) or None
    alt = IndexProposal(p.name, p.schema, p.table, columns, p.reason, p.source,
                        predicate=predicate, unique=False, using=p.using, tail=p.tail)
    works = _try_on_empty_copy(conn, alt) is None
    if isinstance(error, psycopg.errors.InvalidObjectDefinition):
        why = (f"index predicates must be IMMUTABLE ({error.diag.message_primary}): "
               f"WHERE {p.predicate} depends on the time or session, while an index's "
               "contents are fixed when each row is written")
    else:
        why = f"PostgreSQL refuses the predicate WHERE {p.predicate}: " \
              f"{error.diag.message_primary or error}"
    if not works:
        return PlannedIndex(statement, None, refused=why)
    advice = (f"the condition stays in the query (WHERE {p.predicate}), which this index "
              "serves" + (f" as a range scan on {', '.join(moved)}" if moved else "")
              + "; or use a fixed cutoff literal in the predicate and rebuild it periodically")
    return PlannedIndex(statement, None, refused=why, alternative=alt.definition(),
                        advice=advice)


def _split_predicate(conn: psycopg.Connection, p: IndexProposal) -> tuple[list[str], list[str]]:
    """(immutable conjuncts kept as text, columns of the refused conjuncts)."""
    assert p.predicate is not None
    try:
        tree = sqlglot.parse_one(p.predicate, read="postgres")
    except sqlglot.errors.ParseError:
        return [], []
    conjuncts = list(tree.flatten()) if isinstance(tree, exp.And) else [tree]
    keep, moved = [], []
    for c in conjuncts:
        text = c.sql(dialect="postgres")
        if _try_on_empty_copy(conn, p, predicate=text) is None:
            keep.append(text)
        else:
            moved += [col.name for col in c.find_all(exp.Column) if col.name not in moved]
    return keep, moved
