"""SQLite triggers as PL/pgSQL functions and triggers, created after the load.

The common forms are translated:

- *touch*: ``UPDATE t SET updated_at = <now> WHERE id = NEW.id`` on ``t`` itself
  (any value of this row alone: clocks, constants, ``NEW.x``) becomes a BEFORE
  trigger assigning ``NEW.updated_at`` (PostgreSQL's idiom; SQLite's
  AFTER-then-UPDATE would recurse in PostgreSQL);
- statements on *other* tables (keep a counter, write an audit row):
  the same UPDATE/INSERT/DELETE in a function run at the same timing, with
  ``NEW``/``OLD`` as PostgreSQL's records and clock values typed by the column
  they go into.

Everything else (RAISE(), SELECT, INSTEAD OF, statements on the trigger's own
table that are not a touch, untranslatable expressions) is not created: its
original body goes into a reviewable SQL file in the state directory
(``REVIEW_FILE``), and the plan says so. Triggers are created after the load,
so they never fire on the copied rows.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlglot import exp

from pgshift.schema.defaults import now_sql_for, plan_default
from pgshift.schema.expr import ExprContext, Untranslatable, translate, translate_statement
from pgshift.schema.expr import parse_one_sqlite as _parse
from pgshift.schema.model import Note, Table, qident
from pgshift.schema.names import PG_MAX_BYTES, shortened
from pgshift.source import sqltokens as tk
from pgshift.source.catalog import SourceTrigger


@dataclass
class _Scope:
    """What a trigger's translation sees: the target schema and the planned tables."""

    schema: str
    tables: list[Table]

    def table(self, name: str) -> Table:
        return next(t for t in self.tables if t.name == name)

REVIEW_FILE = "triggers-review.sql"
_TIMINGS = ("BEFORE", "AFTER", "INSTEAD")
_EVENTS = ("INSERT", "UPDATE", "DELETE")


@dataclass
class PlannedTrigger:
    """One SQLite trigger: its PostgreSQL function and trigger, or why it has none."""

    name: str
    table: str
    source_sql: str
    form: str | None = None  # "touch", "statements"; None when not translated
    function_sql: str | None = None
    trigger_sql: str | None = None
    reason: str | None = None  # why it was not translated

    def to_dict(self) -> dict[str, str | None]:
        return {"name": self.name, "table": self.table, "form": self.form,
                "function": self.function_sql, "trigger": self.trigger_sql,
                "not_translated": self.reason, "source": self.source_sql}

    def statements(self) -> list[str]:
        """The DDL creating it (empty when not translated)."""
        return [s for s in (self.function_sql, self.trigger_sql) if s]


@dataclass
class _Header:
    name: str
    timing: str
    event: str
    of_columns: list[str]
    table: str
    when: str | None
    body: list[str]


def plan_triggers(schema: str, tables: list[Table], source: list[SourceTrigger],
                  notes: list[Note]) -> list[PlannedTrigger]:
    """Translate every trigger on a planned table; note each outcome."""
    scope = _Scope(schema, tables)
    by_name = {t.name: t for t in tables}
    out: list[PlannedTrigger] = []
    for trig in source:
        table = by_name.get(trig.table)
        if table is None:
            continue
        planned = PlannedTrigger(trig.name, trig.table, trig.sql)
        try:
            _translate(planned, trig, table, scope)
            notes.append(Note("info", trig.name, f"trigger on {trig.table} translated "
                              f"({planned.form}): created after the load as a PL/pgSQL "
                              "function and trigger"))
        except Untranslatable as exc:
            planned.reason, planned.form = str(exc), None
            notes.append(Note("untranslated", trig.name, f"trigger on {trig.table} not "
                              f"created: {exc}. Its original body is in {REVIEW_FILE} in "
                              "the state directory for review"))
        out.append(planned)
    return out


def review_sql(schema: str, tables: list[Table], planned: list[PlannedTrigger]) -> str | None:
    """The reviewable file: each untranslated trigger's original SQL and a skeleton."""
    plan = _Scope(schema, tables)
    todo = [t for t in planned if t.reason]
    if not todo:
        return None
    out = ["-- SQLite triggers pgshift did not translate. Each needs a PL/pgSQL function and",
           "-- a CREATE TRIGGER; the original is kept below, commented out, with the reason.", ""]
    for t in todo:
        fn = qident(_function_name(t.name))
        out += [f"-- trigger {t.name} on {t.table}: {t.reason}",
                *("-- " + line for line in t.source_sql.splitlines()),
                f"-- CREATE FUNCTION {qident(plan.schema)}.{fn}() RETURNS trigger "
                "LANGUAGE plpgsql AS $$ BEGIN ... END $$;",
                f"-- CREATE TRIGGER {qident(t.name)} ... ON {qident(plan.schema)}."
                f"{qident(plan.table(t.table).pg_name)} FOR EACH ROW EXECUTE FUNCTION "
                f"{qident(plan.schema)}.{fn}();", ""]
    return "\n".join(out)


def _function_name(trigger: str) -> str:
    name = f"{trigger}_fn"
    return name if len(name.encode("utf-8")) <= PG_MAX_BYTES else shortened(name)


def _header(sql: str) -> _Header:
    tokens = tk.tokenize(sql)
    words = [t.upper for t in tokens]
    try:
        i = words.index("TRIGGER") + 1
        if words[i : i + 3] == ["IF", "NOT", "EXISTS"]:
            i += 3
        if i + 1 < len(tokens) and tokens[i + 1].text == ".":
            i += 2
        name = tk.unquote(tokens[i].text)
        i += 1
        timing = "BEFORE"  # SQLite's default
        if words[i] in _TIMINGS:
            timing = words[i]
            i += 2 if words[i] == "INSTEAD" else 1
        event = words[i]
        i += 1
        of_cols: list[str] = []
        if words[i] == "OF":
            i += 1
            while words[i] != "ON":
                if tokens[i].text != ",":
                    of_cols.append(tk.unquote(tokens[i].text))
                i += 1
        i += 1  # ON
        table = tk.unquote(tokens[i].text)
        begin = words.index("BEGIN", i)
        when = None
        if "WHEN" in words[i:begin]:
            w = words.index("WHEN", i)
            when = sql[tokens[w + 1].start : tokens[begin - 1].end]
    except (ValueError, IndexError) as exc:
        raise Untranslatable("the trigger's SQL could not be read") from exc
    if event not in _EVENTS:
        raise Untranslatable(f"trigger event {event} is not INSERT, UPDATE or DELETE")
    end = max(j for j, w in enumerate(words) if w == "END")
    body, start = [], begin + 1
    for j in range(begin + 1, end + 1):
        if tokens[j].text == ";" or j == end:
            if j > start:
                body.append(sql[tokens[start].start : tokens[j - 1].end])
            start = j + 1
    return _Header(name, timing, event, of_cols, table, when, body)


def _ctx(plan: _Scope) -> ExprContext:
    spellings: dict[str, set[str]] = {}
    types: dict[str, set[str]] = {}
    for t in plan.tables:
        spellings.setdefault(t.name.lower(), set()).add(t.pg_name)
        for c in t.columns:
            spellings.setdefault(c.name.lower(), set()).add(c.pg_name)
            types.setdefault(c.name.lower(), set()).add(c.pg_type)
    names = {k: next(iter(v)) for k, v in spellings.items() if len(v) == 1}
    names.update({"new": "new", "old": "old"})  # PL/pgSQL's records (quoted lower case)
    return ExprContext(column_types={k: next(iter(v)) for k, v in types.items() if len(v) == 1},
                       names=names)


def _translate(planned: PlannedTrigger, trig: SourceTrigger, table: Table, plan: _Scope) -> None:
    h = _header(trig.sql)
    if h.timing == "INSTEAD":
        raise Untranslatable("INSTEAD OF triggers belong to views")
    if not h.body:
        raise Untranslatable("empty trigger body")
    ctx = _ctx(plan)
    schema = plan.schema
    touch = _touch_columns(h, table)
    lines: list[str]
    if touch is not None:
        planned.form = "touch"
        timing, ret = "BEFORE", "RETURN NEW;"
        lines = [f"NEW.{qident(table.pg(c))} := {plan_default(v, table.column(c), ctx)};"
                 for c, v in touch]
    else:
        planned.form = "statements"
        timing = h.timing
        ret = ("RETURN NULL;" if timing == "AFTER"
               else "RETURN OLD;" if h.event == "DELETE" else "RETURN NEW;")
        lines = [_statement(s, ctx, plan, table) + ";" for s in h.body]
    when = f" WHEN ({translate(h.when, ctx)})" if h.when else ""
    of = (" OF " + ", ".join(qident(table.pg(c)) for c in h.of_columns)) if h.of_columns else ""
    fn = f"{qident(schema)}.{qident(_function_name(h.name))}"
    # Not for sync's replayed writes (its transactions set pgshift.applying): SQLite's
    # trigger already ran on blue and the change log carries what it wrote, so firing
    # here too would count twice or move a clock. session_replication_role = replica
    # does the same, but only where sync's role may set it.
    skip = f"IF current_setting('pgshift.applying', true) = 'on' THEN {ret} END IF;"
    body = "\n    ".join([skip, *lines, ret])
    # OR REPLACE: a migrate --drop over an earlier one finds the function (dropping the
    # table drops its triggers, not their functions).
    planned.function_sql = (f"CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger LANGUAGE "
                            f"plpgsql AS $pgshift$\nBEGIN\n    {body}\nEND\n$pgshift$")
    planned.trigger_sql = (f"CREATE TRIGGER {qident(h.name)} {timing} {h.event}{of} ON "
                           f"{qident(schema)}.{qident(table.pg_name)} FOR EACH ROW{when} "
                           f"EXECUTE FUNCTION {fn}()")


def _touch_columns(h: _Header, table: Table) -> list[tuple[str, str]] | None:
    """[(column, SQLite clock expression)] when every statement touches this row's clock."""
    if h.event not in ("UPDATE", "INSERT"):
        return None
    out: list[tuple[str, str]] = []
    # The row itself: by its key, or by rowid where the table has one (and the key is it).
    keys = {k.lower() for k in table.primary_key} if len(table.primary_key) == 1 else set()
    if table.source.rowid_alias or not table.primary_key:
        keys.add("rowid")
    mine = {c.name.lower() for c in table.columns}
    for stmt in h.body:
        tree = _parse(stmt)
        if not isinstance(tree, exp.Update) or tree.this.name.lower() != table.name.lower():
            return None
        where = tree.args.get("where")
        cond = where.this if where is not None else None
        sides = {_col(cond.this), _col(cond.expression)} if isinstance(cond, exp.EQ) else set()
        if not any(sides == {(None, k), ("new", k)} for k in keys):
            return None
        for eq in tree.expressions:
            if not isinstance(eq, exp.EQ) or not isinstance(eq.this, exp.Column):
                return None
            value = eq.expression.sql(dialect="sqlite")
            column = next((c.name for c in table.columns if c.name.lower() == eq.this.name.lower()),
                          None)
            # A value of this row alone (constants, clocks, NEW./OLD. columns): other
            # rows' columns would need a query, left to the review file.
            refs = [_col(c) for c in eq.expression.find_all(exp.Column)]
            if column is None or any(r is None or r[0] not in ("new", "old") or r[1] not in mine
                                     for r in refs):
                return None
            out.append((column, value))
    return out


def _col(node: exp.Expression) -> tuple[str | None, str] | None:
    if not isinstance(node, exp.Column):
        return None
    return (node.table.lower() or None, node.name.lower())


def _check_columns(tree: exp.Expression, plan: _Scope, own: Table) -> None:
    """Every column a statement names exists: PL/pgSQL checks only syntax when the
    function is created, so a wrong name would fail the application's writes later."""
    known = {c.name.lower() for t in plan.tables for c in t.columns}
    mine = {c.name.lower() for c in own.columns}
    for node in tree.find_all(exp.Column):
        ref = _col(node)
        if ref is None:
            continue
        qualifier, name = ref
        if qualifier in ("new", "old") and name not in mine:
            raise Untranslatable(f"{qualifier.upper()}.{name}: {own.name} has no such column")
        if qualifier not in ("new", "old") and name not in known:
            raise Untranslatable(f"column {name} is in no migrated table")


def _statement(sql: str, ctx: ExprContext, plan: _Scope, own: Table) -> str:
    tree = _parse(sql)
    target = tree.this.this if isinstance(tree, exp.Insert) else tree.this
    if not isinstance(tree, (exp.Update, exp.Insert, exp.Delete)) \
            or not isinstance(target, exp.Table):
        raise Untranslatable(f"{' '.join(sql.split())[:80]!r} is not an UPDATE, INSERT or "
                             "DELETE of a table")
    if target.name.lower() == own.name.lower():
        raise Untranslatable("a statement on the trigger's own table (PostgreSQL triggers "
                             "recurse where SQLite's do not)")
    dest = next((t for t in plan.tables if t.name.lower() == target.name.lower()), None)
    if dest is None:
        raise Untranslatable(f"table {target.name} is not migrated")
    _check_columns(tree, plan, own)
    typed: dict[str, str] = {}

    def typed_clock(value: exp.Expression, column: str) -> exp.Expression:
        # A clock value takes the type of the column it goes into.
        text = value.sql(dialect="sqlite")
        col = next((c for c in dest.columns if c.name.lower() == column.lower()), None)
        if col is None or now_sql_for(text, "text", probe=True) is None:
            return value
        slot = f"_pgshift_clock_{len(typed)}"
        typed[slot] = now_sql_for(text, col.pg_type)
        return exp.column(slot)

    if isinstance(tree, exp.Update):
        for eq in tree.expressions:
            if isinstance(eq, exp.EQ) and isinstance(eq.this, exp.Column):
                eq.set("expression", typed_clock(eq.expression, eq.this.name))
    elif isinstance(tree, exp.Insert) and isinstance(tree.expression, exp.Values):
        cols = [c.name for c in tree.this.expressions] if isinstance(tree.this, exp.Schema) \
            else [c.name for c in dest.columns]
        for row in tree.expression.expressions:
            row.set("expressions", [typed_clock(v, c) for v, c in
                                    zip(row.expressions, cols, strict=False)])
    return translate_statement(tree.sql(dialect="sqlite"), ctx, plan.schema, typed)


__all__ = ["REVIEW_FILE", "PlannedTrigger", "plan_triggers", "review_sql"]
