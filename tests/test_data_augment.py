"""Augmentation, token layout and variant planning (trm.data.augment)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from trm.data.augment import (
    EOS, INVERSE_TRANSFORM, PAD, RETRIES_FACTOR, TaskLayout, augment, colour_lut, decode, dihedral, encode,
    inverse_dihedral, parse_variant_name, plan_variants, unaugment, variant_name, variant_names,
)
from trm.data.sources import load_subset

RNG = np.random.default_rng(123)


def _grid(h, w, colours=10):
    return RNG.integers(0, colours, size=(h, w)).astype(np.uint8)


def test_dihedral_ids_match_numpy():
    g = _grid(3, 5)
    expected = [g, np.rot90(g, 1), np.rot90(g, 2), np.rot90(g, 3), np.fliplr(g), np.flipud(g), g.T,
                np.fliplr(np.rot90(g, 1))]
    for tid, want in enumerate(expected):
        assert np.array_equal(dihedral(g, tid), want), tid
        assert np.array_equal(inverse_dihedral(dihedral(g, tid), tid), g), tid
    assert INVERSE_TRANSFORM == (0, 3, 2, 1, 4, 5, 6, 7)
    with pytest.raises(ValueError):
        dihedral(g, 8)


def test_augment_roundtrip_and_names():
    g = _grid(4, 7)
    for tid in range(8):
        mapping = np.concatenate([[0], RNG.permutation(np.arange(1, 10))]).astype(np.uint8)
        a = augment(g, tid, mapping)
        # colours first, then transform
        assert np.array_equal(a, dihedral(mapping[g], tid))
        assert np.array_equal(unaugment(a, tid, mapping), g)
        name = variant_name("007bbfb7", tid, mapping)
        task, tid2, map2 = parse_variant_name(name)
        assert (task, tid2) == ("007bbfb7", tid) and np.array_equal(map2, mapping)
    assert variant_name("abc", 0, np.arange(10)) == "abc"
    assert variant_name("007bbfb7", 3, np.array([0, 7, 1, 2, 4, 5, 9, 3, 6, 8])) == "007bbfb7|||t3|||0712459368"
    tids = np.array([0, 3, 0])
    maps = np.stack([np.arange(10), np.array([0, 7, 1, 2, 4, 5, 9, 3, 6, 8]), np.array([0, 2, 1, 3, 4, 5, 6, 7, 8, 9])])
    assert variant_names("x", tids, maps) == [variant_name("x", t, m) for t, m in zip(tids, maps)]
    for bad in ("a|||t9|||0123456789", "a|||3|||0123456789", "a|||t1|||0123", "a|||t1|||0123456788"):
        with pytest.raises(ValueError):
            parse_variant_name(bad)


@pytest.mark.parametrize("h,w,r,c", [(3, 4, 0, 0), (30, 30, 0, 0), (5, 2, 25, 28), (1, 1, 29, 29), (7, 30, 3, 0)])
def test_encode_layout_eos_and_pad(h, w, r, c):
    g = _grid(h, w)
    tokens = encode(g, (r, c)).reshape(30, 30)
    assert tokens.dtype == np.uint8
    assert np.array_equal(tokens[r:r + h, c:c + w], g + 2)
    eos = np.zeros((30, 30), bool)
    if r + h < 30:
        eos[r + h, c:c + w] = True
    if c + w < 30:
        eos[r:r + h, c + w] = True
    assert np.array_equal(tokens == EOS, eos)
    colour = np.zeros((30, 30), bool)
    colour[r:r + h, c:c + w] = True
    assert np.all(tokens[~(colour | eos)] == PAD)  # corner and everything else stays PAD
    assert np.array_equal(decode(tokens), g)
    with pytest.raises(ValueError):
        encode(g, (31 - h, 0))


def test_unknown_output_encodes_all_pad():
    assert not encode(None).any()
    assert decode(np.zeros(900, np.uint8)).shape == (0, 0)


def _tasks(arc_dir, n=12):
    tasks = load_subset(str(arc_dir / "arc-agi"), "evaluation2")
    return [tasks[k] for k in list(tasks)[:n]]


def test_render_matches_encode_for_every_transform(arc_dir):
    """The vectorised renderer gives exactly encode(augment(...)) at the drawn offsets, and de-augments back."""
    rng = np.random.default_rng(5)
    for task in _tasks(arc_dir, 6):
        examples = [(p.input, p.output) for p in task.train + task.test]
        layout = TaskLayout(examples)
        tids = np.arange(16) % 8
        maps = np.concatenate([np.zeros((16, 1), np.uint8), rng.permuted(np.tile(np.arange(1, 10, dtype=np.uint8), (16, 1)), axis=1)], 1)
        offsets = layout.draw_offsets(tids, rng, translate=True)
        inputs, labels = layout.render(tids, colour_lut(maps), offsets)
        assert inputs.shape == labels.shape == (16 * len(examples), 900)
        for v in range(16):
            assert (offsets[v] == 0).all(axis=1).any()  # one example per variant stays at (0, 0)
            for e, (gi, go) in enumerate(examples):
                k = v * len(examples) + e
                at = tuple(int(x) for x in offsets[v, e])
                assert np.array_equal(inputs[k], encode(augment(gi, tids[v], maps[v]), at))
                assert np.array_equal(labels[k], encode(augment(go, tids[v], maps[v]), at))
                assert np.array_equal(unaugment(decode(inputs[k]), tids[v], maps[v]), gi)
                assert np.array_equal(unaugment(decode(labels[k]), tids[v], maps[v]), go)
        still = layout.draw_offsets(tids, rng, translate=False)
        assert not still.any()


def _content_hash(examples, tid, mapping):
    """Exact (slow) hash of a variant's whole example multiset, like the reference's dedup."""
    parts = []
    for gi, go in examples:
        a, b = augment(gi, tid, mapping), augment(go, tid, mapping)
        parts.append(hashlib.sha256(bytes(a.shape) + a.tobytes() + b"|" + bytes(b.shape) + b.tobytes()).hexdigest())
    return "|".join(sorted(parts))


def test_plan_variants_equals_exact_sequential_dedup(arc_dir):
    """Same candidates, same order: our hashed dedup keeps exactly what an exact byte comparison keeps."""
    for task in _tasks(arc_dir, 4):
        examples = [(p.input, p.output) for p in task.train + task.test]
        num_aug = 40
        tids, maps = plan_variants(examples, num_aug, np.random.default_rng(9))
        # replay the candidate stream
        rng = np.random.default_rng(9)
        total = RETRIES_FACTOR * num_aug
        cand_t = rng.integers(0, 8, size=total)
        perms = rng.permuted(np.tile(np.arange(1, 10, dtype=np.uint8), (total, 1)), axis=1)
        cand_m = np.concatenate([np.zeros((total, 1), np.uint8), perms], 1)
        seen = {_content_hash(examples, 0, np.arange(10))}
        want_t, want_m = [0], [np.arange(10)]
        for t, m in zip(cand_t, cand_m):
            h = _content_hash(examples, t, m)
            if h not in seen:
                seen.add(h)
                want_t.append(t)
                want_m.append(m)
                if len(want_t) == num_aug + 1:
                    break
        assert tids.tolist() == [int(t) for t in want_t]
        assert np.array_equal(maps, np.stack(want_m).astype(np.uint8))


def test_plan_variants_symmetric_task_gets_fewer_variants():
    """A one-colour symmetric grid: transforms and colour swaps collide, so only the distinct ones are kept."""
    g = np.zeros((3, 3), np.uint8)
    g[1, 1] = 5
    examples = [(g, g.copy())]
    tids, maps = plan_variants(examples, 100, np.random.default_rng(0))
    # every transform fixes this grid; only the colour of the centre matters: 9 distinct variants
    assert len(tids) == 9
    hashes = {_content_hash(examples, t, m) for t, m in zip(tids, maps)}
    assert len(hashes) == 9
    assert plan_variants(examples, 0, np.random.default_rng(0))[0].tolist() == [0]
