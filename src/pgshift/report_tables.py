"""Human-readable renderings of plans and results (Rich renderables)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Group
from rich.table import Table
from rich.text import Text

from pgshift.existing.plan import MappedPlan, MappedTable
from pgshift.schema import ddl
from pgshift.verify.relationships import LinkCheck, SourceCount

if TYPE_CHECKING:
    from pgshift.migrate import MigrateResult
    from pgshift.schema.model import Note
    from pgshift.schema.plan import Plan


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f}"


def migrate_summary(result: MigrateResult) -> Group:
    """Per-table rows, bytes, time and rejects, then the steps and notes."""
    t = Table(title="pgshift migrate", title_justify="left")
    for col, just in (("table", "left"), ("source rows", "right"), ("loaded", "right"),
                      ("rejects", "right"), ("MB", "right"), ("seconds", "right")):
        t.add_column(col, justify=just)  # type: ignore[arg-type]
    # A query or filtered feed: its rows next to its base table's (docs/mapping.md).
    base = {m.name: m.base_rows for m in result.plan.tables
            if isinstance(m, MappedTable) and m.base_rows is not None}
    for s in result.tables:
        of = f" of {base[s.name]:,}" if s.name in base else ""
        t.add_row(s.name, f"{s.source_rows:,}{of}", f"{s.rows:,}",
                  Text(f"{s.rejects:,}", style="red" if s.rejects else ""),
                  _mb(s.bytes), f"{s.seconds:.1f}")
    t.add_row("total", f"{sum(s.source_rows for s in result.tables):,}",
              f"{sum(s.rows for s in result.tables):,}", f"{result.rejects:,}",
              _mb(sum(s.bytes for s in result.tables)), f"{result.seconds:.1f}", style="bold")
    steps = Table(title="steps", title_justify="left")
    steps.add_column("step")
    steps.add_column("seconds", justify="right")
    for name, secs in result.steps:
        steps.add_row(name, f"{secs:.2f}")
    parts: list[Table | Text] = [t, steps]
    notes = [n for n in result.plan.notes if n.level != "info"] + result.violations
    if notes:
        parts.append(notes_table(notes))
    return Group(*parts)


def notes_table(notes: list[Note]) -> Table:
    nt = Table(title="notes", title_justify="left")
    nt.add_column("level")
    nt.add_column("object")
    nt.add_column("message", overflow="fold")
    for n in notes:
        style = {"violation": "red", "anomaly": "yellow", "untranslated": "yellow"}.get(n.level, "")
        nt.add_row(Text(n.level, style=style), n.obj, n.message)
    return nt


def plan_text(plan: Plan) -> Group:
    """``--dry-run``: type decisions per table, the DDL, anomalies and untranslated parts."""
    parts: list[Table | Text] = []
    for tbl in plan.tables:
        renamed = "" if tbl.pg_name == tbl.name else f" -> {tbl.pg_name}"
        t = Table(title=f"{tbl.name}{renamed} ({tbl.rows:,} rows)", title_justify="left")
        for col in ("column", "SQLite", "PostgreSQL", "conversion", "why"):
            t.add_column(col, overflow="fold")
        for c in tbl.columns:
            shown = c.name if c.pg_name == c.name else f"{c.name} -> {c.pg_name}"
            t.add_row(shown, tbl.source.column(c.name).declared_type or "(none)", c.pg_type,
                      c.decision.conversion, c.decision.reason)
        parts.append(t)
    sql = []
    for tbl in plan.tables:
        sql.append(ddl.create_table(plan.schema, tbl) + ";")
        sql.extend(s + ";" for s in ddl.defaults(plan.schema, tbl))
        sql.extend(s + ";" for s in ddl.post_load_statements(plan.schema, tbl))
    sql.extend(ddl.create_view(plan.schema, v) + ";" for v in plan.views)
    for trig in plan.triggers:
        sql.extend(s + ";" for s in trig.statements())
    parts.append(Text("\n-- DDL\n" + "\n".join(sql) + "\n"))
    if plan.notes:
        parts.append(notes_table(plan.notes))
    parts.append(Text(f"{len(plan.tables)} tables, {plan.total_rows:,} rows"))
    return Group(*parts)


def mapped_plan_text(plan: MappedPlan) -> Group:
    """``--into-existing --dry-run``: per target column its source, conversion, anomalies."""
    parts: list[Table | Text] = []
    for tbl in plan.tables:
        src = tbl.source_label + (f" where {tbl.where}" if tbl.where else "")
        t = Table(title=f"{tbl.name} <- {src} ({tbl.rows:,} rows)", title_justify="left")
        for col in ("column", "type", "from (SQLite)", "conversion", "rejects"):
            t.add_column(col, overflow="fold")
        for c in tbl.columns:
            t.add_row(c.target.name, c.target.type, c.origin, c.reason,
                      f"{c.rejects:,}" if c.rejects else "")
        for name in tbl.defaulted:
            target_col = tbl.target.column(name)
            t.add_row(name, target_col.type if target_col else "",
                      "(default)", "PostgreSQL's DEFAULT / identity", "")
        parts.append(t)
    if plan.notes:
        parts.append(notes_table(plan.notes))
    total = sum(t.rows for t in plan.tables)
    parts.append(Text(f"{len(plan.tables)} tables, {total:,} rows"))
    return Group(*parts)


def mapped_checks_text(links: list[LinkCheck], sources: list[SourceCount]) -> Group:
    """verify after a mapped load: each feed against its base table, each link checked."""
    parts: list[Table | Text] = []
    if sources:
        st = Table(title="source rows (what the mapping loaded of each source table)",
                   title_justify="left")
        for col, just in (("table", "left"), ("base table", "left"), ("base rows", "right"),
                          ("loaded from it", "right"), ("left out", "right")):
            st.add_column(col, justify=just)  # type: ignore[arg-type]
        for s in sources:
            left = None if s.base_rows is None else s.base_rows - s.rows
            st.add_row(s.table, s.base or "(query)",
                       "" if s.base_rows is None else f"{s.base_rows:,}", f"{s.rows:,}",
                       Text("" if left is None else f"{left:,}", style="yellow" if left else ""))
        parts.append(st)
    if links:
        lt = Table(title="links (each foreign key against the source's own reference)",
                   title_justify="left")
        for col in ("table", "foreign key", "checked via", "rows", "wrong", "not loaded parent"):
            lt.add_column(col, overflow="fold")
        for link in links:
            wrong = Text(f"{link.wrong:,}", style="red" if link.wrong else "")
            lt.add_row(link.table, link.constraint, link.via or f"skipped: {link.skipped}",
                       f"{link.rows:,}", wrong, f"{link.orphans:,}")
            for ex in link.examples:
                lt.add_row("", "", f"e.g. source {ex['source_key']}: loaded {ex['loaded']}, "
                           f"its source parent is {ex['expected']}", "", "", "")
        parts.append(lt)
    checked = sum(1 for link in links if link.skipped is None)
    parts.append(Text("after a mapped load: the rows are compared with what the mapping yields "
                      "from the source, so a mistake in the mapping itself shows only in the "
                      f"links ({checked} of {len(links)} foreign key(s) checked against the "
                      "source's own references) and the source rows above; see "
                      "docs/mapping.md#verify"))
    return Group(*parts)
