"""Train/test loaders (trm.data.loader): spec section 5, rank slicing, determinism, exact resume, several paths."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from trm.data.build import BuildConfig, build_dataset
from trm.data.loader import Position, TestLoader, TrainLoader, load_identifiers, load_metadata

from test_data_build import write_subset


@pytest.fixture(scope="module")
def tiny(fixtures_dir) -> str:
    return str(fixtures_dir / "tiny_dataset")


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
    assert merged.num_puzzle_identifiers == mb.num_puzzle_identifiers  # b's range starts after a's
    assert merged.mean_puzzle_examples == pytest.approx(
        (ma.mean_puzzle_examples * ma.total_puzzles + mb.mean_puzzle_examples * mb.total_puzzles) / merged.total_puzzles)
    names = load_identifiers([a, b])
    assert len(names) == merged.num_puzzle_identifiers and len(set(names[1:])) == len(names) - 1
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
