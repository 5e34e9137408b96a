"""Voting: reference parity of `trm vote`, crop/de-augmentation, ranking and the fixed reference bugs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from trm.evaluation.vote import Voter, crop_sizes, load_dataset_files, main as vote_main, parse_variant

from grids import augment, crop_size, tokens


def name_of(task: str, tid: int, mapping) -> str:
    return f"{task}|||t{tid}|||{''.join(str(int(x)) for x in mapping)}"


def feed(voter, rows, q=None):
    """rows: list of (identifier, input grid or token row, pred grid or token row)."""
    ids = np.array([r[0] for r in rows], dtype=np.int32)
    inp = np.stack([r[1] if np.asarray(r[1]).ndim == 1 else tokens(r[1]) for r in rows])
    pred = np.stack([r[2] if np.asarray(r[2]).ndim == 1 else tokens(r[2]) for r in rows])
    qs = np.zeros(len(rows), np.float32) if q is None else np.asarray(q, np.float32)
    voter.add(ids, inp, pred, qs)


# ------------------------------------------------------------------------- reference parity (trm vote CLI)


@pytest.mark.parametrize("run", ["evaluator_true_labels", "evaluator_half_wrong"])
def test_vote_cli_reproduces_reference(fixtures_dir, tmp_path, run):
    torch = pytest.importorskip("torch")
    fed = torch.load(fixtures_dir / run / "fed_predictions.pt")
    np.savez(tmp_path / "outputs.npz", **{k: v.numpy() for k, v in fed.items()})
    out = tmp_path / "vote"
    rc = vote_main(["--outputs", str(tmp_path / "outputs.npz"), "--data", str(fixtures_dir / "tiny_dataset"),
                    "--output-dir", str(out)])
    assert rc == 0
    for name in ("pass_at_k.json", "submission.json"):
        ours, ref = (out / name).read_bytes(), (fixtures_dir / run / name).read_bytes()
        assert json.loads(ours) == json.loads(ref), name
        assert ours == ref, f"{name}: same values but different bytes"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["ARC/test_inputs_without_predictions"] == 0
    assert metrics["ARC/predictions"] == 21
    for name in ("report.html", "summary.md"):
        assert (out / name).stat().st_size > 0


def test_vote_cli_merges_split_outputs(fixtures_dir, tmp_path):
    torch = pytest.importorskip("torch")
    fed = {k: v.numpy() for k, v in torch.load(fixtures_dir / "evaluator_half_wrong" / "fed_predictions.pt").items()}
    np.savez(tmp_path / "a.npz", **{k: v[:8] for k, v in fed.items()})
    np.savez(tmp_path / "b.npz", **{k: v[8:] for k, v in fed.items()})
    vote_main(["--outputs", str(tmp_path / "a.npz"), "--outputs", str(tmp_path / "b.npz"),
               "--data", str(fixtures_dir / "tiny_dataset"), "--output-dir", str(tmp_path / "out")])
    ref = fixtures_dir / "evaluator_half_wrong"
    assert (tmp_path / "out" / "submission.json").read_bytes() == (ref / "submission.json").read_bytes()
    assert json.loads((tmp_path / "out" / "pass_at_k.json").read_text())["ARC/pass@1"] == pytest.approx(0.4)


def test_true_labels_score_one_on_tiny_dataset(fixtures_dir):
    root = fixtures_dir / "tiny_dataset"
    voter = Voter.from_dataset(root)
    inputs = np.load(root / "test" / "all__inputs.npy")
    labels = np.load(root / "test" / "all__labels.npy")
    pidx = np.load(root / "test" / "all__puzzle_indices.npy")
    pids = np.load(root / "test" / "all__puzzle_identifiers.npy")
    ids = np.repeat(pids, np.diff(pidx))
    # fed in two batches, the second padded like the loader does
    voter.add(ids[:8], inputs[:8], labels[:8], np.zeros(8))
    pad = 16 - (len(ids) - 8)
    voter.add(np.r_[ids[8:], np.zeros(pad, np.int32)], np.r_[inputs[8:], np.zeros((pad, 900), np.uint8)],
              np.r_[labels[8:], np.zeros((pad, 900), np.uint8)], np.zeros(16))
    res = voter.result()
    assert all(res.metrics[f"ARC/pass@{k}"] == 1.0 for k in (1, 2, 5, 10, 100, 1000))
    assert res.metrics["ARC/padding_rows"] == pad
    puzzles, _ = load_dataset_files(root)
    for task, entries in res.submission.items():
        assert [e["attempt_1"] for e in entries] == [t["output"] for t in puzzles[task]["test"]]


# ------------------------------------------------------------------------- crop and de-augmentation


def test_crop_sizes_match_a_plain_loop():
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(300):
        h, w = rng.integers(0, 31, size=2)
        g = np.zeros((30, 30), np.uint8)
        g[:h, :w] = rng.integers(2, 12, size=(h, w))
        for _ in range(rng.integers(0, 4)):  # stray PAD / EOS inside, ragged edges
            g[rng.integers(0, 30), rng.integers(0, 30)] = rng.integers(0, 2)
        rows.append(g.reshape(-1))
    rows.append(np.full(900, 5, np.uint8))  # full canvas
    rows.append(np.zeros(900, np.uint8))  # empty
    rows = np.stack(rows)
    h, w = crop_sizes(rows)
    assert [(int(a), int(b)) for a, b in zip(h, w)] == [crop_size(r) for r in rows]
    assert (h[-2], w[-2]) == (30, 30) and (h[-1], w[-1]) == (0, 0)


@pytest.mark.parametrize("tid", range(8))
def test_every_variant_is_undone(tid):
    rng = np.random.default_rng(tid)
    x = rng.integers(0, 10, size=(3, 5))
    y = rng.integers(0, 10, size=(4, 2))
    mapping = np.r_[0, rng.permutation(np.arange(1, 10))]
    puzzles = {"task": {"train": [], "test": [{"input": x.tolist(), "output": y.tolist()}]}}
    identifiers = ["<blank>", "task", name_of("task", tid, mapping)]
    voter = Voter(puzzles, identifiers)
    feed(voter, [(2, augment(x, tid, mapping), augment(y, tid, mapping))])
    res = voter.result()
    assert res.submission["task"][0]["attempt_1"] == y.tolist()
    assert res.metrics["ARC/pass@1"] == 1.0


def test_parse_variant_rejects_bad_names():
    assert parse_variant("abc")[1] == 0
    task, tid, mapping = parse_variant("abc|||t3|||0712459368")
    assert (task, tid, mapping.tolist()) == ("abc", 3, [0, 7, 1, 2, 4, 5, 9, 3, 6, 8])
    for bad in ("abc|||t9|||0123456789", "abc|||x1|||0123456789", "abc|||t1|||0113456789", "abc|||t1"):
        with pytest.raises(ValueError, match="abc"):
            parse_variant(bad)


@pytest.mark.parametrize("extra", ["", "é"])
def test_bulk_name_parsing_matches_one_at_a_time(extra):
    """_parse_names (tails and task prefixes read as arrays) gives what parse_variant gives name by name: runs of
    one task, task names that are prefixes of others, short and plain names, and non-ASCII names."""
    from trm.evaluation.vote import _parse_names

    rng = np.random.default_rng(5)
    names = []
    for task in ["ab", "ab", "abc", "a" + extra, "xyz0123456789abcdefgh", "ab", "q", ""]:
        for _ in range(int(rng.integers(1, 4))):
            names.append(name_of(task, int(rng.integers(0, 8)), np.r_[0, rng.permutation(np.arange(1, 10))]))
        names.append(task)  # the original
    names += ["|||t3|||0712459368", "ab|||t3|||0712459368"]
    tasks, run, tids, mappings = _parse_names(names)
    assert len(run) == len(names) and run[0] == 0 and (np.diff(run) >= 0).all()
    for i, name in enumerate(names):
        task, tid, mapping = parse_variant(name)
        assert (tasks[run[i]], int(tids[i]), mappings[i].tolist()) == (task, tid, mapping.tolist()), name
    for bad in ("abc|||t9|||0123456789", "abc|||t3|||071245936", "abc|||0712459368"):
        with pytest.raises(ValueError, match="abc"):
            _parse_names(names + [bad])


# ------------------------------------------------------------------------- ranking


def _toy(n_variants=4, outputs=True):
    x = [[1, 2], [3, 4]]
    y = [[5, 5], [6, 6]]
    pair = {"input": x, "output": y} if outputs else {"input": x}
    puzzles = {"t": {"train": [], "test": [pair]}}
    rng = np.random.default_rng(1)
    maps = [np.r_[0, rng.permutation(np.arange(1, 10))] for _ in range(n_variants)]
    ids = ["<blank>", "t"] + [name_of("t", i % 8, m) for i, m in enumerate(maps)]
    return puzzles, ids, x, y, maps


def test_rank_by_count_then_mean_q():
    puzzles, ids, x, y, maps = _toy()
    wrong = [[7, 7], [7, 7]]
    voter = Voter(puzzles, ids)
    rows = [(1, x, y), (2, augment(x, 0, maps[0]), augment(wrong, 0, maps[0])),
            (3, augment(x, 1, maps[1]), augment(wrong, 1, maps[1]))]
    feed(voter, rows, q=[5.0, -5.0, -5.0])
    res = voter.result()
    assert res.submission["t"][0] == {"attempt_1": wrong, "attempt_2": y}  # 2 votes beat 1 despite q
    assert [c.count for c in res.votes["t"][0]] == [2, 1]
    assert res.metrics["ARC/pass@1"] == 0.0 and res.metrics["ARC/pass@2"] == 1.0
    voter = Voter(puzzles, ids)  # equal counts: higher mean sigmoid(q) first
    feed(voter, rows[:2], q=[-1.0, 2.0])
    assert voter.result().submission["t"][0]["attempt_1"] == wrong


def test_ties_are_deterministic_whatever_the_order():
    puzzles, ids, x, y, maps = _toy(n_variants=3)
    grids = [[[3]], [[1, 1]], [[2], [2]], [[0, 9]]]
    rows = [(1 + i % 4, augment(x, (i % 4 - 1) % 8 if i % 4 else 0, maps[i % 4 - 1]) if i % 4 else x,
             augment(g, (i % 4 - 1) % 8, maps[i % 4 - 1]) if i % 4 else g) for i, g in enumerate(grids)]
    results = []
    for perm in ([0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1]):
        voter = Voter(puzzles, ids)
        feed(voter, [rows[i] for i in perm], q=[0.3] * 4)
        results.append(voter.result().submission)
    assert results[0] == results[1] == results[2]
    # documented rule: smaller height first, then width, then cells
    assert results[0]["t"][0] == {"attempt_1": [[3]], "attempt_2": [[0, 9]]}


# ------------------------------------------------------------------------- the reference's bugs, fixed


def test_test_input_without_prediction_gets_fallback_and_counts():
    x1, y1, x2, y2 = [[1]], [[2]], [[3, 3]], [[4, 4]]
    puzzles = {"t": {"train": [], "test": [{"input": x1, "output": y1}, {"input": x2, "output": y2}]},
               "u": {"train": [], "test": [{"input": x1, "output": y1}]}}
    voter = Voter(puzzles, ["<blank>", "t", "u"])
    feed(voter, [(1, x1, y1)])  # nothing for t's second test input, nothing at all for u
    res = voter.result()
    assert res.submission["t"][1] == {"attempt_1": x2, "attempt_2": x2}
    assert res.submission["u"] == [{"attempt_1": x1, "attempt_2": x1}]
    assert res.metrics["ARC/test_inputs_without_predictions"] == 2
    assert res.metrics["ARC/pass@2"] == pytest.approx((0.5 + 0.0) / 2)
    assert res.fallback == {"t": [False, True], "u": [True]}


def test_empty_crop_never_reaches_submission():
    puzzles, ids, x, y, maps = _toy()
    empty = np.zeros(900, np.uint8)
    eos_first = tokens(y)
    eos_first[0] = 1
    voter = Voter(puzzles, ids)
    feed(voter, [(1, x, empty), (2, augment(x, 0, maps[0]), eos_first), (3, augment(x, 1, maps[1]), empty)])
    res = voter.result()
    assert res.metrics["ARC/empty_crops"] == 3
    assert res.submission["t"][0] == {"attempt_1": x, "attempt_2": x}  # fallback, no 0x0 grid
    voter = Voter(puzzles, ids)
    feed(voter, [(1, x, empty), (2, augment(x, 0, maps[0]), augment(y, 0, maps[0]))])
    assert voter.result().submission["t"][0] == {"attempt_1": y, "attempt_2": y}


def test_identical_test_inputs_stay_apart():
    x, y0, y1 = [[1, 2]], [[3]], [[4, 4]]
    puzzles = {"t": {"train": [], "test": [{"input": x, "output": y0}, {"input": [[9]], "output": [[9]]},
                                           {"input": x, "output": y1}]}}
    m = np.r_[0, np.arange(9, 0, -1)]
    ids = ["<blank>", "t", name_of("t", 6, m)]
    # dataset order: per puzzle variant, test inputs in order
    rows = [(1, x, y0), (1, [[9]], [[9]]), (1, x, y1)]
    rows += [(2, augment(x, 6, m), augment(y0, 6, m)), (2, augment([[9]], 6, m), augment([[9]], 6, m)),
             (2, augment(x, 6, m), augment(y1, 6, m))]
    voter = Voter(puzzles, ids)
    feed(voter, rows)
    res = voter.result()
    assert [e["attempt_1"] for e in res.submission["t"]] == [y0, [[9]], y1]
    assert res.metrics["ARC/pass@1"] == 1.0
    assert [len(v) for v in res.votes["t"]] == [1, 1, 1]
    # explicit positions win over feeding order
    voter = Voter(puzzles, ids)
    order = [2, 1, 0, 5, 4, 3]
    r = [rows[i] for i in order]
    voter.add(np.array([a for a, _, _ in r]), np.stack([tokens(b) for _, b, _ in r]),
              np.stack([tokens(c) for _, _, c in r]), np.zeros(6), positions=np.array([2, 1, 0, 2, 1, 0]))
    assert voter.result().metrics["ARC/pass@1"] == 1.0


def test_unknown_outputs_score_nothing_but_are_submitted():
    x, y = [[1]], [[2]]
    puzzles = {"known": {"train": [], "test": [{"input": x, "output": y}]},
               "hidden": {"train": [], "test": [{"input": x}, {"input": [[5]], "output": None}]}}
    voter = Voter(puzzles, ["<blank>", "known", "hidden"])
    feed(voter, [(1, x, y), (2, x, [[7]])])
    res = voter.result()
    assert res.metrics["ARC/pass@1"] == 1.0
    assert res.metrics["ARC/tasks_scored"] == 1 and res.metrics["ARC/tasks"] == 2
    assert res.submission["hidden"] == [{"attempt_1": [[7]], "attempt_2": [[7]]},
                                        {"attempt_1": [[5]], "attempt_2": [[5]]}]
    assert res.votes["hidden"][0][0].correct is None


def test_pooled_voting_has_its_own_names_and_pools():
    puzzles, ids, x, y, maps = _toy()
    wrong = [[7]]
    step1 = Voter(puzzles, ids)
    feed(step1, [(1, x, wrong), (2, augment(x, 0, maps[0]), augment(y, 0, maps[0]))], q=[1.0, 0.0])
    step2 = Voter(puzzles, ids)
    feed(step2, [(1, x, y)])
    pooled = Voter(puzzles, ids, prefix="ARC_pooled")
    pooled.absorb(step1)
    pooled.absorb(step2)
    r1, r2, rp = step1.result(), step2.result(), pooled.result()
    assert r1.metrics["ARC/pass@1"] == 0.0 and r2.metrics["ARC/pass@1"] == 1.0
    assert "ARC/pass@1" not in rp.metrics and rp.metrics["ARC_pooled/pass@1"] == 1.0
    assert rp.votes["t"][0][0].count == 2


def test_bad_batches_are_rejected():
    puzzles, ids, x, y, _ = _toy()
    voter = Voter(puzzles, ids)
    with pytest.raises(ValueError, match="identifier out of range"):
        voter.add(np.array([99]), tokens(x)[None], tokens(y)[None], np.zeros(1))
    with pytest.raises(ValueError, match="900"):
        voter.add(np.array([1]), np.zeros((1, 10)), np.zeros((1, 10)), np.zeros(1))


@pytest.mark.parametrize("tid", range(8))
def test_empty_crops_under_every_transform(tid):
    puzzles, ids, x, y, maps = _toy(n_variants=8)
    voter = Voter(puzzles, ids)
    eos = np.zeros(900, np.uint8)
    eos[0] = 1
    feed(voter, [(2 + tid, augment(x, tid, maps[tid]), np.zeros(900, np.uint8)),
                 (2 + tid, augment(x, tid, maps[tid]), eos),
                 (2 + tid, augment(x, tid, maps[tid]), augment(y, tid, maps[tid]))])
    res = voter.result()
    assert res.metrics["ARC/empty_crops"] == 2 and res.metrics["ARC/pass@1"] == 1.0


def test_inputs_with_junk_outside_the_crop_still_match():
    """The reference keys by the cropped input; stray tokens beyond the EOS edge do not matter."""
    x1, y1, x2, y2 = [[1, 2]], [[3]], [[4], [5]], [[6, 6]]
    puzzles = {"t": {"train": [], "test": [{"input": x1, "output": y1}, {"input": x2, "output": y2}]}}
    m = np.r_[0, np.arange(9, 0, -1)]
    voter = Voter(puzzles, ["<blank>", "t", name_of("t", 3, m)])
    junk = tokens(augment(x2, 3, m))
    junk[29 * 30 + 29] = 7  # a colour far from the grid
    feed(voter, [(2, junk, augment(y2, 3, m)), (2, augment(x1, 3, m), augment(y1, 3, m))])
    res = voter.result()
    assert res.metrics["ARC/pass@1"] == 1.0 and res.metrics["ARC/unmatched_predictions"] == 0
    feed(voter, [(2, tokens([[9, 9, 9]]), augment(y1, 3, m))])  # an input of no test: not counted as a vote
    assert voter.result().metrics["ARC/unmatched_predictions"] == 1


def test_dataset_rows_out_of_test_order_are_not_trusted(fixtures_dir, tmp_path):
    """from_dataset takes expected inputs from the test split, but checks them against test_puzzles.json."""
    root = tmp_path / "ds"
    shutil.copytree(fixtures_dir / "tiny_dataset", root)
    for name in ("all__inputs.npy", "all__labels.npy"):  # swap the two test inputs of 142ca369's variants
        arr = np.load(root / "test" / name)
        for a in (3, 5, 7):
            arr[[a, a + 1]] = arr[[a + 1, a]]
        (root / "test" / name).chmod(0o644)
        np.save(root / "test" / name, arr)
    voter = Voter.from_dataset(root)
    ids = np.repeat(np.load(root / "test" / "all__puzzle_identifiers.npy"),
                    np.diff(np.load(root / "test" / "all__puzzle_indices.npy")))
    voter.add(ids, np.load(root / "test" / "all__inputs.npy"), np.load(root / "test" / "all__labels.npy"),
              np.zeros(len(ids)))
    res = voter.result()
    assert res.metrics["ARC/pass@1"] == 1.0 and res.metrics["ARC/unmatched_predictions"] == 0
    assert [len(v) for v in res.votes["142ca369"]] == [1, 1]


def test_prepared_rows_are_compared_with_what_is_fed():
    """prepare() keeps the split's rows as expected inputs: fed rows that differ still match through their crop,
    and a second prepare() with other rows leaves the first one's expectations intact."""
    x1, y1, x2, y2 = [[1, 2]], [[3]], [[4], [5]], [[6, 6]]
    puzzles = {"t": {"train": [], "test": [{"input": x1, "output": y1}, {"input": x2, "output": y2}]}}
    maps = [np.r_[0, np.arange(9, 0, -1)], np.r_[0, np.roll(np.arange(1, 10), 2)]]
    names = ["<blank>", "t", name_of("t", 3, maps[0]), name_of("t", 6, maps[1])]
    rows = {(i, j): tokens(augment(x, t, m)) for i, t, m in ((2, 3, maps[0]), (3, 6, maps[1]))
            for j, x in enumerate((x1, x2))}

    def voter_with(split_ids):
        voter = Voter(puzzles, names)
        for pid in split_ids:  # one prepare() per variant: different arrays
            voter.prepare([pid, pid], inputs=np.stack([rows[pid, 0], rows[pid, 1]]).astype(np.int32),
                          positions=[0, 1])
        return voter

    junk = rows[2, 1].copy()
    junk[29 * 30 + 29] = 7  # differs from the prepared row outside the crop
    fed = [(2, junk, augment(y2, 3, maps[0])), (2, rows[2, 0], augment(y1, 3, maps[0])),
           (3, rows[3, 1], augment(y2, 6, maps[1])), (3, rows[3, 0], augment(y1, 6, maps[1])),
           (3, tokens([[9, 9, 9]]), augment(y1, 6, maps[1]))]  # an input of no test
    results = []
    for split in ([], [2], [2, 3], [3, 2]):
        voter = voter_with(split)
        feed(voter, fed)
        results.append(voter.result())
    for res in results:
        assert res.metrics["ARC/pass@1"] == 1.0
        assert res.metrics["ARC/predictions"] == 4 and res.metrics["ARC/unmatched_predictions"] == 1
        assert [[c.count for c in v] for v in res.votes["t"]] == [[2], [2]]
        assert res.submission == results[0].submission
