"""The voter against a plain per-prediction implementation of TRM-SPEC section 9 on random data, and the voter's
invariances: block size, batching, results between adds, reused buffers, pooling, the deprecated `workers`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from trm.data.augment import inverse_dihedral, parse_variant_name
from trm.evaluation import rules
from trm.evaluation.vote import Voter, crop_sizes, main as vote_main

from grids import augment, crop_size, tokens


def crop(row: np.ndarray) -> np.ndarray:
    """The crop, one cell at a time."""
    h, w = crop_size(row)
    return (row.reshape(30, 30)[:h, :w] - 2).astype(np.uint8)


def plain_vote(puzzles, names, ids, inputs, preds, q, positions=None, keep=10, ks=(1, 2, 5, 10, 100, 1000)):
    """Section 9 one prediction at a time: grids compared as (shape, bytes), votes in dictionaries."""
    tests = {t: [np.array(p["input"], dtype=np.uint8) for p in puzzles[t]["test"]] for t in puzzles}
    counts = {"predictions": 0, "padding_rows": 0, "empty_crops": 0, "unmatched_predictions": 0}
    occurrence, votes = {}, {}
    for i, pid in enumerate(ids.tolist()):
        if pid == 0:
            counts["padding_rows"] += 1
            continue
        task, tid, mapping = parse_variant_name(names[pid])
        if task not in puzzles:
            counts["unmatched_predictions"] += 1
            continue
        inverse = np.argsort(mapping).astype(np.uint8)
        x, y = crop(inputs[i]), crop(preds[i])
        x = inverse_dihedral(inverse[x], tid) if x.size else x
        same = [j for j, t in enumerate(tests[task]) if t.shape == x.shape and (t == x).all()]
        j = same[0] if same else None
        if len(same) > 1:
            if positions is not None and int(positions[i]) in same:
                j = int(positions[i])
            else:
                seen = occurrence.get((pid, same[0]), 0)
                occurrence[(pid, same[0])] = seen + 1
                j = same[seen % len(same)]
        if not y.size:
            counts["empty_crops"] += 1
            continue
        if j is None:
            counts["unmatched_predictions"] += 1
            continue
        counts["predictions"] += 1
        g = np.ascontiguousarray(inverse_dihedral(inverse[y], tid))
        entry = votes.setdefault((task, j), {}).setdefault((g.shape, g.tobytes()), [g, []])
        entry[1].append(1.0 / (1.0 + np.exp(-float(q[i]))))
    out = {"submission": {}, "candidates": {}, "passed": {}, "counts": counts}
    totals, scored = np.zeros(len(ks)), 0
    for task, puzzle in puzzles.items():
        out["submission"][task], marks = [], []
        for j, pair in enumerate(puzzle["test"]):
            cands = sorted(votes.get((task, j), {}).values(),
                           key=lambda c: (-len(c[1]), -sum(sorted(c[1])) / len(c[1]), c[0].shape, c[0].tobytes()))
            out["candidates"][task, j] = [(c[0].tolist(), len(c[1])) for c in cands[:keep]]
            attempts = [c[0].tolist() for c in cands[:2]] or [pair["input"]]
            out["submission"][task].append({"attempt_1": attempts[0], "attempt_2": attempts[-1]})
            if pair.get("output") is not None:
                rank = next((r for r, c in enumerate(cands) if c[0].tolist() == pair["output"]), None)
                marks.append([rank is not None and rank < k for k in ks])
        out["passed"][task] = marks
        if marks:
            scored += 1
            totals += np.mean(marks, axis=0)
    out["pass"] = (totals / max(scored, 1)).tolist()
    return out


def random_case(seed: int, distinct_q: bool):
    """Tasks with 1-3 test inputs (some identical), variants, and rows whose inputs and predictions are right,
    wrong, empty, foreign or have stray tokens outside their crop; padding rows and a task that is not tested."""
    rng = np.random.default_rng(seed)
    puzzles, names = {}, ["<blank>"]
    for t in range(6):
        x = rng.integers(0, 10, size=tuple(rng.integers(1, 6, size=2)))
        tests = [{"input": (x if t % 3 == 2 and k else rng.integers(0, 10, size=(2, 3))).tolist(),
                  "output": rng.integers(0, 10, size=(2, 2)).tolist()} for k in range(1 + t % 3)]
        if t == 5:
            tests[0]["output"] = None
        puzzles[f"task{t}"] = {"train": [], "test": tests}
    rows = []
    for name, puzzle in list(puzzles.items()) + [("untested", {"test": [{"input": [[1]], "output": [[1]]}]})]:
        for v in range(8):
            tid, mapping = int(rng.integers(0, 8)), np.r_[0, rng.permutation(np.arange(1, 10))]
            if not v:
                tid, mapping = 0, np.arange(10)
            names.append(f"{name}|||t{tid}|||{''.join(map(str, mapping))}" if v else name)
            for j, test in enumerate(puzzle["test"]):
                guess = np.array(test["output"] if test["output"] is not None else [[3]])
                roll = rng.random()
                if roll < 0.35:
                    guess = rng.integers(0, 3, size=(2, 2))  # few distinct wrong grids: they collect votes
                elif roll < 0.45:
                    guess = rng.integers(0, 10, size=tuple(rng.integers(1, 4, size=2)))
                inp, pred = tokens(augment(test["input"], tid, mapping)), tokens(augment(guess, tid, mapping))
                if rng.random() < 0.1:
                    inp[29 * 30 + 29] = 5  # a stray colour outside the crop
                if rng.random() < 0.05:
                    inp = tokens(rng.integers(0, 10, size=(4, 4)))  # an input of no test
                if rng.random() < 0.05:
                    pred[:] = 0 if rng.random() < 0.5 else pred * (np.arange(900) >= 1)  # empty crop
                if rng.random() < 0.1:
                    pred[28 * 30] = 7  # a stray colour outside the crop
                rows.append((len(names) - 1, inp, pred, j))
    order = rng.permutation(len(rows))
    rows = [rows[i] for i in order] + [(0, np.zeros(900, np.uint8), np.zeros(900, np.uint8), 0)] * 3
    ids = np.array([r[0] for r in rows])
    q = rng.normal(size=len(rows)) if distinct_q else np.zeros(len(rows))
    return puzzles, names, ids, np.stack([r[1] for r in rows]), np.stack([r[2] for r in rows]), q, \
        np.array([r[3] for r in rows])


def dump(res) -> str:
    """Everything a result holds, as one string (byte-identical results give equal strings)."""
    votes = {t: [[(c.grid.tolist(), c.count, c.mean_q.hex(), c.correct) for c in v] for v in vs]
             for t, vs in res.votes.items()}
    return json.dumps([res.metrics, res.submission, votes, res.passed, res.fallback, res.num_candidates])


def feed(voter, ids, inputs, preds, q, positions=None, batch=37):
    for a in range(0, len(ids), batch):
        voter.add(ids[a:a + batch], inputs[a:a + batch], preds[a:a + batch], q[a:a + batch],
                  None if positions is None else positions[a:a + batch])


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("with_positions", [False, True])
def test_voter_matches_a_plain_implementation_of_the_spec(seed, with_positions):
    puzzles, names, ids, inputs, preds, q, positions = random_case(seed, distinct_q=seed % 2 == 0)
    positions = positions if with_positions else None
    voter = Voter(puzzles, names)
    feed(voter, ids, inputs, preds, q, positions)
    res, plain = voter.result(), plain_vote(puzzles, names, ids, inputs, preds, q, positions)
    assert res.submission == plain["submission"]
    for (task, j), cands in plain["candidates"].items():
        assert [(c.grid.tolist(), c.count) for c in res.votes[task][j]] == cands, (task, j)
    assert {t: [[m[k] for k in voter.pass_ks] for m in marks if m] for t, marks in res.passed.items()} == plain["passed"]
    assert [res.metrics[f"ARC/pass@{k}"] for k in voter.pass_ks] == pytest.approx(plain["pass"])
    assert {k: res.metrics[f"ARC/{k}"] for k in plain["counts"]} == plain["counts"]
    assert res.metrics["ARC/unmatched_predictions"] > 0 and res.metrics["ARC/empty_crops"] > 0
    assert any(puzzle["test"][1]["input"] == puzzle["test"][2]["input"] for puzzle in puzzles.values()
               if len(puzzle["test"]) == 3)  # the case has identical test inputs


def test_crop_ties_keep_the_fewest_rows():
    """Rows of widths 4, 4, 2, 2: the 2 x 4 and the 4 x 2 rectangles have the same area; the first one wins."""
    row = np.zeros((30, 30), np.uint8)
    row[:2, :4] = 3
    row[2:4, :2] = 5
    row[:4, 4], row[2:4, 2] = 1, 1
    assert [int(x[0]) for x in crop_sizes(row.reshape(1, -1))] == [2, 4] and crop(row.reshape(-1)).shape == (2, 4)
    ids = np.array([1])
    voter = Voter({"t": {"train": [], "test": [{"input": [[1]], "output": [[1, 1, 1, 1], [1, 1, 1, 1]]}]}},
                  ["<blank>", "t"])
    voter.add(ids, tokens([[1]])[None], row.reshape(1, -1), np.zeros(1))
    assert voter.result().submission["t"][0]["attempt_1"] == [[1, 1, 1, 1], [1, 1, 1, 1]]


@pytest.mark.parametrize("seed", [0, 1])
def test_block_size_and_batches_change_nothing(monkeypatch, seed):
    puzzles, names, ids, inputs, preds, q, _ = random_case(seed, distinct_q=True)
    dumps = []
    for chunk, batch in ((768, 37), (768, len(ids)), (16, 5)):
        monkeypatch.setattr(rules, "CHUNK", chunk)
        voter = Voter(puzzles, names)
        feed(voter, ids, inputs, preds, q, batch=batch)
        dumps.append(dump(voter.result()))
    assert dumps[0] == dumps[1] == dumps[2]


def test_results_between_adds_see_everything_added_so_far():
    puzzles, names, ids, inputs, preds, q, _ = random_case(2, distinct_q=True)
    voter, third, steps = Voter(puzzles, names), len(ids) // 3 + 1, []
    for a in range(0, len(ids), third):
        feed(voter, ids[a:a + third], inputs[a:a + third], preds[a:a + third], q[a:a + third])
        fresh = Voter(puzzles, names)
        feed(fresh, ids[:a + third], inputs[:a + third], preds[:a + third], q[:a + third])
        steps.append(dump(voter.result()))
        assert steps[-1] == dump(fresh.result())
    assert len(set(steps)) == len(steps)


def test_add_keeps_no_reference_to_its_arrays():
    """A caller that overwrites its buffers after add() (and one that says copy=False) gets the same result."""
    puzzles, names, ids, inputs, preds, q, _ = random_case(3, distinct_q=True)
    expected = Voter(puzzles, names)
    feed(expected, ids, inputs, preds, q)
    for copy in (True, False):
        voter = Voter(puzzles, names)
        buf_in, buf_pred = np.empty((40, 900), np.uint8), np.empty((40, 900), np.uint8)
        for a in range(0, len(ids), 40):
            k = min(40, len(ids) - a)
            buf_in[:k], buf_pred[:k] = inputs[a:a + k], preds[a:a + k]
            voter.add(ids[a:a + k], buf_in[:k], buf_pred[:k], q[a:a + k], copy=copy)
            buf_in[:], buf_pred[:] = 0, 0
        assert dump(voter.result()) == dump(expected.result())


def test_pooling_is_the_union_of_the_votes():
    puzzles, names, ids, inputs, preds, q, positions = random_case(4, distinct_q=True)
    half = len(ids) // 2
    parts = []
    for sl in (slice(0, half), slice(half, None)):
        part = Voter(puzzles, names, prefix="ARC_pooled")
        feed(part, ids[sl], inputs[sl], preds[sl], q[sl], positions[sl])
        parts.append(part)
    whole = Voter(puzzles, names, prefix="ARC_pooled")
    feed(whole, ids, inputs, preds, q, positions)
    a, b = parts
    b_then_a = Voter(puzzles, names, prefix="ARC_pooled")
    b_then_a.absorb(b)
    b_then_a.absorb(a)
    a.absorb(b)
    assert dump(a.result()) == dump(whole.result()) == dump(b_then_a.result())


@pytest.mark.parametrize("run", ["evaluator_true_labels", "evaluator_half_wrong"])
def test_workers_is_deprecated_and_changes_nothing(fixtures_dir, tmp_path, capsys, run):
    torch = pytest.importorskip("torch")
    fed = {k: v.numpy() for k, v in torch.load(fixtures_dir / run / "fed_predictions.pt").items()}
    args = [fed[k] for k in ("puzzle_identifiers", "inputs", "preds", "q_halt_logits")]
    with pytest.warns(DeprecationWarning, match="workers"):
        old_style = Voter.from_dataset(fixtures_dir / "tiny_dataset", workers=2)
    plain = Voter.from_dataset(fixtures_dir / "tiny_dataset")
    for voter in (old_style, plain):
        voter.add(*args)
    assert dump(old_style.result()) == dump(plain.result())
    np.savez(tmp_path / "outputs.npz", **fed)
    common = ["--outputs", str(tmp_path / "outputs.npz"), "--data", str(fixtures_dir / "tiny_dataset")]
    assert vote_main(common + ["--output-dir", str(tmp_path / "a"), "--workers", "2"]) == 0
    assert "--workers is deprecated" in capsys.readouterr().err
    assert vote_main(common + ["--output-dir", str(tmp_path / "b")]) == 0
    assert "deprecated" not in capsys.readouterr().err
    for name in ("submission.json", "pass_at_k.json", "metrics.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
        if name != "metrics.json":
            assert (tmp_path / "a" / name).read_bytes() == (fixtures_dir / run / name).read_bytes()


def test_voting_modules_do_not_import_the_cli_module():
    """rules, kernels, files and report stand below vote.py (the CLI and re-exports): no import cycle."""
    import ast
    import inspect

    from trm.evaluation import files, kernels, report

    for module in (rules, kernels, files, report):
        tree = ast.parse(inspect.getsource(module))
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert "trm.evaluation.vote" not in imported and "trm.evaluation" not in imported, module.__name__
