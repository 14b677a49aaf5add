"""The deployment report as one self-contained HTML file: inline CSS and inline SVG, no
script, no external asset (it is mailed, archived and opened offline)."""

from __future__ import annotations

from html import escape

from pgshift.report.charts import charts
from pgshift.report.content import Section, Table
from pgshift.report.facts import ReportFacts

_CSS = """
body{font:15px/1.45 system-ui,sans-serif;max-width:72rem;margin:1rem auto;padding:0 1rem;
color:#222}
table{border-collapse:collapse;margin:.5rem 0 1rem;font-size:13px;display:block;overflow-x:auto}
th,td{border:1px solid #ccc;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f3f3f3}
pre{background:#f6f6f6;padding:.75rem;overflow-x:auto}
figure{margin:.5rem 0 1rem}
"""


def _table(t: Table) -> str:
    head = "".join(f"<th scope=\"col\">{escape(h)}</th>" for h in t.header)
    rows = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>"
                   for row in t.rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _section(s: Section, svgs: dict[str, str]) -> str:
    parts = [f"<section><h2>{escape(s.title)}</h2>"]
    items = [f"<li><strong>{escape(k)}</strong>: {escape(v)}</li>" for k, v in s.items]
    items += [f"<li>{escape(b)}</li>" for b in s.bullets]
    if items:
        parts.append("<ul>" + "".join(items) + "</ul>")
    parts += [f"<figure>{svgs[c]}</figure>" for c in s.charts if svgs.get(c)]
    parts += [_table(t) for t in s.tables]
    if s.code:
        parts.append(f"<pre><code>{escape(s.code)}</code></pre>")
    return "".join(parts) + "</section>"


def render(facts: ReportFacts, sections: list[Section], title: str) -> str:
    """The HTML document (the report, or one operational document)."""
    svgs = charts(facts)
    body = "\n".join(_section(s, svgs) for s in sections)
    return (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
            f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>"
            f"<h1>{escape(title)}</h1>\n{body}\n<p><small>From the journal and audit trail in "
            f"{escape(facts.state_dir)}.</small></p></body></html>\n")
