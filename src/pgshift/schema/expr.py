"""Translate SQLite expressions (DEFAULT, CHECK, index, view) to PostgreSQL.

sqlglot parses and prints; this module owns the semantics. sqlglot passes
unknown functions through unchanged and maps some SQLite date functions to
PostgreSQL calls that mean something else, so every function is either
rewritten here, on an allow-list of same-meaning functions, or refused with
a reason. The target executes every translated expression as part of DDL;
what it rejects is reported too. Nothing is dropped silently.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import cast

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

# Functions whose SQLite and PostgreSQL meanings agree on the values we carry.
_SAME_MEANING: tuple[type[exp.Expression], ...] = (
    exp.Lower, exp.Upper, exp.Length, exp.Abs, exp.Coalesce, exp.Nullif, exp.Substring,
    exp.Trim, exp.Case, exp.If, exp.Cast, exp.StrPosition, exp.Chr, exp.Replace,
)
_NOW_TEXT = {
    # SQLite's 'now' is UTC; these produce SQLite's exact text shapes.
    "datetime": "to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS')",
    "date": "to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
    "time": "to_char(now() AT TIME ZONE 'UTC', 'HH24:MI:SS')",
    "current_timestamp": "to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS')",
    "current_date": "to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
    "current_time": "to_char(now() AT TIME ZONE 'UTC', 'HH24:MI:SS')",
}
_NOW_TYPED = {
    "timestamptz": "now()",
    "timestamp": "(now() AT TIME ZONE 'UTC')",
    "date": "((now() AT TIME ZONE 'UTC')::date)",
    "time": "((now() AT TIME ZONE 'UTC')::time(0))",
}
_EPOCH_S = "(floor(extract(epoch FROM now()))::bigint)"
_STRFTIME_NOW = {
    "%s": _EPOCH_S,
    "%Y-%m-%d %H:%M:%S": _NOW_TEXT["datetime"],
    "%Y-%m-%d": _NOW_TEXT["date"],
    "%Y-%m-%dT%H:%M:%fZ": "to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')",
    "%Y-%m-%dT%H:%M:%SZ": "to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')",
    "%Y-%m-%d %H:%M:%f": "to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS')",
}
_CAST_TYPES = {
    # SQLite integers are 64-bit and reals 8 bytes: never narrow.
    exp.DataType.Type.INT: "bigint", exp.DataType.Type.TINYINT: "bigint",
    exp.DataType.Type.SMALLINT: "bigint", exp.DataType.Type.FLOAT: "double precision",
    exp.DataType.Type.DOUBLE: "double precision",
}


class Untranslatable(Exception):
    """An expression has no faithful PostgreSQL form; the message says why."""


@dataclass
class ExprContext:
    """What the translator must know about the table the expression lives in."""

    column_types: Mapping[str, str] = field(default_factory=dict)  # lower name -> pg type
    target_type: str | None = None  # for DEFAULT: the column's PostgreSQL type
    # lower name -> exact name of tables and columns in scope. SQLite resolves
    # identifiers case-insensitively, PostgreSQL only after folding unquoted ones;
    # we quote every identifier with its exact stored spelling.
    names: Mapping[str, str] = field(default_factory=dict)


def _pg(sql: str) -> exp.Expression:
    # sqlglot >= 30 annotates its parsers as returning the mixin root ``Expr``; every
    # node they build is an ``Expression`` (the root class before 30).
    return cast(exp.Expression, sqlglot.parse_one(sql, read="postgres"))


def _now_arg(node: exp.Expression) -> bool:
    args = [a for a in node.expressions] if isinstance(node, exp.Anonymous) else []
    return all(isinstance(a, exp.Literal) and a.is_string and a.this.lower() == "now"
               for a in args)


def _column_type(node: exp.Expression, ctx: ExprContext) -> str | None:
    if isinstance(node, exp.Column):
        return ctx.column_types.get(node.name.lower())
    return None


def _bool_literal(node: exp.Expression) -> exp.Expression | None:
    if isinstance(node, exp.Literal) and not node.is_string and node.this in ("0", "1"):
        return exp.Boolean(this=node.this == "1")
    return None


def _glob_to_regex(pattern: str) -> str:
    out, i = ["^"], 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "[":
            j = pattern.find("]", i + 2)
            if j < 0:
                raise Untranslatable(f"unterminated [ in GLOB pattern {pattern!r}")
            body = pattern[i + 1 : j]
            out.append("[" + ("^" + body[1:] if body.startswith("^") else body) + "]")
            i = j
        else:
            out.append("\\" + c if c in ".^$+(){}|\\" else c)
        i += 1
    return "".join(out) + "$"


def _rewrite(node: exp.Expression, ctx: ExprContext, *, top: bool) -> exp.Expression:
    typed_now = _NOW_TYPED.get(ctx.target_type or "") if top else None
    if isinstance(node, (exp.CurrentTimestamp, exp.CurrentDate, exp.CurrentTime)):
        if typed_now:
            return _pg(typed_now)
        key = {exp.CurrentTimestamp: "current_timestamp", exp.CurrentDate: "current_date",
               exp.CurrentTime: "current_time"}[type(node)]
        return _pg(_NOW_TEXT[key])
    if isinstance(node, exp.Date) and isinstance(node.this, exp.Literal) \
            and str(node.this.this).lower() == "now" and not node.expressions:
        return _pg(typed_now or _NOW_TEXT["date"])
    if isinstance(node, exp.Collate):
        coll = node.expression.name.upper() if isinstance(node.expression, exp.Expression) else ""
        if coll == "BINARY":
            return _rewrite(node.this, ctx, top=False)  # PostgreSQL's default for our columns
        raise Untranslatable(f"COLLATE {coll or node.expression} has no PostgreSQL equivalent "
                             "(for NOCASE: compare lower() values or use citext)")
    if isinstance(node, exp.Anonymous):
        name = str(node.this).lower()
        if name in ("datetime", "date", "time") and _now_arg(node):
            return _pg(typed_now or _NOW_TEXT[name])
        if name == "unixepoch" and _now_arg(node):
            return _pg(_EPOCH_S)
        raise Untranslatable(f"SQLite function {name}() has no PostgreSQL translation")
    if isinstance(node, exp.TimeToStr):
        inner, fmt = node.this, node.args.get("format")
        now = isinstance(inner, exp.TsOrDsToTimestamp) and isinstance(inner.this, exp.Literal) \
            and inner.this.this.lower() == "now"
        if now and isinstance(fmt, exp.Literal) and fmt.this in _STRFTIME_NOW:
            return _pg(_STRFTIME_NOW[fmt.this])
        raise Untranslatable("strftime() is translated only for 'now' with common formats")
    if isinstance(node, exp.Substring):
        start, length = node.args.get("start"), node.args.get("length")
        # SQLite counts a negative start from the end; PostgreSQL does not.
        for arg in (start, length):
            if arg is not None and not (isinstance(arg, exp.Literal) and not arg.is_string
                                        and int(arg.this) >= (1 if arg is start else 0)):
                raise Untranslatable("substr() is translated only with a positive constant "
                                     "start and length")
    if isinstance(node, (exp.Greatest, exp.Least)):
        # SQLite's multi-argument max()/min() is NULL when any argument is; GREATEST and
        # LEAST skip NULLs.
        args = [node.this, *node.expressions]
        rewritten = [_rewrite(a, ctx, top=False) for a in args]
        any_null = " OR ".join(f"({a.sql(dialect='postgres', identify=True)}) IS NULL"
                               for a in rewritten)
        fn = "GREATEST" if isinstance(node, exp.Greatest) else "LEAST"
        call = ", ".join(a.sql(dialect="postgres", identify=True) for a in rewritten)
        return _pg(f"CASE WHEN {any_null} THEN NULL ELSE {fn}({call}) END")
    if isinstance(node, exp.Identifier):
        return exp.Identifier(this=ctx.names.get(node.name.lower(), node.name), quoted=True)
    if isinstance(node, exp.HexString):
        return _pg(f"'\\x{node.this}'::bytea")
    if isinstance(node, exp.Glob):
        pat = node.expression
        if not (isinstance(pat, exp.Literal) and pat.is_string):
            raise Untranslatable("GLOB with a non-constant pattern")
        left = _rewrite(node.this, ctx, top=False)
        return exp.RegexpLike(this=left, expression=exp.Literal.string(_glob_to_regex(pat.this)))
    if isinstance(node, exp.Like):
        # SQLite's LIKE ignores ASCII case; PostgreSQL's ILIKE is the closest match.
        return exp.ILike(this=_rewrite(node.this, ctx, top=False),
                         expression=_rewrite(node.expression, ctx, top=False))
    if isinstance(node, (exp.EQ, exp.NEQ, exp.NullSafeEQ, exp.NullSafeNEQ)):
        left, right = node.this, node.expression
        if _column_type(left, ctx) == "boolean" and _bool_literal(right) is not None:
            node.set("expression", _bool_literal(right))
        elif _column_type(right, ctx) == "boolean" and _bool_literal(left) is not None:
            node.set("this", _bool_literal(left))
    if isinstance(node, exp.In) and _column_type(node.this, ctx) == "boolean":
        node.set("expressions", [_bool_literal(e) or e for e in node.expressions])
    if isinstance(node, exp.Cast):
        target = _CAST_TYPES.get(node.to.this)
        if target:
            return exp.Cast(this=_rewrite(node.this, ctx, top=False),
                            to=exp.DataType.build(target, dialect="postgres"))
    if isinstance(node, (exp.JSONExtract, exp.JSONExtractScalar, exp.LowerHex, exp.Hex)):
        raise Untranslatable(f"{node.sql('sqlite')}: JSON path and hex functions differ in "
                             "PostgreSQL; rewrite by hand")
    if isinstance(node, exp.Func) and not isinstance(node, _SAME_MEANING) \
            and not isinstance(node, exp.Binary | exp.Unary | exp.Paren | exp.Boolean | exp.Null):
        raise Untranslatable(f"function {node.sql('sqlite')} is not on the translation list")
    for key, value in list(node.args.items()):
        if isinstance(value, exp.Expression):
            node.set(key, _rewrite(value, ctx, top=False))
        elif isinstance(value, list):
            node.set(key, [_rewrite(v, ctx, top=False) if isinstance(v, exp.Expression) else v
                           for v in value])
    return node


def translate(sql: str, ctx: ExprContext | None = None) -> str:
    """PostgreSQL text of the SQLite expression ``sql``; raise Untranslatable if unfaithful.

    ``sql`` must be one expression: it is parsed as the only item of a SELECT
    list, so a statement (``DROP TABLE x``) or a second one never gets through.
    """
    ctx = ctx or ExprContext()
    tree = _parse(f"SELECT {sql}", sql)
    if not isinstance(tree, exp.Select) or len(tree.expressions) != 1 or tree.args.get("from_") \
            or tree.args.get("from"):
        raise Untranslatable(f"{sql!r} is not a single expression")
    out = _rewrite(tree.expressions[0], ctx, top=True)  # a fresh tree: rewriting in place is safe
    return out.sql(dialect="postgres", identify=True)


def translate_query(sql: str, ctx: ExprContext | None = None) -> str:
    """PostgreSQL text of a SQLite SELECT (a view's body)."""
    tree = _parse(sql, sql)
    if not isinstance(tree, exp.Query):
        raise Untranslatable(f"{sql[:60]!r} is not a query")
    return _rewrite(tree, ctx or ExprContext(), top=False).sql(dialect="postgres", identify=True)


def _parse(text: str, original: str) -> exp.Expression:
    try:
        trees = sqlglot.parse(text, read="sqlite")
    except SqlglotError as exc:
        raise Untranslatable(f"cannot parse {original!r}: {str(exc).splitlines()[0]}") from exc
    if len(trees) != 1 or trees[0] is None:
        raise Untranslatable(f"{original!r} is not one expression")
    return cast(exp.Expression, trees[0])  # an Expression, typed Expr: see _pg


def translate_default(sql: str, pg_type: str, ctx: ExprContext | None = None) -> str:
    """A DEFAULT clause for a column of ``pg_type``, with values in the target's terms."""
    ctx = ExprContext(column_types=(ctx.column_types if ctx else {}), target_type=pg_type,
                      names=(ctx.names if ctx else {}))
    text = sql.strip()
    if pg_type == "boolean" and text in ("0", "1", "'0'", "'1'", "TRUE", "FALSE", "true", "false"):
        return "true" if text.strip("'").lower() in ("1", "true") else "false"
    return translate(text, ctx)


def translate_statement(sql: str, ctx: ExprContext, schema: str,
                        typed: Mapping[str, str] | None = None) -> str:
    """PostgreSQL text of one SQLite UPDATE, INSERT or DELETE (a trigger body's statement).

    Tables are qualified with ``schema`` (a trigger function runs with the caller's
    search_path). ``typed`` maps placeholder column names the caller put in place of
    values to their PostgreSQL text (clock values typed by their target column).
    """
    tree = _parse(sql, sql)
    if not isinstance(tree, (exp.Update, exp.Insert, exp.Delete)):
        raise Untranslatable(f"{sql[:60]!r} is not an UPDATE, INSERT or DELETE")
    if tree.args.get("alternative") or tree.args.get("conflict") or tree.args.get("returning"):
        raise Untranslatable("INSERT OR REPLACE/IGNORE, ON CONFLICT and RETURNING differ in "
                             "PostgreSQL; rewrite by hand")
    out = _rewrite(tree, ctx, top=False)
    for table in out.find_all(exp.Table):
        table.set("db", exp.Identifier(this=schema, quoted=True))
    text = out.sql(dialect="postgres", identify=True)
    for placeholder, value in (typed or {}).items():
        text = text.replace(f'"{placeholder}"', value)
    return text


def parse_one_sqlite(sql: str) -> exp.Expression:
    """One SQLite statement or expression as a sqlglot tree; Untranslatable if unreadable."""
    return _parse(sql, sql)
