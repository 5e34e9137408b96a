"""The PyTorchJob builder: CRD schema (unknown fields rejected), operator rules, torchrun under the operator's env.

    .venv/bin/python -m pytest -q tests/test_launch_pytorchjob.py
"""

from __future__ import annotations

import copy

import pytest
import yaml

from trm.launch.pytorchjob import LaunchConfig, build_pytorchjob, operator_problems, render
from trm.launch.schema import CrdValidator, strict_schema

IMAGE = "ghcr.io/trm-pipeline/trm-trainer:0.1.0"

CONFIGS = {
    "cpu-1node": dict(name="trm-cpu", image=IMAGE, train_args=["preset=cpu-tiny", "max_steps=10"]),
    "cpu-3nodes": dict(name="trm-cpu3", image=IMAGE, nnodes=3, nproc_per_node=2, cpu="2", memory="4Gi"),
    "gpu-1node": dict(name="trm-gpu", image=IMAGE, gpus_per_node=8, memory="512Gi", shm_size="64Gi",
                      node_selector={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
                      tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]),
    "gpu-4nodes": dict(name="trm-gpu4", image=IMAGE, namespace="team-a", nnodes=4, gpus_per_node=4,
                       gpu_resource="amd.com/gpu", s3_endpoint="http://minio.trm:9000", s3_secret="trm-s3",
                       wandb_secret="wandb", service_account="trm-runner", image_pull_secrets=["regcred"],
                       env={"NCCL_DEBUG": "WARN"}, labels={"team": "a"}, active_deadline_seconds=172800,
                       ttl_seconds_after_finished=None, clean_pod_policy="All", backoff_limit=10,
                       tolerations=[{"key": "dedicated", "operator": "Equal", "value": "training",
                                     "effect": "NoExecute", "tolerationSeconds": 60}],
                       run_dir="s3://trm/prod/run-7", train_args=["preset=arc2-seed", "+project_name=trm"]),
}


@pytest.fixture(scope="module")
def crd(shared_dir):
    path = shared_dir / "k8s-schemas" / "kubeflow.org_pytorchjobs.yaml"
    if not path.is_file():
        pytest.skip(f"PyTorchJob CRD not found at {path}")
    return CrdValidator.from_file(path)


@pytest.mark.parametrize("case", sorted(CONFIGS))
def test_rendered_jobs_pass_the_crd_schema_and_operator_rules(crd, case):
    job = build_pytorchjob(LaunchConfig(**CONFIGS[case]))
    assert crd.errors(job) == []
    assert operator_problems(job) == []
    # what `trm launch render` prints is the same object
    assert yaml.safe_load(render(LaunchConfig(**CONFIGS[case]))) == job


def test_validator_rejects_unknown_fields_and_wrong_types(crd):
    job = build_pytorchjob(LaunchConfig(**CONFIGS["gpu-4nodes"]))
    bad = copy.deepcopy(job)
    bad["spec"]["runPolicy"]["backofLimit"] = 3  # misspelt
    bad["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["resource"] = {}
    bad["spec"]["nprocPerNode"] = 4  # an int, where the CRD wants a string
    errors = "\n".join(crd.errors(bad))
    assert "backofLimit" in errors and "'resource' was unexpected" in errors
    assert "spec.nprocPerNode" in errors
    with pytest.raises(ValueError, match="fails the CRD schema"):
        crd.check(bad)
    # maps declared with additionalProperties (resources, nodeSelector) stay open
    assert "additionalProperties" in crd.schema["properties"]["spec"]
    assert crd.schema["properties"]["spec"]["additionalProperties"] is False


def test_strict_schema_leaves_preserve_unknown_fields_open():
    schema = strict_schema({"type": "object", "properties": {
        "a": {"type": "object", "properties": {"x": {"type": "string"}}},
        "b": {"type": "object", "x-kubernetes-preserve-unknown-fields": True, "properties": {"y": {}}},
        "c": {"type": "object", "additionalProperties": {"type": "string"}},
    }})
    assert schema["additionalProperties"] is False
    assert schema["properties"]["a"]["additionalProperties"] is False
    assert "additionalProperties" not in schema["properties"]["b"]
    assert schema["properties"]["c"]["additionalProperties"] == {"type": "string"}


def test_operator_rules():
    job = build_pytorchjob(LaunchConfig(**CONFIGS["cpu-3nodes"]))
    assert job["spec"]["nprocPerNode"] == "2"
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert replicas["Master"]["replicas"] == 1 and replicas["Worker"]["replicas"] == 2
    for spec in replicas.values():
        # backoff_limit 0 (the default): a pod failure fails the job; KFP's step retry is the one retry layer
        assert spec["restartPolicy"] == "Never" and job["spec"]["runPolicy"]["backoffLimit"] == 0
        assert [c["name"] for c in spec["template"]["spec"]["containers"]] == ["pytorch"]
    restarting = build_pytorchjob(LaunchConfig(**{**CONFIGS["cpu-3nodes"], "backoff_limit": 2}))
    assert {r["restartPolicy"] for r in restarting["spec"]["pytorchReplicaSpecs"].values()} == {"OnFailure"}
    bad = copy.deepcopy(job)
    bad["spec"]["pytorchReplicaSpecs"]["Master"]["replicas"] = 2
    bad["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["name"] = "main"
    bad["spec"]["nprocPerNode"] = 2
    problems = "\n".join(operator_problems(bad))
    assert "Master].replicas: must be 1" in problems
    assert "none is named 'pytorch'" in problems
    assert "nprocPerNode" in problems
    del bad["spec"]["pytorchReplicaSpecs"]["Master"]
    assert any("no Master" in p for p in operator_problems(bad))
    assert "Worker" not in build_pytorchjob(LaunchConfig(**CONFIGS["cpu-1node"]))["spec"]["pytorchReplicaSpecs"]


def test_pod_spec_resources_shm_secrets_and_scheduling():
    cfg = LaunchConfig(**CONFIGS["gpu-4nodes"])
    job = build_pytorchjob(cfg)
    assert job["metadata"]["namespace"] == "team-a"
    assert job["spec"]["runPolicy"] == {"cleanPodPolicy": "All", "backoffLimit": 10,
                                        "activeDeadlineSeconds": 172800}
    pod = job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["amd.com/gpu"] == "4"
    assert container["resources"]["requests"]["amd.com/gpu"] == "4"
    assert container["ports"] == [{"name": "pytorchjob-port", "containerPort": 23456, "protocol": "TCP"}]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}} in pod["volumes"]
    # data on a scratch volume, never the container's filesystem; time to checkpoint on SIGTERM
    assert {"name": "scratch", "mountPath": "/tmp"} in container["volumeMounts"]
    assert {"name": "scratch", "emptyDir": {"sizeLimit": "64Gi"}} in pod["volumes"]
    assert pod["terminationGracePeriodSeconds"] == 180
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                                            "runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == 1000
    env = {e["name"]: e for e in container["env"]}
    assert env["TRM_S3_ENDPOINT"]["value"] == "http://minio.trm:9000" and env["TRM_HOME"]["value"] == "/tmp/trm"
    # torchrun waits for its workers' SIGTERM checkpoint for most of the grace period, not its default 30 s
    assert env["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"]["value"] == "170"
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {"name": "trm-s3", "key": "accesskey"}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "trm-s3", "key": "secretkey"}
    assert env["WANDB_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "wandb"
    assert env["NCCL_DEBUG"]["value"] == "WARN"
    assert pod["tolerations"][0]["effect"] == "NoExecute"
    assert pod["serviceAccountName"] == "trm-runner"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    cpu = build_pytorchjob(LaunchConfig(**CONFIGS["cpu-1node"]))["spec"]["pytorchReplicaSpecs"]["Master"]
    limits = cpu["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert not any("gpu" in k for k in limits)
    assert "nodeSelector" not in cpu["template"]["spec"]


def _operator_env(job: dict, rtype: str, index: int) -> dict[str, str]:
    """The variables Training Operator v1.9 adds to each container of a non-elastic PyTorchJob with a Master:
    the master's service address and port (plain and PET_), WORLD_SIZE = replicas * nprocPerNode, RANK and
    PET_NODE_RANK = replica index (+1 for Workers), PET_NPROC_PER_NODE = nprocPerNode, PET_NNODES = replicas."""
    spec = job["spec"]
    replicas = sum(r["replicas"] for r in spec["pytorchReplicaSpecs"].values())
    master = spec["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    port = next(p["containerPort"] for p in master["ports"] if p["name"] == "pytorchjob-port")
    rank = index + (1 if rtype == "Worker" else 0)
    addr = f"{job['metadata']['name']}-master-0"
    return {"PYTHONUNBUFFERED": "1", "MASTER_PORT": str(port), "PET_MASTER_PORT": str(port),
            "MASTER_ADDR": addr, "PET_MASTER_ADDR": addr, "WORLD_SIZE": str(replicas * int(spec["nprocPerNode"])),
            "RANK": str(rank), "PET_NODE_RANK": str(rank), "PET_NPROC_PER_NODE": spec["nprocPerNode"],
            "PET_NNODES": str(replicas)}


@pytest.mark.parametrize("case", ["cpu-1node", "gpu-4nodes"])
def test_torchrun_reads_the_rendezvous_from_the_operator_env(monkeypatch, case):
    """Parse each pod's command with torchrun's own parser under that pod's operator env."""
    from torch.distributed.run import get_args_parser

    cfg = LaunchConfig(**CONFIGS[case])
    job = build_pytorchjob(cfg)
    ranks = []
    for rtype, rspec in job["spec"]["pytorchReplicaSpecs"].items():
        for index in range(rspec["replicas"]):
            container = rspec["template"]["spec"]["containers"][0]
            assert container["command"] == ["torchrun"]
            for key, value in _operator_env(job, rtype, index).items():
                monkeypatch.setenv(key, value)
            args = get_args_parser().parse_args(container["args"])
            assert args.module and args.training_script == "trm.train"
            assert args.nnodes == str(cfg.nnodes)
            assert str(args.nproc_per_node) == str(cfg.procs_per_node)
            assert args.master_addr == f"{cfg.name}-master-0" and int(args.master_port) == 23456
            assert args.rdzv_backend == "static" and not args.standalone
            ranks.append(int(args.node_rank))
            assert args.training_script_args == cfg.trainer_words()
    assert sorted(ranks) == list(range(cfg.nnodes))


def test_restarts_resume_from_a_stable_s3_checkpoint_path():
    from trm.config import load_config

    cfg = LaunchConfig(**CONFIGS["cpu-1node"])
    words = cfg.trainer_words()
    train = load_config(words)  # the trainer accepts every word the pods pass
    assert train.checkpoint_path == "s3://trm/runs/trm-cpu/checkpoints" and train.resume
    assert train.run_dir == "s3://trm/runs/trm-cpu" and train.run_name == "trm-cpu"
    assert LaunchConfig(**CONFIGS["gpu-4nodes"]).resolved_checkpoint_path == "s3://trm/prod/run-7/checkpoints"
    # every replica passes the same words, so any restarted pod finds the same checkpoints
    job = build_pytorchjob(LaunchConfig(**CONFIGS["cpu-3nodes"]))
    args = {tuple(r["template"]["spec"]["containers"][0]["args"]) for r in job["spec"]["pytorchReplicaSpecs"].values()}
    assert len(args) == 1
    with pytest.raises(ValueError, match="checkpoint_path.*set by the launcher"):
        LaunchConfig(name="a", image=IMAGE, train_args=["checkpoint_path=/tmp/x"])
    with pytest.raises(ValueError, match="must be an s3://"):
        LaunchConfig(name="a", image=IMAGE, checkpoint_path="/data/ckpt")


@pytest.mark.parametrize("change, field", [
    ({"name": "Trm_1"}, "name"), ({"name": "1trm"}, "name"), ({"name": "a" * 60, "nnodes": 2}, "name"),
    ({"namespace": "Bad NS"}, "namespace"), ({"nnodes": 0}, "nnodes"), ({"nnodes": "2"}, "nnodes"),
    ({"gpus_per_node": -1}, "gpus_per_node"), ({"gpus_per_node": 4, "nproc_per_node": 2}, "nproc_per_node"),
    ({"nproc_per_node": 0}, "nproc_per_node"), ({"image": ""}, "image"), ({"gpu_resource": "gpu"}, "gpu_resource"),
    ({"memory": "16 GB"}, "memory"), ({"shm_size": "-1Gi"}, "shm_size"), ({"node_selector": {"a": 1}}, "node_selector"),
    ({"tolerations": [{"key": "k", "operator": "Maybe"}]}, "tolerations"),
    ({"tolerations": [{"key": "k", "effect": "NoSchedule", "extra": 1}]}, "tolerations"),
    ({"s3_endpoint": "minio:9000"}, "s3_endpoint"), ({"backoff_limit": -1}, "backoff_limit"),
    ({"active_deadline_seconds": 0}, "active_deadline_seconds"), ({"clean_pod_policy": "Always"}, "clean_pod_policy"),
    ({"train_args": ["max_steps"]}, "train_args"), ({"train_args": ["no_such_key=1"]}, "train_args"),
    ({"env": {"1BAD": "x"}}, "env"), ({"env": {"AWS_ACCESS_KEY_ID": "plain"}}, "env"),
    ({"env": {"PET_NNODES": "2"}}, "env"), ({"image_pull_policy": "Sometimes"}, "image_pull_policy"),
    ({"run_id": "has space"}, "run_id"), ({"queue_name": "Bad_Queue"}, "queue_name"),
    ({"termination_grace_seconds": -1}, "termination_grace_seconds"), ({"pending_timeout": -5}, "pending_timeout"),
    ({"scratch_size": "lots"}, "scratch_size"), ({"runtime_kind": "Runtime"}, "runtime_kind"),
    ({"name": "a" * 56, "nnodes": 2}, "name"),
    ({"s3_endpoint": "http://KEY:SECRET@minio:9000"}, "s3_endpoint: 'http://\\*\\*\\*@minio:9000' carries credentials"),
])
def test_bad_values_raise_naming_the_field(change, field):
    values = {"name": "trm-a", "image": IMAGE, **change}
    with pytest.raises(ValueError, match=field):
        LaunchConfig(**values)


def test_from_mapping_reads_configmap_strings():
    cfg = LaunchConfig.from_mapping({
        "image": IMAGE, "gpus_per_node": "4", "node_selector": '{"nvidia.com/gpu.present": "true"}',
        "tolerations": '[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]',
        "active_deadline_seconds": "", "wandb_secret": "null", "train_args": "[preset=cpu-tiny]",
    }, name="trm-x", nnodes=2)
    assert cfg.gpus_per_node == 4 and cfg.nnodes == 2 and cfg.procs_per_node == 4
    assert cfg.node_selector == {"nvidia.com/gpu.present": "true"}
    assert cfg.tolerations[0]["operator"] == "Exists"
    assert cfg.active_deadline_seconds is None and cfg.wandb_secret is None
    assert cfg.train_args == ["preset=cpu-tiny"]
    with pytest.raises(ValueError, match="unknown launch setting 'gpus'"):
        LaunchConfig.from_mapping({"gpus": "4", "image": IMAGE, "name": "a"})
    with pytest.raises(ValueError, match="gpus_per_node: expected an integer"):
        LaunchConfig.from_mapping({"gpus_per_node": "four", "image": IMAGE, "name": "a"})
    with pytest.raises(ValueError, match="lack image"):
        LaunchConfig.from_mapping({"name": "a"})
