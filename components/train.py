"""KFP components `train` (torchrun inside the step's pod) and `train-job` (a TrainJob or PyTorchJob on the cluster).

    from components.train import train
    train.python_func(dataset=Dataset(...), run_root="s3://trm/runs/r1", preset="cpu-tiny", ..., nproc_per_node=2,
                      model=Model(uri="/tmp/m"), metrics=Metrics(uri="/tmp/mm"), curves=HTML(uri="/tmp/c"))

Both run `trm train` with the pipeline's parameters as `key=value` words (see `components.impl.check.train_overrides`):
checkpoints go to `<run root>/checkpoints/step-N/`, metrics to `<run root>/metrics.jsonl`. A retried step resumes
from the newest complete checkpoint there. The `Model` artifact points at the final checkpoint
(`{"uri": ".../checkpoints/step-N", "step": N}`); `Metrics` holds the last logged training numbers; `curves` is an
HTML page of SVG plots (losses, accuracies, pass@K against step) from `metrics.jsonl`, shown by the KFP UI.
`train` runs `torchrun --nproc-per-node N -m trm.train` in its own pod (the `local` backend; on a laptop, this
machine); `train-job` submits the job of the backend check-params resolved (`trainjob` or `pytorchjob`) with
`trm.launch`, follows it, and fails when the job fails (components/impl/launch.py).
"""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

from components import settings


@dsl.component(base_image=settings.TRAINER_IMAGE, install_kfp_package=False)
def train(
    s3_endpoint: str,
    dataset: Input[Dataset],
    run_root: str,
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
    nproc_per_node: int,
    model: Output[Model],
    metrics: Output[Metrics],
    curves: Output[HTML],
):
    """Train with torchrun in this pod (nproc_per_node processes); output the final checkpoint's pointer."""
    from components.impl.train import run
    from components.runtime import use_endpoint

    use_endpoint(s3_endpoint)
    # GPUs, node selector and tolerations are applied to this pod by the pipeline (kfp-kubernetes).
    run("local", dataset, run_root, preset, hidden_size, num_heads, L_layers, H_cycles, L_cycles, halt_max_steps,
        global_batch_size, epochs, eval_interval, lr, puzzle_emb_lr, ema, train_overrides, 1, nproc_per_node, {},
        model, metrics, curves)


@dsl.component(base_image=settings.STEPS_IMAGE, install_kfp_package=False)
def train_job(
    s3_endpoint: str,
    dataset: Input[Dataset],
    run_root: str,
    backend: str,
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
    nnodes: int,
    nproc_per_node: int,
    gpu_type: str,
    node_selector: dict,
    tolerations: list,
    trainer_image: str,
    namespace: str,
    kfp_run_id: str,
    active_deadline_seconds: int,
    pending_timeout: int,
    queue_name: str,
    model: Output[Model],
    metrics: Output[Metrics],
    curves: Output[HTML],
):
    """Train as a TrainJob or PyTorchJob (nnodes x nproc_per_node GPUs); output the final checkpoint's pointer."""
    from components.impl.train import run
    from components.runtime import use_endpoint

    use_endpoint(s3_endpoint)
    job = {"name": "", "image": trainer_image, "gpu_type": gpu_type, "node_selector": node_selector,
           "tolerations": tolerations, "namespace": namespace, "s3_endpoint": s3_endpoint, "kfp_run_id": kfp_run_id,
           "active_deadline_seconds": active_deadline_seconds, "pending_timeout": pending_timeout,
           "queue_name": queue_name}
    run(backend, dataset, run_root, preset, hidden_size, num_heads, L_layers, H_cycles, L_cycles, halt_max_steps,
        global_batch_size, epochs, eval_interval, lr, puzzle_emb_lr, ema, train_overrides, nnodes, nproc_per_node,
        job, model, metrics, curves)
