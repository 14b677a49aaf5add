"""Build the migration plan: target tables, type decisions, DDL and anomalies.

The plan is pure data computed from the catalog and the profile; ``--dry-run``
prints it, migrate executes it. Anything that cannot be carried faithfully
becomes a Note, never a silent omission.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

from pgshift.copy.convert import is_clean
from pgshift.errors import UsageError
from pgshift.schema import ddl, triggers
from pgshift.schema.defaults import plan_default
from pgshift.schema.expr import ExprContext, Untranslatable, translate, translate_query
from pgshift.schema.keys import null_key_fill
from pgshift.schema.model import Check, Column, ForeignKey, Index, Note, Table, View, qident
from pgshift.schema.names import Names, assign
from pgshift.schema.typemap import decide
from pgshift.source.catalog import Catalog, SourceTable
from pgshift.source.profile import ColumnProfile, TableProfile

_NOCASE_HINT = ("COLLATE NOCASE has no PostgreSQL equivalent: comparisons become "
                "case-sensitive. Options: the citext extension, or a lower() expression index")


@dataclass
class Plan:
    """Everything migrate will create, in order, and what the user must know."""

    schema: str
    tables: list[Table]
    views: list[View] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    profiles: dict[str, TableProfile] = field(default_factory=dict)
    triggers: list[triggers.PlannedTrigger] = field(default_factory=list)

    def table(self, name: str) -> Table:
        for t in self.tables:
            if t.name == name:
                return t
        raise KeyError(name)

    @property
    def total_rows(self) -> int:
        return sum(t.rows for t in self.tables)

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready description (``--dry-run --json``)."""
        return {
            "schema": self.schema,
            "tables": [
                {
                    "name": t.name,
                    "pg_name": t.pg_name,
                    "rows": t.rows,
                    "fill_null_keys": t.fill_null_keys,
                    "columns": [
                        {"name": c.name, "pg_name": c.pg_name,
                         "source_type": c.decision and _src_type(t, c.name),
                         "pg_type": c.pg_type, "conversion": c.decision.conversion,
                         "reason": c.decision.reason, "not_null": c.not_null,
                         "default": c.default, "generated": c.generated,
                         "identity": c.decision.identity}
                        for c in t.columns
                    ],
                    "ddl": ddl.create_table(self.schema, t),
                    "defaults": ddl.defaults(self.schema, t),
                    "post_load": ddl.post_load_statements(self.schema, t),
                }
                for t in self.tables
            ],
            "views": [{"name": v.name, "sql": ddl.create_view(self.schema, v)} for v in self.views],
            "triggers": [tr.to_dict() for tr in self.triggers],
            "notes": [n.to_dict() for n in self.notes],
            "skipped": [{"object": o, "reason": r} for o, r in self.skipped],
        }


def _src_type(t: Table, col: str) -> str:
    return t.source.column(col).declared_type


def select_tables(catalog: Catalog, include: list[str] | None,
                  exclude: list[str] | None) -> list[SourceTable]:
    """Tables matching ``--tables``/``--exclude`` (names or shell patterns)."""
    names = [t.name for t in catalog.tables]
    for pattern in include or []:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
            raise UsageError(f"--tables {pattern!r} matches no table",
                             hint=f"tables in the source: {', '.join(names) or '(none)'}")
    chosen = [t for t in catalog.tables
              if (not include or any(fnmatch.fnmatchcase(t.name, p) for p in include))
              and not any(fnmatch.fnmatchcase(t.name, p) for p in exclude or [])]
    return chosen


def build_plan(
    catalog: Catalog,
    profiles: dict[str, TableProfile],
    *,
    schema: str = "public",
    tables: list[SourceTable] | None = None,
    fill_null_keys: bool = False,
) -> Plan:
    """Translate the chosen source tables (all by default) into a target plan.

    ``fill_null_keys`` gives rows whose (non-rowid) integer primary key is NULL
    identity values past the maximum instead of rejecting them; a key declared
    auto-increment gets that without being asked.
    """
    chosen = tables if tables is not None else catalog.tables
    plan = Plan(schema=schema, tables=[], skipped=list(catalog.skipped), profiles=profiles)
    for name, reason in catalog.skipped:
        plan.notes.append(Note("info", name, f"skipped: {reason}"))
    names = catalog_names(catalog)
    for obj, message in names.notes():
        plan.notes.append(Note("warning" if "equal to another" in message else "info", obj,
                               message))
    chosen_names = {t.name for t in chosen}
    all_names = {t.name.lower(): t.name for t in catalog.tables}
    for src in chosen:
        plan.tables.append(_plan_table(src, profiles[src.name], plan.notes, chosen_names, names,
                                       fill_null_keys))
    # A view sees several tables: a column's spelling and type are used only when every
    # table agrees on them; otherwise the view's own spelling stands.
    spellings: dict[str, set[str]] = {}
    types: dict[str, set[str]] = {}
    for name in all_names.values():
        spellings.setdefault(name.lower(), set()).add(names.relation(name))
    for t in plan.tables:
        for c in t.columns:
            spellings.setdefault(c.name.lower(), set()).add(c.pg_name)
            types.setdefault(c.name.lower(), set()).add(c.pg_type)
    view_ctx = ExprContext(
        column_types={k: next(iter(v)) for k, v in types.items() if len(v) == 1},
        names={k: next(iter(v)) for k, v in spellings.items() if len(v) == 1})
    for view in catalog.views:
        try:
            plan.views.append(View(names.relation(view.name),
                                   translate_query(view.select_sql, view_ctx)))
        except Untranslatable as exc:
            plan.notes.append(Note("untranslated", view.name, f"view not created: {exc}"))
    plan.triggers = triggers.plan_triggers(schema, plan.tables, catalog.triggers, plan.notes)
    return plan


def catalog_names(catalog: Catalog) -> Names:
    """The PostgreSQL name of every object of the catalog (schema.names)."""
    relations: list[str] = [t.name for t in catalog.tables] + [v.name for v in catalog.views]
    for t in catalog.tables:
        relations += [i.name for i in t.indexes]
        relations += [t.pk_name] if t.pk_name else []
    return Names(relations, {t.name: [c.name for c in t.columns] for t in catalog.tables})


def _plan_table(src: SourceTable, prof: TableProfile, notes: list[Note],
                chosen: set[str], names: Names, fill_null_keys: bool) -> Table:
    columns: list[Column] = []
    for sc in src.columns:
        cp = prof.columns.get(sc.name, ColumnProfile())
        decision = decide(sc, cp, rowid_alias=(sc.name == src.rowid_alias))
        for a in decision.anomalies:
            notes.append(Note("anomaly", f"{src.name}.{sc.name}", a))
        # A primary-key column is NOT NULL in PostgreSQL whatever SQLite declared.
        not_null = sc.notnull or sc.pk_position > 0
        clean = is_clean(decision.conversion, set(cp.classes), int_min=cp.int_min,
                         int_max=cp.int_max, bool_ints=cp.bool_ints, integers=cp.integers)
        columns.append(Column(sc.name, decision.pg_type, not_null, decision, clean=clean,
                              nulls=cp.nulls, nul_texts=cp.nul_texts,
                              classes=frozenset(cp.classes) - {"null"},
                              pg_name=names.column(src.name, sc.name)))
    table = Table(src.name, columns, src, primary_key=list(src.primary_key),
                  pk_name=names.relation(src.pk_name) if src.pk_name else None,
                  rows=prof.rows, pg_name=names.relation(src.name))
    null_key_fill(table, fill_null_keys, notes)
    ctx = ExprContext(column_types={c.name.lower(): c.pg_type for c in columns},
                      names={c.name.lower(): c.pg_name for c in columns})
    for sc, col in zip(src.columns, columns, strict=True):
        if sc.default is not None:
            try:
                col.default = plan_default(sc.default, col, ctx)
            except Untranslatable as exc:
                notes.append(Note("untranslated", f"{src.name}.{sc.name}",
                                  f"DEFAULT {sc.default} not carried: {exc}"))
        if sc.generated_expr is not None:
            try:
                col.generated = translate(sc.generated_expr, ctx)
            except Untranslatable as exc:
                notes.append(Note("untranslated", f"{src.name}.{sc.name}",
                                  f"generated column becomes a plain column with its current "
                                  f"values: {exc}"))
        if sc.collation and sc.collation.upper() == "NOCASE":
            notes.append(Note("warning", f"{src.name}.{sc.name}", _NOCASE_HINT))
        if sc.collation and sc.collation.upper() == "RTRIM":
            notes.append(Note("warning", f"{src.name}.{sc.name}",
                              "COLLATE RTRIM ignored: trailing spaces are significant in "
                              "PostgreSQL"))
        if col.decision.identity:
            table.identity_column = col.name
    if src.rowid_alias and src.autoincrement:
        table.sequence_floor = src.sequence or 0
    for u in src.uniques:
        cols = [p.column for p in u.parts if p.column]
        table.uniques.append((None, cols))
    # CHECK and FOREIGN KEY names are unique per table in PostgreSQL.
    cons = assign(n for n in [*(c.name for c in src.checks), *(f.name for f in src.foreign_keys)]
                  if n)
    for chk in src.checks:
        try:
            table.checks.append(Check(cons.get(chk.name or "", chk.name),
                                      translate(chk.expr, ctx)))
        except Untranslatable as exc:
            notes.append(Note("untranslated", f"{src.name}", f"CHECK ({chk.expr}) not carried: "
                              f"{exc}"))
    for idx in src.indexes:
        _plan_index(table, idx, ctx, notes, names)
    for fk in src.foreign_keys:
        if fk.ref_table not in chosen:
            notes.append(Note("warning", src.name, f"foreign key ({', '.join(fk.columns)}) -> "
                              f"{fk.ref_table} not created: {fk.ref_table} is not migrated"))
            continue
        table.foreign_keys.append(ForeignKey(
            cons.get(fk.name or "", fk.name), fk.columns, fk.ref_table, fk.ref_columns,
            fk.on_update, fk.on_delete, fk.deferred, pg_ref_table=names.relation(fk.ref_table),
            pg_ref_columns=[names.column(fk.ref_table, c) for c in fk.ref_columns]))
    return table


def _pg_column(table: Table, name: str) -> str:
    try:
        return table.pg(name)
    except KeyError:  # "rowid" in an index of a table without such a column
        return name


def _plan_index(table: Table, idx: object, ctx: ExprContext, notes: list[Note],
                names: Names) -> None:
    from pgshift.source.catalog import SourceIndex

    assert isinstance(idx, SourceIndex)
    parts: list[str] = []
    try:
        for p in idx.parts:
            if p.column is not None:
                text = qident(_pg_column(table, p.column))
            elif p.expr is not None:
                text = "(" + translate(p.expr, ctx) + ")"
            else:
                raise Untranslatable("expression part could not be read from the index SQL")
            if p.collation and p.collation.upper() == "NOCASE":
                notes.append(Note("warning", idx.name, _NOCASE_HINT))
            parts.append(text + (" DESC" if p.desc else ""))
        where = translate(idx.where, ctx) if idx.where else None
    except Untranslatable as exc:
        notes.append(Note("untranslated", idx.name, f"index not created: {exc}"))
        return
    table.indexes.append(Index(names.relation(idx.name), table.pg_name, idx.unique, parts, where,
                               source_name=idx.name))
