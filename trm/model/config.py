"""Typed model configuration for the Tiny Recursive Model (TRM-SPEC section 6).

    from trm.model import ModelConfig
    cfg = ModelConfig(hidden_size=64, num_heads=2, L_layers=1, H_cycles=2, L_cycles=2, halt_max_steps=4,
                      num_puzzle_identifiers=10, batch_size=4, forward_dtype="float32")
    cfg = ModelConfig.from_dict({"hidden_size": 64, ...})   # unknown keys raise ValueError
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch

POS_ENCODINGS = ("rope", "learned")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Keys a reference `arch:` section or model dict carries that are not model hyper-parameters:
# `name` / `loss` name the classes to build, `causal` is always false for this model, the Trelis fork's
# `grid_noise_*` act on the training data (trm.data.loader) and its `lora_*` need lora_rank > 0 (refused).
TOLERATED_KEYS = ("name", "loss", "causal", "grid_noise_prob", "grid_noise_fraction", "lora_rank", "lora_alpha",
                  "lora_dropout", "lora_train_base", "lora_train_bias")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass
class ModelConfig:
    """TRM hyper-parameters; field names follow the reference's resolved config.

    Defaults are those of the seed ARC-AGI-2 run (hidden 512, 8 heads, L_layers 2, H_cycles 3, L_cycles 4,
    halt_max_steps 16, bfloat16). `puzzle_emb_ndim=None` means "= hidden_size". `H_layers` is accepted and
    unused, as in the reference.
    """

    batch_size: int = 768
    seq_len: int = 900
    puzzle_emb_ndim: int | None = None
    num_puzzle_identifiers: int = 1
    vocab_size: int = 12
    H_cycles: int = 3
    L_cycles: int = 4
    H_layers: int = 0
    L_layers: int = 2
    hidden_size: int = 512
    expansion: float = 4.0
    num_heads: int = 8
    pos_encodings: str = "rope"
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    halt_max_steps: int = 16
    halt_exploration_prob: float = 0.1
    forward_dtype: str = "bfloat16"
    mlp_t: bool = False
    puzzle_emb_len: int = 16
    no_ACT_continue: bool = True
    # Trelis fork: ACT steps in evaluation (None: halt_max_steps) and the trm-slim regularisers (training only)
    halt_max_steps_eval: int | None = None
    puzzle_emb_dropout: float = 0.0  # zero a row's whole puzzle embedding with this probability, rescale the rest
    grid_token_dropout: float = 0.0  # dropout on the token embeddings

    def __post_init__(self) -> None:
        if self.puzzle_emb_ndim is None:
            self.puzzle_emb_ndim = self.hidden_size if _is_int(self.hidden_size) else 0
        for name in ("expansion", "rms_norm_eps", "rope_theta", "halt_exploration_prob"):
            value = getattr(self, name)
            if not _is_number(value):
                raise ValueError(f"ModelConfig.{name} must be a number, got {value!r}")
            setattr(self, name, float(value))
        positive = ("batch_size", "seq_len", "num_puzzle_identifiers", "vocab_size", "H_cycles", "L_cycles",
                    "L_layers", "hidden_size", "num_heads", "halt_max_steps")
        for name in positive + ("H_layers", "puzzle_emb_ndim", "puzzle_emb_len"):
            value = getattr(self, name)
            if not _is_int(value):
                raise ValueError(f"ModelConfig.{name} must be an integer, got {value!r}")
            if value < (1 if name in positive else 0):
                raise ValueError(f"ModelConfig.{name} must be {'>= 1' if name in positive else '>= 0'}, got {value}")
        if self.halt_max_steps_eval is not None and (not _is_int(self.halt_max_steps_eval) or self.halt_max_steps_eval < 1):
            raise ValueError(f"ModelConfig.halt_max_steps_eval must be an integer >= 1 or None, got {self.halt_max_steps_eval!r}")
        for name in ("puzzle_emb_dropout", "grid_token_dropout"):
            value = getattr(self, name)
            if not _is_number(value) or not 0.0 <= value < 1.0:
                raise ValueError(f"ModelConfig.{name} must lie in [0, 1), got {value!r}")
            setattr(self, name, float(value))
        for name in ("mlp_t", "no_ACT_continue"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"ModelConfig.{name} must be true or false, got {getattr(self, name)!r}")
        if self.mlp_t:
            raise ValueError("ModelConfig.mlp_t=True (the MLP-on-sequence variant) is not supported; use False")
        if self.pos_encodings not in POS_ENCODINGS:
            raise ValueError(f"ModelConfig.pos_encodings must be one of {POS_ENCODINGS}, got {self.pos_encodings!r}")
        if self.forward_dtype not in DTYPES:
            raise ValueError(f"ModelConfig.forward_dtype must be one of {tuple(DTYPES)}, got {self.forward_dtype!r}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"ModelConfig.hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})")
        if self.pos_encodings == "rope" and self.head_dim % 2:
            raise ValueError(f"ModelConfig: rope needs an even head size, got hidden_size/num_heads = {self.head_dim}")
        if not self.expansion > 0:
            raise ValueError(f"ModelConfig.expansion must be > 0, got {self.expansion}")
        if not (self.rms_norm_eps > 0 and math.isfinite(self.rms_norm_eps)):
            raise ValueError(f"ModelConfig.rms_norm_eps must be > 0, got {self.rms_norm_eps}")
        if not self.rope_theta > 0:
            raise ValueError(f"ModelConfig.rope_theta must be > 0, got {self.rope_theta}")
        if not 0.0 <= self.halt_exploration_prob <= 1.0:
            raise ValueError(f"ModelConfig.halt_exploration_prob must be in [0, 1], got {self.halt_exploration_prob}")
        if self.puzzle_emb_ndim == 0 and self.puzzle_emb_len != 0:
            raise ValueError("ModelConfig: puzzle_emb_ndim=0 (no puzzle embedding) needs puzzle_emb_len=0, "
                             f"got puzzle_emb_len={self.puzzle_emb_len}")
        if self.puzzle_emb_ndim > self.prefix_len * self.hidden_size:
            raise ValueError(f"ModelConfig.puzzle_emb_ndim ({self.puzzle_emb_ndim}) does not fit in puzzle_emb_len "
                             f"({self.puzzle_emb_len}) positions of hidden_size {self.hidden_size}")

    # Derived sizes -------------------------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def prefix_len(self) -> int:
        """Positions taken by the puzzle embedding in front of the tokens (0 in puzzle_emb_len: ceil(ndim / D))."""
        if self.puzzle_emb_len:
            return self.puzzle_emb_len
        return -(-self.puzzle_emb_ndim // self.hidden_size)

    @property
    def total_len(self) -> int:
        return self.seq_len + self.prefix_len

    @property
    def mlp_inter(self) -> int:
        """SwiGLU width: round(expansion * D * 2/3) rounded up to a multiple of 256."""
        return -(-round(self.expansion * self.hidden_size * 2 / 3) // 256) * 256

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.forward_dtype]

    # Conversion ----------------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], **overrides: Any) -> "ModelConfig":
        """Build from a dict (e.g. a reference `arch:` section); unknown keys raise ValueError.

        `name` and `loss` (the reference's class names), the fork's data-side `grid_noise_*` and LoRA keys with
        lora_rank 0 are ignored; `causal` is accepted when false.
        `overrides` win over `data` (e.g. num_puzzle_identifiers from the dataset).
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"model config must be a mapping, got {type(data).__name__}")
        merged = {**dict(data), **overrides}
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(k for k in merged if k not in names and k not in TOLERATED_KEYS)
        if unknown:
            raise ValueError(f"unknown model config keys: {', '.join(unknown)} (known: {', '.join(sorted(names))})")
        if merged.get("lora_rank", 0):
            raise ValueError(f"model config: lora_rank={merged['lora_rank']}: LoRA is not supported")
        if merged.get("causal", False) is not False:
            raise ValueError(f"model config: causal must be false (TRM attention is bidirectional), got {merged['causal']!r}")
        return cls(**{k: v for k, v in merged.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


__all__ = ["ModelConfig", "DTYPES", "POS_ENCODINGS"]
