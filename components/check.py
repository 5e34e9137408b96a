"""KFP component `check-params`: the first step; checks every run parameter, the S3 store and the cluster; fixes
the run root and the trainer backend.

    from components.check import check_params
    out = check_params.python_func(bucket="trm", run_prefix="runs", run_id="r1", ...)   # plain function
    out.run_root, out.backend      # "s3://trm/runs/r1", "local" | "trainjob" | "pytorchjob"

A bad value (unknown subset or source, negative epochs, an unknown trainer backend, an unreachable S3 endpoint)
fails here with a message naming the parameter, before any data is built. On success it writes the run's
parameters to `<run root>/params.json` (this also proves the store is writable) and returns the run root
`s3://<bucket>/<run_prefix>/<run_id>` (an empty `run_id` takes the KFP run's id; `{namespace}` in `run_prefix`
becomes the pod's namespace, e.g. `private-artifacts/{namespace}/trm` in a Kubeflow profile) and the backend:
`trainer_backend` with `auto` resolved. For a cluster backend it also checks that the API serves the job kind
(TrainJob or PyTorchJob), that the launch settings build a valid job, that the TrainJob's runtime exists and that
this step's service account may create, watch and delete such jobs (components/impl/launch.py).
"""

from typing import NamedTuple

from kfp import dsl

from components import settings


@dsl.component(base_image=settings.STEPS_IMAGE, install_kfp_package=False)
def check_params(
    s3_endpoint: str,
    job_id: str,
    bucket: str,
    run_prefix: str,
    run_id: str,
    input_prefix: str,
    subsets: list,
    test_set_names: list,
    train_only_subsets: list,
    num_aug: int,
    preset: str,
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
    train_overrides: list,
    max_augmentations: int,
    final_checkpoint: str,
    trainer_backend: str,
    nnodes: int,
    nproc_per_node: int,
    gpu_type: str,
    node_selector: dict,
    tolerations: list,
    trainer_image: str,
    namespace: str,
    active_deadline_seconds: int,
    pending_timeout: int,
    queue_name: str,
) -> NamedTuple("Outputs", [("run_root", str), ("backend", str)]):
    """Check the run parameters, the S3 store and the cluster; return the run root and the trainer backend."""
    params = dict(locals())
    params.pop("job_id")
    from collections import namedtuple

    from components.impl import launch
    from components.impl.check import run
    from components.impl.choose import CHOICES
    from components.impl.check import train_overrides as make_words
    from components.runtime import use_endpoint

    use_endpoint(s3_endpoint)
    if final_checkpoint not in CHOICES:
        raise ValueError(f"final_checkpoint: expected one of {CHOICES}, got {final_checkpoint!r}")
    params["run_prefix"] = launch.expand_prefix(run_prefix)
    root = run(params, job_id)
    words = make_words(preset, f"{root}/dataset", root, hidden_size, num_heads, L_layers, H_cycles, L_cycles,
                            halt_max_steps, global_batch_size, epochs, eval_interval, lr, puzzle_emb_lr, ema,
                            train_overrides)
    backend = launch.check_cluster({**params, "kfp_run_id": job_id}, root, words)
    return namedtuple("Outputs", ["run_root", "backend"])(root, backend)
