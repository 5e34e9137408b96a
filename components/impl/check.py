"""The plain-Python work of the `check` component (`components/check.py`); imported inside the pod.

KFP runs component code with `_KFP_RUNTIME=true`, where `kfp.dsl` has no `component` decorator, so the code a
pod imports lives here, apart from the `@dsl.component` definitions.
"""

from __future__ import annotations

from components import settings


def train_overrides(
    preset: str,
    dataset_uri: str,
    root: str,
    hidden_size: int,
    num_heads: int,
    L_layers: int,
    H_cycles: int,
    L_cycles: int,
    halt_max_steps: int,
    global_batch_size: int,
    epochs: int,
    eval_interval: int,
    lr: float,
    puzzle_emb_lr: float,
    ema: bool,
    extra: list,
) -> list[str]:
    """The `trm train` words for these pipeline parameters (extra `key=value` words last, so they win).

    A model key given as 0 (hidden_size, num_heads, L_layers, H_cycles, L_cycles, halt_max_steps) is left out: the
    preset's value; with `load_checkpoint` the checkpoint's for the keys that define the model (trm.warmstart).
    The post-training pipeline passes 0 for all of them."""
    words = [
        f"preset={preset}",
        f"data_paths=[{dataset_uri}]",
        f"run_dir={root}",
        f"checkpoint_path={root}/checkpoints",
    ]
    arch = (("hidden_size", hidden_size), ("num_heads", num_heads), ("L_layers", L_layers), ("H_cycles", H_cycles),
            ("L_cycles", L_cycles), ("halt_max_steps", halt_max_steps))
    words += [f"arch.{key}={value}" for key, value in arch if value != 0]
    words += [
        f"global_batch_size={global_batch_size}",
        f"epochs={epochs}",
        f"eval_interval={eval_interval}",
        f"lr={lr}",
        f"puzzle_emb_lr={puzzle_emb_lr}",
        f"ema={bool(ema)}",
    ]
    for word in extra:
        if not isinstance(word, str) or "=" not in word:
            raise ValueError(f"train_overrides: expected key=value words, got {word!r}")
        words.append(word)
    return words


def run(params: dict, job_id: str) -> str:
    """Check `params` (the component's inputs) and return the run root; ValueError names the bad parameter."""
    from components import runtime
    from trm.config import load_config
    from trm.storage.config import S3Config

    backend = params["trainer_backend"]
    if backend not in settings.TRAINER_BACKENDS:
        raise ValueError(f"trainer_backend: expected one of {settings.TRAINER_BACKENDS}, got {backend!r}")
    for key in ("num_aug", "nnodes", "nproc_per_node"):
        value = params[key]
        if value < (0 if key == "num_aug" else 1):
            raise ValueError(f"{key}: must be {'>= 0' if key == 'num_aug' else '>= 1'}, got {value}")
    if backend == "local" and params["nnodes"] != 1:
        raise ValueError(f"nnodes: the local trainer runs on one node, got nnodes={params['nnodes']}")
    if params["max_augmentations"] < 0:
        raise ValueError(f"max_augmentations: must be >= 0 (0: all variants), got {params['max_augmentations']}")
    subsets, tests = list(params["subsets"]), list(params["test_set_names"])
    if not subsets:
        raise ValueError("subsets: empty; name at least one, e.g. ['training2', 'evaluation2']")
    if not tests:
        raise ValueError("test_set_names: empty; name the subset to evaluate on, e.g. ['evaluation2']")
    missing = [name for name in tests + list(params["train_only_subsets"]) if name not in subsets]
    if missing:
        raise ValueError(f"test_set_names/train_only_subsets: {missing} not among subsets {subsets}")

    root = runtime.run_root(params["bucket"] or S3Config.from_env().bucket, params["run_prefix"],
                            params["run_id"] or job_id)
    # The trainer's own checks (negative epochs, eval_interval not dividing epochs, unknown keys, ...).
    words = train_overrides(
        params["preset"], f"{root}/dataset", root, params["hidden_size"], params["num_heads"], params["L_layers"],
        params["H_cycles"], params["L_cycles"], params["halt_max_steps"], params["global_batch_size"],
        params["epochs"], params["eval_interval"], params["lr"], params["puzzle_emb_lr"], params["ema"],
        params["train_overrides"],
    )
    try:
        config = load_config(words)
    except ValueError as error:
        raise ValueError(f"training parameters: {error}") from None
    world = params["nnodes"] * params["nproc_per_node"]
    if params["global_batch_size"] % world:
        raise ValueError(f"global_batch_size: {params['global_batch_size']} is not divisible by "
                         f"nnodes*nproc_per_node = {world}")

    # The ARC source: every subset must exist (this reads the small task files, never the dataset).
    from trm.data.sources import load_subset

    for subset in subsets:
        try:
            tasks = load_subset(params["input_prefix"], subset)
        except (ValueError, FileNotFoundError, KeyError) as error:
            raise ValueError(f"subsets: cannot read subset {subset!r} from input_prefix "
                             f"{params['input_prefix']!r}: {error}") from None
        runtime.log(f"source {params['input_prefix']} subset {subset}: {len(tasks)} tasks")

    # The store: reachable, writable (the endpoint and keys come from the environment, never from parameters).
    runtime.check_store(root)
    # Run identity: the same run root with other dataset parameters is refused (naming them); other training
    # parameters make the trainer set the old checkpoints aside (trm.identity, docs/storage.md "Run identity").
    from trm.identity import claim_run_root

    previous = runtime.read_json(f"{root}/params.json") if runtime.exists(f"{root}/params.json") else None
    record, note = claim_run_root(root, params, config, previous)
    if note:
        runtime.log(note)
    runtime.write_json(f"{root}/params.json", {**params, "run_root": root, **record})
    runtime.log(f"run root {root}")
    return root
