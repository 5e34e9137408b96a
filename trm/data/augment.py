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


def _colour_sums(grid: np.ndarray | None, side: int) -> np.ndarray:
    """[8 transforms, 2 hashes, 10 colours] partial sums, plus the shape code folded into colour 0's slot."""
    sums = np.zeros((NUM_TRANSFORMS, 2, 10), dtype=np.uint64)
    if grid is None:
        return sums
    onehot = (grid[None, :, :] == np.arange(10, dtype=np.uint8)[:, None, None]).astype(np.uint64)  # [10,h,w]
    for tid in range(NUM_TRANSFORMS):
        th, tw = dihedral(grid, tid).shape
        for k in range(2):
            weights = inverse_dihedral(_CELL_W[k, side, :th, :tw], tid)  # weight of each source cell
            with np.errstate(over="ignore"):
                sums[tid, k] = (onehot * weights[None]).sum(axis=(1, 2), dtype=np.uint64)
    return sums


def _shape_codes(grid: np.ndarray | None, side: int) -> np.ndarray:
    codes = np.zeros((NUM_TRANSFORMS, 2), dtype=np.uint64)
    h, w = (0, 0) if grid is None else grid.shape
    for tid in range(NUM_TRANSFORMS):
        th, tw = (w, h) if tid in (1, 3, 6, 7) else (h, w)
        codes[tid] = _SHAPE_CODE[:, side, th, tw]
    return codes


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
    """The cells of every example under every transform, for fast rendering of variants.

    Per (side, transform, example): flat canvas positions and tokens of the grid at offset (0, 0), and the
    positions of its EOS row (kept when r + h < 30) and EOS column (kept when c + w < 30).
    """

    def __init__(self, examples: list[tuple[np.ndarray, np.ndarray | None]]):
        self.n = len(examples)
        empty = (np.zeros(0, np.int64), np.zeros(0, np.uint8), np.zeros(0, np.int64), np.zeros(0, np.int64), 0, 0)
        self.cells = [[[empty] * self.n for _ in range(NUM_TRANSFORMS)] for _ in range(2)]
        self.extent = np.zeros((NUM_TRANSFORMS, max(self.n, 1), 2), dtype=np.int64)  # max(h), max(w) of the pair
        for e, pair in enumerate(examples):
            for side, grid in enumerate(pair):
                if grid is None:
                    continue
                h0, w0 = grid.shape
                rows, cols = np.divmod(np.arange(h0 * w0, dtype=np.int64), w0)
                tokens = grid.reshape(-1) + COLOUR0
                for tid in range(NUM_TRANSFORMS):
                    # where source cell (i, j) lands under the transform, without materialising the grid
                    tr, tc = _transform_coords(rows, cols, h0, w0, tid)
                    h, w = (w0, h0) if tid in (1, 3, 6, 7) else (h0, w0)
                    order = np.argsort(tr * MAX_GRID + tc, kind="stable")  # row-major writes
                    pos = (tr * MAX_GRID + tc)[order]
                    eos_row = h * MAX_GRID + np.arange(w, dtype=np.int64)
                    eos_col = np.arange(h, dtype=np.int64) * MAX_GRID + w
                    self.cells[side][tid][e] = (pos, tokens[order], eos_row, eos_col, h, w)
            for tid in range(NUM_TRANSFORMS):
                hs = [self.cells[side][tid][e][4] for side in range(2)]
                ws = [self.cells[side][tid][e][5] for side in range(2)]
                self.extent[tid, e] = (max(hs), max(ws))

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

    def render(self, tids: np.ndarray, luts: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows for variants [V] x examples [E] (variant-major) -> (inputs, labels), uint8 [V*E, 900] each."""
        v = tids.shape[0]
        rows = v * self.n
        result = []
        base = (np.arange(v, dtype=np.int64) * self.n)[:, None] + np.arange(self.n)[None, :]  # [V, E] row ids
        shift = offsets[..., 0] * MAX_GRID + offsets[..., 1] + base * SEQ_LEN  # [V, E]
        groups = [(tid, np.flatnonzero(tids == tid)) for tid in np.unique(tids).tolist()]
        for side in range(2):
            out = np.zeros(rows * SEQ_LEN, dtype=np.uint8)
            for tid, sel in groups:
                lut = luts[sel]  # [v_t, 12]
                for e in range(self.n):
                    pos, tok, eos_row, eos_col, h, w = self.cells[side][tid][e]
                    if pos.size == 0:
                        continue
                    at = shift[sel, e]
                    out[at[:, None] + pos[None, :]] = lut[:, tok]
                    keep = at[offsets[sel, e, 0] + h < MAX_GRID]
                    out[keep[:, None] + eos_row[None, :]] = EOS
                    keep = at[offsets[sel, e, 1] + w < MAX_GRID]
                    out[keep[:, None] + eos_col[None, :]] = EOS
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
