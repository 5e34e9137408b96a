"""Train TRM on a built ARC dataset: one process, `torchrun` DDP (NCCL on GPUs, gloo on CPU), or `trm train`.

    # one process (GPU when there is one, else CPU)
    python -m trm.train preset=arc2-seed data_paths=[data/arc2concept-aug-1000] +run_name=try1
    # the reference's seed command, as written, on 4 GPUs
    torchrun --nproc-per-node 4 -m trm.train arch=trm data_paths="[data/arc2concept-aug-1000]" \
        arch.L_layers=2 arch.H_cycles=3 arch.L_cycles=4 +run_name=pretrain_att_arc2concept_4 ema=True
    # the same global batch of 768 on 2 smaller GPUs: 384 rows per rank in 4 micro-batches of 96
    torchrun --nproc-per-node 2 -m trm.train preset=arc2-seed data_paths=[data/arc2] micro_batch_size=96
    # a tiny CPU run (tests, laptops): 2 gloo processes
    torchrun --nproc-per-node 2 -m trm.train preset=cpu-tiny data_paths=[data/tiny] run_dir=runs/tiny max_steps=50
    trm train preset=cpu-tiny data_paths=[data/tiny] run_dir=runs/tiny wandb=off

Config keys: see trm/config.py and docs/training.md. Run folder (`run_dir`, default runs/<run_name>):
`metrics.jsonl` (one JSON object per step, with "step" and unix "time"), `checkpoints/step-N/` (unless checkpoint_path is
set), `eval/step-N/` (metrics.json, submission.json). A run started again with the same command resumes from
the newest good checkpoint of the same training parameters and continues exactly as if never stopped; a bad
checkpoint is moved aside and the one before it is used; `resume=False` (or other training parameters) moves the
old checkpoints aside and starts over. On SIGTERM every rank stops at the next step boundary, the checkpoint of that
step is written, and the process exits with code 143 (EXIT_PREEMPTED): run the same command again to continue.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from trm.checkpoint import Checkpoints
from trm.config import TrainConfig, load_config
from trm.storage.local import atomic_write
from trm.optim import EMA, AdamATan2, SparseSignSGD, all_gather_rows, lr_factor

METRIC_FILE = "metrics.jsonl"
# Exit code after a SIGTERM that was answered with a checkpoint: 128 + SIGTERM, the code a shell gives a process
# ended by SIGTERM. Kubernetes restart policies (OnFailure; PyTorchJob's ExitCode policy treats 128-255 as
# retryable) and KFP retries start the step again, and the same command resumes from that checkpoint.
EXIT_PREEMPTED = 143


# ---------------------------------------------------------------------------------------------------------------
# Distributed set-up


@dataclasses.dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(cfg: TrainConfig) -> Dist:
    """Initialise torch.distributed under torchrun (NCCL on CUDA, gloo on CPU) and pick the device."""
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda but no CUDA device is available")
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        local_rank, rank, world = 0, 0, 1
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    return Dist(rank=rank, world_size=world, local_rank=local_rank, device=device)


# ---------------------------------------------------------------------------------------------------------------
# Small helpers


def _tree_tensors(obj: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """Flatten a carry (dataclass / dict of tensors) to {dotted path: tensor}."""
    out: dict[str, torch.Tensor] = {}
    if torch.is_tensor(obj):
        out[prefix] = obj
    elif dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            out.update(_tree_tensors(getattr(obj, f.name), f"{prefix}{f.name}."))
    elif isinstance(obj, dict):
        for k, v in obj.items():
            out.update(_tree_tensors(v, f"{prefix}{k}."))
    return {k.rstrip("."): v for k, v in out.items()}


def carry_state(carry: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in _tree_tensors(carry).items()}


def load_carry_state(carry: Any, state: dict[str, torch.Tensor]) -> None:
    """Copy saved tensors into a freshly made carry of the same structure (in place)."""
    tensors = _tree_tensors(carry)
    if set(tensors) != set(state):
        raise ValueError(f"checkpoint carry does not match the model: {sorted(set(tensors) ^ set(state))}")
    for k, t in tensors.items():
        if t.shape != state[k].shape:
            raise ValueError(f"checkpoint carry {k}: shape {tuple(state[k].shape)} != {tuple(t.shape)} "
                             "(global_batch_size, world size and micro_batch_size must match the saved run)")
        t.copy_(state[k].to(t.device, t.dtype))


def rng_state(generator: torch.Generator, device: torch.device) -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": _numpy_state(),
        "python": random.getstate(),
        "act": generator.get_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _numpy_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "gauss": float(gauss)}


def set_rng_state(state: dict[str, Any], generator: torch.Generator, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    generator.set_state(state["act"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _split(batch: dict[str, torch.Tensor], parts: int) -> list[dict[str, torch.Tensor]]:
    if parts == 1:
        return [batch]
    chunks = {k: v.chunk(parts) for k, v in batch.items()}
    return [{k: chunks[k][i] for k in batch} for i in range(parts)]


@dataclasses.dataclass
class StepMetrics:
    """A launched step's train metrics, not yet read from the device (Trainer.launch_step / read_metrics)."""

    step: int
    time: float  # unix time when the step was launched (its metrics.jsonl "time")
    keys: list[str]
    values: torch.Tensor  # float64 sums over the global batch, in `keys` order, on the device
    lr: float
    extra: dict[str, float] = dataclasses.field(default_factory=dict)  # host values, e.g. train/data_wait_s


def apply_tf32(enabled: bool, device: torch.device) -> bool:
    """The `tf32` key: TF32 tensor cores for float32 matrix products on CUDA (process-wide). On CPU nothing
    changes (the CPU float32 products keep full precision); returns whether it was applied."""
    if not enabled or device.type != "cuda":
        return False
    torch.set_float32_matmul_precision("high")  # the setting torch.compile's Inductor reads too
    return True


LEVERS = ("compile_mode", "sdpa_backend", "tf32", "log_interval", "prefetch_batches", "log_data_wait")


def levers_set(cfg: TrainConfig) -> list[str]:
    """`key=value` for each speed-lever key that differs from its default (for the start-up line)."""
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    return [f"{k}={getattr(cfg, k)}" for k in LEVERS if getattr(cfg, k) != defaults[k]]


def compile_model(model: torch.nn.Module, mode: str = "default") -> torch.nn.Module:
    """torch.compile with the `compile_mode` key's mode (default, reduce-overhead = CUDA graphs, max-autotune...)."""
    return torch.compile(model) if mode == "default" else torch.compile(model, mode=mode)


class MetricLog:
    """metrics.jsonl in the run folder (rank 0), plus W&B when configured."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, resume_step: int | None, enabled: bool):
        self.enabled = enabled
        self.path = run_dir / METRIC_FILE
        self.wandb = None
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            self._truncate(resume_step)
        elif resume_step is None and self.path.exists():
            self.path.unlink()
        self.handle = open(self.path, "a", encoding="utf-8")
        self.wandb = _start_wandb(cfg, run_dir)

    def _truncate(self, step: int) -> None:
        """Drop lines logged after the checkpoint we resume from (they will be logged again)."""
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
        atomic_write(self.path, "".join(line + "\n" for line in kept))

    def log(self, step: int, metrics: dict[str, float], at: float | None = None) -> None:
        """One line; `at`: its unix time (default now)."""
        if not self.enabled:
            return
        when = time.time() if at is None else at
        record = {"step": step, "time": round(when, 3), **{k: float(v) for k, v in metrics.items()}}
        self.handle.write(json.dumps(record) + "\n")
        self.handle.flush()
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)

    def close(self) -> None:
        if self.enabled:
            self.handle.close()
            if self.wandb is not None:
                self.wandb.finish()


def _start_wandb(cfg: TrainConfig, run_dir: Path):
    if cfg.wandb == "off":
        return None
    try:
        import wandb
    except ImportError:
        if cfg.wandb == "on":
            raise ValueError("wandb=on but the wandb package is not installed (pip install 'trm-pipeline[wandb]')")
        return None
    mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
    return wandb.init(project=cfg.project_name, entity=cfg.entity, name=cfg.run_name, config=cfg.to_dict(), dir=str(run_dir),
                      mode=mode, resume="allow", id=_wandb_id(cfg))


def _wandb_id(cfg: TrainConfig) -> str:
    text = f"{cfg.project_name}-{cfg.run_name}"
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in text)[:120]


# ---------------------------------------------------------------------------------------------------------------
# The trainer


class Trainer:
    def __init__(self, cfg: TrainConfig, env: Dist):
        from trm.data.loader import TestLoader, TrainLoader
        from trm.model import TRM, LossHead, ModelConfig

        self.cfg, self.env = cfg, env
        world = env.world_size
        if cfg.global_batch_size % world:
            raise ValueError(f"global_batch_size ({cfg.global_batch_size}) must be divisible by the world size ({world})")
        self.local_batch = cfg.global_batch_size // world
        micro = cfg.micro_batch_size or self.local_batch
        if self.local_batch % micro:
            raise ValueError(f"micro_batch_size ({micro}) must divide the per-rank batch {self.local_batch} "
                             f"(global_batch_size {cfg.global_batch_size} / {world} ranks)")
        self.micro, self.accum = micro, self.local_batch // micro

        # iterations of eval_interval epochs packed together, as the reference (trm.data.loader)
        self.train_loader = TrainLoader(cfg.data_paths, cfg.global_batch_size, rank=env.rank, world_size=world,
                                        seed=cfg.seed, max_examples_per_puzzle=cfg.max_examples_per_puzzle,
                                        epochs_per_iter=cfg.epochs_per_iter, grid_noise_prob=cfg.noise_prob,
                                        grid_noise_fraction=cfg.noise_fraction)
        meta = self.train_loader.metadata
        self.metadata = meta
        test_paths = cfg.data_paths_test or cfg.data_paths
        self.test_paths = test_paths
        eval_batch = cfg.eval_global_batch_size or cfg.global_batch_size
        if eval_batch % world:
            raise ValueError(f"eval_global_batch_size ({eval_batch}) must be divisible by the world size ({world})")
        self.test_loader_args = (test_paths, eval_batch, env.rank, world, "test", cfg.eval_max_augmentations,
                                 cfg.max_eval_examples_per_puzzle)
        self._TestLoader = TestLoader
        # the schedule spans the reference's estimate of the run; max_steps only stops early
        self.schedule_steps = int(cfg.epochs * meta.total_groups * meta.mean_puzzle_examples / cfg.global_batch_size)
        self.total_steps = self.schedule_steps
        if cfg.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.max_steps)

        # a pretrained checkpoint gives the model's definition (trm.warmstart); rank 0 reads its weights
        pretrained = None
        if cfg.load_checkpoint:
            from trm.warmstart import apply_arch, read_pretrained

            pretrained = read_pretrained(cfg.load_checkpoint, cfg.load_weights, load_state=env.main)
            for note in apply_arch(cfg, pretrained):
                if env.main:
                    print(f"[trm.train] {note}", file=sys.stderr)

        # model: same init on every rank (seeded with rank 0's seed), then broadcast as the reference does
        torch.manual_seed(cfg.seed)
        self.model_config = ModelConfig(**{**cfg.arch.model_fields(), "halt_max_steps_eval": cfg.eval_halt_max_steps,
                                           "batch_size": micro, "vocab_size": meta.vocab_size,
                                           "seq_len": meta.seq_len,
                                           "num_puzzle_identifiers": meta.num_puzzle_identifiers})
        with torch.device(env.device):
            model = LossHead(TRM(self.model_config), loss_type=cfg.arch.loss_type)
        self.model = model
        self.warm_start_summary = None  # rows carried / new / dropped (rank 0, with load_checkpoint)
        if pretrained is not None and env.main:
            self._warm_start(pretrained)
        if world > 1:
            with torch.no_grad():
                for t in list(model.parameters()) + list(model.buffers()):
                    dist.broadcast(t, src=0)
        # speed levers (off by default): TF32 for float32 products (CUDA), one SDPA kernel, a torch.compile mode
        apply_tf32(cfg.tf32, env.device)
        if cfg.sdpa_backend != "auto":
            from trm.model.layers import set_attention_backend

            set_attention_backend(model, cfg.sdpa_backend)
        # compiled by default on CUDA (as the reference's trainer does); on CPU it gave no gain (docs/model.md)
        use_compile = cfg.compile if cfg.compile is not None else env.device.type == "cuda"
        self.forward = compile_model(model, cfg.compile_mode) if use_compile else model
        self.compiled = use_compile
        torch.manual_seed(cfg.seed + env.rank)

        puzzle_emb = model.model.puzzle_emb
        self.sparse = None
        if self.model_config.puzzle_emb_ndim > 0:
            self.sparse = SparseSignSGD(puzzle_emb, lr=0.0, weight_decay=cfg.puzzle_emb_weight_decay,
                                        gather=all_gather_rows if world > 1 else None)
        dense = [p for p in model.parameters() if p.requires_grad]
        self.dense = AdamATan2(dense, lr=0.0, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
        self.ema = EMA(model, cfg.ema_rate) if cfg.ema else None
        self.generator = torch.Generator(device=env.device).manual_seed(cfg.seed + env.rank)
        # freeze_weights: the dense optimiser skips steps 1..freeze_until (None: never frozen)
        self.freeze_until = frozen_until_step(cfg, self.schedule_steps)
        if self.freeze_until is not None and env.main:
            print(f"[trm.train] freeze_weights: only the puzzle embeddings train for steps 1..{self.freeze_until}"
                  f" (of {self.schedule_steps})", file=sys.stderr)

        self.step = 0
        self.position = None  # loader position of the next batch
        self.carries: list | None = None
        self.evaluated_through_epoch = 0

        # run folder: local, or an s3:// prefix mirrored in a local folder and uploaded at evaluations/saves
        self.run_uri = (cfg.run_dir or os.path.join("runs", cfg.run_name or "run")).rstrip("/")
        self.remote_run = self.run_uri.startswith("s3://")
        if self.remote_run:
            from trm.storage import trm_home

            self.run_dir = mirror_dir(trm_home(), self.run_uri)
        else:
            self.run_dir = Path(self.run_uri)
        self.checkpoints = Checkpoints(cfg.checkpoint_path or f"{self.run_uri}/checkpoints", keep_last=cfg.keep_last)

    # -- state ----------------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        train_state = {
            "step": self.step,
            "epoch": self.position.epoch,
            "position": {"epoch": self.position.epoch, "step": self.position.step},
            "carries": [carry_state(c) for c in self.carries] if self.carries is not None else None,
            "rng": rng_state(self.generator, self.env.device),
            "evaluated_through_epoch": self.evaluated_through_epoch,
            "world_size": self.env.world_size,
        }
        return train_state

    def save(self, evaluated: bool) -> None:
        """Rank 0 writes the step folder; the others wait (the carry/RNG are per rank: single-rank exact resume)."""
        if self.env.world_size > 1:
            states = [None] * self.env.world_size
            dist.all_gather_object(states, self.state())
        else:
            states = [self.state()]
        if self.env.main:
            objects = {
                "model.pt": self.model.state_dict(),
                "optimizer.pt": {"dense": self.dense.state_dict(),
                                  "sparse": self.sparse.state_dict() if self.sparse else None},
                "train_state.pt": {**states[0], "ranks": states},
            }
            if self.ema is not None:
                objects["ema.pt"] = self.ema.state_dict()
            files = {}
            source = _local_file(self.cfg.data_paths[0], "train/dataset.json")
            if source is not None:
                files["dataset.json"] = source
            texts = {"config.yaml": self.cfg.to_yaml()}
            names = self._identifier_names()
            if names is not None:  # every path's names (row index -> name), so warm starts carry rows by name
                texts["identifiers.json"] = json.dumps(names)
            self.checkpoints.save(self.step, objects=objects, texts=texts,
                                  files=files, meta={"epoch": self.position.epoch, "world_size": self.env.world_size},
                                  evaluated=evaluated)
        if self.env.world_size > 1:
            dist.barrier()
        self.saved_step, self.saved_at = self.step, time.monotonic()

    def _identifier_names(self) -> list[str] | None:
        """identifiers.json merged over data_paths (read once); None when a path has none."""
        if not hasattr(self, "_names"):
            from trm.data.loader import load_identifiers

            try:
                self._names = load_identifiers(self.cfg.data_paths)
            except FileNotFoundError:
                self._names = None
        return self._names

    def restore(self) -> int | None:
        """Load the newest good checkpoint of this run's training parameters, if any; returns its step.

        Rank 0 chooses (trm.checkpoint.Checkpoints.select: bad folders and folders of other parameters are moved
        aside, the generation is fixed) and tells the others; every rank then loads the chosen folder."""
        from trm.identity import fingerprint_of, training_identity

        identity = training_identity(self.cfg)
        fingerprint = fingerprint_of(identity)
        self.checkpoints.fingerprint, self.checkpoints.identity = fingerprint, identity
        data = None
        choice: list = [None, None, None]
        if self.env.main:
            where, data = self.checkpoints.select(fingerprint, identity, resume=self.cfg.resume,
                                                  required=("model.pt", "optimizer.pt", "train_state.pt"))
            choice = [where, self.checkpoints.generation, self.checkpoints.superseded]
            if self.checkpoints.superseded:
                self._keep_old_metrics(self.checkpoints.superseded)
        if self.env.world_size > 1:
            dist.broadcast_object_list(choice, src=0)
        where, self.checkpoints.generation, _ = choice
        if where is None:
            return None
        from trm.data.loader import Position

        if data is None:
            data = self.checkpoints.load(where, names=None)
        state = data["train_state.pt"]
        self.model.load_state_dict(data["model.pt"])
        self.dense.load_state_dict(data["optimizer.pt"]["dense"])
        if self.ema is not None and "ema.pt" in data:
            self.ema.load_state_dict(data["ema.pt"])
        self.step = int(state["step"])
        self.evaluated_through_epoch = int(state["evaluated_through_epoch"])
        self.position = Position(epoch=state["position"]["epoch"], step=state["position"]["step"])
        ranks = state.get("ranks") or [state]
        mine = ranks[self.env.rank] if len(ranks) == self.env.world_size else None
        if mine is not None:
            set_rng_state(mine["rng"], self.generator, self.env.device)
            self._saved_carries = mine["carries"]
        else:  # another world size: carries restart empty (all-halted), RNG from the seed
            self._saved_carries = None
        self.saved_step = self.step
        return self.step

    def _keep_old_metrics(self, aside: str) -> None:
        """The run's metrics.jsonl of the checkpoints just set aside goes with them (rank 0; best effort)."""
        source = f"{self.run_uri}/{METRIC_FILE}"
        try:
            if self.remote_run:
                from trm.storage import open_store

                store = open_store()
                if store.exists(source) and aside.startswith("s3://"):
                    store.copy_object(source, f"{aside}/{METRIC_FILE}")
            elif Path(source).is_file() and not aside.startswith("s3://"):
                import shutil

                shutil.copy2(source, Path(aside) / METRIC_FILE)
        except (OSError, RuntimeError) as err:
            print(f"[trm.train] could not keep the old {METRIC_FILE} beside the old checkpoints: {err}",
                  file=sys.stderr)

    # -- training -------------------------------------------------------------------------------------------
    def set_lr(self) -> float:
        factor = lr_factor(self.step, self.cfg.lr_warmup_steps, self.schedule_steps, self.cfg.lr_min_ratio)
        for group in self.dense.param_groups:
            group["lr"] = self.cfg.lr * factor
        if self.sparse is not None:
            for group in self.sparse.param_groups:
                group["lr"] = self.cfg.puzzle_emb_lr * factor
        return self.cfg.lr * factor

    def _warm_start(self, pretrained) -> None:
        """Load a pretrained checkpoint's weights; puzzle-embedding rows carried by identifier name."""
        from trm.data.loader import load_identifiers
        from trm.warmstart import load_pretrained

        try:
            identifiers = load_identifiers(self.cfg.data_paths)
        except (FileNotFoundError, ValueError):
            identifiers = None
        summary = load_pretrained(self.model, pretrained, identifiers, self.cfg.puzzle_emb_reinit_strategy)
        print(f"[trm.train] load_checkpoint {pretrained.uri}: {pretrained.weights} weights"
              + (f" of step {pretrained.step}" if pretrained.step is not None else ""), file=sys.stderr)
        if summary is not None:
            print(f"[trm.train] {summary.line()}", file=sys.stderr)
        self.warm_start_summary = summary

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float] | None:
        """One optimiser step; rank 0 gets its train/* metrics (read from the device now), other ranks None."""
        record = self.launch_step(batch)
        return None if record is None else self.read_metrics([record])[0]

    def launch_step(self, batch: dict[str, torch.Tensor]) -> "StepMetrics | None":
        """One optimiser step, without waiting for the device: rank 0 gets the step's metric sums still on the
        device (read them with read_metrics, several steps at once), other ranks None."""
        self.step += 1
        frozen = self.freeze_until is not None and self.step <= self.freeze_until
        if self.freeze_until is not None and self.step == self.freeze_until + 1 and self.env.main:
            print(f"[trm.train] step {self.step}: the trunk trains from now on (freeze_weights_epochs over)",
                  file=sys.stderr)
        device = self.env.device
        micro_batches = [{k: v.to(device, non_blocking=True) for k, v in m.items()} for m in _split(batch, self.accum)]
        if self.carries is None:
            self.carries = [self.model.initial_carry(m) for m in micro_batches]
            if getattr(self, "_saved_carries", None) is not None:
                for carry, saved in zip(self.carries, self._saved_carries):
                    load_carry_state(carry, saved)
                self._saved_carries = None
        totals: dict[str, torch.Tensor] = {}
        for i, m in enumerate(micro_batches):
            carry, loss, metrics, _, _ = self.forward(carry=self.carries[i], batch=m, return_keys=(),
                                                      generator=self.generator)
            self.carries[i] = carry
            (loss / self.cfg.global_batch_size).backward()
            if self.sparse is not None:
                self.sparse.collect()
            for k, v in metrics.items():
                totals[k] = totals[k] + v.detach() if k in totals else v.detach().clone()
        if self.env.world_size > 1 and not frozen:
            grads = [p.grad for p in self.dense.param_groups[0]["params"] if p.grad is not None]
            if grads:
                flat = torch.cat([g.reshape(-1) for g in grads])
                dist.all_reduce(flat)
                offset = 0
                for g in grads:
                    g.copy_(flat[offset : offset + g.numel()].view_as(g))
                    offset += g.numel()
        lr = self.set_lr()
        if self.sparse is not None:
            self.sparse.step()
            self.sparse.zero_grad()
        if not frozen:  # frozen: no step at all (no weight decay, AdamATan2's step count waits), as the fork
            self.dense.step()
        self.dense.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model)

        keys = sorted(totals)
        values = torch.stack([totals[k].to(torch.float64) for k in keys])
        if self.env.world_size > 1:
            dist.reduce(values, dst=0)
        if not self.env.main:
            return None
        return StepMetrics(step=self.step, time=time.time(), keys=keys, values=values, lr=lr)

    def read_metrics(self, records: list["StepMetrics"]) -> list[dict[str, float]]:
        """The train/* dicts of launched steps, with one device-to-host copy for all of them."""
        if not records:
            return []
        flat = torch.cat([r.values for r in records]).cpu().tolist()
        out, at = [], 0
        for r in records:
            reduced = dict(zip(r.keys, flat[at : at + len(r.keys)]))
            at += len(r.keys)
            count = max(reduced.get("count", 0.0), 1.0)
            metrics = {f"train/{k}": v / (self.cfg.global_batch_size if k.endswith("loss") else count)
                       for k, v in reduced.items()}
            metrics["train/lr"] = r.lr
            metrics.update(r.extra)
            out.append(metrics)
        return out

    # -- evaluation -----------------------------------------------------------------------------------------
    @torch.inference_mode()
    def evaluate(self) -> dict[str, float] | None:
        """Metrics of the test split (rank 0; {} on the others); None when a SIGTERM cut it short (every rank
        agrees between batches, so the pod's grace period goes to the checkpoint, not to the evaluation)."""
        env = self.env
        model = self.model
        if self.ema is not None:
            model = self.ema.copy_to(copy.deepcopy(self.model))
        was_training = model.training
        model.eval()
        try:
            loader = self._TestLoader(*self.test_loader_args)
        except (FileNotFoundError, ValueError) as err:
            if env.main:
                print(f"[trm.train] no evaluation: {err}", file=sys.stderr)
            return {}
        sums: dict[str, dict[str, torch.Tensor]] = {}
        outputs: list[dict[str, np.ndarray]] = []
        want_vote = bool(self.cfg.evaluators) or bool(self.cfg.eval_save_outputs)
        for set_name, batch, _n_valid in loader:
            if self._agree(self._sigterm(), False)[0]:
                if was_training:
                    model.train()
                return None
            pieces = []
            for m in _split(batch, max(1, math.ceil(batch["inputs"].shape[0] / self.micro))):
                m = {k: v.to(env.device) for k, v in m.items()}
                carry = model.initial_carry(m)
                while True:
                    carry, _loss, metrics, preds, done = model(carry=carry, batch=m,
                                                               return_keys=("preds", "q_halt_logits"))
                    if bool(done):
                        break
                acc = sums.setdefault(set_name, {})
                for k, v in metrics.items():
                    acc[k] = acc[k] + v.to(torch.float64) if k in acc else v.to(torch.float64).clone()
                if want_vote and set_name == "all":  # the first test path (the voter reads its files)
                    pieces.append({"puzzle_identifiers": m["puzzle_identifiers"].cpu().numpy(),
                                   "inputs": m["inputs"].cpu().numpy(), "preds": preds["preds"].cpu().numpy(),
                                   "q_halt_logits": preds["q_halt_logits"].float().cpu().numpy()})
            if pieces:  # one entry per loader batch: this rank's slice, in order
                outputs.append({k: np.concatenate([p[k] for p in pieces]) for k in pieces[0]})
        if was_training:
            model.train()
        if env.world_size > 1:
            gathered = [None] * env.world_size
            dist.all_gather_object(gathered, ({s: {k: float(v) for k, v in m.items()} for s, m in sums.items()}, outputs))
        else:
            gathered = [({s: {k: float(v) for k, v in m.items()} for s, m in sums.items()}, outputs)]
        if not env.main:
            return {}
        result: dict[str, float] = {}
        merged: dict[str, dict[str, float]] = {}
        for rank_sums, _ in gathered:
            for s, m in rank_sums.items():
                for k, v in m.items():
                    merged.setdefault(s, {}).setdefault(k, 0.0)
                    merged[s][k] += v
        for s, m in merged.items():
            count = max(m.pop("count", 0.0), 1.0)
            result.update({f"{s}/{k}": v / count for k, v in m.items()})
        if want_vote:
            try:
                result.update(self._vote(_dataset_order([o for _, o in gathered])))
            except (IndexError, KeyError, ValueError) as err:  # a voting bug must not end a long run
                import traceback

                traceback.print_exc()
                print(f"[trm.train] step {self.step}: ARC voting failed ({err!r}); training goes on", file=sys.stderr)
        return result

    def _vote(self, ordered: list[dict[str, np.ndarray]]) -> dict[str, float]:
        """ARC voting over the outputs (in dataset order); writes eval/step-N/. With eval_save_outputs also
        outputs.npz (puzzle_identifiers, inputs, preds, q_halt_logits: the input of `trm vote`)."""
        from trm.evaluation.vote import Voter, save_outputs

        out_dir = self.run_dir / "eval" / f"step-{self.step}"
        if self.cfg.eval_save_outputs and ordered:
            out_dir.mkdir(parents=True, exist_ok=True)
            save_outputs(out_dir / "outputs.npz", *(np.concatenate([o[k] for o in ordered])
                                                    for k in ("puzzle_identifiers", "inputs", "preds", "q_halt_logits")))
        if not self.cfg.evaluators:
            return {}
        voter = Voter.from_dataset(self.test_paths[0])
        for o in ordered:
            voter.add(o["puzzle_identifiers"], o["inputs"], o["preds"], o["q_halt_logits"], copy=False)  # unchanged
        vote = voter.result()
        try:
            from trm.evaluation.files import localize_path
            from trm.evaluation.vote import load_dataset_files, write_results

            test_puzzles, _ = load_dataset_files(localize_path(self.test_paths[0]))  # s3:// datasets too
            write_results(vote, test_puzzles, out_dir, title=f"TRM evaluation, step {self.step}")
        except ImportError:
            out_dir.mkdir(parents=True, exist_ok=True)
            _write_json(out_dir / "metrics.json", vote.metrics)
            _write_json(out_dir / "submission.json", vote.submission)
        return {k: float(v) for k, v in vote.metrics.items()}

    # -- the run folder on S3 ---------------------------------------------------------------------------------
    def pull_metrics(self) -> None:
        """s3 run folder: fetch its metrics.jsonl before resuming (rank 0)."""
        if not (self.remote_run and self.env.main):
            return
        from trm.storage import open_store

        store = open_store()
        uri = f"{self.run_uri}/{METRIC_FILE}"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if store.exists(uri):
            store.download_file(uri, self.run_dir / METRIC_FILE)
        elif (self.run_dir / METRIC_FILE).exists():
            (self.run_dir / METRIC_FILE).unlink()

    def push(self, eval_step: int | None = None) -> None:
        """s3 run folder: upload metrics.jsonl (and eval/step-N) (rank 0)."""
        if not (self.remote_run and self.env.main):
            return
        from trm.storage import open_store, publish

        store = open_store()
        if (self.run_dir / METRIC_FILE).exists():
            store.upload_file(self.run_dir / METRIC_FILE, f"{self.run_uri}/{METRIC_FILE}")
        folder = self.run_dir / "eval" / f"step-{eval_step}"
        if eval_step is not None and folder.is_dir():
            publish(folder, f"{self.run_uri}/eval/step-{eval_step}", store=store)

    # -- the loop -------------------------------------------------------------------------------------------
    def fit(self) -> None:
        cfg, env = self.cfg, self.env
        resumed = self.restore()
        if resumed is not None:
            self.pull_metrics()
        log = MetricLog(cfg, self.run_dir, resumed, enabled=env.main)
        bar = None
        if env.main and cfg.progress:
            import tqdm

            bar = tqdm.tqdm(total=self.total_steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True)
        if env.main:
            n_params = sum(p.numel() for p in self.model.parameters())
            where = f"resumed from step {resumed}" if resumed is not None else "from scratch"
            print(f"[trm.train] {where}: {n_params} parameters, {self.total_steps} steps, world {env.world_size}, "
                  f"device {env.device}, {self.accum} micro-batch(es) of {self.micro} per rank"
                  f"{', torch.compile' if self.compiled else ''}{''.join(f', {x}' for x in levers_set(cfg))}",
                  file=sys.stderr)
        model_training = self.model.train
        model_training()
        start = self.position
        preemption = self.preemption = Preemption()
        prefetcher = None
        self.preempted = False
        self.saved_at = time.monotonic()
        if not hasattr(self, "saved_step"):
            self.saved_step = None
        try:
            if resumed is not None and self._evaluation_cut_short():
                # a SIGTERM stopped the evaluation due at this step: run it now, as an uninterrupted run did
                if self._run_evaluation(log, bar):
                    self.push(self.step)
                    self.save(evaluated=True)
            batches = self.train_loader.iterate(start=start) if start is not None else self.train_loader.iterate()
            if cfg.prefetch_batches:
                from trm.data.loader import Prefetcher

                batches = prefetcher = Prefetcher(batches, cfg.prefetch_batches, env.device)
            pending: list[StepMetrics] = []  # launched steps whose metrics are still on the device
            while True:
                waited = time.perf_counter()
                try:
                    position, batch = next(batches)
                except StopIteration:
                    break
                waited = time.perf_counter() - waited
                if self.step >= self.total_steps or (self.position is not None and self.position.epoch >= cfg.epochs):
                    break
                batch_epoch = self.position.epoch if self.position is not None else 0
                record = self.launch_step(batch)
                self.position = position
                if record is not None:
                    if cfg.log_data_wait:
                        record.extra["train/data_wait_s"] = waited
                    pending.append(record)
                finished_epoch = position.epoch > batch_epoch
                done = self.step >= self.total_steps or position.epoch >= cfg.epochs
                eval_now = self._eval_due(position.epoch, finished_epoch) or (
                    done and self.evaluated_through_epoch < position.epoch)
                # log_interval: the metrics of the last steps are read from the device together (one wait), and
                # the ranks agree on SIGTERM / timed checkpoints at these boundaries only
                boundary = done or eval_now or self.step % cfg.log_interval == 0
                if boundary:
                    self._write_lines(log, bar, pending)
                evaluated = False
                if eval_now:
                    evaluated = self._run_evaluation(log, bar)
                    if not evaluated:  # cut short by SIGTERM: checkpoint this step; the resumed run evaluates it
                        done = False
                stop, due = self._agree(preemption.requested, self._time_checkpoint_due()) if boundary else (False, False)
                if done or stop or due or (evaluated and cfg.checkpoint_every_eval) or (
                    cfg.checkpoint_every_n_steps and self.step % cfg.checkpoint_every_n_steps == 0):
                    # metrics.jsonl (and the evaluation) go up before the checkpoint: a kill in between leaves
                    # lines beyond the newest checkpoint (dropped on resume), never a checkpoint without its lines
                    self._write_lines(log, bar, pending)
                    self.push(self.step if evaluated else None)
                    if self.saved_step != self.step or evaluated:
                        self.save(evaluated=evaluated)
                elif evaluated:
                    self.push(self.step)
                if stop and not done:
                    self.preempted = True
                    if env.main:
                        print(f"[trm.train] stopped by SIGTERM at step {self.step}; checkpoint step-{self.step} "
                              f"written; exit code {EXIT_PREEMPTED}: run the same command to continue",
                              file=sys.stderr, flush=True)
                    break
                if done:
                    break
            self._write_lines(log, bar, pending)
        finally:
            preemption.close()
            if prefetcher is not None:
                prefetcher.close()
            if bar is not None:
                bar.close()
            log.close()

    def _write_lines(self, log: "MetricLog", bar, pending: list[StepMetrics]) -> None:
        """Read the pending steps' metrics from the device (one copy) and log a line per step; empties `pending`."""
        if not pending:
            return
        for record, metrics in zip(pending, self.read_metrics(pending)):
            log.log(record.step, metrics, at=record.time)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{metrics.get('train/lm_loss', 0):.4f}", acc=f"{metrics.get('train/accuracy', 0):.3f}")
        pending.clear()

    def _run_evaluation(self, log: "MetricLog", bar) -> bool:
        """Evaluate at this step and log the metrics; False (nothing recorded) when a SIGTERM cut it short."""
        eval_metrics = self.evaluate()
        self.model.train()
        if eval_metrics is None:
            return False
        self.evaluated_through_epoch = self.position.epoch
        if self.env.main and eval_metrics:
            log.log(self.step, eval_metrics)
            if bar is not None:
                bar.write(f"[step {self.step}] " + " ".join(f"{k}={v:.4f}" for k, v in sorted(eval_metrics.items())))
        return True

    def _evaluation_cut_short(self) -> bool:
        """After a resume: the evaluation due at the restored step never finished (a SIGTERM cut it short)."""
        epoch = self.position.epoch
        if self.evaluated_through_epoch >= epoch:
            return False
        return self.step >= self.total_steps or epoch >= self.cfg.epochs or self._eval_due(epoch, True)

    def _sigterm(self) -> bool:
        preemption = getattr(self, "preemption", None)
        return bool(preemption is not None and preemption.requested)

    def _time_checkpoint_due(self) -> bool:
        """checkpoint_every_minutes: rank 0's clock says the last save is that old (the ranks then agree)."""
        minutes = self.cfg.checkpoint_every_minutes
        return bool(minutes) and self.env.main and time.monotonic() - self.saved_at >= minutes * 60.0

    def _agree(self, stop: bool, due: bool) -> tuple[bool, bool]:
        """Every rank learns whether any rank got SIGTERM / wants a timed checkpoint (one tiny all_reduce)."""
        if self.env.world_size == 1:
            return stop, due
        flags = torch.tensor([int(stop), int(due)], dtype=torch.int32, device=self.env.device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        stop_all, due_all = flags.tolist()
        return bool(stop_all), bool(due_all)

    def _eval_due(self, epoch: int, finished_epoch: bool) -> bool:
        interval = self.cfg.eval_interval or self.cfg.epochs
        if not finished_epoch or epoch % interval:
            return False
        return epoch // interval - 1 >= self.cfg.min_eval_interval


def frozen_until_step(cfg: TrainConfig, total_steps: int) -> int | None:
    """The last optimiser step whose dense (trunk) update is skipped under freeze_weights, as the Trelis fork:
    freeze_weights without freeze_weights_epochs (or with >= epochs) freezes the whole run (only the puzzle
    embeddings train); otherwise ceil(total_steps * freeze_weights_epochs / epochs). None: never frozen."""
    if not cfg.freeze_weights:
        return None
    epochs = cfg.freeze_weights_epochs
    if epochs is None or epochs >= cfg.epochs:
        return total_steps
    if epochs <= 0:
        return None
    return math.ceil(total_steps * epochs / cfg.epochs)


def _dataset_order(per_rank: list[list[dict[str, np.ndarray]]]) -> list[dict[str, np.ndarray]]:
    """Per-rank lists of batch outputs -> one list in dataset order (batch by batch, rank by rank)."""
    out = []
    for i in range(max((len(o) for o in per_rank), default=0)):
        out.extend(outs[i] for outs in per_rank if i < len(outs))
    return out


def _local_file(path: str, rel: str) -> Path | None:
    if str(path).startswith("s3://"):
        from trm.storage import localize

        try:
            candidate = Path(localize(path)) / rel  # the loader has cached the folder already
        except FileNotFoundError:
            return None
        return candidate if candidate.is_file() else None
    candidate = Path(path) / rel
    return candidate if candidate.is_file() else None


def _write_json(path: Path, obj: Any) -> None:
    atomic_write(path, json.dumps(obj, indent=1))


def mirror_dir(home: Path, run_uri: str) -> Path:
    """The local mirror of an s3:// run folder: `<home>/runs/<readable name>-<hash of the URI>`, so that e.g.
    s3://trm/runs/a_b and s3://trm/runs/a/b never share a folder."""
    import hashlib

    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in run_uri[5:])[-100:].lstrip(".") or "run"
    return home / "runs" / f"{safe}-{hashlib.sha256(run_uri.encode()).hexdigest()[:10]}"


class Preemption:
    """SIGTERM sets a flag instead of killing the process; the loop checks it at every step boundary.

    Installed only in the main thread (signal handlers live there); `close()` puts the old handler back."""

    def __init__(self) -> None:
        import signal
        import threading

        self.requested = False
        self._previous = None
        self._signal = signal
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:  # noqa: ARG002
        if not self.requested:
            print("[trm.train] SIGTERM: stopping at the next step boundary after a checkpoint", file=sys.stderr,
                  flush=True)
        self.requested = True

    def close(self) -> None:
        if self._previous is not None:
            self._signal.signal(self._signal.SIGTERM, self._previous)
            self._previous = None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    try:
        cfg = load_config(argv)
    except (ValueError, FileNotFoundError) as err:
        print(f"trm train: {err}", file=sys.stderr)
        return 2
    if "--print-config" in argv:  # the resolved config, then exit
        print(cfg.to_yaml(), end="")
        return 0
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    env = setup_distributed(cfg)
    try:
        if cfg.run_name is None:
            cfg.run_name = f"trm-{time.strftime('%Y%m%d-%H%M%S')}"
            if env.world_size > 1:  # every rank must use the same name
                names = [cfg.run_name]
                dist.broadcast_object_list(names, src=0)
                cfg.run_name = names[0]
        if cfg.project_name is None:
            cfg.project_name = f"{Path(cfg.data_paths[0].rstrip('/')).name.capitalize()}-ACT-torch"
        random.seed(cfg.seed + env.rank)
        np.random.seed(cfg.seed + env.rank)
        trainer = Trainer(cfg, env)
        trainer.fit()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return EXIT_PREEMPTED if trainer.preempted else 0


if __name__ == "__main__":
    from trm.cli import guarded

    sys.exit(guarded("train", main))  # expected failures: one line, exit code 1 (TRM_DEBUG=1: traceback)
