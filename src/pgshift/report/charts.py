"""Inline SVG charts for the HTML report: no script, no external asset.

Each function returns one ``<svg>`` element (with a ``<title>`` for screen readers) or
an empty string when there is nothing recorded to draw.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from html import escape

from pgshift.report.facts import ReportFacts, parse_ts
from pgshift.report.traffic import Span

W, H, PAD_L, PAD_B, PAD_T, PAD_R = 640, 240, 64, 32, 36, 16
BLUE, GREEN = "#37a", "#2a7"


def nice(v: float) -> float:
    """The smallest 1, 2, 2.5 or 5 times a power of ten at or above ``v`` (an axis top
    whose quarters read well)."""
    if v <= 0:
        return 1.0
    mag = 10 ** math.floor(math.log10(v))
    return next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= v * (1 - 1e-9))


def _frame(title: str, body: list[str], y_max: float, y_unit: str, x_label: str) -> str:
    ph = H - PAD_B - PAD_T
    ticks = []
    for i in range(5):
        v = y_max * i / 4
        y = PAD_T + ph - ph * i / 4
        ticks.append(f'<line x1="{PAD_L}" y1="{y:.1f}" x2="{W - PAD_R}" y2="{y:.1f}" '
                     f'stroke="#ddd"/><text x="{PAD_L - 6}" y="{y + 4:.1f}" '
                     f'text-anchor="end" font-size="11">{_fmt(v)}{escape(y_unit)}</text>')
    return (f'<svg role="img" viewBox="0 0 {W} {H}" '
            f'width="100%" style="max-width:{W}px"><title>{escape(title)}</title>'
            f'<text x="{PAD_L}" y="13" font-size="13" font-weight="bold">{escape(title)}'
            "</text>" + "".join(ticks) + "".join(body) +
            f'<text x="{(W + PAD_L) / 2}" y="{H - 4}" text-anchor="middle" font-size="11">'
            f'{escape(x_label)}</text></svg>')


Point = tuple[float, float | None]  # epoch seconds, value (None: a break in the line)
Line = tuple[str, list[Point], str, bool]  # name, points, colour, dashed


def _time_axis(t0: float, span: float) -> tuple[float, str]:
    """The x axis' unit (seconds per unit) and its name, from the span."""
    if span >= 3 * 3600:
        return 3600.0, "h"
    if span >= 180:
        return 60.0, "min"
    return 1.0, "s"


def lines(title: str, series: list[Line], unit: str, t0: float, t1: float, *,
          y_max: float | None = None, markers: list[tuple[float, str]] | None = None) -> str:
    """A time-series chart: one polyline per series over ``t0``..``t1`` (a ``None`` value
    breaks the line), dashed vertical markers (the weight changes) and a legend."""
    values = [v for _, pts, _, _ in series for _, v in pts if v is not None]
    if not values:
        return ""
    top = y_max or nice(max(values))
    span = max(t1 - t0, 1e-3)
    pw, ph = W - PAD_L - PAD_R, H - PAD_B - PAD_T

    def x(t: float) -> float:
        return PAD_L + pw * min(max(t - t0, 0.0), span) / span

    def y(v: float) -> float:
        return PAD_T + ph - ph * min(v, top) / top

    body: list[str] = []
    label_end = -1e9  # a marker's label is left out where it would overprint the last one
    for t, label in markers or []:
        body.append(f'<line x1="{x(t):.1f}" y1="{PAD_T}" x2="{x(t):.1f}" y2="{PAD_T + ph}" '
                    f'stroke="#bbb" stroke-dasharray="3,3"/>')
        if x(t) >= label_end:
            body.append(f'<text x="{x(t) + 2:.1f}" y="{PAD_T + 10}" font-size="10" '
                        f'fill="#666">{escape(label)}</text>')
            label_end = x(t) + 8 + 6 * len(label)
    for name, pts, color, dashed in series:
        runs: list[list[str]] = [[]]
        for t, v in pts:
            if v is None:
                runs.append([])
            else:
                runs[-1].append(f"{x(t):.1f},{y(v):.1f}")
        dash = ' stroke-dasharray="6,4"' if dashed else ""
        for run in runs:
            if len(run) == 1:
                cx, cy = run[0].split(",")
                body.append(f'<circle cx="{cx}" cy="{cy}" r="2" fill="{color}"/>')
            elif run:
                body.append(f'<polyline fill="none" stroke="{color}" stroke-width="2"{dash} '
                            f'points="{" ".join(run)}"><title>{escape(name)}</title>'
                            "</polyline>")
    unit_s, uname = _time_axis(t0, span)
    width = span / unit_s
    step = next(m for m in (1, 2, 5, 10, 15, 20, 30, 60, 120, 300, 600, 1e9)
                if width / m <= 6)
    k = 0
    while k * step <= width + 1e-9:
        t = t0 + k * step * unit_s
        body.append(f'<text x="{x(t):.1f}" y="{H - PAD_B + 14}" text-anchor="middle" '
                    f'font-size="11">{_fmt(k * step)}</text>')
        k += 1
    body += _legend([(n, c, d) for n, _, c, d in series])
    return _frame(title, body, top, unit, f"{uname} since the start")


def _legend(entries: list[tuple[str, str, bool]]) -> list[str]:
    """One row under the title, right-aligned."""
    out, lx = [], float(W - PAD_R)
    for name, color, dashed in reversed(entries):
        lx -= 22 + 6.2 * len(name)
        dash = ' stroke-dasharray="4,3"' if dashed else ""
        out.append(f'<line x1="{lx:.1f}" y1="24" x2="{lx + 14:.1f}" y2="24" stroke="{color}" '
                   f'stroke-width="2"{dash}/><text x="{lx + 17:.1f}" y="28" font-size="11">'
                   f"{escape(name)}</text>")
    return out


def _weight_points(f: ReportFacts, t0: float, t1: float) -> list[Point]:
    """Green's configured weight as a step line."""
    pts: list[Point] = [(t0, 0.0)]
    cur = 0.0
    for w in f.weights:
        t = parse_ts(w.ts)
        if t is None:
            continue
        pts += [(t, cur), (t, w.weight)]
        cur = w.weight
    return [*pts, (t1, cur)]


def _markers(f: ReportFacts) -> list[tuple[float, str]]:
    out = []
    for w in f.weights:
        t = parse_ts(w.ts)
        if t is not None:
            out.append((t, f"{w.weight:g} %"))
    return out


def _span_points(spans: list[Span], value: Callable[[Span], float | None]) -> list[Point]:
    return [(s.mid, value(s)) for s in spans]


def time_series(f: ReportFacts) -> dict[str, str]:
    """The charts over time: traffic share and error rate per environment, latency p50 and
    p99 per environment, sync lag both ways; the weight alone when no samples were
    journaled."""
    t0, t1 = f.first_ts, f.last_ts
    if t0 is None or t1 is None:
        return {}
    spans = [s for s in f.traffic.spans() if s.seconds > 0]
    marks = _markers(f)
    weight: Line = ("green weight (set)", _weight_points(f, t0, t1), "#888", True)
    if not spans:
        return {"traffic": lines("Green traffic weight over time (%)", [weight], " %", t0, t1,
                                 y_max=100)}

    def share(side: str) -> Callable[[Span], float | None]:
        return lambda s: s.requests(side) / s.requests() * 100 if s.requests() else None

    def err(side: str) -> Callable[[Span], float | None]:
        def rate(s: Span) -> float | None:
            r = s.error_rate(side)
            return None if r is None else r * 100
        return rate

    def q(side: str, p: float) -> Callable[[Span], float | None]:
        return lambda s: s.quantile(side, p)

    lagged = [s for s in spans if s.lag_ms is not None or s.to_sqlite_lag_ms is not None]
    return {
        "traffic": lines("Traffic per environment over time (% of requests)", [
            ("blue", _span_points(spans, share("blue")), BLUE, False),
            ("green", _span_points(spans, share("green")), GREEN, False), weight],
            " %", t0, t1, y_max=100, markers=marks),
        "errors": lines("Error rate over time per environment (%)", [
            ("blue", _span_points(spans, err("blue")), BLUE, False),
            ("green", _span_points(spans, err("green")), GREEN, False)],
            " %", t0, t1, markers=marks),
        "latency": lines("Latency over time, p50 and p99 (ms)", [
            ("blue p50", _span_points(spans, q("blue", 0.5)), BLUE, True),
            ("blue p99", _span_points(spans, q("blue", 0.99)), BLUE, False),
            ("green p50", _span_points(spans, q("green", 0.5)), GREEN, True),
            ("green p99", _span_points(spans, q("green", 0.99)), GREEN, False)],
            " ms", t0, t1, markers=marks),
        "lag": lines("Sync lag over time (ms)", [
            ("to PostgreSQL", [(s.t1, s.lag_ms) for s in lagged], "#a73", False),
            ("to SQLite", [(s.t1, s.to_sqlite_lag_ms) for s in lagged], "#73a", False)],
            " ms", t0, t1, markers=marks),
    }


def _fmt(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 1000 or float(v).is_integer() else f"{v:.3g}"


def hbars(title: str, labels: list[str], values: list[float], unit: str) -> str:
    """Horizontal bars, one row per label (table names can be long), the value at the
    end of each bar."""
    if not labels:
        return ""
    top = nice(max(values) or 1.0)
    left = min(200, 16 + 6.5 * max(len(label) for label in labels))
    row, head = 18, 30
    h = head + row * len(labels) + 8
    pw = W - left - PAD_R - 60
    body = []
    for i, (label, v) in enumerate(zip(labels, values, strict=True)):
        y = head + i * row
        bw = pw * v / top
        body.append(f'<text x="{left - 6:.1f}" y="{y + 12}" text-anchor="end" '
                    f'font-size="11">{escape(label)}</text><rect x="{left:.1f}" y="{y + 2}" '
                    f'width="{bw:.1f}" height="{row - 5}" fill="#777"><title>{escape(label)}: '
                    f"{_fmt(v)}{escape(unit)}</title></rect>"
                    f'<text x="{left + bw + 4:.1f}" y="{y + 12}" font-size="11">{_fmt(v)}'
                    f"{escape(unit)}</text>")
    return (f'<svg role="img" viewBox="0 0 {W} {h}" width="100%" style="max-width:{W}px">'
            f'<title>{escape(title)}</title><text x="{PAD_L}" y="13" font-size="13" '
            f'font-weight="bold">{escape(title)}</text>' + "".join(body) + "</svg>")


def charts(f: ReportFacts) -> dict[str, str]:
    """Every chart the report can draw, by the name sections refer to."""
    mig = f.step("migrate")
    tables = sorted(((mig.figures.get("tables") or {}) if mig else {}).items())
    return {
        **time_series(f),
        "rows": hbars("Rows migrated per table", [t for t, _ in tables],
                      [float(n) for _, n in tables], ""),
    }
