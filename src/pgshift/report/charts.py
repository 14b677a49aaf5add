"""Inline SVG charts for the HTML report: no script, no external asset.

Each function returns one ``<svg>`` element (with a ``<title>`` for screen readers) or
an empty string when there is nothing recorded to draw.
"""

from __future__ import annotations

from html import escape

from pgshift.report.facts import ReportFacts, parse_ts

W, H, PAD_L, PAD_B, PAD_T, PAD_R = 640, 220, 56, 32, 16, 16


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
            + "".join(ticks) + "".join(body) +
            f'<text x="{(W + PAD_L) / 2}" y="{H - 4}" text-anchor="middle" font-size="11">'
            f'{escape(x_label)}</text></svg>')


def weight_over_time(f: ReportFacts) -> str:
    """Green's traffic weight (a step line) from the run's start to its last event."""
    t0, t1 = f.first_ts, f.last_ts
    pts = [(parse_ts(w.ts), w.weight) for w in f.weights]
    pts_ok = [(t, w) for t, w in pts if t is not None]
    if not pts_ok or t0 is None or t1 is None:
        return ""
    span = max(t1 - t0, 1e-3)
    pw, ph = W - PAD_L - PAD_R, H - PAD_B - PAD_T

    def xy(t: float, w: float) -> str:
        return f"{PAD_L + pw * (t - t0) / span:.1f},{PAD_T + ph - ph * w / 100:.1f}"

    path, cur = [xy(t0, 0)], 0.0
    for t, w in pts_ok:
        path += [xy(t, cur), xy(t, w)]
        cur = w
    path.append(xy(t1, cur))
    body = [f'<polyline fill="none" stroke="#2a7" stroke-width="2" points="{" ".join(path)}"/>']
    return _frame("Green traffic weight over time (%)", body, 100, " %",
                  f"seconds since the start (0 – {span:.0f} s)")


def _fmt(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"


Series = tuple[str, list[float | None], str]  # name, one value per label, colour


def bars(title: str, labels: list[str], series: list[Series], unit: str) -> str:
    """Grouped bars: one group per label, one bar per series (with a legend when there
    are several); a missing value is drawn as "n/r" (not recorded)."""
    if not labels:
        return ""
    top = max([v for _, vs, _ in series for v in vs if v is not None] or [0.0]) or 1.0
    pw, ph = W - PAD_L - PAD_R, H - PAD_B - PAD_T
    gw = pw / len(labels)
    bw = gw * 0.7 / len(series)
    body = []
    for i, label in enumerate(labels):
        x = PAD_L + i * gw
        body.append(f'<text x="{x + gw / 2:.1f}" y="{H - PAD_B + 14}" text-anchor="middle" '
                    f'font-size="11">{escape(label)}</text>')
        for k, (name, values, color) in enumerate(series):
            v, bx = values[i], x + gw * 0.15 + k * bw
            if v is None:
                body.append(f'<text x="{bx + bw / 2:.1f}" y="{PAD_T + ph - 4}" '
                            f'text-anchor="middle" font-size="10">n/r</text>')
                continue
            h = ph * v / top
            body.append(f'<rect x="{bx:.1f}" y="{PAD_T + ph - h:.1f}" width="{bw:.1f}" '
                        f'height="{h:.1f}" fill="{color}"><title>{escape(name)} '
                        f'{escape(label)}: {_fmt(v)}{escape(unit)}</title></rect>')
    if len(series) > 1:
        for k, (name, _, color) in enumerate(series):
            lx = W - PAD_R - 90 * (len(series) - k)
            body.append(f'<rect x="{lx}" y="2" width="10" height="10" fill="{color}"/>'
                        f'<text x="{lx + 14}" y="11" font-size="11">{escape(name)}</text>')
    return _frame(title, body, top, unit, "")


def charts(f: ReportFacts) -> dict[str, str]:
    """Every chart the report can draw, by the name sections refer to."""
    labels = [f"{s.get('weight', 0):g} %" for s in f.shift_results]
    mig = f.step("migrate")
    tables = sorted(((mig.figures.get("tables") or {}) if mig else {}).items())
    rounds = f.monitor_rounds
    return {
        "weight": weight_over_time(f),
        "errors": bars("Green error rate per step (%)", labels, [(
            "green", [None if s.get("error_rate") is None else float(s["error_rate"]) * 100
                      for s in f.shift_results], "#c44")], " %"),
        "p99": bars("p99 latency per step, green and blue (ms)", labels, [
            ("green", [s.get("p99_ms") for s in f.shift_results], "#2a7"),
            ("blue", [s.get("blue_p99_ms") for s in f.shift_results], "#37a")], " ms"),
        "lag": bars("Sync lag per step, then per monitoring round (ms)",
                    labels + [f"m{i + 1}" for i in range(len(rounds))], [(
                        "lag", [s.get("sync_lag_ms") for s in f.shift_results] +
                        [e.figures.get("to_sqlite_lag_ms") for e in rounds], "#a73")], " ms"),
        "rows": bars("Rows migrated per table", [t for t, _ in tables],
                     [("rows", [float(n) for _, n in tables], "#777")], ""),
    }
