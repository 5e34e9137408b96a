"""Multi-node training on CPU, started the way the Trainer starts a TrainJob's pods: two local "nodes" of 2 gloo
processes each run the rendered job's command with its env and the `PET_*` rendezvous variables, and train
cpu-tiny to the same losses as one process.

    .venv/bin/python -m pytest -q tests/test_launch_multinode.py

Each node gets the job's container env as rendered (S3 endpoint and bucket, the S3 keys resolved from the
"secret", TRM_HOME on its own scratch folder: nodes share nothing but S3), plus what the torch plugin adds:
PET_NNODES=2, PET_NPROC_PER_NODE=2, PET_NODE_RANK=0|1, PET_MASTER_ADDR (127.0.0.1 here, the master pod's DNS
name on a cluster) and PET_MASTER_PORT (a free port here). The command is the job's own
`torchrun -m trm.train <words>` (the venv's torchrun). Checkpoints and metrics.jsonl land in S3 under each job's
run_dir; the one-process reference is the same job rendered with nnodes=1, nproc_per_node=1.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trm.launch.config import LaunchConfig
from trm.launch.trainjob import build_trainjob

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.s3
WORDS = ["preset=cpu-tiny", "global_batch_size=8", "micro_batch_size=null", "num_threads=1", "progress=False",
         "wandb=off", "epochs=1000", "eval_interval=1000", "max_steps=4", "arch.halt_exploration_prob=0.0",
         "evaluators=[]", "checkpoint_every_n_steps=4"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_env(job: dict, rank: int, port: int, secrets: dict[str, str], scratch: Path) -> dict[str, str]:
    """The container env of one node: the job's variables (secret references resolved), then the torch plugin's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "TRM_", "PET_"))}
    for item in job["spec"]["trainer"]["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = secrets[f"{ref['name']}/{ref['key']}"]
    env["TRM_HOME"] = str(scratch / f"node-{rank}" / "trm")  # each pod has its own /tmp volume
    trainer = job["spec"]["trainer"]
    env.update(PET_NNODES=str(trainer["numNodes"]), PET_NPROC_PER_NODE=str(trainer["numProcPerNode"]),
               PET_NODE_RANK=str(rank), PET_MASTER_ADDR="127.0.0.1", PET_MASTER_PORT=str(port),
               OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), WANDB_MODE="disabled")
    return env


def _launch(job: dict, secrets: dict[str, str], scratch: Path, timeout: float = 600) -> None:
    trainer = job["spec"]["trainer"]
    assert trainer["command"] == ["torchrun"]
    argv = [sys.executable, "-m", "torch.distributed.run", *trainer["args"]]  # the venv's torchrun
    port = _free_port()
    procs = [subprocess.Popen(argv, cwd=ROOT, env=_node_env(job, rank, port, secrets, scratch),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in range(trainer["numNodes"])]
    deadline = time.monotonic() + timeout
    outputs = []
    try:
        for proc in procs:
            out, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            outputs.append(out)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for rank, (proc, out) in enumerate(zip(procs, outputs)):
        assert proc.returncode == 0, f"node {rank} exited {proc.returncode}:\n{out[-4000:]}"


def _metrics(uri: str) -> dict[int, dict[str, float]]:
    from components.runtime import read_bytes

    out: dict[int, dict[str, float]] = {}
    for line in read_bytes(uri).decode().splitlines():
        record = json.loads(line)
        out.setdefault(record["step"], {}).update(record)
    return out


@pytest.mark.slow
def test_two_nodes_of_two_gloo_processes_train_like_one_process(tiny, s3_env, tmp_path):
    from components.runtime import exists

    secrets = {"mlpipeline-minio-artifact/accesskey": s3_env["AWS_ACCESS_KEY_ID"],
               "mlpipeline-minio-artifact/secretkey": s3_env["AWS_SECRET_ACCESS_KEY"]}
    common = dict(image="trm-trainer:test", namespace="trm", s3_endpoint=s3_env["TRM_S3_ENDPOINT"],
                  train_args=[*WORDS, f"data_paths=[{tiny}]"])
    stamp = str(int(time.time() * 1000))
    one = build_trainjob(LaunchConfig(name="trm-one", nnodes=1, nproc_per_node=1,
                                      run_dir=f"s3://trm/tests/multinode/{stamp}/one", **common))
    four = build_trainjob(LaunchConfig(name="trm-four", nnodes=2, nproc_per_node=2,
                                       run_dir=f"s3://trm/tests/multinode/{stamp}/four", **common))
    _launch(one, secrets, tmp_path / "one")
    _launch(four, secrets, tmp_path / "four")
    a = _metrics(f"s3://trm/tests/multinode/{stamp}/one/metrics.jsonl")
    b = _metrics(f"s3://trm/tests/multinode/{stamp}/four/metrics.jsonl")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    for step in a:
        for key in ("train/lm_loss", "train/q_halt_loss", "train/accuracy", "train/count"):
            assert b[step][key] == pytest.approx(a[step][key], abs=1e-5), (step, key)
    assert exists(f"s3://trm/tests/multinode/{stamp}/four/checkpoints/step-4/meta.json")
    # one world of 4 ranks (not two worlds of 2 writing to one folder): the saved training state says so
    import io

    import torch

    from components.runtime import read_bytes

    for run, world in (("one", 1), ("four", 4)):
        state = torch.load(io.BytesIO(read_bytes(f"s3://trm/tests/multinode/{stamp}/{run}/checkpoints/step-4/"
                                                 "train_state.pt")), weights_only=False)
        assert state["world_size"] == world, run
