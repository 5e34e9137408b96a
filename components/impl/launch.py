"""The Kubernetes side of the pipeline's steps (plain Python, imported inside the pods): which trainer backend, the
job's settings, the checks `check-params` makes before any compute is spent, and the exit handler's cleanup.

    from components.impl import launch
    backend = launch.check_cluster(params, root, words)       # "local" | "trainjob" | "pytorchjob"; ValueError
    cfg = launch.launch_config(words, job, settings)           # the LaunchConfig of the training job
    launch.cleanup_run("kubeflow", kfp_run_id)                 # delete the run's jobs (exit handler)

Settings of the job's pods, in order (later wins): LaunchConfig defaults; the ConfigMap `trm-launch` in the job's
namespace when there is one (sizes: cpu, memory, shm_size, scratch_size, service account, grace period, runtime,
...; see manifests/); then the pipeline's parameters: image (`trainer_image`), nodes and processes, GPUs
(`gpu_type`; one per process), the run's S3 locations, the KFP run id label, `active_deadline_seconds`,
`pending_timeout`, and `node_selector`, `tolerations`, `queue_name` when they are not empty. `backoff_limit` is
always 0: KFP's retry of the train step is the one retry layer.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

from components import settings

SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
API_RETRY = 120.0  # seconds a check or the cleanup keeps retrying an API server that does not answer


def log(message: str) -> None:
    print(f"[trm] {message}", flush=True)


def own_namespace(default: str = "kubeflow") -> str:
    """The namespace this pod runs in (a Kubeflow profile namespace in multi-user installs), else `default`."""
    path = Path(SERVICE_ACCOUNT_NAMESPACE)
    return path.read_text().strip() if path.is_file() else default


def expand_prefix(prefix: str, namespace: str | None = None) -> str:
    """`run_prefix` with `{namespace}` replaced by the pod's namespace (multi-user: private-artifacts/{namespace}/trm)."""
    if "{" not in prefix and "}" not in prefix:
        return prefix
    if re.sub(r"\{namespace\}", "", prefix).count("{") or re.sub(r"\{namespace\}", "", prefix).count("}"):
        raise ValueError(f"run_prefix: {prefix!r}: the only placeholder is {{namespace}}")
    return prefix.replace("{namespace}", namespace or own_namespace())


def job_name(root: str) -> str:
    """A stable DNS-1035 job name from the run root's last segment, e.g. `trm-seed-1` (KFP retries of a run get
    the same name, so a 409 finds the job to adopt). Long or changed names get a hash of the run root."""
    tail = re.sub(r"[^a-z0-9-]+", "-", root.rstrip("/").rsplit("/", 1)[-1].lower()).strip("-")
    name = f"trm-{tail}"
    if len(name) > 40 or tail != root.rstrip("/").rsplit("/", 1)[-1]:
        digest = hashlib.sha256(root.encode()).hexdigest()[:8]
        name = f"{name[:31].rstrip('-')}-{digest}"
    return name


def secret_key_for(env_var: str) -> str:
    """The key of the S3 secret that holds `env_var` (settings.S3_SECRET_KEYS)."""
    return next(key for key, var in settings.S3_SECRET_KEYS.items() if var == env_var)


def read_settings(api_client, namespace: str) -> dict[str, str]:
    """The `trm-launch` ConfigMap's data, or {} when there is none or it may not be read (said in the log)."""
    from trm.launch.client import LaunchError, read_configmap

    try:
        data = read_configmap(api_client, settings.LAUNCH_CONFIGMAP, namespace, api_retry=API_RETRY)
    except LaunchError as err:
        log(f"launch settings: {err}; using the defaults and the pipeline's parameters")
        return {}
    log(f"launch settings from ConfigMap {namespace}/{settings.LAUNCH_CONFIGMAP}: {', '.join(sorted(data))}")
    return data


def launch_config(words: list[str], job: dict[str, Any], cm: dict[str, str]):
    """The LaunchConfig of the run's job: the ConfigMap's settings `cm`, then the parameters in `job`."""
    from trm.launch.config import LaunchConfig
    from trm.storage.config import S3Config

    root = job["run_root"]
    gpu_type = job.get("gpu_type") or ""
    procs = int(job["nproc_per_node"])
    active = int(job.get("active_deadline_seconds") or 0)
    overrides: dict[str, Any] = dict(
        name=job.get("name") or job_name(root), image=job["image"],
        namespace=job.get("namespace") or own_namespace(), nnodes=int(job["nnodes"]), nproc_per_node=procs,
        gpus_per_node=procs if gpu_type else 0,
        s3_endpoint=job.get("s3_endpoint") or os.environ.get("TRM_S3_ENDPOINT") or cm.get("s3_endpoint") or None,
        s3_bucket=root[len("s3://"):].split("/", 1)[0] if root.startswith("s3://") else S3Config.from_env().bucket,
        s3_secret=settings.S3_SECRET, s3_access_key_key=secret_key_for("AWS_ACCESS_KEY_ID"),
        s3_secret_key_key=secret_key_for("AWS_SECRET_ACCESS_KEY"),
        # the W&B secret is optional for this step; pass it on only when it was there (else pods would not start)
        wandb_secret=settings.WANDB_SECRET if os.environ.get("WANDB_API_KEY") else None,
        wandb_key_key=next(iter(settings.WANDB_SECRET_KEYS)),
        run_dir=root, checkpoint_path=f"{root}/checkpoints",
        train_args=[w for w in words if not w.startswith(("run_dir=", "checkpoint_path="))],
        run_id=job.get("kfp_run_id") or None, backoff_limit=0,
        active_deadline_seconds=active or None, pending_timeout=int(job.get("pending_timeout") or 0),
    )
    if gpu_type:
        overrides["gpu_resource"] = gpu_type
    for key in ("node_selector", "tolerations", "queue_name"):
        if job.get(key):
            overrides[key] = job[key]
    try:
        return LaunchConfig.from_mapping({k: v for k, v in cm.items() if k not in overrides}, **overrides)
    except ValueError as err:
        raise ValueError(f"launch settings (ConfigMap {settings.LAUNCH_CONFIGMAP} + pipeline parameters): {err}") \
            from None


def check_limits(active_deadline_seconds: int, pending_timeout: int) -> None:
    if active_deadline_seconds < 0:
        raise ValueError(f"active_deadline_seconds: must be >= 0 (0: no limit), got {active_deadline_seconds}")
    if pending_timeout < 0:
        raise ValueError(f"pending_timeout: must be >= 0 (0: wait forever), got {pending_timeout}")
    if active_deadline_seconds + pending_timeout >= settings.LAUNCHER_TIMEOUT:
        raise ValueError(f"active_deadline_seconds + pending_timeout = {active_deadline_seconds + pending_timeout} s "
                         f"reaches the train step's own limit of {settings.LAUNCHER_TIMEOUT} s "
                         "(components.settings.LAUNCHER_TIMEOUT, fixed when compiling): lower them or recompile")


def check_cluster(params: dict[str, Any], root: str, words: list[str]) -> str:
    """Resolve `trainer_backend` and make sure the cluster can run it; ValueError in one sentence otherwise.

    Outside a cluster (kfp.local) `auto` means `local`. In a cluster: the kind's API is served (auto: TrainJob
    first), the launch settings build a valid job, the TrainJob's runtime exists, and this step's service account
    may create, get, list, watch and delete that kind and read the pods and their logs (SelfSubjectAccessReview)."""
    from trm.launch import client

    backend = params["trainer_backend"]
    if backend not in settings.TRAINER_BACKENDS:
        raise ValueError(f"trainer_backend: expected one of {settings.TRAINER_BACKENDS}, got {backend!r}")
    check_limits(int(params["active_deadline_seconds"]), int(params["pending_timeout"]))
    if backend == "local":
        return backend
    if not client.in_cluster():
        if backend == "auto":
            log("trainer_backend auto: no Kubernetes API here (not in a pod), so training runs in this step "
                "(local)")
            if params["nnodes"] != 1:
                raise ValueError(f"nnodes: trainer_backend auto resolved to local (no cluster), which runs on one "
                                 f"node, got nnodes={params['nnodes']}")
            return "local"
        raise ValueError(f"trainer_backend={backend} needs the Kubernetes API, but this step does not run in a "
                         "cluster; use trainer_backend=local or auto")
    try:
        api = client.api_client_from_config()
        kind = client.resolve_kind(api, backend, api_retry=API_RETRY)
        job = job_parameters(params, root)
        namespace = job["namespace"] or own_namespace()
        cfg = launch_config(words, job, read_settings(api, namespace))
        if kind is client.TRAINJOB:
            missing = client.runtime_missing(api, cfg, api_retry=API_RETRY)
            if missing:
                raise ValueError(f"trainer_backend={backend} (TrainJob): {missing}")
        denied = client.access_problems(api, kind, namespace, api_retry=API_RETRY)
    except client.LaunchError as err:
        raise ValueError(f"trainer_backend={backend}: {err}") from None
    if denied:
        raise ValueError(f"trainer_backend={backend}: this step's service account may not {', '.join(denied)} in "
                         f"namespace {namespace}; apply an overlay of manifests/ there (Role trm-launcher, bound to "
                         "pipeline-runner or, in a profile namespace, default-editor)")
    log(f"trainer_backend {backend}: {kind.kind} ({kind.api_version}) in namespace {namespace}, job {cfg.name}: "
        f"{cfg.nnodes} node(s) x {cfg.procs_per_node} process(es), {cfg.cpu} CPU, {cfg.memory} per node")
    return kind.key


def job_parameters(params: dict[str, Any], root: str) -> dict[str, Any]:
    """The parameters of the run's job, from the pipeline's parameters (check-params and the train step agree)."""
    return {"name": "", "image": params["trainer_image"], "gpu_type": params["gpu_type"],
            "node_selector": params["node_selector"], "tolerations": params["tolerations"],
            "namespace": params["namespace"], "s3_endpoint": params["s3_endpoint"], "run_root": root,
            "nnodes": params["nnodes"], "nproc_per_node": params["nproc_per_node"],
            "kfp_run_id": params["kfp_run_id"], "active_deadline_seconds": params["active_deadline_seconds"],
            "pending_timeout": params["pending_timeout"], "queue_name": params["queue_name"]}


def run_job(kind: str, words: list[str], job: dict[str, Any]) -> None:
    """Submit the job with `trm.launch`, follow it (master log in this step's log), delete it at the end;
    RuntimeError unless it Succeeded. The kubernetes client uses the pod's service account."""
    from trm.launch import client

    api = client.api_client_from_config()
    namespace = job.get("namespace") or own_namespace()
    cfg = launch_config(words, {**job, "namespace": namespace}, read_settings(api, namespace))
    log(f"{kind} {cfg.namespace}/{cfg.name}: {cfg.nnodes} node(s) x {cfg.procs_per_node} process(es), "
        f"image {cfg.image}")
    active = cfg.active_deadline_seconds or settings.LAUNCHER_TIMEOUT
    # the launcher outlives the job's own deadline (which the controller enforces and reports)
    timeout = active + cfg.pending_timeout + 600 if cfg.active_deadline_seconds else None
    result = client.run_job(cfg, kind, api_client=api, timeout=timeout, poll_interval=float(
        os.environ.get("TRM_LAUNCH_POLL", "10")), api_retry=float(os.environ.get("TRM_LAUNCH_API_RETRY", "300")))
    result.raise_for_state()


def cleanup_run(namespace: str, kfp_run_id: str, state: str = "") -> list[str]:
    """The exit handler: delete every job labelled with this KFP run's id. Never raises (it runs after the end)."""
    from trm.launch import client

    if not kfp_run_id:
        log("cleanup: no run id; nothing to do")
        return []
    if not client.in_cluster():
        log(f"cleanup (run {state or 'ended'}): no Kubernetes API here (not in a pod); nothing to clean up")
        return []
    namespace = namespace or own_namespace()
    try:
        deleted = client.delete_run_jobs(client.api_client_from_config(), namespace, kfp_run_id, api_retry=API_RETRY)
    except Exception as err:  # noqa: BLE001 - reported; the run's result is already decided
        log(f"cleanup: could not delete the jobs of run {kfp_run_id} in {namespace}: {err}")
        return []
    log(f"cleanup (run {state or 'ended'}): deleted {', '.join(deleted) if deleted else 'nothing (no job left)'}")
    return deleted
