"""Run identity: which parameters define a run's dataset and its training, their fingerprints, and what differs.

    from trm.identity import training_identity, fingerprint_of, differences, claim_run_root
    ident = training_identity(cfg)               # {"arch.hidden_size": 512, "lr": 0.0001, ...}
    fingerprint_of(ident)                        # "3f2a9c0e5d1b7a64"
    differences(old, new)                        # ["lr: 0.0001 -> 0.0003"]
    record = claim_run_root(root, params, cfg, previous_params_json)   # ValueError when the dataset differs

Training identity: every `trm train` key except those that only steer a run (names, folders, devices, logging,
when to evaluate or checkpoint, `max_steps`, `resume`, `micro_batch_size`, ...: `RUN_CONTROL`). A checkpoint
records it in meta.json; a run never resumes a checkpoint of another fingerprint (trm.checkpoint sets such
folders aside). Dataset identity (pipeline): input_prefix, subsets, test_set_names, train_only_subsets, num_aug;
`trm build-dataset` records the full build parameters (seed and translation too) in its `_COMPLETE` manifest.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

# TrainConfig keys that do not change what is learned (only how, where and how visibly the run goes)
RUN_CONTROL = frozenset({
    "project_name", "run_name", "run_dir", "checkpoint_path", "resume", "max_steps", "device", "num_threads",
    "compile", "wandb", "progress", "keep_last", "checkpoint_every_eval", "checkpoint_every_n_steps",
    "checkpoint_every_minutes", "eval_interval", "min_eval_interval", "evaluators", "eval_save_outputs",
    "eval_max_augmentations", "data_paths_test", "micro_batch_size",
    "compile_mode", "sdpa_backend", "tf32", "log_interval", "prefetch_batches", "log_data_wait",
})
# check-params' parameters that decide the dataset (the build component adds dataset_seed and translation)
DATASET_PARAMS = ("input_prefix", "subsets", "test_set_names", "train_only_subsets", "num_aug")


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def training_identity(config: Any) -> dict[str, Any]:
    """The training-defining keys of a TrainConfig (or of its `to_dict()`), flat (`arch.hidden_size`)."""
    tree = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return {k: v for k, v in sorted(_flatten(tree).items()) if k not in RUN_CONTROL}


def training_identity_from_yaml(text: str) -> dict[str, Any]:
    """training_identity of a checkpoint's config.yaml (for folders written before fingerprints were recorded)."""
    import yaml

    tree = yaml.safe_load(text) or {}
    if not isinstance(tree, dict):
        raise ValueError("config.yaml is not a mapping")
    return training_identity(tree)


def fingerprint_of(identity: dict[str, Any]) -> str:
    """A short, stable digest of an identity dict (key order does not matter)."""
    text = json.dumps(identity, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _show(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "..."


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """`key: old -> new` for every key whose value differs (absent keys shown as `(none)`)."""
    out = []
    for key in sorted(set(old) | set(new)):
        if old.get(key, "(none)") != new.get(key, "(none)"):
            out.append(f"{key}: {_show(old.get(key, '(none)'))} -> {_show(new.get(key, '(none)'))}")
    return out


def dataset_identity(params: dict[str, Any]) -> dict[str, Any]:
    """The dataset-defining pipeline parameters present in `params`."""
    return {k: params[k] for k in DATASET_PARAMS if k in params}


def claim_run_root(root: str, params: dict[str, Any], config: Any, previous: dict | None) -> tuple[dict, str | None]:
    """The identity record to store in `<root>/params.json`, and a note for the log (or None).

    `previous`: that file's content from an earlier submission (None when new). A different dataset identity is
    refused (ValueError naming every differing parameter): the dataset and checkpoints under `root` belong to
    the earlier parameters. A different training identity is allowed: the trainer then sets the old
    checkpoints aside and starts over (the note says so)."""
    dataset = dataset_identity(params)
    training = training_identity(config)
    record = {"identity": {"dataset": dataset, "dataset_fingerprint": fingerprint_of(dataset),
                           "training": training, "training_fingerprint": fingerprint_of(training)}}
    if not previous:
        return record, None
    old = previous.get("identity") or {}
    old_dataset = old.get("dataset") if isinstance(old.get("dataset"), dict) else dataset_identity(previous)
    diff = differences(old_dataset, dataset)
    if diff:
        raise ValueError(f"run root {root} already holds a run made with other dataset parameters "
                         f"({'; '.join(diff)}); submit with another run_id, or with the same dataset parameters "
                         "to resume it")
    note = None
    if isinstance(old.get("training"), dict):
        tdiff = differences(old["training"], training)
        if tdiff:
            note = (f"training parameters differ from the earlier submission to {root} ({'; '.join(tdiff[:6])}): "
                    "the trainer will move the old checkpoints aside and start over")
    return record, note
