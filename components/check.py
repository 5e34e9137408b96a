"""KFP component `check-params`: the first step; checks every run parameter and the S3 store, fixes the run root.

    from components.check import check_params
    root = check_params.python_func(bucket="trm", run_prefix="runs", run_id="r1", ...)   # plain function

A bad value (unknown subset or source, negative epochs, an unknown trainer backend, an unreachable S3 endpoint)
fails here with a message naming the parameter, before any data is built. On success it writes the run's
parameters to `<run root>/params.json` (this also proves the store is writable) and returns the run root
`s3://<bucket>/<run_prefix>/<run_id>`; an empty `run_id` takes the KFP run's id.
"""

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
    trainer_backend: str,
    nnodes: int,
    nproc_per_node: int,
) -> str:
    """Check the run parameters and the S3 store; return the run root s3://<bucket>/<run_prefix>/<run_id>."""
    params = dict(locals())
    params.pop("job_id")
    from components.impl.check import run
    from components.runtime import use_endpoint

    use_endpoint(s3_endpoint)

    return run(params, job_id)
