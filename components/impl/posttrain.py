"""The plain-Python work of the post-training components (`components/posttrain.py`); imported inside the pods.

    from components.impl import posttrain
    posttrain.split(["a", "b", "c"], 2)                 # [["a", "b"], ["c"]]; chunk_size 0: one chunk of all
    posttrain.resolve_checkpoint("s3://trm/runs/seed1")  # a run root -> the checkpoint its export published
    out = posttrain.check(params, job_id)                # run root, backend, chunks, train words, solutions
    posttrain.merge(parts, run_root, challenges_uri, pretrained)   # one validated <run root>/submission.json
    posttrain.score(submission_uri, solutions_uri, run_root, metrics, table)   # trm score -> <run root>/score.json

Layout of a post-training run (`s3://<bucket>/<run_prefix>/<run_id>/`):

    params.json                          the run's parameters (check-posttrain)
    tasks/plan.json                      the checkpoint and the chunks: which task ids each one adapts to
    tasks/all_tasks_challenges.json      every task (train pairs, test inputs): what the submission must cover
    tasks/all_tasks_solutions.json       the known test outputs, when there are any (what `trm score` scores)
    tasks/chunk-NNN_tasks_challenges.json  one chunk's tasks, test outputs inside when known (its build source)
    chunks/<run_id>-cNNN/                one chunk: dataset/, checkpoints/step-N/, eval/step-N/, metrics.jsonl,
                                         submission.json (validated), run.json
    submission.json                      the chunks' submissions merged and validated against every task
    score.json                           `trm score` of it against the known outputs (when there are some)
    run.json                             URIs and the per-chunk choices; pass@1/pass@2 when scored

KFP runs component code with `_KFP_RUNTIME=true`, where `kfp.dsl` has no `component` decorator, so the code a
pod imports lives here, apart from the `@dsl.component` definitions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from components import settings

TASKS = "tasks"  # the subset name of every file this pipeline writes for the dataset builder
# train words the pipeline sets itself (from its parameters): train_overrides may not set them
RESERVED = ("load_checkpoint", "load_weights", "data_paths", "data_paths_test", "run_dir", "checkpoint_path",
            "eval_max_augmentations")
LOAD_WEIGHTS = ("auto", "ema", "raw")


def log(message: str) -> None:
    print(f"[trm] {message}", flush=True)


# -- the pretrained checkpoint ---------------------------------------------------------------------------------
def resolve_checkpoint(uri: str) -> tuple[str, str]:
    """(checkpoint, how it was found) for the `checkpoint` parameter: a `step-N/` folder or a reference `step_N`
    file as given; a pretraining run root: the checkpoint its export published (`run.json`), or without one its
    newest complete `checkpoints/step-N/`."""
    from components import runtime
    from trm.checkpoint import Checkpoints

    uri = str(uri).strip().rstrip("/")
    if not uri:
        raise ValueError("checkpoint: empty; give a step-N/ checkpoint folder, a reference step_N file or a "
                         "pretraining run root (s3://<bucket>/<run_prefix>/<run_id>), local or s3://")
    summary = runtime.join(uri, "run.json")
    if runtime.exists(summary):
        found = runtime.read_json(summary).get("checkpoint")
        if not found:
            raise ValueError(f"checkpoint: {summary} names no checkpoint (the pretraining run did not finish?)")
        return str(found).rstrip("/"), f"exported by the pretraining run {uri} ({summary})"
    latest = Checkpoints(runtime.join(uri, "checkpoints")).latest()
    if latest:
        return str(latest).rstrip("/"), f"the newest complete checkpoint of the run {uri}"
    return uri, "as given"


# -- the tasks and their chunks ----------------------------------------------------------------------------------
def read_tasks(input_prefix: str, subsets: list, solutions: str = "") -> dict:
    """{task id: trm.data.validate.Task} of every subset, in file order; `solutions` (a Kaggle solutions file,
    local or s3://; empty: none) adds test outputs. ValueError names the subset, file or task."""
    from components import runtime
    from trm.data.sources import load_subset
    from trm.data.validate import parse_grid

    if not subsets:
        raise ValueError("subsets: empty; name the subsets of input_prefix to adapt to, e.g. ['evaluation2']")
    tasks: dict = {}
    origin: dict[str, str] = {}
    for subset in subsets:
        try:
            found = load_subset(input_prefix, subset)
        except (ValueError, FileNotFoundError, KeyError) as error:
            raise ValueError(f"subsets: cannot read subset {subset!r} from input_prefix {input_prefix!r}: "
                             f"{error}") from None
        for task_id, task in found.items():
            if task_id in tasks:
                raise ValueError(f"subsets: task {task_id} is in both {origin[task_id]!r} and {subset!r}")
            tasks[task_id], origin[task_id] = task, subset
        log(f"source {input_prefix} subset {subset}: {len(found)} tasks")
    if not tasks:
        raise ValueError(f"subsets: no task in {subsets} of {input_prefix!r}")
    if solutions:
        if not runtime.exists(solutions):
            raise ValueError(f"solutions: {solutions} does not exist")
        known = runtime.read_json(solutions)
        if not isinstance(known, dict):
            raise ValueError(f"solutions: {solutions}: expected an object task id -> list of output grids")
        for task_id, grids in known.items():
            task = tasks.get(task_id)
            if task is None:
                continue  # a solutions file for more tasks than these (the whole evaluation set, say)
            if not isinstance(grids, list) or len(grids) != len(task.test):
                n = len(grids) if isinstance(grids, list) else type(grids).__name__
                raise ValueError(f"solutions: {solutions}: task {task_id}: {n} grid(s) for {len(task.test)} test "
                                 "input(s)")
            for i, grid in enumerate(grids):
                task.test[i].output = parse_grid(grid, f"{solutions}: task {task_id} [{i}]")
    return tasks


def split(ids: list[str], chunk_size: int) -> list[list[str]]:
    """`ids` in chunks of `chunk_size`, in order; 0: one chunk of all of them."""
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 0:
        raise ValueError(f"chunk_size: must be an integer >= 0 (0: all tasks in one job), got {chunk_size!r}")
    ids = list(ids)
    if not ids:
        return []
    size = chunk_size or len(ids)
    return [ids[i:i + size] for i in range(0, len(ids), size)]


def chunk_root(root: str, index: int) -> str:
    """A chunk's run folder. Its last segment starts with the run's id, so training jobs named after it
    (components.impl.launch.job_name) differ between runs."""
    from components import runtime

    return runtime.join(root, "chunks", f"{root.rstrip('/').rsplit('/', 1)[-1]}-c{index:03d}")


def known_outputs(task) -> bool:
    return all(pair.output is not None for pair in task.test)


def write_sources(root: str, tasks: dict, plan: list[list[str]]) -> tuple[list[dict], str, str]:
    """Write the chunks' task files, every task's challenges and the known solutions under `<root>/tasks/`.

    Returns (chunk records for the ParallelFor, the challenges URI, the solutions URI or "" when no task has its
    test outputs)."""
    from components import runtime

    folder = runtime.join(root, "tasks")
    chunks = []
    for index, ids in enumerate(plan):
        prefix = runtime.join(folder, f"chunk-{index:03d}")
        runtime.write_json(f"{prefix}_{TASKS}_challenges.json", {t: tasks[t].to_json() for t in ids})
        chunks.append({"index": index, "run_root": chunk_root(root, index), "input_prefix": prefix,
                       "tasks": len(ids), "known_outputs": sum(known_outputs(tasks[t]) for t in ids)})
    challenges = runtime.join(folder, f"all_{TASKS}_challenges.json")
    runtime.write_json(challenges, {t: {"train": task.to_json()["train"],
                                        "test": [{"input": p.input.tolist()} for p in task.test]}
                                    for t, task in tasks.items()})
    solved = {t: [p.output.tolist() for p in task.test] for t, task in tasks.items() if known_outputs(task)}
    solutions = ""
    if solved:
        solutions = runtime.join(folder, f"all_{TASKS}_solutions.json")
        runtime.write_json(solutions, solved)
    return chunks, challenges, solutions


def too_small(tasks: dict, plan: list[list[str]], global_batch_size: int, epochs_per_iter: int,
              max_examples_per_puzzle: int | None = None) -> str:
    """Why a chunk cannot fill one batch, or "". An epoch of the trainer's loader visits one puzzle (augmented
    variant) of each task and takes its demonstration pairs (at most max_examples_per_puzzle), and an iteration
    packs eval_interval epochs; the loader refuses an iteration with fewer examples than global_batch_size."""
    for index, ids in enumerate(plan):
        pairs = [len(tasks[t].train) for t in ids]
        if max_examples_per_puzzle:
            pairs = [min(n, max_examples_per_puzzle) for n in pairs]
        rows = sum(pairs) * epochs_per_iter
        if rows < global_batch_size:
            return (f"global_batch_size: chunk {index} ({len(ids)} task(s), {sum(pairs)} demonstration pairs per "
                    f"epoch) gives {rows} examples per iteration of {epochs_per_iter} epoch(s), fewer than "
                    f"global_batch_size {global_batch_size}: lower global_batch_size, raise chunk_size or "
                    "eval_interval")
    return ""


# -- the check step ------------------------------------------------------------------------------------------------
def chunk_words(checkpoint: str, load_weights: str, max_augmentations: int, extra: list) -> list[str]:
    """The post-training `trm train` words every chunk gets besides the pipeline's model/batch words."""
    for word in extra:
        if not isinstance(word, str) or "=" not in word:
            raise ValueError(f"train_overrides: expected key=value words, got {word!r}")
        key = word.split("=", 1)[0].lstrip("+~")
        if key in RESERVED:
            raise ValueError(f"train_overrides: {key} is set by the pipeline (parameters checkpoint, load_weights, "
                             "max_augmentations, and the chunk's dataset and run folder)")
    evaluation = str(max_augmentations) if max_augmentations > 0 else "null"
    return [f"load_checkpoint={checkpoint}", f"load_weights={load_weights}",
            f"eval_max_augmentations={evaluation}", *extra]


def check(params: dict[str, Any], job_id: str) -> dict[str, Any]:
    """Check the post-training parameters, the checkpoint, the tasks, the store and the cluster; write the task
    files and the plan. Returns run_root, backend, chunks, train_overrides, challenges, solutions, checkpoint."""
    from components import runtime
    from components.impl import launch
    from components.impl.check import train_overrides as make_words
    from components.impl.choose import CHOICES
    from trm.config import load_config
    from trm.storage.config import S3Config
    from trm.warmstart import read_pretrained

    backend = params["trainer_backend"]
    if backend not in settings.TRAINER_BACKENDS:
        raise ValueError(f"trainer_backend: expected one of {settings.TRAINER_BACKENDS}, got {backend!r}")
    for key, low in (("num_aug", 0), ("nnodes", 1), ("nproc_per_node", 1), ("chunk_size", 0),
                     ("max_augmentations", 0)):
        if params[key] < low:
            raise ValueError(f"{key}: must be >= {low}, got {params[key]}")
    if backend == "local" and params["nnodes"] != 1:
        raise ValueError(f"nnodes: the local trainer runs on one node, got nnodes={params['nnodes']}")
    if params["final_checkpoint"] not in CHOICES:
        raise ValueError(f"final_checkpoint: expected one of {CHOICES}, got {params['final_checkpoint']!r}")
    if params["load_weights"] not in LOAD_WEIGHTS:
        raise ValueError(f"load_weights: expected one of {LOAD_WEIGHTS}, got {params['load_weights']!r}")
    world = params["nnodes"] * params["nproc_per_node"]
    if params["global_batch_size"] % world:
        raise ValueError(f"global_batch_size: {params['global_batch_size']} is not divisible by "
                         f"nnodes*nproc_per_node = {world}")

    params["run_prefix"] = launch.expand_prefix(params["run_prefix"])
    root = runtime.run_root(params["bucket"] or S3Config.from_env().bucket, params["run_prefix"],
                            params["run_id"] or job_id)
    # the store first: the checkpoint and the tasks may live there
    runtime.check_store(root)

    checkpoint, how = resolve_checkpoint(params["checkpoint"])
    try:
        pretrained = read_pretrained(checkpoint, params["load_weights"], load_state=False)
    except (ValueError, FileNotFoundError) as error:
        raise ValueError(f"checkpoint: {error}") from None
    arch = pretrained.arch or {}
    shape = ", ".join(f"{k} {arch[k]}" for k in ("hidden_size", "L_layers", "H_cycles", "L_cycles",
                                                  "puzzle_emb_len") if k in arch)
    kind = "a step-N checkpoint" if pretrained.kind == "step" else "a reference checkpoint file"
    log(f"pretrained checkpoint {checkpoint} ({how}): {kind}, step {pretrained.step}, {pretrained.weights} weights, "
        f"{len(pretrained.identifiers or [])} identifiers; {shape or 'no config beside it'}")

    tasks = read_tasks(params["input_prefix"], list(params["subsets"]), params["solutions"])
    plan = split(list(tasks), params["chunk_size"])

    extra = chunk_words(checkpoint, params["load_weights"], params["max_augmentations"],
                        list(params["train_overrides"]))
    first = chunk_root(root, 0)
    words = make_words(params["preset"], f"{first}/dataset", first, 0, 0, 0, 0, 0, 0, params["global_batch_size"],
                       params["epochs"], params["eval_interval"], params["lr"], params["puzzle_emb_lr"],
                       params["ema"], extra)
    try:
        cfg = load_config(words)
    except ValueError as error:
        raise ValueError(f"training parameters: {error}") from None
    if cfg.freeze_weights and (cfg.freeze_weights_epochs is None or cfg.freeze_weights_epochs >= cfg.epochs):
        log(f"note: freeze_weights with freeze_weights_epochs {cfg.freeze_weights_epochs} >= epochs {cfg.epochs}: "
            "only the puzzle embeddings train, the whole run (train_overrides=[freeze_weights_epochs=N] to change)")
    small = too_small(tasks, plan, cfg.global_batch_size, cfg.epochs_per_iter, cfg.max_examples_per_puzzle)
    if small:
        raise ValueError(small)
    if params["final_checkpoint"] == "best" and not cfg.evaluators:
        raise ValueError("final_checkpoint=best needs the trainer's evaluations, but train_overrides turn them off "
                         "(evaluators=[])")

    # the same run id again resumes: its chunks must be the same
    record = {"checkpoint": checkpoint, "chunks": plan}
    plan_uri = runtime.join(root, "tasks", "plan.json")
    if runtime.exists(plan_uri):
        before = runtime.read_json(plan_uri)
        if before != record:
            raise ValueError(f"run_id: {root} already holds a post-training run with another checkpoint or other "
                             f"chunks ({plan_uri}); use a new run_id (or the same checkpoint, tasks and chunk_size "
                             "to resume it)")
    backend = launch.check_cluster({**params, "kfp_run_id": job_id}, first, words)
    # nothing is written before every check has passed
    chunks, challenges, solutions = write_sources(root, tasks, plan)
    runtime.write_json(plan_uri, record)
    runtime.write_json(runtime.join(root, "params.json"), {**params, "run_root": root,
                                                           "resolved_checkpoint": checkpoint})
    known = sum(known_outputs(t) for t in tasks.values())
    log(f"run root {root}: {len(tasks)} tasks ({known} with known test outputs) in {len(chunks)} chunk(s) of "
        f"{params['chunk_size'] or len(tasks)}; trainer {backend}")
    return {"run_root": root, "backend": backend, "chunks": chunks, "train_overrides": extra,
            "challenges": challenges, "solutions": solutions, "checkpoint": checkpoint, "how": how,
            "pretrained": pretrained}


# -- merge and score -------------------------------------------------------------------------------------------------
def merge(parts: list, run_root: str, challenges_uri: str, pretrained: str) -> dict:
    """Merge the chunks' submissions (pointer artifacts of their export steps), validate the union against every
    task, write `<run_root>/submission.json` and `<run_root>/run.json`; returns the run summary."""
    from components import runtime
    from trm.evaluation import submission as subm

    uris = sorted(runtime.pointer_uri(part) for part in parts)
    if not uris:
        raise ValueError("merge: no chunk submission to merge")
    merged = subm.merge([runtime.read_json(uri) for uri in uris], uris)
    challenges = runtime.read_json(challenges_uri)
    subm.check(merged, challenges)  # SubmissionError (a ValueError) listing every problem by task and index
    target = subm.write(subm.ordered(merged, challenges), runtime.join(run_root, "submission.json"))
    chunks = []
    for uri in uris:
        folder = uri.rsplit("/", 1)[0] if runtime.is_s3(uri) else str(Path(uri).parent)
        summary_uri = runtime.join(folder, "run.json")
        summary = runtime.read_json(summary_uri) if runtime.exists(summary_uri) else {}
        chunks.append({"run_root": folder, "submission": uri, "tasks": summary.get("tasks"),
                       "checkpoint": summary.get("checkpoint"), "step": summary.get("step"),
                       "final_checkpoint": summary.get("final_checkpoint"), "metrics": summary.get("metrics", {})})
    summary = {"run_root": run_root, "pretrained": pretrained, "submission": target, "tasks": len(merged),
               "test_inputs": sum(len(v) for v in merged.values()), "challenges": challenges_uri, "chunks": chunks}
    runtime.write_json(runtime.join(run_root, "run.json"), summary)
    log(f"merged {len(uris)} chunk submission(s): {len(merged)} tasks -> {target}")
    return summary


def score(submission_uri: str, solutions_uri: str, run_root: str) -> dict:
    """`trm score --submission S --solutions F --output <run_root>/score.json`; adds the overall numbers to
    `<run_root>/run.json`; returns the result."""
    from components import runtime
    from trm.evaluation import score as scoring

    out = runtime.join(run_root, "score.json")
    argv = ["--submission", submission_uri, "--solutions", solutions_uri, "--output", out]
    log("trm score " + " ".join(argv))
    status = scoring.main(argv)
    if status:
        raise RuntimeError(f"trm score exited with status {status}")
    result = runtime.read_json(out)
    summary_uri = runtime.join(run_root, "run.json")
    summary = runtime.read_json(summary_uri) if runtime.exists(summary_uri) else {"run_root": run_root}
    summary["score"] = {"uri": out, "solutions": solutions_uri,
                        **{k: result[k] for k in ("pass@1", "pass@2", "tasks_total", "tasks_submitted")}}
    runtime.write_json(summary_uri, summary)
    return result
