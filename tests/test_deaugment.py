"""De-augmentation through the public voting API, fed as `trm evaluate` and the trainer feed it: every one of the 8
dihedral transforms, with and without a colour permutation, is undone.

    .venv/bin/python -m pytest -q tests/test_deaugment.py

A dataset folder is written by hand (identifiers.json, test_puzzles.json and the test split's arrays): two tasks
with non-square, asymmetric grids (one task with two test inputs of different shapes), each with its original
and ONE variant. Only the variant's predictions are fed, one per test input, each the true output in that
variant's augmented frame; nothing else votes. So a transform that is not inverted (or inverted wrongly, or
colours not mapped back) leaves the wrong grid (or no matching test input) as attempt_1, and pass@1 drops.
The forward transforms below follow the spec's ids and are written independently of the code under test.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from trm.evaluation.vote import Voter

from grids import FORWARD, augment, tokens

IDENTITY = np.arange(10)


def _name(task: str, tid: int, mapping: np.ndarray) -> str:
    return f"{task}|||t{tid}|||{''.join(str(int(x)) for x in mapping)}"


def _tasks(rng: np.random.Generator) -> dict:
    """Two tasks; shapes chosen so that no transform maps a grid onto itself (non-square, random colours)."""

    def grid(h, w):
        return rng.integers(0, 10, size=(h, w))

    return {
        "aaaa0001": {"train": [{"input": grid(2, 3).tolist(), "output": grid(3, 2).tolist()}],
                     "test": [{"input": grid(3, 5).tolist(), "output": grid(2, 6).tolist()},
                              {"input": grid(4, 2).tolist(), "output": grid(5, 3).tolist()}]},
        "bbbb0002": {"train": [{"input": grid(2, 2).tolist(), "output": grid(2, 2).tolist()}],
                     "test": [{"input": grid(6, 4).tolist(), "output": grid(3, 7).tolist()}]},
    }


def _write_dataset(root: Path, tasks: dict, tid: int, mapping: np.ndarray) -> dict:
    """The dataset folder (original + one variant per task, as a group) and what the variant rows hold."""
    identifiers = ["<blank>"]
    rows_in, rows_out, row_ids, puzzle_ids, puzzle_index, group_index = [], [], [], [], [0], [0]
    variant_rows = []  # (identifier, position in puzzle, augmented input, augmented output, task, test index)
    for task, puzzle in tasks.items():
        for variant, (t, m) in enumerate(((0, IDENTITY), (tid, mapping))):
            identifiers.append(task if variant == 0 else _name(task, t, m))
            pid = len(identifiers) - 1
            for j, pair in enumerate(puzzle["test"]):
                x, y = augment(pair["input"], t, m), augment(pair["output"], t, m)
                rows_in.append(tokens(x))
                rows_out.append(tokens(y))
                row_ids.append(pid)
                if variant == 1:
                    variant_rows.append((pid, j, x, y, task, j))
            puzzle_ids.append(pid)
            puzzle_index.append(len(rows_in))
        group_index.append(len(puzzle_ids))
    test = root / "test"
    test.mkdir(parents=True)
    np.save(test / "all__inputs.npy", np.stack(rows_in))
    np.save(test / "all__labels.npy", np.stack(rows_out))
    np.save(test / "all__puzzle_identifiers.npy", np.array(puzzle_ids, np.int32))
    np.save(test / "all__puzzle_indices.npy", np.array(puzzle_index, np.int32))
    np.save(test / "all__group_indices.npy", np.array(group_index, np.int32))
    (test / "dataset.json").write_text(json.dumps({
        "pad_id": 0, "ignore_label_id": 0, "blank_identifier_id": 0, "vocab_size": 12, "seq_len": 900,
        "num_puzzle_identifiers": len(identifiers), "total_groups": len(tasks), "mean_puzzle_examples": 1.5,
        "total_puzzles": len(puzzle_ids), "sets": ["all"]}))
    (root / "identifiers.json").write_text(json.dumps(identifiers))
    (root / "test_puzzles.json").write_text(json.dumps(tasks))
    return {"variant_rows": variant_rows}


def _mapping(kind: str, seed: int) -> np.ndarray:
    if kind == "identity":
        return IDENTITY.copy()
    rng = np.random.default_rng(100 + seed)
    while True:  # colour 0 fixed, 1..9 permuted with no other fixed point
        perm = np.r_[0, rng.permutation(np.arange(1, 10))]
        if (perm[1:] != np.arange(1, 10)).all():
            return perm


@pytest.mark.parametrize("feeding", ["evaluate", "trainer"])
@pytest.mark.parametrize("colours", ["identity", "permuted"])
@pytest.mark.parametrize("tid", range(8))
def test_one_prediction_in_the_augmented_frame_is_the_answer(tmp_path, tid, colours, feeding):
    tasks = _tasks(np.random.default_rng(tid))
    mapping = _mapping(colours, tid)
    info = _write_dataset(tmp_path, tasks, tid, mapping)
    variant_rows = info["variant_rows"]
    ids = np.array([r[0] for r in variant_rows], np.int32)
    positions = np.array([r[1] for r in variant_rows], np.int64)
    inputs = np.stack([tokens(r[2]) for r in variant_rows])
    preds = np.stack([tokens(r[3]) for r in variant_rows])
    q = np.zeros(ids.size, np.float32)

    voter = Voter.from_dataset(tmp_path)
    if feeding == "evaluate":  # trm evaluate: the selected rows in dataset order, with their positions
        voter.add(ids, inputs, preds, q, positions=positions, copy=False)
    else:  # the trainer: loader batches in dataset order, the last one padded with identifier 0, no positions
        pad = 2
        voter.add(np.r_[ids, np.zeros(pad, np.int32)], np.r_[inputs, np.zeros((pad, 900), np.uint8)],
                  np.r_[preds, np.zeros((pad, 900), np.uint8)], np.r_[q, np.zeros(pad, np.float32)])
    result = voter.result()

    assert result.metrics["ARC/unmatched_predictions"] == 0
    assert result.metrics["ARC/test_inputs_without_predictions"] == 0, "a variant's input matched no test input"
    assert result.metrics["ARC/pass@1"] == 1.0, result.metrics
    for task, puzzle in tasks.items():
        got = [entry["attempt_1"] for entry in result.submission[task]]
        assert got == [pair["output"] for pair in puzzle["test"]], (task, tid, colours)


def test_the_grids_are_not_symmetric():
    """Guard of the test itself: under each non-identity transform (and colour permutation) every test grid
    changes, so an un-inverted transform cannot give the right answer by accident."""
    for tid in range(8):
        tasks = _tasks(np.random.default_rng(tid))
        for puzzle in tasks.values():
            for pair in puzzle["test"]:
                for key in ("input", "output"):
                    g = np.asarray(pair[key])
                    for other in range(1, 8):
                        moved = FORWARD[other](g)
                        assert moved.shape != g.shape or not np.array_equal(moved, g), (tid, key, other)
                    permuted = _mapping("permuted", tid)[g]
                    assert not np.array_equal(permuted, g) or not (g > 0).any()
