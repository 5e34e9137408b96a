"""The PyTorchJob of a training run (Training Operator 1.9, `kubeflow.org/v1`), built from a `LaunchConfig`.

    from trm.launch.pytorchjob import LaunchConfig, build_pytorchjob, render
    cfg = LaunchConfig(name="trm-try1", image="ghcr.io/trm-pipeline/trm-trainer:abc123", nnodes=2,
                       gpus_per_node=4, s3_endpoint="http://seaweedfs.kubeflow:9000",
                       train_args=["preset=arc2-seed", "data_paths=[s3://trm/runs/try1/dataset]"])
    print(render(cfg))                     # YAML for `kubectl apply -f -`
    job = build_pytorchjob(cfg)            # the same object as a dict

One `Master` replica plus `nnodes - 1` `Worker` replicas, each a pod with one container named `pytorch` that runs
`torchrun -m trm.train <key=value ...>`. torchrun takes its rendezvous from the variables the operator puts into
every container (`PET_NNODES`, `PET_NODE_RANK`, `PET_NPROC_PER_NODE` from `spec.nprocPerNode`,
`PET_MASTER_ADDR`/`PET_MASTER_PORT` naming the master's service), so the command carries no rank or address.

Retries: `backoff_limit` 0 (the default) makes the first pod failure fail the job (`restartPolicy: Never`); the KFP
step that launched it is the one retry layer and resubmits, and the trainer resumes from `checkpoint_path`. A
positive `backoff_limit` (for `trm launch submit` without KFP) restarts pods in place (`OnFailure`) instead.
"""

from __future__ import annotations

from typing import Any, Mapping

from trm.launch.config import (CLEAN_POD_POLICIES, MANAGED_TRAIN_KEYS, LaunchConfig, container_env,  # noqa: F401
                               container_security, pod_security, render_yaml, volume_mounts, volumes)
from trm.launch.config import _DNS1035

GROUP = "kubeflow.org"
VERSION = "v1"
PLURAL = "pytorchjobs"
KIND = "PyTorchJob"
CONTAINER = "pytorch"  # the operator finds the training container and its port by this name
PORT_NAME = "pytorchjob-port"  # ... and the master port by this port name
JOB_NAME_LABEL = "training.kubeflow.org/job-name"
REPLICA_TYPE_LABEL = "training.kubeflow.org/replica-type"


def _pod_template(cfg: LaunchConfig, labels: dict[str, str]) -> dict[str, Any]:
    container = {
        "name": CONTAINER,
        "image": cfg.image,
        "imagePullPolicy": cfg.image_pull_policy,
        "command": cfg.command()[:1],
        "args": cfg.command()[1:],
        "env": container_env(cfg),
        "ports": [{"name": PORT_NAME, "containerPort": cfg.master_port, "protocol": "TCP"}],
        "resources": cfg.resources(),
        "volumeMounts": volume_mounts(),
        "securityContext": container_security(),
    }
    spec: dict[str, Any] = {
        "containers": [container],
        "volumes": volumes(cfg),
        "securityContext": pod_security(),
        "terminationGracePeriodSeconds": cfg.termination_grace_seconds,
    }
    if cfg.node_selector:
        spec["nodeSelector"] = dict(cfg.node_selector)
    if cfg.tolerations:
        spec["tolerations"] = [dict(t) for t in cfg.tolerations]
    if cfg.service_account:
        spec["serviceAccountName"] = cfg.service_account
    if cfg.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": name} for name in cfg.image_pull_secrets]
    # an injected service-mesh sidecar never exits and would keep a finished pod Running
    return {"metadata": {"labels": dict(labels), "annotations": {"sidecar.istio.io/inject": "false"}},
            "spec": spec}


def build_pytorchjob(cfg: LaunchConfig) -> dict[str, Any]:
    """The kubeflow.org/v1 PyTorchJob for `cfg` as a plain dict (JSON-ready)."""
    cfg.validate()
    labels = cfg.job_labels()
    restart = "OnFailure" if cfg.backoff_limit > 0 else "Never"
    replicas = {"Master": {"replicas": 1, "restartPolicy": restart, "template": _pod_template(cfg, labels)}}
    if cfg.nnodes > 1:
        replicas["Worker"] = {"replicas": cfg.nnodes - 1, "restartPolicy": restart,
                              "template": _pod_template(cfg, labels)}
    run_policy: dict[str, Any] = {"cleanPodPolicy": cfg.clean_pod_policy, "backoffLimit": cfg.backoff_limit}
    if cfg.active_deadline_seconds is not None:
        run_policy["activeDeadlineSeconds"] = cfg.active_deadline_seconds
    if cfg.ttl_seconds_after_finished is not None:
        run_policy["ttlSecondsAfterFinished"] = cfg.ttl_seconds_after_finished
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": cfg.name, "namespace": cfg.namespace, "labels": labels},
        "spec": {
            "nprocPerNode": str(cfg.procs_per_node),  # a string in the CRD ("auto" is also allowed there)
            "runPolicy": run_policy,
            "pytorchReplicaSpecs": replicas,
        },
    }


def render(cfg: LaunchConfig) -> str:
    """YAML of the PyTorchJob, for `kubectl apply -f -`."""
    return render_yaml(build_pytorchjob(cfg))


def operator_problems(job: Mapping[str, Any]) -> list[str]:
    """What Training Operator v1.9's admission webhook would reject in a PyTorchJob (empty when none).

    Beyond the CRD schema: the name is a DNS-1035 label, replica types are Master/Worker, exactly one Master,
    Workers >= 1 when present, every container has an image, each replica has a container named `pytorch`;
    and (our rule) `nprocPerNode` is a string of digits.
    """
    problems: list[str] = []
    name = (job.get("metadata") or {}).get("name", "")
    if not _DNS1035.match(name or "") or len(name) > 63:
        problems.append(f"metadata.name: {name!r} is not a DNS-1035 label")
    spec = job.get("spec") or {}
    nproc = spec.get("nprocPerNode")
    if not isinstance(nproc, str) or not nproc.isdigit() or int(nproc) < 1:
        problems.append(f"spec.nprocPerNode: expected a string of digits, got {nproc!r}")
    replicas = spec.get("pytorchReplicaSpecs") or {}
    if "Master" not in replicas:
        problems.append("spec.pytorchReplicaSpecs: no Master replica")
    for rtype, rspec in replicas.items():
        where = f"spec.pytorchReplicaSpecs[{rtype}]"
        if rtype not in ("Master", "Worker"):
            problems.append(f"{where}: replica type must be Master or Worker")
        count = (rspec or {}).get("replicas")
        if rtype == "Master" and count != 1:
            problems.append(f"{where}.replicas: must be 1, got {count!r}")
        if rtype == "Worker" and count is not None and count < 1:
            problems.append(f"{where}.replicas: must be at least 1, got {count!r}")
        containers = (((rspec or {}).get("template") or {}).get("spec") or {}).get("containers") or []
        if not containers:
            problems.append(f"{where}.template.spec.containers: must be specified")
        for i, container in enumerate(containers):
            if not container.get("image"):
                problems.append(f"{where}.template.spec.containers[{i}].image: required")
        if containers and not any(c.get("name") == CONTAINER for c in containers):
            problems.append(f"{where}.template.spec.containers: none is named {CONTAINER!r}")
    return problems
