"""The voter's numpy kernels: variant names, crops, colours, dihedral transforms and grid hashes, many rows at once.

    tasks, tids, luts = parse_names(["007bbfb7", "007bbfb7|||t3|||0712459368"])
    h, w = crop_sizes(tokens)                       # [n, 900] raw tokens -> crop heights and widths
    fields = recolour(tokens, luts, h, w)           # the crops, colours looked up per row, as canvases
    canvases, h, w = undo_dihedral(fields, h, w, tids)  # transform `tid` undone, grids back at the top-left
    key1, key2 = grid_hashes(canvases)              # two 64-bit hashes per canvas

trm.evaluation.rules says what they are used for. A canvas holds one grid at the top-left of a 30x30 field,
colour + 1 inside and 0 outside, flattened and padded with zeros to PADDED bytes (113 words of 8 bytes).
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from trm.data.augment import INVERSE_TRANSFORM, parse_variant_name

GRID = 30
SEQ_LEN = GRID * GRID
PADDED = SEQ_LEN + 4
SEPARATOR = "|||"
DIHEDRAL_INVERSE: tuple[int, ...] = INVERSE_TRANSFORM  # the builder's table: voting undoes what it applied
_ROWS = np.arange(GRID)
# _OUTSIDE[h * 31 + w]: 0 on the cells of the top-left h x w rectangle of the field, 255 elsewhere (and after it)
_OUTSIDE = np.full(((GRID + 1) ** 2, PADDED), 255, dtype=np.uint8)
_OUTSIDE[:, :SEQ_LEN] = np.where((_ROWS[None, None, :, None] < np.arange(GRID + 1)[:, None, None, None])
                                 & (_ROWS[None, None, None, :] < np.arange(GRID + 1)[None, :, None, None]),
                                 0, 255).reshape(-1, SEQ_LEN)
_GROUP = 21  # rows sharing one 256-byte colour table in recolour(): 12 codes a row


def parse_names(names: list[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Variant names `<task>|||t<tid>|||<10 digits>` (or a plain task name) -> (task per name, tids [m] int8,
    luts [m, 10] uint8 with luts[variant colour] = original colour + 1, the digits giving the variant colour of
    each original colour); ValueError naming a bad name."""
    tasks, tails = [], []
    for name in names:
        task, sep, tail = name.partition(SEPARATOR)
        tasks.append(task)
        tails.append(tail if sep else "t0|||0123456789")
    ok = np.fromiter(map(len, tails), dtype=np.int64, count=len(tails)) == 15
    joined = "".join(tails) if ok.all() else "".join(tail[:15].ljust(15) for tail in tails)
    raw = np.frombuffer(joined.encode("ascii", "replace"), dtype=np.uint8).reshape(-1, 15)
    digits = raw[:, 5:] - np.uint8(ord("0"))
    ok &= (raw[:, 0] == ord("t")) & (raw[:, 1] >= ord("0")) & (raw[:, 1] <= ord("7")) & (raw[:, 2:5] == ord("|")).all(1)
    luts = np.zeros(digits.shape, dtype=np.uint8)
    luts[np.arange(len(names))[:, None], np.minimum(digits, 9)] = np.arange(1, 11, dtype=np.uint8)
    ok &= (digits < 10).all(1) & (luts > 0).all(1)  # each digit once
    if not ok.all():
        bad = names[int(np.argmin(ok))]
        parse_variant_name(bad)  # raises with the data module's message
        raise ValueError(f"identifier {bad!r}: expected '<task>{SEPARATOR}t<0-7>{SEPARATOR}<10 digits>'")
    return tasks, (raw[:, 1] - ord("0")).astype(np.int8), luts


def dihedral(stack: np.ndarray, tid: int) -> np.ndarray:
    """Dihedral transform `tid` (ids as in trm.data.augment) of every grid of a [n, h, w] stack, as a view: k
    quarter turns counterclockwise, then for tids 4..7 a left-right flip."""
    if not 0 <= tid < 8:
        raise ValueError(f"dihedral transform id {tid} not in 0..7")
    k, swapped = (0, 1, 2, 3, 0, 2, 3, 1)[tid], stack.transpose(0, 2, 1)  # np.rot90's views, without its checks
    turned = (stack, swapped[:, ::-1], stack[:, ::-1, ::-1], swapped[:, :, ::-1])[k]
    return turned[:, :, ::-1] if tid >= 4 else turned


def crop_sizes(tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Heights and widths of the crops of [n, 900] token rows (0, 0 where empty).

    Row r of the field keeps the columns before the first non-colour token (PAD 0, EOS 1) of rows 0..r; of these
    rectangles the largest wins, the one with the fewest rows on ties.
    """
    n = len(tokens)
    colour = (np.asarray(tokens, dtype=np.uint8).reshape(n, GRID, GRID) - np.uint8(2)) < 10
    first = colour.argmin(axis=2).astype(np.int8)  # each row's first non-colour column (0 also when all 30 are)
    widths = np.minimum.accumulate(np.where(colour[:, :, 0] & (first == 0), np.int8(GRID), first), axis=1)  # 0..r
    best = (widths * (_ROWS + 1)).argmax(axis=1)
    w = widths[np.arange(n), best].astype(np.int64)
    return np.where(w > 0, best + 1, 0), w


def recolour(tokens: np.ndarray, luts: np.ndarray, h: np.ndarray | None = None, w: np.ndarray | None = None):
    """[n, 900] uint8 tokens -> canvases [n, PADDED] in the tokens' own frame, where row i's colour c becomes
    luts[i, c] (luts: [n, 10] uint8, 1..10) and PAD/EOS 0; given crop sizes h, w, only the crops (every cell
    outside them 0). Without h, w the tokens must be 0..11 (a larger one would read as another row's colour).

    Through bytes.translate, one 256-byte table per group of _GROUP rows: row k of a group codes token t as
    12k + t and every cell outside its crop as 255; the group's table maps 12k + 2 + c to luts[k, c], the rest to 0.
    """
    n = len(tokens)
    groups = -(-n // _GROUP)
    codes = np.empty((groups * _GROUP, PADDED), dtype=np.uint8)
    np.add(tokens, (np.arange(n) % _GROUP * 12).astype(np.uint8)[:, None], out=codes[:n, :SEQ_LEN])
    codes[:n, SEQ_LEN:], codes[n:] = 255, 255
    if h is not None:
        codes[:n] |= _OUTSIDE[h * (GRID + 1) + w]
    tables = np.zeros((groups, 256), dtype=np.uint8)
    tables[:, :12 * _GROUP].reshape(groups, _GROUP, 12)[:, :, 2:] = \
        np.pad(luts, ((0, groups * _GROUP - n), (0, 0))).reshape(groups, _GROUP, 10)
    data, tabs, step = memoryview(codes.reshape(-1)), tables.tobytes(), _GROUP * PADDED
    out = b"".join([bytes(data[g * step:(g + 1) * step]).translate(tabs[g * 256:(g + 1) * 256])
                    for g in range(groups)])
    return np.frombuffer(out, dtype=np.uint8).reshape(-1, PADDED)[:n]


# per transform: where the inverse transform puts an h x w grid from the top-left of the field, as the indices
# (0: 0, 1: 30 - h, 2: 30 - w) of its first row and column; and the transforms that exchange height and width
_CORNER = np.array([(0, 0), (0, 1), (1, 2), (2, 0), (0, 2), (1, 0), (0, 0), (2, 1)])
_SWAPS = np.array([False, True, False, True, False, False, True, True])


def undo_dihedral(canvases: np.ndarray, h: np.ndarray, w: np.ndarray, tids: np.ndarray):
    """Canvases [n, PADDED] of h x w grids that dihedral transform tids[i] made -> (canvases of the grids before
    it, heights, widths).

    Each group of rows with one transform goes through the inverse transform as whole 30x30 fields, which puts
    each grid in a corner of its field; as every other cell is 0, shifting the flattened field left by the
    index of that corner moves the grid back to the top-left.
    """
    n = len(canvases)
    order = np.argsort(tids, kind="stable")
    spread = np.zeros((n, 2 * SEQ_LEN + 4), dtype=np.uint8)  # sorted by transform: field, then zeros
    fields = canvases[:, :SEQ_LEN].reshape(n, GRID, GRID)
    bounds = np.searchsorted(tids[order], np.arange(9)).tolist()  # transform t: rows order[bounds[t]:bounds[t + 1]]
    for t, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        if hi > lo:
            inverse = dihedral(fields[order[lo:hi]], DIHEDRAL_INVERSE[t])
            spread[lo:hi, :SEQ_LEN].reshape(hi - lo, GRID, GRID)[:] = inverse
    at = np.empty(n, dtype=np.int64)
    at[order] = np.arange(n)  # row i is row at[i] of `spread`
    free, (rows, cols) = np.stack([np.zeros_like(h), GRID - h, GRID - w]), _CORNER[tids].T
    corner = np.where(h > 0, free[rows, np.arange(n)] * GRID + free[cols, np.arange(n)], 0)  # empty: stays put
    swap = _SWAPS[tids]
    windows = as_strided(spread, (n, SEQ_LEN + 1, PADDED), (spread.strides[0], 1, 1), writeable=False)  # [i, s, :]:
    return windows[at, corner], np.where(swap, w, h), np.where(swap, h, w)  # spread[i, s:s + PADDED]


def canvas_of(grid: np.ndarray) -> np.ndarray:
    """One grid (colours 0..9) -> its canvas [PADDED]."""
    out = np.zeros(PADDED, dtype=np.uint8)
    h, w = grid.shape
    out[:SEQ_LEN].reshape(GRID, GRID)[:h, :w] = grid + 1
    return out


def grid_of(canvas: np.ndarray, h: int, w: int) -> np.ndarray:
    """A canvas -> its h x w grid of colours 0..9."""
    return canvas[:SEQ_LEN].reshape(GRID, GRID)[:h, :w] - np.uint8(1)


_MIX = np.uint64(0x9E3779B97F4A7C15)
_WEIGHTS = (np.random.default_rng(0x7E5A).integers(1, 2**62, size=(PADDED // 8, 2), dtype=np.uint64)
            * np.uint64(2) + np.uint64(1))  # odd


def grid_hashes(canvases: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[n, PADDED] uint8 -> two independent 64-bit hashes per row: each 8-byte word is mixed, then the words are
    summed with random odd weights (a uint64 matrix product, which wraps like the sums)."""
    words = np.ascontiguousarray(canvases).view(np.uint64) * _MIX
    words ^= words >> np.uint64(29)
    both = words @ _WEIGHTS
    return both[:, 0], both[:, 1]
