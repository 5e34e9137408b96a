"""Post-training (test-time adaptation) on CPU: does adapting a pretrained model to held-out tasks' demonstration
pairs help, and does the embeddings-first phase (freeze_weights_epochs) matter?

    .venv/bin/python bench/bench_posttrain.py                          # ../shared/arc-agi beside the checkout
    .venv/bin/python bench/bench_posttrain.py --pretrain-steps 600 --post-epochs 240 --threads 2
    .venv/bin/python bench/bench_posttrain.py --held-out 6150a2bd,9dfd6313 --keep runs/bench-posttrain   # keep the runs

1. Pretrain `cpu-tiny` on six ARC-AGI-1 training tasks (bench_learn.py's: flips, rotations, a transpose, a colour
   swap; num_aug 8) for --pretrain-steps steps.
2. Build the held-out tasks (other flips, rotations, colour swaps, a shift) as a test set: their demonstration
   pairs are the train split, their test inputs (solutions known) the test split.
3. Evaluate on the held-out test inputs (ARC voting over the augmentations, pass@1/pass@2):
   - the pretrained checkpoint as it is (held-out puzzles get the mean puzzle-embedding row: no post-training);
   - after post-training on the demonstration pairs for --post-epochs epochs with the Trelis schedule's
     embeddings-first phase (freeze_weights, the first 5/24 of the epochs, as cfg_posttrain's 3125 of 15000);
   - after the same post-training with every weight training from the start.
Each run goes through `python -m trm.train` (load_checkpoint, the warm start by identifier name); the numbers are
printed whatever they are. Small sets, few steps: expect noisy numbers; the bench shows the pipeline works end to
end and how large the effects are at this scale.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_learn import TASKS as PRETRAIN_TASKS  # noqa: E402

HELD_OUT = {
    "6150a2bd": "rotate 180",
    "9dfd6313": "transpose",
    "b1948b0a": "colour swap",
    "c8f0f002": "colour swap",
    "d511f180": "colour swap",
    "25ff71a9": "shift down",
}


def build(arc_dir: Path, out: Path, name: str, tasks: list[str], num_aug: int) -> Path:
    """The tasks as a test set: demonstration pairs -> train split, test pairs (with solutions) -> test split."""
    from trm.data.build import BuildConfig, build_dataset

    src = out / f"src-{name}"
    src.mkdir(parents=True)
    for kind in ("challenges", "solutions"):
        data = json.loads((arc_dir / f"arc-agi_training_{kind}.json").read_text())
        missing = [t for t in tasks if t not in data]
        if missing:
            raise FileNotFoundError(f"{arc_dir}/arc-agi_training_{kind}.json lacks tasks {missing}")
        (src / f"arc-agi_{name}_{kind}.json").write_text(json.dumps({t: data[t] for t in tasks}))
    target = out / name
    build_dataset(BuildConfig(input_file_prefix=str(src / "arc-agi"), output_dir=str(target), subsets=[name],
                              test_set_name=[name], num_aug=num_aug))
    return target


def train(words: list[str], threads: int, log: Path) -> float:
    cmd = [sys.executable, "-m", "trm.train", "preset=cpu-tiny", f"num_threads={threads}", "progress=False",
           "wandb=off", *words]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(ROOT))
    start = time.time()
    with open(log, "w") as handle:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT, text=True)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd[1:])} failed ({proc.returncode}):\n{log.read_text()[-3000:]}")
    return time.time() - start


def last_eval(run: Path) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "ARC/pass@1" in record:
            out = record
    return out


def evaluate_pretrained(ckpt: Path, data: Path, run: Path, threads: int) -> dict[str, float]:
    """The pretrained checkpoint on the held-out test split, before any post-training step (in this process)."""
    import torch

    from trm.config import load_config
    from trm.train import Dist, Trainer

    torch.set_num_threads(threads)
    cfg = load_config(["preset=cpu-tiny", f"data_paths=[{data}]", f"load_checkpoint={ckpt}", f"run_dir={run}",
                       "evaluators=[arc]", "wandb=off", "progress=False"], warn=False)
    trainer = Trainer(cfg, Dist())
    return trainer.evaluate()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arc-dir", default=str(ROOT.parent / "shared" / "arc-agi"))
    parser.add_argument("--pretrain-steps", type=int, default=600)
    parser.add_argument("--post-epochs", type=int, default=240, help="post-training epochs (one evaluation at the end)")
    parser.add_argument("--num-aug", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--held-out", default=None, help="comma-separated ARC-AGI-1 training task ids")
    parser.add_argument("--keep", default=None, help="keep the datasets and runs in this folder")
    args = parser.parse_args(argv)

    arc_dir = Path(args.arc_dir)
    if not (arc_dir / "arc-agi_training_challenges.json").is_file():
        print(f"ARC-AGI-1 training tasks not found in {arc_dir}", file=sys.stderr)
        return 2
    held = [t.strip() for t in args.held_out.split(",") if t.strip()] if args.held_out else list(HELD_OUT)
    overlap = sorted(set(held) & set(PRETRAIN_TASKS))
    if overlap:
        print(f"held-out tasks {overlap} are pretraining tasks too", file=sys.stderr)
        return 2
    load = os.getloadavg()
    print(f"pretraining tasks: {', '.join(f'{t} ({k})' for t, k in PRETRAIN_TASKS.items())}")
    named = ", ".join(f"{t} ({HELD_OUT.get(t, 'given')})" for t in held)
    print(f"held-out tasks:    {named}")
    print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores")
    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="trm-bench-posttrain-"))
    tmp.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        pre_data = build(arc_dir, tmp, "pretrain", list(PRETRAIN_TASKS), args.num_aug)
        held_data = build(arc_dir, tmp, "heldout", held, args.num_aug)
        meta = json.loads((held_data / "train" / "dataset.json").read_text())
        per_epoch = meta["total_groups"] * meta["mean_puzzle_examples"]
        print(f"held-out demonstration pairs: {meta['total_groups']} tasks, ~{per_epoch:.0f} examples per epoch "
              f"(one variant per task), {meta['total_puzzles']} variants")

        pre_run = tmp / "pretrain-run"
        seconds = train([f"data_paths=[{pre_data}]", f"run_dir={pre_run}", "evaluators=[]", "epochs=100000",
                         "eval_interval=100000", f"max_steps={args.pretrain_steps}", f"seed={args.seed}",
                         "run_name=pretrain"], args.threads, tmp / "pretrain.log")
        ckpt = pre_run / "checkpoints" / f"step-{args.pretrain_steps}"
        final = [json.loads(x) for x in (pre_run / "metrics.jsonl").read_text().splitlines()][-20:]
        count = sum(r.get("train/count", 0) for r in final)
        exact = sum(r.get("train/exact_accuracy", 0) * r.get("train/count", 0) for r in final) / max(count, 1)
        print(f"pretrained {args.pretrain_steps} steps in {seconds / 60:.1f} min; train exact accuracy over the last "
              f"20 steps {exact:.3f}")

        t0 = time.time()
        base = evaluate_pretrained(ckpt, held_data, tmp / "no-posttrain", args.threads)
        rows.append(("pretrained only (no post-training)", 0, base, time.time() - t0))

        freeze = round(args.post_epochs * 3125 / 15000)
        for label, extra in ((f"post-trained, embeddings first ({freeze} of {args.post_epochs} epochs)",
                              ["freeze_weights=True", f"freeze_weights_epochs={freeze}"]),
                             ("post-trained, all weights from the start", ["freeze_weights=False"])):
            run = tmp / ("post-freeze" if "first" in label else "post-all")
            seconds = train([f"data_paths=[{held_data}]", f"load_checkpoint={ckpt}", f"run_dir={run}",
                             "evaluators=[arc]", f"epochs={args.post_epochs}", f"eval_interval={args.post_epochs}",
                             f"seed={args.seed}", f"run_name={run.name}", *extra], args.threads, tmp / f"{run.name}.log")
            for line in (tmp / f"{run.name}.log").read_text().splitlines():
                if "puzzle embeddings" in line or "freeze_weights" in line or "trunk trains" in line:
                    print(f"  [{run.name}] {line.strip()}")
            metrics = last_eval(run)
            rows.append((label, int(metrics.get("step", 0)), metrics, seconds))
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)

    print()
    print(f"{'held-out test inputs (' + str(len(held)) + ' tasks)':<58} {'steps':>6} {'pass@1':>7} {'pass@2':>7} "
          f"{'tok acc':>7} {'minutes':>7}")
    for label, steps, m, seconds in rows:
        print(f"{label:<58} {steps:>6} {m.get('ARC/pass@1', float('nan')):7.3f} {m.get('ARC/pass@2', float('nan')):7.3f} "
              f"{m.get('all/accuracy', float('nan')):7.3f} {seconds / 60:7.1f}")
    load = os.getloadavg()
    print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
