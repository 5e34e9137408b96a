"""Typed training configuration: the reference's keys and defaults, its YAML files as written, presets, overrides.

    from trm.config import load_config
    cfg = load_config(["preset=arc2-seed", "data_paths=[data/arc2]", "+run_name=try1"])
    cfg = load_config(["--preset", "cpu-tiny", "--config", "my.yaml", "arch.hidden_size=128", "ema=True"])
    # the Trelis fork's README command, its config folder as it is
    cfg = load_config(["--config-path", "TinyRecursiveModels/config", "--config-name", "cfg_posttrain",
                       "data_paths=[data/arc-eval2-aug-1000]", "load_checkpoint=pretrained/step_155718",
                       "arch.puzzle_emb_len=16", "+run_name=posttrain_L4_test"])
    trm train --config-path config --config-name cfg_posttrain data_paths=[data/x] --print-config

Sources, merged in this order (OmegaConf, the library Hydra is built on): the defaults below (the reference's
`cfg_pretrain.yaml` and `arch/trm.yaml`), a preset (`preset=NAME`, `--preset NAME`, or `--config-name NAME`
without `--config-path`: `arc2-seed`, `cpu-tiny`, `cfg_pretrain`, `cfg_posttrain`), a config folder's file
(`--config-path DIR --config-name NAME` reads DIR/NAME.yaml and its `defaults: [arch: X, _self_]` from
DIR/arch/X.yaml, as Hydra composes them), a YAML file (`--config FILE` or `config=FILE`: one of our
config.yaml files, an `all_config.yaml`, or a Hydra file with `defaults`), then `key=value` words in order.
`+key=value` and `++key=value` (Hydra's add/force) work for known keys; `arch=NAME` picks DIR/arch/NAME.yaml when
a config folder is given, else names the model (`trm`, or the reference's `recursive_reasoning.trm@...`).
Interpolations (`puzzle_emb_ndim: ${.hidden_size}`) resolve after the merge, so `arch.hidden_size=256` moves
them too. Values: `True/False`, ints, floats (`1e-4`), `null`/`None`, lists `[a,b]`, quoted strings.

Every key is one of: a TrainConfig/ArchConfig field (implemented); a key of the reference that has no effect here
(`NO_EFFECT`: accepted with one warning line naming it, e.g. `hydra.output_subdir`, `dataloader_num_workers`); a
refused one (`REFUSED`, e.g. LoRA); anything else stops with a close-name hint.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from trm.model.config import ModelConfig

ARCH_NAMES = ("trm",)
# The reference names its architecture "<module>@<class>" (its all_config.yaml `arch.name`); every class of its
# `recursive_reasoning.trm` module is our `trm`.
REFERENCE_ARCH_MODULE = "recursive_reasoning.trm@"
# The reference's loss head class: ours (LossHead) computes the same loss.
REFERENCE_LOSS = "losses@ACTLossHead"
LOSS_TYPES = ("stablemax_cross_entropy", "softmax_cross_entropy")
REINIT_STRATEGIES = ("mean", "normal")
LOAD_WEIGHTS = ("auto", "ema", "raw")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
SDPA_BACKENDS = ("auto", "flash", "cudnn", "efficient", "math")


def arch_alias(name: str) -> str:
    """Our arch name for a reference `arch.name` value; other names pass through (and are checked later)."""
    return "trm" if name.startswith(REFERENCE_ARCH_MODULE) else name


# Keys of the reference (S's or the Trelis fork's) accepted with one warning line: they have no effect here.
# A prefix ending in "." covers every key below it.
NO_EFFECT: dict[str, str] = {
    "hydra.": "Hydra's own settings (output folders, logging) are not used",
    "dataloader_num_workers": "the loader reads memory-mapped arrays in the training process",
    "dataloader_prefetch_factor": "the loader reads memory-mapped arrays in the training process",
    "dataloader_pin_memory": "the loader reads memory-mapped arrays in the training process",
    "dataloader_persistent_workers": "the loader reads memory-mapped arrays in the training process",
    "arch.lora_alpha": "LoRA is not supported",
    "arch.lora_dropout": "LoRA is not supported",
    "arch.lora_train_base": "LoRA is not supported",
    "arch.lora_train_bias": "LoRA is not supported",
    "evaluators.": "the ARC evaluator's options are fixed here (pass@1..1000, two attempts, voting as the reference)",
}
# Keys refused with a reason (checked value by value: `lora_rank: 0` means no LoRA and is accepted).
REFUSED: dict[str, str] = {
    "arch.lora_rank": "LoRA is not supported",
}
# Composition keys: consumed while the files are merged.
_COMPOSITION = ("defaults",)


@dataclass
class ArchConfig:
    """Model hyper-parameters (`arch.*`); defaults of the reference's `arch/trm.yaml`, plus the Trelis fork's."""

    name: str = "trm"
    loss_type: str = "stablemax_cross_entropy"  # also settable as arch.loss.loss_type
    hidden_size: int = 512
    num_heads: int = 8
    expansion: float = 4.0
    H_layers: int = 0
    L_layers: int = 2
    H_cycles: int = 3
    L_cycles: int = 6
    halt_max_steps: int = 16
    halt_exploration_prob: float = 0.1
    puzzle_emb_ndim: int | None = None  # None: = hidden_size
    puzzle_emb_len: int = 16
    pos_encodings: str = "rope"
    forward_dtype: str = "bfloat16"
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    mlp_t: bool = False
    no_ACT_continue: bool = True
    # Trelis fork (trm-slim regularisers and evaluation depth)
    halt_max_steps_eval: int | None = None  # ACT steps in evaluation (null: halt_max_steps)
    puzzle_emb_dropout: float = 0.0  # training: drop a row's whole puzzle embedding with this probability
    grid_token_dropout: float = 0.0  # training: dropout on the token embeddings
    grid_noise_prob: float = 0.0  # training data: share of examples whose inputs get colour noise
    grid_noise_fraction: float = 0.0  # ... and the share of the majority colour's cells recoloured
    lora_rank: int = 0  # LoRA is not supported: only 0 is accepted

    def __post_init__(self):
        self.name = arch_alias(self.name)
        if self.name not in ARCH_NAMES:
            raise ValueError(f"arch: unknown model {self.name!r}; known: {', '.join(ARCH_NAMES)} "
                             f"(or the reference's {REFERENCE_ARCH_MODULE}<class>)")
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"arch.loss.loss_type: {self.loss_type!r} is not one of {LOSS_TYPES}")
        if self.lora_rank:
            raise ValueError(f"arch.lora_rank={self.lora_rank}: {REFUSED['arch.lora_rank']} (use lora_rank 0)")
        for key in ("grid_noise_prob", "grid_noise_fraction"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ValueError(f"arch.{key} must lie in [0, 1], got {getattr(self, key)}")
        if isinstance(self.num_heads, int) and self.num_heads >= 1 and self.hidden_size % self.num_heads:
            raise ValueError(f"arch.hidden_size ({self.hidden_size}) must be a multiple of arch.num_heads ({self.num_heads})")
        # The model's own config checks every hyper-parameter; its messages are renamed to the arch.* keys.
        try:
            model = ModelConfig(**self.model_fields())
        except ValueError as err:
            raise ValueError(str(err).replace("ModelConfig.", "arch.").replace("ModelConfig:", "arch:")) from None
        self.puzzle_emb_ndim = model.puzzle_emb_ndim

    def model_fields(self) -> dict[str, Any]:
        """The fields that are ModelConfig fields too."""
        names = {f.name for f in dataclasses.fields(ModelConfig)}
        return {k: v for k, v in vars(self).items() if k in names}


@dataclass
class TrainConfig:
    """Training run; the reference's `cfg_pretrain.yaml` keys and defaults, the Trelis fork's, and ours (marked)."""

    arch: ArchConfig = field(default_factory=ArchConfig)
    # data
    data_paths: list[str] = field(default_factory=lambda: ["data/arc-aug-1000"])
    data_paths_test: list[str] = field(default_factory=list)
    evaluators: list[str] = field(default_factory=lambda: ["arc"])  # [] turns the ARC voting off
    # hyper-parameters
    global_batch_size: int = 768
    epochs: int = 100000
    eval_interval: int | None = 10000
    min_eval_interval: int = 0
    checkpoint_every_eval: bool = True
    lr: float = 1e-4
    lr_min_ratio: float = 1.0
    lr_warmup_steps: int = 2000
    beta1: float = 0.9
    beta2: float = 0.95
    weight_decay: float = 0.1
    puzzle_emb_lr: float = 1e-2
    puzzle_emb_weight_decay: float = 0.1
    ema: bool = False
    ema_rate: float = 0.999
    seed: int = 0
    freeze_weights: bool = False  # train only the puzzle embeddings (for freeze_weights_epochs, else all run)
    # names and paths
    project_name: str | None = None
    run_name: str | None = None
    entity: str | None = None  # W&B entity (team or user)
    load_checkpoint: str | None = None  # our step-N/ folder or a reference step_N file; local or s3://
    checkpoint_path: str | None = None  # default: <run_dir>/checkpoints
    eval_save_outputs: list[str] = field(default_factory=list)
    # Trelis fork
    freeze_weights_epochs: int | None = None  # with freeze_weights: the trunk trains after this many epochs
    puzzle_emb_reinit_strategy: str = "mean"  # rows of puzzles new to load_checkpoint: mean | normal
    halt_max_steps_eval: int | None = None  # ACT steps in evaluation; wins over arch.halt_max_steps_eval
    eval_global_batch_size: int | None = None  # evaluation batch (null: global_batch_size)
    eval_max_augmentations: int | None = None  # evaluate the original + first N variants per group
    max_examples_per_puzzle: int | None = None  # cap examples taken from one puzzle per epoch
    max_eval_examples_per_puzzle: int | None = None  # evaluate at most the first N examples of each puzzle
    checkpoint_every_n_steps: int | None = None  # also checkpoint every N optimiser steps
    grid_noise_prob: float | None = None  # wins over arch.grid_noise_prob when set
    grid_noise_fraction: float | None = None  # wins over arch.grid_noise_fraction when set
    # ours
    run_dir: str | None = None  # metrics.jsonl, eval/step-N/; default runs/<run_name>; local or s3://
    load_weights: str = "auto"  # load_checkpoint: auto (EMA when it has them) | ema | raw
    # also checkpoint when this much time passed since the last save (bounds what a hard kill loses); on by default
    # (so the reference's seed command, as written, gets it too), off in cpu-tiny
    checkpoint_every_minutes: float | None = 30.0
    keep_last: int = 3  # step checkpoints kept besides the evaluated ones
    micro_batch_size: int | None = None  # per-rank rows per forward; global batch = accumulation of these
    max_steps: int | None = None  # stop after this many optimiser steps (tests, benches)
    device: str = "auto"  # auto | cpu | cuda
    num_threads: int | None = None  # torch CPU threads per process
    compile: bool | None = None  # torch.compile the model; null (the default): on CUDA, off on CPU
    wandb: str = "auto"  # auto (when installed; offline without WANDB_API_KEY) | on | off
    progress: bool = True  # tqdm bar on rank 0
    resume: bool = True  # continue from the newest complete checkpoint in checkpoint_path
    # speed levers (docs/training.md "Speed levers"); the defaults are the plain behaviour
    compile_mode: str = "default"  # torch.compile mode: default | reduce-overhead | max-autotune | max-autotune-no-cudagraphs
    sdpa_backend: str = "auto"  # attention kernel: auto | flash | cudnn | efficient | math (CPU: flash and math only)
    tf32: bool = False  # TF32 for float32 matrix products on CUDA (no effect on CPU or on bf16 products)
    log_interval: int = 1  # read the train metrics from the device every N steps (every step is still logged)
    prefetch_batches: int = 0  # batches read ahead by a thread (CUDA: pinned, copied on a side stream); 0: off
    log_data_wait: bool = False  # log train/data_wait_s: seconds each step waited for its batch

    def __post_init__(self):
        if isinstance(self.arch, dict):
            self.arch = ArchConfig(**self.arch)
        positive = ("global_batch_size", "epochs", "lr_warmup_steps", "keep_last")
        for key in positive:
            if getattr(self, key) < (0 if key == "lr_warmup_steps" else 1):
                raise ValueError(f"{key} must be positive, got {getattr(self, key)}")
        for key in ("lr", "puzzle_emb_lr", "weight_decay", "puzzle_emb_weight_decay", "lr_min_ratio", "min_eval_interval"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0, got {getattr(self, key)}")
        for key in ("beta1", "beta2", "ema_rate"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ValueError(f"{key} must lie in [0, 1), got {getattr(self, key)}")
        if self.eval_interval is not None:
            if self.eval_interval < 1:
                raise ValueError(f"eval_interval must be >= 1 or null, got {self.eval_interval}")
            if self.epochs % self.eval_interval:
                raise ValueError(f"eval_interval ({self.eval_interval}) must divide epochs ({self.epochs})")
        for key in ("checkpoint_every_n_steps", "max_examples_per_puzzle", "micro_batch_size", "max_steps",
                    "num_threads", "halt_max_steps_eval", "eval_global_batch_size", "max_eval_examples_per_puzzle"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ValueError(f"{key} must be >= 1 or null, got {value}")
        for key in ("eval_max_augmentations", "freeze_weights_epochs"):
            value = getattr(self, key)
            if value is not None and value < 0:
                raise ValueError(f"{key} must be >= 0 or null, got {value}")
        for key in ("grid_noise_prob", "grid_noise_fraction"):
            value = getattr(self, key)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"{key} must lie in [0, 1] or be null, got {value}")
        if self.puzzle_emb_reinit_strategy.lower() not in REINIT_STRATEGIES:
            raise ValueError(f"puzzle_emb_reinit_strategy must be one of {REINIT_STRATEGIES}, "
                             f"got {self.puzzle_emb_reinit_strategy!r}")
        self.puzzle_emb_reinit_strategy = self.puzzle_emb_reinit_strategy.lower()
        if self.load_weights not in LOAD_WEIGHTS:
            raise ValueError(f"load_weights must be one of {LOAD_WEIGHTS}, got {self.load_weights!r}")
        if self.checkpoint_every_minutes is not None and not self.checkpoint_every_minutes > 0:
            raise ValueError(f"checkpoint_every_minutes must be > 0 or null, got {self.checkpoint_every_minutes}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.wandb not in ("auto", "on", "off"):
            raise ValueError(f"wandb must be auto, on or off, got {self.wandb!r}")
        if not self.data_paths:
            raise ValueError("data_paths is empty: give at least one dataset folder, e.g. data_paths=[data/arc2]")
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile_mode must be one of {COMPILE_MODES}, got {self.compile_mode!r}")
        if self.sdpa_backend not in SDPA_BACKENDS:
            raise ValueError(f"sdpa_backend must be one of {SDPA_BACKENDS}, got {self.sdpa_backend!r}")
        if self.log_interval < 1:
            raise ValueError(f"log_interval must be >= 1, got {self.log_interval}")
        if self.prefetch_batches < 0:
            raise ValueError(f"prefetch_batches must be >= 0, got {self.prefetch_batches}")
        unknown = [e for e in self.evaluators if e != "arc"]
        if unknown:
            raise ValueError(f"evaluators: unknown {unknown}; known: ['arc'] (or [] for none)")

    # -- derived values (the Trelis fork's precedence: a top-level value wins over the arch one) ----------------
    @property
    def eval_halt_max_steps(self) -> int | None:
        return self.halt_max_steps_eval if self.halt_max_steps_eval is not None else self.arch.halt_max_steps_eval

    @property
    def noise_prob(self) -> float:
        return self.grid_noise_prob if self.grid_noise_prob is not None else self.arch.grid_noise_prob

    @property
    def noise_fraction(self) -> float:
        return self.grid_noise_fraction if self.grid_noise_fraction is not None else self.arch.grid_noise_fraction

    @property
    def epochs_per_iter(self) -> int:
        """Epochs packed into one loader iteration: eval_interval (all epochs without one), as the reference."""
        return self.eval_interval or self.epochs

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# ------------------------------------------------------------------------------------------------------------------
# Presets (built-in named configs)

PRESETS: dict[str, dict[str, Any]] = {
    # The defaults: the reference's cfg_pretrain.yaml with arch/trm.yaml (`--config-name cfg_pretrain`).
    "cfg_pretrain": {},
    # The Trelis fork's post-training config (test-time adaptation of a pretrained checkpoint on the hidden
    # tasks' demonstration pairs): embeddings alone for the first 3125 of 15000 epochs, evaluation every 3000
    # epochs on the original + 512 variants. The model's shape comes from load_checkpoint. Here the arch
    # recursion is the ARC runs' (L_cycles 4); the fork's arch/trm.yaml also sets puzzle_emb_len 1, which its
    # README overrides to 16 for the seed checkpoint: here it comes from the checkpoint.
    "cfg_posttrain": {
        "arch": {"L_cycles": 4},
        "global_batch_size": 384,
        "epochs": 15000,
        "eval_interval": 3000,
        "eval_max_augmentations": 512,
        "puzzle_emb_reinit_strategy": "mean",
        "ema": True,
        "freeze_weights": True,
        "freeze_weights_epochs": 3125,
    },
    # The seed run of the reference README (ARC-AGI-2 + ConceptARC, 4x H100, ~48 h).
    "arc2-seed": {
        "data_paths": ["data/arc2concept-aug-1000"],
        "arch": {"L_layers": 2, "H_cycles": 3, "L_cycles": 4},
        "ema": True,
        # a hard kill (no SIGTERM) loses at most this much of 4 GPUs; a seed-size checkpoint (2.8 GB) took under
        # a minute to write even to S3 on a loaded 2-core machine (bench/bench_checkpoint.py): < 3% of the run
        "checkpoint_every_minutes": 30.0,
    },
    # Small and fast on CPU: tests and bench/bench_learn.py.
    "cpu-tiny": {
        "arch": {
            "hidden_size": 64,
            "num_heads": 2,
            "expansion": 4.0,
            "L_layers": 1,
            "H_cycles": 1,
            # one latent update per answer update: ~35% cheaper steps than L_cycles 2 and, on the learning
            # bench, as many steps to exact accuracy 0.33 (417-475 against 454-475 with L_cycles 2)
            "L_cycles": 1,
            "halt_max_steps": 2,
            "puzzle_emb_len": 1,
            # learned absolute positions: on the bench's flips/rotations exact accuracy 0.33 after ~460 steps;
            # with RoPE it was 0.16-0.18 after 1389 steps
            "pos_encodings": "learned",
            "forward_dtype": "float32",
        },
        # 16 rows in 2 micro-batches of 8; on 2 CPU cores a train step costs the same per row with
        # micro-batches of 4, 8 and 16
        "global_batch_size": 16,
        "micro_batch_size": 8,
        "lr": 3e-3,
        "lr_warmup_steps": 20,
        "puzzle_emb_lr": 1e-1,
        "weight_decay": 0.1,
        "ema": False,
        "epochs": 1000,
        "eval_interval": 1000,
        "evaluators": [],
        "device": "cpu",
        "wandb": "off",
        "checkpoint_every_minutes": None,  # runs of minutes: checkpoints come from steps and evaluations
    },
}


# ------------------------------------------------------------------------------------------------------------------
# Values


def _parse_scalar(text: str) -> Any:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    low = text.lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no"):
        return False
    if low in ("null", "none", "~"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_value(text: str) -> Any:
    """`True` -> True, `1e-4` -> 0.0001, `[a, 'b']` -> ['a', 'b'], `null` -> None, else the string."""
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        inner = text[1:-1].strip()
        return [] if not inner else [_parse_scalar(part) for part in inner.split(",")]
    return _parse_scalar(text)


@functools.lru_cache(maxsize=1)
def known_keys() -> tuple[str, ...]:
    keys = [f.name for f in dataclasses.fields(TrainConfig) if f.name != "arch"]
    keys += [f"arch.{f.name}" for f in dataclasses.fields(ArchConfig)]
    return tuple(keys + ["arch", "arch.loss.loss_type", "arch.loss.name"])


def _type_of(key: str) -> Any:
    if key.startswith("arch."):
        return typing.get_type_hints(ArchConfig)[key[5:]]
    return typing.get_type_hints(TrainConfig)[key]


def _coerce(key: str, value: Any) -> Any:
    """Check `value` against the field type of `key`; ints are accepted for floats, strings for lists."""
    hint = _type_of(key)
    args = typing.get_args(hint)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if optional else hint
    origin = typing.get_origin(base)
    if value is None:
        if optional:
            return None
        if origin is list:
            return []  # the reference writes `data_paths: null` for "give it on the command line"
        raise ValueError(f"{key}: null is not allowed")
    if isinstance(value, str) and base is not str and origin is not list:
        value = _parse_scalar(value)  # YAML 1.1 reads 1e-3 as a string
    if origin is list:
        if isinstance(value, (str, int, float)):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{key}: expected a list like [a,b], got {value!r}")
        # the reference writes evaluators as [{name: arc@ARC}]
        items = [v.get("name") if isinstance(v, dict) else v for v in value]
        if key == "evaluators":
            items = ["arc" if str(v).lower() in ("arc", "arc@arc") else v for v in items]
        return [str(v) for v in items]
    if base is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{key}: expected True or False, got {value!r}")
    if base is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ValueError(f"{key}: expected an integer, got {value!r}")
        return int(value)
    if base is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if base is str:
        if isinstance(value, bool) and key == "wandb":  # wandb=on / wandb=False
            return "on" if value else "off"
        if isinstance(value, (list, dict)):
            raise ValueError(f"{key}: expected a string, got {value!r}")
        return str(value)
    raise ValueError(f"{key}: unsupported type {hint}")  # pragma: no cover


def _no_effect(key: str) -> str | None:
    """Why `key` has no effect here, or None when it is not such a key."""
    if key in known_keys():
        return None
    for name, why in NO_EFFECT.items():
        if key == name or (name.endswith(".") and (key.startswith(name) or key == name[:-1])):
            return why
    return None


def _check_key(key: str) -> None:
    if key in known_keys() or key in REFUSED or _no_effect(key) is not None:
        return
    if key.startswith("arch.lora_"):
        raise ValueError(f"{key}: LoRA is not supported")
    close = difflib.get_close_matches(key, known_keys(), n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    raise ValueError(f"unknown config key {key!r}{hint}")


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested sections (arch, arch.loss, hydra) -> dotted keys; the reference's evaluators' options -> keys."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and (name in ("arch", "arch.loss") or name.split(".")[0] == "hydra"):
            out.update(_flatten(value, name + "."))
            continue
        out[name] = value
        if name == "evaluators" and isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, dict):
                    out.update({f"evaluators.{i}.{k}": None for k in item if k != "name"})
    return out


# ------------------------------------------------------------------------------------------------------------------
# YAML files and Hydra composition


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML file as a plain dict (interpolations unresolved)."""
    from omegaconf import OmegaConf

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        node = OmegaConf.load(path)
    except Exception as err:  # noqa: BLE001 - the YAML parser's and OmegaConf's errors, reported with the file
        raise ValueError(f"{path}: cannot read YAML: {err}") from None
    tree = OmegaConf.to_container(node, resolve=False)
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return tree


def compose(path: str | os.PathLike, choices: dict[str, str | None] | None = None) -> dict[str, Any]:
    """A Hydra primary config with its `defaults` list applied: `- G: X` puts DIR/G/X.yaml under key G, `- name`
    merges DIR/name.yaml, `_self_` (implicitly last) is the file itself. `choices` ({G: X}) replace or add a
    group's option (the command line's `arch=X`). Returns the merged tree, interpolations unresolved."""
    from omegaconf import OmegaConf

    path = Path(path)
    base = path.parent
    tree = read_yaml(path)
    defaults = tree.pop("defaults", None) or []
    if not isinstance(defaults, list):
        raise ValueError(f"{path}: defaults must be a list, got {defaults!r}")
    items = list(defaults) if "_self_" in defaults else [*defaults, "_self_"]
    choices = dict(choices or {})
    layers: list[Any] = []
    for item in items:
        if item == "_self_":
            layers.append(tree)
            continue
        if isinstance(item, str):
            layers.append(compose(base / f"{item.removesuffix('.yaml')}.yaml"))
            continue
        if not (isinstance(item, dict) and len(item) == 1):
            raise ValueError(f"{path}: defaults entry {item!r} is not supported (use `- group: option` or `- name`)")
        group, option = next(iter(item.items()))
        group = str(group).removeprefix("override ").removeprefix("optional ").strip()
        option = choices.pop(group, option)
        if option is not None:
            layers.append({group: _group_file(base, group, option, path)})
    # a choice for a group the defaults list does not name (Hydra's +group=option) comes before _self_
    extra = [{g: _group_file(base, g, o, path)} for g, o in choices.items() if o is not None]
    if extra:
        at = next((i for i, layer in enumerate(layers) if layer is tree), len(layers))
        layers[at:at] = extra
    merged = OmegaConf.merge(*[OmegaConf.create(layer) for layer in layers]) if layers else OmegaConf.create({})
    return OmegaConf.to_container(merged, resolve=False)


def _group_file(base: Path, group: str, option: str, where: Path) -> dict[str, Any]:
    file = base / group / f"{str(option).removesuffix('.yaml')}.yaml"
    if not file.is_file():
        known = sorted(p.stem for p in (base / group).glob("*.yaml")) if (base / group).is_dir() else []
        raise FileNotFoundError(f"{where}: {group}={option}: no file {file}" + (f" (options: {', '.join(known)})" if known else ""))
    tree = read_yaml(file)
    if "defaults" in tree:
        raise ValueError(f"{file}: a defaults list inside a config group file is not supported")
    return tree


# ------------------------------------------------------------------------------------------------------------------
# The command line


@dataclass
class _Words:
    preset: str | None = None
    config_files: list[str] = field(default_factory=list)
    config_path: str | None = None
    config_name: str | None = None
    overrides: list[tuple[str, str]] = field(default_factory=list)
    print_config: bool = False


FLAGS = ("--preset", "--config", "--config-name", "--config-path", "--config-dir")


def _read_words(argv: list[str]) -> _Words:
    words = _Words()
    i = 0
    while i < len(argv):
        word = argv[i]
        flag, eq, inline = word.partition("=")
        if word == "--print-config":
            words.print_config = True
        elif flag in FLAGS:
            if eq:
                value = inline
            elif i + 1 < len(argv):
                value = argv[i + 1]
                i += 1
            else:
                raise ValueError(f"{word} needs a value")
            if flag == "--preset":
                words.preset = value
            elif flag == "--config":
                words.config_files.append(value)
            elif flag == "--config-name":
                words.config_name = value
            else:
                words.config_path = value
        elif "=" in word and not word.startswith("-"):
            key, text = word.split("=", 1)
            key = key.lstrip("+")
            if key == "preset":
                words.preset = text
            elif key == "config":
                words.config_files.append(text)
            else:
                words.overrides.append((key, text))
        else:
            raise ValueError(f"cannot read argument {word!r}: expected key=value, --preset NAME, --config FILE "
                             "or --config-path DIR --config-name NAME")
        i += 1
    return words


def _config_file(words: _Words) -> Path | None:
    if words.config_path is None:
        return None
    if words.config_name is None:
        raise ValueError(f"--config-path {words.config_path} needs --config-name NAME (DIR/NAME.yaml)")
    folder = Path(words.config_path)
    if not folder.is_dir():
        raise FileNotFoundError(f"--config-path: no such folder: {folder}")
    name = words.config_name.removesuffix(".yaml")
    path = folder / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in folder.glob("*.yaml"))
        raise FileNotFoundError(f"--config-name {name}: no file {path} (configs there: {', '.join(known) or 'none'})")
    return path


def _warn(lines: list[str]) -> None:
    """Print the no-effect warnings once (rank 0 under torchrun)."""
    if os.environ.get("RANK", "0") not in ("", "0"):
        return
    for line in lines:
        print(f"[trm.config] warning: {line}", file=sys.stderr)


def load_config(argv: list[str] | None = None, warn: bool = True) -> TrainConfig:
    """Build a TrainConfig from command-line words (see the module docstring). Raises ValueError on bad input.

    The returned config carries `explicit_keys` (dotted keys set by `key=value` words) and `warnings` (the
    no-effect lines, printed to stderr unless warn=False); `--print-config` is accepted and ignored here
    (`trm train` prints the result and exits)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    words = _read_words(list(argv or []))
    preset = words.preset
    primary = _config_file(words)
    if words.config_name is not None and primary is None:
        name = words.config_name.removesuffix(".yaml")
        if name not in PRESETS:
            raise ValueError(f"--config-name {name}: not a built-in config ({', '.join(PRESETS)}); for a config "
                             f"folder give --config-path DIR (DIR/{name}.yaml, DIR/arch/*.yaml)")
        if preset is not None and preset != name:
            raise ValueError(f"--config-name {name} and preset={preset}: give one")
        preset = name
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")

    # `arch=NAME` with a config folder picks the group file, as Hydra does; otherwise it names the model
    folders = [primary.parent] if primary is not None else []
    folders += [Path(f).parent for f in words.config_files]
    choices: dict[str, str] = {}
    overrides: list[tuple[str, Any]] = []
    for key, text in words.overrides:
        value = parse_value(text)
        if key == "arch" and isinstance(value, str) and any((d / "arch" / f"{value}.yaml").is_file() for d in folders):
            choices["arch"] = value
        else:
            overrides.append((key, value))

    layers: list[tuple[str, dict[str, Any]]] = []
    if preset is not None:
        layers.append((f"preset {preset}", PRESETS[preset]))
    if primary is not None:
        layers.append((str(primary), compose(primary, choices)))
    for file in words.config_files:
        tree = compose(file, choices if primary is None else {})
        layers.append((file, tree))
    cli: dict[str, Any] = {}
    for key, value in overrides:
        _check_key(key)
        if key == "arch":
            if not isinstance(value, str):
                raise ValueError(f"arch: expected a model name, got {value!r}")
            key = "arch.name"
        cli[key] = value
    source: dict[str, str] = {}
    for label, tree in layers:
        for key in _flatten(tree):
            if key in _COMPOSITION:
                continue
            try:
                _check_key(key)
            except ValueError as err:
                raise ValueError(f"{label}: {err}") from None
            source[key] = label
    for key in cli:
        source[key] = "command line"

    try:
        merged = OmegaConf.merge(*[OmegaConf.create(t) for _, t in layers]) if layers else OmegaConf.create({})
        for key, value in cli.items():
            OmegaConf.update(merged, key, value, force_add=True)
        tree = OmegaConf.to_container(merged, resolve=True)
    except OmegaConfBaseException as err:
        raise ValueError(f"config: {str(err).splitlines()[0]}") from None

    values: dict[str, Any] = {}
    notes: list[str] = []
    for key, value in _flatten(tree).items():
        if key in _COMPOSITION:
            continue
        where = source.get(key, "config")
        why = _no_effect(key)
        if why is not None:
            notes.append(f"{key} has no effect here: {why} ({where})")
            continue
        if key == "arch.loss.name":
            if value not in (None, REFERENCE_LOSS):
                raise ValueError(f"{where}: arch.loss.name: {value!r} is not supported; the loss head is {REFERENCE_LOSS}")
            continue
        if key == "arch.loss.loss_type":
            key = "arch.loss_type"
        try:
            values[key] = _coerce(key, value)
        except ValueError as err:
            raise ValueError(f"{where}: {err}" if where != "command line" else str(err)) from None
    arch = {k[5:]: v for k, v in values.items() if k.startswith("arch.")}
    top = {k: v for k, v in values.items() if not k.startswith("arch.")}
    cfg = TrainConfig(arch=ArchConfig(**arch), **top)
    cfg.explicit_keys = frozenset("arch.loss_type" if k == "arch.loss.loss_type" else k for k in cli)
    cfg.warnings = notes
    if warn:
        _warn(notes)
    return cfg


def print_requested(argv: list[str] | None) -> bool:
    """True when the words ask `trm train` to print the resolved config and exit (`--print-config`)."""
    return "--print-config" in (argv or [])
