"""Train-step and eval-step throughput of the TRM model (examples/s), against the reference's timings.

    .venv/bin/python bench/bench_step.py                                  # tiny + seed model, batch 8, float32, CPU
    .venv/bin/python bench/bench_step.py --models tiny --repeats 5
    .venv/bin/python bench/bench_step.py --reference-dir ../TinyRecursiveModels   # also time the reference here
    .venv/bin/python bench/bench_step.py --models seed --device cuda --dtype bfloat16 --compile both --peak-tflops 989
    .venv/bin/python bench/bench_step.py --compile both --thread-variants 1 --interop-threads 1 \
        --reference-dir ../TinyRecursiveModels        # CPU: every setting in one run, interleaved with the reference

A train step is one ACT step of the loss head from a fresh carry (every row reset): forward, backward of
loss / batch, and the trainer's optimiser step (AdamATan2 on the dense weights + sparse sign-SGD on the
puzzle embeddings, from trm.optim) unless --no-optimizer. An eval step is one ACT forward under
torch.inference_mode. Each is timed `--repeats` times after one warm-up; the median is reported, with the
process CPU time (user+sys over all threads) since the machine may be shared: the load average is printed.

Baselines: the reference's float32 CPU timings on this machine at batch 8 (27.3 s / 11.9 s per train / eval
step for the seed model; 0.41 s / 0.20 s for the tiny one); the goal is at least 1.25x. With
--reference-dir (a checkout of the reference code) the reference is also timed in this run, interleaved with
ours, on the same weights and batch (fwd + bwd + the same optimisers), which is the fairer comparison on a
loaded machine. On CPU the glibc allocator is tuned first (trm.model.runtime; --no-tune-malloc to skip); the
tuning is process-wide, so the same-run reference profits from it too and that ratio leaves its gain out.
On a machine shared with other jobs, two OpenMP threads mostly wait on each other (CPU time counts the
spinning); `--threads 1` gives steadier relative numbers there.
Settings compared in one run (each on its own copy of the same weights, interleaved): eager and/or
torch.compile (`--compile both`; the first step, which compiles, is printed as `first` and left out of the
median), and other thread counts (`--thread-variants 1` adds `ours t1` and, with --reference-dir,
`reference t1`; each ours-line is compared with the reference at the same thread count). After each mode a
`best of ours` line names the fastest setting and its ratio next to plain eager ours. Interop threads and the
allocator tuning are process-wide, so they are compared across runs (`--interop-threads`, `--no-tune-malloc`).
MFU (with --peak-tflops) counts matmul + attention FLOPs: backward = 2x forward for the part with gradients.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import inspect
import os
import re
import resource
import statistics
import sys
import time
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trm.model import TRM, LossHead, ModelConfig  # noqa: E402
from trm.model.runtime import tune_cpu_allocator  # noqa: E402

MODELS = {
    "tiny": dict(hidden_size=64, num_heads=2, L_layers=1, H_cycles=2, L_cycles=2, halt_max_steps=4, puzzle_emb_len=16),
    "seed": dict(hidden_size=512, num_heads=8, L_layers=2, H_cycles=3, L_cycles=4, halt_max_steps=16, puzzle_emb_len=16),
}
# Reference timings, float32 CPU, batch 8, this machine: seconds per (train, eval) step.
REFERENCE_SECONDS = {"tiny": (0.41, 0.20), "seed": (27.3, 11.9)}
GOAL = 1.25
NUM_IDS = 64


def make_config(name: str, batch: int, dtype: str) -> ModelConfig:
    return ModelConfig(batch_size=batch, num_puzzle_identifiers=NUM_IDS, forward_dtype=dtype,
                       halt_exploration_prob=0.1, **MODELS[name])


def make_batch(cfg: ModelConfig, device: torch.device) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    n = cfg.batch_size
    labels = torch.randint(2, cfg.vocab_size, (n, cfg.seq_len), generator=g, dtype=torch.int32)
    labels[:, cfg.seq_len // 2:] = -100  # padding, as in real ARC rows
    batch = {"inputs": torch.randint(0, cfg.vocab_size, (n, cfg.seq_len), generator=g, dtype=torch.int32),
             "labels": labels,
             "puzzle_identifiers": torch.randint(1, NUM_IDS, (n,), generator=g, dtype=torch.int32)}
    return {k: v.to(device) for k, v in batch.items()}


def step_flops(cfg: ModelConfig, train: bool) -> float:
    """Matmul + attention FLOPs of one ACT step (forward; train adds 2x forward for the last H cycle)."""
    b, s, d, i = cfg.batch_size, cfg.total_len, cfg.hidden_size, cfg.mlp_inter
    layer = 2 * b * s * (3 * d * d + d * d + 2 * d * i + i * d) + 4 * b * s * s * d
    heads = 2 * b * cfg.seq_len * d * cfg.vocab_size
    per_cycle = (cfg.L_cycles + 1) * cfg.L_layers * layer
    forward = cfg.H_cycles * per_cycle + heads
    return forward + (2 * (per_cycle + heads) if train else 0)


# --- the reference, imported from a checkout (optional) ----------------------------------------------------------

def _permutation_module() -> types.ModuleType:
    """Stand-in for the `einops` package when it is absent: `rearrange` for pure axis permutations only."""
    mod = types.ModuleType("einops")

    def rearrange(t: torch.Tensor, pattern: str) -> torch.Tensor:
        src, dst = (side.split() for side in pattern.split("->"))
        if sorted(src) != sorted(dst) or len(src) != t.ndim:
            raise ValueError(f"bench einops stand-in handles permutations only, got {pattern!r}")
        return t.permute(*[src.index(a) for a in dst])

    mod.rearrange = rearrange
    return mod


def _module_class_with(module: types.ModuleType, attr: str) -> type:
    found = [c for _, c in inspect.getmembers(module, inspect.isclass)
             if c.__module__ == module.__name__ and issubclass(c, torch.nn.Module) and hasattr(c, attr)]
    if len(found) != 1:
        raise ValueError(f"{module.__file__}: expected one nn.Module class with `{attr}`, found {found}")
    return found[0]


def build_reference(ref_dir: Path, cfg: ModelConfig, ours: LossHead, device: torch.device) -> torch.nn.Module:
    """The reference's loss head around its ACT model, with our weights (the state-dict keys are the same)."""
    try:
        importlib.import_module("einops")
    except ImportError:
        sys.modules["einops"] = _permutation_module()
    sys.path.insert(0, str(ref_dir))
    model_cls = _module_class_with(importlib.import_module("models.recursive_reasoning.trm"), "initial_carry")
    head_cls = _module_class_with(importlib.import_module("models.losses"), "initial_carry")
    with torch.device(device):
        ref = head_cls(model_cls({**cfg.to_dict(), "causal": False}), loss_type="stablemax_cross_entropy")
    ref.load_state_dict(ours.state_dict(), strict=True)
    return ref


# --- timing ----------------------------------------------------------------------------------------------------

class Runner:
    def __init__(self, label: str, model: torch.nn.Module, batch: dict, optimizer: bool, call=None,
                 threads: int = 0):
        self.label, self.model, self.batch, self.threads = label, model, batch, threads
        self.call = model if call is None else call  # a compiled module has no truth value
        self.optimizers = []
        if optimizer:
            from trm.optim import AdamATan2, SparseSignSGD

            emb = model.model.puzzle_emb
            dense = [p for p in model.parameters() if p.requires_grad]
            self.optimizers = [AdamATan2(dense, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1),
                               SparseSignSGD(emb, lr=1e-2, weight_decay=0.1)]

    def step(self, mode: str) -> None:
        if self.threads:
            torch.set_num_threads(self.threads)
        # the reference makes its carry with torch.empty on the default device (its trainer wraps the call in
        # `with torch.device("cuda")`); ours follows the batch, so the context changes nothing for it
        with torch.device(self.batch["inputs"].device):
            getattr(self, f"{mode}_step")()

    def train_step(self) -> None:
        self.model.train()
        carry = self.model.initial_carry(self.batch)
        _, loss, *_ = self.call(carry=carry, batch=self.batch, return_keys=())
        (loss / self.batch["inputs"].shape[0]).backward()
        for opt in self.optimizers:
            opt.step()
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        self.model.zero_grad(set_to_none=True)

    def eval_step(self) -> None:
        self.model.eval()
        with torch.inference_mode():
            carry = self.model.initial_carry(self.batch)
            self.call(carry=carry, batch=self.batch, return_keys=())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(runners: list[Runner], mode: str, repeats: int, device: torch.device,
                     default_threads: int) -> tuple[dict[str, tuple], dict[str, float]]:
    """Median wall and CPU seconds per step for each runner, alternating between them; and each runner's
    warm-up seconds (for a compiled runner the first step includes compilation)."""
    wall = {r.label: [] for r in runners}
    cpu = {r.label: [] for r in runners}
    warmup = {}
    for r in runners:  # warm-up (and compilation)
        t0 = time.perf_counter()
        r.step(mode)
        _sync(device)
        warmup[r.label] = time.perf_counter() - t0
        torch.set_num_threads(default_threads)
    for _ in range(repeats):
        for r in runners:
            u0 = resource.getrusage(resource.RUSAGE_SELF)
            t0 = time.perf_counter()
            r.step(mode)
            _sync(device)
            wall[r.label].append(time.perf_counter() - t0)
            u1 = resource.getrusage(resource.RUSAGE_SELF)
            cpu[r.label].append(u1.ru_utime - u0.ru_utime + u1.ru_stime - u0.ru_stime)
            torch.set_num_threads(default_threads)
    return {k: (statistics.median(wall[k]), statistics.median(cpu[k]), wall[k]) for k in wall}, warmup


def settings(label: str, default_threads: int) -> str:
    """The bench options a runner label stands for."""
    opts = ["--compile on" if "+compile" in label else "eager"]
    m = re.search(r" t(\d+)$", label)
    opts.append(f"--threads {m.group(1) if m else default_threads}")
    return ", ".join(opts)


def same_threads_reference(label: str, timed: dict) -> str | None:
    """The reference runner timed with the same thread count as `label`, if any."""
    m = re.search(r" t\d+$", label)
    peer = "reference" + (m.group(0) if m else "")
    return peer if peer in timed else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="tiny,seed", help="comma list of: " + ", ".join(MODELS))
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=0, help="timed steps per mode (default: tiny 5, seed 2)")
    p.add_argument("--modes", default="train,eval")
    p.add_argument("--compile", choices=["off", "on", "both"], default="off", help="torch.compile the loss head")
    p.add_argument("--no-optimizer", action="store_true", help="train step without the optimiser step")
    p.add_argument("--no-tune-malloc", action="store_true")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--interop-threads", type=int, default=0, help="torch.set_num_interop_threads (process-wide)")
    p.add_argument("--thread-variants", default="",
                   help="comma list of other thread counts to time in the same run, e.g. 1 (adds 'ours t1', ...)")
    p.add_argument("--reference-dir", type=Path, default=os.environ.get("TRM_REFERENCE_DIR") or None,
                   help="a checkout of the reference code, to time it in this run (also TRM_REFERENCE_DIR)")
    p.add_argument("--peak-tflops", type=float, default=0.0, help="device peak for MFU (H100 SXM bf16 dense: 989)")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"--device {args.device}: CUDA is not available", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.interop_threads:
        torch.set_num_interop_threads(args.interop_threads)  # before any parallel work, or torch refuses
    tuned = device.type == "cpu" and not args.no_tune_malloc and tune_cpu_allocator()
    optimizer = not args.no_optimizer
    if optimizer:
        try:
            importlib.import_module("trm.optim")
        except ImportError as err:
            print(f"trm.optim not importable ({err}): timing forward+backward only")
            optimizer = False
    compile_modes = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    default_threads = torch.get_num_threads()
    extra_threads = sorted({int(t) for t in args.thread_variants.split(",") if t.strip()} - {default_threads})
    if any(t < 1 for t in extra_threads):
        print(f"--thread-variants {args.thread_variants!r}: thread counts must be positive", file=sys.stderr)
        return 2
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}, interop threads {torch.get_num_interop_threads()}, dtype {args.dtype}, batch {args.batch}, "
          f"optimizer step {'on (trm.optim AdamATan2 + SparseSignSGD)' if optimizer else 'off'}, "
          f"malloc tuned {bool(tuned)}, load average {os.getloadavg()[0]:.2f} (1 min), cpus {os.cpu_count()}")

    results = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        if name not in MODELS:
            print(f"unknown model {name!r}; known: {', '.join(MODELS)}", file=sys.stderr)
            return 2
        cfg = make_config(name, args.batch, args.dtype)
        batch = make_batch(cfg, device)
        repeats = args.repeats or (5 if name == "tiny" else 2)
        torch.manual_seed(0)
        model = LossHead(TRM(cfg)).to(device)
        # every variant runs in this process, interleaved, on its own copy of the same weights
        runners = []
        for threads in [0] + extra_threads:
            tag = f" t{threads}" if threads else ""
            for compiled in compile_modes:
                own = copy.deepcopy(model)
                runners.append(Runner("ours" + ("+compile" if compiled else "") + tag, own, batch, optimizer,
                                      torch.compile(own) if compiled else own, threads))
            if args.reference_dir:
                ref = build_reference(args.reference_dir, cfg, model, device)
                runners.append(Runner("reference" + tag, ref, batch, optimizer, threads=threads))
        for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
            load0 = os.getloadavg()[0]
            timed, warmup = time_interleaved(runners, mode, repeats, device, default_threads)
            load1 = os.getloadavg()[0]
            published = REFERENCE_SECONDS.get(name, (0, 0))[0 if mode == "train" else 1]
            vs_published = device.type == "cpu" and args.dtype == "float32" and args.batch == 8 and published
            for label, (wall, cpu, all_walls) in timed.items():
                line = (f"{name:5s} {mode:5s} {label:19s} {wall:8.3f} s/step  {args.batch / wall:8.2f} ex/s  "
                        f"cpu {cpu:7.2f} s  steps {' '.join(f'{w:.2f}' for w in all_walls)}  "
                        f"first {warmup[label]:.2f} s  load {load0:.1f}->{load1:.1f}")
                if label.startswith("ours") and vs_published:
                    line += f"  vs published reference {published:.2f} s: {published / wall:.2f}x (goal {GOAL}x)"
                peer = same_threads_reference(label, timed)
                if label.startswith("ours") and peer:
                    ref_wall, ref_cpu, _ = timed[peer]
                    line += f"  vs {peer} this run: {ref_wall / wall:.2f}x wall, {ref_cpu / cpu:.2f}x cpu"
                if "+compile" in label:
                    line += f"  (compile ~{max(0.0, warmup[label] - wall):.1f} s in the first step)"
                if args.peak_tflops:
                    tflops = step_flops(cfg, mode == "train") / wall / 1e12
                    line += f"  {tflops:.3g} TFLOP/s  MFU {100 * tflops / args.peak_tflops:.1f}%"
                print(line, flush=True)
                results.append((name, mode, label, wall))
            ours = {k: v[0] for k, v in timed.items() if k.startswith("ours")}
            plain = ours.get("ours")
            best = min(ours, key=ours.get)
            line = f"{name:5s} {mode:5s} best of ours: {best} ({settings(best, default_threads)}) {ours[best]:.3f} s/step"
            peer = same_threads_reference(best, timed)
            if peer:  # the reference with the same thread count: threads speed both up alike
                line += f"  vs {peer} this run {timed[peer][0] / ours[best]:.2f}x"
            if "reference" in timed:
                ref_wall = timed["reference"][0]
                if peer != "reference":
                    line += f", vs reference {ref_wall / ours[best]:.2f}x"
                if plain:
                    line += f" (plain ours vs reference {ref_wall / plain:.2f}x)"
            if vs_published:
                line += f"  vs published {published / ours[best]:.2f}x"
                if plain:
                    line += f" (plain ours {published / plain:.2f}x)"
            print(line + f"  goal {GOAL}x  load {load1:.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
