"""Augmentation voting (TRM-SPEC section 9): test-split predictions -> ranked grids, ARC attempts and pass@K.

    voter = Voter.from_dataset("data/arc2")
    voter.add(puzzle_identifiers, inputs, preds, q_halt_logits)    # numpy, raw tokens; identifier 0 is padding
    result = voter.result()                                         # .metrics, .submission, .votes

The rules, in the order they apply (the numpy kernels named are in trm.evaluation.kernels):
1. Crop (crop_sizes): a prediction is the largest top-left rectangle of colour tokens (2..11); each row of the
   rectangle stops at its first PAD/EOS; the fewest rows win a tie. An empty crop is no usable prediction
   (`empty_crops`) and never reaches the submission.
2. De-augmentation (recolour, undo_dihedral): a variant `<task>|||t<tid>|||<10 digits>` applied its colour
   mapping first, then dihedral `tid`; we map the colours back and apply the inverse transform.
3. Slot (Voter._slots): a prediction votes for the test input (task, index) equal to its own input, cropped and
   de-augmented; an input of no test input of its task counts in `unmatched_predictions`. When a task has m
   identical test inputs, the k-th such prediction (in the order fed) of one variant goes to the (k mod m)-th
   of them, or to the one at its position when add() is given `positions`.
4. Identity (grid_hashes): predictions vote together when their de-augmented grids are equal, compared through
   two independent 64-bit hashes of their canvases (the reference compares SHA-256 digests).
5. Ranking (Voter._rank): the distinct grids of a test input by vote count, then mean sigmoid(q_halt) (summed
   in ascending order, so that the feeding order never matters), then the grid: height, width, row-major cells.
6. Attempts (Voter.result): the first `submission_k` grids, the first one repeated when there are fewer; a test
   input without usable predictions gets itself as every attempt (`test_inputs_without_predictions`).
7. Scoring (Voter.result): pass@K of a test input = its true grid ranks among the first K; a task scores the
   mean over its test inputs with known outputs; `<prefix>/pass@K` is the mean over the tasks with any. Tasks
   without known outputs still get submission entries.
8. Pooling: a Voter votes on what it was given; absorb() pools other voters' predictions into it, explicitly
   (use prefix="ARC_pooled" for such a voter).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from itertools import repeat

import numpy as np

from trm.evaluation.files import load_dataset_files, localize_path
from trm.evaluation.kernels import (GRID, PADDED, SEQ_LEN, canvas_of, crop_sizes, dihedral, grid_hashes, grid_of,
                                    parse_names, recolour, undo_dihedral)

PASS_KS: tuple[int, ...] = (1, 2, 5, 10, 100, 1000)
CHUNK = 768  # rows voted at once: the kernels' temporaries stay in cache (2.3x faster than whole batches)


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
    votes: dict[str, list[list[Candidate]]]  # task -> per test input -> best candidates (at most keep_votes)
    passed: dict[str, list[dict[int, bool]]] = field(default_factory=dict)  # task -> per test input -> {K: ok}
    fallback: dict[str, list[bool]] = field(default_factory=dict)  # task -> per test input -> used fallback
    prefix: str = "ARC"
    num_candidates: dict[str, list[int]] = field(default_factory=dict)  # task -> per test input -> distinct grids

    def pass_at_k(self) -> dict[str, float]:
        return {k: v for k, v in self.metrics.items() if k.startswith(f"{self.prefix}/pass@")}


def _grid(value, where: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.ndim != 2 or not (1 <= arr.shape[0] <= GRID and 1 <= arr.shape[1] <= GRID):
        raise ValueError(f"{where}: expected a grid of 1..30 x 1..30, got shape {arr.shape}")
    if arr.min() < 0 or arr.max() > 9:
        raise ValueError(f"{where}: cells must be ints 0..9")
    return arr.astype(np.uint8)


def _tokens(arr: np.ndarray, what: str) -> np.ndarray:
    if arr.dtype != np.uint8:
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise ValueError(f"Voter.add: {what} tokens must lie in 0..11")
        arr = arr.astype(np.uint8)
    return np.ascontiguousarray(arr)


class Voter:
    """Collects predictions of the test split and votes per (task, test input), by the rules of the module
    docstring. add() keeps no reference to the arrays it is given."""

    def __init__(self, test_puzzles: dict, identifiers: list[str], pass_ks=PASS_KS, prefix: str = "ARC",
                 submission_k: int = 2, keep_votes: int = 10, workers: int | None = None):
        if workers is not None:
            warnings.warn("Voter(workers=...) is deprecated and ignored: voting runs in one process",
                          DeprecationWarning, stacklevel=2)
        if submission_k < 1:
            raise ValueError(f"submission_k must be >= 1, got {submission_k}")
        if not pass_ks or any(int(k) < 1 for k in pass_ks):
            raise ValueError(f"pass_ks must be positive, got {pass_ks}")
        self.pass_ks, self.prefix = tuple(int(k) for k in pass_ks), prefix
        self.submission_k, self.keep_votes = submission_k, max(keep_votes, submission_k)
        self.identifiers, self.test_puzzles, self.tasks = list(identifiers), test_puzzles, list(test_puzzles)
        # slots: one per (task, test input), in task order, then test order
        self.slot_task, self.slot_test, self.slot_input, self.slot_truth = [], [], [], []
        self.task_slots: list[list[int]] = []
        for t, name in enumerate(self.tasks):
            puzzle = test_puzzles[name]
            tests = puzzle.get("test") if isinstance(puzzle, dict) else None
            if not isinstance(tests, list) or not tests:
                raise ValueError(f"test_puzzles: task {name} has no 'test' list")
            self.task_slots.append(list(range(len(self.slot_task), len(self.slot_task) + len(tests))))
            for j, pair in enumerate(tests):
                if not isinstance(pair, dict) or "input" not in pair:
                    raise ValueError(f"test_puzzles: task {name} test {j} has no 'input'")
                out = pair.get("output")
                self.slot_task.append(t)
                self.slot_test.append(j)
                self.slot_input.append(_grid(pair["input"], f"test_puzzles: task {name} test {j} input"))
                self.slot_truth.append(None if out is None else _grid(out, f"test_puzzles: task {name} test {j} output"))
        n = len(self.slot_task)
        # rule 3: each test input as each transform shows it (original colours), as canvases [slot * 8 + tid];
        # rule 7: the known truths, hashed
        self._shown = np.stack([canvas_of(np.ascontiguousarray(dihedral(x[None], tid)[0]))
                                for x in self.slot_input for tid in range(8)]) if n else np.zeros((0, PADDED), np.uint8)
        self._first = np.array([slots[0] for slots in self.task_slots], dtype=np.int64)  # per task
        self._ntests = np.array([len(slots) for slots in self.task_slots], dtype=np.int64)
        self._known = np.array([g is not None for g in self.slot_truth] + [False], dtype=bool)
        truths = [canvas_of(np.zeros((0, 0), np.uint8) if g is None else g) for g in self.slot_truth + [None]]
        self._truth = np.stack(grid_hashes(np.stack(truths)), axis=1)  # [slot, 2], unknown ones: never _known
        self._identical: dict[int, list[int]] = {}  # slot -> the slots of its task with the same input, if several
        for s in range(n):
            same = [x for x in self.task_slots[self.slot_task[s]] if (self._shown[8 * x] == self._shown[8 * s]).all()]
            if len(same) > 1:
                self._identical[s] = same
        self._twins = np.isin(np.arange(n + 1), list(self._identical))  # [slot], and False at -1
        self._occurrence: dict[tuple[int, int], int] = {}  # (identifier, first identical slot) -> rows seen
        # per identifier, filled when first seen: task (-1: not a test task), transform, colour table
        # (variant colour -> original colour + 1)
        self._task_index = {name: t for t, name in enumerate(self.tasks)}
        self._id_seen = np.zeros(len(self.identifiers), dtype=bool)
        self._id_task = np.full(len(self.identifiers), -1, dtype=np.int64)
        self._id_tid = np.zeros(len(self.identifiers), dtype=np.int8)
        self._id_lut = np.zeros((len(self.identifiers), 10), dtype=np.uint8)
        # the votes, per block: slots, the two hashes, sigmoid(q), and the canvases, heights and widths
        self._blocks: list[tuple[np.ndarray, ...]] = []
        self.counts = {"predictions": 0, "padding_rows": 0, "empty_crops": 0, "unmatched_predictions": 0}

    @classmethod
    def from_dataset(cls, path, **kwargs) -> "Voter":
        """From a dataset folder (local or s3://); the identifiers of its test split are parsed in one go."""
        path = localize_path(path)
        voter = cls(*load_dataset_files(path), **kwargs)
        if (path / "test" / "all__puzzle_identifiers.npy").is_file():
            voter.prepare(np.load(path / "test" / "all__puzzle_identifiers.npy"))
        return voter

    def prepare(self, identifiers, inputs=None, positions=None) -> None:
        """Parse these puzzle identifiers now, in bulk (add() parses unseen ones per batch otherwise)."""
        if inputs is not None or positions is not None:
            warnings.warn("Voter.prepare(inputs=, positions=) is deprecated and ignored: the expected inputs come "
                          "from the test puzzles", DeprecationWarning, stacklevel=2)
        ids = np.asarray(identifiers).reshape(-1).astype(np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= len(self.identifiers)):
            raise ValueError(f"Voter.prepare: puzzle identifier out of range 0..{len(self.identifiers) - 1}")
        self._learn(ids[ids != 0])

    def _learn(self, ids: np.ndarray) -> None:
        new = ids[~self._id_seen[ids]]
        if new.size:
            new = np.flatnonzero(np.bincount(new, minlength=self._id_seen.size))
            names, self._id_tid[new], self._id_lut[new] = parse_names([self.identifiers[i] for i in new.tolist()])
            self._id_seen[new] = True
            self._id_task[new] = np.fromiter(map(self._task_index.get, names, repeat(-1)), np.int64, new.size)

    def add(self, puzzle_identifiers, inputs, preds, q_halt_logits, positions=None, copy: bool = True) -> None:
        """Add one batch: identifiers [b], inputs/preds [b, 900] raw tokens, q_halt_logits [b].

        `positions` (optional, [b]): each example's index within its puzzle in the test split (rule 3). `copy`
        changes nothing (kept for earlier callers): add() keeps no reference to these arrays.
        """
        ids = np.asarray(puzzle_identifiers).reshape(-1).astype(np.int64)
        inputs, preds = np.asarray(inputs), np.asarray(preds)
        q = np.asarray(q_halt_logits, dtype=np.float64).reshape(-1)
        b = ids.shape[0]
        if inputs.shape != (b, SEQ_LEN) or preds.shape != (b, SEQ_LEN) or q.shape != (b,):
            raise ValueError(f"Voter.add: expected identifiers [b], inputs/preds [b, {SEQ_LEN}], q_halt_logits [b];"
                             f" got {ids.shape}, {inputs.shape}, {preds.shape}, {q.shape}")
        if b and (ids.min() < 0 or ids.max() >= len(self.identifiers)):
            raise ValueError(f"Voter.add: puzzle identifier out of range 0..{len(self.identifiers) - 1}")
        if positions is not None:
            positions = np.asarray(positions).reshape(-1)
            if positions.shape != (b,):
                raise ValueError(f"Voter.add: positions must have shape [{b}], got {positions.shape}")
        inputs, preds = _tokens(inputs, "inputs"), _tokens(preds, "preds")
        padding = ids == 0
        self._learn(ids[~padding])
        keep = ~padding & (self._id_task[ids] >= 0)
        self.counts["padding_rows"] += int(padding.sum())
        self.counts["unmatched_predictions"] += int((~padding & ~keep).sum())  # not a test task
        if not keep.all():
            ids, inputs, preds, q = ids[keep], inputs[keep], preds[keep], q[keep]
            positions = None if positions is None else positions[keep]
        for a in range(0, ids.size, CHUNK):
            rows = slice(a, a + CHUNK)
            self._vote(ids[rows], inputs[rows], preds[rows], q[rows], None if positions is None else positions[rows])

    def _vote(self, ids, inputs, preds, q, positions) -> None:
        """The votes of one block of rows, all of test tasks."""
        slots = self._slots(ids, inputs, positions)
        h, w = crop_sizes(preds)  # rule 1
        canvases, h, w = undo_dihedral(recolour(preds, self._id_lut[ids], h, w), h, w, self._id_tid[ids])  # rule 2
        keep = (h > 0) & (slots >= 0)
        self.counts["empty_crops"] += int((h == 0).sum())
        self.counts["unmatched_predictions"] += int(((h > 0) & (slots < 0)).sum())
        self.counts["predictions"] += int(keep.sum())
        if not keep.all():
            slots, q, canvases, h, w = slots[keep], q[keep], canvases[keep], h[keep], w[keep]
        self._blocks.append((slots, *grid_hashes(canvases), 1.0 / (1.0 + np.exp(-q)), canvases, h, w))  # rule 4

    def _slots(self, ids, inputs, positions) -> np.ndarray:
        """Rule 3: each row's slot, -1 where its input is no test input of its task.

        The input is compared in its variant's frame, which is the same comparison as transforms are one-to-one:
        its colours mapped back, against the task's test inputs as the variant's transform shows them. First the
        whole field (tokens 0..11): equal to a test input's canvas, it has no colour outside that grid, so its
        crop is that grid; the other rows are cropped first.
        """
        task, tid, luts = self._id_task[ids], self._id_tid[ids], self._id_lut[ids]
        slots = self._match(task, tid, recolour(inputs, luts)) if inputs.max(initial=0) < 12 else np.full(len(ids), -1)
        miss = np.flatnonzero(slots < 0)
        if miss.size:
            h, w = crop_sizes(inputs[miss])
            slots[miss] = self._match(task[miss], tid[miss], recolour(inputs[miss], luts[miss], h, w))
        for r in np.flatnonzero(self._twins[slots]).tolist():
            same = self._identical[int(slots[r])]
            chosen = [s for s in same if positions is not None and self.slot_test[s] == int(positions[r])]
            if not chosen:  # by feeding order: the k-th such row of this identifier goes to the (k mod m)-th
                key = (int(ids[r]), same[0])
                seen = self._occurrence.get(key, 0)
                self._occurrence[key] = seen + 1
                chosen = [same[seen % len(same)]]
            slots[r] = chosen[0]
        return slots

    def _match(self, task, tid, canvases) -> np.ndarray:
        """The first test input of each row's task that equals its canvas as the row's transform shows it; -1."""
        words, shown = canvases.view(np.uint64), self._shown.view(np.uint64)
        slots = np.where((words == shown[self._first[task] * 8 + tid]).all(axis=1), self._first[task], -1)
        for j in range(1, int(self._ntests.max(initial=0))):
            rows = np.flatnonzero((slots < 0) & (self._ntests[task] > j))
            slot = self._first[task[rows]] + j
            same = (words[rows] == shown[slot * 8 + tid[rows]]).all(axis=1)
            slots[rows[same]] = slot[same]
        return slots

    def absorb(self, other: "Voter") -> None:
        """Add every prediction another Voter (same test puzzles) collected: pooling over checkpoints or ranks."""
        if other.tasks != self.tasks or other.slot_test != self.slot_test:
            raise ValueError("Voter.absorb: the other voter was built from different test puzzles")
        self._blocks += other._blocks  # blocks are never changed in place
        for k, v in other.counts.items():
            self.counts[k] += v

    def _grids(self, votes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Canvases, heights and widths of these votes (numbered over all blocks)."""
        starts = np.cumsum([0] + [len(block[0]) for block in self._blocks])
        block = np.searchsorted(starts, votes, side="right") - 1
        canvases = np.empty((votes.size, PADDED), dtype=np.uint8)
        h, w = np.empty(votes.size, dtype=np.int64), np.empty(votes.size, dtype=np.int64)
        for b in np.unique(block).tolist():
            at = np.flatnonzero(block == b)
            canvases[at], h[at], w[at] = (x[votes[at] - starts[b]] for x in self._blocks[b][4:])
        return canvases, h, w

    def _rank(self):
        """Rule 5: the candidates (distinct grids of a slot), sorted by slot, then rank: their slots, hashes,
        counts, mean sigmoid(q), and a vote of each (whose canvas is its grid)."""
        empty = [np.zeros(0, np.int64)], [np.zeros(0, np.uint64)], [np.zeros(0, np.uint64)], [np.zeros(0)]
        slots, k1, k2, q = (np.concatenate(c) for c in (list(zip(*self._blocks))[:4] or empty))
        order = np.lexsort((q, k2, k1, slots))  # the votes of a candidate together, q ascending
        s, a, b = slots[order], k1[order], k2[order]
        first = np.ones(s.size, dtype=bool)
        first[1:] = (s[1:] != s[:-1]) | (a[1:] != a[:-1]) | (b[1:] != b[:-1])
        start = np.flatnonzero(first)
        count = np.diff(np.r_[start, s.size])
        mean = np.add.reduceat(q[order], start) / count if s.size else np.zeros(0)
        slot, k1, k2, vote = s[start], a[start], b[start], order[start]
        rank = np.lexsort((-mean, -count, slot))
        # exact ties (slot, count and mean equal): by the grid, height and width first, then the cells
        same = (np.diff(slot[rank]) == 0) & (np.diff(count[rank]) == 0) & (np.diff(mean[rank]) == 0)
        tied = rank[np.flatnonzero(np.r_[same, False] | np.r_[False, same])]
        if tied.size:
            canvases, h, w = self._grids(vote[tied])
            keys = np.empty((tied.size, 2 + PADDED), dtype=np.uint8)
            keys[:, 0], keys[:, 1], keys[:, 2:] = h, w, canvases
            by_grid = np.zeros(slot.size, dtype=np.int64)
            by_grid[tied[np.argsort(keys.view(np.dtype((np.void, keys.shape[1]))).ravel(), kind="stable")]] = \
                np.arange(tied.size)
            rank = np.lexsort((by_grid, -mean, -count, slot))
        return slot[rank], k1[rank], k2[rank], count[rank], mean[rank], vote[rank]

    def result(self) -> VoteResult:
        """Rules 5-7 over every prediction added so far."""
        slot, k1, k2, count, mean, vote = self._rank()
        n = len(self.slot_task)
        bounds = np.searchsorted(slot, np.arange(n + 1))  # slot s: candidates bounds[s]..bounds[s + 1] - 1
        truth_rank = np.full(n, -1, dtype=np.int64)
        hit = np.flatnonzero(self._known[slot] & (k1 == self._truth[slot, 0]) & (k2 == self._truth[slot, 1]))
        truth_rank[slot[hit]] = hit - bounds[slot[hit]]
        shown = np.flatnonzero(np.arange(slot.size) - bounds[slot] < self.keep_votes)
        canvases, heights, widths = self._grids(vote[shown])
        grids = {c: grid_of(canvases[i], heights[i], widths[i]) for i, c in enumerate(shown.tolist())}
        bounds, count, mean, truth_rank = bounds.tolist(), count.tolist(), mean.tolist(), truth_rank.tolist()
        submission, votes, passed, fallback, ncand = {}, {}, {}, {}, {}
        totals, scored, no_prediction = [0.0] * len(self.pass_ks), 0, 0
        for t, name in enumerate(self.tasks):
            submission[name], votes[name], passed[name], fallback[name], ncand[name] = [], [], [], [], []
            correct, known = [0] * len(self.pass_ks), 0
            for s in self.task_slots[t]:
                a, b = bounds[s], bounds[s + 1]
                truth_known = self.slot_truth[s] is not None
                cands = [Candidate(grids[c], count[c], mean[c], c - a == truth_rank[s] if truth_known else None)
                         for c in range(a, min(b, a + self.keep_votes))]
                attempts = [c.grid for c in cands[:self.submission_k]] or [self.slot_input[s]]  # rule 6
                attempts += [attempts[0]] * (self.submission_k - len(attempts))
                no_prediction += not cands
                marks = {k: 0 <= truth_rank[s] < k for k in self.pass_ks} if truth_known else {}  # rule 7
                known += truth_known
                correct = [c + marks.get(k, 0) for c, k in zip(correct, self.pass_ks)]
                submission[name].append({f"attempt_{i + 1}": g.tolist() for i, g in enumerate(attempts)})
                votes[name].append(cands)
                passed[name].append(marks)
                fallback[name].append(not cands)
                ncand[name].append(b - a)
            if known:
                scored += 1
                totals = [total + c / known for total, c in zip(totals, correct)]
        p = self.prefix
        metrics: dict[str, float] = {f"{p}/pass@{k}": (total / scored if scored else 0.0)
                                     for k, total in zip(self.pass_ks, totals)}
        metrics.update({f"{p}/tasks": len(self.tasks), f"{p}/tasks_scored": scored, f"{p}/test_inputs": n,
                        f"{p}/test_inputs_without_predictions": no_prediction, f"{p}/candidates": len(count)})
        metrics.update({f"{p}/{k}": v for k, v in self.counts.items()})
        return VoteResult(metrics, submission, votes, passed, fallback, p, ncand)
