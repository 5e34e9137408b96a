"""The plain-Python work of the `train` component (`components/train.py`); imported inside the pod.

KFP runs component code with `_KFP_RUNTIME=true`, where `kfp.dsl` has no `component` decorator, so the code a
pod imports lives here, apart from the `@dsl.component` definitions.
"""

from __future__ import annotations

import sys


def final_checkpoint(root: str) -> tuple[str, int]:
    """(URI, step) of the newest complete `step-N/` checkpoint under `<root>/checkpoints`."""
    from trm.checkpoint import Checkpoints

    uri = Checkpoints(f"{root}/checkpoints").latest()
    if not uri:
        raise FileNotFoundError(f"{root}/checkpoints: no complete step-N checkpoint after training")
    step = int(str(uri).rstrip("/").rsplit("step-", 1)[1])
    return str(uri), step


def last_metrics(root: str) -> dict[str, float]:
    """The last value of every numeric key but "time" in `<root>/metrics.jsonl` (empty when the file is absent)."""
    import json

    from components import runtime

    uri = f"{root}/metrics.jsonl"
    if not runtime.exists(uri):
        return {}
    out: dict[str, float] = {}
    for line in runtime.read_bytes(uri).decode().splitlines():
        if not line.strip():
            continue
        for key, value in json.loads(line).items():
            if key != "time" and isinstance(value, (int, float)) and not isinstance(value, bool):
                out[key] = float(value)
    return out


def torchrun_argv(nproc_per_node: int, words: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
            "--nproc-per-node", str(nproc_per_node), "-m", "trm.train", *words]


def write_curves(root: str, curves) -> None:
    """The train step's HTML artifact: SVG plots of losses, accuracies and pass@K from `<root>/metrics.jsonl`."""
    from pathlib import Path

    from components import runtime
    from trm.evaluation.curves import curves_html, read_records

    uri = f"{root}/metrics.jsonl"
    records = read_records(runtime.read_bytes(uri).decode(errors="replace")) if runtime.exists(uri) else []
    path = Path(curves.path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(curves_html(records, title=f"Training curves: {root}"))
    curves.metadata.update({"metrics_jsonl": uri, "records": len(records)})


def run(backend: str, dataset, run_root: str, preset: str, hidden_size: int, num_heads: int, L_layers: int,
        H_cycles: int, L_cycles: int, halt_max_steps: int, global_batch_size: int, epochs: int, eval_interval: int,
        lr: float, puzzle_emb_lr: float, ema: bool, train_overrides: list, nnodes: int, nproc_per_node: int,
        job: dict, model, metrics, curves=None) -> dict:
    """Train with `backend` ('local', 'trainjob' or 'pytorchjob'); fill the Model, Metrics and curves artifacts."""
    from components import runtime
    from components.impl import launch
    from components.impl.check import train_overrides as make_words

    data_uri = runtime.pointer_uri(dataset)
    words = make_words(preset, data_uri, run_root, hidden_size, num_heads, L_layers, H_cycles, L_cycles,
                       halt_max_steps, global_batch_size, epochs, eval_interval, lr, puzzle_emb_lr, ema,
                       train_overrides)
    if backend == "local":
        runtime.run_command(torchrun_argv(nproc_per_node, words))
    elif backend in ("trainjob", "pytorchjob"):
        launch.run_job(backend, words, {**job, "run_root": run_root, "nnodes": nnodes,
                                        "nproc_per_node": nproc_per_node})
    else:
        raise ValueError(f"trainer backend: expected local, trainjob or pytorchjob (check-params resolves auto), "
                         f"got {backend!r}")

    uri, step = final_checkpoint(run_root)
    numbers = last_metrics(run_root)
    for key, value in sorted(numbers.items()):
        metrics.log_metric(key, value)
    if curves is not None:
        write_curves(run_root, curves)
    record = runtime.write_pointer(model, uri, step=step, dataset=data_uri, backend=backend,
                                   metrics_jsonl=f"{run_root}/metrics.jsonl")
    runtime.log(f"final checkpoint {uri} (step {step})")
    return record
