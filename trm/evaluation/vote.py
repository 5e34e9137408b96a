"""Augmentation voting: turn raw model predictions on the test split into ARC attempts and pass@K.

    trm vote --outputs outputs.npz --data data/arc2 --output-dir out/vote
    trm vote --outputs rank0.npz --outputs rank1.npz --data s3://trm/runs/r1/dataset --output-dir s3://trm/runs/r1/eval/vote
    trm vote --outputs step-100.npz --outputs step-200.npz --pooled --data data/arc2 --output-dir out/pooled
    trm vote --outputs outputs.npz --data data/arc2 --output-dir out/vote --workers 1   # no helper process

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
- identity: two predictions vote together when their de-augmented grids are equal; grids are compared through
  two independent 64-bit hashes of their canonical canvas (the reference compares SHA-256 digests).
- ranking inside a slot: vote count (descending), then mean sigmoid(q_halt) (descending, summed in sorted
  order so that the feeding order never matters), then the grid itself (ascending by height, width, then
  row-major cells): fully deterministic.
- speed: everything runs over blocks of 768 rows: crop sizes from bit-packed non-colour cells, the per-row colour
  look-up through `bytes.translate` (25 rows per 256-byte table), one dihedral transform per transform id
  (re-anchored by a per-row window where needed), 64-bit hashes as uint64 matrix products; inputs of rows
  prepare()d from the test split are compared with those rows byte for byte instead of hashed. Python loops
  run per block, per transform id, per distinct grid shown and per test input, never per prediction. A vote
  keeps its slot, two hashes, sigmoid(q) and the number of its row; the predictions themselves are held (a uint8
  copy, 900 bytes per row, unless add(copy=False) hands them over) so that result() rebuilds only the grids it
  shows (keep_votes per test input, and tied ones).
  `Voter(workers=2)` (`trm vote`'s default on 2 cores) keeps copies of the rows and, at result() time, votes
  and ranks half of the tasks in a forked process (its arrays come back through shared memory): the results
  are byte for byte those of one process.
- fallback: a test input with no usable prediction gets its own test input as both attempts, and is counted
  in `<prefix>/test_inputs_without_predictions`; with one candidate, attempt_2 repeats attempt_1.
- scoring: pass@K per test input; a task scores the mean over its test inputs whose output is known; the
  headline `<prefix>/pass@K` is the mean over tasks with known outputs. Tasks whose test outputs are unknown
  (no `output`, or `output: null`, in test_puzzles.json) still get submission entries.
"""

from __future__ import annotations

import argparse
import itertools
import json
import mmap
import multiprocessing
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from trm.data.augment import parse_variant_name

PASS_KS: tuple[int, ...] = (1, 2, 5, 10, 100, 1000)
DIHEDRAL_INVERSE: tuple[int, ...] = (0, 3, 2, 1, 4, 5, 6, 7)
SEPARATOR = "|||"
GRID = 30
SEQ_LEN = GRID * GRID
NO_COLOUR = 255  # lut value for PAD/EOS tokens


# ----------------------------------------------------------------------------------------------- variants


def parse_variant(name: str) -> tuple[str, int, np.ndarray]:
    """`task|||t<tid>|||<10 digits>` -> (task, tid, mapping) with mapping[original colour] = variant colour."""
    return parse_variant_name(name)


def _parse_names(names: list[str]) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Many variant names at once -> (task names, run [m], tids [m], mappings [m, 10]); ValueError naming a bad one.

    Name i belongs to task names[run[i]]: consecutive names of one task share an entry (one run). A variant name
    ends in the 18 characters `|||t<d>|||<10 digits>`; those tails, and the task prefixes compared with the
    previous name's, are read as arrays out of all the names joined into one string.
    """
    m = len(names)
    joined = "".join(names)
    lengths = np.fromiter(map(len, names), dtype=np.int64, count=m)
    ascii_only = joined.isascii()
    if ascii_only:  # one byte per character: tails and prefixes are windows of the joined bytes
        widest = int(lengths.max()) if m else 0
        buf = np.frombuffer(b" " * 18 + joined.encode("ascii") + b" " * (widest + 1), dtype=np.uint8)
        ends = np.cumsum(lengths) + 18  # in buf, just past each name
        tails = sliding_window_view(buf, 18)[ends - 18]
    else:
        tails = np.frombuffer("".join([n[-18:].rjust(18) for n in names]).encode("ascii", "replace"),
                              dtype=np.uint8).reshape(m, 18)
    digits = tails[:, 8:] - np.uint8(ord("0"))
    seen = np.bitwise_or.reduce(np.left_shift(np.uint16(1), np.minimum(digits, 15).astype(np.uint16)), axis=1)
    variant = ((lengths >= 18) & (tails[:, :4] == np.frombuffer(b"|||t", np.uint8)).all(1)
               & (tails[:, 5:8] == ord("|")).all(1) & (tails[:, 4] >= ord("0")) & (tails[:, 4] <= ord("7"))
               & (digits <= 9).all(1) & (seen == 1023))  # each digit 0..9 once
    keep = lengths - 18 * variant  # characters of the task name
    if ascii_only and m:
        width = max(int(keep.max()), 1)
        prefix = sliding_window_view(buf, width)[ends - lengths]  # [m, width]: each name's start
        inside = np.arange(width) < keep[1:, None]
        same = (keep[1:] == keep[:-1]) & ((prefix[1:] == prefix[:-1]) | ~inside).all(1)
        firsts = np.flatnonzero(np.r_[True, ~same])
        run = np.cumsum(np.r_[True, ~same]) - 1
    else:
        firsts = run = np.arange(m)
    keep_l = keep.tolist()
    tasks = [names[i][:keep_l[i]] for i in firsts.tolist()]
    if SEPARATOR in "\n".join(tasks):  # the only check left per name: no separator in a task id
        for i, task in zip(firsts.tolist(), tasks):
            if SEPARATOR in task:
                parse_variant_name(names[i])  # raises with the data module's message
                raise ValueError(f"identifier {names[i]!r}: expected '<task>|||t<0-7>|||<10 digits>'")
    tids = np.where(variant, tails[:, 4].astype(np.int64) - ord("0"), 0).astype(np.int8)
    mappings = np.where(variant[:, None], digits, np.arange(10, dtype=np.uint8)).astype(np.uint8)
    return tasks, run, tids, mappings


def dihedral(stack: np.ndarray, tid: int) -> np.ndarray:
    """Dihedral transform `tid` (spec ids) applied to every grid of a [n, h, w] stack (a view)."""
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
    return _crop(np.asarray(tokens, dtype=np.uint8).reshape(-1, SEQ_LEN) - np.uint8(2))


_FIELD = np.uint32((1 << GRID) - 1)
_STOP = np.uint32(1 << GRID)  # a stop bit after the 30 cells of a grid row
_ROW_NUMBER = np.arange(1, GRID + 1, dtype=np.int32)


def _crop(shifted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """crop_sizes of token rows minus 2 (uint8 [n, 900]: colours 0..9, everything else >= 10).

    The non-colour cells are packed into bits, 30 per grid row; the grid rows are read as 64-bit words (four
    rows every 15 bytes, at bit offsets 0, 30, 60, 90) and kept as 32-bit ones with a stop bit ([n, 30]), then
    OR-accumulated along the grid rows; the first non-colour column of each prefix is the exponent of its lowest
    set bit (read off its float32 value).
    """
    n = shifted.shape[0]
    bits = np.zeros(n * SEQ_LEN // 8 + 16, dtype=np.uint8)
    packed = np.packbits((shifted >= np.uint8(10)).reshape(-1), bitorder="little")
    bits[:packed.size] = packed
    quads = -(-n * GRID // 4)
    rows = np.empty((quads, 4), dtype=np.uint32)
    for j, (offset, shift) in enumerate(((0, 0), (3, 6), (7, 4), (11, 2))):
        word = np.ndarray((quads,), dtype=np.uint64, buffer=bits, offset=offset, strides=(15,))
        np.right_shift(word, np.uint64(shift), out=rows[:, j], casting="unsafe")  # the low 32 bits
    rows = rows.reshape(-1)[:n * GRID].reshape(n, GRID)
    rows &= _FIELD
    rows |= _STOP
    np.bitwise_or.accumulate(rows, axis=1, out=rows)
    rows &= ~rows + np.uint32(1)  # the lowest set bit, a power of two <= 2**30
    cols = (rows.astype(np.float32).view(np.uint32) >> np.uint32(23)).astype(np.int32) - 127  # its exponent
    best = np.argmax(cols * _ROW_NUMBER, axis=1)  # the first grid row with the largest area
    width = cols[np.arange(n), best].astype(np.int64)
    nonempty = width > 0
    return np.where(nonempty, best + 1, 0), np.where(nonempty, width, 0)


# grids are identified by two 64-bit hashes of their canvas (a 30x30 top-left canvas, colour + 1 inside,
# 0 outside, padded to 904 bytes): each 8-byte word is mixed, then summed with random odd weights.
_WORDS = 113
_PADDED = _WORDS * 8
_MIX = np.uint64(0x9E3779B97F4A7C15)
_weights = np.random.default_rng(0x7E5A).integers(1, 2**63, size=(2, _WORDS), dtype=np.uint64) * np.uint64(2) + np.uint64(1)
_weights_t = np.ascontiguousarray(_weights.T)
_SLOT_MIX = np.uint64(0xD6E8FEB86659FD93)  # odd: (slot, grid hash) -> one sort key
_ROWS = np.arange(GRID)
# 0/1 masks of the top-left h x w rectangle, index h * 31 + w
_RECT = ((_ROWS[None, None, :, None] < np.arange(GRID + 1)[:, None, None, None])
         & (_ROWS[None, None, None, :] < np.arange(GRID + 1)[None, :, None, None])).astype(np.uint8).reshape(-1, SEQ_LEN)
_TRANSPOSING = np.array([False, True, False, True, False, False, True, True])


def _hash(padded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[n, 904] uint8 -> two uint64 [n] hashes."""
    x = padded.view(np.uint64) * _MIX
    x ^= x >> np.uint64(29)
    both = x @ _weights_t  # uint64 matmul wraps like the sum of products
    return both[:, 0], both[:, 1]


_TABLE_ROWS = 25  # rows that share one 256-byte table in _recolour: codes 10 * k + colour, 255 outside crops
_OUTSIDE = np.zeros(((GRID + 1) ** 2, _PADDED), dtype=np.uint8)  # per h * 31 + w: 255 outside the h x w crop
_OUTSIDE[:, :SEQ_LEN] = (1 - _RECT) * 255
_OUTSIDE[:, SEQ_LEN:] = 255
_CODE_OFFSETS = (np.arange(_TABLE_ROWS) * 10).astype(np.uint8)


def _recolour(code: np.ndarray, h: np.ndarray, w: np.ndarray, luts: np.ndarray) -> np.ndarray:
    """Per-row colour look-up inside each crop, 0 outside, on padded rows: writable [n, 904] uint8.

    `code` [n, 904] holds tokens minus 2 plus 10 * (row % 25) in its first 900 columns (colours 0..9 inside
    the h x w crops; overwritten, the last 4 columns too), `luts` [n, 10] each row's value per colour. Cells outside a crop are coded
    255, and rows go 25 at a time through `bytes.translate` with one 256-byte table (a byte look-up far
    cheaper than a numpy gather): row k of a group maps code 10 * k + colour to its own table entry.
    """
    n = code.shape[0]
    code |= _OUTSIDE[h * (GRID + 1) + w]
    groups = -(-n // _TABLE_ROWS)
    tables = np.zeros((groups, 256), dtype=np.uint8)
    flat = np.zeros((groups * _TABLE_ROWS, 10), dtype=np.uint8)
    flat[:n] = luts
    tables[:, :_TABLE_ROWS * 10] = flat.reshape(groups, _TABLE_ROWS * 10)
    data, tab, step = code.tobytes(), tables.tobytes(), _TABLE_ROWS * _PADDED
    out = bytearray(len(data))
    view = memoryview(out)
    for i in range(groups):
        view[i * step:(i + 1) * step] = data[i * step:(i + 1) * step].translate(tab[i * 256:(i + 1) * 256])
    return np.frombuffer(out, dtype=np.uint8).reshape(n, _PADDED)


def _distinct(values: np.ndarray, size: int) -> np.ndarray:
    """np.unique of non-negative ints below `size` (identifiers), through a count."""
    if not values.size:
        return values.astype(np.int64)
    return np.flatnonzero(np.bincount(values, minlength=size))


def _shift(tid: int, h: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Where the top-left cell of an h x w grid lands (flat index) after transforming its whole 30x30 canvas."""
    if tid in (0, 6):
        return np.zeros_like(h)
    if tid == 1:
        return (GRID - w) * GRID
    if tid == 2:
        return (GRID - h) * GRID + (GRID - w)
    if tid == 3:
        return GRID - h
    if tid == 4:
        return GRID - w
    if tid == 5:
        return (GRID - h) * GRID
    return (GRID - w) * GRID + (GRID - h)  # 7


def canvas_of(grid: np.ndarray) -> np.ndarray:
    """One grid (colours 0..9) -> its padded canonical canvas [904] uint8."""
    out = np.zeros(_PADDED, dtype=np.uint8)
    h, w = grid.shape
    out[:SEQ_LEN].reshape(GRID, GRID)[:h, :w] = grid + 1
    return out


def _grid_of(canvas: np.ndarray, h: int, w: int) -> np.ndarray:
    return np.subtract(canvas[:SEQ_LEN].reshape(GRID, GRID)[:h, :w], np.uint8(1), dtype=np.uint8)


def _tokens_of(grid: np.ndarray) -> np.ndarray:
    """One grid -> raw token canvas [904] (colour + 2, EOS edges, PAD), as the dataset stores a test input."""
    out = np.zeros(_PADDED, dtype=np.uint8)
    canvas = out[:SEQ_LEN].reshape(GRID, GRID)
    h, w = grid.shape
    canvas[:h, :w] = grid + 2
    if h < GRID:
        canvas[h, :w] = 1
    if w < GRID:
        canvas[:h, w] = 1
    return out


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
    votes: dict[str, list[list[Candidate]]]  # task -> per test input -> best candidates (at most keep_votes)
    passed: dict[str, list[dict[int, bool]]] = field(default_factory=dict)  # task -> per test input -> {K: ok}
    fallback: dict[str, list[bool]] = field(default_factory=dict)  # task -> per test input -> used fallback
    prefix: str = "ARC"
    num_candidates: dict[str, list[int]] = field(default_factory=dict)  # task -> per test input -> distinct grids

    def pass_at_k(self) -> dict[str, float]:
        return {k: v for k, v in self.metrics.items() if k.startswith(f"{self.prefix}/pass@")}


class Ranked(NamedTuple):
    """Candidates (distinct grids of one slot) sorted by slot, then rank; grid_of indexes canvases/heights/widths
    for those whose grid was rebuilt (-1 for the others)."""
    slot: np.ndarray
    h1: np.ndarray
    h2: np.ndarray
    count: np.ndarray
    mean: np.ndarray
    grid_of: np.ndarray
    canvases: np.ndarray
    heights: np.ndarray
    widths: np.ndarray


def _grid(value, where: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.ndim != 2 or not (1 <= arr.shape[0] <= GRID and 1 <= arr.shape[1] <= GRID):
        raise ValueError(f"{where}: expected a grid of 1..30 x 1..30, got shape {arr.shape}")
    if arr.min() < 0 or arr.max() > 9:
        raise ValueError(f"{where}: cells must be ints 0..9")
    return arr.astype(np.uint8)


# ----------------------------------------------------------------------------------------------- voter


class Voter:
    """Collects predictions of the test split and votes per (task, test input). See the module docstring."""

    def __init__(self, test_puzzles: dict, identifiers: list[str], pass_ks=PASS_KS, prefix: str = "ARC",
                 submission_k: int = 2, keep_votes: int = 10, workers: int | None = None):
        if submission_k < 1:
            raise ValueError(f"submission_k must be >= 1, got {submission_k}")
        if not pass_ks or any(int(k) < 1 for k in pass_ks):
            raise ValueError(f"pass_ks must be positive, got {pass_ks}")
        self.pass_ks = tuple(int(k) for k in pass_ks)
        self.prefix = prefix
        # processes for the voting work: with workers > 1 (where fork is available), add() keeps copies of the
        # rows and result() splits them by task over this process and workers - 1 forked ones (see _flush): a
        # little faster by wall clock on an idle 2-core machine, about 40% more CPU time. Never changes a result.
        self.workers = 1 if workers is None else int(workers)
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.submission_k = submission_k
        self.keep_votes = max(keep_votes, submission_k)
        self.identifiers = list(identifiers)
        self.test_puzzles = test_puzzles
        self.tasks = list(test_puzzles)
        self._task_index = {name: i for i, name in enumerate(self.tasks)}
        # slots: one per (task, test input), in task order then test order
        self.slot_task: list[int] = []
        self.slot_test: list[int] = []
        self.slot_input: list[np.ndarray] = []
        self.slot_truth: list[np.ndarray | None] = []
        self.task_slots: list[list[int]] = []
        for t, name in enumerate(self.tasks):
            puzzle = test_puzzles[name]
            tests = puzzle.get("test") if isinstance(puzzle, dict) else None
            if not isinstance(tests, list) or not tests:
                raise ValueError(f"test_puzzles: task {name} has no 'test' list")
            slots = []
            for j, pair in enumerate(tests):
                if not isinstance(pair, dict) or "input" not in pair:
                    raise ValueError(f"test_puzzles: task {name} test {j} has no 'input'")
                out = pair.get("output")
                slots.append(len(self.slot_task))
                self.slot_task.append(t)
                self.slot_test.append(j)
                self.slot_input.append(_grid(pair["input"], f"test_puzzles: task {name} test {j} input"))
                self.slot_truth.append(None if out is None else _grid(out, f"test_puzzles: task {name} test {j} output"))
            self.task_slots.append(slots)
        self._task_first = np.array([s[0] for s in self.task_slots] or [0], dtype=np.int64)
        self._slot_task = np.array(self.slot_task or [0], dtype=np.int64)
        self._task_ntests = np.array([len(s) for s in self.task_slots] or [0], dtype=np.int64)
        self._max_tests = int(self._task_ntests.max()) if self.tasks else 1
        # canonical hashes of test inputs (slow-path matching) and of the known truths (scoring)
        self._input_slots: dict[tuple[int, int, int], list[int]] = {}
        grids = self.slot_input + [g for g in self.slot_truth if g is not None]
        a, b = _hash(np.stack([canvas_of(g) for g in grids])) if grids else ([], [])
        a, b = a.tolist(), b.tolist()
        for s in range(len(self.slot_input)):
            self._input_slots.setdefault((self.slot_task[s], a[s], b[s]), []).append(s)
        self._task_dup = np.zeros(max(len(self.tasks), 1), dtype=bool)  # tasks with identical test inputs
        for (t, _, _), same in self._input_slots.items():
            self._task_dup[t] |= len(same) > 1
        known = iter(zip(a[len(self.slot_input):], b[len(self.slot_input):]))
        self._truth_key = [None if g is None else next(known) for g in self.slot_truth]
        # per identifier: task index (-1: not a test task), inverse transform id, token -> colour + 1 lut, and
        # the hashes of the raw token canvases of its test inputs (the fast path of input matching)
        n_id = len(self.identifiers)
        self._id_task = np.full(n_id, -1, dtype=np.int64)
        self._id_tinv = np.zeros(n_id, dtype=np.int8)
        self._id_lut = np.zeros((n_id, 12), dtype=np.uint8)
        self._id_parsed = np.zeros(n_id, dtype=bool)
        self._id_ready = np.zeros(n_id, dtype=bool)  # expected input hashes known
        self._id_in1 = np.zeros((n_id, self._max_tests), dtype=np.uint64)
        self._id_in2 = np.zeros((n_id, self._max_tests), dtype=np.uint64)
        # prepare()d from the test split: the split's rows are the expected inputs, compared byte for byte
        self._id_src = np.zeros(n_id, dtype=bool)
        self._id_row = np.full((n_id, self._max_tests), -1, dtype=np.int64)
        self._src: np.ndarray | None = None
        self._occurrence: dict[tuple[int, int], int] = {}  # (identifier, first slot) -> predictions seen
        # accumulated votes: slot, grid hashes, sigmoid(q) and the row it came from (a number in the held rows)
        self._slots: list[np.ndarray] = []
        self._h1: list[np.ndarray] = []
        self._h2: list[np.ndarray] = []
        self._qs: list[np.ndarray] = []
        self._rows: list[np.ndarray] = []
        # the rows voted so far, as (first row number, identifiers, preds): result() rebuilds the grids it shows
        # from them (a few per test input) instead of keeping a canvas per distinct grid
        self._held: list[tuple[int, np.ndarray, np.ndarray]] = []
        # rows kept by add() for _flush when workers > 1: (ids, inputs, preds, q, positions), own copies
        self._pending: list[tuple] = []
        self._scratch = np.zeros((0, SEQ_LEN * 2 + 4), dtype=np.uint8)  # _canonical's, kept between blocks
        self.counts = {"predictions": 0, "padding_rows": 0, "empty_crops": 0, "unmatched_predictions": 0}

    @classmethod
    def from_dataset(cls, path, **kwargs) -> "Voter":
        """From a dataset folder; the test split's identifiers are prepared in one go when present."""
        path = localize_path(str(path))
        test_puzzles, identifiers = load_dataset_files(path)
        voter = cls(test_puzzles, identifiers, **kwargs)
        split = path / "test"
        names = ("all__puzzle_identifiers.npy", "all__puzzle_indices.npy", "all__inputs.npy")
        if all((split / n).is_file() for n in names):
            pids = np.load(split / names[0]).astype(np.int64)
            pidx = np.load(split / names[1]).astype(np.int64)
            inputs = np.load(split / names[2], mmap_mode="r")
            sizes = np.diff(pidx)
            if pidx.shape == (pids.size + 1,) and pidx[-1] == inputs.shape[0] and (sizes >= 0).all():
                positions = np.arange(inputs.shape[0]) - np.repeat(pidx[:-1], sizes)
                voter.prepare(np.repeat(pids, sizes), inputs=inputs, positions=positions)
        return voter

    # -- identifiers

    def prepare(self, identifiers, inputs=None, positions=None) -> None:
        """Parse these puzzle identifiers now, in bulk (add() parses unseen ones per batch otherwise).

        With the test split's `inputs` [N, 900] and each row's `positions` within its puzzle (identifiers then
        has one entry per row), a variant whose rows are exactly its task's test inputs takes their hashes as
        the expected inputs instead of rebuilding them from test_puzzles.json.
        """
        self._flush()  # rows kept by add() are voted with the tables they were added under
        ids = np.asarray(identifiers).reshape(-1).astype(np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= len(self.identifiers)):
            raise ValueError(f"Voter.prepare: puzzle identifier out of range 0..{len(self.identifiers) - 1}")
        if inputs is not None:
            positions = np.asarray(positions).reshape(-1).astype(np.int64)
            if positions.shape != ids.shape or len(inputs) != ids.size:
                raise ValueError("Voter.prepare: identifiers, inputs and positions must have one entry per row")
            if tuple(np.shape(inputs)[1:]) != (SEQ_LEN,):
                raise ValueError(f"Voter.prepare: inputs must be [N, {SEQ_LEN}], got {np.shape(inputs)}")
            self._parse(ids[ids != 0], expect=False)
            task = np.where(ids > 0, self._id_task[ids], -1)
            rows_per_id = np.bincount(ids[task >= 0], minlength=len(self.identifiers))
            whole = rows_per_id[ids] == np.where(task >= 0, self._task_ntests[np.maximum(task, 0)], -1)
            use = np.flatnonzero((task >= 0) & whole & (positions >= 0) & (positions < self._max_tests))
            if self._src is not None and self._src is not inputs:
                self._hash_rows()  # the earlier split's rows become hashes: one source of rows at a time
            rows_of = np.full((len(self.identifiers), self._max_tests), -1, dtype=np.int64)
            rows_of[ids[use], positions[use]] = use
            taken = _distinct(ids[use], len(self.identifiers))
            # check one variant per task against test_puzzles.json; any difference: rebuild them all
            _, first = np.unique(self._id_task[taken], return_index=True)
            sample = taken[first]
            rows = rows_of[sample].reshape(-1)
            padded = np.zeros((rows.size, _PADDED), dtype=np.uint8)
            padded[rows >= 0, :SEQ_LEN] = inputs[rows[rows >= 0]]
            a1, a2 = _hash(padded)
            kept = (np.where(rows >= 0, a1, 0).reshape(sample.size, -1),
                    np.where(rows >= 0, a2, 0).reshape(sample.size, -1))
            self._expect(sample)
            if np.array_equal(kept[0], self._id_in1[sample]) and np.array_equal(kept[1], self._id_in2[sample]):
                self._id_row[taken] = rows_of[taken]
                self._id_src[taken] = True
                self._src = inputs
            else:
                taken = sample
            self._id_ready[taken] = True
        self._parse(ids[ids != 0])

    def _hash_rows(self) -> None:
        """Turn the identifiers compared with prepare()'s rows into hash-compared ones (their rows' hashes)."""
        held = np.flatnonzero(self._id_src)
        for lo in range(0, held.size, CHUNK):
            part = held[lo:lo + CHUNK]
            rows = self._id_row[part].reshape(-1)
            padded = np.zeros((rows.size, _PADDED), dtype=np.uint8)
            padded[rows >= 0, :SEQ_LEN] = self._src[rows[rows >= 0]]
            a1, a2 = _hash(padded)
            self._id_in1[part] = np.where(rows >= 0, a1, 0).reshape(part.size, -1)
            self._id_in2[part] = np.where(rows >= 0, a2, 0).reshape(part.size, -1)
        self._id_src[:] = False
        self._id_row[:] = -1
        self._src = None

    def _parse(self, ids: np.ndarray, expect: bool = True) -> None:
        new = _distinct(ids[~self._id_parsed[ids]], len(self.identifiers))
        if new.size:
            if new[-1] - new[0] + 1 == new.size:  # a range of identifiers: a slice of the names
                names = self.identifiers[int(new[0]):int(new[-1]) + 1]
            else:
                names = [self.identifiers[i] for i in new.tolist()]
            tasks, run, tids, mappings = _parse_names(names)
            self._id_task[new] = np.fromiter(map(self._task_index.get, tasks, itertools.repeat(-1)),
                                             dtype=np.int64, count=len(tasks))[run]
            self._id_tinv[new] = np.asarray(DIHEDRAL_INVERSE, dtype=np.int8)[tids]
            inverse = np.empty_like(mappings)  # variant colour -> original colour
            np.put_along_axis(inverse, mappings.astype(np.intp), np.arange(10, dtype=np.uint8)[None, :], axis=1)
            self._id_lut[new, 2:] = inverse + 1
            self._id_parsed[new] = True
        if expect:
            need = ids[~self._id_ready[ids] & (self._id_task[ids] >= 0)]
            if need.size:
                self._expect(_distinct(need, len(self.identifiers)))

    def _expect(self, new: np.ndarray) -> None:
        """Hashes of the raw token canvases of the test inputs of these variants (the fast input match)."""
        task = self._id_task[new]
        tids = np.asarray(DIHEDRAL_INVERSE, dtype=np.int8)[self._id_tinv[new]]  # the inverse of an inverse
        mappings = np.argsort(self._id_lut[new, 2:], axis=1).astype(np.uint8)  # original colour -> variant colour
        self._id_ready[new] = True
        # per (task, test input), all variants at once
        order = np.lexsort((tids, task))
        task_edges = np.flatnonzero(np.r_[True, task[order][1:] != task[order][:-1], True])
        for lo, hi in zip(task_edges[:-1].tolist(), task_edges[1:].tolist()):
            rows = order[lo:hi]
            t = int(task[rows[0]])
            tid_rows = tids[rows]
            tid_edges = np.flatnonzero(np.r_[True, tid_rows[1:] != tid_rows[:-1], True])
            maps = mappings[rows]
            for j, s in enumerate(self.task_slots[t]):
                coloured = maps[:, self.slot_input[s]] + np.uint8(2)  # [m, h, w]: colours first ...
                canvas = np.zeros((rows.size, _PADDED), dtype=np.uint8)
                view = canvas[:, :SEQ_LEN].view()
                view.shape = (rows.size, GRID, GRID)  # a view (raises rather than copy)
                for a, b in zip(tid_edges[:-1].tolist(), tid_edges[1:].tolist()):
                    x = dihedral(coloured[a:b], int(tid_rows[a]))  # ... then the transform
                    _, gh, gw = x.shape
                    view[a:b, :gh, :gw] = x
                    if gh < GRID:
                        view[a:b, gh, :gw] = 1
                    if gw < GRID:
                        view[a:b, :gh, gw] = 1
                a1, a2 = _hash(canvas)
                self._id_in1[new[rows], j] = a1
                self._id_in2[new[rows], j] = a2

    def _canonical(self, tokens: np.ndarray, ids: np.ndarray):
        """[n, 900] uint8 tokens -> (padded canonical canvases [n, 904], heights, widths) in the original frame.

        Rows must come sorted by inverse transform id (see _add), so that each transform is one slice. The
        colours are looked up first (in the variant's frame), then each transform id undoes its slice: 0 keeps
        it, 6 transposes it, 5 reorders whole grid rows, the others transform the 30x30 canvas and re-anchor it
        through a per-row window.
        """
        n = tokens.shape[0]
        shifted = tokens - np.uint8(2)
        h, w = _crop(shifted)
        code = np.empty((n, _PADDED), dtype=np.uint8)  # the last 4 columns: 255 after _recolour's mask
        np.add(shifted, _CODE_OFFSETS[np.arange(n) % _TABLE_ROWS][:, None], out=code[:, :SEQ_LEN])
        canon = _recolour(code, h, w, self._id_lut[ids, 2:])
        tinv = self._id_tinv[ids]
        edges = np.flatnonzero(np.r_[True, tinv[1:] != tinv[:-1], True])
        buf, shift, moved = None, None, []
        for lo, hi in zip(edges[:-1].tolist(), edges[1:].tolist()):
            t = int(tinv[lo])
            if t == 0:
                continue
            part = canon[lo:hi]
            grids = part[:, :SEQ_LEN].reshape(hi - lo, GRID, GRID)
            if t == 6:
                part[:, :SEQ_LEN] = grids.transpose(0, 2, 1).reshape(hi - lo, SEQ_LEN)
            elif t == 5:  # canonical grid row r is row h - 1 - r (row 29, outside every crop but 30 rows high, past h)
                hh = h[lo:hi, None]
                src = np.where(_ROWS[None, :] < hh, hh - 1 - _ROWS[None, :], GRID - 1)
                src += (np.arange(hi - lo) * GRID)[:, None]
                rows = np.ascontiguousarray(grids).reshape(-1, GRID)  # every grid row, one after the other
                part[:, :SEQ_LEN] = rows.take(src.reshape(-1), axis=0).reshape(hi - lo, SEQ_LEN)
            else:  # transform the whole canvas, then re-anchor through a window (below)
                if buf is None:
                    if self._scratch.shape[0] < n:  # canvases in the left half, zeros in the right one
                        self._scratch = np.zeros((n, SEQ_LEN * 2 + 4), dtype=np.uint8)
                    buf = self._scratch
                    shift = np.zeros(n, dtype=np.int64)
                buf[lo:hi, :SEQ_LEN].reshape(hi - lo, GRID, GRID)[:] = dihedral(grids, t)
                shift[lo:hi] = _shift(t, h[lo:hi], w[lo:hi])
                moved.append(np.arange(lo, hi))
        if moved:
            rows = np.concatenate(moved)
            shift[h == 0] = 0  # empty crops: nothing to re-anchor
            windows = np.ndarray((n, SEQ_LEN + 1, _PADDED), dtype=np.uint8, buffer=buf,
                                 strides=(buf.strides[0], 1, 1))  # windows[i, s] = buf[i, s:s + 904]
            canon[rows] = windows[rows, shift[rows]]
        swap = _TRANSPOSING[tinv]
        return canon, np.where(swap, w, h), np.where(swap, h, w)

    # -- public API

    def add(self, puzzle_identifiers, inputs, preds, q_halt_logits, positions=None, copy: bool = True) -> None:
        """Add one batch: identifiers [b], inputs/preds [b, 900] raw tokens, q_halt_logits [b].

        `positions` (optional, [b]): each example's index within its puzzle in the test split; without it,
        identical test inputs are told apart by feeding order (see the module docstring).
        `copy=False`: the caller hands the token arrays over and leaves them unchanged until result(): the voter
        holds the preds (and, with workers > 1, the inputs) until then, and otherwise copies them.
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
        if positions is not None:
            positions = np.asarray(positions).reshape(-1)
            if positions.shape != (b,):
                raise ValueError(f"Voter.add: positions must have shape [{b}], got {positions.shape}")
        keep = ids != 0
        self.counts["padding_rows"] += int(b - keep.sum())
        self._parse(ids[keep])
        keep &= self._id_task[ids] >= 0
        self.counts["unmatched_predictions"] += int(b - keep.sum() - (ids == 0).sum())
        if not keep.all():
            ids, inputs, preds, q = ids[keep], inputs[keep], preds[keep], q[keep]
            positions = None if positions is None else positions[keep]
        if not ids.size:
            return
        preds = _owned(preds, "preds", copy)  # held until result()
        if self.workers > 1 and _FORK is not None:  # kept for result(): own copies, checked now
            self._pending.append((ids, _owned(inputs, "inputs", copy), preds, q.copy(),
                                  None if positions is None else positions.copy()))
            return
        self._add_rows(ids, inputs, preds, q, positions, self._hold(ids, preds) + np.arange(ids.size))

    def _hold(self, ids: np.ndarray, preds: np.ndarray) -> int:
        """Keep these rows for result(); the number of the first one."""
        first = self._held_rows
        self._held.append((first, ids, preds))
        return first

    @property
    def _held_rows(self) -> int:
        """How many rows are held (the number the next one gets)."""
        return self._held[-1][0] + len(self._held[-1][1]) if self._held else 0

    def _add_rows(self, ids, inputs, preds, q, positions, rows) -> None:
        for a in range(0, ids.size, CHUNK):
            sl = slice(a, a + CHUNK)
            self._merge(ids[sl], inputs[sl], q[sl], None if positions is None else positions[sl], rows[sl],
                        self._heavy(ids[sl], inputs[sl], preds[sl]))

    def _flush(self, rank: bool = False) -> list[Ranked] | None:
        """Vote the rows add() kept, split by task over this process and up to workers - 1 forked ones.

        Tasks go to parts in contiguous runs of about equal row counts; each part feeds its rows in the order they
        were added, so per (task, test input) everything happens as in one process. The rows are held here (and
        numbered) before the fork, so a forked process sends back only the votes it collected (slots, hashes, q,
        row numbers, counts, occurrence counters): its arrays through a mapping shared with it (a pipe is far
        slower), the rest through a pipe. Any failure there and its part is voted here instead.
        With `rank` (result()), each part also ranks the candidates of its tasks (all their votes, earlier ones
        included) where it voted them: the list of those, in task order, is returned; None where no process was
        forked.
        """
        pending, self._pending = self._pending, []
        if not pending:
            return None
        firsts = [self._hold(p[0], p[2]) for p in pending]
        rows = np.bincount(np.concatenate([self._id_task[p[0]] for p in pending]), minlength=len(self.tasks))
        parts = min(self.workers, int((rows > 0).sum()))
        before = np.cumsum(rows) - rows
        task_part = np.minimum((2 * before + rows) * parts // max(2 * int(rows.sum()), 1), parts - 1)

        def run(part: int) -> None:
            for (ids, inputs, preds, q, positions), first in zip(pending, firsts):
                mine = task_part[self._id_task[ids]] == part
                if mine.all():
                    self._add_rows(ids, inputs, preds, q, positions, first + np.arange(ids.size))
                elif mine.any():
                    i = np.flatnonzero(mine)
                    self._add_rows(ids[i], inputs[i], preds[i], q[i], None if positions is None else positions[i],
                                   first + i)

        def rank_part(part: int) -> Ranked | None:
            return self._rank(*self._votes(task_part == part)) if rank else None

        children = []
        earlier = sum(len(x) for x in self._slots)
        part_rows = np.bincount(task_part, weights=rows, minlength=parts).astype(np.int64)
        for part in range(1, parts):
            receive, send = _FORK.Pipe(duplex=False)
            # room for the part's votes (5 numbers each) and, ranked, a candidate (6 numbers and a canvas) per
            # vote: only the pages written are ever used
            shared = mmap.mmap(-1, int(part_rows[part]) * 40 + (int(part_rows[part]) + earlier) * (48 + _PADDED + 16)
                               + 4096)
            proc = _FORK.Process(target=self._child, args=(run, rank_part, part, send, shared), daemon=True)
            try:
                proc.start()
            except OSError:
                receive.close()
                send.close()
                children.append((part, None, None, None))
                continue
            send.close()
            children.append((part, proc, receive, shared))
        run(0)
        if not children:
            return None
        ranked = [rank_part(0)]
        for part, proc, receive, shared in children:
            state = None
            if proc is not None:
                try:
                    state = receive.recv()
                except (EOFError, OSError):
                    state = None
                receive.close()
                proc.join()
            if state is None or state[0] != "ok":
                run(part)
                ranked.append(rank_part(part))
                continue
            _, layout, counts, occurrence, has_rank = state
            slots, h1, h2, qs, rows, *part_ranked = _unpack(shared, layout)
            ranked.append(Ranked(*part_ranked) if has_rank else None)
            self._slots.append(slots)
            self._h1.append(h1)
            self._h2.append(h2)
            self._qs.append(qs)
            self._rows.append(rows)
            for k, v in counts.items():
                self.counts[k] += v
            self._occurrence.update(occurrence)
        return ranked if rank else None

    def _child(self, run, rank_part, part: int, send, shared: mmap.mmap) -> None:
        """In a forked process: vote one part from empty vote lists and send back what it collected, and the
        part's ranked candidates (rank_part, over the earlier votes of its tasks too) where asked: the arrays
        written into `shared`, their layout and the rest through the pipe."""
        try:
            earlier = self._slots, self._h1, self._h2, self._qs, self._rows
            self._slots, self._h1, self._h2, self._qs, self._rows = [], [], [], [], []
            self.counts = dict.fromkeys(self.counts, 0)
            occurrence = dict(self._occurrence)
            run(part)
            changed = {k: v for k, v in self._occurrence.items() if occurrence.get(k) != v}
            joined = self._votes()  # this part's votes alone
            for mine, old in zip((self._slots, self._h1, self._h2, self._qs, self._rows), earlier):
                mine[:0] = old  # earlier votes first, as in the parent
            part_ranked = rank_part(part)
            layout = _pack(shared, [*joined, *(part_ranked or ())])
            send.send(("ok", layout, self.counts, changed, part_ranked is not None))
        except Exception as e:  # reported to the parent, which votes this part itself
            send.send(("error", repr(e)))
        finally:
            send.close()

    def _heavy(self, ids, inputs, preds) -> tuple:
        """The numpy work of one block (reads the identifier tables only)."""
        n = ids.size
        inputs = _tokens(inputs, "inputs")
        r1 = r2 = None  # hashes of the inputs not compared with the test split's rows, in feeding order
        hashed = np.flatnonzero(~self._id_src[ids])
        if hashed.size:
            padded = np.zeros((hashed.size, _PADDED), dtype=np.uint8)
            padded[:, :SEQ_LEN] = inputs if hashed.size == n else inputs[hashed]
            a1, a2 = _hash(padded)
            r1, r2 = np.zeros(n, dtype=np.uint64), np.zeros(n, dtype=np.uint64)
            r1[hashed], r2[hashed] = a1, a2
        order = np.argsort(self._id_tinv[ids], kind="stable")  # a variant's rows keep their order
        canon, hh, ww = self._canonical(_tokens(preds[order], "preds"), ids[order])
        p1, p2 = _hash(canon)
        return order, inputs, r1, r2, hh, p1, p2

    def _match(self, ids, tokens, r1, r2, rows: np.ndarray, tests: np.ndarray) -> np.ndarray:
        """Whether fed input rows[i] is test input tests[i] of its variant: byte for byte against the split's row
        (prepare()), else through the hashes r1, r2 of the fed inputs."""
        hit = np.zeros(rows.size, dtype=bool)
        src = self._id_src[ids[rows]]
        if r1 is not None and not src.all():
            h = np.flatnonzero(~src)
            i, t = rows[h], tests[h]
            hit[h] = (self._id_in1[ids[i], t] == r1[i]) & (self._id_in2[ids[i], t] == r2[i])
        sel = np.flatnonzero(src)
        ref_rows = self._id_row[ids[rows[sel]], tests[sel]]
        sel, ref_rows = sel[ref_rows >= 0], ref_rows[ref_rows >= 0]
        if sel.size:
            ref = np.ascontiguousarray(_take_rows(self._src, ref_rows), dtype=np.uint8)
            fed = np.ascontiguousarray(_take_rows(tokens, rows[sel]))
            hit[sel] = (ref.view(np.uint32) == fed.view(np.uint32)).all(axis=1)  # 4 cells at a time
        return hit

    def _merge(self, ids, inputs, q, positions, numbers, heavy) -> None:
        """Slots, counts and the votes of one block (in feeding order); `numbers`: the rows' numbers."""
        order, tokens, r1, r2, hh, p1, p2 = heavy
        if ids.size == 0:
            return
        # inputs -> slots (in feeding order): the raw canvas against the expected canvases of the variant's test
        # inputs, byte for byte for the test split's rows (prepare), else through their hashes
        # First each row's likely test input: its rank among the consecutive rows of its identifier, modulo the
        # test count (fed in dataset order, the k-th row of a variant is its k-th test input; the split's rows
        # then come as one slice). Then every other test input for the rows that missed, and for all rows of
        # tasks with identical test inputs (which count every match).
        n = ids.size
        ntests = self._task_ntests[self._id_task[ids]]
        starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
        guess = (np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n]))) % ntests
        every = np.arange(n)
        hit = self._match(ids, tokens, r1, r2, every, guess)
        nmatch = hit.astype(np.int64)
        found = np.where(hit, guess, self._max_tests)  # the first matching test input
        rest = np.flatnonzero(~hit | self._task_dup[self._id_task[ids]])
        for j in range(self._max_tests if rest.size else 0):
            rows = rest[(ntests[rest] > j) & (guess[rest] != j)]
            if rows.size:
                more = rows[self._match(ids, tokens, r1, r2, rows, np.full(rows.size, j))]
                nmatch[more] += 1
                found[more] = np.minimum(found[more], j)
        ids, q, nmatch, found = ids[order], q[order], nmatch[order], found[order]
        task = self._id_task[ids]
        positions = None if positions is None else positions[order]
        slots = self._task_first[task] + found
        slots[nmatch != 1] = -1
        odd = np.flatnonzero(nmatch != 1)
        if odd.size:  # no exact canvas match (crop, then compare) or identical test inputs
            c_in, h_in, _ = self._canonical(tokens[order[odd]], ids[odd])
            c1, c2 = _hash(c_in)
            for i, r in enumerate(odd.tolist()):
                cand = self._input_slots.get((int(task[r]), int(c1[i]), int(c2[i]))) if h_in[i] else None
                if cand is None:
                    continue
                slot = None
                if len(cand) > 1 and positions is not None:
                    slot = next((s for s in cand if self.slot_test[s] == int(positions[r])), None)
                if slot is None:
                    k = (int(ids[r]), cand[0])
                    seen = self._occurrence.get(k, 0)
                    self._occurrence[k] = seen + 1
                    slot = cand[seen % len(cand)]
                slots[r] = slot
        nonempty = hh > 0
        self.counts["empty_crops"] += int((~nonempty).sum())
        matched = slots >= 0
        self.counts["unmatched_predictions"] += int((nonempty & ~matched).sum())
        ok = nonempty & matched
        numbers = numbers[order]
        if not ok.all():
            kept = np.flatnonzero(ok)
            slots, q, p1, p2, numbers = slots[kept], q[kept], p1[kept], p2[kept], numbers[kept]
        self.counts["predictions"] += int(slots.size)
        self._slots.append(slots)
        self._h1.append(p1)
        self._h2.append(p2)
        self._qs.append(1.0 / (1.0 + np.exp(-q)))
        self._rows.append(numbers)

    def absorb(self, other: "Voter") -> None:
        """Add every prediction another Voter (same dataset) collected: pooling over checkpoints or ranks."""
        if other.tasks != self.tasks or other.slot_test != self.slot_test:
            raise ValueError("Voter.absorb: the other voter was built from different test puzzles")
        self._flush()
        other._flush()
        offset = self._held_rows
        self._slots += [a.copy() for a in other._slots]
        self._h1 += [a.copy() for a in other._h1]
        self._h2 += [a.copy() for a in other._h2]
        self._qs += [a.copy() for a in other._qs]
        self._rows += [a + offset for a in other._rows]
        self._held += [(first + offset, ids.copy(), preds.copy()) for first, ids, preds in other._held]
        for _, ids, _ in other._held:  # their identifiers, for rebuilding their grids here
            self._parse(ids, expect=False)
        for k, v in other.counts.items():
            self.counts[k] += v

    def _grids(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(canonical canvases [m, 904], heights, widths) of the predictions in these held rows, rebuilt."""
        if not rows.size:
            return np.zeros((0, _PADDED), np.uint8), np.zeros(0, np.int64), np.zeros(0, np.int64)
        by_row = np.argsort(rows, kind="stable")
        firsts = np.array([first for first, _, _ in self._held], dtype=np.int64)
        bounds = np.searchsorted(rows[by_row], np.r_[firsts, self._held_rows])  # each held entry's rows: a range
        ids = np.empty(rows.size, dtype=np.int64)
        preds = np.empty((rows.size, SEQ_LEN), dtype=np.uint8)
        for e in np.flatnonzero(bounds[1:] > bounds[:-1]).tolist():
            at = by_row[bounds[e]:bounds[e + 1]]
            first, held_ids, held_preds = self._held[e]
            ids[at], preds[at] = held_ids[rows[at] - first], held_preds[rows[at] - first]
        order = np.argsort(self._id_tinv[ids], kind="stable")
        canon = np.empty((rows.size, _PADDED), dtype=np.uint8)
        h, w = np.empty(rows.size, dtype=np.int64), np.empty(rows.size, dtype=np.int64)
        for a in range(0, rows.size, CHUNK):
            at = order[a:a + CHUNK]
            canon[at], h[at], w[at] = self._canonical(preds[at], ids[at])
        return canon, h, w

    def _votes(self, tasks: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
        """The votes as arrays (slots, hashes, sigmoid(q), row numbers); only those of `tasks` (a mask) if given."""
        empty_i, empty_u = np.zeros(0, np.int64), np.zeros(0, np.uint64)
        votes = [np.concatenate(x) if x else e for x, e in ((self._slots, empty_i), (self._h1, empty_u),
                                                            (self._h2, empty_u), (self._qs, np.zeros(0)),
                                                            (self._rows, empty_i))]
        if tasks is not None:
            mine = tasks[self._slot_task[votes[0]]]
            if not mine.all():
                votes = [v[mine] for v in votes]
        return tuple(votes)

    def _rank(self, slots, h1, h2, qs, vote_rows) -> Ranked:
        """Candidates of these votes, ranked in each slot, with the grids of those shown: sorted by slot then rank;
        the grids (canonical canvases and sizes) are rebuilt for the first keep_votes of each slot and tied ones.
        """
        empty_i = np.zeros(0, np.int64)
        # candidates: distinct (slot, grid); q summed in ascending order so that feeding order never matters.
        # Sorted by q, then (stable) by one 64-bit key of (slot, grid); were two candidates to share a key, the
        # full four-key sort is used instead.
        by_q = np.argsort(qs)  # equal q are equal values: their order changes no sum
        key = h1 + slots.astype(np.uint64) * _SLOT_MIX
        order = by_q[np.argsort(key[by_q], kind="stable")]
        s_o, a_o, b_o, k_o = slots[order], h1[order], h2[order], key[order]
        change = np.r_[True, (s_o[1:] != s_o[:-1]) | (a_o[1:] != a_o[:-1]) | (b_o[1:] != b_o[:-1])]
        if not np.array_equal(change[1:], k_o[1:] != k_o[:-1]):
            order = np.lexsort((qs, h2, h1, slots))
            s_o, a_o, b_o = slots[order], h1[order], h2[order]
            change = np.r_[True, (s_o[1:] != s_o[:-1]) | (a_o[1:] != a_o[:-1]) | (b_o[1:] != b_o[:-1])]
        starts = np.flatnonzero(change) if slots.size else empty_i
        counts = np.diff(np.r_[starts, slots.size])
        sums = np.add.reduceat(qs[order], starts) if slots.size else np.zeros(0)
        means = sums / np.maximum(counts, 1)
        c_slot, c_h1, c_h2 = s_o[starts], a_o[starts], b_o[starts]
        c_row = vote_rows[order[starts]]  # a row of each candidate: its grid is rebuilt from there when needed
        # order inside a slot: count desc, mean desc, then the grid (height, width, cells) ascending
        rank = np.lexsort((-means, -counts, c_slot))
        c_slot, c_h1, c_h2, counts, means = c_slot[rank], c_h1[rank], c_h2[rank], counts[rank], means[rank]
        c_row = c_row[rank]
        tie = np.r_[False, (c_slot[1:] == c_slot[:-1]) & (counts[1:] == counts[:-1]) & (means[1:] == means[:-1])]
        tied = np.flatnonzero(tie | np.r_[tie[1:], False])
        first = np.r_[0, np.flatnonzero(c_slot[1:] != c_slot[:-1]) + 1] if c_slot.size else empty_i
        place = np.arange(c_slot.size) - np.repeat(first, np.diff(np.r_[first, c_slot.size]))  # rank in its slot
        shown = np.flatnonzero((place < self.keep_votes) | np.isin(np.arange(c_slot.size), tied))
        canvases, heights, widths = self._grids(c_row[shown])
        grid_of = np.full(c_slot.size, -1, dtype=np.int64)  # candidate -> its row in canvases
        grid_of[shown] = np.arange(shown.size)
        if tied.size:
            keys = np.zeros((tied.size, 2 + _PADDED), dtype=np.uint8)
            g = grid_of[tied]
            keys[:, 0], keys[:, 1], keys[:, 2:] = heights[g], widths[g], canvases[g]
            grid_rank = np.zeros(c_slot.size, dtype=np.int64)
            grid_rank[tied] = np.argsort(np.argsort(keys.view(np.dtype((np.void, keys.shape[1]))).ravel(),
                                                    kind="stable"), kind="stable")
            rank = np.lexsort((grid_rank, -means, -counts, c_slot))
            c_slot, c_h1, c_h2, counts, means = c_slot[rank], c_h1[rank], c_h2[rank], counts[rank], means[rank]
            grid_of = grid_of[rank]
        return Ranked(c_slot, c_h1, c_h2, counts, means, grid_of, canvases, heights, widths)

    def result(self) -> VoteResult:
        ranked = self._flush(rank=True)  # with a helper process: each part's candidates, ranked where voted
        if ranked is None:
            ranked = [self._rank(*self._votes())]
        offsets = np.cumsum([0] + [len(r.canvases) for r in ranked])  # parts cover ascending task ranges
        c_slot, c_h1, c_h2, counts, means, _, canvases, heights, widths = (np.concatenate(x) for x in zip(*ranked))
        grid_of = np.concatenate([np.where(r.grid_of >= 0, r.grid_of + off, -1) for r, off in zip(ranked, offsets)])
        n_slots = len(self.slot_task)
        bounds = np.searchsorted(c_slot, np.arange(n_slots + 1))
        # where each known truth ranks in its slot
        truth_rank = np.full(n_slots, -1, dtype=np.int64)
        t1 = np.array([k[0] if k else 0 for k in self._truth_key] or [0], dtype=np.uint64)
        t2 = np.array([k[1] if k else 0 for k in self._truth_key] or [0], dtype=np.uint64)
        if c_slot.size:
            hit = np.flatnonzero((c_h1 == t1[c_slot]) & (c_h2 == t2[c_slot]))
            hit = hit[[self._truth_key[s] is not None for s in c_slot[hit].tolist()]] if hit.size else hit
            truth_rank[c_slot[hit]] = hit - bounds[c_slot[hit]]

        submission, votes, passed, fallback, ncand = {}, {}, {}, {}, {}
        bounds_l, truth_l = bounds.tolist(), truth_rank.tolist()
        counts_l, means_l, grid_l = counts.tolist(), means.tolist(), grid_of.tolist()
        heights_l, widths_l = heights.tolist(), widths.tolist()
        totals = [0.0] * len(self.pass_ks)
        scored = no_pred = 0
        for t, name in enumerate(self.tasks):
            entries, task_votes, task_pass, task_fb, task_n = [], [], [], [], []
            correct = [0] * len(self.pass_ks)
            known = 0
            for s in self.task_slots[t]:
                a, b = bounds_l[s], bounds_l[s + 1]
                truth_known = self._truth_key[s] is not None
                cands = []
                for c in range(a, min(b, a + self.keep_votes)):
                    g = grid_l[c]
                    cands.append(Candidate(_grid_of(canvases[g], heights_l[g], widths_l[g]), counts_l[c], means_l[c],
                                           (c - a == truth_l[s]) if truth_known else None))
                task_votes.append(cands)
                task_n.append(b - a)
                if cands:
                    attempts = [c.grid for c in cands[: self.submission_k]]
                else:
                    attempts = [self.slot_input[s]]
                    no_pred += 1
                task_fb.append(not cands)
                while len(attempts) < self.submission_k:
                    attempts.append(attempts[0])
                entries.append({f"attempt_{i + 1}": g.tolist() for i, g in enumerate(attempts)})
                oks = {}
                if truth_known:
                    known += 1
                    r = truth_l[s]
                    for i, k in enumerate(self.pass_ks):
                        ok = 0 <= r < k
                        correct[i] += ok
                        oks[k] = ok
                task_pass.append(oks)
            if known:
                scored += 1
                for i in range(len(self.pass_ks)):
                    totals[i] += correct[i] / known
            submission[name], votes[name], passed[name] = entries, task_votes, task_pass
            fallback[name], ncand[name] = task_fb, task_n
        p = self.prefix
        metrics: dict[str, float] = {f"{p}/pass@{k}": (totals[i] / scored if scored else 0.0)
                                     for i, k in enumerate(self.pass_ks)}
        metrics.update({
            f"{p}/tasks": len(self.tasks),
            f"{p}/tasks_scored": scored,
            f"{p}/test_inputs": n_slots,
            f"{p}/test_inputs_without_predictions": no_pred,
            f"{p}/candidates": int(c_slot.size),
        })
        metrics.update({f"{p}/{k}": v for k, v in self.counts.items()})
        return VoteResult(metrics, submission, votes, passed, fallback, p, ncand)


CHUNK = 768  # rows processed at once: keeps the temporaries in cache (larger blocks measured slower)
# processes started by fork for Voter(workers > 1): they inherit the kept rows without copying (POSIX only;
# elsewhere workers > 1 votes in this process)
_FORK = multiprocessing.get_context("fork") if "fork" in multiprocessing.get_all_start_methods() else None


def _take_rows(arr: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """arr[rows] (rows non-empty), as a slice (no copy) where the rows are consecutive."""
    a, m = int(rows[0]), rows.size
    if rows[-1] - a == m - 1 and (np.diff(rows) == 1).all():
        return arr[a:a + m]
    return arr[rows]


def _pack(shared: mmap.mmap, arrays: list[np.ndarray]) -> list[tuple[str, tuple[int, ...], int]]:
    """Copy arrays one after the other (8-byte aligned) into a shared mapping; their (dtype, shape, offset)."""
    layout, at = [], 0
    for a in arrays:
        a = np.ascontiguousarray(a)
        if at + a.nbytes > len(shared):
            raise ValueError(f"{at + a.nbytes} bytes do not fit the shared mapping of {len(shared)}")
        if a.nbytes:
            np.frombuffer(shared, dtype=np.uint8, count=a.nbytes, offset=at)[:] = a.reshape(-1).view(np.uint8)
        layout.append((a.dtype.str, a.shape, at))
        at += -(-a.nbytes // 8) * 8
    return layout


def _unpack(shared: mmap.mmap, layout) -> list[np.ndarray]:
    """The arrays _pack wrote, as views of the mapping."""
    return [np.frombuffer(shared, dtype=np.dtype(d), count=int(np.prod(shape)), offset=at).reshape(shape)
            if int(np.prod(shape)) else np.zeros(shape, dtype=np.dtype(d)) for d, shape, at in layout]


def _owned(arr: np.ndarray, what: str, copy: bool = True) -> np.ndarray:
    """_tokens, as an array no caller changes (add() may keep it until result()): a copy unless `copy` is False
    (the caller hands it over) or the conversion already made one."""
    out = _tokens(arr, what)
    return out.copy() if copy and np.may_share_memory(out, arr) else out


def _tokens(arr: np.ndarray, what: str) -> np.ndarray:
    if arr.dtype != np.uint8:
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise ValueError(f"Voter.add: {what} tokens must lie in 0..11")
        arr = arr.astype(np.uint8)
    return np.ascontiguousarray(arr)


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


def _usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trm vote", description="Vote over saved outputs.npz files.")
    parser.add_argument("--outputs", action="append", required=True, help="outputs.npz (repeat to merge)")
    parser.add_argument("--data", required=True, help="dataset folder or s3:// URI")
    parser.add_argument("--output-dir", required=True, help="local folder or s3:// URI")
    parser.add_argument("--pooled", action="store_true",
                        help="the files are evaluations of different checkpoints: name metrics ARC_pooled/*")
    parser.add_argument("--workers", type=int, default=min(2, _usable_cores()),
                        help="processes that vote (default: 2 where 2 cores are usable); never changes the output")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    voter = Voter.from_dataset(args.data, prefix="ARC_pooled" if args.pooled else "ARC", workers=args.workers)
    test_puzzles = voter.test_puzzles
    for path in args.outputs:
        out = load_outputs(localize_path(path))
        voter.add(out["puzzle_identifiers"], out["inputs"], out["preds"], out["q_halt_logits"], copy=False)  # ours
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
