"""The TrainJob of a training run (Kubeflow Trainer v2.3, `trainer.kubeflow.org/v1alpha1`), built from a `LaunchConfig`.

    from trm.launch.trainjob import build_trainjob, render, trainjob_problems
    job = build_trainjob(LaunchConfig(name="trm-try1", image="<registry>/trm-trainer:<tag>", nnodes=2,
                                      gpus_per_node=4, train_args=["preset=arc2-seed", ...]))
    trainjob_problems(job, runtime)        # what Trainer v2.3's webhook would refuse ([] when fine)

The job refers to a runtime (`runtimeRef`: by default the namespaced TrainingRuntime `trm-torch` that
`manifests/base/trainingruntime.yaml` installs: torch policy, one replicated job `node` whose container `node`
runs the trainer image, `restartPolicy: Never`, a memory-backed /dev/shm and a scratch volume). The job itself
sets what varies per run:

- `trainer`: `image`, `command`/`args` (`torchrun -m trm.train <words>`), `numNodes`, `numProcPerNode`,
  `resourcesPerNode` (CPU, memory, GPUs) and `env` (S3 endpoint and bucket, the S3 keys and the W&B key from
  secrets, TRM_HOME, the user's). The Trainer's torch plugin adds `PET_NNODES`, `PET_NPROC_PER_NODE`,
  `PET_NODE_RANK` (the pod's completion index), `PET_MASTER_ADDR` (`<name>-node-0-0.<name>`) and
  `PET_MASTER_PORT` (29500), which torchrun reads as its rendezvous.
- one `runtimePatches` entry (manager `trm-pipeline.org/launcher`) with the per-run pod settings that v2.3
  lets a patch set: labels, node selector, tolerations, service account, image pull secrets,
  `terminationGracePeriodSeconds`, the pod and container security context, the volumes' sizes and mounts.
  The webhook forbids env in a patch of the `node` container, so env goes through `trainer.env`.
- `activeDeadlineSeconds` when set. Labels: ours, the KFP run id, the Kueue queue.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from trm.launch.config import (LaunchConfig, container_env, container_security, pod_security, render_yaml,
                               volume_mounts, volumes)

GROUP = "trainer.kubeflow.org"
VERSION = "v1alpha1"
PLURAL = "trainjobs"
KIND = "TrainJob"
CONTAINER = "node"  # the trainer's container and replicated job (Trainer v2 constants.Node)
REPLICATED_JOB = "node"
ANCESTOR_LABEL = "trainer.kubeflow.org/trainjob-ancestor-step"
PATCH_MANAGER = "trm-pipeline.org/launcher"
JOBSET_NAME_LABEL = "jobset.sigs.k8s.io/jobset-name"
REPLICATED_JOB_LABEL = "jobset.sigs.k8s.io/replicatedjob-name"
COMPLETION_INDEX_LABEL = "batch.kubernetes.io/job-completion-index"
MASTER_PORT = 29500  # Trainer v2 constants.ContainerTrainerPort
RESERVED_ENV = ("PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT")
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DOMAIN_PATH = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)+/[A-Za-z0-9/._-]+$")


def master_selector(name: str) -> str:
    """Label selector of the pod of node rank 0 (JobSet labels; the completion index is the node rank)."""
    return f"{JOBSET_NAME_LABEL}={name},{REPLICATED_JOB_LABEL}={REPLICATED_JOB},{COMPLETION_INDEX_LABEL}=0"


def _runtime_patch(cfg: LaunchConfig, labels: dict[str, str]) -> dict[str, Any]:
    pod: dict[str, Any] = {
        "securityContext": pod_security(),
        "terminationGracePeriodSeconds": cfg.termination_grace_seconds,
        "volumes": volumes(cfg),
        "containers": [{"name": CONTAINER, "volumeMounts": volume_mounts(), "securityContext": container_security()}],
    }
    if cfg.node_selector:
        pod["nodeSelector"] = dict(cfg.node_selector)
    if cfg.tolerations:
        pod["tolerations"] = [dict(t) for t in cfg.tolerations]
    if cfg.service_account:
        pod["serviceAccountName"] = cfg.service_account
    if cfg.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": name} for name in cfg.image_pull_secrets]
    return {
        "manager": PATCH_MANAGER,
        "trainingRuntimeSpec": {"template": {
            "metadata": {"labels": dict(labels)},
            "spec": {"replicatedJobs": [{
                "name": REPLICATED_JOB,
                "template": {"metadata": {"labels": dict(labels)}, "spec": {"template": {
                    # an injected service-mesh sidecar never exits and would keep a finished pod Running
                    "metadata": {"labels": dict(labels), "annotations": {"sidecar.istio.io/inject": "false"}},
                    "spec": pod,
                }}},
            }]},
        }},
    }


def build_trainjob(cfg: LaunchConfig) -> dict[str, Any]:
    """The trainer.kubeflow.org/v1alpha1 TrainJob for `cfg` as a plain dict (JSON-ready)."""
    cfg.validate()
    labels = cfg.job_labels()
    command = cfg.command()
    spec: dict[str, Any] = {
        "runtimeRef": {"apiGroup": GROUP, "kind": cfg.runtime_kind, "name": cfg.runtime},
        "trainer": {
            "image": cfg.image,
            "command": command[:1],
            "args": command[1:],
            "numNodes": cfg.nnodes,
            "numProcPerNode": cfg.procs_per_node,
            "resourcesPerNode": cfg.resources(),
            "env": container_env(cfg),
        },
        "runtimePatches": [_runtime_patch(cfg, labels)],
    }
    if cfg.active_deadline_seconds is not None:
        spec["activeDeadlineSeconds"] = cfg.active_deadline_seconds
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND,
            "metadata": {"name": cfg.name, "namespace": cfg.namespace, "labels": labels}, "spec": spec}


def render(cfg: LaunchConfig) -> str:
    """YAML of the TrainJob, for `kubectl apply -f -` (after the runtime is installed)."""
    return render_yaml(build_trainjob(cfg))


def _runtime_containers(runtime: Mapping[str, Any]) -> dict[str, set[str]]:
    """replicated job name -> its container names, from a (Cluster)TrainingRuntime."""
    jobs = (((runtime.get("spec") or {}).get("template") or {}).get("spec") or {}).get("replicatedJobs") or []
    out = {}
    for rjob in jobs:
        pod = (((rjob.get("template") or {}).get("spec") or {}).get("template") or {}).get("spec") or {}
        out[rjob.get("name")] = {c.get("name") for c in pod.get("containers") or []}
    return out


def trainjob_problems(job: Mapping[str, Any], runtime: Mapping[str, Any] | None = None) -> list[str]:
    """What Kubeflow Trainer v2.3's admission webhook (and torch plugin) would refuse in a TrainJob.

    Beyond the CRD schema: a DNS-1035 name; `numProcPerNode` >= 1; no torchrun-reserved `PET_*` variable in
    `trainer.env`; each runtime patch has a domain-prefixed `manager`; and, given the `runtime`, patches name only
    replicated jobs and containers it has and set no env on the `node` container.
    """
    problems: list[str] = []
    name = (job.get("metadata") or {}).get("name", "")
    if not _DNS1035.match(name or "") or len(name) > 63:
        problems.append(f"metadata.name: {name!r} is not a DNS-1035 label of at most 63 characters")
    spec = job.get("spec") or {}
    ref = spec.get("runtimeRef") or {}
    if ref.get("apiGroup", GROUP) != GROUP or ref.get("kind", "ClusterTrainingRuntime") not in (
            "TrainingRuntime", "ClusterTrainingRuntime"):
        problems.append(f"spec.runtimeRef: {ref!r} does not name a (Cluster)TrainingRuntime")
    trainer = spec.get("trainer") or {}
    nproc = trainer.get("numProcPerNode")
    if nproc is not None and (not isinstance(nproc, int) or isinstance(nproc, bool) or nproc < 1):
        problems.append(f"spec.trainer.numProcPerNode: must be an integer >= 1, got {nproc!r}")
    reserved = sorted({e.get("name") for e in trainer.get("env") or []} & set(RESERVED_ENV))
    if reserved:
        problems.append(f"spec.trainer.env: must not have reserved envs {reserved}")
    containers = _runtime_containers(runtime) if runtime is not None else None
    for i, patch in enumerate(spec.get("runtimePatches") or []):
        where = f"spec.runtimePatches[{i}]"
        if not _DOMAIN_PATH.match(patch.get("manager") or ""):
            problems.append(f"{where}.manager: {patch.get('manager')!r} is not a domain-prefixed path")
        rjobs = ((((patch.get("trainingRuntimeSpec") or {}).get("template") or {}).get("spec") or {})
                 .get("replicatedJobs") or [])
        for rjob in rjobs:
            pod = ((((rjob.get("template") or {}).get("spec") or {}).get("template") or {}).get("spec") or {})
            if containers is not None and rjob.get("name") not in containers:
                problems.append(f"{where}: replicated job {rjob.get('name')!r} does not exist in the runtime")
                continue
            for kind in ("containers", "initContainers"):
                for container in pod.get(kind) or []:
                    if containers is not None and container.get("name") not in containers[rjob.get("name")]:
                        problems.append(f"{where}: {kind[:-1]} {container.get('name')!r} does not exist in the "
                                        f"runtime job {rjob.get('name')!r}")
                    if container.get("env") and container.get("name") in (CONTAINER, "dataset-initializer",
                                                                          "model-initializer"):
                        problems.append(f"{where}: must not have envs for the {container.get('name')} container")
    return problems


def runtime_problems(runtime: Mapping[str, Any]) -> list[str]:
    """What a runtime needs for `build_trainjob`'s jobs: the torch policy, a replicated job `node` (ancestor
    `trainer`) with a container `node`, the volumes the patch resizes, and one retry layer (no restarts)."""
    problems: list[str] = []
    spec = runtime.get("spec") or {}
    if "torch" not in (spec.get("mlPolicy") or {}):
        problems.append("spec.mlPolicy.torch: missing (torchrun gets no PET_* rendezvous)")
    jobs = {j.get("name"): j for j in ((spec.get("template") or {}).get("spec") or {}).get("replicatedJobs") or []}
    node = jobs.get(REPLICATED_JOB)
    if node is None:
        return problems + [f"spec.template.spec.replicatedJobs: no job named {REPLICATED_JOB!r}"]
    job_template = node.get("template") or {}
    if ((job_template.get("metadata") or {}).get("labels") or {}).get(ANCESTOR_LABEL) != "trainer":
        problems.append(f"replicatedJobs[node].template.metadata.labels: {ANCESTOR_LABEL} must be 'trainer'")
    job_spec = job_template.get("spec") or {}
    if job_spec.get("backoffLimit") != 0:
        problems.append("replicatedJobs[node].template.spec.backoffLimit: must be 0 (KFP retries the step)")
    pod = (job_spec.get("template") or {}).get("spec") or {}
    if pod.get("restartPolicy") != "Never":
        problems.append("replicatedJobs[node] pod restartPolicy: must be Never (KFP retries the step)")
    if not any(c.get("name") == CONTAINER for c in pod.get("containers") or []):
        problems.append(f"replicatedJobs[node]: no container named {CONTAINER!r}")
    names = {v.get("name") for v in pod.get("volumes") or []}
    for volume in ("dshm", "scratch"):
        if volume not in names:
            problems.append(f"replicatedJobs[node] pod volumes: no {volume!r} volume")
    return problems
