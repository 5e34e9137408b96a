"""The plain-Python work of the `choose-checkpoint` component (`components/choose.py`); imported inside the pod.

    from components.impl.choose import run
    record = run(run_root="s3://trm/runs/r1", final_checkpoint="best", need_evaluation=False, model=..., evaluation=...)

KFP runs component code with `_KFP_RUNTIME=true`, where `kfp.dsl` has no `component` decorator, so the code a
pod imports lives here, apart from the `@dsl.component` definitions.
"""

from __future__ import annotations

CHOICES = ("last", "best")


def run(run_root: str, final_checkpoint: str, need_evaluation: bool, model, evaluation) -> dict:
    """Pick the run's final checkpoint (trm.warmstart.pick_checkpoint: `last`, or `best` by ARC/pass@2 among the
    evaluated checkpoints with known outputs, else the last); point `model` at it and `evaluation` at the trainer's
    `eval/step-N/` results of that step. With need_evaluation, a chosen step without them is an error."""
    from components import runtime
    from trm.warmstart import pick_checkpoint

    if final_checkpoint not in CHOICES:
        raise ValueError(f"final_checkpoint: expected one of {CHOICES}, got {final_checkpoint!r}")
    choice = pick_checkpoint(run_root, final_checkpoint)
    folder = runtime.join(run_root, "eval", f"step-{choice.step}")
    metrics_uri = runtime.join(folder, "metrics.json")
    numbers = runtime.read_json(metrics_uri) if runtime.exists(metrics_uri) else {}
    headline = {k: float(v) for k, v in numbers.items() if k.startswith("ARC/pass@") and isinstance(v, (int, float))}
    submission = runtime.join(folder, "submission.json")
    evaluated = runtime.exists(submission)
    if need_evaluation and not evaluated:
        raise FileNotFoundError(f"final_checkpoint={final_checkpoint}: step {choice.step} ({choice.where}) has no "
                                f"evaluation at {submission}; the trainer evaluates at every eval_interval and at "
                                "the end unless evaluators=[] (keep evaluators=[arc])")
    value = None if choice.value is None else float(choice.value)
    facts = {"step": choice.step, "chosen": choice.how, **({"ARC/pass@2": value} if value is not None else {})}
    record = runtime.write_pointer(model, choice.where, **facts)
    runtime.write_pointer(evaluation, submission, step=choice.step, checkpoint=choice.where, evaluated=evaluated,
                          report=runtime.join(folder, "report.html"), **headline)
    shown = f", ARC/pass@2 {value:.4f}" if value is not None else ""
    runtime.log(f"final checkpoint ({final_checkpoint}): {choice.where} (step {choice.step}, {choice.how}{shown})")
    return record
