"""The settings of one training run on Kubernetes (`LaunchConfig`), shared by the TrainJob and PyTorchJob builders.

    from trm.launch.config import LaunchConfig, redact
    cfg = LaunchConfig(name="trm-try1", image="ghcr.io/trm-pipeline/trm-trainer:abc123", nnodes=2,
                       gpus_per_node=4, s3_endpoint="http://seaweedfs.kubeflow:9000",
                       train_args=["preset=arc2-seed", "data_paths=[s3://trm/runs/try1/dataset]"])
    cfg = LaunchConfig.from_mapping(configmap_data, name="trm-try2")   # a ConfigMap's strings; unknown keys fail
    redact("http://KEY:SECRET@minio:9000")                              # "http://***@minio:9000"

Every pod runs `torchrun -m trm.train <key=value ...>`; torchrun takes its rendezvous from the `PET_*` variables
the operator puts into each container (Training Operator 1.9 and Kubeflow Trainer v2 both do), so the command
carries no rank or address. The trainer resumes from the newest complete checkpoint in `checkpoint_path`, which
is therefore always passed and must be an `s3://` URI that outlives the pods.

Pods meet the "restricted" Pod Security profile (non-root uid 1000, no privilege escalation, every capability
dropped, seccomp RuntimeDefault), get a memory-backed `/dev/shm` and a scratch volume on `/tmp` (an emptyDir of
`scratch_size`, or the PVC `scratch_claim`; TRM_HOME=/tmp/trm, so the dataset cache lives there, never in the
container's own filesystem), and `terminationGracePeriodSeconds` long enough to write a checkpoint on SIGTERM.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping

import yaml

KINDS = ("trainjob", "pytorchjob")
CLEAN_POD_POLICIES = ("None", "Running", "All")
PULL_POLICIES = ("Always", "IfNotPresent", "Never")
RUNTIME_KINDS = ("TrainingRuntime", "ClusterTrainingRuntime")
TOLERATION_KEYS = ("key", "operator", "value", "effect", "tolerationSeconds")
TOLERATION_OPERATORS = ("Exists", "Equal")
TOLERATION_EFFECTS = ("", "NoSchedule", "PreferNoSchedule", "NoExecute")
# Keys of the trainer config that the launcher sets itself: they must be stable across pod restarts.
MANAGED_TRAIN_KEYS = ("checkpoint_path", "run_dir", "run_name")
# Labels the launcher puts on every job (and its pods): who made it and for which KFP run.
PART_OF = {"app.kubernetes.io/name": "trm-trainer", "app.kubernetes.io/part-of": "trm-pipeline"}
RUN_ID_LABEL = "trm-pipeline.org/kfp-run-id"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
# Where the scratch volume goes in every pod, and TRM_HOME on it (dataset cache, local checkpoint staging).
SCRATCH_MOUNT = "/tmp"
TRM_HOME = "/tmp/trm"
RUN_AS = 1000  # the uid/gid of both images (images/*.Dockerfile)
# Time a pod has after SIGTERM to finish its step and publish a checkpoint. bench/bench_checkpoint.py wrote a
# seed-size checkpoint (2.8 GB) in 18 s to local disk and 46-54 s to the embedded S3 on a loaded 2-core machine:
# 180 s leaves about 3x that (docs/kubernetes.md "Graceful stop").
DEFAULT_GRACE_SECONDS = 180
# torchrun waits this long (TORCH_ELASTIC_SHUTDOWN_TIMEOUT, default 30 s) for its workers after forwarding SIGTERM
# before it kills them: the grace period less a margin for torchrun's own exit.
SHUTDOWN_MARGIN_SECONDS = 10

_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_QUANTITY = re.compile(r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$")
_RESOURCE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TRAIN_ARG = re.compile(r"^(\+{1,2}|~)?([A-Za-z_][A-Za-z0-9_.]*)=")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/\s@]+)@")


def redact(text: Any) -> str:
    """`text` with the user:password part of every URL in it replaced by `***` (e.g. an endpoint with keys)."""
    return _USERINFO.sub(lambda m: f"{m.group('scheme')}***@", str(text))


@dataclass
class LaunchConfig:
    """One training run as a TrainJob or PyTorchJob. Quantities are Kubernetes strings ("8", "500m", "32Gi")."""

    name: str  # the job's name (a DNS-1035 label); also the trainer's run_name
    image: str  # the trainer image, e.g. <registry>/trm-trainer:<tag>
    namespace: str = "kubeflow"
    nnodes: int = 1  # pods (nodes); each runs nproc_per_node processes
    nproc_per_node: int | None = None  # processes per pod; default gpus_per_node, or 1 on CPU
    gpus_per_node: int = 0  # 0: a CPU job
    gpu_resource: str = "nvidia.com/gpu"
    cpu: str = "4"  # CPU request per pod
    memory: str = "16Gi"  # memory request and limit per pod
    shm_size: str = "8Gi"  # memory-backed /dev/shm (data-loader workers, NCCL); counts against `memory`
    scratch_size: str = "64Gi"  # emptyDir on /tmp (TRM_HOME: dataset cache, checkpoint staging)
    scratch_claim: str | None = None  # a PersistentVolumeClaim on /tmp instead of the emptyDir
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    # S3 (see docs/ARCHITECTURE.md "Environment"): endpoint as a value, credentials from a secret.
    s3_endpoint: str | None = None  # TRM_S3_ENDPOINT; None: the image's or AWS's default
    s3_bucket: str = "trm"
    s3_region: str | None = None
    s3_secret: str | None = "mlpipeline-minio-artifact"  # None: no credentials from a secret (e.g. IRSA)
    s3_access_key_key: str = "accesskey"
    s3_secret_key_key: str = "secretkey"
    wandb_secret: str | None = None  # a secret holding WANDB_API_KEY; None: W&B runs offline
    wandb_key_key: str = "api-key"
    # where the run lives; both are passed to the trainer so that restarted pods resume
    run_dir: str | None = None  # default s3://<s3_bucket>/runs/<name>
    checkpoint_path: str | None = None  # default <run_dir>/checkpoints
    train_args: list[str] = field(default_factory=list)  # trainer words, key=value
    env: dict[str, str] = field(default_factory=dict)  # extra plain variables
    labels: dict[str, str] = field(default_factory=dict)
    run_id: str | None = None  # the KFP run id: a job of the same run found on submit is adopted, not refused
    queue_name: str | None = None  # a Kueue LocalQueue: the job waits for quota there
    service_account: str | None = None
    image_pull_secrets: list[str] = field(default_factory=list)
    image_pull_policy: str = "IfNotPresent"
    termination_grace_seconds: int = DEFAULT_GRACE_SECONDS  # SIGTERM -> checkpoint -> exit, before SIGKILL
    active_deadline_seconds: int | None = None  # wall-clock limit of the whole job
    pending_timeout: int = 1800  # seconds the job may stay unstarted (no GPUs, image pull errors); 0: no limit
    ttl_seconds_after_finished: int | None = 86400  # the controller deletes a finished job after this
    # TrainJob (Kubeflow Trainer v2): the runtime the job refers to (manifests/base/trainingruntime.yaml)
    runtime: str = "trm-torch"
    runtime_kind: str = "TrainingRuntime"
    # PyTorchJob (Training Operator 1.9)
    master_port: int = 23456
    backoff_limit: int = 0  # pod restarts before the job is Failed (0: KFP's step retry is the one retry layer)
    clean_pod_policy: str = "Running"  # None | Running | All: pods removed when the job finishes

    def __post_init__(self):
        self.validate()

    # -- checks -------------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ValueError naming the first bad field."""
        if not isinstance(self.name, str) or not _DNS1035.match(self.name):
            raise ValueError(f"name: {self.name!r} is not a DNS-1035 label (lower-case letters, digits, '-', "
                             "starting with a letter)")
        if not isinstance(self.namespace, str) or not _DNS1123.match(self.namespace) or len(self.namespace) > 63:
            raise ValueError(f"namespace: {self.namespace!r} is not a DNS-1123 label")
        for name in ("nnodes", "gpus_per_node", "master_port", "backoff_limit", "termination_grace_seconds",
                     "pending_timeout"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"{name}: expected an integer, got {value!r}")
        if self.nnodes < 1:
            raise ValueError(f"nnodes: must be at least 1, got {self.nnodes}")
        # the longest pod host name of either kind must stay a DNS label: <name>-worker-<i> (PyTorchJob),
        # <name>-node-0-<i> (TrainJob: JobSet <jobset>-<replicated job>-<job index>-<pod index>)
        longest = max(f"{self.name}-worker-{max(self.nnodes - 2, 0)}", f"{self.name}-node-0-{self.nnodes - 1}",
                      key=len)
        if len(longest) > 63:
            raise ValueError(f"name: {self.name!r} is too long: pod name {longest!r} exceeds 63 characters")
        if self.gpus_per_node < 0:
            raise ValueError(f"gpus_per_node: must be >= 0, got {self.gpus_per_node}")
        if self.nproc_per_node is not None:
            if not isinstance(self.nproc_per_node, int) or isinstance(self.nproc_per_node, bool) \
                    or self.nproc_per_node < 1:
                raise ValueError(f"nproc_per_node: expected an integer >= 1, got {self.nproc_per_node!r}")
            if self.gpus_per_node and self.nproc_per_node != self.gpus_per_node:
                raise ValueError(f"nproc_per_node: {self.nproc_per_node} processes on {self.gpus_per_node} GPUs; "
                                 "use one process per GPU")
        if not isinstance(self.image, str) or not self.image or any(c.isspace() for c in self.image):
            raise ValueError(f"image: expected an image reference, got {self.image!r}")
        if not _RESOURCE_NAME.match(self.gpu_resource or ""):
            raise ValueError(f"gpu_resource: {self.gpu_resource!r} is not a resource name like nvidia.com/gpu")
        for name in ("cpu", "memory", "shm_size", "scratch_size"):
            value = getattr(self, name)
            if not isinstance(value, str) or not _QUANTITY.match(value) or value.startswith("-"):
                raise ValueError(f"{name}: {value!r} is not a Kubernetes quantity such as '4', '500m' or '16Gi'")
        self._check_str_map("node_selector", self.node_selector)
        self._check_str_map("labels", self.labels)
        self._check_str_map("env", self.env)
        managed = {item["name"] for item in managed_env(self)} | {"PET_NNODES", "PET_NPROC_PER_NODE",
                                                                  "PET_NODE_RANK", "PET_MASTER_ADDR",
                                                                  "PET_MASTER_PORT"}
        for key in self.env:
            if not _ENV_NAME.match(key):
                raise ValueError(f"env: {key!r} is not a variable name")
            if key in managed:
                raise ValueError(f"env: {key} is set by the launcher or the operator (s3_*, wandb_secret, PET_*)")
        for key, value in self.labels.items():
            if not _LABEL_VALUE.match(value):
                raise ValueError(f"labels: {key}={value!r}: not a label value")
        self._check_tolerations()
        for name in ("s3_secret", "wandb_secret", "service_account", "scratch_claim", "runtime", "queue_name"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not _DNS1123.match(value.replace(".", "-"))):
                raise ValueError(f"{name}: {value!r} is not a Kubernetes object name")
        if self.runtime is None:
            raise ValueError("runtime: the TrainingRuntime name is required (default trm-torch)")
        if self.runtime_kind not in RUNTIME_KINDS:
            raise ValueError(f"runtime_kind: expected one of {RUNTIME_KINDS}, got {self.runtime_kind!r}")
        if self.run_id is not None and (not isinstance(self.run_id, str) or not self.run_id
                                        or not _LABEL_VALUE.match(self.run_id)):
            raise ValueError(f"run_id: {self.run_id!r} is not a label value (the KFP run id, up to 63 letters, "
                             "digits, '-', '_', '.')")
        if not isinstance(self.image_pull_secrets, list) or not all(isinstance(s, str) and s
                                                                    for s in self.image_pull_secrets):
            raise ValueError(f"image_pull_secrets: expected a list of secret names, got {self.image_pull_secrets!r}")
        if self.s3_endpoint is not None:
            if not isinstance(self.s3_endpoint, str) or not re.match(r"^https?://[^\s/]+", self.s3_endpoint):
                raise ValueError(f"s3_endpoint: expected http(s)://host[:port], got {redact(self.s3_endpoint)!r}")
            if _USERINFO.match(self.s3_endpoint):
                raise ValueError(f"s3_endpoint: {redact(self.s3_endpoint)!r} carries credentials in the URL; it is "
                                 "rendered into the job in plain text, so give the keys through the secret "
                                 "(s3_secret) and the bare endpoint here")
        if not re.match(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", self.s3_bucket or ""):
            raise ValueError(f"s3_bucket: {self.s3_bucket!r} is not an S3 bucket name")
        for name in ("run_dir", "checkpoint_path"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not re.match(r"^s3://[^/\s]+/\S+", value)):
                raise ValueError(f"{name}: {value!r} must be an s3://bucket/key URI: local disks of pods do not "
                                 "survive a restart, so the job could not resume")
        if self.image_pull_policy not in PULL_POLICIES:
            raise ValueError(f"image_pull_policy: expected one of {PULL_POLICIES}, got {self.image_pull_policy!r}")
        if not 1 <= self.master_port <= 65535:
            raise ValueError(f"master_port: {self.master_port} is not a TCP port")
        if self.backoff_limit < 0:
            raise ValueError(f"backoff_limit: must be >= 0, got {self.backoff_limit}")
        if self.termination_grace_seconds < 0:
            raise ValueError(f"termination_grace_seconds: must be >= 0, got {self.termination_grace_seconds}")
        if self.pending_timeout < 0:
            raise ValueError(f"pending_timeout: must be >= 0 seconds (0: no limit), got {self.pending_timeout}")
        for name in ("active_deadline_seconds", "ttl_seconds_after_finished"):
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 0 \
                    or (name == "active_deadline_seconds" and value == 0):
                raise ValueError(f"{name}: expected a positive number of seconds or None, got {value!r}")
        if self.clean_pod_policy not in CLEAN_POD_POLICIES:
            raise ValueError(f"clean_pod_policy: expected one of {CLEAN_POD_POLICIES}, got {self.clean_pod_policy!r}")
        self._check_train_args()

    @staticmethod
    def _check_str_map(name: str, value: Any) -> None:
        if not isinstance(value, dict) or not all(isinstance(k, str) and k and isinstance(v, str)
                                                  for k, v in value.items()):
            raise ValueError(f"{name}: expected a mapping of strings to strings, got {value!r}")

    def _check_tolerations(self) -> None:
        if not isinstance(self.tolerations, list):
            raise ValueError(f"tolerations: expected a list, got {self.tolerations!r}")
        for i, tol in enumerate(self.tolerations):
            where = f"tolerations[{i}]"
            if not isinstance(tol, dict):
                raise ValueError(f"{where}: expected a mapping, got {tol!r}")
            unknown = sorted(set(tol) - set(TOLERATION_KEYS))
            if unknown:
                raise ValueError(f"{where}: unknown keys {unknown}; known: {TOLERATION_KEYS}")
            operator = tol.get("operator", "Equal")
            if operator not in TOLERATION_OPERATORS:
                raise ValueError(f"{where}.operator: expected one of {TOLERATION_OPERATORS}, got {operator!r}")
            if tol.get("effect", "") not in TOLERATION_EFFECTS:
                raise ValueError(f"{where}.effect: expected one of {TOLERATION_EFFECTS}, got {tol.get('effect')!r}")
            if operator == "Exists" and tol.get("value"):
                raise ValueError(f"{where}: operator Exists takes no value")
            if operator == "Equal" and not tol.get("key"):
                raise ValueError(f"{where}: operator Equal needs a key")
            for key in ("key", "value", "effect"):
                if key in tol and not isinstance(tol[key], str):
                    raise ValueError(f"{where}.{key}: expected a string, got {tol[key]!r}")
            seconds = tol.get("tolerationSeconds")
            if seconds is not None and (not isinstance(seconds, int) or isinstance(seconds, bool)):
                raise ValueError(f"{where}.tolerationSeconds: expected an integer, got {seconds!r}")

    def _check_train_args(self) -> None:
        if not isinstance(self.train_args, list):
            raise ValueError(f"train_args: expected a list of key=value words, got {self.train_args!r}")
        for word in self.train_args:
            match = _TRAIN_ARG.match(word) if isinstance(word, str) else None
            if not match:
                raise ValueError(f"train_args: {word!r} is not a key=value word")
            if match.group(2) in MANAGED_TRAIN_KEYS:
                raise ValueError(f"train_args: {match.group(2)} is set by the launcher (LaunchConfig."
                                 f"{'name' if match.group(2) == 'run_name' else match.group(2)}) so that "
                                 "restarted pods resume the same run; set the field instead")
        # the trainer's own parser names unknown keys and bad values before anything reaches the cluster
        from trm.config import load_config

        try:
            load_config(self.trainer_words())
        except ValueError as err:
            raise ValueError(f"train_args: {err}") from None

    # -- derived values ------------------------------------------------------------------------------------
    @property
    def procs_per_node(self) -> int:
        return self.nproc_per_node or self.gpus_per_node or 1

    @property
    def world_size(self) -> int:
        return self.nnodes * self.procs_per_node

    @property
    def resolved_run_dir(self) -> str:
        return self.run_dir or f"s3://{self.s3_bucket}/runs/{self.name}"

    @property
    def resolved_checkpoint_path(self) -> str:
        return self.checkpoint_path or self.resolved_run_dir.rstrip("/") + "/checkpoints"

    def trainer_words(self) -> list[str]:
        """The words after `torchrun -m trm.train`: the user's, then the stable run name and locations."""
        return [*self.train_args, f"run_name={self.name}", f"run_dir={self.resolved_run_dir}",
                f"checkpoint_path={self.resolved_checkpoint_path}"]

    def command(self) -> list[str]:
        return ["torchrun", "-m", "trm.train", *self.trainer_words()]

    def job_labels(self) -> dict[str, str]:
        """Labels of the job object and its pods: ours, the KFP run id, the Kueue queue, then the user's."""
        labels = dict(PART_OF)
        if self.run_id:
            labels[RUN_ID_LABEL] = self.run_id
        if self.queue_name:
            labels[QUEUE_LABEL] = self.queue_name
        return {**labels, **self.labels}

    def resources(self) -> dict[str, dict[str, str]]:
        """Requests and limits of one pod: CPU and memory requested, memory (and GPUs) limited."""
        requests: dict[str, str] = {"cpu": self.cpu, "memory": self.memory}
        limits: dict[str, str] = {"memory": self.memory}
        if self.gpus_per_node:
            requests[self.gpu_resource] = str(self.gpus_per_node)
            limits[self.gpu_resource] = str(self.gpus_per_node)
        return {"requests": requests, "limits": limits}

    # -- construction from strings ------------------------------------------------------------------------
    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], **overrides: Any) -> "LaunchConfig":
        """Fields from a mapping (ConfigMap data: every value a string), then `overrides`; unknown keys fail.

        Strings are read as the field's type: integers, `null`/empty for None, YAML for mappings and lists.
        """
        hints = typing.get_type_hints(cls)
        known = {f.name for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for key, value in data.items():
            if key not in known:
                raise ValueError(f"unknown launch setting {key!r}; known: {', '.join(sorted(known))}")
            values[key] = _coerce(key, hints[key], value)
        for key, value in overrides.items():
            if key not in known:
                raise ValueError(f"unknown launch setting {key!r}")
            values[key] = value
        missing = [name for name in ("name", "image") if name not in values]
        if missing:
            raise ValueError(f"launch settings lack {', '.join(missing)}")
        return cls(**values)


def _coerce(key: str, hint: Any, value: Any) -> Any:
    """One ConfigMap string to the field's type."""
    if not isinstance(value, str):
        return value
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint)
    base = next(a for a in typing.get_args(hint) if a is not type(None)) if optional else hint
    text = value.strip()
    if optional and text in ("", "null", "None", "~"):
        return None
    if base is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"{key}: expected an integer, got {value!r}") from None
    origin = typing.get_origin(base)
    if origin in (list, dict):
        try:
            parsed = yaml.safe_load(text) if text else None
        except yaml.YAMLError as err:
            raise ValueError(f"{key}: not valid YAML: {err}") from None
        parsed = origin() if parsed is None else parsed
        if not isinstance(parsed, origin):
            raise ValueError(f"{key}: expected a YAML {origin.__name__}, got {parsed!r}")
        return parsed
    return value


def managed_env(cfg: LaunchConfig) -> list[dict[str, Any]]:
    """The variables the launcher derives from its fields (docs/ARCHITECTURE.md "Environment")."""
    env: list[dict[str, Any]] = [{"name": "TRM_S3_BUCKET", "value": cfg.s3_bucket},
                                 {"name": "TRM_HOME", "value": TRM_HOME}]
    if cfg.s3_endpoint:
        env.append({"name": "TRM_S3_ENDPOINT", "value": cfg.s3_endpoint})
    if cfg.s3_region:
        env.append({"name": "AWS_REGION", "value": cfg.s3_region})
    if cfg.s3_secret:
        for var, key in (("AWS_ACCESS_KEY_ID", cfg.s3_access_key_key), ("AWS_SECRET_ACCESS_KEY", cfg.s3_secret_key_key)):
            env.append({"name": var, "valueFrom": {"secretKeyRef": {"name": cfg.s3_secret, "key": key}}})
    if cfg.termination_grace_seconds > SHUTDOWN_MARGIN_SECONDS:
        env.append({"name": "TORCH_ELASTIC_SHUTDOWN_TIMEOUT",
                    "value": str(cfg.termination_grace_seconds - SHUTDOWN_MARGIN_SECONDS)})
    if cfg.wandb_secret:
        env.append({"name": "WANDB_API_KEY",
                    "valueFrom": {"secretKeyRef": {"name": cfg.wandb_secret, "key": cfg.wandb_key_key}}})
    return env


def container_env(cfg: LaunchConfig) -> list[dict[str, Any]]:
    return managed_env(cfg) + [{"name": k, "value": v} for k, v in cfg.env.items()]


def container_security() -> dict[str, Any]:
    """The container part of the "restricted" Pod Security profile."""
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "runAsNonRoot": True,
            "seccompProfile": {"type": "RuntimeDefault"}}


def pod_security() -> dict[str, Any]:
    """The pod part: non-root uid/gid of the images, the scratch volume writable by them, seccomp RuntimeDefault."""
    return {"runAsNonRoot": True, "runAsUser": RUN_AS, "runAsGroup": RUN_AS, "fsGroup": RUN_AS,
            "seccompProfile": {"type": "RuntimeDefault"}}


def volumes(cfg: LaunchConfig) -> list[dict[str, Any]]:
    """/dev/shm (memory) and the scratch volume on /tmp (an emptyDir with a size limit, or a PVC)."""
    scratch: dict[str, Any] = ({"persistentVolumeClaim": {"claimName": cfg.scratch_claim}} if cfg.scratch_claim
                               else {"emptyDir": {"sizeLimit": cfg.scratch_size}})
    return [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": cfg.shm_size}},
            {"name": "scratch", **scratch}]


def volume_mounts() -> list[dict[str, Any]]:
    return [{"name": "dshm", "mountPath": "/dev/shm"}, {"name": "scratch", "mountPath": SCRATCH_MOUNT}]


def render_yaml(obj: Mapping[str, Any]) -> str:
    """YAML for `kubectl apply -f -`, with any URL credentials masked (they never belong in a manifest)."""
    return redact(yaml.safe_dump(dict(obj), sort_keys=False, default_flow_style=False))
