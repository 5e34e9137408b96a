"""Train/test loaders (trm.data.loader): spec section 5, rank slicing, determinism, exact resume, several paths."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from trm.data.build import BuildConfig, build_dataset
from trm.data.loader import Position, TestLoader, TrainLoader, load_identifiers, load_metadata, pack

from test_data_build import write_subset


@pytest.fixture(scope="module")
def two(arc_dir, tmp_path_factory) -> tuple[str, str]:
    """Two datasets with disjoint identifier ranges (and some puzzles with many examples)."""
    src = tmp_path_factory.mktemp("src")
    prefix = write_subset(arc_dir, src, "training2", "a", n=8)
    write_subset(arc_dir, src, "evaluation2", "b", n=5)
    out = tmp_path_factory.mktemp("out")
    first = build_dataset(BuildConfig(prefix, str(out / "a"), ["a"], [], num_aug=3, workers=1))
    n_first = json.loads((out / "a" / "train" / "dataset.json").read_text())["num_puzzle_identifiers"]
    second = build_dataset(BuildConfig(prefix, str(out / "b"), ["b"], ["b"], num_aug=3, workers=1,
                                       puzzle_identifiers_start=n_first))
    return first, second


def _arrays(path, split="train"):
    root = Path(path) / split
    return {k: np.load(root / f"all__{k}.npy") for k in
            ("inputs", "labels", "puzzle_identifiers", "puzzle_indices", "group_indices")}


def test_reference_tiny_dataset_loads_and_first_test_batch_matches(tiny, fixtures_dir):
    meta = load_metadata([tiny], "test")
    assert (meta.total_puzzles, meta.total_groups, meta.num_puzzle_identifiers) == (15, 5, 16)
    ref = torch.load(fixtures_dir / "trm_tiny_batch.pt")
    set_name, batch, n_valid = next(iter(TestLoader([tiny], 4)))
    assert set_name == "all" and n_valid == 4
    for k in ("inputs", "labels", "puzzle_identifiers"):
        assert batch[k].dtype == torch.int32
        assert torch.equal(batch[k], ref[k].to(torch.int32)), k


def test_test_loader_order_padding_and_ranks(tiny):
    data = _arrays(tiny, "test")
    n = data["inputs"].shape[0]  # 21
    ids = np.repeat(data["puzzle_identifiers"], np.diff(data["puzzle_indices"]))
    world, B = 2, 8
    per_rank = [list(TestLoader([tiny], B, rank=r, world_size=world)) for r in range(world)]
    assert len(per_rank[0]) == len(TestLoader([tiny], B)) == 3
    rows, labels, idents = [], [], []
    for step in range(3):
        for r in range(world):
            name, batch, n_valid = per_rank[r][step]
            assert name == "all" and n_valid == min(B, n - step * B)
            assert batch["inputs"].shape == (B // world, 900)
            rows.append(batch["inputs"].numpy())
            labels.append(batch["labels"].numpy())
            idents.append(batch["puzzle_identifiers"].numpy())
    rows, labels, idents = np.concatenate(rows), np.concatenate(labels), np.concatenate(idents)
    assert np.array_equal(rows[:n], data["inputs"])  # file order, rank slices tile the global batch
    want = data["labels"].astype(np.int32)
    want[want == 0] = -100
    assert np.array_equal(labels[:n], want)
    assert np.array_equal(idents[:n], ids)
    assert not rows[n:].any() and np.all(labels[n:] == -100) and not idents[n:].any()  # padding


@pytest.mark.parametrize("max_aug", [0, 1, 2, 100, None])
def test_test_loader_max_augmentations(tiny, max_aug):
    """The original + first max_aug puzzles of each group, in file order, on every rank; None or a large N: all."""
    data = _arrays(tiny, "test")
    pidx, gidx = data["puzzle_indices"], data["group_indices"]
    keep = []  # expected example rows, built puzzle by puzzle
    for g in range(gidx.size - 1):
        for rank, puzzle in enumerate(range(gidx[g], gidx[g + 1])):
            if max_aug is None or rank <= max_aug:
                keep.extend(range(pidx[puzzle], pidx[puzzle + 1]))
    world, B = 2, 4
    got = []
    for step_batches in zip(*(TestLoader([tiny], B, rank=r, world_size=world, max_augmentations=max_aug)
                              for r in range(world))):
        n_valid = step_batches[0][2]
        rows = np.concatenate([b["inputs"].numpy() for _, b, _ in step_batches])
        got.append(rows[:n_valid])
    assert np.array_equal(np.concatenate(got), data["inputs"][keep])
    if max_aug == 0:
        assert len(keep) < data["inputs"].shape[0]  # the fixture has augmented puzzles to drop


def test_test_loader_rejects_negative_max_augmentations(tiny):
    with pytest.raises(ValueError, match="max_augmentations"):
        TestLoader([tiny], 4, max_augmentations=-1)


def _epoch(loader: TrainLoader, epoch: int) -> list[dict]:
    out = []
    for position, batch in loader.iterate(start=Position(epoch, 0)):
        out.append(batch)
        if position.epoch != epoch:
            break
    return out


def test_train_epoch_visits_each_group_once(two):
    paths = list(two)
    loader = TrainLoader(paths, 6, seed=3)
    per_path = [_arrays(p) for p in paths]
    group_of = {}
    for k, a in enumerate(per_path):
        gi = a["group_indices"]
        for g in range(gi.shape[0] - 1):
            for pid in a["puzzle_identifiers"][gi[g]:gi[g + 1]]:
                group_of[int(pid)] = (k, g)
    parts, rows, idents = loader._plan(0)
    steps = loader.steps_per_epoch(0)
    assert parts.shape[0] == steps * 6 > 0
    # consecutive runs of one identifier are one puzzle's examples; every group at most once
    runs = [int(idents[0])] + [int(b) for a, b in zip(idents[:-1], idents[1:]) if a != b]
    groups = [group_of[i] for i in runs]
    assert len(groups) == len(set(groups))
    total_groups = sum(a["group_indices"].shape[0] - 1 for a in per_path)
    assert len(groups) >= total_groups - 6  # all but the tail cut by the last incomplete batch
    assert {g[0] for g in groups} == {0, 1}  # batches draw from both paths
    # the rows of each puzzle are its own examples, each at most once
    for part, row, ident in zip(parts.tolist(), rows.tolist(), idents.tolist()):
        a = per_path[part]
        p = int(np.searchsorted(a["puzzle_indices"], row, side="right") - 1)
        assert a["puzzle_identifiers"][p] == ident
    assert len(set(zip(parts.tolist(), rows.tolist()))) == parts.shape[0]
    # batches carry exactly those rows
    batches = _epoch(loader, 0)
    assert len(batches) == steps
    got = torch.cat([b["inputs"] for b in batches]).numpy()
    want = np.stack([per_path[p]["inputs"][r] for p, r in zip(parts, rows)]).astype(np.int32)
    assert np.array_equal(got, want)


def test_train_determinism_rank_slices_and_resume(two):
    paths = list(two)
    B, W = 8, 4
    full = TrainLoader(paths, B, seed=11)
    stream = full.iterate()
    glob = [next(stream) for _ in range(12)]
    # same seed, new loader: identical; another seed: different
    again = TrainLoader(paths, B, seed=11).iterate()
    for (pa, ba), (pb, bb) in zip(glob, (next(again) for _ in range(12))):
        assert pa == pb and all(torch.equal(ba[k], bb[k]) for k in ba)
    other = next(TrainLoader(paths, B, seed=12).iterate())[1]
    assert not torch.equal(other["inputs"], glob[0][1]["inputs"])
    # rank r of W takes rows [r*B/W, (r+1)*B/W)
    ranks = [TrainLoader(paths, B, rank=r, world_size=W, seed=11).iterate() for r in range(W)]
    for position, batch in glob:
        pieces = [next(it) for it in ranks]
        assert all(p == position for p, _ in pieces)
        for k in batch:
            assert torch.equal(torch.cat([b[k] for _, b in pieces]), batch[k])
    # exact resume from a saved state
    loader = TrainLoader(paths, B, seed=11)
    it = loader.iterate()
    for _ in range(5):
        next(it)
    state = json.loads(json.dumps(loader.state_dict()))
    resumed = TrainLoader(paths, B, seed=11)
    resumed.load_state_dict(state)
    assert TrainLoader.position_from_state(state) == glob[4][0]
    for (pa, ba), (pb, bb) in zip(glob[5:], resumed.iterate()):
        assert pa == pb and torch.equal(ba["inputs"], bb["inputs"])
    # the epoch counter moves on; each epoch's order depends only on (seed, epoch)
    assert glob[-1][0].epoch >= 1
    e1 = TrainLoader(paths, B, seed=11).batch(Position(1, 0))
    first_of_epoch1 = next(b for p, b in zip([Position(0, 0)] + [p for p, _ in glob], [b for _, b in glob])
                           if p == Position(1, 0))
    assert torch.equal(e1["inputs"], first_of_epoch1["inputs"])
    with pytest.raises(ValueError):
        TrainLoader(paths, B, seed=12).load_state_dict(state)


def test_labels_ignore_and_dtypes(two):
    batch = next(TrainLoader(list(two), 8, seed=0).iterate())[1]
    assert all(v.dtype == torch.int32 for v in batch.values())
    assert batch["labels"].min() == -100 and not (batch["labels"] == 0).any()
    assert batch["inputs"].min() >= 0 and batch["inputs"].max() <= 11


def test_max_examples_per_puzzle(two):
    paths = list(two)
    loader = TrainLoader(paths, 4, seed=1, max_examples_per_puzzle=2)
    _, _, idents = loader._plan(0)
    runs, count = [], 1
    for a, b in zip(idents[:-1], idents[1:]):
        if a == b:
            count += 1
        else:
            runs.append(count)
            count = 1
    assert max(runs) <= 2
    unlimited = TrainLoader(paths, 4, seed=1)
    assert unlimited.steps_per_epoch(0) > loader.steps_per_epoch(0)
    with pytest.raises(ValueError):
        TrainLoader(paths, 4, max_examples_per_puzzle=0)


def test_several_paths_metadata_and_identifier_clash(two, tiny):
    a, b = two
    ma, mb = load_metadata([a], "train"), load_metadata([b], "train")
    merged = load_metadata([a, b], "train")
    assert merged.total_groups == ma.total_groups + mb.total_groups
    assert merged.total_puzzles == ma.total_puzzles + mb.total_puzzles
    # the reference's table size: the sum of the paths' counts (TRM-SPEC section 4), enough for b's range,
    # which starts after a's
    assert merged.num_puzzle_identifiers == ma.num_puzzle_identifiers + mb.num_puzzle_identifiers
    assert merged.num_puzzle_identifiers >= mb.num_puzzle_identifiers
    assert merged.mean_puzzle_examples == pytest.approx(
        (ma.mean_puzzle_examples * ma.total_puzzles + mb.mean_puzzle_examples * mb.total_puzzles) / merged.total_puzzles)
    names = load_identifiers([a, b])
    assert len(names) == mb.num_puzzle_identifiers and len(set(names[1:])) == len(names) - 1
    # every identifier the loader hands out has a row in the table
    _, _, idents = TrainLoader([a, b], 4, seed=0, epochs_per_iter=3)._plan(0)
    assert idents.max() < merged.num_puzzle_identifiers and idents.max() < len(names)
    with pytest.raises(ValueError, match="puzzle-identifiers-start"):
        TrainLoader([a, tiny], 4)  # both start at 1 with different tasks
    sets = [name for name, _, _ in TestLoader([b, b], 64)]
    assert sets[0] == "all" and sets[-1] == "all1"


def test_bad_arguments(tiny, tmp_path):
    with pytest.raises(ValueError):
        TrainLoader([tiny], 6, world_size=4)
    with pytest.raises(ValueError):
        TestLoader([tiny], 8, rank=2, world_size=2)
    with pytest.raises(ValueError, match="fewer examples"):
        TrainLoader([tiny], 4096)
    with pytest.raises(FileNotFoundError, match="dataset.json"):
        load_metadata([str(tmp_path)], "train")
    with pytest.raises(ValueError):
        TrainLoader.position_from_state({"epoch": 1})


# -- iterations of several epochs (TRM-SPEC section 5) --------------------------------------------------------------


def _stream(loader: TrainLoader, first_epoch: int) -> list[tuple[int, int, int]]:
    """The iteration's examples packed by a plain sequential reading of spec section 5: epoch after epoch, each
    chosen puzzle's examples in the epoch's random order; a puzzle that overflows the open batch is cut."""
    B, fill, out = loader.global_batch_size, 0, []
    for epoch in range(first_epoch, first_epoch + loader.epochs_per_iter):
        d = loader._draw(epoch, order_examples=True)
        first = np.cumsum(d.size) - d.size
        for i in range(d.size.shape[0]):
            take = min(int(d.allowed[i]), B - fill)
            offsets = d.within[first[i]:first[i] + d.size[i]] - first[i]
            out += [(int(d.part[i]), int(d.start[i] + o), int(d.ident[i])) for o in offsets[:take]]
            fill = (fill + take) % B
    return out[: len(out) // B * B]  # only the iteration's last incomplete batch is dropped


def test_pack_matches_a_sequential_packer():
    rng = np.random.default_rng(0)
    for _ in range(200):
        B = int(rng.integers(1, 12))
        allowed = rng.integers(0, 9, size=int(rng.integers(0, 15)))
        fill0 = int(rng.integers(0, B))
        takes, fill = pack(allowed, fill0, B)
        f, want = fill0, []
        for a in allowed.tolist():
            t = min(a, B - f)
            want.append(t)
            f = (f + t) % B
        assert takes.tolist() == want and fill == f


@pytest.mark.parametrize("E", [1, 3, 7])
def test_iteration_packs_epochs_together(two, E):
    paths = list(two)
    B = 16
    loader = TrainLoader(paths, B, seed=5, epochs_per_iter=E)
    for first in (0, E):
        parts, rows, idents = loader._plan(first)
        want = _stream(loader, first)
        assert list(zip(parts.tolist(), rows.tolist(), idents.tolist())) == want
        assert loader.steps_per_epoch(first) == len(want) // B
    # per epoch, the old rule drops every epoch's tail: an iteration of E epochs keeps at least as many batches
    single = TrainLoader(paths, B, seed=5)
    assert loader.steps_per_epoch(0) >= sum(single.steps_per_epoch(e) for e in range(E))
    # the batches served are the plan's, in order, and a batch may span two epochs
    got = [b for _, b in zip(range(loader.steps_per_epoch(0)), loader.iterate())]
    flat = torch.cat([b[1]["inputs"] for b in got]).numpy() if got else np.zeros((0, 900))
    per_path = [_arrays(p) for p in paths]
    parts, rows, _ = loader._plan(0)
    assert np.array_equal(flat, np.stack([per_path[p]["inputs"][r] for p, r in zip(parts, rows)]))
    if E > 1:
        with pytest.raises(ValueError, match="another eval_interval"):
            next(loader.iterate(start=Position(E - 1, 0)))  # batch 0 begins in epoch 0


def test_iteration_resume_mid_iteration_and_ranks(two):
    paths, B, W, E = list(two), 8, 2, 5
    whole = TrainLoader(paths, B, seed=2, epochs_per_iter=E)
    steps = whole.steps_per_epoch(0)
    stream = whole.iterate()
    glob = [next(stream) for _ in range(steps + 3)]  # into the second iteration
    assert glob[steps - 1][0] == Position(E, 0) and glob[steps][0].step == 1
    epochs = [p.epoch for p, _ in glob]
    assert epochs == sorted(epochs) and 0 < epochs[steps // 2] < E  # the epoch moves inside an iteration
    k = steps // 2  # resume in the middle of the first iteration from a saved state
    state = json.loads(json.dumps({**whole.state_dict(), "epoch": glob[k - 1][0].epoch, "step": glob[k - 1][0].step}))
    resumed = TrainLoader(paths, B, seed=2, epochs_per_iter=E)
    resumed.load_state_dict(state)
    for (pa, ba), (pb, bb) in zip(glob[k:], resumed.iterate()):
        assert pa == pb and torch.equal(ba["inputs"], bb["inputs"]) and torch.equal(ba["labels"], bb["labels"])
    ranks = [TrainLoader(paths, B, rank=r, world_size=W, seed=2, epochs_per_iter=E).iterate() for r in range(W)]
    for position, batch in glob:
        pieces = [next(it) for it in ranks]
        assert all(p == position for p, _ in pieces)
        for key in batch:
            assert torch.equal(torch.cat([b[key] for _, b in pieces]), batch[key])
    with pytest.raises(ValueError, match="epochs_per_iter"):
        TrainLoader(paths, B, seed=2, epochs_per_iter=3).load_state_dict(state)


def test_a_set_smaller_than_a_batch_trains(three):
    meta = load_metadata([three], "train")
    assert meta.total_groups == 1 and meta.mean_puzzle_examples == 3
    with pytest.raises(ValueError, match="fewer examples"):
        TrainLoader([three], 8, epochs_per_iter=2)  # 6 examples: no batch of 8
    loader = TrainLoader([three], 8, seed=0, epochs_per_iter=100)
    # 100 epochs of one 3-example puzzle: a batch takes 3 + 3 + 2 (the third puzzle cut, its last example
    # skipped, as the reference does), so 33 batches; only the iteration's last puzzle is left over
    assert loader.steps_per_epoch(0) == 33
    batches = [b for _, (_, b) in zip(range(3), loader.iterate())]
    assert all(b["inputs"].shape == (8, 900) for b in batches)
    parts, rows, idents = loader._plan(0)
    assert np.bincount(rows, minlength=rows.max() + 1).max() > 1  # the same examples come back epoch after epoch


def test_grid_noise_recolours_the_majority_colour_of_inputs_only(two):
    paths, B = list(two), 16
    clean = TrainLoader(paths, B, seed=4, epochs_per_iter=2)
    noisy = TrainLoader(paths, B, seed=4, epochs_per_iter=2, grid_noise_prob=0.5, grid_noise_fraction=0.1)
    changed = 0
    for (pc, bc), (pn, bn) in zip((x for _, x in zip(range(6), clean.iterate())),
                                  (x for _, x in zip(range(6), noisy.iterate()))):
        assert pc == pn and torch.equal(bc["labels"], bn["labels"])
        assert torch.equal(bc["puzzle_identifiers"], bn["puzzle_identifiers"])
        for a, b in zip(bc["inputs"], bn["inputs"]):
            diff = (a != b).nonzero().flatten()
            if diff.numel() == 0:
                continue
            changed += 1
            counts = torch.bincount(a[a >= 2], minlength=12)
            major = int(counts.argmax())
            assert (a[diff] == major).all() and (b[diff] >= 2).all() and (b[diff] != major).all()
            assert diff.numel() == max(1, int(0.1 * int(counts[major])))
    assert changed > 0
    # the noise depends only on (seed, position, row): another loader, or two ranks, see the same
    again = next(TrainLoader(paths, B, seed=4, epochs_per_iter=2, grid_noise_prob=0.5, grid_noise_fraction=0.1).iterate())[1]
    first = next(TrainLoader(paths, B, seed=4, epochs_per_iter=2, grid_noise_prob=0.5, grid_noise_fraction=0.1).iterate())[1]
    halves = [next(TrainLoader(paths, B, rank=r, world_size=2, seed=4, epochs_per_iter=2, grid_noise_prob=0.5,
                               grid_noise_fraction=0.1).iterate())[1] for r in range(2)]
    assert torch.equal(again["inputs"], first["inputs"])
    assert torch.equal(torch.cat([h["inputs"] for h in halves]), first["inputs"])


def test_test_loader_max_examples_per_puzzle(tiny):
    data = _arrays(tiny, "test")
    pidx = data["puzzle_indices"]
    assert np.diff(pidx).max() > 1  # the fixture has puzzles with several test examples
    want = [r for p in range(pidx.size - 1) for r in range(pidx[p], min(pidx[p + 1], pidx[p] + 1))]
    got = []
    for _, batch, n_valid in TestLoader([tiny], 4, max_examples_per_puzzle=1):
        got.append(batch["inputs"].numpy()[:n_valid])
    assert np.array_equal(np.concatenate(got), data["inputs"][want])
