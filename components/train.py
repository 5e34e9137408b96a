"""KFP components `train` (torchrun inside the step's pod) and `train-pytorchjob` (a PyTorchJob on the cluster).

    from components.train import train
    train.python_func(dataset=Dataset(...), run_root="s3://trm/runs/r1", preset="cpu-tiny", ..., nproc_per_node=2,
                      model=Model(uri="/tmp/m"), metrics=Metrics(uri="/tmp/mm"))

Both run `trm train` with the pipeline's parameters as `key=value` words (see `components.impl.check.train_overrides`):
checkpoints go to `<run root>/checkpoints/step-N/`, metrics to `<run root>/metrics.jsonl`. A retried step resumes
from the newest complete checkpoint there. The `Model` artifact points at the final checkpoint
(`{"uri": ".../checkpoints/step-N", "step": N}`); `Metrics` holds the last logged training numbers.
`train` runs `torchrun --nproc-per-node N -m trm.train` in its own pod (the `local` backend; on a laptop, this
machine); `train-pytorchjob` submits a PyTorchJob with `trm.launch`, follows it, and fails when the job fails.
"""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

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
    gpu_type: str,
    node_selector: dict,
    tolerations: list,
    model: Output[Model],
    metrics: Output[Metrics],
):
    """Train with torchrun in this pod (nproc_per_node processes); output the final checkpoint's pointer."""
    from components.runtime import use_endpoint
    from components.impl.train import run

    use_endpoint(s3_endpoint)
    # gpu_type/node_selector/tolerations are applied to this pod by the pipeline (kfp-kubernetes).
    run("local", dataset, run_root, preset, hidden_size, num_heads, L_layers, H_cycles, L_cycles, halt_max_steps,
        global_batch_size, epochs, eval_interval, lr, puzzle_emb_lr, ema, train_overrides, 1, nproc_per_node, {},
        model, metrics)


@dsl.component(base_image=settings.STEPS_IMAGE, install_kfp_package=False)
def train_pytorchjob(
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
    nnodes: int,
    nproc_per_node: int,
    gpu_type: str,
    node_selector: dict,
    tolerations: list,
    trainer_image: str,
    namespace: str,
    model: Output[Model],
    metrics: Output[Metrics],
):
    """Train as a PyTorchJob (nnodes x nproc_per_node GPUs); output the final checkpoint's pointer."""
    from components.runtime import use_endpoint
    from components.impl.train import run

    use_endpoint(s3_endpoint)
    job = {"name": "", "image": trainer_image, "gpu_type": gpu_type, "node_selector": node_selector,
           "tolerations": tolerations, "namespace": namespace, "s3_endpoint": s3_endpoint, "run_root": run_root}
    run("pytorchjob", dataset, run_root, preset, hidden_size, num_heads, L_layers, H_cycles, L_cycles,
        halt_max_steps, global_batch_size, epochs, eval_interval, lr, puzzle_emb_lr, ema, train_overrides, nnodes,
        nproc_per_node, job, model, metrics)
