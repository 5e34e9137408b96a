"""KFP component `export-submission`: validate the evaluated submission and publish `<run root>/submission.json`.

    from components.export_submission import export_submission
    export_submission.python_func(s3_endpoint="", submission=Artifact(...), dataset=Dataset(...),
                                  run_root="s3://trm/runs/r1", final=Artifact(uri="/tmp/final"))

Checks the submission against the test tasks of the dataset (`test_puzzles.json`: every task present, one entry
per test input in order, both attempts, grids 1..30 x 1..30 of colours 0..9) with `trm.evaluation.submission`,
writes it to `<run root>/submission.json` (the file to upload to the ARC Prize) and a run summary
`<run root>/run.json` with the URIs of the dataset, final checkpoint, submission and report.
"""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Output

from components import settings


@dsl.component(base_image=settings.STEPS_IMAGE, install_kfp_package=False)
def export_submission(
    s3_endpoint: str,
    submission: Input[Artifact],
    dataset: Input[Dataset],
    model: Input[Artifact],
    run_root: str,
    final: Output[Artifact],
):
    """Validate the submission against the test tasks and publish <run_root>/submission.json and run.json."""
    from components.impl.export_submission import run
    from components.runtime import use_endpoint

    use_endpoint(s3_endpoint)
    run(submission, dataset, model, run_root, final)
