"""Train-step and eval-step throughput of the TRM model, ours against the reference's code (eager and compiled with
its own torch.compile), in one process, on the same weights and batch; one table, optional JSON.

    .venv/bin/python bench/bench_step.py                                  # tiny + seed model, batch 8, float32, CPU
    .venv/bin/python bench/bench_step.py --models tiny --repeats 5
    .venv/bin/python bench/bench_step.py --reference-dir ../TinyRecursiveModels   # also time the reference here
    # the GPU check of issue 14 (bench/gpu_check.sh runs this): the seed model at the per-GPU batch of the seed run
    .venv/bin/python bench/bench_step.py --models seed --device cuda --dtype bfloat16 --batch 192 \
        --ours eager,compile,compile:reduce-overhead,eager+sdpa=flash,eager+sdpa=cudnn,eager+sdpa=efficient \
        --reference eager,compile --reference-dir .gpu-ref --json bench/results/step.json
    # the one-GPU recipe: global batch 768 through micro-batches of 192 / 384, or in one step
    .venv/bin/python bench/bench_step.py --models seed --device cuda --dtype bfloat16 --recipe 768:192,768:384,768:768 \
        --run-steps 724000 --json bench/results/recipe.json
    .venv/bin/python bench/bench_step.py --compile both --thread-variants 1 --interop-threads 1 \
        --reference-dir ../TinyRecursiveModels        # CPU: every setting in one run, interleaved with the reference

What is timed. A train step is one ACT step of the loss head from a fresh carry (every row reset), as the trainer
runs it: forward (ours with the trainer's ACT generator), backward of loss / batch, the optimiser steps and the EMA
update (--no-ema: without; --no-optimizer: forward + backward only). Ours uses trm.optim (AdamATan2 on the dense
weights, SparseSignSGD on the puzzle embeddings, EMA); the reference uses its own sparse sign-SGD class and EMA
helper from its `models/` folder and the `adam_atan2` package's AdamATan2 when importable (else ours; the header
says which). An eval step is one ACT forward under torch.inference_mode. Every setting ("runner") has its own copy
of the same weights; the runners are timed interleaved (`--repeats` rounds after one warm-up step, which is where
torch.compile compiles: printed as `first`), median reported.

Settings. `--ours` and `--reference` take comma lists of `eager` or `compile[:MODE]` (MODE: default,
reduce-overhead = CUDA graphs, max-autotune, max-autotune-no-cudagraphs), each optionally with `+sdpa=NAME`
(attention through one SDPA kernel: flash, cudnn, efficient, math; ours only, trm.model.layers) and `+threads=N`.
The reference's `compile` is what its pretrain.py does: torch.compile(loss head) with every option at its default.
`--compile off|on|both` is shorthand for `--ours eager|compile|eager,compile` (and the same for the reference);
`--thread-variants 1` adds each setting again at 1 thread. `--tf32` turns TF32 on for float32 products
(process-wide; bfloat16 products are not affected). A runner that fails (e.g. a kernel the GPU lacks) is reported
as failed and the others go on.

Columns. s/step (median), examples/s, TFLOP/s and MFU (matmul + attention FLOPs, backward = 2x forward for the
part with gradients; the peak comes from --peak-tflops or, for bf16/fp16 on a known GPU, the table PEAK_TFLOPS),
peak memory (CUDA: the runner's own weights, optimiser and EMA state plus the largest memory its step added; CPU:
n/a), the first (compiling) step, and ratios: "vs ref compiled" / "vs ref eager" = the reference's s/step / ours.
The headline is ours' best setting against the reference compiled (issue 14: >= 1.5x train and eval, MFU >= 45%).

Recipe (--recipe G:M,...): seconds per optimiser step of `G` rows in micro-batches of `M` (G/M forward+backward
passes, one optimiser + EMA step), ours compiled (--recipe-compile; static shapes per micro size), with peak
memory, and what --run-steps such steps take (the seed run: epochs x groups x examples per group / 768).

On CPU the glibc allocator is tuned first (trm.model.runtime; --no-tune-malloc to skip); the tuning is
process-wide, so the same-run reference profits from it too. Baselines for CPU float32 batch 8 measured on the
project's 2-core machine (the reference: 27.3 s / 11.9 s per train / eval step for the seed model; 0.41 s / 0.20 s
for the tiny one) are printed as "vs published" where they apply.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib
import inspect
import json
import os
import platform
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
from trm.model.layers import SDPA_BACKENDS, set_attention_backend  # noqa: E402
from trm.model.runtime import tune_cpu_allocator  # noqa: E402

MODELS = {
    "tiny": dict(hidden_size=64, num_heads=2, L_layers=1, H_cycles=2, L_cycles=2, halt_max_steps=4, puzzle_emb_len=16),
    "seed": dict(hidden_size=512, num_heads=8, L_layers=2, H_cycles=3, L_cycles=4, halt_max_steps=16, puzzle_emb_len=16),
}
# Reference timings, float32 CPU, batch 8, the project's 2-core machine: seconds per (train, eval) step.
REFERENCE_SECONDS = {"tiny": (0.41, 0.20), "seed": (27.3, 11.9)}
CPU_GOAL = 1.25  # against those published CPU timings
GPU_GOAL = 1.5  # issue 14: ours (best) against the reference compiled, train and eval
MFU_GOAL = 45.0
NUM_IDS = 64
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# Dense bf16/fp16 tensor-core peaks (TFLOP/s) by a substring of torch.cuda.get_device_name(), first match wins.
PEAK_TFLOPS = (("H200", 989.0), ("GH200", 989.0), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0),
               ("H800", 989.0), ("A100", 312.0), ("L40S", 362.0), ("A10G", 70.0), ("L4", 121.0))


def make_config(name: str, batch: int, dtype: str, num_ids: int = NUM_IDS) -> ModelConfig:
    return ModelConfig(batch_size=batch, num_puzzle_identifiers=num_ids, forward_dtype=dtype,
                       halt_exploration_prob=0.1, **MODELS[name])


def make_batch(cfg: ModelConfig, device: torch.device) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    n = cfg.batch_size
    labels = torch.randint(2, cfg.vocab_size, (n, cfg.seq_len), generator=g, dtype=torch.int32)
    labels[:, cfg.seq_len // 2:] = -100  # padding, as in real ARC rows
    batch = {"inputs": torch.randint(0, cfg.vocab_size, (n, cfg.seq_len), generator=g, dtype=torch.int32),
             "labels": labels,
             "puzzle_identifiers": torch.randint(1, cfg.num_puzzle_identifiers, (n,), generator=g, dtype=torch.int32)}
    return {k: v.to(device) for k, v in batch.items()}


def step_flops(cfg: ModelConfig, train: bool) -> float:
    """Matmul + attention FLOPs of one ACT step (forward; train adds 2x forward for the last H cycle)."""
    b, s, d, i = cfg.batch_size, cfg.total_len, cfg.hidden_size, cfg.mlp_inter
    layer = 2 * b * s * (3 * d * d + d * d + 2 * d * i + i * d) + 4 * b * s * s * d
    heads = 2 * b * cfg.seq_len * d * cfg.vocab_size
    per_cycle = (cfg.L_cycles + 1) * cfg.L_layers * layer
    forward = cfg.H_cycles * per_cycle + heads
    return forward + (2 * (per_cycle + heads) if train else 0)


def device_peak_tflops(device: torch.device, dtype: str) -> float:
    """The dense bf16/fp16 peak of a known GPU; 0 when unknown (CPU, float32, another GPU)."""
    if device.type != "cuda" or dtype not in ("bfloat16", "float16"):
        return 0.0
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_TFLOPS if key in name), 0.0)


# --- settings --------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Spec:
    """One timed setting: whose code, eager or compiled (and how), attention kernel, CPU threads."""

    side: str  # "ours" | "reference"
    compile: str | None = None  # None: eager; else a torch.compile mode
    sdpa: str = "auto"
    threads: int = 0  # 0: the process default

    @property
    def label(self) -> str:
        text = self.side + (" eager" if self.compile is None else " compile" if self.compile == "default"
                            else f" compile:{self.compile}")
        if self.sdpa != "auto":
            text += f"+sdpa={self.sdpa}"
        if self.threads:
            text += f" t{self.threads}"
        return text


def parse_specs(text: str, side: str) -> list[Spec]:
    """`eager,compile,compile:reduce-overhead+sdpa=cudnn,eager+threads=1` -> Specs; ValueError on bad items."""
    specs = []
    for item in [t.strip() for t in text.split(",") if t.strip()]:
        head, *options = item.split("+")
        kind, _, mode = head.partition(":")
        if kind == "eager" and not mode:
            compiled = None
        elif kind == "compile":
            compiled = mode or "default"
            if compiled not in COMPILE_MODES:
                raise ValueError(f"{item!r}: compile mode must be one of {COMPILE_MODES}")
        else:
            raise ValueError(f"{item!r}: expected eager or compile[:MODE] (then +sdpa=NAME, +threads=N)")
        fields: dict = {"compile": compiled}
        for option in options:
            key, _, value = option.partition("=")
            if key == "sdpa" and (value == "auto" or value in SDPA_BACKENDS):
                if side == "reference" and value != "auto":
                    raise ValueError(f"{item!r}: the attention kernel is chosen for ours only")
                fields["sdpa"] = value
            elif key == "threads" and value.isdigit() and int(value) >= 1:
                fields["threads"] = int(value)
            else:
                raise ValueError(f"{item!r}: unknown option {option!r} (sdpa=auto|{'|'.join(SDPA_BACKENDS)}, threads=N)")
        specs.append(Spec(side, **fields))
    return specs


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


def _classes(module: types.ModuleType, base: type, *attrs: str) -> list[type]:
    return [c for _, c in inspect.getmembers(module, inspect.isclass)
            if c.__module__ == module.__name__ and issubclass(c, base) and all(hasattr(c, a) for a in attrs)]


def _module_class_with(module: types.ModuleType, attr: str, base: type = torch.nn.Module) -> type:
    found = _classes(module, base, attr)
    if len(found) != 1:
        raise ValueError(f"{module.__file__}: expected one {base.__name__} class with `{attr}`, found {found}")
    return found[0]


def _import_reference(ref_dir: Path) -> None:
    try:
        importlib.import_module("einops")
    except ImportError:
        sys.modules["einops"] = _permutation_module()
    if str(ref_dir) not in sys.path:
        sys.path.insert(0, str(ref_dir))


def build_reference(ref_dir: Path, cfg: ModelConfig, ours: LossHead, device: torch.device) -> torch.nn.Module:
    """The reference's loss head around its ACT model, with our weights (the state-dict keys are the same)."""
    _import_reference(ref_dir)
    model_cls = _module_class_with(importlib.import_module("models.recursive_reasoning.trm"), "initial_carry")
    head_cls = _module_class_with(importlib.import_module("models.losses"), "initial_carry")
    with torch.device(device):
        ref = head_cls(model_cls({**cfg.to_dict(), "causal": False}), loss_type="stablemax_cross_entropy")
    ref.load_state_dict(ours.state_dict(), strict=True)
    return ref


def reference_training_parts(ref_dir: Path, model: torch.nn.Module, lr: float, emb_lr: float, ema: bool):
    """The reference trainer's optimisers and EMA for `model`, as its pretrain.py builds them (one process):
    its sparse sign-SGD on the puzzle-embedding buffers, AdamATan2 on the parameters (the `adam_atan2` package
    when importable, else ours) and its EMA helper. Returns (optimizers, ema or None, AdamATan2 origin)."""
    _import_reference(ref_dir)
    sparse_cls = _module_class_with(importlib.import_module("models.sparse_embedding"), "step", torch.optim.Optimizer)
    try:
        adam_cls = importlib.import_module("adam_atan2").AdamATan2
        origin = "adam_atan2 package"
    except (ImportError, AttributeError):
        from trm.optim import AdamATan2 as adam_cls

        origin = "trm.optim (adam_atan2 package not importable)"
    optimizers = [sparse_cls(model.model.puzzle_emb.buffers(), world_size=1, lr=emb_lr, weight_decay=0.1),
                  adam_cls(model.parameters(), lr=lr, weight_decay=0.1, betas=(0.9, 0.95))]
    helper = None
    if ema:
        found = [c for _, c in inspect.getmembers(importlib.import_module("models.ema"), inspect.isclass)
                 if hasattr(c, "register") and hasattr(c, "update")]
        if len(found) != 1:
            raise ValueError(f"reference models/ema.py: expected one EMA helper class, found {found}")
        helper = found[0](mu=0.999)
        helper.register(model)
    return optimizers, helper, origin


# --- timing ----------------------------------------------------------------------------------------------------

def _tensor_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        if torch.is_tensor(t) and t.device.type != "meta":
            key = (t.untyped_storage().data_ptr(), t.device)
            if key not in seen:
                seen.add(key)
                total += t.untyped_storage().nbytes()
    return total


class Runner:
    """One setting: its own model copy, optimisers and EMA; train_step / eval_step as the trainers run them."""

    def __init__(self, spec: Spec, model: torch.nn.Module, batch: dict, optimizer: bool, ema: bool,
                 ref_dir: Path | None = None):
        self.spec, self.model, self.batch = spec, model, batch
        self.label = spec.label
        self.device = batch["inputs"].device
        if spec.sdpa != "auto":
            set_attention_backend(model, spec.sdpa)
        # "default": torch.compile with every option at its default, as the reference's pretrain.py calls it
        self.call = (model if spec.compile is None else torch.compile(model) if spec.compile == "default"
                     else torch.compile(model, mode=spec.compile))
        self.optimizers, self.ema, self.adam_origin = [], None, ""
        self.generator = None
        if spec.side == "ours":
            self.generator = torch.Generator(device=self.device).manual_seed(0)
            if optimizer:
                from trm.optim import AdamATan2, SparseSignSGD

                dense = [p for p in model.parameters() if p.requires_grad]
                self.optimizers = [AdamATan2(dense, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1),
                                   SparseSignSGD(model.model.puzzle_emb, lr=1e-2, weight_decay=0.1)]
                self.adam_origin = "trm.optim"
            if ema:
                from trm.optim import EMA

                self.ema = EMA(model, 0.999)
        elif optimizer or ema:
            optimizers, self.ema, self.adam_origin = reference_training_parts(ref_dir, model, 1e-4, 1e-2, ema)
            self.optimizers = optimizers if optimizer else []
        self.failed: str | None = None

    def step(self, mode: str) -> None:
        if self.spec.threads:
            torch.set_num_threads(self.spec.threads)
        if self.spec.compile is not None and hasattr(torch.compiler, "cudagraph_mark_step_begin"):
            torch.compiler.cudagraph_mark_step_begin()  # a new iteration for CUDA-graph trees (reduce-overhead)
        # the reference makes its carry with torch.empty on the default device (its trainer wraps the call in
        # `with torch.device("cuda")`); ours follows the batch, so the context changes nothing for it
        with torch.device(self.device):
            getattr(self, f"{mode}_step")()

    def _forward(self, carry, batch):
        if self.generator is not None:
            return self.call(carry=carry, batch=batch, return_keys=(), generator=self.generator)
        return self.call(carry=carry, batch=batch, return_keys=())

    def train_step(self, micro_batches: list[dict] | None = None) -> None:
        self.model.train()
        for batch in micro_batches or [self.batch]:
            carry = self.model.initial_carry(batch)
            _, loss, *_ = self._forward(carry, batch)
            (loss / self.batch["inputs"].shape[0]).backward()
            if self.optimizers and hasattr(self.optimizers[-1], "collect"):
                self.optimizers[-1].collect()  # ours: set the micro-batch's embedding gradients aside
        for opt in self.optimizers:
            opt.step()
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        self.model.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model)

    def eval_step(self) -> None:
        self.model.eval()
        with torch.inference_mode():
            carry = self.model.initial_carry(self.batch)
            self._forward(carry, self.batch)

    def state_bytes(self) -> int:
        """Bytes of this runner's weights, buffers, optimiser state and EMA shadow."""
        tensors = list(self.model.parameters()) + list(self.model.buffers())
        for opt in self.optimizers:
            for state in opt.state.values():
                tensors += [v for v in state.values() if torch.is_tensor(v)]
        if self.ema is not None:
            shadow = getattr(self.ema, "shadow", {})
            tensors += list(shadow.values())
        return _tensor_bytes(tensors)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_step(runner: Runner, mode: str, device: torch.device) -> tuple[float, float, int | None]:
    """(wall s, process CPU s, bytes the step added at its peak: CUDA only, else None) of one step."""
    added = None
    if device.type == "cuda":
        _sync(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    u0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    runner.step(mode)
    _sync(device)
    wall = time.perf_counter() - t0
    u1 = resource.getrusage(resource.RUSAGE_SELF)
    if device.type == "cuda":
        added = max(0, torch.cuda.max_memory_allocated(device) - before)
    return wall, u1.ru_utime - u0.ru_utime + u1.ru_stime - u0.ru_stime, added


def _error(err: BaseException) -> str:
    return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:300]


def time_interleaved(runners: list[Runner], mode: str, repeats: int, device: torch.device,
                     default_threads: int) -> dict[str, dict]:
    """Per runner: median wall/CPU s, every wall time, the first (warm-up/compile) step and peak memory; runners
    that raise are marked failed and left out of later rounds."""
    out = {r.label: {"walls": [], "cpus": [], "added": 0, "first": None, "error": None} for r in runners}

    def run(r: Runner) -> tuple[float, float, int | None] | None:
        try:
            return timed_step(r, mode, device)
        except Exception as err:  # noqa: BLE001 - a setting the device cannot run is reported, the rest go on
            out[r.label]["error"] = _error(err)
            print(f"  {r.label} {mode}: failed: {out[r.label]['error']}", file=sys.stderr, flush=True)
            return None
        finally:
            torch.set_num_threads(default_threads)

    for r in runners:  # warm-up (and compilation)
        got = run(r)
        if got is not None:
            out[r.label]["first"] = got[0]
            out[r.label]["added"] = max(out[r.label]["added"], got[2] or 0)
            print(f"  {r.label} {mode}: first step {got[0]:.2f} s", file=sys.stderr, flush=True)
    for _ in range(repeats):
        for r in runners:
            if out[r.label]["error"]:
                continue
            got = run(r)
            if got is not None:
                out[r.label]["walls"].append(got[0])
                out[r.label]["cpus"].append(got[1])
                out[r.label]["added"] = max(out[r.label]["added"], got[2] or 0)
    for r in runners:
        row = out[r.label]
        row["wall"] = statistics.median(row["walls"]) if row["walls"] and not row["error"] else None
        row["cpu"] = statistics.median(row["cpus"]) if row["cpus"] and not row["error"] else None
        row["peak_bytes"] = (r.state_bytes() + row["added"]) if device.type == "cuda" and not row["error"] else None
    return out


# --- output ----------------------------------------------------------------------------------------------------

def _fmt(value, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def print_table(rows: list[dict]) -> None:
    head = (f"{'model':5s} {'mode':5s} {'setting':40s} {'s/step':>8s} {'ex/s':>8s} {'TFLOP/s':>8s} {'MFU %':>6s} "
            f"{'peak GiB':>8s} {'first s':>8s} {'vs ref compiled':>15s} {'vs ref eager':>12s}")
    print(head)
    print("-" * len(head))
    for r in rows:
        if r["error"]:
            print(f"{r['model']:5s} {r['mode']:5s} {r['setting']:40s} failed: {r['error']}")
            continue
        print(f"{r['model']:5s} {r['mode']:5s} {r['setting']:40s} {r['seconds']:8.4f} {r['examples_per_s']:8.1f} "
              f"{_fmt(r['tflops'], '8.2f'):>8s} {_fmt(r['mfu'], '6.1f'):>6s} "
              f"{_fmt(r['peak_gib'], '8.2f', 'n/a'):>8s} {_fmt(r['first_s'], '8.1f'):>8s} "
              f"{_fmt(r['vs_reference_compiled'], '14.2f') + ('x' if r['vs_reference_compiled'] else ''):>15s} "
              f"{_fmt(r['vs_reference_eager'], '11.2f') + ('x' if r['vs_reference_eager'] else ''):>12s}")


def headline(rows: list[dict], name: str, mode: str) -> dict | None:
    """Ours' best setting against the reference compiled (and eager) for one model and mode."""
    mine = [r for r in rows if r["model"] == name and r["mode"] == mode and r["side"] == "ours" and r["seconds"]]
    if not mine:
        return None
    best = min(mine, key=lambda r: r["seconds"])
    plain = next((r for r in mine if r["setting"] == "ours eager"), None)
    ref = {r["setting"]: r["seconds"] for r in rows
           if r["model"] == name and r["mode"] == mode and r["side"] == "reference" and r["seconds"]}
    ref_compiled, ref_eager = ref.get("reference compile"), ref.get("reference eager")
    return {"model": name, "mode": mode, "best": best["setting"], "seconds": best["seconds"], "mfu": best["mfu"],
            "peak_gib": best["peak_gib"], "plain_eager_seconds": plain["seconds"] if plain else None,
            "reference_compiled_seconds": ref_compiled, "reference_eager_seconds": ref_eager,
            "vs_reference_compiled": ref_compiled / best["seconds"] if ref_compiled else None,
            "vs_reference_eager": ref_eager / best["seconds"] if ref_eager else None}


def print_headline(h: dict, published: float | None) -> None:
    line = (f"{h['model']} {h['mode']}: best of ours = {h['best']} {h['seconds']:.4f} s/step"
            + (f", MFU {h['mfu']:.1f}% (goal {MFU_GOAL:.0f}%)" if h["mfu"] is not None and h["mode"] == "train" else ""))
    if h["vs_reference_compiled"]:
        line += (f"; reference compiled {h['reference_compiled_seconds']:.4f} s -> {h['vs_reference_compiled']:.2f}x "
                 f"(goal {GPU_GOAL}x: {'met' if h['vs_reference_compiled'] >= GPU_GOAL else 'NOT met'})")
    if h["vs_reference_eager"]:
        line += f"; vs reference eager {h['vs_reference_eager']:.2f}x"
    if published:
        line += f"; vs published CPU reference {published:.2f} s: {published / h['seconds']:.2f}x (goal {CPU_GOAL}x)"
    print(line, flush=True)


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(payload, indent=1))
    tmp.replace(path)


def environment(device: torch.device, args, optimizer_note: str) -> dict:
    env = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
           "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)",
           "threads": torch.get_num_threads(), "dtype": args.dtype, "batch": args.batch, "tf32": args.tf32,
           "optimizers": optimizer_note, "ema": not args.no_ema, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
           "load_average": os.getloadavg()[0]}
    if device.type == "cuda":
        env["gpu_memory_gib"] = torch.cuda.get_device_properties(device).total_memory / 2**30
    return env


# --- the one-GPU recipe ----------------------------------------------------------------------------------------

def run_recipe(args, model: LossHead, name: str, device: torch.device, peak: float, partial: dict) -> list[dict]:
    """Seconds per optimiser step and peak memory of `G` rows in micro-batches of `M`, ours compiled."""
    rows = []
    for item in [t.strip() for t in args.recipe.split(",") if t.strip()]:
        total, _, micro = item.partition(":")
        total, micro = int(total), int(micro or total)
        if total % micro:
            raise ValueError(f"--recipe {item}: the micro-batch {micro} must divide {total}")
        cfg = make_config(name, micro, args.dtype, args.num_ids)
        batch = make_batch(make_config(name, total, args.dtype, args.num_ids), device)
        micro_batches = [{k: v[i : i + micro] for k, v in batch.items()} for i in range(0, total, micro)]
        own = copy.deepcopy(model)
        mode = None if args.recipe_compile == "off" else args.recipe_compile
        runner = Runner(Spec("ours", mode), own, batch, optimizer=True, ema=not args.no_ema)
        if mode is not None:  # static shapes: each micro size its own graphs
            runner.call = torch.compile(own, mode=mode, dynamic=False)
        runner.train_step = (lambda r=runner, mb=micro_batches: Runner.train_step(r, mb))  # type: ignore[method-assign]
        label = f"{total} rows as {total // micro} x {micro}"
        row = {"model": name, "global_batch": total, "micro_batch": micro, "accumulation": total // micro,
               "setting": label, "compile": args.recipe_compile, "error": None}
        try:
            first = timed_step(runner, "train", device)[0]
            walls, added = [], 0
            for _ in range(args.recipe_repeats):
                wall, _cpu, extra = timed_step(runner, "train", device)
                walls.append(wall)
                added = max(added, extra or 0)
            seconds = statistics.median(walls)
            flops = step_flops(cfg, True) * (total // micro)
            row.update(seconds=seconds, walls=walls, first_s=first, examples_per_s=total / seconds,
                       tflops=flops / seconds / 1e12, mfu=100 * flops / seconds / 1e12 / peak if peak else None,
                       peak_gib=(runner.state_bytes() + added) / 2**30 if device.type == "cuda" else None,
                       run_steps=args.run_steps, run_hours=args.run_steps * seconds / 3600 if args.run_steps else None)
        except Exception as err:  # noqa: BLE001 - e.g. out of memory for one step of 768 rows
            row["error"] = _error(err)
        rows.append(row)
        if args.json:  # after each configuration: a run cut short keeps what it measured
            write_json(args.json, {**partial, "recipe": partial["recipe"] + rows})
        del runner, own, batch, micro_batches
        if device.type == "cuda":
            torch.cuda.empty_cache()
        r = row
        if r["error"]:
            print(f"recipe {label}: failed: {r['error']}", flush=True)
        else:
            print(f"recipe {label}: {r['seconds']:.3f} s per optimiser step ({r['examples_per_s']:.0f} ex/s), "
                  f"{_fmt(r['tflops'], '.1f')} TFLOP/s, MFU {_fmt(r['mfu'], '.1f')}%, peak {_fmt(r['peak_gib'], '.2f', 'n/a')} GiB, "
                  f"first step {r['first_s']:.1f} s"
                  + (f"; {args.run_steps} such steps: {r['run_hours']:.1f} h on this device" if args.run_steps else ""),
                  flush=True)
    return rows


# --- main ------------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="tiny,seed", help="comma list of: " + ", ".join(MODELS))
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=0, help="timed steps per setting and mode (default: tiny 5, seed 2)")
    p.add_argument("--modes", default="train,eval")
    p.add_argument("--ours", default=None, help="settings for ours: eager, compile[:MODE], each [+sdpa=NAME][+threads=N]")
    p.add_argument("--reference", default=None, help="settings for the reference (with --reference-dir): eager, compile")
    p.add_argument("--compile", choices=["off", "on", "both"], default="off",
                   help="shorthand when --ours/--reference are not given")
    p.add_argument("--no-optimizer", action="store_true", help="train step without the optimiser steps and EMA")
    p.add_argument("--no-ema", action="store_true", help="train step without the EMA update")
    p.add_argument("--tf32", action="store_true", help="TF32 for float32 matrix products (CUDA, process-wide)")
    p.add_argument("--num-ids", type=int, default=NUM_IDS,
                   help="rows of the puzzle-embedding table (the seed: ~1.28 M; memory, not speed)")
    p.add_argument("--no-tune-malloc", action="store_true")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--interop-threads", type=int, default=0, help="torch.set_num_interop_threads (process-wide)")
    p.add_argument("--thread-variants", default="", help="comma list of other thread counts to time as well, e.g. 1")
    p.add_argument("--reference-dir", type=Path, default=os.environ.get("TRM_REFERENCE_DIR") or None,
                   help="a checkout of the reference code (its models/ folder), to time it in this run")
    p.add_argument("--peak-tflops", type=float, default=0.0,
                   help="device peak for MFU (default: the table for bf16/fp16 on known GPUs; H100 SXM / H200: 989)")
    p.add_argument("--recipe", default="", help="G:M,...: global batch G in micro-batches of M (skips the table)")
    p.add_argument("--recipe-compile", default="default", help="compile mode for the recipe (off: eager)")
    p.add_argument("--recipe-repeats", type=int, default=2)
    p.add_argument("--run-steps", type=int, default=0, help="optimiser steps of the full run, for the recipe's hours")
    p.add_argument("--json", type=Path, default=None, help="write the numbers here (e.g. bench/results/step.json)")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"--device {args.device}: CUDA is not available", file=sys.stderr)
        return 2
    try:
        ours_specs = parse_specs(args.ours if args.ours is not None else
                                 {"off": "eager", "on": "compile", "both": "eager,compile"}[args.compile], "ours")
        ref_specs = parse_specs(args.reference if args.reference is not None else
                                {"off": "eager", "on": "compile", "both": "eager,compile"}[args.compile], "reference")
        extra_threads = sorted({int(t) for t in args.thread_variants.split(",") if t.strip()})
    except ValueError as err:
        print(f"bench_step: {err}", file=sys.stderr)
        return 2
    if any(t < 1 for t in extra_threads):
        print(f"--thread-variants {args.thread_variants!r}: thread counts must be positive", file=sys.stderr)
        return 2
    if args.reference_dir is not None and not (Path(args.reference_dir) / "models" / "losses.py").is_file():
        print(f"--reference-dir {args.reference_dir}: no models/losses.py there (a checkout of the reference code)",
              file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.interop_threads:
        torch.set_num_interop_threads(args.interop_threads)  # before any parallel work, or torch refuses
    if args.tf32 and device.type == "cuda":
        torch.set_float32_matmul_precision("high")
    # every setting compiles the same forward code; keep all their graphs
    for key in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, key):
            setattr(torch._dynamo.config, key, max(getattr(torch._dynamo.config, key), 64))
    tuned = device.type == "cpu" and not args.no_tune_malloc and tune_cpu_allocator()
    optimizer = not args.no_optimizer
    default_threads = torch.get_num_threads()
    extra_threads = [t for t in extra_threads if t != default_threads]
    with_threads = lambda specs: specs + [dataclasses.replace(s, threads=t) for t in extra_threads for s in specs]  # noqa: E731
    ours_specs = with_threads(ours_specs)
    ref_specs = with_threads(ref_specs) if args.reference_dir else []
    peak = args.peak_tflops or device_peak_tflops(device, args.dtype)
    note = ("ours trm.optim AdamATan2 + SparseSignSGD" + ("" if args.no_ema else " + EMA")) if optimizer else "off"
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
          f"torch {torch.__version__} (CUDA {torch.version.cuda}), threads {torch.get_num_threads()}, interop "
          f"{torch.get_num_interop_threads()}, dtype {args.dtype}, batch {args.batch}, optimizer step: {note}, "
          f"tf32 {args.tf32}, malloc tuned {bool(tuned)}, MFU peak {peak or 'n/a'} TFLOP/s, "
          f"load average {os.getloadavg()[0]:.2f}, cpus {os.cpu_count()}", flush=True)

    payload = {"bench": "bench_step", "env": environment(device, args, note), "rows": [], "headline": [],
               "recipe": [], "peak_tflops": peak or None}
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        if name not in MODELS:
            print(f"unknown model {name!r}; known: {', '.join(MODELS)}", file=sys.stderr)
            return 2
        torch.manual_seed(0)
        with torch.device(device):
            model = LossHead(TRM(make_config(name, args.batch, args.dtype, args.num_ids)))
        if args.recipe:
            payload["recipe"] += run_recipe(args, model, name, device, peak, payload)
            continue
        cfg = make_config(name, args.batch, args.dtype, args.num_ids)
        batch = make_batch(cfg, device)
        repeats = args.repeats or (5 if name == "tiny" else 2)
        runners = []
        for spec in ours_specs:
            runners.append(Runner(spec, copy.deepcopy(model), batch, optimizer, not args.no_ema))
        for spec in ref_specs:
            ref = build_reference(args.reference_dir, cfg, model, device)
            runners.append(Runner(spec, ref, batch, optimizer, not args.no_ema, args.reference_dir))
        if ref_specs and optimizer:
            payload["env"]["reference_optimizers"] = (f"reference sparse sign-SGD + AdamATan2 from "
                                                      f"{runners[-1].adam_origin}" + ("" if args.no_ema else " + EMA helper"))
            print(f"reference optimizer step: its own sparse sign-SGD, AdamATan2 from {runners[-1].adam_origin}"
                  + ("" if args.no_ema else ", its EMA helper"), flush=True)
        del model
        rows = []
        for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
            timed = time_interleaved(runners, mode, repeats, device, default_threads)
            flops = step_flops(cfg, mode == "train")
            ref_times = {r.spec: timed[r.label]["wall"] for r in runners if r.spec.side == "reference"}
            for r in runners:
                t = timed[r.label]
                wall = t["wall"]
                peer_c = ref_times.get(Spec("reference", "default", threads=r.spec.threads))
                peer_e = ref_times.get(Spec("reference", None, threads=r.spec.threads))
                tflops = flops / wall / 1e12 if wall else None
                rows.append({
                    "model": name, "mode": mode, "setting": r.label, "side": r.spec.side, "compile": r.spec.compile,
                    "sdpa": r.spec.sdpa, "threads": r.spec.threads or default_threads, "seconds": wall,
                    "walls": t["walls"], "cpu_seconds": t["cpu"], "first_s": t["first"],
                    "examples_per_s": args.batch / wall if wall else None,
                    "tflops": tflops,
                    "mfu": 100 * tflops / peak if tflops and peak else None,
                    "peak_gib": t["peak_bytes"] / 2**30 if t["peak_bytes"] is not None else None,
                    "vs_reference_compiled": peer_c / wall if peer_c and wall and r.spec.side == "ours" else None,
                    "vs_reference_eager": peer_e / wall if peer_e and wall and r.spec.side == "ours" else None,
                    "error": t["error"]})
            if args.json:  # after each mode: a run cut short keeps what it measured
                heads = [h for h in (headline(rows, name, m) for m in {r["mode"]: 0 for r in rows}) if h]
                write_json(args.json, {**payload, "rows": payload["rows"] + rows,
                                       "headline": payload["headline"] + heads})
        print()
        print_table(rows)
        payload["rows"] += rows
        cpu_baseline = device.type == "cpu" and args.dtype == "float32" and args.batch == 8
        for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
            h = headline(rows, name, mode)
            if h:
                payload["headline"].append(h)
                published = REFERENCE_SECONDS.get(name, (0, 0))[0 if mode == "train" else 1] if cpu_baseline else None
                print_headline(h, published)
        print(flush=True)
        del runners
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if device.type == "cuda":
        payload["env"]["process_peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    if args.json:
        write_json(args.json, payload)
        print(f"wrote {args.json}")
    failed = [r for r in payload["rows"] + payload["recipe"] if r.get("error")]
    return 1 if failed and not [r for r in payload["rows"] + payload["recipe"] if not r.get("error")] else 0


if __name__ == "__main__":
    sys.exit(main())
