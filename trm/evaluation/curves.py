"""Training curves: a self-contained HTML page of SVG line plots (losses, accuracies, pass@K against step).

    python -m trm.evaluation.curves runs/try1/metrics.jsonl -o curves.html
    from trm.evaluation.curves import curves_html
    page = curves_html(records, title="run try1")    # records: the dicts of metrics.jsonl, in order

Input: `metrics.jsonl` as the trainer writes it (one JSON object per logged step with "step", "time" and numeric
keys such as `train/lm_loss`, `train/accuracy`, `eval/...`, `ARC/pass@2`). Keys go into panels by name: those
containing "loss", those containing "accuracy", those containing "pass@"; anything else is left out. Lines that
do not parse and values that are not finite numbers are skipped; when a step is logged twice (a resumed run), the
later value wins. No JavaScript, no external file: the KFP UI shows the page as the train step's HTML artifact.
"""

from __future__ import annotations

import argparse
import html
import json
import math
import sys
from pathlib import Path
from typing import Any, Iterable

PANELS = (("Losses", "loss"), ("Accuracies", "accuracy"), ("pass@K", "pass@"))
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
          "#17becf")
WIDTH, HEIGHT = 640, 300
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 28, 40


def read_records(text: str) -> list[dict[str, Any]]:
    """The JSON objects of a metrics.jsonl text; lines that do not parse (a line cut by a kill) are skipped."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def panels(records: Iterable[dict[str, Any]]) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """panel title -> metric key -> [(step, value)] sorted by step (the last value logged for a step wins)."""
    points: dict[str, dict[float, float]] = {}
    for record in records:
        step = _number(record.get("step"))
        if step is None:
            continue
        for key, value in record.items():
            number = _number(value)
            if key in ("step", "time") or number is None:
                continue
            points.setdefault(key, {})[step] = number
    out: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for title, needle in PANELS:
        chosen = {key: sorted(values.items()) for key, values in sorted(points.items()) if needle in key.lower()}
        if chosen:
            out[title] = chosen
    return out


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About `count` round tick values covering [low, high]."""
    if high <= low:
        return [low]
    raw = (high - low) / max(count - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step - 1e-9) * step
    ticks = []
    value = first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    return ticks or [low]


def _label(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1e5 or abs(value) < 1e-3:
        return f"{value:.2g}"
    return f"{value:.4g}"


def svg_plot(title: str, lines: dict[str, list[tuple[float, float]]], width: int = WIDTH, height: int = HEIGHT) -> str:
    """One SVG line plot of `lines` (name -> [(step, value)]) with axes, ticks and a legend."""
    xs = [x for pts in lines.values() for x, _ in pts]
    ys = [y for pts in lines.values() for _, y in pts]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    if y1 == y0:
        pad = abs(y0) * 0.05 or 1.0
        y0, y1 = y0 - pad, y1 + pad
    plot_w, plot_h = width - LEFT - RIGHT, height - TOP - BOTTOM

    def px(x: float) -> float:
        return LEFT + (x - x0) / (x1 - x0) * plot_w

    def py(y: float) -> float:
        return TOP + (1 - (y - y0) / (y1 - y0)) * plot_h

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 20 * len(lines)}" '
             f'viewBox="0 0 {width} {height + 20 * len(lines)}" role="img" aria-label="{html.escape(title)}">',
             f'<text x="{LEFT}" y="18" font-size="14" font-weight="bold">{html.escape(title)}</text>',
             f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999"/>']
    for tick in _ticks(y0, y1):
        y = py(tick)
        parts.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + plot_w}" y2="{y:.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end">{_label(tick)}</text>')
    for tick in _ticks(x0, x1):
        x = px(tick)
        parts.append(f'<line x1="{x:.1f}" y1="{TOP + plot_h}" x2="{x:.1f}" y2="{TOP + plot_h + 4}" stroke="#999"/>')
        parts.append(f'<text x="{x:.1f}" y="{TOP + plot_h + 16}" font-size="11" text-anchor="middle">'
                     f'{_label(tick)}</text>')
    parts.append(f'<text x="{LEFT + plot_w / 2:.1f}" y="{TOP + plot_h + 32}" font-size="11" '
                 'text-anchor="middle">step</text>')
    for i, (name, pts) in enumerate(lines.items()):
        color = COLORS[i % len(COLORS)]
        coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
        if len(pts) > 1:
            parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{coords}">'
                         f'<title>{html.escape(name)}</title></polyline>')
        for x, y in pts if len(pts) <= 50 else pts[-1:]:
            parts.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.5" fill="{color}">'
                         f'<title>{html.escape(name)} step {_label(x)}: {y:.6g}</title></circle>')
        ly = height + 20 * i + 4
        parts.append(f'<line x1="{LEFT}" y1="{ly}" x2="{LEFT + 24}" y2="{ly}" stroke="{color}" stroke-width="3"/>')
        last = pts[-1][1]
        parts.append(f'<text x="{LEFT + 30}" y="{ly + 4}" font-size="12">{html.escape(name)} '
                     f'(last {last:.6g})</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def curves_html(records: Iterable[dict[str, Any]], title: str = "Training curves") -> str:
    """The whole page: one plot per panel with data; a sentence when there is nothing to plot."""
    records = list(records)
    found = panels(records)
    body = [svg_plot(name, lines) for name, lines in found.items()]
    if not body:
        body = ["<p>No losses, accuracies or pass@K values logged yet.</p>"]
    steps = [s for s in (_number(r.get("step")) for r in records) if s is not None]
    summary = (f"{len(records)} logged records, steps {_label(min(steps))} to {_label(max(steps))}" if steps
               else "no logged steps")
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>" + html.escape(title) + "</title>"
            "<style>body{font-family:sans-serif;margin:16px}svg{display:block;margin:12px 0}</style></head><body>\n"
            f"<h1>{html.escape(title)}</h1>\n<p>{html.escape(summary)}</p>\n" + "\n".join(body)
            + "\n</body></html>\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trm.evaluation.curves", description=__doc__.split("\n\n")[0])
    parser.add_argument("metrics", type=Path, help="metrics.jsonl")
    parser.add_argument("-o", "--output", type=Path, default=Path("curves.html"))
    parser.add_argument("--title", default=None)
    args = parser.parse_args(argv)
    if not args.metrics.is_file():
        print(f"curves: {args.metrics}: no such file", file=sys.stderr)
        return 2
    page = curves_html(read_records(args.metrics.read_text(errors="replace")), args.title or str(args.metrics))
    from trm.storage.local import atomic_write

    atomic_write(args.output, page)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
