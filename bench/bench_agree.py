"""Cost of the per-step SIGTERM agreement (one all_reduce of two int32 flags) against a training step, same run.

    .venv/bin/python bench/bench_agree.py                    # 2 gloo ranks on CPU, cpu-tiny steps
    .venv/bin/python bench/bench_agree.py --calls 5000 --steps 40

Part 1 times `--calls` back-to-back all_reduce(MAX) calls of the 2-flag tensor the trainer sends at every step
boundary (trm.train.Trainer._agree), in 2 gloo processes. Part 2 runs `trm train preset=cpu-tiny` under
torchrun with 2 gloo ranks for `--steps` steps and takes the median step time from metrics.jsonl. The ratio is
the share of a step that the agreement costs. (On GPUs it is one tiny NCCL all_reduce per step, next to the
gradient all_reduce the step already does.)
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

WORKER = """
import os, sys, time, torch, torch.distributed as dist
dist.init_process_group("gloo")
flags = torch.tensor([0, 0], dtype=torch.int32)
for _ in range(50):
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
dist.barrier()
n = int(sys.argv[1])
start = time.perf_counter()
for _ in range(n):
    flags = torch.tensor([0, 0], dtype=torch.int32)
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    flags.tolist()
elapsed = time.perf_counter() - start
if dist.get_rank() == 0:
    print(elapsed / n)
dist.destroy_process_group()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def agreement_seconds(calls: int) -> float:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
           str(free_port()), "--no-python", sys.executable, "-c", WORKER, str(calls)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if out.returncode:
        raise SystemExit(out.stderr[-2000:])
    return float(out.stdout.strip().splitlines()[-1])


def step_seconds(steps: int, data: str) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), WANDB_MODE="disabled")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
               str(free_port()), "-m", "trm.train", "preset=cpu-tiny", "global_batch_size=8", "micro_batch_size=null",
               "num_threads=1", "progress=False", "wandb=off", "epochs=1000", "eval_interval=1000",
               f"max_steps={steps}", f"data_paths=[{data}]", f"run_dir={tmp}/run"]
        out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
        if out.returncode:
            raise SystemExit(out.stderr[-2000:])
        times = [json.loads(line)["time"] for line in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
    gaps = [b - a for a, b in zip(times[5:], times[6:])]  # after warm-up
    return statistics.median(gaps)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "reference-fixtures" / "tiny_dataset"),
                        help="a built dataset (default: the reference tiny dataset in ../shared)")
    args = parser.parse_args()
    t0 = time.perf_counter()
    agree = agreement_seconds(args.calls)
    step = step_seconds(args.steps, args.data)
    print(f"load average {os.getloadavg()[0]:.2f}; {time.perf_counter() - t0:.0f} s")
    print(f"agreement all_reduce (2 gloo ranks): {agree * 1e6:8.1f} us per step")
    print(f"cpu-tiny train step (2 gloo ranks):  {step * 1e3:8.1f} ms per step")
    print(f"ratio: the agreement is {agree / step:.4%} of a step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
