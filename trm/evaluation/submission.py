"""ARC Prize submission files: validate, merge partial submissions, write locally or to s3://.

    trm export-submission --submission out/submission.json --challenges arc-agi_test_challenges.json \
        --output out/final/submission.json
    trm export-submission --submission part1/submission.json --submission part2/submission.json \
        --challenges s3://trm/arc/arc-agi_evaluation2_challenges.json --output s3://trm/runs/r1/submission.json
    trm export-submission --submission partial.json --challenges data/arc2/test_puzzles.json --fill-missing \
        --output submission.json

Format (ARC Prize 2025): `{task_id: [{"attempt_1": grid, "attempt_2": grid}, ...]}` with one entry per test
input of the task, in order, every task of the challenges file present, both attempts present, and every grid a
list of 1..30 rows of 1..30 ints 0..9 (rectangular). Errors name the task and the test-input index.
`--fill-missing` gives a task absent from every partial submission its test inputs as both attempts.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ATTEMPTS = ("attempt_1", "attempt_2")
MAX_SIDE = 30


class SubmissionError(ValueError):
    """A submission that does not fit the challenges; `.errors` lists every problem found."""

    def __init__(self, errors: list[str]):
        self.errors = errors
        shown = "\n  ".join(errors[:50])
        more = f"\n  ... and {len(errors) - 50} more" if len(errors) > 50 else ""
        super().__init__(f"invalid submission ({len(errors)} problems):\n  {shown}{more}")


def grid_problem(grid) -> str | None:
    """Why `grid` is not an ARC grid (1..30 x 1..30 ints 0..9), or None."""
    if not isinstance(grid, list) or not grid:
        return "not a non-empty list of rows"
    if len(grid) > MAX_SIDE:
        return f"{len(grid)} rows (at most {MAX_SIDE})"
    width = None
    for r, row in enumerate(grid):
        if not isinstance(row, list) or not row:
            return f"row {r} is not a non-empty list"
        if len(row) > MAX_SIDE:
            return f"row {r} has {len(row)} cells (at most {MAX_SIDE})"
        if width is None:
            width = len(row)
        elif len(row) != width:
            return f"row {r} has {len(row)} cells, row 0 has {width} (not rectangular)"
        for c, v in enumerate(row):
            if type(v) is not int or not 0 <= v <= 9:
                return f"cell ({r}, {c}) is {v!r}, not an int 0..9"
    return None


def _tests(challenges: dict, task: str) -> list:
    puzzle = challenges[task]
    tests = puzzle.get("test") if isinstance(puzzle, dict) else None
    if not isinstance(tests, list):
        raise ValueError(f"challenges: task {task} has no 'test' list")
    for i, test in enumerate(tests):
        if not isinstance(test, dict) or "input" not in test:
            raise ValueError(f"challenges: task {task} test {i} has no 'input' grid")
    return tests


def validate(submission, challenges: dict | None = None) -> list[str]:
    """Every problem of `submission` (against `challenges` when given) as messages naming task and index."""
    if not isinstance(submission, dict):
        return ["submission: expected an object task_id -> list of attempts"]
    errors = []
    if challenges is not None:
        for task in challenges:
            if task not in submission:
                errors.append(f"task {task}: missing")
        for task in submission:
            if task not in challenges:
                errors.append(f"task {task}: not in the challenges file")
    for task, entries in submission.items():
        if not isinstance(entries, list):
            errors.append(f"task {task}: expected a list with one entry per test input")
            continue
        if challenges is not None and task in challenges:
            expected = len(_tests(challenges, task))
            if len(entries) != expected:
                errors.append(f"task {task}: {len(entries)} entries for {expected} test inputs")
        elif not entries:
            errors.append(f"task {task}: no entries")
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict):
                errors.append(f"task {task} test {i}: expected an object with {' and '.join(ATTEMPTS)}")
                continue
            for name in ATTEMPTS:
                if name not in entry:
                    errors.append(f"task {task} test {i}: {name} missing")
                    continue
                problem = grid_problem(entry[name])
                if problem:
                    errors.append(f"task {task} test {i} {name}: {problem}")
            extra = sorted(set(entry) - set(ATTEMPTS))
            if extra:
                errors.append(f"task {task} test {i}: unexpected keys {extra}")
    return errors


def check(submission, challenges: dict | None = None) -> None:
    """Raise SubmissionError listing every problem, if any."""
    errors = validate(submission, challenges)
    if errors:
        raise SubmissionError(errors)


def merge(parts: list[dict], names: list[str] | None = None) -> dict:
    """Union of partial submissions; a task found in two parts must be identical in both."""
    names = names or [f"part {i}" for i in range(len(parts))]
    merged: dict = {}
    origin: dict = {}
    for part, name in zip(parts, names):
        if not isinstance(part, dict):
            raise ValueError(f"{name}: expected an object task_id -> list of attempts")
        for task, entries in part.items():
            if task in merged and merged[task] != entries:
                raise ValueError(f"task {task}: {origin[task]} and {name} disagree")
            merged.setdefault(task, entries)
            origin.setdefault(task, name)
    return merged


def fill_missing(submission: dict, challenges: dict) -> list[str]:
    """Give every challenge task absent from `submission` its test inputs as both attempts; returns those tasks."""
    filled = []
    for task in challenges:
        if task not in submission:
            submission[task] = [{name: test["input"] for name in ATTEMPTS} for test in _tests(challenges, task)]
            filled.append(task)
    return filled


def ordered(submission: dict, challenges: dict | None) -> dict:
    """Tasks in the challenges file's order (then any others)."""
    if challenges is None:
        return submission
    out = {t: submission[t] for t in challenges if t in submission}
    out.update({t: v for t, v in submission.items() if t not in out})
    return out


def _read_json(path_or_uri: str):
    if str(path_or_uri).startswith("s3://"):
        from trm.storage import localize

        path = Path(localize(path_or_uri))
    else:
        path = Path(path_or_uri)
    if not path.is_file():
        raise FileNotFoundError(f"{path_or_uri}: not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path_or_uri}: not valid JSON ({e})") from None


def write(submission: dict, dest: str) -> str:
    """Write submission JSON to a local path (atomic) or an s3:// URI; a folder gets submission.json."""
    data = json.dumps(submission).encode()
    if str(dest).startswith("s3://"):
        from trm.storage import join, open_store

        uri = dest if dest.endswith(".json") else join(dest, "submission.json")
        open_store().write_bytes(uri, data)
        return uri
    path = Path(dest)
    if path.is_dir() or not path.suffix:
        path = path / "submission.json"
    from trm.storage.local import atomic_write

    atomic_write(path, data)  # unique temp name, fsync, rename
    return str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trm export-submission",
                                     description="Validate, merge and write an ARC Prize submission.json.")
    parser.add_argument("--submission", action="append", required=True,
                        help="submission.json (local or s3://); repeat to merge partial submissions")
    parser.add_argument("--challenges", help="challenges JSON (or a dataset's test_puzzles.json) to validate against")
    parser.add_argument("--output", help="where to write the result (file, folder or s3://); omit to only validate")
    parser.add_argument("--fill-missing", action="store_true",
                        help="tasks absent from every part get their test inputs as both attempts")
    args = parser.parse_args(argv)
    if args.fill_missing and not args.challenges:
        parser.error("--fill-missing needs --challenges")
    challenges = _read_json(args.challenges) if args.challenges else None
    if challenges is not None and not isinstance(challenges, dict):
        raise ValueError(f"{args.challenges}: expected an object task_id -> puzzle")
    if challenges is not None:
        for task in challenges:
            _tests(challenges, task)  # a malformed challenges file is named here, before anything is merged
    parts = [_read_json(p) for p in args.submission]
    merged = merge(parts, args.submission)
    if args.fill_missing:
        filled = fill_missing(merged, challenges)
        if filled:
            print(f"filled {len(filled)} missing tasks with their test inputs: {', '.join(filled[:10])}"
                  f"{' ...' if len(filled) > 10 else ''}", file=sys.stderr)
    errors = validate(merged, challenges)
    if errors:
        print(SubmissionError(errors), file=sys.stderr)
        return 1
    merged = ordered(merged, challenges)
    n_tests = sum(len(v) for v in merged.values())
    if args.output:
        where = write(merged, args.output)
        print(f"wrote {where}: {len(merged)} tasks, {n_tests} test inputs")
    else:
        print(f"valid: {len(merged)} tasks, {n_tests} test inputs")
    return 0


if __name__ == "__main__":
    from trm.cli import guarded

    sys.exit(guarded("export-submission", main))
