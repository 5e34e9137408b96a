"""KFP component `evaluate`: run the final checkpoint on the test split, vote, write `<run root>/eval/step-N/`.

    from components.evaluate import evaluate
    evaluate.python_func(dataset=Dataset(...), model=Model(...), run_root="s3://trm/runs/r1", max_augmentations=0,
                         metrics=Metrics(uri=...), report=HTML(uri=...), summary=Markdown(uri=...),
                         submission=Artifact(uri=...))

Wraps `trm evaluate --checkpoint <model uri> --data <dataset uri> --output-dir <run root>/eval/step-N`, which
writes submission.json, metrics.json, report.html and summary.md there. The step's artifacts: `Metrics`
(ARC/pass@K and counts), `HTML` (a copy of report.html, one self-contained file, so the KFP UI shows it),
`Markdown` (summary.md) and a pointer to the submission.json.
"""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Model, Output

from components import settings


@dsl.component(base_image=settings.TRAINER_IMAGE, install_kfp_package=False)
def evaluate(
    s3_endpoint: str,
    dataset: Input[Dataset],
    model: Input[Model],
    run_root: str,
    max_augmentations: int,
    metrics: Output[Metrics],
    report: Output[HTML],
    summary: Output[Markdown],
    submission: Output[Artifact],
):
    """Evaluate the final checkpoint with augmentation voting; output metrics, the report and the submission."""
    from components.impl.evaluate import run
    from components.runtime import use_endpoint

    use_endpoint(s3_endpoint)
    run(dataset, model, run_root, max_augmentations, metrics, report, summary, submission)
