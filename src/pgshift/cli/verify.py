"""``pgshift verify``."""

from __future__ import annotations

from contextlib import closing
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from pgshift.cli.output import out_console, print_json
from pgshift.dsn import resolve
from pgshift.errors import ExitCode, PgshiftError, UsageError
from pgshift.progress import for_terminal
from pgshift.report_tables import mapped_checks_text
from pgshift.source.snapshot import check_sqlite_file
from pgshift.verify.run import VerifyOptions, VerifyResult, verify


def _fraction(text: str | None) -> float | None:
    if text is None:
        return None
    raw = text.strip().rstrip("%")
    try:
        value = float(raw) / (100 if text.strip().endswith("%") else 1)
    except ValueError as exc:
        raise UsageError(f"--sample {text!r} is not a percentage", hint="--sample 1%") from exc
    return value


def verify_command(
    sqlite_path: Annotated[Path, typer.Argument(help="The application's SQLite file.",
                                                show_default=False)],
    postgres_dsn: Annotated[str, typer.Argument(help="The PostgreSQL copy (URI, keywords or "
                                                "env:VAR).", show_default=False)],
    schema: Annotated[str, typer.Option("--schema", help="Target schema.")] = "public",
    tables: Annotated[list[str] | None, typer.Option("--tables", "-t",
                                                     help="Only these tables.")] = None,
    exclude: Annotated[list[str] | None, typer.Option("--exclude", "-x",
                                                      help="Skip these tables.")] = None,
    sample: Annotated[str | None, typer.Option("--sample", help="Check only this share of "
                                               "key-range segments, e.g. 1%.")] = None,
    live: Annotated[bool, typer.Option("--live", help="Re-check a differing segment after "
                                       "the sync lag drains before reporting it.")] = False,
    no_schema: Annotated[bool, typer.Option("--no-schema", help="Skip the schema check.")]
    = False,
    show_values: Annotated[bool, typer.Option(
        "--show-values", help="Print differing values of secret-looking columns (token, "
        "secret, password, key, iv, ...) in full; by default they show as length and a "
        "short hash.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="JSON result on stdout.")] = False,
) -> None:
    """Prove SQLite and PostgreSQL hold the same data; point at every differing row.

    Key-range segments are checksummed on both engines over canonical encodings (an
    epoch-ms integer and its timestamptz, 0/1 and boolean, JSON text and jsonb compare
    equal), differing segments are bisected down to rows. Keyless tables are compared
    as multisets. The schema is checked against the migration plan.

    Differing values of columns named like credentials (access_token, password_hash,
    api_key, iv, ...) are shown as their length and a short hash unless --show-values.

    Exit codes: 0 identical, 1 differences, 2 bad input, 4 SQLite failure,
    5 PostgreSQL failure, 6 interrupted.

      pgshift verify app.db env:DATABASE_URL

      pgshift verify app.db env:DATABASE_URL --sample 1% --json
    """
    opts = VerifyOptions(sqlite_path=sqlite_path, dsn=resolve(postgres_dsn), schema=schema,
                         tables=list(tables or []), exclude=list(exclude or []),
                         sample=_fraction(sample), live=live, check_schema=not no_schema,
                         show_values=show_values)
    check_sqlite_file(sqlite_path)
    with closing(for_terminal(json_output)) as progress:
        result = verify(opts, progress)
    if json_output:
        print_json(result.to_dict())
    else:
        _print(result)
    if not result.identical:
        raise _Differences(result)


def _print(result: VerifyResult) -> None:
    con = out_console()
    t = Table(title="pgshift verify", title_justify="left")
    for c in ("table", "mode", "SQLite rows", "PostgreSQL rows", "segments", "differing",
              "seconds", "equal"):
        t.add_column(c, justify="left" if c in ("table", "mode") else "right")
    for v in result.tables:
        t.add_row(v.table, v.mode, f"{v.sqlite_rows:,}", f"{v.postgres_rows:,}",
                  f"{v.segments_checked}/{v.segments}", str(v.differing_segments),
                  f"{v.seconds:.2f}", "yes" if v.equal else "NO")
    con.print(t)
    diffs = [d for v in result.tables for d in v.diffs]
    if diffs:
        dt = Table(title="differing rows", title_justify="left")
        for c in ("table", "key", "kind", "column: SQLite | PostgreSQL"):
            dt.add_column(c, overflow="fold")
        for d in diffs[:200]:
            cols = "; ".join(f"{c}: {a!r} | {b!r}" for c, (a, b) in d.columns.items())
            dt.add_row(d.table, ", ".join(f"{k}={v}" for k, v in d.key.items()), d.kind, cols)
        con.print(dt)
    if result.schema_diffs:
        st = Table(title="schema differences", title_justify="left")
        for c in ("object", "what", "expected", "actual"):
            st.add_column(c, overflow="fold")
        for s in result.schema_diffs:
            st.add_row(s.obj, s.what, s.expected, s.actual)
        con.print(st)
    if result.links or result.sources:
        con.print(mapped_checks_text(result.links, result.sources))
    verdict = "identical" if result.identical else "DIFFERENT"
    con.print(f"{verdict} ({result.seconds:.1f}s"
              + (f", sampled {result.sampled:.1%} of segments" if result.sampled else "") + ")")


class _Differences(PgshiftError):
    exit_code = ExitCode.DIFFERENCES

    def __init__(self, result: VerifyResult) -> None:
        n = sum(len(v.diffs) for v in result.tables)
        links = sum(link.wrong for link in result.links)
        super().__init__(f"differences found: {n} row(s), {len(result.schema_diffs)} schema "
                         "item(s)" + (f", {links} wrong link(s)" if links else ""),
                         hint="rerun with --json for the full list")
