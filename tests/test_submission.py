"""Submission export: round trip vote -> export on the tiny dataset, validation errors, merge, s3 output."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from trm.evaluation.submission import (SubmissionError, check, fill_missing, main as export_main, merge,
                                       validate, write)
from trm.evaluation.vote import Voter, load_dataset_files, write_results


def _score(submission: dict, puzzles: dict, k: int = 2) -> float:
    """ARC scoring of a submission against known outputs, written independently of the voter."""
    total = 0.0
    for task, puzzle in puzzles.items():
        tests = puzzle["test"]
        hits = sum(any(entry[f"attempt_{i + 1}"] == t["output"] for i in range(k))
                   for entry, t in zip(submission[task], tests))
        total += hits / len(tests)
    return total / len(puzzles)


def _vote_labels(root) -> Voter:
    voter = Voter.from_dataset(root)
    ids = np.repeat(np.load(root / "test" / "all__puzzle_identifiers.npy"),
                    np.diff(np.load(root / "test" / "all__puzzle_indices.npy")))
    voter.add(ids, np.load(root / "test" / "all__inputs.npy"), np.load(root / "test" / "all__labels.npy"),
              np.zeros(len(ids)))
    return voter


def test_round_trip_true_labels_score_one(fixtures_dir, tmp_path):
    root = fixtures_dir / "tiny_dataset"
    puzzles, _ = load_dataset_files(root)
    result = _vote_labels(root).result()
    assert result.metrics["ARC/pass@1"] == 1.0
    write_results(result, puzzles, tmp_path / "eval")
    out = tmp_path / "final" / "submission.json"
    rc = export_main(["--submission", str(tmp_path / "eval" / "submission.json"),
                      "--challenges", str(root / "test_puzzles.json"), "--output", str(out)])
    assert rc == 0
    exported = json.loads(out.read_text())
    assert list(exported) == list(puzzles)
    assert validate(exported, puzzles) == []
    assert _score(exported, puzzles, k=1) == 1.0


def test_split_parts_merge_to_the_whole(fixtures_dir, tmp_path):
    root = fixtures_dir / "tiny_dataset"
    puzzles, _ = load_dataset_files(root)
    whole = _vote_labels(root).result().submission
    tasks = list(whole)
    (tmp_path / "a.json").write_text(json.dumps({t: whole[t] for t in tasks[:2]}))
    (tmp_path / "b.json").write_text(json.dumps({t: whole[t] for t in tasks[1:][::-1]}))  # overlap, other order
    rc = export_main(["--submission", str(tmp_path / "a.json"), "--submission", str(tmp_path / "b.json"),
                      "--challenges", str(root / "test_puzzles.json"), "--output", str(tmp_path / "out")])
    assert rc == 0
    assert (tmp_path / "out" / "submission.json").read_text() == json.dumps(whole)
    # a part alone is incomplete: the command fails and names the missing tasks
    rc = export_main(["--submission", str(tmp_path / "a.json"), "--challenges", str(root / "test_puzzles.json")])
    assert rc == 1
    rc = export_main(["--submission", str(tmp_path / "a.json"), "--challenges", str(root / "test_puzzles.json"),
                      "--fill-missing", "--output", str(tmp_path / "filled.json")])
    assert rc == 0
    filled = json.loads((tmp_path / "filled.json").read_text())
    assert filled[tasks[4]][0]["attempt_1"] == puzzles[tasks[4]]["test"][0]["input"]


CHALLENGES = {"aaa": {"train": [], "test": [{"input": [[1]]}, {"input": [[2]]}]},
              "bbb": {"train": [], "test": [{"input": [[3]]}]}}
GOOD = {"aaa": [{"attempt_1": [[1]], "attempt_2": [[0]]}, {"attempt_1": [[2, 2]], "attempt_2": [[2], [2]]}],
        "bbb": [{"attempt_1": [[3]], "attempt_2": [[3]]}]}


def test_valid_submission_passes():
    assert validate(GOOD, CHALLENGES) == []
    check(GOOD, CHALLENGES)


@pytest.mark.parametrize("mutate, message", [
    (lambda s: s.pop("bbb"), "task bbb: missing"),
    (lambda s: s.update(zzz=[]), "task zzz: not in the challenges file"),
    (lambda s: s["aaa"].pop(), "task aaa: 1 entries for 2 test inputs"),
    (lambda s: s["aaa"][1].pop("attempt_2"), "task aaa test 1: attempt_2 missing"),
    (lambda s: s["aaa"][1].update(attempt_1=[]), "task aaa test 1 attempt_1: not a non-empty list"),
    (lambda s: s["aaa"][0].update(attempt_2=[[0]] * 31), "task aaa test 0 attempt_2: 31 rows"),
    (lambda s: s["aaa"][0].update(attempt_2=[[0] * 31]), "task aaa test 0 attempt_2: row 0 has 31 cells"),
    (lambda s: s["aaa"][0].update(attempt_1=[[1, 2], [3]]), "task aaa test 0 attempt_1: row 1 has 1 cells"),
    (lambda s: s["bbb"][0].update(attempt_1=[[10]]), "task bbb test 0 attempt_1: cell (0, 0) is 10"),
    (lambda s: s["bbb"][0].update(attempt_1=[[True]]), "task bbb test 0 attempt_1: cell (0, 0) is True"),
    (lambda s: s["bbb"][0].update(attempt_1=[[1.0]]), "task bbb test 0 attempt_1: cell (0, 0) is 1.0"),
    (lambda s: s["bbb"][0].update(attempt_3=[[1]]), "task bbb test 0: unexpected keys ['attempt_3']"),
    (lambda s: s.update(bbb=["x"]), "task bbb test 0: expected an object"),
])
def test_validation_errors_name_task_and_index(mutate, message):
    bad = copy.deepcopy(GOOD)
    mutate(bad)
    errors = validate(bad, CHALLENGES)
    assert any(e.startswith(message) for e in errors), errors
    with pytest.raises(SubmissionError, match=message.split(":")[0]):
        check(bad, CHALLENGES)


def test_cli_prints_errors(tmp_path, capsys):
    bad = copy.deepcopy(GOOD)
    bad["aaa"][1]["attempt_2"] = [[1, 99]]
    (tmp_path / "s.json").write_text(json.dumps(bad))
    (tmp_path / "c.json").write_text(json.dumps(CHALLENGES))
    assert export_main(["--submission", str(tmp_path / "s.json"), "--challenges", str(tmp_path / "c.json")]) == 1
    assert "task aaa test 1 attempt_2: cell (0, 1) is 99" in capsys.readouterr().err


def test_merge_conflict_names_the_task():
    other = copy.deepcopy(GOOD)
    other["aaa"][0]["attempt_1"] = [[5]]
    with pytest.raises(ValueError, match="task aaa: p1 and p2 disagree"):
        merge([GOOD, other], ["p1", "p2"])
    assert merge([{"aaa": GOOD["aaa"]}, {"bbb": GOOD["bbb"]}]) == GOOD


def test_fill_missing_uses_test_inputs():
    part = {"aaa": GOOD["aaa"]}
    assert fill_missing(part, CHALLENGES) == ["bbb"]
    assert part["bbb"] == [{"attempt_1": [[3]], "attempt_2": [[3]]}]
    assert validate(part, CHALLENGES) == []


@pytest.mark.s3
def test_write_to_s3(s3_env):
    from trm.storage import open_store

    store = open_store()
    store.ensure_bucket("trm")
    uri = write(GOOD, "s3://trm/tests/export/submission.json")
    assert json.loads(store.read_bytes(uri)) == GOOD
