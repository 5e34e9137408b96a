"""Training curves (trm/evaluation/curves.py): panels from metrics.jsonl keys, SVG geometry, a self-contained page.

    .venv/bin/python -m pytest -q tests/test_curves.py
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET

from trm.evaluation.curves import curves_html, main, panels, read_records, svg_plot

RECORDS = [
    {"step": 1, "time": 1.0, "train/lm_loss": 2.0, "train/accuracy": 0.1, "train/lr": 1e-4},
    {"step": 2, "time": 2.0, "train/lm_loss": 1.5, "train/accuracy": 0.2},
    {"step": 2, "time": 2.5, "all/lm_loss": 1.7, "all/accuracy": 0.15, "ARC/pass@1": 0.0, "ARC/pass@2": 0.05},
    {"step": 3, "time": 3.0, "train/lm_loss": 1.0, "train/accuracy": 0.4},
    {"step": 4, "time": 4.0, "train/lm_loss": float("nan"), "train/accuracy": True, "note": "text"},
    {"step": 4, "time": 4.5, "all/lm_loss": 1.2, "all/accuracy": 0.3, "ARC/pass@1": 0.1, "ARC/pass@2": 0.2},
]


def test_panels_group_keys_and_skip_what_is_not_a_number():
    found = panels(RECORDS)
    assert list(found) == ["Losses", "Accuracies", "pass@K"]
    assert sorted(found["Losses"]) == ["all/lm_loss", "train/lm_loss"]
    assert found["Losses"]["train/lm_loss"] == [(1.0, 2.0), (2.0, 1.5), (3.0, 1.0)]  # NaN at step 4 left out
    assert found["Accuracies"]["train/accuracy"] == [(1.0, 0.1), (2.0, 0.2), (3.0, 0.4)]  # True is no number
    assert found["pass@K"]["ARC/pass@2"] == [(2.0, 0.05), (4.0, 0.2)]
    assert "train/lr" not in str(found) and "time" not in str(found)
    # a resumed run logs a step again: the later value wins
    assert panels([{"step": 5, "a_loss": 1.0}, {"step": 5, "a_loss": 0.5}])["Losses"]["a_loss"] == [(5.0, 0.5)]


def test_svg_points_follow_the_values():
    svg = svg_plot("Losses", {"loss": [(0.0, 0.0), (10.0, 1.0), (5.0, 0.5)]})
    root = ET.fromstring(svg)  # well-formed XML
    ns = "{http://www.w3.org/2000/svg}"
    points = [tuple(map(float, p.split(","))) for p in root.find(f"{ns}polyline").get("points").split()]
    (x0, y0), (x1, y1), (x2, y2) = points
    assert x0 < x2 < x1 and y0 > y2 > y1  # larger step -> right, larger value -> up
    assert abs((x0 + x1) / 2 - x2) < 0.2 and abs((y0 + y1) / 2 - y2) < 0.2  # linear axes
    assert len(root.findall(f"{ns}circle")) == 3
    flat = svg_plot("one point", {"x": [(3.0, 2.0)]})  # a single point or a flat line still draws
    assert "<circle" in flat and "nan" not in flat.lower()


def test_page_is_self_contained_and_escaped(tmp_path):
    page = curves_html(RECORDS, title="run <a&b>")
    assert page.startswith("<!DOCTYPE html>") and page.count("<svg") == 3
    assert "run &lt;a&amp;b&gt;" in page and "<script" not in page
    assert not re.search(r'(src|href)="', page), "no external resource"
    assert "6 logged records, steps 1 to 4" in page
    assert "No losses" in curves_html([{"step": 1, "train/lr": 0.1}])
    jsonl = tmp_path / "metrics.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in RECORDS[:2]) + '\n{"step": 3, "train/lm_lo')  # cut by a kill
    assert len(read_records(jsonl.read_text())) == 2
    assert main([str(jsonl), "-o", str(tmp_path / "c.html")]) == 0
    assert "train/lm_loss" in (tmp_path / "c.html").read_text()
    assert main([str(tmp_path / "missing.jsonl")]) == 2
