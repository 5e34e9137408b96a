"""Typed training configuration: the reference's keys and defaults, presets, YAML and `key=value` overrides.

    from trm.config import load_config
    cfg = load_config(["preset=arc2-seed", "data_paths=[data/arc2]", "+run_name=try1"])
    cfg = load_config(["--preset", "cpu-tiny", "--config", "my.yaml", "arch.hidden_size=128", "ema=True"])

Sources, applied in this order: the defaults below (those of the reference's `cfg_pretrain.yaml` and
`arch/trm.yaml`), a preset (`preset=NAME` or `--preset NAME`), a YAML file (`--config FILE` or `config=FILE`,
nested like the reference's `all_config.yaml`), then `key=value` words in order. `+key=value` and `++key=value`
(Hydra's add/force) are accepted for keys we know; unknown keys are rejected with a close-name hint. Values:
`True/False`, ints, floats (`1e-4`), `null`/`None`, lists `[a,b]`, quoted strings. `arch=trm` picks the model
(the only one). Keys of the reference that we ignore on purpose (e.g. `arch.loss.name`, `hydra.*`) are listed in
`IGNORED_KEYS`.

Presets: `arc2-seed` (the seed run: ARC-AGI-2 + ConceptARC, L_layers 2, H_cycles 3, L_cycles 4, EMA on) and
`cpu-tiny` (a small, fast model for CPU tests and the learning bench).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import typing
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from trm.model.config import ModelConfig

ARCH_NAMES = ("trm",)
# The reference names its architecture "<module>@<class>" (its all_config.yaml `arch.name`); every class of its
# `recursive_reasoning.trm` module is our `trm`.
REFERENCE_ARCH_MODULE = "recursive_reasoning.trm@"


def arch_alias(name: str) -> str:
    """Our arch name for a reference `arch.name` value; other names pass through (and are checked later)."""
    return "trm" if name.startswith(REFERENCE_ARCH_MODULE) else name
# Reference keys that are accepted and have no effect here (they name reference classes or Hydra settings).
IGNORED_KEYS = ("arch.loss.name", "hydra.output_subdir", "defaults")
LOSS_TYPES = ("stablemax_cross_entropy", "softmax_cross_entropy")


@dataclass
class ArchConfig:
    """Model hyper-parameters (`arch.*`); defaults of the reference's `arch/trm.yaml`."""

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

    def __post_init__(self):
        self.name = arch_alias(self.name)
        if self.name not in ARCH_NAMES:
            raise ValueError(f"arch: unknown model {self.name!r}; known: {', '.join(ARCH_NAMES)}")
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"arch.loss.loss_type: {self.loss_type!r} is not one of {LOSS_TYPES}")
        if isinstance(self.num_heads, int) and self.num_heads >= 1 and self.hidden_size % self.num_heads:
            raise ValueError(f"arch.hidden_size ({self.hidden_size}) must be a multiple of arch.num_heads ({self.num_heads})")
        # The model's own config checks every hyper-parameter; its messages are renamed to the arch.* keys.
        fields = {f.name for f in dataclasses.fields(ModelConfig)}
        try:
            model = ModelConfig(**{k: v for k, v in vars(self).items() if k in fields})
        except ValueError as err:
            raise ValueError(str(err).replace("ModelConfig.", "arch.").replace("ModelConfig:", "arch:")) from None
        self.puzzle_emb_ndim = model.puzzle_emb_ndim


@dataclass
class TrainConfig:
    """Training run; the reference's `cfg_pretrain.yaml` keys and defaults, plus ours (marked)."""

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
    # names and paths
    project_name: str | None = None
    run_name: str | None = None
    load_checkpoint: str | None = None
    checkpoint_path: str | None = None  # default: <run_dir>/checkpoints
    eval_save_outputs: list[str] = field(default_factory=list)
    # ours
    run_dir: str | None = None  # metrics.jsonl, eval/step-N/; default runs/<run_name>; local or s3://
    eval_max_augmentations: int | None = None  # evaluate the original + first N variants per group (Trelis fork)
    checkpoint_every_n_steps: int | None = None  # also checkpoint every N optimiser steps
    # also checkpoint when this much time passed since the last save (bounds what a hard kill loses); on by default
    # (so the reference's seed command, as written, gets it too), off in cpu-tiny
    checkpoint_every_minutes: float | None = 30.0
    keep_last: int = 3  # step checkpoints kept besides the evaluated ones
    max_examples_per_puzzle: int | None = None  # Trelis: cap examples taken from one puzzle per epoch
    micro_batch_size: int | None = None  # per-rank rows per forward; global batch = accumulation of these
    max_steps: int | None = None  # stop after this many optimiser steps (tests, benches)
    device: str = "auto"  # auto | cpu | cuda
    num_threads: int | None = None  # torch CPU threads per process
    compile: bool | None = None  # torch.compile the model; null (the default): on CUDA, off on CPU
    wandb: str = "auto"  # auto (when installed; offline without WANDB_API_KEY) | on | off
    progress: bool = True  # tqdm bar on rank 0
    resume: bool = True  # continue from the newest complete checkpoint in checkpoint_path

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
                raise ValueError(f"eval_interval must be >= 1, got {self.eval_interval}")
            if self.epochs % self.eval_interval:
                raise ValueError(f"eval_interval ({self.eval_interval}) must divide epochs ({self.epochs})")
        for key in ("checkpoint_every_n_steps", "max_examples_per_puzzle", "micro_batch_size", "max_steps", "num_threads"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ValueError(f"{key} must be >= 1 or null, got {value}")
        if self.checkpoint_every_minutes is not None and not self.checkpoint_every_minutes > 0:
            raise ValueError(f"checkpoint_every_minutes must be > 0 or null, got {self.checkpoint_every_minutes}")
        if self.eval_max_augmentations is not None and self.eval_max_augmentations < 0:
            raise ValueError(f"eval_max_augmentations must be >= 0 or null, got {self.eval_max_augmentations}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.wandb not in ("auto", "on", "off"):
            raise ValueError(f"wandb must be auto, on or off, got {self.wandb!r}")
        if not self.data_paths:
            raise ValueError("data_paths is empty: give at least one dataset folder, e.g. data_paths=[data/arc2]")
        unknown = [e for e in self.evaluators if e != "arc"]
        if unknown:
            raise ValueError(f"evaluators: unknown {unknown}; known: ['arc'] (or [] for none)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# ------------------------------------------------------------------------------------------------------------------
# Presets

PRESETS: dict[str, dict[str, Any]] = {
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
        # 16 rows in 2 micro-batches of 8 (the six bench tasks give ~22 examples per epoch: batch 32 is refused);
        # on 2 CPU cores a train step costs the same per row with micro-batches of 4, 8 and 16
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
# Parsing


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


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and name in ("arch", "arch.loss"):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def known_keys() -> list[str]:
    keys = [f.name for f in dataclasses.fields(TrainConfig) if f.name != "arch"]
    keys += [f"arch.{f.name}" for f in dataclasses.fields(ArchConfig)]
    return keys + ["arch", "arch.loss.loss_type"]


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
    if value is None:
        if optional:
            return None
        raise ValueError(f"{key}: null is not allowed")
    origin = typing.get_origin(base)
    if isinstance(value, str) and base is not str and origin is not list:
        value = _parse_scalar(value)  # YAML reads 1e-3 as a string
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


def _check_key(key: str) -> None:
    if key in known_keys() or key in IGNORED_KEYS or key.startswith("hydra."):
        return
    close = difflib.get_close_matches(key, known_keys(), n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    raise ValueError(f"unknown config key {key!r}{hint}")


def _apply(values: dict[str, Any], key: str, value: Any) -> None:
    _check_key(key)
    if key in IGNORED_KEYS or key.startswith("hydra."):
        return
    if key == "arch":
        if not isinstance(value, str):
            raise ValueError(f"arch: expected a model name, got {value!r}")
        values["arch.name"] = value
        return
    if key == "arch.loss.loss_type":
        key = "arch.loss_type"
    values[key] = _coerce(key, value)


def _from_values(values: dict[str, Any]) -> TrainConfig:
    arch = {k[5:]: v for k, v in values.items() if k.startswith("arch.")}
    top = {k: v for k, v in values.items() if not k.startswith("arch.")}
    return TrainConfig(arch=ArchConfig(**arch), **top)


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    tree = yaml.safe_load(path.read_text()) or {}
    if not isinstance(tree, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return tree


def load_config(argv: list[str] | None = None) -> TrainConfig:
    """Build a TrainConfig from command-line words (see the module docstring). Raises ValueError on bad input."""
    argv = list(argv or [])
    preset: str | None = None
    config_file: str | None = None
    overrides: list[tuple[str, str]] = []
    i = 0
    while i < len(argv):
        word = argv[i]
        if word in ("--preset", "--config", "--config-name", "--config-path"):
            if i + 1 >= len(argv):
                raise ValueError(f"{word} needs a value")
            if word == "--preset":
                preset = argv[i + 1]
            elif word == "--config":
                config_file = argv[i + 1]
            elif word == "--config-name" and argv[i + 1] not in ("cfg_pretrain",):
                preset = argv[i + 1]
            i += 2
            continue
        if word.startswith("--preset="):
            preset = word.split("=", 1)[1]
        elif word.startswith("--config="):
            config_file = word.split("=", 1)[1]
        elif "=" in word and not word.startswith("-"):
            key, text = word.split("=", 1)
            key = key.lstrip("+").lstrip("~")
            if key == "preset":
                preset = text
            elif key == "config":
                config_file = text
            else:
                overrides.append((key, text))
        else:
            raise ValueError(f"cannot read argument {word!r}: expected key=value, --preset NAME or --config FILE")
        i += 1

    values: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
        for key, value in _flatten(PRESETS[preset]).items():
            _apply(values, key, value)
    if config_file is not None:
        for key, value in _flatten(read_yaml(config_file)).items():
            try:
                _apply(values, key, value)
            except ValueError as err:
                raise ValueError(f"{config_file}: {err}") from None
    for key, text in overrides:
        _apply(values, key, parse_value(text))
    return _from_values(values)
