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


def run(dataset, model, run_root: str, max_augmentations: int, metrics, report, summary, submission) -> dict:
    from components import runtime
    from trm.evaluation import evaluate as evaluation

    data_uri = runtime.pointer_uri(dataset)
    ckpt_uri = runtime.pointer_uri(model)
    step = (model.metadata or {}).get("step")
    if step is None:
        step = int(ckpt_uri.rstrip("/").rsplit("step-", 1)[1])
    out = runtime.join(run_root, "eval", f"step-{int(step)}")
    argv = ["--checkpoint", ckpt_uri, "--data", data_uri, "--output-dir", out]
    if max_augmentations > 0:
        argv += ["--max-augmentations", str(max_augmentations)]
    runtime.log("trm evaluate " + " ".join(argv))
    status = evaluation.main(argv)
    if status:
        raise RuntimeError(f"trm evaluate exited with status {status}")

    numbers = runtime.read_json(runtime.join(out, "metrics.json"))
    for key, value in sorted(numbers.items()):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            metrics.log_metric(key, float(value))
    runtime.copy_to_file(runtime.join(out, "report.html"), report.path)
    report.metadata["uri"] = runtime.join(out, "report.html")
    runtime.copy_to_file(runtime.join(out, "summary.md"), summary.path)
    summary.metadata["uri"] = runtime.join(out, "summary.md")
    headline = {k: v for k, v in numbers.items() if k.startswith("ARC/pass@") and k in ("ARC/pass@1", "ARC/pass@2")}
    record = runtime.write_pointer(submission, runtime.join(out, "submission.json"), step=int(step),
                                   checkpoint=ckpt_uri, report=runtime.join(out, "report.html"), **headline)
    runtime.log(f"evaluation of step {step}: {headline} -> {out}")
    return record


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
    from components.evaluate import run
    from components.runtime import use_endpoint

    use_endpoint(s3_endpoint)
    run(dataset, model, run_root, max_augmentations, metrics, report, summary, submission)
