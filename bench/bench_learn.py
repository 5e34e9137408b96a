"""Learning check: the `cpu-tiny` preset must reach a train exact accuracy of 0.33 on six small ARC-AGI-1
training tasks (flips, rotations, colour swaps; num_aug 8) within 9 minutes on 2 CPU cores.

    .venv/bin/python bench/bench_learn.py                       # ../shared/arc-agi beside the checkout
    .venv/bin/python bench/bench_learn.py --arc-dir ../shared/arc-agi --minutes 9 --target 0.33
    .venv/bin/python bench/bench_learn.py --extra lr=5e-3 --extra arch.halt_max_steps=2   # try other settings
    .venv/bin/python bench/bench_learn.py --full            # keep training after the target: the whole 9-minute curve
    .venv/bin/python bench/bench_learn.py --tasks 6150a2bd,9dfd6313,b1948b0a,c8f0f002,d511f180,25ff71a9  # other tasks
    # one run on a GPU in bfloat16, compiled, for a fixed number of steps
    .venv/bin/python bench/bench_learn.py --device cuda --dtype bfloat16 --compile on --steps 1500
    # issue 14: bf16 + torch.compile against float32 eager, same seed and steps, curves side by side (+ JSON)
    .venv/bin/python bench/bench_learn.py --compare --device cuda --steps 1500 --json bench/results/learn.json
    .venv/bin/python bench/bench_learn.py --compare --device cpu --steps 20 --print-every 5   # the mechanics, on CPU

Baseline (TRM-SPEC / issue 3): the reference, on this machine with hidden 64, 1 layer, H_cycles 1, L_cycles 2,
halt_max_steps 2, batch 32, lr 3e-3, reaches ~0.33 after 18 minutes (token accuracy ~0.8). The goal is at most
half that time. The script builds the dataset with trm.data.build, runs `python -m trm.train preset=cpu-tiny`
as a child process, follows its metrics.jsonl and prints the accuracy-over-time curve; the exact accuracy is
averaged over the rows that halted in the last `--window` steps. Exit status 0 when the target was reached.

--compare runs the same command twice, one run after the other, with the same seed, data and step count
(--steps): "bf16+compile" (arch.forward_dtype=bfloat16 compile=True) and "fp32 eager" (float32, compile=False),
then prints both curves at every --print-every steps (windowed exact and token accuracy, loss) and the final levels:
the two reach the same level within noise when the difference of their final windowed exact accuracies is at most
2 standard errors (binomial, over the rows counted in the two windows). Exit status 0 when both runs finished.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TASKS = {
    "3c9b0459": "rotate 180",
    "67a3c6ac": "left-right flip",
    "68b16354": "up-down flip",
    "74dd1130": "transpose",
    "ed36ccf7": "rotate 90",
    "0d3d703e": "colour swap",
}
REFERENCE_MINUTES = 18.0
COMPARED = {"bf16+compile": ["arch.forward_dtype=bfloat16", "compile=True"],
            "fp32 eager": ["arch.forward_dtype=float32", "compile=False"]}


def make_dataset(arc_dir: Path, out: Path, tasks: dict[str, str] = TASKS) -> Path:
    from trm.data.build import BuildConfig, build_dataset

    src = out / "src"
    src.mkdir(parents=True)
    for kind in ("challenges", "solutions"):
        data = json.loads((arc_dir / f"arc-agi_training_{kind}.json").read_text())
        missing = [t for t in tasks if t not in data]
        if missing:
            raise FileNotFoundError(f"{arc_dir}/arc-agi_training_{kind}.json lacks tasks {missing}")
        (src / f"arc-agi_training_{kind}.json").write_text(json.dumps({t: data[t] for t in tasks}))
    target = out / "data"
    build_dataset(BuildConfig(input_file_prefix=str(src / "arc-agi"), output_dir=str(target), subsets=["training"],
                              test_set_name=["training"], num_aug=8))
    return target


def window_stats(train: list[dict]) -> tuple[float, float, float]:
    """(exact accuracy, token accuracy, rows counted) over the rows that halted in `train` (count-weighted)."""
    count = sum(r["train/count"] for r in train)
    exact = sum(r["train/exact_accuracy"] * r["train/count"] for r in train) / max(count, 1)
    token = sum(r["train/accuracy"] * r["train/count"] for r in train) / max(count, 1)
    return exact, token, count


def train_words(data: Path, run: Path, args, extra: list[str]) -> list[str]:
    words = ["preset=cpu-tiny", f"data_paths=[{data}]", f"run_dir={run}", "evaluators=[]", "epochs=100000",
             "eval_interval=100000", f"num_threads={args.threads}", "progress=False", "wandb=off",
             "run_name=bench-learn", f"seed={args.seed}"]
    if args.device:
        words.append(f"device={args.device}")
    if args.dtype:
        words.append(f"arch.forward_dtype={args.dtype}")
    if args.compile != "auto":
        words.append(f"compile={args.compile == 'on'}")
    if args.steps:
        words.append(f"max_steps={args.steps}")
    return words + extra + list(args.extra)


def follow(cmd: list[str], run: Path, args, label: str = "") -> tuple[list[dict], float | None, int | None, int | None]:
    """Run `cmd` (trm.train), follow its metrics.jsonl and print the curve every 30 s; stop at the target unless
    --full or --steps. Returns (records with "_t" seconds, time the target was reached, its step, exit code)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONPATH=str(ROOT))
    start = time.time()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    records: list[dict] = []
    read = 0
    reached = reached_step = None
    next_print = 0.0
    stop_at_target = not (args.full or args.steps or args.compare)
    print(f"{label}{'min':>6} {'step':>6} {'exact':>7} {'token':>7} {'lm_loss':>8}")
    try:
        while time.time() - start < args.minutes * 60:
            finished = proc.poll() is not None
            if not finished:
                time.sleep(1.0)
            path = run / "metrics.jsonl"
            if path.exists():
                text = path.read_text()
                lines = text[read:].split("\n")
                read += len(text[read:]) - len(lines[-1])
                now = time.time() - start
                for line in lines[:-1]:
                    if line.strip():
                        record = json.loads(line)
                        record["_t"] = now
                        records.append(record)
                train = [r for r in records if "train/count" in r][-args.window:]
                if train:
                    exact, token, _ = window_stats(train)
                    hit = exact >= args.target and len(train) == args.window and reached is None
                    if now >= next_print or hit or finished:
                        print(f"{label}{now / 60:6.2f} {train[-1]['step']:6d} {exact:7.3f} {token:7.3f} "
                              f"{train[-1]['train/lm_loss']:8.4f}", flush=True)
                        next_print = now + 30
                    if hit:
                        reached, reached_step = now, train[-1]["step"]
                        print(f"{label}target {args.target} reached at step {reached_step} after {now / 60:.2f} min",
                              flush=True)
                        if stop_at_target:
                            break
            if finished:
                break
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)
    code = proc.returncode
    if code not in (0, None, -15) and reached is None:
        print(proc.stderr.read()[-3000:], file=sys.stderr)
    return records, reached, reached_step, code


def curve(records: list[dict], every: int, window: int) -> dict[int, dict]:
    """step -> windowed exact/token accuracy and loss at every `every` steps (and the last step)."""
    train = [r for r in records if "train/count" in r]
    if not train:
        return {}
    last = train[-1]["step"]
    out = {}
    for i, r in enumerate(train):
        if r["step"] % every == 0 or r["step"] == last:
            exact, token, count = window_stats(train[max(0, i + 1 - window): i + 1])
            out[r["step"]] = {"exact": exact, "token": token, "lm_loss": r["train/lm_loss"], "rows": count,
                              "seconds": r["_t"]}
    return out


def compare(data: Path, tmp: Path, args) -> int:
    runs: dict[str, dict] = {}
    for label, extra in COMPARED.items():
        run = tmp / label.replace(" ", "-").replace("+", "-")
        args_run = argparse.Namespace(**{**vars(args), "dtype": None, "compile": "auto"})
        cmd = [sys.executable, "-m", "trm.train", *train_words(data, run, args_run, extra)]
        print(f"== {label}: {' '.join(cmd[1:])}", flush=True)
        t0 = time.time()
        records, _, _, code = follow(cmd, run, args, label=f"[{label}] ")
        train = [r for r in records if "train/count" in r]
        times = {r["step"]: r["time"] for r in train}
        steps = sorted(times)
        per_step = ((times[steps[-1]] - times[steps[min(5, len(steps) - 1)]]) / max(1, steps[-1] - steps[min(5, len(steps) - 1)])
                    if len(steps) > 6 else None)
        exact, token, rows = window_stats(train[-args.window:]) if train else (0.0, 0.0, 0)
        runs[label] = {"exit_code": code, "steps": steps[-1] if steps else 0, "wall_s": time.time() - t0,
                       "seconds_per_step": per_step, "final_exact": exact, "final_token": token, "final_rows": rows,
                       "curve": curve(records, args.print_every, args.window),
                       "first_step_s": (train[0]["_t"] if train else None)}
    a, b = (runs[k] for k in COMPARED)
    print(f"\n{'step':>6} | {'bf16+compile exact':>18} {'token':>6} {'loss':>7} | {'fp32 eager exact':>16} {'token':>6} {'loss':>7}")
    for step in sorted(set(a["curve"]) | set(b["curve"])):
        x, y = a["curve"].get(step), b["curve"].get(step)
        left = f"{x['exact']:18.3f} {x['token']:6.3f} {x['lm_loss']:7.4f}" if x else f"{'-':>18} {'':6} {'':7}"
        right = f"{y['exact']:16.3f} {y['token']:6.3f} {y['lm_loss']:7.4f}" if y else f"{'-':>16} {'':6} {'':7}"
        print(f"{step:6d} | {left} | {right}")
    se = math.sqrt(sum(r["final_exact"] * (1 - r["final_exact"]) / max(r["final_rows"], 1) for r in (a, b)))
    diff = a["final_exact"] - b["final_exact"]
    same = abs(diff) <= 2 * se + 1e-12
    for label, r in runs.items():
        print(f"{label}: {r['steps']} steps, final exact {r['final_exact']:.3f} (token {r['final_token']:.3f}) over "
              f"{r['final_rows']:.0f} rows of the last {args.window} steps, "
              f"{_fmt_s(r['seconds_per_step'])} s/step, first line after {_fmt_s(r['first_step_s'])} s, exit {r['exit_code']}")
    print(f"difference {diff:+.3f}, 2 standard errors {2 * se:.3f}: "
          f"{'the same level within noise' if same else 'NOT the same level within noise'}")
    if args.json:
        payload = {"bench": "bench_learn", "device": args.device, "steps": args.steps, "seed": args.seed,
                   "window": args.window, "runs": runs, "difference": diff, "two_standard_errors": 2 * se,
                   "same_within_noise": same}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=1))
        print(f"wrote {args.json}")
    return 0 if all(r["exit_code"] == 0 for r in runs.values()) else 1


def _fmt_s(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arc-dir", default=str(ROOT.parent / "shared" / "arc-agi"))
    parser.add_argument("--minutes", type=float, default=9.0, help="time limit (per run with --compare)")
    parser.add_argument("--target", type=float, default=0.33)
    parser.add_argument("--window", type=int, default=20, help="steps averaged for the exact accuracy")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--extra", action="append", default=[], help="more key=value for trm.train")
    parser.add_argument("--tasks", default=None,
                        help="comma-separated ARC-AGI-1 training task ids instead of the six default ones")
    parser.add_argument("--full", action="store_true",
                        help="train for all of --minutes (print the whole curve) instead of stopping at the target")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: the preset's, cpu)")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16"], help="arch.forward_dtype")
    parser.add_argument("--compile", default="auto", choices=["auto", "on", "off"], help="torch.compile the model")
    parser.add_argument("--steps", type=int, default=0, help="train exactly this many steps (max_steps)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compare", action="store_true", help="bf16 + compile against float32 eager (needs --steps)")
    parser.add_argument("--print-every", type=int, default=100, help="--compare: curve rows every N steps")
    parser.add_argument("--json", type=Path, default=None, help="--compare: write both curves here")
    args = parser.parse_args(argv)
    if args.compare and not args.steps:
        parser.error("--compare needs --steps (both runs train the same number of steps)")

    arc_dir = Path(args.arc_dir)
    if not (arc_dir / "arc-agi_training_challenges.json").is_file():
        print(f"ARC-AGI-1 training tasks not found in {arc_dir}", file=sys.stderr)
        return 2
    tasks = {t.strip(): "given" for t in args.tasks.split(",") if t.strip()} if args.tasks else TASKS
    load = os.getloadavg()
    print(f"tasks: {', '.join(f'{t} ({k})' for t, k in tasks.items())}")
    print(f"load average before the run: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory(prefix="trm-bench-learn-") as tmp:
        tmp = Path(tmp)
        try:
            data = make_dataset(arc_dir, tmp, tasks)
        except FileNotFoundError as err:
            print(err, file=sys.stderr)
            return 2
        meta = json.loads((data / "train" / "dataset.json").read_text())
        print(f"dataset: {meta.get('total_puzzles')} puzzles, {meta.get('total_groups')} groups, "
              f"{meta.get('mean_puzzle_examples', 0):.2f} examples per puzzle")
        if args.compare:
            return compare(data, tmp, args)
        run = tmp / "run"
        cmd = [sys.executable, "-m", "trm.train", *train_words(data, run, args, [])]
        print("command:", " ".join(cmd[1:]))
        records, reached, reached_step, code = follow(cmd, run, args)
    load = os.getloadavg()
    print(f"load average after the run: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    steps = max((r["step"] for r in records), default=0)
    if steps:
        print(f"{steps} steps in {records[-1]['_t'] / 60:.2f} min: {records[-1]['_t'] / steps:.2f} s per step "
              "(a loaded machine makes this slower; the step count to the target does not depend on load)")
    if reached is None:
        print(f"FAIL: exact accuracy {args.target} not reached in {args.minutes} minutes"
              + (f" / {args.steps} steps" if args.steps else ""))
        return 1
    print(f"PASS: exact accuracy {args.target} at step {reached_step} after {reached / 60:.2f} min; reference "
          f"~{REFERENCE_MINUTES:.0f} min -> {REFERENCE_MINUTES * 60 / reached:.2f}x faster")
    return 0


if __name__ == "__main__":
    sys.exit(main())
