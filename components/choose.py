"""KFP component `choose-checkpoint`: the run's final checkpoint, `last` or `best`, for evaluation and export.

    from components.choose import choose_checkpoint
    choose_checkpoint.python_func(s3_endpoint="", trained=Model(...), run_root="s3://trm/runs/r1",
                                  final_checkpoint="best", need_evaluation=False, model=Model(uri="/tmp/m"),
                                  evaluation=Artifact(uri="/tmp/e"))

The trainer evaluates every `eval_interval` epochs and at the end, writes each evaluation to `<run root>/eval/step-N/`
(metrics.json, submission.json, report.html) and keeps every evaluated checkpoint (`checkpoint_every_eval`; pruning
spares them). `final_checkpoint=last` takes the newest complete checkpoint; `best` the one with the highest
`ARC/pass@2` among the evaluated checkpoints whose test outputs are known (`ARC/tasks_scored > 0`; ties: the later
step), and the last when none is (hidden test outputs): `trm.warmstart.pick_checkpoint`. Outputs: `model`, a pointer
to the chosen `step-N/` (`{"uri", "step", "chosen": "best" | "last" | ...}`), and `evaluation`, a pointer to that
step's `eval/step-N/submission.json` with its ARC/pass@K (`need_evaluation`: fail when there is none).
`trained` (the train step's final checkpoint) orders the step after training.
"""

from kfp import dsl
from kfp.dsl import Artifact, Input, Model, Output

from components import settings


@dsl.component(base_image=settings.STEPS_IMAGE, install_kfp_package=False)
def choose_checkpoint(
    s3_endpoint: str,
    trained: Input[Model],
    run_root: str,
    final_checkpoint: str,
    need_evaluation: bool,
    model: Output[Model],
    evaluation: Output[Artifact],
):
    """Pick the final checkpoint (last | best by ARC/pass@2); output pointers to it and to its evaluation."""
    from components.impl.choose import run
    from components.runtime import use_endpoint

    use_endpoint(s3_endpoint)
    run(run_root, final_checkpoint, need_evaluation, model, evaluation)
