"""The deployment report as one self-contained HTML file: inline CSS and inline SVG, no
script, no external asset (it is mailed, archived and opened offline)."""

from __future__ import annotations

import re
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
pre.text{white-space:pre-wrap}
code{background:#f3f3f3;padding:0 .2rem}
pre code{background:none;padding:0}
figure{margin:.5rem 0 1.25rem}
ul.check{list-style:none;padding-left:1rem}
ul.check li{margin:.15rem 0}
.box{display:inline-block;width:1em;height:1em;line-height:1em;border:1.5px solid #555;
border-radius:3px;margin-right:.5rem;text-align:center;font-size:.9em;vertical-align:-.1em}
.box.done{background:#2a7;border-color:#2a7;color:#fff}
"""


def _table(t: Table) -> str:
    head = "".join(f"<th scope=\"col\">{escape(h)}</th>" for h in t.header)
    rows = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>"
                   for row in t.rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _inline(text: str) -> str:
    """Escaped text with `code` spans (the Markdown form of commands) as <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", escape(text))


def _bullet(text: str) -> str:
    """A checklist line (``[x] ...`` / ``[ ] ...``) with a box that says its state."""
    if text.startswith(("[x] ", "[ ] ")):
        done = text[1] == "x"
        return (f'<li><span class="box{" done" if done else ""}" role="img" aria-label='
                f'"{"done" if done else "to do"}">{"✔" if done else ""}</span>'
                f"{_inline(text[4:])}</li>")
    return f"<li>{_inline(text)}</li>"


def _section(s: Section, svgs: dict[str, str]) -> str:
    parts = [f"<section><h2>{escape(s.title)}</h2>"]
    items = [f"<li><strong>{escape(k)}</strong>: {_inline(v)}</li>" for k, v in s.items]
    bullets = [_bullet(b) for b in s.bullets]
    checklist = bool(bullets) and all(b.startswith(("[x] ", "[ ] ")) for b in s.bullets)
    if items:
        parts.append("<ul>" + "".join(items) + "</ul>")
    if bullets:
        parts.append(('<ul class="check">' if checklist else "<ul>") + "".join(bullets) +
                     "</ul>")
    parts += [f"<figure>{svgs[c]}</figure>" for c in s.charts if svgs.get(c)]
    parts += [_table(t) for t in s.tables]
    if s.code:
        cls = ' class="text"' if s.code_lang == "text" else ""
        parts.append(f"<pre{cls}><code>{escape(s.code)}</code></pre>")
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
