"""Train and test batches from one or more built datasets (ours or the reference's), memory-mapped.

    from trm.data.loader import load_metadata, TrainLoader, TestLoader, Position
    meta = load_metadata(["data/arc2"], "train")
    train = TrainLoader(["data/arc2"], global_batch_size=768, rank=0, world_size=4, seed=0, epochs_per_iter=10000)
    for position, batch in train.iterate(start=Position(0, 0)):   # position: where the NEXT batch starts
        batch["inputs"], batch["labels"], batch["puzzle_identifiers"]  # int32 [192, 900], [192, 900], [192]
    state = train.state_dict(); position = TrainLoader.position_from_state(state)     # exact resume
    for set_name, batch, n_valid in TestLoader(["data/arc2"], 768, rank=0, world_size=4): ...
    for position, batch in Prefetcher(train.iterate(), depth=2, device="cuda"): ...   # read ahead (trainer: prefetch_batches)

Train epoch e (its draws depend only on seed and e): every group once in random order; from each group one random
variant (puzzle); that puzzle's examples, at most max_examples_per_puzzle of them, in random order. As the
reference, `epochs_per_iter` epochs (the trainer's eval_interval) form one iteration whose examples are packed, in
order, into global batches: when a puzzle does not fit, the batch takes as many of its examples as fit and the
rest of that puzzle is skipped; a batch may span epochs; only the iteration's last incomplete batch is dropped. So
a set smaller than one batch still trains (3 examples per epoch at batch 8: a batch holds ~3 epochs). Rank r of W
takes rows [r*B/W, (r+1)*B/W) of each global batch. Labels equal to ignore_label_id (PAD) become -100. The
loader keeps only per-epoch counts of an iteration and builds a batch from the epochs it spans, so a position
(epoch starting the iteration, batch in it) resumes anywhere, also in the middle of an iteration. Optional grid
noise (the Trelis fork's grid_noise_prob/fraction) recolours cells of train inputs, deterministically per batch.

Several dataset paths: their groups form one pool for the train epoch, so a batch may mix datasets; the
test split is read path by path, set names "all", "all1", "all2", ... (the reference's names). Puzzle
identifiers are used as stored: build the datasets with disjoint `--puzzle-identifiers-start` ranges; two paths
whose identifiers.json give different names to one identifier are refused. num_puzzle_identifiers of the merged
metadata is the SUM over the paths, as the reference sizes its embedding table (TRM-SPEC section 4): every
stored identifier lies below its path's count, so below the sum, and a checkpoint trained on several paths has
a table of that size.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np
import torch

IGNORE_LABEL = -100
SET_NAME = "all"


class Position(NamedTuple):
    """A place in the infinite train stream: batch `step` of epoch `epoch`."""

    epoch: int
    step: int


@dataclass(frozen=True)
class DatasetMetadata:
    pad_id: int
    ignore_label_id: int | None
    blank_identifier_id: int
    vocab_size: int
    seq_len: int
    num_puzzle_identifiers: int
    total_groups: int
    mean_puzzle_examples: float
    total_puzzles: int
    sets: list

    @classmethod
    def from_dict(cls, data: dict, where: str) -> "DatasetMetadata":
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in data]
        unknown = [k for k in data if k not in names]
        if missing:
            raise ValueError(f"{where}: field(s) {missing} missing")
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {unknown}")
        return cls(**{n: data[n] for n in names})


def _local(path: str) -> Path:
    if str(path).startswith("s3://"):
        from trm.storage import localize

        return Path(localize(str(path)))
    return Path(path)


def _read_metadata(root: Path, split: str) -> DatasetMetadata:
    path = root / split / "dataset.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (is {root} a built dataset with a {split!r} split?)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: malformed JSON: {exc}") from exc
    return DatasetMetadata.from_dict(data, str(path))


def _merge(metas: list[DatasetMetadata], where: list[str]) -> DatasetMetadata:
    first = metas[0]
    for meta, path in zip(metas[1:], where[1:]):
        for name in ("seq_len", "vocab_size", "pad_id", "ignore_label_id", "blank_identifier_id", "sets"):
            if getattr(meta, name) != getattr(first, name):
                raise ValueError(f"{path}: {name} is {getattr(meta, name)!r} but {where[0]} has {getattr(first, name)!r}")
    puzzles = sum(m.total_puzzles for m in metas)
    mean = sum(m.mean_puzzle_examples * m.total_puzzles for m in metas) / puzzles if puzzles else 0.0
    return DatasetMetadata(
        pad_id=first.pad_id, ignore_label_id=first.ignore_label_id, blank_identifier_id=first.blank_identifier_id,
        vocab_size=first.vocab_size, seq_len=first.seq_len,
        num_puzzle_identifiers=sum(m.num_puzzle_identifiers for m in metas),
        total_groups=sum(m.total_groups for m in metas), mean_puzzle_examples=mean, total_puzzles=puzzles,
        sets=list(first.sets),
    )


def _paths(paths) -> list[str]:
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [str(p) for p in paths]
    if not paths:
        raise ValueError("no dataset paths given")
    return paths


def load_metadata(paths, split: str) -> DatasetMetadata:
    """The split's dataset.json merged over paths (counts summed; num_puzzle_identifiers too, as the reference
    sizes its embedding table: every identifier a path stores is below that path's count, so below the sum)."""
    paths = _paths(paths)
    roots = [_local(p) for p in paths]
    return _merge([_read_metadata(r, split) for r in roots], paths)


def load_identifiers(paths) -> list[str]:
    """identifiers.json merged over paths; ValueError when two paths name one identifier differently."""
    merged: list[str] = []
    owner: list[str] = []
    for path in _paths(paths):
        file = _local(path) / "identifiers.json"
        names = json.loads(file.read_text())
        for i, name in enumerate(names):
            if i >= len(merged):
                merged.append(name)
                owner.append(path)
            elif name != "<blank>" and merged[i] not in ("<blank>", name):
                raise ValueError(
                    f"{file}: identifier {i} is {name!r} but {owner[i]} has {merged[i]!r}: build the datasets with "
                    "disjoint --puzzle-identifiers-start ranges"
                )
            elif merged[i] == "<blank>":
                merged[i], owner[i] = name, path
    return merged


class _Split:
    """One path's split: memory-mapped inputs/labels, index arrays in memory, checked for consistency."""

    def __init__(self, root: Path, split: str, set_name: str):
        folder = root / split
        self.where = str(folder)
        self.meta = _read_metadata(root, split)

        def load(name, mmap):
            path = folder / f"{set_name}__{name}.npy"
            if not path.is_file():
                raise FileNotFoundError(f"{path}: no such file")
            return np.load(path, mmap_mode="r" if mmap else None)

        self.inputs, self.labels = load("inputs", True), load("labels", True)
        self.identifiers = load("puzzle_identifiers", False).astype(np.int64)
        self.puzzle_indices = load("puzzle_indices", False).astype(np.int64)
        self.group_indices = load("group_indices", False).astype(np.int64)
        n, p, g = self.inputs.shape[0], self.identifiers.shape[0], self.group_indices.shape[0] - 1
        seq = self.meta.seq_len
        if self.inputs.shape != (n, seq) or self.labels.shape != (n, seq):
            raise ValueError(f"{self.where}: inputs/labels shapes {self.inputs.shape}, {self.labels.shape}, want [N, {seq}]")
        if self.puzzle_indices.shape != (p + 1,) or self.puzzle_indices[0] != 0 or self.puzzle_indices[-1] != n:
            raise ValueError(f"{self.where}: puzzle_indices must be [P+1] from 0 to N={n}")
        if g < 0 or self.group_indices[0] != 0 or self.group_indices[-1] != p:
            raise ValueError(f"{self.where}: group_indices must be [G+1] from 0 to P={p}")
        if np.any(np.diff(self.puzzle_indices) < 0) or np.any(np.diff(self.group_indices) < 0):
            raise ValueError(f"{self.where}: puzzle_indices/group_indices must be non-decreasing")

    @property
    def num_examples(self) -> int:
        return int(self.inputs.shape[0])


def augmentation_rows(puzzle_indices: np.ndarray, group_indices: np.ndarray,
                      max_augmentations: int | None) -> np.ndarray:
    """Example rows in file order: all (None), or those of the first 1 + max_augmentations puzzles of each group
    (the original comes first), as the Trelis fork's eval_max_augmentations."""
    puzzle_indices, group_indices = np.asarray(puzzle_indices, np.int64), np.asarray(group_indices, np.int64)
    if max_augmentations is None:
        return np.arange(puzzle_indices[-1])
    if isinstance(max_augmentations, bool) or max_augmentations < 0:
        raise ValueError(f"max_augmentations must be an integer >= 0 or None, got {max_augmentations!r}")
    puzzles = puzzle_indices.size - 1
    rank_in_group = np.arange(puzzles) - np.repeat(group_indices[:-1], np.diff(group_indices))
    return np.flatnonzero(np.repeat(rank_in_group <= max_augmentations, np.diff(puzzle_indices)))


def example_rows(puzzle_indices: np.ndarray, group_indices: np.ndarray, max_augmentations: int | None = None,
                 max_examples_per_puzzle: int | None = None) -> np.ndarray:
    """augmentation_rows, then at most the first `max_examples_per_puzzle` examples of each puzzle (file order):
    the Trelis fork's max_eval_examples_per_puzzle."""
    rows = augmentation_rows(puzzle_indices, group_indices, max_augmentations)
    if max_examples_per_puzzle is None:
        return rows
    if isinstance(max_examples_per_puzzle, bool) or max_examples_per_puzzle < 1:
        raise ValueError(f"max_examples_per_puzzle must be an integer >= 1 or None, got {max_examples_per_puzzle!r}")
    puzzle_indices = np.asarray(puzzle_indices, np.int64)
    puzzle = np.searchsorted(puzzle_indices, rows, side="right") - 1
    return rows[rows - puzzle_indices[puzzle] < max_examples_per_puzzle]


def _batch(inputs: np.ndarray, labels: np.ndarray, identifiers: np.ndarray, ignore: int | None) -> dict:
    labels = labels.astype(np.int32)
    if ignore is not None:
        labels[labels == ignore] = IGNORE_LABEL
    return {
        "inputs": torch.from_numpy(inputs.astype(np.int32)),
        "labels": torch.from_numpy(labels),
        "puzzle_identifiers": torch.from_numpy(identifiers.astype(np.int32)),
    }


def _check_batch(global_batch_size: int, rank: int, world_size: int) -> int:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} must be in [0, world_size={world_size})")
    if global_batch_size < 1 or global_batch_size % world_size:
        raise ValueError(f"global_batch_size ({global_batch_size}) must be a positive multiple of world_size ({world_size})")
    return global_batch_size // world_size


def _gather(parts: list[_Split], part: np.ndarray, row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows from the memory maps, read in file order (then put back in batch order)."""
    seq = parts[0].meta.seq_len
    inputs = np.empty((row.shape[0], seq), dtype=np.uint8)
    labels = np.empty((row.shape[0], seq), dtype=np.uint8)
    for p in np.unique(part).tolist():
        sel = np.flatnonzero(part == p)
        order = np.argsort(row[sel], kind="stable")
        rows = row[sel][order]
        inputs[sel[order]] = parts[p].inputs[rows]
        labels[sel[order]] = parts[p].labels[rows]
    return inputs, labels


class _Epoch(NamedTuple):
    """One epoch's draws: the chosen puzzle of every group (in visiting order) and its examples' random order."""

    part: np.ndarray  # [n] dataset path of each visited puzzle
    start: np.ndarray  # [n] its first example row
    size: np.ndarray  # [n] its example count
    ident: np.ndarray  # [n] its puzzle identifier
    allowed: np.ndarray  # [n] examples it may give (size, capped by max_examples_per_puzzle)
    within: np.ndarray | None  # [sum(size)] example offsets, puzzle-major, random inside a puzzle


def pack(allowed: np.ndarray, fill: int, batch_size: int) -> tuple[np.ndarray, int]:
    """Examples taken from each puzzle when they are packed, in order, into batches of `batch_size` rows that
    already hold `fill` rows: a puzzle that does not fit fills the batch and the rest of it is skipped (as the
    reference does). Returns (taken per puzzle, rows in the last batch afterwards, 0..batch_size-1)."""
    takes = np.asarray(allowed, dtype=np.int64).copy()
    cum = np.concatenate(([0], np.cumsum(takes)))
    n, pos = takes.size, 0
    while pos < n:
        target = cum[pos] + (batch_size - fill)  # the cumulative count at which the open batch is full
        if cum[n] < target:  # the rest fits
            fill += int(cum[n] - cum[pos])
            break
        q = int(np.searchsorted(cum, target, side="left")) - 1  # cum[q] < target <= cum[q + 1]
        takes[q] = target - cum[q]
        fill, pos = 0, q + 1
    return takes, fill


class TrainLoader:
    """The train stream of spec section 5, deterministic for (seed, epoch), sliced for `rank` of `world_size`.

    `epochs_per_iter` epochs form one iteration (the trainer passes eval_interval, as the reference): their
    examples are packed as one stream, so a batch may span epochs and only the iteration's last incomplete batch
    is dropped. Positions count batches inside an iteration: Position(epoch, step) is batch `step` of the
    iteration that starts at epoch `epoch` (a multiple of epochs_per_iter).
    """

    def __init__(self, paths, global_batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 max_examples_per_puzzle: int | None = None, split: str = "train", epochs_per_iter: int = 1,
                 grid_noise_prob: float = 0.0, grid_noise_fraction: float = 0.0):
        self.paths = _paths(paths)
        self.local_batch_size = _check_batch(global_batch_size, rank, world_size)
        if max_examples_per_puzzle is not None and max_examples_per_puzzle < 1:
            raise ValueError(f"max_examples_per_puzzle must be >= 1 or None, got {max_examples_per_puzzle}")
        if isinstance(epochs_per_iter, bool) or not isinstance(epochs_per_iter, int) or epochs_per_iter < 1:
            raise ValueError(f"epochs_per_iter must be an integer >= 1, got {epochs_per_iter!r}")
        for name, value in (("grid_noise_prob", grid_noise_prob), ("grid_noise_fraction", grid_noise_fraction)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {value}")
        self.global_batch_size, self.rank, self.world_size = global_batch_size, rank, world_size
        self.seed, self.max_examples_per_puzzle, self.split = int(seed), max_examples_per_puzzle, split
        self.epochs_per_iter = epochs_per_iter
        self.noise_prob, self.noise_fraction = float(grid_noise_prob), float(grid_noise_fraction)
        roots = [_local(p) for p in self.paths]
        self.parts = [_Split(r, split, SET_NAME) for r in roots]
        self.metadata = _merge([p.meta for p in self.parts], self.paths)
        if len(self.paths) > 1:
            load_identifiers(self.paths)  # refuses clashing identifier ranges
        # One pool of groups over all paths.
        self._group_part = np.concatenate([np.full(p.group_indices.shape[0] - 1, i) for i, p in enumerate(self.parts)])
        self._group_lo = np.concatenate([p.group_indices[:-1] for p in self.parts])
        self._group_hi = np.concatenate([p.group_indices[1:] for p in self.parts])
        self._sizes = [np.diff(p.puzzle_indices) for p in self.parts]
        self._epochs: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}  # (epoch, fill) -> kept rows
        self._bounds: tuple[int, np.ndarray] | None = None  # (iteration start, kept rows before each epoch)
        self.position = Position(0, 0)
        if self.metadata.total_groups == 0 or self.steps_per_epoch(0) == 0:
            raise ValueError(
                f"{self.paths}: an iteration ({epochs_per_iter} epoch(s)) holds fewer examples than "
                f"global_batch_size ({global_batch_size}); no full batch can be made"
            )

    # -- the draws ------------------------------------------------------------------------------------------
    def _draw(self, epoch: int, order_examples: bool) -> _Epoch:
        """Epoch `epoch`'s random choices (its own generator: they depend only on seed and epoch)."""
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, epoch]))
        order = rng.permutation(self._group_part.shape[0])
        part = self._group_part[order]
        puzzle = rng.integers(self._group_lo[order], self._group_hi[order])  # one variant per group
        start = np.empty(part.shape[0], dtype=np.int64)
        size = np.empty(part.shape[0], dtype=np.int64)
        ident = np.empty(part.shape[0], dtype=np.int64)
        for i, p in enumerate(self.parts):
            sel = np.flatnonzero(part == i) if len(self.parts) > 1 else slice(None)
            start[sel] = p.puzzle_indices[puzzle[sel]]
            size[sel] = self._sizes[i][puzzle[sel]]
            ident[sel] = p.identifiers[puzzle[sel]]
        allowed = size if self.max_examples_per_puzzle is None else np.minimum(size, self.max_examples_per_puzzle)
        within = None
        if order_examples:  # each puzzle's examples in random order: sort random keys inside each puzzle
            owner = np.repeat(np.arange(size.shape[0]), size)
            within = np.argsort(owner * 2.0 + rng.random(int(size.sum())), kind="stable")
        return _Epoch(part, start, size, ident, allowed, within)

    def _kept(self, epoch: int, fill: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(part, row, identifier) of the examples epoch `epoch` adds to the stream when it starts with `fill`
        rows in the open batch, in stream order."""
        key = (epoch, fill)
        if key in self._epochs:
            return self._epochs[key]
        d = self._draw(epoch, order_examples=True)
        takes, _ = pack(d.allowed, fill, self.global_batch_size)
        total = int(d.size.sum())
        first = np.repeat(np.cumsum(d.size) - d.size, d.size)
        offset_in_puzzle = d.within - first
        keep = (np.arange(total) - first) < np.repeat(takes, d.size)
        out = (np.repeat(d.part, d.size)[keep], (np.repeat(d.start, d.size) + offset_in_puzzle)[keep],
               np.repeat(d.ident, d.size)[keep])
        if len(self._epochs) >= 8:
            self._epochs.pop(next(iter(self._epochs)))
        self._epochs[key] = out
        return out

    def _iteration(self, epoch: int) -> np.ndarray:
        """Stream offsets of the iteration starting at `epoch`: [K_0=0, K_1, ..., K_E], K_j = examples kept
        before its j-th epoch."""
        if self._bounds is not None and self._bounds[0] == epoch:
            return self._bounds[1]
        bounds = np.zeros(self.epochs_per_iter + 1, dtype=np.int64)
        fill = 0
        for j in range(self.epochs_per_iter):
            takes, fill = pack(self._draw(epoch + j, order_examples=False).allowed, fill, self.global_batch_size)
            bounds[j + 1] = bounds[j] + int(takes.sum())
        self._bounds = (epoch, bounds)
        return bounds

    def _check_start(self, epoch: int) -> None:
        if epoch < 0 or epoch % self.epochs_per_iter:
            raise ValueError(f"epoch {epoch} does not start an iteration of {self.epochs_per_iter} epochs")

    def _epoch_of(self, first: int, step: int) -> int:
        """The epoch in which batch `step` of the iteration starting at epoch `first` begins."""
        bounds = self._iteration(first)
        j = int(np.searchsorted(bounds, step * self.global_batch_size, side="right")) - 1
        return first + min(j, self.epochs_per_iter - 1)

    def _locate(self, position: Position) -> tuple[int, int]:
        """(first epoch of the iteration, batch in it) of a position; ValueError when the position does not name
        a batch of this stream (e.g. it was saved with another eval_interval)."""
        epoch, step = int(position.epoch), int(position.step)
        if epoch < 0 or step < 0:
            raise ValueError(f"bad position {position}")
        first = epoch - epoch % self.epochs_per_iter
        if step < self.steps_per_epoch(first) and self._epoch_of(first, step) != epoch:
            raise ValueError(f"position {tuple(position)}: batch {step} of the iteration starting at epoch {first} "
                             f"begins in epoch {self._epoch_of(first, step)}, not {epoch} (was the position saved "
                             f"with another eval_interval? this loader packs {self.epochs_per_iter} epoch(s) together)")
        return first, step

    def _plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(part, row, identifier) of every example of the full global batches of the iteration starting at
        `epoch`, in batch order (the whole iteration at once: for tests and small sets)."""
        self._check_start(epoch)
        bounds = self._iteration(epoch)
        B = self.global_batch_size
        pieces = [self._kept(epoch + j, int(bounds[j] % B)) for j in range(self.epochs_per_iter)]
        n = bounds[-1] // B * B
        return tuple(np.concatenate([p[k] for p in pieces])[:n] for k in range(3))

    def steps_per_epoch(self, epoch: int) -> int:
        """Global batches in the iteration that holds epoch `epoch` (one epoch when epochs_per_iter is 1)."""
        return int(self._iteration(epoch - epoch % self.epochs_per_iter)[-1] // self.global_batch_size)

    steps_per_iteration = steps_per_epoch

    def _global_rows(self, first: int, step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(part, row, identifier) of the whole global batch `step` of the iteration starting at `first`."""
        B = self.global_batch_size
        bounds = self._iteration(first)
        lo, hi = step * B, (step + 1) * B
        j = int(np.searchsorted(bounds, lo, side="right")) - 1
        pieces = []
        while j < self.epochs_per_iter and bounds[j] < hi:
            kept = self._kept(first + j, int(bounds[j] % B))
            a, b = max(lo - bounds[j], 0), min(hi - bounds[j], bounds[j + 1] - bounds[j])
            pieces.append(tuple(k[a:b] for k in kept))
            j += 1
        return tuple(np.concatenate([p[k] for p in pieces]) for k in range(3))

    def batch(self, position: Position) -> dict:
        """This rank's slice of the global batch at `position` (batch `step` of the iteration holding `epoch`)."""
        first, step = self._locate(position)
        return self._batch_at(first, step)

    def _batch_at(self, first: int, step: int) -> dict:
        if not 0 <= step < self.steps_per_epoch(first):
            raise ValueError(f"step {step} is outside the iteration starting at epoch {first}")
        parts, rows, idents = self._global_rows(first, step)
        lo = self.rank * self.local_batch_size
        hi = lo + self.local_batch_size
        inputs, labels = _gather(self.parts, parts[lo:hi], rows[lo:hi])
        if self.noise_prob > 0 and self.noise_fraction > 0:
            self._noise(inputs, first, step, lo)
        return _batch(inputs, labels, idents[lo:hi], self.metadata.ignore_label_id)

    def _noise(self, inputs: np.ndarray, first: int, step: int, first_row: int) -> None:
        """The Trelis fork's grid noise (train inputs only, labels untouched): each example with probability
        grid_noise_prob gets max(1, floor(grid_noise_fraction * n)) of the n cells of its most frequent colour
        (the smallest colour token among ties) recoloured with other colours drawn uniformly. The draws depend
        only on (seed, position, row of the global batch), so ranks and resumed runs see the same noise."""
        key = [self.seed, first, step, 0x6E6F6973]
        chosen = np.random.default_rng(key).random(self.global_batch_size) < self.noise_prob
        colours = np.arange(2, 12, dtype=inputs.dtype)  # colour tokens (0 = PAD, 1 = EOS)
        for r in np.flatnonzero(chosen[first_row:first_row + inputs.shape[0]]).tolist():
            grid = inputs[r]
            counts = np.bincount(grid[grid >= 2], minlength=12)
            if not counts.any():
                continue
            major = int(np.argmax(counts))
            cells = np.flatnonzero(grid == major)
            flips = min(cells.size, max(1, int(self.noise_fraction * cells.size)))
            rng = np.random.default_rng(key + [first_row + r])
            where = cells[rng.permutation(cells.size)[:flips]]
            others = colours[colours != major]
            grid[where] = others[rng.integers(0, others.size, flips)]

    def iterate(self, start: Position | None = None) -> Iterator[tuple[Position, dict]]:
        """Endless (position of the next batch, batch) pairs from `start` (default: where this loader stands).

        A position is (epoch in which the batch begins, batch index inside its iteration); a position at or past
        the end of an iteration means the next iteration's start."""
        first, step = self._locate(Position(*start) if start is not None else self.position)
        E = self.epochs_per_iter
        while True:
            steps = self.steps_per_epoch(first)
            if step >= steps:
                first, step = first + E, 0
                continue
            batch = self._batch_at(first, step)
            step += 1
            following = Position(self._epoch_of(first, step), step) if step < steps else Position(first + E, 0)
            self.position = following
            yield following, batch

    def state_dict(self) -> dict:
        return {"epoch": int(self.position.epoch), "step": int(self.position.step), "seed": self.seed,
                "global_batch_size": self.global_batch_size, "max_examples_per_puzzle": self.max_examples_per_puzzle,
                "epochs_per_iter": self.epochs_per_iter, "paths": list(self.paths)}

    def load_state_dict(self, state: dict) -> None:
        """Restore the position; ValueError when the stream it came from had another seed, batch size or
        iteration length."""
        for key in ("seed", "global_batch_size", "max_examples_per_puzzle", "epochs_per_iter"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(f"loader state has {key}={state[key]!r} but this loader has {getattr(self, key)!r}")
        position = self.position_from_state(state)
        self._locate(position)
        self.position = position

    @staticmethod
    def position_from_state(state: dict) -> Position:
        try:
            epoch, step = int(state["epoch"]), int(state["step"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"loader state needs integer 'epoch' and 'step', got {state!r}") from exc
        if epoch < 0 or step < 0:
            raise ValueError(f"loader state has a negative position: {state!r}")
        return Position(epoch, step)


class Prefetcher:
    """Batches read ahead of the training loop by a thread; on CUDA pinned and copied to the device on a side
    stream, so the copy overlaps the step before.

        batches = Prefetcher(loader.iterate(start), depth=2, device=torch.device("cuda", 0))
        for position, batch in batches: ...     # CUDA: batch tensors are on the device, ready on the current stream
        batches.close()                          # stops the thread (also when the loop ended early)

    The items are the iterator's, in its order, unchanged (on CPU the same tensors; on CUDA the same values on the
    device), so a run gives the same results with or without it. The wrapped loader runs up to `depth` batches
    ahead: its own `position` then runs ahead of the consumer (the trainer keeps the position of each item).
    An exception in the thread is raised in the consumer at the item where it happened.
    """

    _END = object()

    def __init__(self, items: Iterator[tuple], depth: int, device: torch.device | str = "cpu"):
        import queue
        import threading

        if depth < 1:
            raise ValueError(f"Prefetcher: depth must be >= 1, got {depth}")
        self.device = torch.device(device)
        self._cuda = self.device.type == "cuda"
        self._stream = torch.cuda.Stream(self.device) if self._cuda else None
        self._queue: "queue.Queue" = queue.Queue(maxsize=depth)
        self._full = queue.Full
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._fill, args=(items,), name="trm-prefetch", daemon=True)
        self._thread.start()

    def _fill(self, items: Iterator[tuple]) -> None:
        try:
            for position, batch in items:
                if self._stop.is_set():
                    return
                if not self._put((position, *self._to_device(batch))):
                    return
            self._put(self._END)
        except Exception as err:  # noqa: BLE001 - handed to the consumer, raised there
            self._put(err)

    def _to_device(self, batch: dict) -> tuple[dict, object]:
        """(batch, event): on CUDA the tensors are pinned and copied on the side stream; the event marks the end
        of the copy. On other devices the batch is passed through unchanged."""
        if not self._cuda:
            return batch, None
        with torch.cuda.device(self.device), torch.cuda.stream(self._stream):
            moved = {k: v.pin_memory().to(self.device, non_blocking=True) for k, v in batch.items()}
            event = torch.cuda.Event()
            event.record(self._stream)
        return moved, event

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except self._full:
                continue
        return False

    def __iter__(self) -> "Prefetcher":
        return self

    def __next__(self) -> tuple:
        if self._done:
            raise StopIteration
        item = self._queue.get()
        if item is self._END:
            self._done = True
            raise StopIteration
        if isinstance(item, Exception):
            self._done = True
            raise item
        position, batch, event = item
        if event is not None:  # the step's stream waits for the copy; the tensors are used on that stream
            current = torch.cuda.current_stream(self.device)
            current.wait_event(event)
            for tensor in batch.values():
                tensor.record_stream(current)
        return position, batch

    def close(self) -> None:
        """Stop the thread (it ends at its next item); idempotent."""
        self._stop.set()
        self._done = True
        self._thread.join(timeout=10)


class TestLoader:
    """Test examples in file order, global batches, this rank's slice; short batches padded.

    Yields (set_name, batch, n_valid) where n_valid counts the real rows of the GLOBAL batch (as the reference);
    padded rows have PAD inputs, -100 labels and puzzle identifier 0 (the blank).
    """

    __test__ = False  # not a pytest class

    def __init__(self, paths, global_batch_size: int, rank: int = 0, world_size: int = 1, split: str = "test",
                 max_augmentations: int | None = None, max_examples_per_puzzle: int | None = None):
        self.paths = _paths(paths)
        self.local_batch_size = _check_batch(global_batch_size, rank, world_size)
        self.global_batch_size, self.rank, self.world_size = global_batch_size, rank, world_size
        self.parts = [_Split(_local(p), split, SET_NAME) for p in self.paths]
        self.metadata = _merge([p.meta for p in self.parts], self.paths)
        self.set_names = [SET_NAME if i == 0 else f"{SET_NAME}{i}" for i in range(len(self.parts))]
        # identifier of every example, per part
        self._example_ids = [np.repeat(p.identifiers, np.diff(p.puzzle_indices)) for p in self.parts]
        # the examples evaluated, per part (all, or the original + first max_augmentations variants of each group,
        # and at most max_examples_per_puzzle examples of each puzzle)
        self._rows = [example_rows(p.puzzle_indices, p.group_indices, max_augmentations, max_examples_per_puzzle)
                      for p in self.parts]

    def __len__(self) -> int:
        B = self.global_batch_size
        return sum((rows.size + B - 1) // B for rows in self._rows)

    def __iter__(self) -> Iterator[tuple[str, dict, int]]:
        B, b = self.global_batch_size, self.local_batch_size
        meta = self.metadata
        for name, part, ids, rows in zip(self.set_names, self.parts, self._example_ids, self._rows):
            n = rows.size
            for start in range(0, n, B):
                end = min(n, start + B)
                lo = min(end, start + self.rank * b)
                hi = min(end, lo + b)
                inputs = np.full((b, meta.seq_len), meta.pad_id, dtype=np.uint8)
                labels = np.full((b, meta.seq_len), meta.pad_id, dtype=np.uint8)
                idents = np.full(b, meta.blank_identifier_id, dtype=np.int64)
                take = rows[lo:hi]
                inputs[: hi - lo] = part.inputs[take]
                labels[: hi - lo] = part.labels[take]
                idents[: hi - lo] = ids[take]
                batch = _batch(inputs, labels, idents, meta.ignore_label_id)
                batch["labels"][hi - lo:] = IGNORE_LABEL
                yield name, batch, end - start
