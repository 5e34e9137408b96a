"""trm score: pass@1/pass@2 of a submission against a solutions file, per task and overall; parts merged."""

from __future__ import annotations

import json

import pytest

from trm.evaluation.score import main, score

A, B, C = [[1, 2], [3, 4]], [[5]], [[0, 0, 0]]
SOLUTIONS = {"t1": [A], "t2": [A, B], "t3": [C]}


def test_pass_at_1_and_2_per_task_and_overall():
    submission = {
        "t1": [{"attempt_1": A, "attempt_2": B}],  # right first time
        "t2": [{"attempt_1": B, "attempt_2": A}, {"attempt_1": C, "attempt_2": C}],  # 1 of 2, second attempt
        # t3 missing
        "t9": [{"attempt_1": C, "attempt_2": C}],  # no solution: not scored
    }
    result = score(submission, SOLUTIONS)
    assert result["tasks"]["t1"] == {"pass@1": 1.0, "pass@2": 1.0}
    assert result["tasks"]["t2"] == {"pass@1": 0.0, "pass@2": 0.5}
    assert result["pass@1"] == pytest.approx(1 / 3) and result["pass@2"] == pytest.approx(1.5 / 3)
    assert result["submitted"] == {"pass@1": 0.5, "pass@2": 0.75}
    assert result["tasks_missing"] == ["t3"] and result["tasks_not_in_solutions"] == ["t9"]
    # a dataset's test_puzzles.json gives the same solutions
    puzzles = {t: {"train": [], "test": [{"input": [[0]], "output": g} for g in grids]} for t, grids in SOLUTIONS.items()}
    assert score(submission, puzzles) == result


def test_entry_count_mismatch_names_the_task():
    with pytest.raises(ValueError, match="task t2: 1 entries in the submission, 2 test inputs"):
        score({"t2": [{"attempt_1": A, "attempt_2": A}]}, SOLUTIONS)


def test_cli_merges_parts_and_writes_json(tmp_path, capsys):
    (tmp_path / "sol.json").write_text(json.dumps(SOLUTIONS))
    (tmp_path / "p1.json").write_text(json.dumps({"t1": [{"attempt_1": B, "attempt_2": A}]}))
    (tmp_path / "p2.json").write_text(json.dumps({"t2": [{"attempt_1": A, "attempt_2": A}, {"attempt_1": B, "attempt_2": C}],
                                                  "t3": [{"attempt_1": C, "attempt_2": C}]}))
    out = tmp_path / "score.json"
    assert main(["--submission", str(tmp_path / "p1.json"), "--submission", str(tmp_path / "p2.json"),
                 "--solutions", str(tmp_path / "sol.json"), "--output", str(out)]) == 0
    text = capsys.readouterr().out
    assert "overall (3 tasks): pass@1 0.6667  pass@2 1.0000" in text
    written = json.loads(out.read_text())
    assert written["pass@2"] == 1.0 and written["tasks"]["t1"]["pass@1"] == 0.0
    assert main(["--submission", str(tmp_path / "missing.json"), "--solutions", str(tmp_path / "sol.json")]) == 2
