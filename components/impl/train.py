"""The plain-Python work of the `train` component (`components/train.py`); imported inside the pod.

KFP runs component code with `_KFP_RUNTIME=true`, where `kfp.dsl` has no `component` decorator, so the code a
pod imports lives here, apart from the `@dsl.component` definitions.
"""

from __future__ import annotations

import sys


from components import settings


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


def run(backend: str, dataset, run_root: str, preset: str, hidden_size: int, num_heads: int, L_layers: int,
        H_cycles: int, L_cycles: int, halt_max_steps: int, global_batch_size: int, epochs: int, eval_interval: int,
        lr: float, puzzle_emb_lr: float, ema: bool, train_overrides: list, nnodes: int, nproc_per_node: int,
        job: dict, model, metrics) -> dict:
    """Train with `backend` ('local' or 'pytorchjob'); fill the Model and Metrics artifacts."""
    from components import runtime
    from components.impl.check import train_overrides as make_words

    data_uri = runtime.pointer_uri(dataset)
    words = make_words(preset, data_uri, run_root, hidden_size, num_heads, L_layers, H_cycles, L_cycles,
                       halt_max_steps, global_batch_size, epochs, eval_interval, lr, puzzle_emb_lr, ema,
                       train_overrides)
    if backend == "local":
        runtime.run_command(torchrun_argv(nproc_per_node, words))
    elif backend == "pytorchjob":
        launch_pytorchjob(words, nnodes, nproc_per_node, job)
    else:
        raise ValueError(f"trainer backend: expected one of {settings.TRAINER_BACKENDS}, got {backend!r}")

    uri, step = final_checkpoint(run_root)
    numbers = last_metrics(run_root)
    for key, value in sorted(numbers.items()):
        metrics.log_metric(key, value)
    record = runtime.write_pointer(model, uri, step=step, dataset=data_uri, backend=backend,
                                   metrics_jsonl=f"{run_root}/metrics.jsonl")
    runtime.log(f"final checkpoint {uri} (step {step})")
    return record


def job_name(root: str) -> str:
    """A DNS-1035 PyTorchJob name from the run root's last segment, e.g. `trm-run-2026-01-02`."""
    import re

    tail = re.sub(r"[^a-z0-9-]+", "-", root.rstrip("/").rsplit("/", 1)[-1].lower()).strip("-")
    return ("trm-" + tail)[:63].rstrip("-")


SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def own_namespace(default: str = "kubeflow") -> str:
    """The namespace this pod runs in (a KFP profile namespace in multi-user installs), else `default`."""
    from pathlib import Path

    path = Path(SERVICE_ACCOUNT_NAMESPACE)
    return path.read_text().strip() if path.is_file() else default


def secret_key_for(env_var: str) -> str:
    """The key of the S3 secret that holds `env_var` (settings.S3_SECRET_KEYS)."""
    return next(key for key, var in settings.S3_SECRET_KEYS.items() if var == env_var)


def launch_config(words: list[str], nnodes: int, nproc_per_node: int, job: dict):
    """The `trm.launch` LaunchConfig of the training PyTorchJob (GPUs per pod = nproc_per_node)."""
    import os

    from trm.launch.pytorchjob import LaunchConfig
    from trm.storage.config import S3Config

    root = job["run_root"]
    name = job["name"] or job_name(root)
    return LaunchConfig(
        name=name, image=job["image"], namespace=job.get("namespace") or own_namespace(), nnodes=nnodes,
        nproc_per_node=nproc_per_node, gpus_per_node=nproc_per_node if job["gpu_type"] else 0,
        gpu_resource=job["gpu_type"] or "nvidia.com/gpu", node_selector=dict(job.get("node_selector") or {}),
        tolerations=list(job.get("tolerations") or []),
        s3_endpoint=job.get("s3_endpoint") or os.environ.get("TRM_S3_ENDPOINT") or None,
        s3_bucket=root[len("s3://"):].split("/", 1)[0] if root.startswith("s3://") else S3Config.from_env().bucket,
        s3_secret=settings.S3_SECRET, s3_access_key_key=secret_key_for("AWS_ACCESS_KEY_ID"),
        s3_secret_key_key=secret_key_for("AWS_SECRET_ACCESS_KEY"),
        # the W&B secret is optional for this step; pass it on only when it was there (else pods would not start)
        wandb_secret=settings.WANDB_SECRET if os.environ.get("WANDB_API_KEY") else None,
        wandb_key_key=next(iter(settings.WANDB_SECRET_KEYS)),
        run_dir=root, checkpoint_path=f"{root}/checkpoints",
        train_args=[w for w in words if not w.startswith(("run_dir=", "checkpoint_path="))],
    )


def launch_pytorchjob(words: list[str], nnodes: int, nproc_per_node: int, job: dict) -> None:
    """Submit the PyTorchJob with `trm.launch`, follow it (master log in this step's log), delete it at the end;
    RuntimeError unless it Succeeded. The kubernetes client uses the pod's service account."""
    from components import runtime
    from trm.launch.client import run_pytorchjob

    cfg = launch_config(words, nnodes, nproc_per_node, job)
    runtime.log(f"PyTorchJob {cfg.namespace}/{cfg.name}: {nnodes} node(s) x {nproc_per_node} process(es)")
    run_pytorchjob(cfg).raise_for_state()
