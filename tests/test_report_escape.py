"""report.html escapes every text it takes from a result or the puzzles: metric names and values, task ids."""

from __future__ import annotations

from trm.evaluation.report import render_html
from trm.evaluation.rules import VoteResult

EVIL = '<script>alert("x")</script>'


def test_metric_values_and_task_ids_are_escaped():
    task = 'a<b>&"c'
    puzzles = {task: {"train": [], "test": [{"input": [[1]], "output": [[2]]}]}}
    metrics = {"ARC/pass@1": 0.5, f"ARC/{EVIL}": 3, "ARC/note": EVIL}  # e.g. re-rendered from an edited metrics.json
    submission = {task: [{"attempt_1": [[2]], "attempt_2": [[1]]}]}
    page = render_html(VoteResult(metrics, submission, {}, {task: [{1: True}]}, {task: [False]}), puzzles,
                       title=EVIL)
    assert "<script" not in page and "<b>" not in page
    assert page.count("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;") == 4  # title twice, a name, a value
    assert 'id="t-a&lt;b&gt;&amp;&quot;c"' in page and 'href="#t-a&lt;b&gt;&amp;&quot;c"' in page
