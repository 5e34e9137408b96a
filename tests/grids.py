"""ARC grids as the tests write them, independently of the code under test (TRM-SPEC sections 2-3).

    from grids import FORWARD, tokens, augment, crop_size
    tokens([[1, 2]])              # the 900 tokens of a grid at the top-left of the 30x30 field, with EOS edges
    augment(grid, 7, mapping)     # colours mapped, then dihedral transform 7
"""

from __future__ import annotations

import numpy as np

FORWARD = {  # the spec's dihedral ids as numpy operations on a 2-D grid
    0: lambda a: a,
    1: lambda a: np.rot90(a, 1),
    2: lambda a: np.rot90(a, 2),
    3: lambda a: np.rot90(a, 3),
    4: np.fliplr,
    5: np.flipud,
    6: lambda a: a.T,
    7: lambda a: np.fliplr(np.rot90(a, 1)),
}


def tokens(grid, eos: bool = True) -> np.ndarray:
    """A grid at the top-left of the 30x30 field, colours as tokens 2..11, with the EOS edges (token 1) when `eos`."""
    g = np.asarray(grid, dtype=np.uint8)
    field = np.zeros((30, 30), dtype=np.uint8)
    h, w = g.shape
    field[:h, :w] = g + 2
    if eos and h < 30:
        field[h, :w] = 1
    if eos and w < 30:
        field[:h, w] = 1
    return field.reshape(-1)


def augment(grid, tid: int, mapping) -> np.ndarray:
    """Colours through `mapping` (an array of 10), then dihedral transform `tid`."""
    return np.ascontiguousarray(FORWARD[tid](np.asarray(mapping, dtype=np.uint8)[np.asarray(grid, dtype=np.uint8)]))


def crop_size(row: np.ndarray) -> tuple[int, int]:
    """(rows, columns) of the largest top-left rectangle of colour tokens (2..11), one cell at a time."""
    g = np.asarray(row).reshape(30, 30)
    best, size, ncol = 0, (0, 0), 30
    for r in range(30):
        for c in range(ncol):
            if not 2 <= g[r, c] <= 11:
                ncol = c
                break
        if (r + 1) * ncol > best:
            best, size = (r + 1) * ncol, (r + 1, ncol)
    return size
