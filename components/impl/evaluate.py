"""The plain-Python work of the `evaluate` component (`components/evaluate.py`); imported inside the pod.

KFP runs component code with `_KFP_RUNTIME=true`, where `kfp.dsl` has no `component` decorator, so the code a
pod imports lives here, apart from the `@dsl.component` definitions.
"""

from __future__ import annotations


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
    headline = {k: v for k, v in numbers.items() if k.startswith("ARC/pass@")}
    record = runtime.write_pointer(submission, runtime.join(out, "submission.json"), step=int(step),
                                   checkpoint=ckpt_uri, report=runtime.join(out, "report.html"), **headline)
    runtime.log(f"evaluation of step {step}: pass@1 {headline.get('ARC/pass@1')}, pass@2 "
                f"{headline.get('ARC/pass@2')} -> {out}")
    return record
