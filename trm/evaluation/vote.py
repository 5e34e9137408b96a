"""Augmentation voting: turn raw model predictions on the test split into ARC attempts and pass@K.

    trm vote --outputs outputs.npz --data data/arc2 --output-dir out/vote
    trm vote --outputs rank0.npz --outputs rank1.npz --data s3://trm/runs/r1/dataset --output-dir s3://trm/runs/r1/eval/vote
    trm vote --outputs step-100.npz --outputs step-200.npz --pooled --data data/arc2 --output-dir out/pooled

Library use (the trainer and `trm evaluate`):

    voter = Voter.from_dataset("data/arc2")
    voter.add(puzzle_identifiers, inputs, preds, q_halt_logits)     # numpy, raw tokens, padded rows (id 0) ignored
    result = voter.result()        # .metrics, .submission, .votes

Rules (see docs/evaluation.md):
- crop: the largest top-left rectangle of colour tokens (2..11), scanning rows and stopping each row at its
  first PAD/EOS; an empty crop is not a usable prediction (counted in `<prefix>/empty_crops`).
- de-augmentation: a variant `<task>|||t<tid>|||<10 digits>` applied colours first, then dihedral `tid`; we undo
  the transform (inverse ids 0,3,2,1,4,5,6,7) and then map colours back.
- slot: (task, test-input index). A prediction goes to the test input equal to its de-augmented input. When a
  task has several identical test inputs, the k-th prediction (in the order fed) of one puzzle variant whose
  input matches them goes to the (k mod m)-th of those m test inputs, which is the example's position within
  its puzzle in the test split when the predictions are fed in dataset order. `add(..., positions=...)` states
  the position explicitly instead.
- ranking inside a slot: vote count (descending), then mean sigmoid(q_halt) (descending, summed in sorted
  order so that the feeding order never matters), then the grid itself (ascending by height, width, then
  row-major cells): fully deterministic.
- fallback: a test input with no usable prediction gets its own test input as both attempts, and is counted
  in `<prefix>/test_inputs_without_predictions`; with one candidate, attempt_2 repeats attempt_1.
- scoring: pass@K per test input; a task scores the mean over its test inputs whose output is known; the
  headline `<prefix>/pass@K` is the mean over tasks with known outputs. Tasks whose test outputs are unknown
  (no `output`, or `output: null`, in test_puzzles.json) still get submission entries.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

PASS_KS: tuple[int, ...] = (1, 2, 5, 10, 100, 1000)
DIHEDRAL_INVERSE: tuple[int, ...] = (0, 3, 2, 1, 4, 5, 6, 7)
SEPARATOR = "|||"
GRID = 30
SEQ_LEN = GRID * GRID
NO_COLOUR = 255  # lut value for PAD/EOS tokens


# ----------------------------------------------------------------------------------------------- variants


def parse_variant(name: str) -> tuple[str, int, np.ndarray]:
    """`task|||t<tid>|||<10 digits>` -> (task, tid, mapping) with mapping[original colour] = variant colour."""
    if SEPARATOR not in name:
        return name, 0, np.arange(10, dtype=np.uint8)
    parts = name.split(SEPARATOR)
    if len(parts) != 3 or not parts[1].startswith("t") or not parts[1][1:].isdigit():
        raise ValueError(f"identifier {name!r}: expected '<task>|||t<tid>|||<10 digits>'")
    tid = int(parts[1][1:])
    digits = parts[2]
    if tid > 7 or len(digits) != 10 or not digits.isdigit() or sorted(digits) != list("0123456789"):
        raise ValueError(f"identifier {name!r}: transform id must be 0..7 and the colour map a permutation of 0-9")
    return parts[0], tid, np.array([int(c) for c in digits], dtype=np.uint8)


def dihedral(stack: np.ndarray, tid: int) -> np.ndarray:
    """Dihedral transform `tid` (spec ids) applied to every grid of a [n, h, w] stack (a view when possible)."""
    if tid == 0:
        return stack
    if tid in (1, 2, 3):
        return np.rot90(stack, k=tid, axes=(1, 2))
    if tid == 4:
        return stack[:, :, ::-1]
    if tid == 5:
        return stack[:, ::-1, :]
    if tid == 6:
        return stack.transpose(0, 2, 1)
    if tid == 7:
        return np.rot90(stack, k=1, axes=(1, 2))[:, :, ::-1]
    raise ValueError(f"dihedral transform id {tid} not in 0..7")


def crop_sizes(tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Heights and widths of the top-left colour rectangles of [n, 900] token rows (0 where empty).

    Row r keeps the columns before the first non-colour token of rows 0..r; the rectangle with the largest
    area wins, the fewest rows on ties.
    """
    n = tokens.shape[0]
    grid = tokens.reshape(n, GRID, GRID)
    bad = (grid - np.uint8(2)) >= np.uint8(10)  # uint8 wraps: PAD 0 / EOS 1 become 254 / 255
    first = bad.argmax(axis=2)  # [n, 30]
    found = np.take_along_axis(bad, first[:, :, None], axis=2)[:, :, 0]
    first = np.where(found, first, GRID)
    cols = np.minimum.accumulate(first, axis=1)
    area = cols * np.arange(1, GRID + 1)
    best = area.argmax(axis=1)
    width = cols[np.arange(n), best]
    nonempty = width > 0
    return np.where(nonempty, best + 1, 0), np.where(nonempty, width, 0)


# ----------------------------------------------------------------------------------------------- results


@dataclass
class Candidate:
    grid: np.ndarray  # [h, w] uint8 colours 0..9, original frame
    count: int
    mean_q: float  # mean sigmoid(q_halt) over the votes
    correct: bool | None  # None when the true output is unknown


@dataclass
class VoteResult:
    metrics: dict[str, float]
    submission: dict[str, list[dict[str, list[list[int]]]]]
    votes: dict[str, list[list[Candidate]]]  # task -> per test input -> ranked candidates
    passed: dict[str, list[dict[int, bool]]] = field(default_factory=dict)  # task -> per test input -> {K: ok}
    fallback: dict[str, list[bool]] = field(default_factory=dict)  # task -> per test input -> used fallback
    prefix: str = "ARC"

    def pass_at_k(self) -> dict[str, float]:
        return {k: v for k, v in self.metrics.items() if k.startswith(f"{self.prefix}/pass@")}


def _grid(value, where: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.ndim != 2 or not (1 <= arr.shape[0] <= GRID and 1 <= arr.shape[1] <= GRID):
        raise ValueError(f"{where}: expected a grid of 1..30 x 1..30, got shape {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() > 9):
        raise ValueError(f"{where}: cells must be ints 0..9")
    return arr.astype(np.uint8)


def _key(grid: np.ndarray) -> tuple[int, int, bytes]:
    return (grid.shape[0], grid.shape[1], np.ascontiguousarray(grid, dtype=np.uint8).tobytes())


# ----------------------------------------------------------------------------------------------- voter


class Voter:
    """Collects predictions of the test split and votes per (task, test input). See the module docstring."""

    def __init__(self, test_puzzles: dict, identifiers: list[str], pass_ks=PASS_KS, prefix: str = "ARC",
                 submission_k: int = 2):
        if submission_k < 1:
            raise ValueError(f"submission_k must be >= 1, got {submission_k}")
        if not pass_ks or any(int(k) < 1 for k in pass_ks):
            raise ValueError(f"pass_ks must be positive, got {pass_ks}")
        self.pass_ks = tuple(int(k) for k in pass_ks)
        self.prefix = prefix
        self.submission_k = submission_k
        self.identifiers = list(identifiers)
        self.test_puzzles = test_puzzles
        self.tasks = list(test_puzzles)
        task_index = {name: i for i, name in enumerate(self.tasks)}
        # slots: one per (task, test input)
        self.slot_task: list[int] = []
        self.slot_test: list[int] = []
        self.slot_input: list[np.ndarray] = []
        self.slot_truth: list[np.ndarray | None] = []
        self.task_slots: list[list[int]] = []
        self._inputs: list[dict[tuple, list[int]]] = []  # per task: input key -> slots (test order)
        for t, name in enumerate(self.tasks):
            tests = test_puzzles[name].get("test") if isinstance(test_puzzles[name], dict) else None
            if not isinstance(tests, list) or not tests:
                raise ValueError(f"test_puzzles: task {name} has no 'test' list")
            slots, lookup = [], {}
            for j, pair in enumerate(tests):
                if not isinstance(pair, dict) or "input" not in pair:
                    raise ValueError(f"test_puzzles: task {name} test {j} has no 'input'")
                grid = _grid(pair["input"], f"test_puzzles: task {name} test {j} input")
                out = pair.get("output")
                truth = None if out is None else _grid(out, f"test_puzzles: task {name} test {j} output")
                s = len(self.slot_task)
                self.slot_task.append(t)
                self.slot_test.append(j)
                self.slot_input.append(grid)
                self.slot_truth.append(truth)
                slots.append(s)
                lookup.setdefault(_key(grid), []).append(s)
            self.task_slots.append(slots)
            self._inputs.append(lookup)
        # per identifier: task index (-1: not a test task), inverse transform id, token -> colour lut
        n_id = len(self.identifiers)
        self._id_task = np.full(n_id, -1, dtype=np.int32)
        self._id_tinv = np.zeros(n_id, dtype=np.int8)
        self._id_lut = np.full((n_id, 12), NO_COLOUR, dtype=np.uint8)
        self._id_parsed = np.zeros(n_id, dtype=bool)
        self._task_index = task_index
        # grids seen: (h, w, bytes) -> grid id
        self._grid_ids: dict[tuple[int, int, bytes], int] = {}
        self._grid_keys: list[tuple[int, int, bytes]] = []
        self._occurrence: dict[tuple[int, int], int] = {}  # (identifier, first slot) -> predictions seen
        # accumulated votes
        self._slots: list[np.ndarray] = []
        self._gids: list[np.ndarray] = []
        self._qs: list[np.ndarray] = []
        self.counts = {"predictions": 0, "padding_rows": 0, "empty_crops": 0, "unmatched_predictions": 0}

    @classmethod
    def from_dataset(cls, path, **kwargs) -> "Voter":
        test_puzzles, identifiers = load_dataset_files(path)
        return cls(test_puzzles, identifiers, **kwargs)

    # -- identifiers

    def _parse(self, ids: np.ndarray) -> None:
        todo = ids[~self._id_parsed[ids]]
        for i in np.unique(todo).tolist():
            name = self.identifiers[i]
            task, tid, mapping = parse_variant(name)
            self._id_task[i] = self._task_index.get(task, -1)
            self._id_tinv[i] = DIHEDRAL_INVERSE[tid]
            inverse = np.argsort(mapping).astype(np.uint8)  # variant colour -> original colour
            self._id_lut[i, 2:] = inverse
            self._id_parsed[i] = True

    # -- de-augmentation of a batch of token rows

    def _canonical(self, tokens: np.ndarray, ids: np.ndarray) -> list[tuple[int, int, bytes] | None]:
        """Per row: the key (h, w, bytes) of its cropped, de-augmented grid; None when the crop is empty."""
        n = tokens.shape[0]
        heights, widths = crop_sizes(tokens)
        grid = tokens.reshape(n, GRID, GRID)
        tinv = self._id_tinv[ids].astype(np.int64)
        group = (tinv * (GRID + 1) + heights) * (GRID + 1) + widths
        order = np.argsort(group, kind="stable")
        sorted_group = group[order]
        starts = np.flatnonzero(np.r_[True, sorted_group[1:] != sorted_group[:-1]])
        ends = np.r_[starts[1:], n]
        keys: list = [None] * n
        for a, b in zip(starts.tolist(), ends.tolist()):
            rows = order[a:b]
            first = rows[0]
            h, w = int(heights[first]), int(widths[first])
            if h == 0:
                continue
            sub = dihedral(grid[rows, :h, :w], int(tinv[first]))
            hh, ww = sub.shape[1], sub.shape[2]
            cells = np.ascontiguousarray(sub).reshape(len(rows), hh * ww)
            lut = self._id_lut[ids[rows]]  # [m, 12]
            flat = (np.arange(len(rows), dtype=np.int32) * 12)[:, None] + cells
            mapped = lut.reshape(-1).take(flat)
            data = mapped.tobytes()
            size = hh * ww
            for r, off in zip(rows.tolist(), range(0, len(data), size)):
                keys[r] = (hh, ww, data[off:off + size])
        return keys

    # -- public API

    def add(self, puzzle_identifiers, inputs, preds, q_halt_logits, positions=None) -> None:
        """Add one batch: identifiers [b], inputs/preds [b, 900] raw tokens, q_halt_logits [b].

        `positions` (optional, [b]): each example's index within its puzzle in the test split; without it,
        identical test inputs are told apart by feeding order (see the module docstring).
        """
        ids = np.asarray(puzzle_identifiers).reshape(-1).astype(np.int64)
        inputs = np.asarray(inputs)
        preds = np.asarray(preds)
        q = np.asarray(q_halt_logits, dtype=np.float64).reshape(-1)
        b = ids.shape[0]
        if inputs.shape != (b, SEQ_LEN) or preds.shape != (b, SEQ_LEN) or q.shape != (b,):
            raise ValueError(f"Voter.add: expected identifiers [b], inputs/preds [b, {SEQ_LEN}], q_halt_logits [b];"
                             f" got {ids.shape}, {inputs.shape}, {preds.shape}, {q.shape}")
        if b and (ids.min() < 0 or ids.max() >= len(self.identifiers)):
            raise ValueError(f"Voter.add: puzzle identifier out of range 0..{len(self.identifiers) - 1}")
        keep = ids != 0
        self.counts["padding_rows"] += int(b - keep.sum())
        if positions is not None:
            positions = np.asarray(positions).reshape(-1)[keep]
        ids, inputs, preds, q = ids[keep], inputs[keep], preds[keep], q[keep]
        if ids.size == 0:
            return
        self._parse(ids)
        task = self._id_task[ids]
        known = task >= 0
        self.counts["unmatched_predictions"] += int((~known).sum())
        ids, inputs, preds, q, task = ids[known], inputs[known], preds[known], q[known], task[known]
        if positions is not None:
            positions = positions[known]
        inputs = _tokens(inputs, "inputs")
        preds = _tokens(preds, "preds")
        in_keys = self._canonical(inputs, ids)
        pred_keys = self._canonical(preds, ids)
        slots = np.full(ids.shape[0], -1, dtype=np.int64)
        gids = np.full(ids.shape[0], -1, dtype=np.int64)
        registry, keys_list = self._grid_ids, self._grid_keys
        for r, (ik, pk) in enumerate(zip(in_keys, pred_keys)):
            if pk is None:
                self.counts["empty_crops"] += 1
                continue
            cand = self._inputs[task[r]].get(ik) if ik is not None else None
            if cand is None:
                self.counts["unmatched_predictions"] += 1
                continue
            if len(cand) == 1:
                slot = cand[0]
            else:
                slot = None
                if positions is not None:
                    for s in cand:
                        if self.slot_test[s] == int(positions[r]):
                            slot = s
                if slot is None:
                    k = (int(ids[r]), cand[0])
                    seen = self._occurrence.get(k, 0)
                    self._occurrence[k] = seen + 1
                    slot = cand[seen % len(cand)]
            gid = registry.get(pk)
            if gid is None:
                gid = registry[pk] = len(keys_list)
                keys_list.append(pk)
            slots[r] = slot
            gids[r] = gid
        ok = slots >= 0
        self.counts["predictions"] += int(ok.sum())
        self._slots.append(slots[ok])
        self._gids.append(gids[ok])
        self._qs.append(1.0 / (1.0 + np.exp(-q[ok])))

    def absorb(self, other: "Voter") -> None:
        """Add every prediction another Voter (same dataset) collected: pooling over checkpoints or ranks."""
        if other.tasks != self.tasks:
            raise ValueError("Voter.absorb: the other voter was built from different test puzzles")
        for slots, gids, qs in zip(other._slots, other._gids, other._qs):
            mapped = np.empty_like(gids)
            for i, g in enumerate(gids.tolist()):
                key = other._grid_keys[g]
                gid = self._grid_ids.get(key)
                if gid is None:
                    gid = self._grid_ids[key] = len(self._grid_keys)
                    self._grid_keys.append(key)
                mapped[i] = gid
            self._slots.append(slots.copy())
            self._gids.append(mapped)
            self._qs.append(qs.copy())
        for k, v in other.counts.items():
            self.counts[k] += v

    def result(self) -> VoteResult:
        slots = np.concatenate(self._slots) if self._slots else np.zeros(0, np.int64)
        gids = np.concatenate(self._gids) if self._gids else np.zeros(0, np.int64)
        qs = np.concatenate(self._qs) if self._qs else np.zeros(0, np.float64)
        n_grids = max(len(self._grid_keys), 1)
        pair = slots * n_grids + gids
        order = np.lexsort((qs, pair))  # by pair, q ascending inside: sums independent of feeding order
        pair_sorted = pair[order]
        starts = np.flatnonzero(np.r_[True, pair_sorted[1:] != pair_sorted[:-1]]) if pair.size else np.zeros(0, int)
        counts = np.diff(np.r_[starts, pair.size])
        sums = np.add.reduceat(qs[order], starts) if pair.size else np.zeros(0)
        means = sums / np.maximum(counts, 1)
        cand_pair = pair_sorted[starts]
        cand_slot, cand_gid = cand_pair // n_grids, cand_pair % n_grids
        # rank: slot, count desc, mean desc; exact ties resolved by grid order below
        rank = np.lexsort((-means, -counts, cand_slot))
        cand_slot, cand_gid, counts, means = cand_slot[rank], cand_gid[rank], counts[rank], means[rank]
        bounds = np.searchsorted(cand_slot, np.arange(len(self.slot_task) + 1))

        submission: dict = {}
        votes: dict = {}
        passed: dict = {}
        fallback: dict = {}
        totals = [0.0] * len(self.pass_ks)
        scored = 0
        no_pred = 0
        for t, name in enumerate(self.tasks):
            entries, task_votes, task_pass, task_fb = [], [], [], []
            correct = [0] * len(self.pass_ks)
            known = 0
            for s in self.task_slots[t]:
                a, b = int(bounds[s]), int(bounds[s + 1])
                items = list(zip(cand_gid[a:b].tolist(), counts[a:b].tolist(), means[a:b].tolist()))
                items = _break_ties(items, self._grid_keys)
                truth = self.slot_truth[s]
                truth_gid = self._grid_ids.get(_key(truth)) if truth is not None else None
                cands = [Candidate(_as_grid(self._grid_keys[g]), c, m, None if truth is None else g == truth_gid)
                         for g, c, m in items]
                task_votes.append(cands)
                if cands:
                    attempts = [c.grid for c in cands[: self.submission_k]]
                    task_fb.append(False)
                else:
                    attempts = [self.slot_input[s]]
                    no_pred += 1
                    task_fb.append(True)
                while len(attempts) < self.submission_k:
                    attempts.append(attempts[0])
                entries.append({f"attempt_{i + 1}": g.tolist() for i, g in enumerate(attempts)})
                oks = {}
                if truth is not None:
                    known += 1
                    gids_ranked = [g for g, _, _ in items]
                    for i, k in enumerate(self.pass_ks):
                        ok = truth_gid is not None and truth_gid in gids_ranked[:k]
                        correct[i] += ok
                        oks[k] = bool(ok)
                task_pass.append(oks)
            if known:
                scored += 1
                for i in range(len(self.pass_ks)):
                    totals[i] += correct[i] / known
            submission[name] = entries
            votes[name] = task_votes
            passed[name] = task_pass
            fallback[name] = task_fb
        p = self.prefix
        metrics: dict[str, float] = {f"{p}/pass@{k}": (totals[i] / scored if scored else 0.0)
                                     for i, k in enumerate(self.pass_ks)}
        metrics.update({
            f"{p}/tasks": len(self.tasks),
            f"{p}/tasks_scored": scored,
            f"{p}/test_inputs": len(self.slot_task),
            f"{p}/test_inputs_without_predictions": no_pred,
            f"{p}/candidates": int(cand_gid.size),
        })
        metrics.update({f"{p}/{k}": v for k, v in self.counts.items()})
        return VoteResult(metrics, submission, votes, passed, fallback, p)


def _tokens(arr: np.ndarray, what: str) -> np.ndarray:
    if arr.dtype != np.uint8:
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise ValueError(f"Voter.add: {what} tokens must lie in 0..11")
        arr = arr.astype(np.uint8)
    return np.ascontiguousarray(arr)


def _as_grid(key: tuple[int, int, bytes]) -> np.ndarray:
    h, w, data = key
    return np.frombuffer(data, dtype=np.uint8).reshape(h, w)


def _break_ties(items: list[tuple[int, int, float]], keys: list) -> list[tuple[int, int, float]]:
    """Reorder runs of equal (count, mean) by the grid (height, width, cells) ascending."""
    out, i = [], 0
    while i < len(items):
        j = i + 1
        while j < len(items) and items[j][1] == items[i][1] and items[j][2] == items[i][2]:
            j += 1
        run = items[i:j]
        if len(run) > 1:
            run = sorted(run, key=lambda it: keys[it[0]])
        out.extend(run)
        i = j
    return out


# ----------------------------------------------------------------------------------------------- files


def load_dataset_files(path) -> tuple[dict, list[str]]:
    """test_puzzles.json and identifiers.json of a dataset folder (local; localize s3:// first)."""
    root = Path(path)
    files = {}
    for name in ("test_puzzles.json", "identifiers.json"):
        f = root / name
        if not f.is_file():
            raise FileNotFoundError(f"dataset {root}: {name} not found")
        with open(f) as fh:
            try:
                files[name] = json.load(fh)
            except json.JSONDecodeError as e:
                raise ValueError(f"{f}: not valid JSON ({e})") from None
    if not isinstance(files["test_puzzles.json"], dict):
        raise ValueError(f"{root / 'test_puzzles.json'}: expected an object task -> puzzle")
    if not isinstance(files["identifiers.json"], list):
        raise ValueError(f"{root / 'identifiers.json'}: expected a list of names")
    return files["test_puzzles.json"], files["identifiers.json"]


OUTPUT_KEYS = ("puzzle_identifiers", "inputs", "preds", "q_halt_logits")


def load_outputs(path) -> dict[str, np.ndarray]:
    """An outputs.npz written by `trm evaluate --save-outputs`, checked."""
    with np.load(path) as data:
        missing = [k for k in OUTPUT_KEYS if k not in data]
        if missing:
            raise ValueError(f"{path}: missing arrays {missing} (expected {list(OUTPUT_KEYS)})")
        out = {k: data[k] for k in OUTPUT_KEYS}
    n = out["puzzle_identifiers"].shape[0]
    if out["inputs"].shape != (n, SEQ_LEN) or out["preds"].shape != (n, SEQ_LEN) or out["q_halt_logits"].shape != (n,):
        raise ValueError(f"{path}: expected puzzle_identifiers [N], inputs/preds [N, {SEQ_LEN}], q_halt_logits [N]")
    return out


def save_outputs(path, puzzle_identifiers, inputs, preds, q_halt_logits) -> None:
    """Write outputs.npz (atomic: temp name, then rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez(tmp, puzzle_identifiers=np.asarray(puzzle_identifiers, dtype=np.int32),
             inputs=np.asarray(inputs, dtype=np.uint8), preds=np.asarray(preds, dtype=np.uint8),
             q_halt_logits=np.asarray(q_halt_logits, dtype=np.float32))
    os.replace(tmp, path)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_results(result: VoteResult, test_puzzles: dict, out_dir, title: str = "TRM evaluation") -> Path:
    """submission.json, metrics.json, pass_at_k.json, report.html and summary.md into a local folder."""
    from trm.evaluation.report import render_html, render_summary

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_text(out / "submission.json", json.dumps(result.submission))
    _write_text(out / "pass_at_k.json", json.dumps(result.pass_at_k(), indent=1))
    _write_text(out / "metrics.json", json.dumps(result.metrics, indent=1))
    _write_text(out / "report.html", render_html(result, test_puzzles, title=title))
    _write_text(out / "summary.md", render_summary(result, title=title))
    return out


def deliver(local_dir: Path, dest: str) -> None:
    """Publish a finished local folder to `dest` (local path or s3://) through trm.storage."""
    from trm.storage import publish

    publish(str(local_dir), dest)


def is_remote(uri: str) -> bool:
    return str(uri).startswith("s3://")


def localize_path(uri: str) -> Path:
    if is_remote(uri):
        from trm.storage import localize

        return Path(localize(uri))
    return Path(uri)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trm vote", description="Vote over saved outputs.npz files.")
    parser.add_argument("--outputs", action="append", required=True, help="outputs.npz (repeat to merge)")
    parser.add_argument("--data", required=True, help="dataset folder or s3:// URI")
    parser.add_argument("--output-dir", required=True, help="local folder or s3:// URI")
    parser.add_argument("--pooled", action="store_true",
                        help="the files are evaluations of different checkpoints: name metrics ARC_pooled/*")
    args = parser.parse_args(argv)
    test_puzzles, identifiers = load_dataset_files(localize_path(args.data))
    voter = Voter(test_puzzles, identifiers, prefix="ARC_pooled" if args.pooled else "ARC")
    for path in args.outputs:
        out = load_outputs(localize_path(path))
        voter.add(out["puzzle_identifiers"], out["inputs"], out["preds"], out["q_halt_logits"])
    result = voter.result()
    if is_remote(args.output_dir):
        with tempfile.TemporaryDirectory() as tmp:
            write_results(result, test_puzzles, tmp, title="TRM vote")
            deliver(Path(tmp), args.output_dir)
    else:
        write_results(result, test_puzzles, args.output_dir, title="TRM vote")
    print(json.dumps(result.pass_at_k()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
