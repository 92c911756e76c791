"""The benchmarks' reports: Markdown and HTML tables, SVG line charts, an HTML page.

Standard library only, so a report can be drawn wherever a benchmark runs.
Everything here is generic (no benchmark's figures or names): ``capacity.py``
decides which series go on which chart, this module draws them.

- :func:`fmt_table` and :func:`html_table`: one table, rows of strings;
- :func:`fmt`: one value with a format, ``-`` where it is missing;
- :class:`Series`, :func:`line_chart`: one chart as an inline ``<svg>``;
- :func:`composite_svg`: several charts as one standalone SVG (for the docs);
- :func:`html_page`: a self-contained page around them.
"""

from __future__ import annotations

import html
import math
from typing import Any, List, NamedTuple, Optional, Sequence, Tuple

# =============================================================================
# Tables
# =============================================================================


def fmt_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured Markdown table."""
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        out.append("| " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(out)


def html_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """The same table as HTML (escaped; style it with the page's CSS)."""
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def fmt(v: Any, spec: str) -> str:
    """``format(v, spec)``, ``-`` for a missing value, ``str(v)`` where the spec won't fit."""
    if v is None:
        return "-"
    try:
        return format(v, spec)
    except (TypeError, ValueError):
        return str(v)


# =============================================================================
# Charts: inline SVG
# =============================================================================


class Series(NamedTuple):
    name: str
    colour: str
    points: List[Tuple[float, float]]
    dash: str = ""
    marker: str = "circle"  # or "diamond"
    line: bool = True


def nice_step(span: float, count: int) -> float:
    raw = span / max(1, count)
    mag = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def fmt_num(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1000:
        return f"{v / 1000:g}k"
    if abs(v) >= 1:
        return f"{v:g}"
    return f"{v:.2g}"


def line_chart(title: str, y_label: str, series: Sequence[Series], log_y: bool = False,
               target: Optional[Tuple[float, str]] = None, width: int = 480, height: int = 300,
               x_label: str = "players", bands: Sequence[Tuple[float, float]] = (),
               band_label: str = "", zero_y: bool = True) -> str:
    """One chart as an ``<svg>`` element: ``x_label`` on x, each series a line.

    ``log_y`` draws a log scale (decades, with 2 and 5 in between on short
    spans); ``target`` is a dashed red line at (value, label); ``bands`` are
    x ranges (from, to) shaded behind the lines (e.g. when something was
    going on), named ``band_label`` in the legend; ``zero_y=False`` fits a
    linear y axis to the data instead of starting it at 0. The legend goes
    below the plot in two columns, never over a line.
    """
    left, right, top, bottom = 62, 16, 34, 44
    pw, ph = width - left - right, height - top - bottom
    shown = [s for s in series if s.points]
    legend_rows = (len(shown) + (1 if bands and band_label else 0) + 1) // 2
    height += legend_rows * 15 + 4  # the legend goes below the plot, never over a line
    xs = [p[0] for s in series for p in s.points] + [b[1] for b in bands]
    ys = [p[1] for s in series for p in s.points if not log_y or p[1] > 0]
    if target is not None:
        ys.append(target[0])
    x_max = max(xs, default=1.0) * 1.05 or 1.0
    if log_y:
        lo = min(ys, default=1.0)
        hi = max(ys, default=10.0)
        y_lo = 10 ** math.floor(math.log10(max(lo, 1e-3)))
        y_hi = 10 ** math.ceil(math.log10(max(hi, y_lo * 10)))
        if y_hi <= y_lo:
            y_hi = y_lo * 10
    elif zero_y or not ys:
        y_lo = 0.0
        y_hi = max(ys, default=1.0) * 1.1 or 1.0
    else:  # around the data: small changes (a drift of a few %) show
        lo, hi = min(ys), max(ys)
        pad = max((hi - lo) * 0.1, abs(hi) * 0.01, 1e-9)
        step = nice_step(hi - lo + 2 * pad, 5)
        y_lo = math.floor((lo - pad) / step) * step
        y_hi = math.ceil((hi + pad) / step) * step

    def px(x: float) -> float:
        return left + pw * x / x_max

    def py(y: float) -> float:
        if log_y:
            y = max(y, y_lo)
            f = (math.log10(y) - math.log10(y_lo)) / (math.log10(y_hi) - math.log10(y_lo))
        else:
            f = (y - y_lo) / (y_hi - y_lo)
        return top + ph * (1 - f)

    e = html.escape
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
             f'<rect width="{width}" height="{height}" fill="white"/>',
             f'<text x="{width / 2}" y="18" text-anchor="middle" font-size="13" '
             f'font-weight="bold">{e(title)}</text>']
    # y grid and labels
    if log_y:
        decade = y_lo
        while decade <= y_hi * 1.0001:
            for m in (1, 2, 5):
                v = decade * m
                if v > y_hi * 1.0001:
                    break
                y = py(v)
                stroke = "#ddd" if m == 1 else "#f0f0f0"
                parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + pw}" y2="{y:.1f}" '
                             f'stroke="{stroke}"/>')
                if m == 1 or (math.log10(y_hi / y_lo) <= 2):
                    parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">'
                                 f'{fmt_num(v)}</text>')
            decade *= 10
    else:
        step = nice_step(y_hi - y_lo, 5)
        v = y_lo
        while v <= y_hi + 1e-9:
            y = py(v)
            parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + pw}" y2="{y:.1f}" '
                         f'stroke="#ddd"/>')
            parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">'
                         f'{fmt_num(v)}</text>')
            v += step
    # x grid and labels
    step = nice_step(x_max, 5)
    v = 0.0
    while v <= x_max + 1e-9:
        x = px(v)
        parts.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + ph}" stroke="#eee"/>')
        parts.append(f'<text x="{x:.1f}" y="{top + ph + 16}" text-anchor="middle">'
                     f'{fmt_num(v)}</text>')
        v += step
    for x0, x1 in bands:
        parts.append(f'<rect x="{px(x0):.1f}" y="{top}" width="{max(1.0, px(x1) - px(x0)):.1f}" '
                     f'height="{ph}" fill="#f6dada" opacity="0.7"/>')
    parts.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" '
                 f'stroke="#888"/>')
    parts.append(f'<text x="{left + pw / 2}" y="{top + ph + 32}" text-anchor="middle">'
                 f'{e(x_label)}</text>')
    parts.append(f'<text transform="translate(14,{top + ph / 2}) rotate(-90)" '
                 f'text-anchor="middle">{e(y_label)}</text>')
    if target is not None:
        y = py(target[0])
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + pw}" y2="{y:.1f}" '
                     f'stroke="#c00" stroke-dasharray="6,3"/>')
        parts.append(f'<text x="{left + pw - 4}" y="{y - 4:.1f}" text-anchor="end" '
                     f'fill="#c00">{e(target[1])}</text>')
    # series
    for s in series:
        pts = sorted(s.points)
        if s.line and len(pts) >= 2:
            d = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
            dash = f' stroke-dasharray="{s.dash}"' if s.dash else ""
            parts.append(f'<polyline points="{d}" fill="none" stroke="{s.colour}" '
                         f'stroke-width="2"{dash}/>')
        for x, y in pts:
            tip = f"{s.name}: {fmt_num(x)} {x_label}, {y:.3g}"
            cx, cy = px(x), py(y)
            if s.marker == "diamond":
                parts.append(f'<path d="M{cx:.1f},{cy - 6:.1f} L{cx + 6:.1f},{cy:.1f} '
                             f'L{cx:.1f},{cy + 6:.1f} L{cx - 6:.1f},{cy:.1f} Z" fill="white" '
                             f'stroke="{s.colour}" stroke-width="2"><title>{e(tip)}</title></path>')
            else:
                parts.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="3" fill="{s.colour}">'
                             f'<title>{e(tip)}</title></circle>')
    # legend: two columns under the x-axis label
    for i, s in enumerate(shown):
        lx = left + (i % 2) * (pw // 2)
        ly = top + ph + bottom + 6 + (i // 2) * 15
        if s.marker == "diamond":
            parts.append(f'<path d="M{lx + 10},{ly - 5} L{lx + 15},{ly} L{lx + 10},{ly + 5} '
                         f'L{lx + 5},{ly} Z" fill="white" stroke="{s.colour}" stroke-width="2"/>')
        else:
            dash = f' stroke-dasharray="{s.dash}"' if s.dash else ""
            parts.append(f'<line x1="{lx}" y1="{ly}" x2="{lx + 20}" y2="{ly}" '
                         f'stroke="{s.colour}" stroke-width="2"{dash}/>')
        parts.append(f'<text x="{lx + 26}" y="{ly + 4}">{e(s.name)}</text>')
    if bands and band_label:
        i = len(shown)
        lx = left + (i % 2) * (pw // 2)
        ly = top + ph + bottom + 6 + (i // 2) * 15
        parts.append(f'<rect x="{lx}" y="{ly - 5}" width="20" height="10" fill="#f6dada"/>')
        parts.append(f'<text x="{lx + 26}" y="{ly + 4}">{e(band_label)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def svg_size(panel: str) -> Tuple[int, int]:
    head = panel[:300]
    w = int(head.split('width="', 1)[1].split('"', 1)[0])
    h = int(head.split('height="', 1)[1].split('"', 1)[0])
    return w, h


def composite_svg(panels: List[str], caption: str) -> str:
    """``panels`` (from :func:`line_chart`) in a grid two wide, one standalone SVG."""
    cols = 2
    sizes = [svg_size(p) for p in panels]
    width = max((w for w, _ in sizes), default=480)
    row_heights = [max(h for _, h in sizes[r:r + cols]) for r in range(0, len(sizes), cols)]
    total_w, total_h = cols * width, sum(row_heights) + 24
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{total_w}" height="{total_h}" '
             f'viewBox="0 0 {total_w} {total_h}" font-family="sans-serif">',
             f'<rect width="{total_w}" height="{total_h}" fill="white"/>']
    for i, panel in enumerate(panels):
        x, y = (i % cols) * width, sum(row_heights[: i // cols])
        parts.append(panel.replace("<svg ", f'<svg x="{x}" y="{y}" ', 1))
    parts.append(f'<text x="{total_w / 2}" y="{total_h - 8}" text-anchor="middle" '
                 f'font-size="11" fill="#555">{html.escape(caption)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


# =============================================================================
# The page
# =============================================================================

PAGE_CSS = """body { font-family: sans-serif; max-width: 1000px; margin: 2em auto; color: #222; }
.charts { display: flex; flex-wrap: wrap; gap: 8px; }
table { border-collapse: collapse; font-size: 13px; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: right; }
th { background: #f4f4f4; } td:nth-child(-n+3) { text-align: left; }
.warn { color: #b00; font-weight: bold; } .small { font-size: 12px; color: #555; }"""


def html_page(title: str, body: str, css: str = PAGE_CSS) -> str:
    """A self-contained HTML page: ``title`` as its title and first heading, then ``body``.

    The default style right-aligns table cells but the first three (the
    labels), and has ``charts`` (a row of SVGs), ``warn`` and ``small`` classes.
    """
    t = html.escape(title)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>{t}</title>
<style>
{css}
</style></head><body>
<h1>{t}</h1>
{body}</body></html>
"""
