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
                     f'text-anchor="end" font-size="11">{v:.3g}{escape(y_unit)}</text>')
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


def bars(title: str, labels: list[str], values: list[float | None], unit: str,
         color: str = "#37a") -> str:
    """A bar per label; a missing value is drawn as "n/r" (not recorded)."""
    if not labels:
        return ""
    top = max([v for v in values if v is not None] or [0.0]) or 1.0
    pw, ph = W - PAD_L - PAD_R, H - PAD_B - PAD_T
    bw = pw / len(labels)
    body = []
    for i, (label, v) in enumerate(zip(labels, values, strict=True)):
        x = PAD_L + i * bw
        body.append(f'<text x="{x + bw / 2:.1f}" y="{H - PAD_B + 14}" text-anchor="middle" '
                    f'font-size="11">{escape(label)}</text>')
        if v is None:
            body.append(f'<text x="{x + bw / 2:.1f}" y="{PAD_T + ph - 4}" '
                        f'text-anchor="middle" font-size="11">n/r</text>')
            continue
        h = ph * v / top
        body.append(f'<rect x="{x + bw * 0.15:.1f}" y="{PAD_T + ph - h:.1f}" '
                    f'width="{bw * 0.7:.1f}" height="{h:.1f}" fill="{color}">'
                    f'<title>{escape(label)}: {v:.4g}{escape(unit)}</title></rect>')
    return _frame(title, body, top, unit, "")


def charts(f: ReportFacts) -> dict[str, str]:
    """Every chart the report can draw, by the name sections refer to."""
    labels = [f"{s.get('weight', 0):g} %" for s in f.shift_results]
    mig = f.step("migrate")
    tables = sorted(((mig.figures.get("tables") or {}) if mig else {}).items())
    return {
        "weight": weight_over_time(f),
        "errors": bars("Green error rate per step (%)", labels,
                       [None if s.get("error_rate") is None else float(s["error_rate"]) * 100
                        for s in f.shift_results], " %", "#c44"),
        "p99": bars("Green p99 latency per step (ms)", labels,
                    [s.get("p99_ms") for s in f.shift_results], " ms"),
        "rows": bars("Rows migrated per table", [t for t, _ in tables],
                     [float(n) for _, n in tables], "", "#777"),
    }
