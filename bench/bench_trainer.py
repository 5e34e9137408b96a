"""The whole trainer at the seed shape: examples/s from metrics.jsonl of a real `trm train` run (torchrun, one
process) on the seed's dataset (so the seed's puzzle-identifier table: ~1.28 M rows, ~2.6 GB float32, trained by
sparse sign-SGD, with EMA), the time each step waited for its batch, against bench_step's rate for the same step.

    # build the seed dataset from ARC task files (training2 + evaluation2 + concept, num_aug 1000: ~9 GB written),
    # then 60 steps of 192 rows (the per-GPU share of the seed's 768 on 4 GPUs), bf16, compiled
    python bench/bench_trainer.py --arc-prefix .gpu-data/shared/arc-agi/arc-agi --work runs/bench-trainer --device cuda --steps 60 \
        --step-json bench/results/step.json --json bench/results/trainer.json
    python bench/bench_trainer.py --data data/arc2concept-aug-1000 --device cuda   # an existing build
    # several trainer settings on one build, one after the other (each NAME=WORDS, WORDS: trm train key=value words)
    python bench/bench_trainer.py --data data/arc2concept-aug-1000 --device cuda \
        --variant plain= --variant levers="log_interval=20 prefetch_batches=2"
    # the mechanics on CPU: cpu-tiny on a small build
    python bench/bench_trainer.py --arc-prefix ../shared/arc-agi/arc-agi --subsets training --test-set-name training \
        --num-aug 2 --preset cpu-tiny --device cpu --batch 8 --steps 8 --skip 2

Each variant runs `python -m torch.distributed.run --standalone --nproc-per-node 1 -m trm.train preset=PRESET
data_paths=[DATA] global_batch_size=BATCH device=DEVICE evaluators=[] log_data_wait=True ...` (the seed preset's
other settings as they are: bf16, EMA, compiled on CUDA), follows metrics.jsonl and stops the run (SIGKILL, so no
final checkpoint of the 2.6 GB table is written) once --steps steps are logged. examples/s = BATCH x (steps after
--skip) / their time in metrics.jsonl; data wait = train/data_wait_s of those steps (the loop's wait for its next
batch; with log_interval 1 the GPU has nothing queued meanwhile, so this is GPU idle time). With --step-json (from
bench_step.py at the same batch and dtype) the rate is compared with the bench's best compiled train step ("within
10%" is issue 14's target). Peak GPU memory (memory.used of GPU 0 above its value at the start) is sampled with
nvidia-smi where it exists. The build
time, the dataset's identifier count (table size) and the full run's step count (epochs x groups x examples per
group / 768, the seed's global batch) are printed and written to --json.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEED_SUBSETS = ["training2", "evaluation2", "concept"]
SEED_EPOCHS, SEED_BATCH = 100000, 768


def build(args) -> tuple[Path, float]:
    out = Path(args.work) / "data"
    if out.exists():
        shutil.rmtree(out)
    cmd = [sys.executable, "-m", "trm.data.build", "--input-file-prefix", args.arc_prefix, "--output-dir", str(out),
           "--subsets", *args.subsets, "--test-set-name", *args.test_set_name, "--num-aug", str(args.num_aug),
           "--quiet"]
    print("build:", " ".join(cmd[1:]), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), check=True)
    seconds = time.perf_counter() - t0
    print(f"build: {seconds:.1f} s", flush=True)
    return out, seconds


def dataset_facts(data: Path) -> dict:
    meta = json.loads((data / "train" / "dataset.json").read_text())
    ids = int(meta["num_puzzle_identifiers"])
    groups, mean = int(meta["total_groups"]), float(meta["mean_puzzle_examples"])
    return {"num_puzzle_identifiers": ids, "table_gib_float32": ids * 512 * 4 / 2**30, "total_groups": groups,
            "mean_puzzle_examples": mean, "train_examples_per_epoch": groups * mean,
            "seed_run_steps": int(SEED_EPOCHS * groups * mean / SEED_BATCH)}


class GpuMemory:
    """Largest memory.used of GPU 0 (nvidia-smi, polled in a thread) above what was used when it started: on a
    machine running nothing else, the trainer process's memory (its CUDA context and allocator cache included)."""

    def __init__(self):
        self.base = self.peak = None
        self._stop = threading.Event()
        self._thread = None
        if shutil.which("nvidia-smi"):
            self.base = self._used()
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()

    @staticmethod
    def _used() -> int | None:
        try:
            text = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                                  capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None
        return int(text) if text.isdigit() else None

    def _poll(self) -> None:
        while not self._stop.wait(1.0):
            used = self._used()
            if used is not None:
                self.peak = max(self.peak or 0, used)

    def stop(self) -> float | None:
        """GiB above the starting value, or None."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)
        if self.peak is None or self.base is None:
            return None
        return max(0, self.peak - self.base) / 1024


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (Linux /proc; [] elsewhere)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def stop_run(proc: subprocess.Popen) -> None:
    """SIGKILL the torchrun launcher and its workers (no final checkpoint of the 2.3 GiB table). torchrun starts
    each worker in a session of its own, so the launcher's process group alone would leave the worker running."""
    if proc.poll() is None:
        for pid in _descendants(proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def run_variant(args, data: Path, name: str, words: list[str]) -> dict:
    run = Path(args.work) / f"run-{name}"
    if run.exists():
        shutil.rmtree(run)
    train = [f"preset={args.preset}", f"data_paths=[{data}]", f"run_dir={run}", f"global_batch_size={args.batch}",
             f"device={args.device}", "evaluators=[]", "progress=False", "wandb=off", f"run_name=bench-{name}",
             "log_data_wait=True", f"max_steps={args.steps + 1000}", "checkpoint_every_minutes=null"]
    if args.preset == "cpu-tiny":
        train.append("micro_batch_size=null")  # the preset's micro-batches of 8 would not divide other batches
    train += words
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1", "-m", "trm.train",
           *train]
    print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT), WANDB_MODE="disabled")
    memory = GpuMemory()
    t0 = time.perf_counter()
    log = open(Path(args.work) / f"run-{name}.log", "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    metrics = run / "metrics.jsonl"
    rows: list[dict] = []
    first_line_s = None
    deadline = t0 + args.timeout
    try:
        while time.perf_counter() < deadline:
            if metrics.exists():
                rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
                if rows and first_line_s is None:
                    first_line_s = time.perf_counter() - t0
                if sum("train/lm_loss" in r for r in rows) >= args.steps:
                    break
            if proc.poll() is not None:
                break
            time.sleep(0.5)
    finally:
        stop_run(proc)
        log.close()
    peak_gib = memory.stop()
    train_rows = [r for r in rows if "train/lm_loss" in r][: args.steps]
    result = {"name": name, "words": words, "command": " ".join(shlex.quote(c) for c in cmd[1:]),
              "steps_logged": len(train_rows), "first_line_s": first_line_s, "peak_gpu_gib_nvidia_smi": peak_gib,
              "batch": args.batch, "error": None}
    measured = [r for r in train_rows if r["step"] > args.skip]
    if len(measured) < 2:
        tail = (Path(args.work) / f"run-{name}.log").read_text()[-3000:]
        result["error"] = f"only {len(train_rows)} steps logged (exit {proc.returncode}); log tail:\n{tail}"
        print(result["error"], flush=True)
        return result
    span = measured[-1]["time"] - measured[0]["time"]
    steps = measured[-1]["step"] - measured[0]["step"]
    seconds = span / steps if steps else None
    waits = [r["train/data_wait_s"] for r in measured if "train/data_wait_s" in r]
    result.update(seconds_per_step=seconds, examples_per_s=args.batch / seconds if seconds else None,
                  measured_steps=[measured[0]["step"], measured[-1]["step"]])
    if waits:
        waits_sorted = sorted(waits)
        result.update(data_wait_median_s=statistics.median(waits), data_wait_p90_s=waits_sorted[int(0.9 * (len(waits) - 1))],
                      data_wait_max_s=waits_sorted[-1], data_wait_share=sum(waits) / span if span else None)
    return result


def bench_rate(path: Path, batch: int) -> tuple[str, float] | None:
    """bench_step's best compiled train step for the seed model at `batch` rows: (setting, examples/s)."""
    payload = json.loads(path.read_text())
    if payload.get("env", {}).get("batch") != batch:
        return None
    rows = [r for r in payload.get("rows", []) if r["model"] == "seed" and r["mode"] == "train" and r["side"] == "ours"
            and r.get("compile") and r.get("seconds")]
    if not rows:
        return None
    best = min(rows, key=lambda r: r["seconds"])
    return best["setting"], best["examples_per_s"]


def _write(path: Path | None, payload: dict) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=None, help="a built dataset (else build one from --arc-prefix)")
    p.add_argument("--arc-prefix", default=str(ROOT.parent / "shared" / "arc-agi" / "arc-agi"),
                   help="ARC task files prefix: <prefix>_<subset>_challenges.json / _solutions.json")
    p.add_argument("--subsets", nargs="+", default=SEED_SUBSETS)
    p.add_argument("--test-set-name", nargs="+", default=["evaluation2"])
    p.add_argument("--num-aug", type=int, default=1000)
    p.add_argument("--work", default=None, help="folder for the build and the runs (default: a temporary one)")
    p.add_argument("--keep", action="store_true", help="keep --work (default: delete the build and runs after)")
    p.add_argument("--preset", default="arc2-seed")
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch", type=int, default=192, help="global_batch_size (one process: rows per step)")
    p.add_argument("--steps", type=int, default=60, help="steps to log before the run is stopped")
    p.add_argument("--skip", type=int, default=10, help="first steps left out of the rate (compilation)")
    p.add_argument("--timeout", type=float, default=420.0, help="seconds per variant at most")
    p.add_argument("--deadline", type=float, default=0.0,
                   help="seconds for the whole bench: a variant starts only with --min-variant seconds left")
    p.add_argument("--min-variant", type=float, default=60.0)
    p.add_argument("--variant", action="append", default=[],
                   help="NAME=WORDS: a run with these extra trm train words (default: one run, plain=)")
    p.add_argument("--step-json", type=Path, default=None, help="bench_step.py --json output to compare with")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    variants = []
    for item in args.variant or ["plain="]:
        name, sep, words = item.partition("=")
        if not sep or not name.replace("-", "").replace("_", "").isalnum():
            p.error(f"--variant {item!r}: expected NAME=WORDS")
        variants.append((name, shlex.split(words)))

    import tempfile

    own_work = args.work is None
    args.work = args.work or tempfile.mkdtemp(prefix="trm-bench-trainer-")
    Path(args.work).mkdir(parents=True, exist_ok=True)
    payload: dict = {"bench": "bench_trainer", "device": args.device, "preset": args.preset, "batch": args.batch,
                     "steps": args.steps, "skip": args.skip, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    try:
        if args.data:
            data, payload["build_s"] = Path(args.data), None
        else:
            data, payload["build_s"] = build(args)
            payload["build"] = {"subsets": args.subsets, "num_aug": args.num_aug}
        facts = dataset_facts(data)
        payload["dataset"] = facts
        print(f"dataset: {facts['num_puzzle_identifiers']} puzzle identifiers (table {facts['table_gib_float32']:.2f} GiB "
              f"float32 at width 512), {facts['total_groups']} groups, {facts['train_examples_per_epoch']:.0f} train "
              f"examples per epoch; the seed run ({SEED_EPOCHS} epochs at {SEED_BATCH} rows): {facts['seed_run_steps']} "
              "optimiser steps", flush=True)
        reference = bench_rate(args.step_json, args.batch) if args.step_json and args.step_json.is_file() else None
        payload["bench_step"] = {"setting": reference[0], "examples_per_s": reference[1]} if reference else None
        payload["runs"] = []
        for name, words in variants:
            if args.deadline:
                left = args.deadline - (time.monotonic() - started)
                if left < args.min_variant:
                    print(f"{name}: skipped, {left:.0f} s of the --deadline left", flush=True)
                    payload["runs"].append({"name": name, "words": words, "error": "skipped (time budget)"})
                    continue
                args.timeout = min(args.timeout, left - 10)
            result = run_variant(args, data, name, words)
            if reference and result.get("examples_per_s"):
                result["vs_bench_step"] = result["examples_per_s"] / reference[1]
            payload["runs"].append(result)
            if result["error"]:
                _write(args.json, payload)
                continue
            line = (f"{name}: {result['seconds_per_step']:.4f} s/step, {result['examples_per_s']:.1f} ex/s over steps "
                    f"{result['measured_steps'][0]}..{result['measured_steps'][1]}; first metrics line after "
                    f"{result['first_line_s']:.0f} s")
            if "data_wait_median_s" in result:
                line += (f"; data wait median {1000 * result['data_wait_median_s']:.2f} ms, p90 "
                         f"{1000 * result['data_wait_p90_s']:.2f} ms, max {1000 * result['data_wait_max_s']:.1f} ms, "
                         f"{100 * result['data_wait_share']:.2f}% of the time")
            if result["peak_gpu_gib_nvidia_smi"] is not None:
                line += f"; GPU memory (nvidia-smi) {result['peak_gpu_gib_nvidia_smi']:.1f} GiB"
            if reference:
                ratio = result["vs_bench_step"]
                line += (f"; vs bench_step ({reference[0]}, {reference[1]:.1f} ex/s): {ratio:.2f}x "
                         f"({'within' if ratio >= 0.9 else 'NOT within'} 10%)")
            print(line, flush=True)
            _write(args.json, payload)  # after each variant: a cut-short bench keeps what it measured
    finally:
        if own_work and not args.keep:
            shutil.rmtree(args.work, ignore_errors=True)
        elif not args.keep and not args.data:
            shutil.rmtree(Path(args.work) / "data", ignore_errors=True)
    if args.json:
        _write(args.json, payload)
        print(f"wrote {args.json}")
    return 0 if payload["runs"] and all(not r["error"] for r in payload["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
