"""The evaluation report: one self-contained report.html (no network) and a short summary.md.

    trm vote --outputs outputs.npz --data data/arc2 --output-dir out/      # writes both, with the rest
    python -m trm.evaluation.report --vote-dir out/ --data data/arc2        # re-render from submission.json

The HTML draws every grid as a CSS grid of coloured cells in the usual ARC palette, with a summary table on top
and, per task and test input: the test input, the two attempts, the truth when known, the vote counts and the
pass marks.
"""

from __future__ import annotations

import argparse
import html
import json
import sys
from pathlib import Path

import numpy as np

from trm.evaluation.files import load_dataset_files
from trm.evaluation.rules import VoteResult

# ARC colours 0..9
PALETTE: tuple[str, ...] = ("#000000", "#0074D9", "#FF4136", "#2ECC40", "#FFDC00",
                            "#AAAAAA", "#F012BE", "#FF851B", "#7FDBFF", "#870C25")
TOP_VOTES = 5  # candidates listed per test input

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:16px;color:#222;background:#fafafa}
h1{font-size:22px;margin:0 0 8px} h2{font-size:17px;margin:18px 0 6px;border-top:1px solid #ccc;padding-top:10px}
table.sum{border-collapse:collapse;margin:6px 0 12px} table.sum td,table.sum th{border:1px solid #bbb;padding:3px 8px;
text-align:right;font-size:13px} table.sum th{background:#e8e8e8} table.sum td.l{text-align:left}
.row{display:flex;flex-wrap:wrap;gap:14px;align-items:flex-start;margin:6px 0 10px}
.panel{display:flex;flex-direction:column;align-items:center;font-size:12px}
.panel .cap{margin-bottom:3px;font-weight:600}
.g{display:grid;gap:1px;background:#555;border:1px solid #555}
.g i{display:block}
.ok{color:#1a7f37;font-weight:700} .no{color:#c62828;font-weight:700} .na{color:#888}
table.votes{border-collapse:collapse;font-size:12px} table.votes td,table.votes th{border:1px solid #ccc;padding:1px 6px}
.note{font-size:12px;color:#666}
""" + "".join(f".c{i}{{background:{c}}}" for i, c in enumerate(PALETTE))


def grid_html(grid, max_px: int = 160) -> str:
    """A grid of ints 0..9 as a CSS grid of coloured cells."""
    arr = np.asarray(grid)
    if arr.ndim != 2 or arr.size == 0:
        return '<div class="note">(empty)</div>'
    h, w = arr.shape
    cell = max(3, min(16, max_px // max(h, w)))
    cells = "".join(f"<i class=c{int(v)}></i>" for v in arr.reshape(-1).tolist())
    return (f'<div class="g" style="grid-template-columns:repeat({w},{cell}px);'
            f'grid-auto-rows:{cell}px" title="{h}x{w}">{cells}</div>')


def _panel(caption: str, grid, mark: str = "") -> str:
    return f'<div class="panel"><div class="cap">{html.escape(caption)} {mark}</div>{grid_html(grid)}</div>'


def _mark(ok) -> str:
    if ok is None:
        return '<span class="na">n/a</span>'
    return '<span class="ok">&#10003;</span>' if ok else '<span class="no">&#10007;</span>'


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def render_html(result, test_puzzles: dict, title: str = "TRM evaluation") -> str:
    """The whole report as one string (a VoteResult from trm.evaluation.rules); every text taken from the result
    or the puzzles (metric names and values, task ids) is HTML-escaped."""
    pass_keys = [k for k in result.metrics if "/pass@" in k]
    ks = [int(k.split("@")[1]) for k in pass_keys]
    out = [f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>",
           f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    out.append('<table class="sum"><tr><th>metric</th><th>value</th></tr>')
    for key, value in result.metrics.items():
        out.append(f'<tr><td class="l">{html.escape(key)}</td><td>{html.escape(_fmt(value))}</td></tr>')
    out.append("</table>")
    # per-task summary table
    head = "".join(f"<th>pass@{k}</th>" for k in ks)
    out.append(f'<table class="sum"><tr><th>task</th><th>test inputs</th>{head}<th>fallbacks</th></tr>')
    for name in result.submission:
        marks = result.passed.get(name, [])
        cells = []
        for k in ks:
            known = [m[k] for m in marks if k in m]
            cells.append(f"<td>{sum(known) / len(known):.2f}</td>" if known else '<td class="na">n/a</td>')
        fb = sum(result.fallback.get(name, []))
        out.append(f'<tr><td class="l"><a href="#t-{html.escape(name)}">{html.escape(name)}</a></td>'
                   f"<td>{len(result.submission[name])}</td>{''.join(cells)}<td>{fb}</td></tr>")
    out.append("</table>")
    # per task
    for name, entries in result.submission.items():
        out.append(f'<h2 id="t-{html.escape(name)}">{html.escape(name)}</h2>')
        tests = test_puzzles.get(name, {}).get("test", [])
        for j, entry in enumerate(entries):
            pair = tests[j] if j < len(tests) else {}
            marks = result.passed.get(name, [{}] * len(entries))[j] if name in result.passed else {}
            cands = result.votes.get(name, [[]] * len(entries))[j] if name in result.votes else []
            used_fb = result.fallback.get(name, [False] * len(entries))[j] if name in result.fallback else False
            mark_text = " ".join(f"pass@{k} {_mark(marks.get(k))}" for k in ks[:2])
            out.append(f'<div class="note">test input {j}: {mark_text}'
                       f'{" &mdash; no usable prediction: fallback attempts" if used_fb else ""}</div>')
            out.append('<div class="row">')
            if "input" in pair:
                out.append(_panel("test input", pair["input"]))
            truth = pair.get("output")
            for a in sorted(k for k in entry if k.startswith("attempt_")):
                mark = _mark(entry[a] == truth) if truth is not None else ""
                out.append(_panel(a.replace("_", " "), entry[a], mark))
            if pair.get("output") is not None:
                out.append(_panel("truth", pair["output"]))
            rows = "".join(f"<tr><td>{i + 1}</td><td>{c.count}</td><td>{c.mean_q:.3f}</td>"
                           f"<td>{c.grid.shape[0]}x{c.grid.shape[1]}</td><td>{_mark(c.correct)}</td></tr>"
                           for i, c in enumerate(cands[:TOP_VOTES]))
            more = f'<div class="note">{len(cands) - TOP_VOTES} more candidates</div>' if len(cands) > TOP_VOTES else ""
            out.append('<div class="panel"><div class="cap">votes</div><table class="votes"><tr><th>#</th>'
                       f"<th>votes</th><th>mean q</th><th>shape</th><th>true</th></tr>{rows}</table>{more}</div>")
            out.append("</div>")
    out.append("</body></html>")
    return "\n".join(out)


def render_summary(result, title: str = "TRM evaluation") -> str:
    """summary.md: the headline numbers and the counts."""
    lines = [f"# {title}", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in result.metrics.items()]
    first = min((int(k.split("@")[1]) for k in result.metrics if "/pass@" in k), default=1)
    solved = [name for name, marks in result.passed.items()
              if any(marks) and all(m.get(first, False) for m in marks if m)]
    scored = result.metrics.get(f"{result.prefix}/tasks_scored", 0)
    lines += ["", f"Tasks fully solved at pass@{first}: {len(solved)} of {scored} scored", ""]
    if solved:
        lines.append("Solved: " + ", ".join(solved))
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Re-render report.html/summary.md from a finished vote folder (submission.json + metrics.json)."""
    parser = argparse.ArgumentParser(prog="python -m trm.evaluation.report")
    parser.add_argument("--vote-dir", required=True, help="folder with submission.json and metrics.json")
    parser.add_argument("--data", required=True, help="dataset folder (for test inputs and truths)")
    args = parser.parse_args(argv)
    root = Path(args.vote_dir)
    submission = json.loads((root / "submission.json").read_text())
    metrics = json.loads((root / "metrics.json").read_text())
    test_puzzles, _ = load_dataset_files(args.data)
    prefix = next((k.split("/")[0] for k in metrics if "/pass@" in k), "ARC")
    result = VoteResult(metrics, submission, {}, {}, {}, prefix)
    (root / "report.html").write_text(render_html(result, test_puzzles))
    (root / "summary.md").write_text(render_summary(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
