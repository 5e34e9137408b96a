"""The TrainJob builder and the project's TrainingRuntime: Kubeflow Trainer v2.3 CRDs (unknown fields rejected), the
webhook's rules, torchrun under the env the Trainer's torch plugin sets, per-run settings through runtimePatches.

    .venv/bin/python -m pytest -q tests/test_launch_trainjob.py
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from trm.launch.config import QUEUE_LABEL, RUN_ID_LABEL, LaunchConfig
from trm.launch.schema import CrdValidator
from trm.launch.trainjob import (MASTER_PORT, PATCH_MANAGER, build_trainjob, render, runtime_problems,
                                 trainjob_problems)

ROOT = Path(__file__).resolve().parents[1]
IMAGE = "ghcr.io/trm-pipeline/trm-trainer:0.1.0"
RUNTIME = next(d for d in yaml.safe_load_all((ROOT / "manifests" / "base" / "trainingruntime.yaml").read_text()) if d)

CONFIGS = {
    "cpu-1node": dict(name="trm-cpu", image=IMAGE, train_args=["preset=cpu-tiny", "max_steps=10"]),
    "cpu-3nodes": dict(name="trm-cpu3", image=IMAGE, nnodes=3, nproc_per_node=2, cpu="2", memory="4Gi"),
    "gpu-4nodes": dict(name="trm-gpu4", image=IMAGE, namespace="team-a", nnodes=4, gpus_per_node=4,
                       gpu_resource="amd.com/gpu", s3_endpoint="http://seaweedfs.kubeflow:9000", s3_secret="trm-s3",
                       wandb_secret="wandb", service_account="trm-runner", image_pull_secrets=["regcred"],
                       env={"NCCL_DEBUG": "WARN"}, labels={"team": "a"}, active_deadline_seconds=172800,
                       run_id="0f1e2d3c-aaaa-bbbb-cccc-123456789abc", queue_name="gpu-queue",
                       termination_grace_seconds=600, scratch_claim="trm-scratch", shm_size="64Gi",
                       node_selector={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
                       tolerations=[{"key": "dedicated", "operator": "Equal", "value": "training",
                                     "effect": "NoExecute", "tolerationSeconds": 60}],
                       run_dir="s3://trm/prod/run-7", train_args=["preset=arc2-seed", "+project_name=trm"]),
    "cluster-runtime": dict(name="trm-ctr", image=IMAGE, runtime="torch-distributed",
                            runtime_kind="ClusterTrainingRuntime"),
}


def _crd(shared_dir, name: str) -> CrdValidator:
    path = shared_dir / "k8s-schemas" / "trainer-v2.3.0" / name
    if not path.is_file():
        pytest.skip(f"Trainer v2.3 CRD not found at {path}")
    return CrdValidator.from_file(path, "v1alpha1")


@pytest.fixture(scope="module")
def trainjob_crd(shared_dir):
    return _crd(shared_dir, "trainer.kubeflow.org_trainjobs.yaml")


@pytest.fixture(scope="module")
def example_runtime(shared_dir):
    return yaml.safe_load((shared_dir / "k8s-schemas" / "trainer-v2.3.0" / "example-torch-distributed-runtime.yaml")
                          .read_text())


@pytest.mark.parametrize("case", sorted(CONFIGS))
def test_rendered_trainjobs_pass_the_crd_and_the_webhook_rules(trainjob_crd, example_runtime, case):
    cfg = LaunchConfig(**CONFIGS[case])
    job = build_trainjob(cfg)
    assert trainjob_crd.errors(job) == []
    runtime = example_runtime if cfg.runtime_kind == "ClusterTrainingRuntime" else RUNTIME
    assert trainjob_problems(job, runtime) == []
    assert yaml.safe_load(render(cfg)) == job  # `trm launch render --kind trainjob` prints the same object


def test_the_runtime_manifest_passes_its_crd_and_fits_the_jobs(shared_dir, example_runtime):
    assert _crd(shared_dir, "trainer.kubeflow.org_trainingruntimes.yaml").errors(RUNTIME) == []
    assert runtime_problems(RUNTIME) == []
    cluster = _crd(shared_dir, "trainer.kubeflow.org_clustertrainingruntimes.yaml")
    assert cluster.errors(example_runtime) == []  # the validator reads upstream's own runtime
    # upstream's runtime lacks what ours guarantees: no retries of its own, the volumes the jobs resize
    problems = "\n".join(runtime_problems(example_runtime))
    assert "backoffLimit" in problems and "restartPolicy" in problems and "'scratch'" in problems
    pod = RUNTIME["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["seccompProfile"]["type"] == \
        "RuntimeDefault"
    container = pod["containers"][0]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert ":" not in container["image"], "the base names the image; overlays pin the tag"
    env = {e["name"]: e for e in container["env"]}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "mlpipeline-minio-artifact"
    assert env["TRM_S3_ENDPOINT"]["value"] == "http://seaweedfs.kubeflow:9000"


def test_validator_rejects_unknown_fields_and_wrong_types(trainjob_crd):
    job = build_trainjob(LaunchConfig(**CONFIGS["gpu-4nodes"]))
    bad = copy.deepcopy(job)
    bad["spec"]["podSpecOverrides"] = [{"targetJobs": [{"name": "node"}]}]  # an earlier API (KFP's docstring)
    bad["spec"]["trainer"]["numProcPerNode"] = "4"  # a string, where v2.3 wants an integer
    bad["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]["template"][
        "spec"]["template"]["spec"]["containers"][0]["resources"] = {}  # a patch may not set resources
    errors = "\n".join(trainjob_crd.errors(bad))
    assert "podSpecOverrides" in errors and "spec.trainer.numProcPerNode" in errors and "'resources'" in errors


def test_webhook_rules():
    job = build_trainjob(LaunchConfig(**CONFIGS["cpu-3nodes"]))
    bad = copy.deepcopy(job)
    bad["metadata"]["name"] = "Trm_1"
    bad["spec"]["trainer"]["env"].append({"name": "PET_NNODES", "value": "8"})
    patch = bad["spec"]["runtimePatches"][0]
    patch["manager"] = "launcher"
    pod = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    pod["containers"][0]["env"] = [{"name": "X", "value": "1"}]
    pod["containers"].append({"name": "sidecar"})
    patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"].append({"name": "launcher"})
    problems = "\n".join(trainjob_problems(bad, RUNTIME))
    for needle in ("metadata.name", "reserved envs ['PET_NNODES']", "manager", "envs for the node container",
                   "container 'sidecar' does not exist", "replicated job 'launcher' does not exist"):
        assert needle in problems, needle


def test_per_run_settings_reach_the_pods():
    cfg = LaunchConfig(**CONFIGS["gpu-4nodes"])
    job = build_trainjob(cfg)
    spec = job["spec"]
    assert spec["runtimeRef"] == {"apiGroup": "trainer.kubeflow.org", "kind": "TrainingRuntime", "name": "trm-torch"}
    assert spec["activeDeadlineSeconds"] == 172800
    trainer = spec["trainer"]
    assert (trainer["image"], trainer["numNodes"], trainer["numProcPerNode"]) == (IMAGE, 4, 4)
    assert trainer["resourcesPerNode"] == {"requests": {"cpu": "4", "memory": "16Gi", "amd.com/gpu": "4"},
                                           "limits": {"memory": "16Gi", "amd.com/gpu": "4"}}
    env = {e["name"]: e for e in trainer["env"]}
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {"name": "trm-s3", "key": "accesskey"}
    assert env["WANDB_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "wandb"
    assert env["NCCL_DEBUG"]["value"] == "WARN" and env["TRM_HOME"]["value"] == "/tmp/trm"
    (patch,) = spec["runtimePatches"]
    assert patch["manager"] == PATCH_MANAGER
    template = patch["trainingRuntimeSpec"]["template"]
    (rjob,) = template["spec"]["replicatedJobs"]
    pod_template = rjob["template"]["spec"]["template"]
    pod = pod_template["spec"]
    assert pod["nodeSelector"] == cfg.node_selector and pod["tolerations"] == cfg.tolerations
    assert pod["serviceAccountName"] == "trm-runner" and pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["terminationGracePeriodSeconds"] == 600
    assert {"name": "scratch", "persistentVolumeClaim": {"claimName": "trm-scratch"}} in pod["volumes"]
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "64Gi"}} in pod["volumes"]
    assert pod["containers"] == [{"name": "node", "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"},
                                                                   {"name": "scratch", "mountPath": "/tmp"}],
                                  "securityContext": {"allowPrivilegeEscalation": False,
                                                      "capabilities": {"drop": ["ALL"]}, "runAsNonRoot": True,
                                                      "seccompProfile": {"type": "RuntimeDefault"}}}]
    # the KFP run id and the Kueue queue: on the TrainJob (Kueue reads it there), the JobSet and every pod
    for labels in (job["metadata"]["labels"], template["metadata"]["labels"], pod_template["metadata"]["labels"]):
        assert labels[RUN_ID_LABEL] == cfg.run_id and labels[QUEUE_LABEL] == "gpu-queue" and labels["team"] == "a"
    assert pod_template["metadata"]["annotations"] == {"sidecar.istio.io/inject": "false"}
    assert "activeDeadlineSeconds" not in build_trainjob(LaunchConfig(**CONFIGS["cpu-1node"]))["spec"]


def _trainer_env(job: dict, node_rank: int) -> dict[str, str]:
    """What Kubeflow Trainer v2.3's torch plugin puts into the `node` container (pkg/runtime/framework/plugins/
    torch): PET_NNODES = numNodes, PET_NPROC_PER_NODE = numProcPerNode, PET_NODE_RANK = the pod's completion index,
    PET_MASTER_ADDR = <name>-node-0-0.<name>, PET_MASTER_PORT = 29500."""
    trainer, name = job["spec"]["trainer"], job["metadata"]["name"]
    return {"PET_NNODES": str(trainer["numNodes"]), "PET_NPROC_PER_NODE": str(trainer["numProcPerNode"]),
            "PET_NODE_RANK": str(node_rank), "PET_MASTER_ADDR": f"{name}-node-0-0.{name}",
            "PET_MASTER_PORT": str(MASTER_PORT)}


@pytest.mark.parametrize("case", ["cpu-1node", "cpu-3nodes", "gpu-4nodes"])
def test_torchrun_reads_the_rendezvous_from_the_trainers_env(monkeypatch, case):
    """Parse the job's command with torchrun's own parser under the env of each node."""
    from torch.distributed.run import get_args_parser

    cfg = LaunchConfig(**CONFIGS[case])
    job = build_trainjob(cfg)
    trainer = job["spec"]["trainer"]
    assert trainer["command"] == ["torchrun"]
    ranks = []
    for rank in range(trainer["numNodes"]):
        for key, value in _trainer_env(job, rank).items():
            monkeypatch.setenv(key, value)
        args = get_args_parser().parse_args(trainer["args"])
        assert args.module and args.training_script == "trm.train"
        assert args.nnodes == str(cfg.nnodes) and str(args.nproc_per_node) == str(cfg.procs_per_node)
        assert args.master_addr == f"{cfg.name}-node-0-0.{cfg.name}" and int(args.master_port) == MASTER_PORT
        assert args.rdzv_backend == "static" and not args.standalone  # one world across the nodes
        assert args.training_script_args == cfg.trainer_words()
        ranks.append(int(args.node_rank))
    assert ranks == list(range(cfg.nnodes))
