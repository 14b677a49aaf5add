"""The dashboard page, rendered on the server: readable and complete without JavaScript.

:func:`texts` turns a snapshot into the strings the page shows; the HTML here and the
script's live updates (``assets.SCRIPT``, which only places these strings and redraws
the charts) use the same ones, so the two views cannot disagree. Every value is escaped;
no value is a secret (the sampler's sources redact their texts: ``live.py``).
"""

from __future__ import annotations

import time
from html import escape
from typing import Any

from pgshift.dashboard.assets import SCRIPT, STYLE

# The operator verbs the page offers: (verb, button label, what it does).
VERBS = (
    ("promote", "Promote", "End the bake early, or pass a step held for an operator."),
    ("pause", "Pause", "Hold the current weight; checks and automatic rollback keep running."),
    ("resume", "Resume", "Continue after a pause."),
    ("abort", "Abort", "Stop advancing: all traffic to the current system of record; sync "
                       "keeps running."),
    ("rollback", "Roll back to blue", "Everything back to blue, green's writes carried into "
                                      "SQLite."),
)
# name, title, series (key, label), unit; the script draws the same charts from the points
CHARTS = (
    ("weight", "Green weight", (("weight", "green weight"),), "%"),
    ("err", "Error rate", (("blue_err", "blue"), ("green_err", "green")), "%"),
    ("p99", "Latency p99", (("blue_p99", "blue"), ("green_p99", "green")), "ms"),
    ("lag", "Sync lag", (("lag_ms", "to the system of record's peer"),), "ms"),
)


def _num(v: Any, unit: str = "", digits: int = 0) -> str:
    if v is None:
        return "—"
    return f"{float(v):,.{digits}f}{unit}"


def _rate(v: Any) -> str:
    return "—" if v is None else f"{float(v) * 100:.2f} %"


def clock(ts: str) -> str:
    """``2026-12-04T19:33:53.123Z`` as ``19:33:53``."""
    return ts[11:19] if len(ts) >= 19 else ts


def texts(s: dict[str, Any]) -> dict[str, Any]:
    """Every string the page shows for snapshot ``s`` (also sent to the script)."""
    state = s.get("status") or "not started"
    phase = s.get("phase") or "—"
    weight = s.get("weight")
    sor = s.get("system_of_record") or "blue"
    line = f"{state} at {phase}: green weight {_num(weight)} %, system of record {sor}"
    if s.get("paused"):
        line += " (PAUSED)"
    if s.get("waiting_for"):
        line += f"; waiting for {s['waiting_for']}"
    if s.get("error"):
        line = f"{state}: {s['error']}"
    ctl = s.get("controller") or {}
    sync = s.get("sync") or {}
    if not sync:
        lag = "not running yet"
    elif "error" in sync:
        lag = f"unreadable: {sync['error']}"
    elif sor == "green":
        lag = (f"{_num(sync.get('to_sqlite_lag_ms'))} ms to SQLite, "
               f"{_num(sync.get('to_sqlite_pending'))} pending")
    else:
        lag = f"{_num(sync.get('lag_ms'))} ms to PostgreSQL, {_num(sync.get('pending'))} pending"
    if sync and "error" not in sync:
        lag += f"; {_num(sync.get('conflicts'))} conflicts, {_num(sync.get('parked'))} parked"
    nxt = s.get("next") or {}
    left = nxt.get("seconds_left")
    fig = s.get("figures") or {}
    sides = []
    for side in ("blue", "green"):
        f = fig.get(side) or {}
        sides.append([side, _num(f.get("requests")), _num(f.get("errors")),
                      _rate(f.get("error_rate")), _num(f.get("p50_ms"), " ms", 1),
                      _num(f.get("p99_ms"), " ms", 1)])
    rb = s.get("last_rollback")
    approvals = s.get("approvals") or {}
    need = s.get("required_approvals") or []
    return {
        "title": f"pgshift · {s.get('cutover')} · {state}",
        "status_line": line, "status": state, "phase": phase, "weight": _num(weight),
        "weight_value": float(weight or 0),
        "router_weight": (_num(s.get("router_weight")) + " %" if s.get("router_weight")
                          is not None else f"unreadable ({s.get('router_error') or 'no router'})"),
        "sor": sor, "lag": lag,
        "controller": (f"running (pid {ctl.get('pid')})" if ctl.get("alive")
                       else "no engine running"),
        "next": nxt.get("what") or "—",
        "countdown": "none" if left is None else f"{left:.0f} s",
        "figures_window": (f"Traffic per side, last {_num(fig.get('window_s'))} s" if fig
                           else "Traffic per side: the router is not readable yet"),
        "sides": sides,
        "steps": [[f"{st.get('weight'):g} %", _num(st.get("requests")), _num(st.get("errors")),
                   _rate(st.get("error_rate")), _num(st.get("p99_ms"), " ms", 1),
                   str(st.get("decision"))] for st in s.get("steps") or []],
        "rollback": ("—" if not rb else
                     f"{'drill: ' if rb.get('drill') else ''}traffic on blue after "
                     f"{_num(rb.get('traffic_back_ms'))} ms, complete in "
                     f"{_num(rb.get('seconds'), ' s', 2)}"
                     + ("; STRANDED changes (see `pgshift status`)" if s.get("stranded")
                        else "")),
        "approvals": ", ".join(f"{r}: {approvals[r]['actor']}" if r in approvals
                               else f"{r}: missing"
                               for r in [*need, *(r for r in approvals if r not in need)])
                     or "none required",
        "updated": time.strftime("%H:%M:%S", time.gmtime(s.get("updated") or time.time()))
                   + " UTC",
    }


def chart_svg(name: str, title: str, series: tuple[tuple[str, str], ...], unit: str,
              points: list[dict[str, Any]]) -> str:
    """One chart as inline SVG (the script redraws it with the same geometry)."""
    w, h, pad = 600, 150, 28
    scale = 100.0 if name == "err" else 1.0
    values = [float(v) * scale for p in points for k, _ in series
              if (v := p.get(k)) is not None]
    top = 100.0 if name == "weight" else (max(values) or 1.0) if values else 1.0
    ymax = f"{top:.3g} {unit}" if values else "no data yet"
    t0 = points[0]["t"] if points else 0.0
    span = max((points[-1]["t"] - t0) if points else 1.0, 1.0)
    lines = []
    for i, (key, label) in enumerate(series):
        pts = [f"{pad + (w - 2 * pad) * (p['t'] - t0) / span:.1f},"
               f"{h - pad - (h - 2 * pad) * float(p[key]) * scale / top:.1f}"
               for p in points if p.get(key) is not None]
        lines.append(f'<polyline class="s{i} {escape(label.split()[0])}" points="{" ".join(pts)}"'
                     f'><title>{escape(label)}</title></polyline>')
    legend = " / ".join(label for _, label in series)
    return (f'<svg id="c-{name}" class="chart" viewBox="0 0 {w} {h}" role="img" '
            f'aria-labelledby="c-{name}-t" data-unit="{escape(unit)}" '
            f'data-keys="{" ".join(k for k, _ in series)}" data-scale="{scale:g}" '
            f'data-top="{"100" if name == "weight" else ""}">'
            f'<title id="c-{name}-t">{escape(title)} ({escape(legend)}), {escape(unit)}</title>'
            f'<line class="axis" x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}"/>'
            f'<line class="axis" x1="{pad}" y1="{pad}" x2="{pad}" y2="{h - pad}"/>'
            f'<text class="ymax" x="{pad + 4}" y="{pad - 8}">{escape(ymax)}</text>'
            + "".join(lines) + "</svg>")


def _dl(t: dict[str, Any]) -> str:
    rows = (("Status", "f-status", t["status"]), ("Phase", "f-phase", t["phase"]),
            ("System of record", "f-sor", t["sor"]), ("Sync lag", "f-lag", t["lag"]),
            ("Engine", "f-controller", t["controller"]),
            ("Last rollback", "f-rollback", t["rollback"]),
            ("Approvals", "f-approvals", t["approvals"]))
    weight = (f'<dt>Green weight</dt><dd><span id="f-weight">{escape(t["weight"])}</span> % '
              f'<meter id="m-weight" min="0" max="100" value="{t["weight_value"]:g}" '
              f'aria-label="green weight">{escape(t["weight"])} %</meter> '
              f'<small>router: <span id="f-router-weight">{escape(t["router_weight"])}'
              f'</span></small></dd>')
    return ('<dl class="facts">' + "".join(
        f'<dt>{label}</dt><dd id="{i}">{escape(v)}</dd>' + (weight if i == "f-phase" else "")
        for label, i, v in rows) + "</dl>")


def _table(tid: str, caption: str, head: list[str], rows: list[list[str]]) -> str:
    # a narrow screen scrolls the table, not the page (a focusable, labelled region)
    return (f'<div class="scroll" role="region" tabindex="0" aria-labelledby="{tid}-c">'
            f'<table id="{tid}"><caption id="{tid}-c">{escape(caption)}</caption><thead><tr>'
            + "".join(f'<th scope="col">{escape(h)}</th>' for h in head) + "</tr></thead><tbody>"
            + "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in r) + "</tr>"
                      for r in rows) + "</tbody></table></div>")


def _audit(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return '<ol id="audit" class="audit"><li>nothing recorded yet</li></ol>'
    return '<ol id="audit" class="audit">' + "".join(
        f'<li><time datetime="{escape(r["ts"])}">{escape(clock(r["ts"]))}</time> '
        f'<strong>{escape(r["kind"])}</strong> <span class="step">{escape(r["step"])}</span> '
        f'{escape(r["message"])} <span class="actor">— {escape(r["actor"])}</span></li>'
        for r in rows) + "</ol>"


def _form(verb: str, summary: str, what: str, reason: str, *, button: str | None = None,
          confirm: bool = True, before: str = "") -> str:
    """One control: a collapsed form posting ``verb`` to ``/api/verb``, its explanation,
    the fields in ``before``, the text field ``reason`` (label and input), the verb to type
    again when ``confirm``, and the button (``summary`` unless ``button``)."""
    typed = (f'<label for="c-{verb}">Type <kbd>{verb}</kbd> to confirm</label>'
             f'<input id="c-{verb}" name="confirm" required autocomplete="off" '
             f'pattern="{verb}" spellcheck="false">') if confirm else ""
    return (f'<details class="verb {verb}"><summary>{escape(summary)}…</summary>'
            f'<form method="post" action="/api/verb" data-verb="{verb}">'
            f'<p>{escape(what)}</p><input type="hidden" name="verb" value="{verb}">'
            f"{before}{reason}{typed}"
            f'<button type="submit" name="go" value="{verb}">{escape(button or summary)}'
            "</button></form></details>")


def _reason_input(verb: str, label: str) -> str:
    return (f'<label for="r-{verb}">{label}</label>'
            f'<input id="r-{verb}" name="reason" required maxlength="500" autocomplete="off">')


def _people_controls(roles: list[str]) -> str:
    """Approve as a role finalize waits for (confirmed like a verb), and add a note."""
    out = []
    if roles:
        options = "".join(f'<option value="{escape(r)}">{escape(r)}</option>' for r in roles)
        out.append(_form(
            "approve", "Approve", "Record an approval finalize waits for (who and when go "
            "to the report).", _reason_input("approve", "Note (goes to the audit trail)"),
            before=f'<label for="role-approve">As</label><select id="role-approve" '
                   f'name="role" required>{options}</select>'))
    out.append(_form(
        "note", "Add a note", "An operator remark or user feedback: the audit trail and the "
        "report quote it.", '<label for="r-note">Note</label><textarea id="r-note" '
        'name="reason" required maxlength="500" rows="2"></textarea>', button="Add note",
        confirm=False))
    return "".join(out)


def _controls() -> str:
    return "".join(_form(verb, label, what,
                         _reason_input(verb, "Reason (goes to the audit trail)"))
                   for verb, label, what in VERBS)


def render_page(s: dict[str, Any], nonce: str) -> str:
    """The whole dashboard for snapshot ``s``; ``nonce`` admits the inline style and script
    under the page's Content-Security-Policy."""
    t = texts(s)
    points = s.get("points") or []
    charts = "".join(f"<figure>{chart_svg(n, title, series, unit, points)}"
                     f"<figcaption>{escape(title)} ({escape(unit)})"
                     + (": blue solid, green dashed" if len(series) == 2 else "")
                     + "</figcaption></figure>"
                     for n, title, series, unit in CHARTS)
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(t["title"])}</title>
<style nonce="{nonce}">{STYLE}</style>
</head>
<body>
<a class="skip" href="#main">Skip to the rollout</a>
<header>
<h1>pgshift dashboard <span class="name">{escape(str(s.get("cutover")))}</span></h1>
<p id="status" role="status" aria-live="polite">{escape(t["status_line"])}</p>
</header>
<main id="main">
<section class="card" aria-labelledby="h-now"><h2 id="h-now">Now</h2>{_dl(t)}</section>
<section class="card" aria-labelledby="h-next"><h2 id="h-next">Next decision</h2>
<p id="f-next">{escape(t["next"])}</p>
<p>Countdown: <span id="f-countdown" role="timer">{escape(t["countdown"])}</span>
(estimated).</p>
<h2 id="h-controls">Controls</h2>
<p id="verb-result" role="status" aria-live="assertive"></p>
{_controls()}
{_people_controls(list(s.get("required_approvals") or []))}
</section>
<section class="card wide" aria-labelledby="h-traffic"><h2 id="h-traffic">Blue vs green</h2>
{_table("sides", t["figures_window"],
        ["side", "requests", "errors", "error rate", "p50", "p99"], t["sides"])}
<div class="charts">{charts}</div>
</section>
<section class="card wide" aria-labelledby="h-steps"><h2 id="h-steps">Traffic steps</h2>
{_table("steps", "Each step's analysis",
        ["weight", "green requests", "errors", "error rate", "p99", "decision"], t["steps"])}
</section>
<section class="card wide" aria-labelledby="h-audit"><h2 id="h-audit">Audit trail</h2>
<p>Decisions, operator commands, notes and approvals, newest first.</p>
{_audit(s.get("audit") or [])}
</section>
</main>
<footer><p>Updated <span id="f-updated">{escape(t["updated"])}</span>; live updates:
<span id="live">off</span>.
<noscript>Live updates need JavaScript: reload the page for the latest state; the
controls work without it.</noscript></p></footer>
<script nonce="{nonce}">{SCRIPT}</script>
</body>
</html>
"""


def _shell(title: str, body: str, nonce: str) -> str:
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
            f'content="width=device-width, initial-scale=1"><title>{escape(title)}</title>'
            f'<style nonce="{nonce}">{STYLE}</style></head><body><header><h1>'
            f'{escape(title)}</h1></header><main id="main" class="narrow">{body}</main>'
            "</body></html>")


def render_login(nonce: str, message: str = "") -> str:
    """The sign-in page: the admin token, once (a cookie keeps it for this browser)."""
    note = f'<p role="alert">{escape(message)}</p>' if message else ""
    return _shell("pgshift dashboard: sign in", note + (
        '<form method="post" action="/login"><label for="token">Admin token (the cutover\'s '
        "<code>router.token</code> variable, or the token in the URL the dashboard printed)"
        '</label><input id="token" name="token" type="password" required '
        'autocomplete="current-password"><button type="submit">Sign in</button></form>'), nonce)


def render_result(verb: str, outcome: str, ok: bool, nonce: str) -> str:
    """What a control did, for a browser without JavaScript (the form's answer)."""
    return _shell(f"pgshift dashboard: {verb}", (
        f'<p role="{"status" if ok else "alert"}">{escape(verb)}: {escape(outcome)}</p>'
        '<p><a href="/">Back to the dashboard</a></p>'), nonce)
