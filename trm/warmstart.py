"""Start a run from a pretrained checkpoint (`load_checkpoint`), and pick a finished run's final checkpoint.

    from trm.warmstart import read_pretrained, apply_arch, load_pretrained, pick_checkpoint
    src = read_pretrained("runs/pre/checkpoints/step-5000")          # our step-N/ folder: EMA weights when saved
    src = read_pretrained("s3://trm/ref/step_723914", weights="auto") # a reference file (+ all_config.yaml beside)
    notes = apply_arch(cfg, src)               # cfg.arch takes the checkpoint's model (command-line keys win)
    summary = load_pretrained(model, src, identifiers=load_identifiers(cfg.data_paths), strategy="mean")
    choice = pick_checkpoint("runs/post", "best")  # best ARC/pass@2 among evaluated checkpoints, else the last

`load_checkpoint` is one of our `step-N/` folders (model.pt, ema.pt when EMA was on, config.yaml, identifiers.json)
or a reference `step_N` file (a bare state dict, `_orig_mod.` keys allowed) with its `all_config.yaml` beside it
(and, when present, the dataset's `identifiers.json` beside it too); local or `s3://`. `weights`: `auto` (EMA
when the folder has them; a reference file holds whatever its run saved: EMA weights when its `ema` was on),
`ema`, or `raw`. Only weights are taken: optimiser state, step and loader position start afresh (a warm start,
not a resume).

The model's definition (hidden size, heads, layers, cycles, puzzle-embedding width and length, positions) comes
from the checkpoint's config unless the command line sets a key; a command-line value that changes a tensor's
shape is an error naming the key. Puzzle-embedding rows are carried over BY IDENTIFIER NAME when the checkpoint
has its identifiers.json (ours always saves it): a rebuilt dataset whose identifiers are numbered differently keeps
every trained row; names new to the checkpoint get `puzzle_emb_reinit_strategy` (`mean`: the mean row of the
checkpoint's table; `normal`: that mean plus Gaussian noise of the table's per-dimension spread), as do all rows
when the names are unknown and the table size differs (the reference's rule). The log says how many rows were
carried, new and dropped.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

import torch
import yaml

PUZZLE_TABLE = "model.inner.puzzle_emb.weights"
BLANK = "<blank>"
REFERENCE_CONFIG = "all_config.yaml"
# The keys that define the network; taken from the checkpoint's config unless the command line sets them.
MODEL_KEYS = ("hidden_size", "num_heads", "expansion", "H_layers", "L_layers", "H_cycles", "L_cycles",
              "puzzle_emb_ndim", "puzzle_emb_len", "pos_encodings", "rms_norm_eps", "rope_theta", "mlp_t",
              "no_ACT_continue", "loss_type")
# ... of which these change a tensor's shape (or the set of tensors): a different value cannot load.
SHAPE_KEYS = ("hidden_size", "expansion", "L_layers", "puzzle_emb_ndim", "puzzle_emb_len", "pos_encodings", "mlp_t")


@dataclasses.dataclass
class Pretrained:
    """What a checkpoint gives a new run: its model config, weights and identifier names."""

    uri: str
    kind: str  # "step" (our step-N/ folder) or "reference" (a step_N file)
    arch: dict[str, Any] | None  # ArchConfig-named values of its config; None when it has no config
    weights: str  # "ema" or "raw": which weights `state` holds
    state: dict[str, torch.Tensor] | None = None  # model state dict (None when read with load_state=False)
    identifiers: list[str] | None = None  # its dataset's identifiers.json: row index -> name
    step: int | None = None


def _is_s3(uri: str) -> bool:
    return str(uri).startswith("s3://")


def _parent(uri: str) -> str:
    uri = str(uri).rstrip("/")
    return uri.rsplit("/", 1)[0] if "/" in uri else "."


def _is_step_folder(uri: str) -> bool:
    if _is_s3(uri):
        from trm.storage import open_store

        return open_store().exists(f"{uri.rstrip('/')}/meta.json")
    return Path(uri).is_dir()


def _read_optional(uri: str) -> str | None:
    """A small text file, local or s3://, or None when it does not exist."""
    if _is_s3(uri):
        from trm.storage import open_store

        store = open_store()
        return store.read_bytes(uri).decode() if store.exists(uri) else None
    path = Path(uri)
    return path.read_text() if path.is_file() else None


def read_pretrained(uri: str, weights: str = "auto", load_state: bool = True) -> Pretrained:
    """Read `load_checkpoint`: config and identifiers always, the weights when load_state (rank 0 only, say)."""
    if weights not in ("auto", "ema", "raw"):
        raise ValueError(f"load_weights must be auto, ema or raw, got {weights!r}")
    uri = str(uri).rstrip("/")
    if not _is_s3(uri) and not Path(uri).exists():
        raise FileNotFoundError(f"load_checkpoint: {uri}: no such file or folder")
    return _read_step(uri, weights, load_state) if _is_step_folder(uri) else _read_reference(uri, weights, load_state)


def _read_step(where: str, weights: str, load_state: bool) -> Pretrained:
    from trm.checkpoint import Checkpoints
    from trm.config import load_config

    store = Checkpoints(_parent(where))
    meta = store.read_meta(where)
    files = meta.get("files", {})
    has_ema = "ema.pt" in files
    if weights == "ema" and not has_ema:
        raise ValueError(f"load_checkpoint {where}: load_weights=ema but the checkpoint has no ema.pt (its run had ema off)")
    use = "ema" if has_ema and weights in ("auto", "ema") else "raw"
    names = [n for n in ("config.yaml", "identifiers.json") if n in files]
    if load_state:
        names += ["model.pt"] + (["ema.pt"] if use == "ema" else [])
    loaded = store.load(where, names)
    arch = None
    if "config.yaml" in loaded:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "config.yaml"
            path.write_text(loaded["config.yaml"])
            arch = dataclasses.asdict(load_config(["--config", str(path)], warn=False).arch)
    identifiers = json.loads(loaded["identifiers.json"]) if "identifiers.json" in loaded else None
    state = None
    if load_state:
        state = dict(loaded["model.pt"])
        if use == "ema":
            shadow = loaded["ema.pt"]["shadow"]
            unknown = sorted(set(shadow) - set(state))
            if unknown:
                raise ValueError(f"load_checkpoint {where}: ema.pt has weights the model does not: {unknown[:5]}")
            state.update(shadow)
    return Pretrained(where, "step", arch, use, state, identifiers, meta.get("step"))


def _read_reference(uri: str, weights: str, load_state: bool) -> Pretrained:
    from trm.model import load_reference_state_dict

    text = _read_optional(f"{_parent(uri)}/{REFERENCE_CONFIG}")
    arch, saved_ema = None, None
    if text is not None:
        tree = yaml.safe_load(text) or {}
        section = tree.get("arch") if isinstance(tree, dict) else None
        if not isinstance(section, dict):
            raise ValueError(f"load_checkpoint: {_parent(uri)}/{REFERENCE_CONFIG} has no arch section")
        arch = {k: v for k, v in section.items() if k not in ("loss", "name")}
        loss = section.get("loss") or {}
        if isinstance(loss, dict) and "loss_type" in loss:
            arch["loss_type"] = loss["loss_type"]
        saved_ema = tree.get("ema")
    if weights != "auto" and saved_ema is not None and (weights == "ema") != bool(saved_ema):
        raise ValueError(f"load_checkpoint {uri}: load_weights={weights}, but the reference saves the weights its "
                         f"run evaluated with, and its all_config.yaml says ema: {saved_ema}")
    names = _read_optional(f"{_parent(uri)}/identifiers.json")
    state = None
    if load_state:
        if _is_s3(uri):
            from trm.storage import localize

            local = localize(uri)
        else:
            local = Path(uri)
        state = load_reference_state_dict(local)
    step = None
    base = os.path.basename(uri)
    if base.startswith("step_") and base[5:].isdigit():
        step = int(base[5:])
    return Pretrained(uri, "reference", arch, "ema" if saved_ema else "raw", state,
                      json.loads(names) if names is not None else None, step)


def apply_arch(cfg, src: Pretrained) -> list[str]:
    """Give `cfg.arch` the checkpoint's model keys (those not set on the command line); returns log lines.

    ValueError names a command-line key whose value would change a tensor's shape."""
    from trm.config import ArchConfig

    if src.arch is None:
        return [f"load_checkpoint {src.uri}: no config beside it; the model is this run's config"]
    explicit = getattr(cfg, "explicit_keys", frozenset())
    current = dataclasses.asdict(cfg.arch)
    theirs = dict(src.arch)
    if theirs.get("puzzle_emb_ndim") is None and "hidden_size" in theirs:
        theirs["puzzle_emb_ndim"] = theirs["hidden_size"]
    notes, changes = [], {}
    for key in MODEL_KEYS:
        if key not in theirs:
            continue
        value, mine = theirs[key], current[key]
        if _same(value, mine):
            continue
        if f"arch.{key}" in explicit:
            if key in SHAPE_KEYS:
                raise ValueError(f"arch.{key}={mine} on the command line, but load_checkpoint {src.uri} was trained "
                                 f"with arch.{key}={value}: its weights cannot load into that model")
            notes.append(f"arch.{key}={mine} (command line); the checkpoint was trained with {value}")
            continue
        changes[key] = value
        notes.append(f"arch.{key}={value} from the checkpoint (the config said {mine})")
    if changes:
        if "hidden_size" in changes and "puzzle_emb_ndim" not in changes and "arch.puzzle_emb_ndim" not in explicit:
            changes["puzzle_emb_ndim"] = None
        try:
            cfg.arch = ArchConfig(**{**current, **changes})
        except ValueError as err:
            raise ValueError(f"load_checkpoint {src.uri}: its model does not fit this run's config: {err}") from None
    return notes


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return a == b


class TableSummary(NamedTuple):
    mode: str  # "name" (rows matched by identifier name), "position" (same size, no names), "reinit" (all rows)
    carried: int
    new: int
    dropped: int
    strategy: str

    def line(self) -> str:
        if self.mode == "name":
            return (f"puzzle embeddings carried by name: {self.carried} rows carried, {self.new} new "
                    f"({self.strategy}), {self.dropped} dropped")
        if self.mode == "position":
            return f"puzzle embeddings: {self.carried} rows carried by position (no identifiers.json to match names)"
        return (f"puzzle embeddings: no identifier names and another table size: all {self.new} rows "
                f"re-initialised ({self.strategy}), {self.dropped} dropped")


def reinit_rows(table: torch.Tensor, n: int, strategy: str) -> torch.Tensor:
    """`n` fresh rows from a trained table: its mean row, or (normal) mean + N(0, 1) * per-dimension std."""
    table = table.float()
    mean = table.mean(dim=0, keepdim=True)
    if strategy == "mean":
        return mean.expand(n, -1).clone()
    if strategy == "normal":
        std = table.std(dim=0, keepdim=True, unbiased=False).clamp_min(1e-6)
        return torch.randn(n, table.shape[1]) * std + mean
    raise ValueError(f"puzzle_emb_reinit_strategy must be mean or normal, got {strategy!r}")


def carry_table(old: torch.Tensor, old_names: list[str] | None, new_shape: torch.Size, new_names: list[str] | None,
                strategy: str) -> tuple[torch.Tensor, TableSummary]:
    """The new run's puzzle-embedding table from a checkpoint's (see the module docstring)."""
    if old.ndim != 2 or old.shape[1] != new_shape[1]:
        raise ValueError(f"{PUZZLE_TABLE}: the checkpoint's table is {tuple(old.shape)}, the model's "
                         f"[{new_shape[0]}, {new_shape[1]}]: arch.puzzle_emb_ndim must match")
    n_new = new_shape[0]
    old = old.float()
    if old_names is not None and new_names is not None:
        index = {name: i for i, name in enumerate(old_names[: old.shape[0]]) if name != BLANK}
        table = reinit_rows(old, n_new, strategy)
        carried, new, seen = 0, 0, set()
        for i, name in enumerate(new_names[:n_new]):
            if name == BLANK:
                if old_names and old_names[0] == BLANK:
                    table[i] = old[0]
                continue
            j = index.get(name)
            if j is None:
                new += 1
            else:
                table[i] = old[j]
                carried += 1
                seen.add(name)
        return table, TableSummary("name", carried, new, len(index) - len(seen), strategy)
    if tuple(old.shape) == tuple(new_shape):
        return old.clone(), TableSummary("position", n_new, 0, 0, strategy)
    return reinit_rows(old, n_new, strategy), TableSummary("reinit", 0, n_new, old.shape[0], strategy)


def load_pretrained(model: torch.nn.Module, src: Pretrained, identifiers: list[str] | None,
                    strategy: str = "mean") -> TableSummary | None:
    """Load `src`'s weights into `model` (a LossHead); the puzzle table through carry_table.

    ValueError lists missing/unexpected keys and shape mismatches."""
    if src.state is None:
        raise ValueError("load_pretrained: the checkpoint was read without its weights (load_state=False)")
    state = dict(src.state)
    own = model.state_dict()
    summary = None
    if PUZZLE_TABLE in own and PUZZLE_TABLE in state:
        table, summary = carry_table(state[PUZZLE_TABLE], src.identifiers, own[PUZZLE_TABLE].shape, identifiers,
                                     strategy)
        state[PUZZLE_TABLE] = table.to(own[PUZZLE_TABLE].dtype)
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(f"load_checkpoint {src.uri}: its weights do not match the model; missing: "
                         f"{missing or 'none'}; unexpected: {unexpected or 'none'} (a model key such as "
                         "arch.L_layers or arch.pos_encodings differs)")
    wrong = [f"{k}: {tuple(state[k].shape)} in the checkpoint, {tuple(v.shape)} in the model"
             for k, v in own.items() if state[k].shape != v.shape]
    if wrong:
        raise ValueError(f"load_checkpoint {src.uri}: shape mismatch ({'; '.join(wrong)}); check arch.hidden_size, "
                         "arch.expansion, arch.puzzle_emb_len")
    model.load_state_dict(state, strict=True)
    return summary


# ------------------------------------------------------------------------------------------------------------------
# The final checkpoint of a run: last | best


class Choice(NamedTuple):
    where: str  # the step-N/ folder (path or s3:// URI)
    step: int
    how: str  # "last", "best", or "last (no evaluation with known outputs)"
    value: float | None  # the metric of the chosen checkpoint, when it was evaluated


def pick_checkpoint(run: str, choice: str = "last", checkpoints: str | None = None,
                    metric: str = "ARC/pass@2") -> Choice:
    """A finished run's final checkpoint: `last`, or `best` = the highest `metric` in eval/step-N/metrics.json among
    complete checkpoints evaluated on tasks with known outputs (ARC/tasks_scored > 0; ties: the later step); with
    no such evaluation `best` falls back to the last. `run` is the run folder (local or s3://)."""
    from trm.checkpoint import Checkpoints

    if choice not in ("last", "best"):
        raise ValueError(f"final_checkpoint must be last or best, got {choice!r}")
    run = str(run).rstrip("/")
    store = Checkpoints(checkpoints or f"{run}/checkpoints")
    steps = store.complete_steps()
    if not steps:
        raise FileNotFoundError(f"{store.root}: no complete checkpoint")
    last = Choice(store.where(steps[-1]), steps[-1], "last", None)
    scored = []
    for step in steps:
        text = _read_optional(f"{run}/eval/step-{step}/metrics.json")
        if text is None:
            continue
        metrics = json.loads(text)
        prefix = metric.split("/", 1)[0]
        if metric in metrics and metrics.get(f"{prefix}/tasks_scored", 1) > 0:
            scored.append((float(metrics[metric]), step))
    last_value = {s: v for v, s in scored}.get(steps[-1])
    if last_value is not None:
        last = last._replace(value=last_value)
    if choice == "last":
        return last
    if not scored:
        return last._replace(how="last (no evaluation with known outputs)")
    value, step = max(scored)
    return Choice(store.where(step), step, "best", value)
