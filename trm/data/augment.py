"""Augmentation (dihedral x colour permutation), variant names, the 30x30 token layout, and variant planning.

    from trm.data.augment import augment, unaugment, variant_name, parse_variant_name, encode, decode
    g2 = augment(grid, tid=3, mapping=m)                # colours first, then the dihedral transform
    assert (unaugment(g2, 3, m) == grid).all()
    name = variant_name("007bbfb7", 3, m)               # "007bbfb7|||t3|||0712459368"
    tokens = encode(grid, offset=(2, 5))                # uint8 [900]: 0 PAD, 1 EOS, colour c -> c + 2
    grid_back = decode(tokens)                          # the colour cells' bounding box, minus 2

Variant planning (`plan_variants`) and rendering (`TaskLayout`) are vectorised with numpy per task; they draw
only from the generator they are given, so a task's variants depend on nothing but that generator's seed.
"""

from __future__ import annotations

import functools

import numpy as np

from trm.data.validate import MAX_GRID, Task

SEP = "|||"
SEQ_LEN = MAX_GRID * MAX_GRID
PAD, EOS, COLOUR0 = 0, 1, 2
VOCAB_SIZE = 12
NUM_TRANSFORMS = 8
INVERSE_TRANSFORM = (0, 3, 2, 1, 4, 5, 6, 7)
RETRIES_FACTOR = 5
IDENTITY = np.arange(10, dtype=np.uint8)


def dihedral(grid: np.ndarray, tid: int) -> np.ndarray:
    """Transform `tid`: 0 id, 1 rot90 (ccw), 2 rot180, 3 rot270, 4 lr-flip, 5 ud-flip, 6 transpose, 7 anti-transpose."""
    if tid == 0:
        return grid
    if tid == 1:
        return np.rot90(grid, 1)
    if tid == 2:
        return np.rot90(grid, 2)
    if tid == 3:
        return np.rot90(grid, 3)
    if tid == 4:
        return np.fliplr(grid)
    if tid == 5:
        return np.flipud(grid)
    if tid == 6:
        return grid.T
    if tid == 7:
        return np.fliplr(np.rot90(grid, 1))
    raise ValueError(f"dihedral transform id must be 0..7, got {tid}")


def inverse_dihedral(grid: np.ndarray, tid: int) -> np.ndarray:
    return dihedral(grid, INVERSE_TRANSFORM[tid])


def augment(grid: np.ndarray, tid: int, mapping: np.ndarray) -> np.ndarray:
    """Apply a variant: colour `c` -> `mapping[c]`, then dihedral transform `tid`."""
    return np.ascontiguousarray(dihedral(np.asarray(mapping, dtype=np.uint8)[grid], tid))


def unaugment(grid: np.ndarray, tid: int, mapping: np.ndarray) -> np.ndarray:
    """Undo `augment`: inverse transform, then map colours back."""
    inverse = np.argsort(np.asarray(mapping)).astype(np.uint8)
    return np.ascontiguousarray(inverse[inverse_dihedral(grid, tid)])


def variant_name(task_id: str, tid: int, mapping: np.ndarray) -> str:
    """The identifier name of a variant; the original (identity transform and colours) is the bare task id."""
    if int(tid) == 0 and np.array_equal(mapping, IDENTITY):
        return task_id
    return f"{task_id}{SEP}t{int(tid)}{SEP}{''.join(str(int(x)) for x in mapping)}"


def variant_names(task_id: str, tids: np.ndarray, mappings: np.ndarray) -> list[str]:
    """`variant_name` for many variants at once (the same strings, faster)."""
    digits = (np.asarray(mappings, dtype=np.uint8) + ord("0")).tobytes().decode("ascii")
    identity = np.all(np.asarray(mappings) == IDENTITY, axis=1) & (np.asarray(tids) == 0)
    return [
        task_id if same else f"{task_id}{SEP}t{t}{SEP}{digits[10 * i:10 * i + 10]}"
        for i, (t, same) in enumerate(zip(np.asarray(tids).tolist(), identity.tolist()))
    ]


def parse_variant_name(name: str) -> tuple[str, int, np.ndarray]:
    """name -> (task id, transform id, colour mapping); a name without `|||` is the original task."""
    if SEP not in name:
        return name, 0, IDENTITY.copy()
    parts = name.split(SEP)
    if len(parts) != 3 or not parts[1].startswith("t") or len(parts[2]) != 10 or not parts[2].isdigit():
        raise ValueError(f"bad variant name {name!r}: expected '<task>{SEP}t<id>{SEP}<10 digits>'")
    tid = int(parts[1][1:])
    mapping = np.array([int(ch) for ch in parts[2]], dtype=np.uint8)
    if not 0 <= tid < NUM_TRANSFORMS or sorted(mapping.tolist()) != list(range(10)):
        raise ValueError(f"bad variant name {name!r}: transform or colour mapping out of range")
    return parts[0], tid, mapping


def encode(grid: np.ndarray | None, offset: tuple[int, int] = (0, 0)) -> np.ndarray:
    """One grid -> uint8 [900] tokens at `offset`, with the EOS edge; None (unknown) -> all PAD."""
    out = np.zeros((MAX_GRID, MAX_GRID), dtype=np.uint8)
    if grid is None:
        return out.reshape(-1)
    h, w = grid.shape
    r, c = offset
    if r < 0 or c < 0 or r + h > MAX_GRID or c + w > MAX_GRID:
        raise ValueError(f"offset {offset} puts a {h}x{w} grid outside the {MAX_GRID}x{MAX_GRID} canvas")
    out[r:r + h, c:c + w] = grid + COLOUR0
    if r + h < MAX_GRID:
        out[r + h, c:c + w] = EOS
    if c + w < MAX_GRID:
        out[r:r + h, c + w] = EOS
    return out.reshape(-1)


def decode(tokens: np.ndarray) -> np.ndarray:
    """uint8/int tokens [900] -> the grid in the bounding box of its colour tokens (0x0 when none)."""
    canvas = np.asarray(tokens).reshape(MAX_GRID, MAX_GRID)
    colour = canvas >= COLOUR0
    rows, cols = np.flatnonzero(colour.any(1)), np.flatnonzero(colour.any(0))
    if rows.size == 0:
        return np.zeros((0, 0), dtype=np.uint8)
    return (canvas[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1] - COLOUR0).astype(np.uint8)


def colour_lut(mappings: np.ndarray) -> np.ndarray:
    """Colour mappings [V, 10] -> token lookup tables [V, 12] (PAD, EOS fixed; c + 2 -> mapping[c] + 2)."""
    mappings = np.asarray(mappings, dtype=np.uint8).reshape(-1, 10)
    lut = np.empty((mappings.shape[0], VOCAB_SIZE), dtype=np.uint8)
    lut[:, PAD], lut[:, EOS] = PAD, EOS
    lut[:, COLOUR0:] = mappings + COLOUR0
    return lut


# ---------------------------------------------------------------------------------------------------------------
# Content hashing of whole variants (for dropping duplicate variants), vectorised over candidates.
# A grid's hash is sum over cells of weight[cell] * code[colour], mod 2^64, so a colour permutation only permutes
# the 10 per-colour partial sums: hashing a candidate costs 10 multiply-adds per grid. Two independent 64-bit
# hashes are kept; an example is (input, output), a variant is the multiset of its examples over all splits.

_HASH_RNG = np.random.default_rng(0x7E11)  # fixed: the same constants in every process
_CELL_W = _HASH_RNG.integers(1, 2**63, size=(2, 2, MAX_GRID, MAX_GRID), dtype=np.uint64) | np.uint64(1)
_COLOUR_CODE = _HASH_RNG.integers(1, 2**63, size=(2, 2, 10), dtype=np.uint64)
_SHAPE_CODE = _HASH_RNG.integers(1, 2**63, size=(2, 2, MAX_GRID + 1, MAX_GRID + 1), dtype=np.uint64)
_MIX = _HASH_RNG.integers(1, 2**63, size=(2, 3), dtype=np.uint64) | np.uint64(1)


def _mix64(x: np.ndarray, k: int) -> np.ndarray:
    """A bijective 64-bit mixer (xor-shift-multiply) so that sums over a multiset do not cancel."""
    with np.errstate(over="ignore"):
        x = x ^ (x >> np.uint64(31))
        x = x * _MIX[k, 0]
        x = x ^ (x >> np.uint64(29))
        x = x * _MIX[k, 1]
        x = x ^ (x >> np.uint64(32))
    return x


_CELL_W_FLAT = _CELL_W.reshape(2, 2, SEQ_LEN)


@functools.lru_cache(maxsize=None)
def _coords(h: int, w: int) -> np.ndarray:
    """[8, h*w] flat canvas position (row * 30 + col) of each source cell under each transform (read-only)."""
    rows, cols = np.divmod(np.arange(h * w, dtype=np.int64), w)
    out = np.stack([tr * MAX_GRID + tc for tr, tc in (_transform_coords(rows, cols, h, w, t) for t in range(NUM_TRANSFORMS))])
    out.setflags(write=False)
    return out


def _shape(h: int, w: int, tid: int) -> tuple[int, int]:
    return (w, h) if tid in (1, 3, 6, 7) else (h, w)


@functools.lru_cache(maxsize=None)
def _shapes(h: int, w: int) -> np.ndarray:
    """[8, 2] transformed shape per transform."""
    return np.array([_shape(h, w, t) for t in range(NUM_TRANSFORMS)], dtype=np.int64)


@functools.lru_cache(maxsize=None)
def _eos_cells(h0: int, w0: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per transform: flat positions of the EOS row (below the grid) and EOS column (right of it) at (0, 0)."""
    out = []
    for tid in range(NUM_TRANSFORMS):
        h, w = _shape(h0, w0, tid)
        out.append((h * MAX_GRID + np.arange(w, dtype=np.int64), np.arange(h, dtype=np.int64) * MAX_GRID + w))
    return out


def _colour_sums(grid: np.ndarray | None, side: int) -> np.ndarray:
    """[8 transforms, 2 hashes, 10 colours]: per colour, the sum of the cell weights where that colour lands."""
    sums = np.zeros((NUM_TRANSFORMS, 2, 10), dtype=np.uint64)
    if grid is None:
        return sums
    flat = grid.reshape(-1)
    order = np.argsort(flat, kind="stable")
    colours, starts = np.unique(flat[order], return_index=True)
    weights = _CELL_W_FLAT[:, side][:, _coords(*grid.shape)[:, order]]  # [2 hashes, 8, n]
    with np.errstate(over="ignore"):
        partial = np.add.reduceat(weights, starts, axis=-1, dtype=np.uint64)  # [2, 8, n_colours]
    sums[:, :, colours] = partial.transpose(1, 0, 2)
    return sums


def _shape_codes(grid: np.ndarray | None, side: int) -> np.ndarray:
    h, w = (0, 0) if grid is None else grid.shape
    return np.stack([_SHAPE_CODE[:, side, th, tw] for th, tw in (_shape(h, w, t) for t in range(NUM_TRANSFORMS))])


class TaskHasher:
    """Per-task precomputation for hashing many candidate variants at once."""

    def __init__(self, examples: list[tuple[np.ndarray, np.ndarray | None]]):
        # [E, 8, 2 hashes, 10] for inputs and outputs; [E, 8, 2] shape codes
        self.sums = np.stack([np.stack([_colour_sums(a, 0), _colour_sums(b, 1)]) for a, b in examples])  # [E,2,8,2,10]
        self.shapes = np.stack([_shape_codes(a, 0) + _shape_codes(b, 1) for a, b in examples])  # [E,8,2]

    def keys(self, tids: np.ndarray, mappings: np.ndarray) -> np.ndarray:
        """[M] transform ids, [M, 10] mappings -> [M, 2] uint64 content keys (equal content <=> equal key)."""
        m = tids.shape[0]
        out = np.zeros((m, 2), dtype=np.uint64)
        with np.errstate(over="ignore"):
            for k in range(2):
                codes_in = _COLOUR_CODE[k, 0][mappings]  # [M, 10]: code of each source colour's new colour
                codes_out = _COLOUR_CODE[k, 1][mappings]
                s_in = self.sums[:, 0, :, k, :][:, tids, :]  # [E, M, 10]
                s_out = self.sums[:, 1, :, k, :][:, tids, :]
                h = (s_in * codes_in[None]).sum(-1, dtype=np.uint64) + (s_out * codes_out[None]).sum(-1, dtype=np.uint64)
                h = h + self.shapes[:, tids, k]  # [E, M]
                out[:, k] = _mix64(h, k).sum(0, dtype=np.uint64)
        return out


def task_examples(task: Task, test_to_test: bool) -> tuple[list, list]:
    """(train-split examples, test-split examples) of a task as (input, output|None) pairs.

    A test-set task keeps its test pairs for the test split; any other task adds its test pairs with known
    outputs to the train split (a test pair whose output is unknown cannot be trained on and is left out).
    """
    train = [(p.input, p.output) for p in task.train]
    if test_to_test:
        return train, [(p.input, p.output) for p in task.test]
    return train + [(p.input, p.output) for p in task.test if p.output is not None], []


def plan_variants(examples: list, num_aug: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The original plus up to `num_aug` distinct variants: (tids [V], mappings [V, 10]), original first.

    Candidates are drawn in order (at most RETRIES_FACTOR * num_aug); a candidate whose whole example set equals
    one already kept (the original included) is dropped, and drawing stops once num_aug are kept.
    """
    tids_out = [np.zeros(1, dtype=np.int64)]
    maps_out = [IDENTITY[None].copy()]
    if num_aug <= 0:
        return tids_out[0], maps_out[0]
    total = RETRIES_FACTOR * num_aug
    cand_tids = rng.integers(0, NUM_TRANSFORMS, size=total)
    perms = rng.permuted(np.tile(np.arange(1, 10, dtype=np.uint8), (total, 1)), axis=1)
    cand_maps = np.concatenate([np.zeros((total, 1), dtype=np.uint8), perms], axis=1)
    hasher = TaskHasher(examples)
    original = hasher.keys(tids_out[0], maps_out[0])[0]
    seen = {(int(original[0]), int(original[1]))}
    kept: list[int] = []
    start = 0
    while start < total and len(kept) < num_aug:
        # Hash a chunk a little larger than what is still needed; most candidates are new.
        stop = min(total, start + max(64, int(1.25 * (num_aug - len(kept)))))
        keys = hasher.keys(cand_tids[start:stop], cand_maps[start:stop]).tolist()
        for i, (a, b) in enumerate(keys):
            if (a, b) not in seen:
                seen.add((a, b))
                kept.append(start + i)
                if len(kept) == num_aug:
                    break
        start = stop
    idx = np.asarray(kept, dtype=np.int64)
    return np.concatenate([tids_out[0], cand_tids[idx]]), np.concatenate([maps_out[0], cand_maps[idx]])


# ---------------------------------------------------------------------------------------------------------------
# Rendering many variants of one task into token rows.


class TaskLayout:
    """The cells of every example under every transform, concatenated over examples, for fast rendering.

    Per side (input/output): positions [8, C] of all grid cells at offset (0, 0), their tokens [C] and example
    index [C]; per transform the EOS-row cells (kept when r + h < 30) and EOS-column cells (kept when c + w < 30).
    """

    def __init__(self, examples: list[tuple[np.ndarray, np.ndarray | None]]):
        self.n = len(examples)
        self.sides = []
        extent = np.zeros((2, NUM_TRANSFORMS, max(self.n, 1), 2), dtype=np.int64)
        for side in range(2):
            pos, tok, ex = [np.zeros((NUM_TRANSFORMS, 0), np.int64)], [np.zeros(0, np.uint8)], [np.zeros(0, np.int64)]
            eos_pieces = []  # per example: the cached per-transform (EOS row, EOS column) positions
            hw = np.zeros((NUM_TRANSFORMS, max(self.n, 1), 2), dtype=np.int64)
            for e, pair in enumerate(examples):
                grid = pair[side]
                if grid is None:
                    eos_pieces.append(None)
                    continue
                h0, w0 = grid.shape
                pos.append(_coords(h0, w0))
                tok.append(grid.reshape(-1) + COLOUR0)
                ex.append(np.full(h0 * w0, e, dtype=np.int64))
                hw[:, e] = _shapes(h0, w0)
                eos_pieces.append(_eos_cells(h0, w0))
            eos = []
            for tid in range(NUM_TRANSFORMS):
                live = [(e, p[tid]) for e, p in enumerate(eos_pieces) if p is not None]
                row_len = np.array([len(r) for _, (r, _) in live], dtype=np.int64)
                col_len = np.array([len(c) for _, (_, c) in live], dtype=np.int64)
                idx = np.array([e for e, _ in live], dtype=np.int64)
                eos.append((
                    np.concatenate([r for _, (r, _) in live]) if live else np.zeros(0, np.int64),
                    np.repeat(idx, row_len),
                    np.concatenate([c for _, (_, c) in live]) if live else np.zeros(0, np.int64),
                    np.repeat(idx, col_len),
                ))
            self.sides.append({
                "pos": np.concatenate(pos, axis=1), "tok": np.concatenate(tok), "ex": np.concatenate(ex), "hw": hw,
                "eos": eos,
            })
            extent[side] = hw
        self.extent = extent.max(axis=0)  # [8, E, 2]: max(h), max(w) of each input/output pair

    def draw_offsets(self, tids: np.ndarray, rng: np.random.Generator, translate: bool) -> np.ndarray:
        """[V, E, 2] offsets: uniform over the canvas, except one random example per variant at (0, 0)."""
        v = tids.shape[0]
        offsets = np.zeros((v, self.n, 2), dtype=np.int64)
        if not translate or self.n == 0 or v == 0:
            return offsets
        keep = rng.integers(0, self.n, size=v)
        high = MAX_GRID - self.extent[tids] + 1  # [V, E, 2]
        offsets = rng.integers(0, high)
        offsets[np.arange(v), keep] = 0
        return offsets

    def render(self, tids: np.ndarray, luts: np.ndarray, offsets: np.ndarray,
               out: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Rows for variants [V] x examples [E] (variant-major) -> (inputs, labels), uint8 [V*E, 900] each.

        `out`: two all-zero uint8 arrays of V*E*900 cells (e.g. windows of a fresh memory-mapped file) to draw
        into instead of new ones.
        """
        v = tids.shape[0]
        rows = v * self.n
        targets = out if out is not None else (None, None)
        result = []
        base = (np.arange(v, dtype=np.int64) * self.n)[:, None] + np.arange(self.n)[None, :]  # [V, E] row ids
        shift = offsets[..., 0] * MAX_GRID + offsets[..., 1] + base * SEQ_LEN  # [V, E]
        groups = [(tid, np.flatnonzero(tids == tid)) for tid in np.unique(tids).tolist()]
        for cells, target in zip(self.sides, targets):
            out = np.zeros(rows * SEQ_LEN, dtype=np.uint8) if target is None else target.reshape(-1)
            if out.shape != (rows * SEQ_LEN,) or out.dtype != np.uint8:
                raise ValueError(f"render: out arrays must be uint8 with {rows * SEQ_LEN} cells")
            for tid, sel in groups:
                at, off = shift[sel], offsets[sel]
                out[at[:, cells["ex"]] + cells["pos"][tid]] = luts[sel][:, cells["tok"]]
                row_pos, row_ex, col_pos, col_ex = cells["eos"][tid]
                h, w = cells["hw"][tid, :, 0], cells["hw"][tid, :, 1]
                keep = off[:, row_ex, 0] + h[row_ex] < MAX_GRID
                out[(at[:, row_ex] + row_pos)[keep]] = EOS
                keep = off[:, col_ex, 1] + w[col_ex] < MAX_GRID
                out[(at[:, col_ex] + col_pos)[keep]] = EOS
            result.append(out.reshape(rows, SEQ_LEN))
        return result[0], result[1]


def _transform_coords(rows: np.ndarray, cols: np.ndarray, h: int, w: int, tid: int) -> tuple[np.ndarray, np.ndarray]:
    """Where cell (row, col) of an h x w grid lands under `dihedral(., tid)`."""
    if tid == 0:
        return rows, cols
    if tid == 1:  # rot90 ccw: (i, j) -> (w-1-j, i)
        return w - 1 - cols, rows
    if tid == 2:
        return h - 1 - rows, w - 1 - cols
    if tid == 3:  # rot270: (i, j) -> (j, h-1-i)
        return cols, h - 1 - rows
    if tid == 4:
        return rows, w - 1 - cols
    if tid == 5:
        return h - 1 - rows, cols
    if tid == 6:
        return cols, rows
    if tid == 7:  # lr-flip of rot90: (i, j) -> (w-1-j, h-1-i)
        return w - 1 - cols, h - 1 - rows
    raise ValueError(f"dihedral transform id must be 0..7, got {tid}")
