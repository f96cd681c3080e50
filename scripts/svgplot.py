"""A tiny SVG line-plot writer for the benchmark plots (no dependencies,
no system fonts: generic font families only)."""
import math
from xml.sax.saxutils import escape

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]
W, H = 900, 480
LEFT, RIGHT, TOP, BOTTOM = 70, 20, 40, 60


def _ticks(lo, hi, n=6):
    if hi <= lo:
        hi = lo + 1
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 5, 10) if m * mag >= raw), default=mag)
    first = math.ceil(lo / step) * step
    out, v = [], first
    while v <= hi + 1e-9:
        out.append(v)
        v += step
    return out


def _fmt(v):
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if v == int(v):
        return str(int(v))
    return f"{v:g}"


def write(path, title, xlabel, ylabel, series, xlog=False, markers=()):
    """series: [(name, [(x, y), ...])]; markers: [(x, label)] drawn as dashed lines."""
    xs = [x for _, pts in series for x, _ in pts] + [m[0] for m in markers]
    ys = [y for _, pts in series for _, y in pts]
    if not xs or not ys:
        xs, ys = [0, 1], [0, 1]
    fx = (lambda v: math.log10(max(v, 1e-9))) if xlog else (lambda v: v)
    x0, x1 = fx(min(xs)), fx(max(xs))
    if xlog:
        x0, x1 = math.floor(x0), math.ceil(x1)
    y0, y1 = 0.0, max(ys) * 1.05 or 1.0
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM

    def px(v):
        return LEFT + (fx(v) - x0) / ((x1 - x0) or 1) * pw

    def py(v):
        return TOP + ph - (v - y0) / ((y1 - y0) or 1) * ph

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{W / 2}" y="22" text-anchor="middle" font-size="15">{escape(title)}</text>']
    xt = [10 ** e for e in range(int(x0), int(x1) + 1)] if xlog else _ticks(x0, x1)
    for v in xt:
        x = px(v)
        out.append(f'<line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{TOP + ph}" stroke="#eee"/>')
        out.append(f'<text x="{x:.1f}" y="{TOP + ph + 16}" text-anchor="middle">{_fmt(v)}</text>')
    for v in _ticks(y0, y1):
        y = py(v)
        out.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + pw}" y2="{y:.1f}" stroke="#eee"/>')
        out.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{_fmt(v)}</text>')
    out.append(f'<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>')
    out.append(f'<text x="{LEFT + pw / 2}" y="{H - 18}" text-anchor="middle">{escape(xlabel)}</text>')
    out.append(f'<text x="16" y="{TOP + ph / 2}" text-anchor="middle" '
               f'transform="rotate(-90 16 {TOP + ph / 2})">{escape(ylabel)}</text>')
    for i, (x, label) in enumerate(markers):
        xx = px(x)
        out.append(f'<line x1="{xx:.1f}" y1="{TOP}" x2="{xx:.1f}" y2="{TOP + ph}" '
                   f'stroke="#888" stroke-dasharray="4 3"/>')
        out.append(f'<text x="{xx + 3:.1f}" y="{TOP + 14 + 13 * (i % 6)}" font-size="10" '
                   f'fill="#555">{escape(label)}</text>')
    for i, (name, pts) in enumerate(series):
        color = COLORS[i % len(COLORS)]
        if pts:
            d = " ".join(f"{'M' if j == 0 else 'L'}{px(x):.1f},{py(y):.1f}"
                         for j, (x, y) in enumerate(pts))
            out.append(f'<path d="{d}" fill="none" stroke="{color}" stroke-width="2"/>')
        ly = TOP + ph - 14 - 16 * i
        out.append(f'<line x1="{LEFT + pw - 190}" y1="{ly}" x2="{LEFT + pw - 165}" y2="{ly}" '
                   f'stroke="{color}" stroke-width="3"/>')
        out.append(f'<text x="{LEFT + pw - 160}" y="{ly + 4}">{escape(name)}</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")
