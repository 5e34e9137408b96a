"""Time the reference's own ARC evaluator (evaluators/arc.py) on predictions written by bench_vote.py.

    <python with torch, numba, pydantic, argdantic> bench/reference_vote.py --reference-dir ../TinyRecursiveModels \
        --work <folder written by bench_vote.py> [--batch 768] [--repeats 3]

bench_vote.py --reference-dir starts this in a subprocess, so that the reference's voter is measured in the same
run as ours: `--work` holds identifiers.json, test_puzzles.json and predictions.npz (puzzle_identifiers, inputs,
preds, q_halt_logits). The evaluator is used as the reference's trainer uses it: update_batch per batch of
torch tensors, then result() (a one-process gloo group for its gather), on a fresh evaluator each repeat; the
best of `--repeats` is kept, as bench_vote.py does for ours. Numba compiles the reference's crop on a first
small batch, which is not timed. Prints one JSON line: predictions, seconds, CPU seconds, the reference's pass@K.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference-dir", required=True, help="a checkout of the reference code")
    parser.add_argument("--work", required=True, help="folder written by bench_vote.py")
    parser.add_argument("--batch", type=int, default=768)
    parser.add_argument("--repeats", type=int, default=1, help="timed runs; the best is reported")
    args = parser.parse_args()
    root = Path(args.reference_dir).resolve()
    if not (root / "evaluators" / "arc.py").is_file():
        raise SystemExit(f"{root}: evaluators/arc.py not found (expected a checkout of the reference code)")
    sys.path.insert(0, str(root))
    import numpy as np
    import torch
    import torch.distributed as dist
    from dataset.common import PuzzleDatasetMetadata
    from evaluators.arc import ARC

    work = Path(args.work)
    data = np.load(work / "predictions.npz")
    ids, inputs, preds = data["puzzle_identifiers"], data["inputs"], data["preds"]
    q = data["q_halt_logits"]
    n = len(ids)
    identifiers = json.loads((work / "identifiers.json").read_text())
    meta = PuzzleDatasetMetadata(pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=12, seq_len=900,
                                 num_puzzle_identifiers=len(identifiers), total_groups=1, mean_puzzle_examples=1.0,
                                 total_puzzles=1, sets=["all"])
    with socket.socket() as s:  # a free loopback port for the one-process group
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        def batch(a: int, b: int):
            return ({"puzzle_identifiers": torch.from_numpy(ids[a:b].astype(np.int32)),
                     "inputs": torch.from_numpy(inputs[a:b].astype(np.int32))},
                    {"preds": torch.from_numpy(preds[a:b].astype(np.int32)),
                     "q_halt_logits": torch.from_numpy(q[a:b].astype(np.float32))})

        warm = ARC(str(work), meta)
        warm.update_batch(*batch(0, min(n, 8)))  # numba compiles _crop here
        batches = [batch(a, a + args.batch) for a in range(0, n, args.batch)]  # tensors ready, as on the trainer
        seconds = cpu = float("inf")
        for _ in range(args.repeats):
            evaluator = ARC(str(work), meta)
            t0, c0 = time.perf_counter(), time.process_time()
            for b, p in batches:
                evaluator.update_batch(b, p)
            metrics = evaluator.result(None, rank=0, world_size=1)
            seconds, cpu = min(seconds, time.perf_counter() - t0), min(cpu, time.process_time() - c0)
    finally:
        dist.destroy_process_group()
    print(json.dumps({"predictions": n, "seconds": seconds, "cpu_seconds": cpu, "metrics": metrics}))


if __name__ == "__main__":
    main()
