"""Score a submission.json against an ARC solutions file: pass@1 and pass@2 per task and overall.

    trm score --submission out/submission.json --solutions arc-agi_evaluation2_solutions.json
    trm score --submission chunk0/submission.json --submission chunk1/submission.json \
        --solutions s3://trm/arc/arc-agi_evaluation2_solutions.json --output s3://trm/runs/post/score.json

    from trm.evaluation.score import score
    result = score(submission, solutions)        # result["pass@2"], result["tasks"]["007bbfb7"]["pass@2"]

Solutions: `{task_id: [grid, ...]}`, one grid per test input (the Kaggle layout); a dataset's test_puzzles.json
(`{task_id: {"test": [{"input", "output"}, ...]}}`) works too. A test input counts for pass@1 when attempt_1 equals
its solution, for pass@2 when attempt_1 or attempt_2 does; a task scores the mean over its test inputs, and the
overall score is the mean over the solutions' tasks (as ARC Prize scores): a task missing from the submission
scores 0 and is listed. `submitted` gives the same means over the submitted tasks only (a chunk's own score).
Several `--submission` parts are merged first (trm.evaluation.submission.merge). A task whose number of entries
differs from its number of solutions is an error naming it.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from trm.evaluation.submission import ATTEMPTS, _read_json, merge

KS = (1, 2)


def _solutions(data: Any, where: str) -> dict[str, list]:
    """{task: [grid per test input]} from a Kaggle solutions file or a test_puzzles.json."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected an object task_id -> list of output grids")
    out = {}
    for task, value in data.items():
        if isinstance(value, dict):  # test_puzzles.json: the outputs inside the test pairs
            tests = value.get("test")
            if not isinstance(tests, list) or any(not isinstance(t, dict) or "output" not in t for t in tests):
                raise ValueError(f"{where}: task {task} has no test outputs")
            value = [t["output"] for t in tests]
        if not isinstance(value, list):
            raise ValueError(f"{where}: task {task}: expected a list of output grids")
        out[task] = value
    return out


def score(submission: dict, solutions: dict, where: str = "solutions") -> dict[str, Any]:
    """pass@1/pass@2 per task, overall (over the solutions' tasks) and over the submitted tasks."""
    if not isinstance(submission, dict):
        raise ValueError("submission: expected an object task_id -> list of attempts")
    truth = _solutions(solutions, where)
    tasks: dict[str, dict[str, float]] = {}
    problems = []
    for task, grids in truth.items():
        entries = submission.get(task)
        if entries is None:
            continue
        if not isinstance(entries, list) or len(entries) != len(grids):
            n = len(entries) if isinstance(entries, list) else "no list of"
            problems.append(f"task {task}: {n} entries in the submission, {len(grids)} test inputs in {where}")
            continue
        passed = {k: 0 for k in KS}
        for i, (entry, grid) in enumerate(zip(entries, grids)):
            if not isinstance(entry, dict):
                problems.append(f"task {task} test input {i}: expected {{attempt_1, attempt_2}}, got {type(entry).__name__}")
                break
            attempts = [entry.get(name) for name in ATTEMPTS]
            for k in KS:
                passed[k] += any(a == grid for a in attempts[:k])
        tasks[task] = {f"pass@{k}": passed[k] / len(grids) if grids else 0.0 for k in KS}
    if problems:
        raise ValueError("submission does not fit the solutions:\n  " + "\n  ".join(problems))
    missing = [t for t in truth if t not in tasks]
    extra = sorted(t for t in submission if t not in truth)
    n_all, n_sub = len(truth), len(tasks)
    return {
        **{f"pass@{k}": (sum(t[f"pass@{k}"] for t in tasks.values()) / n_all if n_all else 0.0) for k in KS},
        "tasks_total": n_all,
        "tasks_submitted": n_sub,
        "tasks_missing": missing,
        "tasks_not_in_solutions": extra,
        "submitted": {f"pass@{k}": (sum(t[f"pass@{k}"] for t in tasks.values()) / n_sub if n_sub else 0.0) for k in KS},
        "tasks": tasks,
    }


def render(result: dict[str, Any]) -> str:
    """A plain-text table: one line per task, then the overall numbers."""
    lines = [f"{'task':<12} {'pass@1':>7} {'pass@2':>7}"]
    for task, t in result["tasks"].items():
        lines.append(f"{task:<12} {t['pass@1']:>7.3f} {t['pass@2']:>7.3f}")
    for task in result["tasks_missing"]:
        lines.append(f"{task:<12} {'missing':>7} {'':>7}")
    sub = result["submitted"]
    lines.append(f"overall ({result['tasks_total']} tasks): pass@1 {result['pass@1']:.4f}  pass@2 {result['pass@2']:.4f}")
    lines.append(f"submitted ({result['tasks_submitted']} tasks): pass@1 {sub['pass@1']:.4f}  pass@2 {sub['pass@2']:.4f}")
    if result["tasks_missing"]:
        lines.append(f"{len(result['tasks_missing'])} task(s) of the solutions are missing from the submission (scored 0)")
    if result["tasks_not_in_solutions"]:
        lines.append(f"{len(result['tasks_not_in_solutions'])} submitted task(s) have no solution (not scored): "
                     + ", ".join(result["tasks_not_in_solutions"][:10]))
    return "\n".join(lines)


def _write(result: dict[str, Any], dest: str) -> str:
    data = json.dumps(result, indent=1)
    if str(dest).startswith("s3://"):
        from trm.storage import open_store

        open_store().write_bytes(dest, data.encode())
        return dest
    from trm.storage.local import atomic_write

    return str(atomic_write(dest, data))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trm score", description=__doc__.splitlines()[0])
    parser.add_argument("--submission", action="append", required=True,
                        help="submission.json (local or s3://); repeat to merge the parts of a chunked run")
    parser.add_argument("--solutions", required=True,
                        help="solutions JSON ({task: [grid, ...]}) or a dataset's test_puzzles.json; local or s3://")
    parser.add_argument("--output", help="also write the result as JSON (file or s3:// URI)")
    parser.add_argument("--json", action="store_true", help="print the JSON result instead of the table")
    args = parser.parse_args(argv)
    try:
        parts = [_read_json(p) for p in args.submission]
        submission = merge(parts, args.submission)
        result = score(submission, _read_json(args.solutions), args.solutions)
    except (ValueError, FileNotFoundError) as err:
        print(f"trm score: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=1) if args.json else render(result))
    if args.output:
        print(f"wrote {_write(result, args.output)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
