"""Load checkpoints written by the reference TinyRecursiveModels trainer.

A reference checkpoint is a bare `torch.save(state_dict)` file named `step_<N>` beside the run's
`all_config.yaml` (the whole training config; its `arch:` section holds `name`, `loss` and the model fields).
Keys start with `_orig_mod.` when the model was compiled (always, on GPU runs); both styles load.

    from trm.model import load_reference_checkpoint
    model = load_reference_checkpoint("ckpt/step_723000")                      # all_config.yaml beside it
    model = load_reference_checkpoint("step_723000", "all_config.yaml", num_puzzle_identifiers=1201)
    load_reference_checkpoint("step_723000", model=my_loss_head)              # into an existing model

Files are read with `torch.load(..., weights_only=True)`, so a downloaded file cannot run code.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import torch
import yaml

from trm.model.config import ModelConfig
from trm.model.loss import LOSSES, LossHead
from trm.model.trm import TRM

log = logging.getLogger("trm.model")

COMPILED_PREFIX = "_orig_mod."
PUZZLE_TABLE = "model.inner.puzzle_emb.weights"
CONFIG_NAME = "all_config.yaml"


def _arch_section(data: Any, source: str) -> tuple[dict[str, Any], dict[str, Any]]:
    if not isinstance(data, Mapping):
        raise ValueError(f"{source}: expected a YAML mapping, got {type(data).__name__}")
    if "arch" in data:
        arch = data["arch"]
        if not isinstance(arch, Mapping):
            raise ValueError(f"{source}: `arch` must be a mapping, got {type(arch).__name__}")
        return dict(arch), dict(data)
    return dict(data), {}


def read_reference_config(path: str | Path, **fields: Any) -> tuple[ModelConfig, str]:
    """ModelConfig and loss type from a reference all_config.yaml (or a bare arch YAML).

    The arch section lacks the dataset-derived fields; they come from `fields` or default to
    batch_size = global_batch_size, vocab_size 12, seq_len 900. Unknown arch keys raise ValueError.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference config not found: {path}")
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    arch, top = _arch_section(data, str(path))
    loss = arch.get("loss") or {}
    if not isinstance(loss, Mapping):
        raise ValueError(f"{path}: arch.loss must be a mapping, got {type(loss).__name__}")
    loss_type = loss.get("loss_type", "stablemax_cross_entropy")
    if loss_type not in LOSSES:
        raise ValueError(f"{path}: arch.loss.loss_type {loss_type!r} is not one of {sorted(LOSSES)}")
    if "global_batch_size" in top and "batch_size" not in arch:
        fields.setdefault("batch_size", top["global_batch_size"])
    # the Trelis fork also has a top-level halt_max_steps_eval; it counts where the arch section leaves it null
    if top.get("halt_max_steps_eval") is not None and arch.get("halt_max_steps_eval") is None:
        fields.setdefault("halt_max_steps_eval", top["halt_max_steps_eval"])
    try:
        config = ModelConfig.from_dict(arch, **fields)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    return config, loss_type


def load_reference_state_dict(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The tensors of a reference `step_<N>` file with any `_orig_mod.` prefix removed (weights_only load)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference checkpoint not found: {path}")
    state = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: not a bare state dict of tensors (got {type(state).__name__})")
    out = {}
    for key, value in state.items():
        name = key[len(COMPILED_PREFIX):] if key.startswith(COMPILED_PREFIX) else key
        if name in out:
            raise ValueError(f"{path}: key {name!r} appears both with and without {COMPILED_PREFIX!r}")
        out[name] = value
    return out


def _fit_puzzle_table(state: dict[str, torch.Tensor], expected: torch.Size, source: str) -> None:
    table = state.get(PUZZLE_TABLE)
    if table is None or table.shape == expected:
        return
    if table.ndim != 2 or table.shape[1] != expected[1]:
        raise ValueError(f"{source}: {PUZZLE_TABLE} has shape {tuple(table.shape)}, the model needs "
                         f"[num_ids, {expected[1]}]; the embedding width must match")
    log.warning("%s: puzzle embedding has %d identifiers, the model %d: replacing the table by its mean row",
                source, table.shape[0], expected[0])
    state[PUZZLE_TABLE] = table.float().mean(dim=0, keepdim=True).expand(expected).contiguous()


def load_reference_checkpoint(checkpoint: str | Path, config: str | Path | ModelConfig | None = None, *,
                              model: LossHead | None = None, map_location: str | torch.device = "cpu",
                              **fields: Any) -> LossHead:
    """Load a reference checkpoint into `model`, or into a new LossHead(TRM(config)) that is returned.

    `config`: an all_config.yaml path, a ModelConfig, or None for `all_config.yaml` beside the checkpoint
    (ignored when `model` is given). `fields` override config fields; num_puzzle_identifiers defaults to the
    checkpoint's table size. A table of another size is replaced by its mean row (logged); missing or
    unexpected keys, or other shape mismatches, raise ValueError listing them.
    """
    checkpoint = Path(checkpoint)
    state = load_reference_state_dict(checkpoint, map_location=map_location)
    if model is None:
        loss_type = "stablemax_cross_entropy"
        if isinstance(config, ModelConfig):
            cfg = config.replace(**fields) if fields else config
        else:
            path = Path(config) if config is not None else checkpoint.parent / CONFIG_NAME
            if PUZZLE_TABLE in state and state[PUZZLE_TABLE].ndim == 2:
                fields.setdefault("num_puzzle_identifiers", int(state[PUZZLE_TABLE].shape[0]))
            cfg, loss_type = read_reference_config(path, **fields)
        model = LossHead(TRM(cfg), loss_type=loss_type)
    elif config is not None or fields:
        raise ValueError("load_reference_checkpoint: pass either model= or config/fields, not both")

    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(f"{checkpoint}: state dict does not match the model; missing keys: {missing or 'none'}; "
                         f"unexpected keys: {unexpected or 'none'}")
    if PUZZLE_TABLE in own:
        _fit_puzzle_table(state, own[PUZZLE_TABLE].shape, str(checkpoint))
    wrong = [f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items() if state[k].shape != v.shape]
    if wrong:
        raise ValueError(f"{checkpoint}: shape mismatch (checkpoint vs model): {'; '.join(wrong)}")
    model.load_state_dict(state, strict=True)
    return model
