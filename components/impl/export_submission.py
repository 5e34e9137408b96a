"""The plain-Python work of the `export_submission` component (`components/export_submission.py`); imported inside the pod.

KFP runs component code with `_KFP_RUNTIME=true`, where `kfp.dsl` has no `component` decorator, so the code a
pod imports lives here, apart from the `@dsl.component` definitions.
"""

from __future__ import annotations


def run(submission, dataset, model, run_root: str, final) -> dict:
    from components import runtime
    from trm.evaluation import submission as subm

    source = runtime.pointer_uri(submission)
    data_uri = runtime.pointer_uri(dataset)
    entries = runtime.read_json(source)
    tasks = runtime.read_json(runtime.join(data_uri, "test_puzzles.json"))
    subm.check(entries, tasks)  # SubmissionError (a ValueError) listing every problem by task and index
    target = subm.write(subm.ordered(entries, tasks), runtime.join(run_root, "submission.json"))
    meta = dict(submission.metadata or {})
    if meta.get("step") is not None:
        meta["step"] = int(meta["step"])  # KFP metadata numbers come back as floats
    summary = {
        "run_root": run_root,
        "dataset": data_uri,
        "checkpoint": runtime.pointer_uri(model),
        "final_checkpoint": (model.metadata or {}).get("chosen", "last"),
        "step": meta.get("step"),
        "submission": target,
        "evaluated_submission": source,
        "report": meta.get("report"),
        "metrics": {k: v for k, v in meta.items() if k.startswith("ARC/")},
        "tasks": len(entries),
    }
    runtime.write_json(runtime.join(run_root, "run.json"), summary)
    record = runtime.write_pointer(final, target, tasks=len(entries), step=meta.get("step"),
                                   run_summary=runtime.join(run_root, "run.json"))
    runtime.log(f"submission for {len(entries)} tasks -> {target}")
    return record
