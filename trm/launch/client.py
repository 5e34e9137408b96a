"""Submit a TrainJob or PyTorchJob, follow it to the end, stream the master's log, delete it: with the `kubernetes` client.

    from trm.launch.client import run_job, api_client_from_config
    result = run_job(LaunchConfig(name="trm-try1", image=..., train_args=[...]), kind="auto", timeout=48 * 3600)
    result.state        # Succeeded | Failed | Stuck | Unreachable | Timeout | Cancelled
    result.exit_code    # 0 only for Succeeded; see EXIT_CODES
    result.raise_for_state()   # RuntimeError unless Succeeded (for the KFP train component)

`kind` is "trainjob" (Kubeflow Trainer v2.3), "pytorchjob" (Training Operator 1.9) or "auto" (the API server's
discovery says which is installed; TrainJob preferred). What happens, in order:

- Submit. An HTTP 409 ("already exists") is answered by looking at the existing job: the same `run_id` label (a
  KFP retry of the same run after the launcher pod died) or our own launch id (a create whose reply was lost)
  means adopt it: follow it while it runs, take its result when it Succeeded, delete it and submit again when it
  Failed. A job of another run is never touched: LaunchError naming it.
- Follow: GET the job every `poll_interval` s, woken early by a watch on it (a dropped watch is re-opened; while
  it is down polling carries on). Each state change is reported; the master pod's container log is streamed in a
  thread (again after each container restart; a dropped stream resumes where it stopped). The job ends as
  Succeeded/Failed by its conditions, Failed when it disappears, Stuck when it has not started after
  `pending_timeout` s or its master pod cannot pull its image for `image_grace` s (the reason is named),
  Unreachable when the API server does not answer for `api_retry` s, Timeout after `timeout` s, Cancelled on
  SIGINT/SIGTERM or `cancel`.
- Clean up: the job is deleted before returning (unless keep=True), with the same bounded retries; a failed
  delete is reported (`result.cleanup_error`) and never changes the job's result.
"""

from __future__ import annotations

import dataclasses
import signal
import sys
import threading
import time
import uuid
from typing import Any, Callable, Mapping, TextIO

from trm.launch import pytorchjob as ptj
from trm.launch import trainjob as tj
from trm.launch.config import RUN_ID_LABEL, LaunchConfig, redact

EXIT_CODES = {"Succeeded": 0, "Failed": 1, "Stuck": 3, "Unreachable": 69, "Timeout": 124, "Cancelled": 130}
IMAGE_ERRORS = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError",
                "CreateContainerError")
LAUNCH_ID_ANNOTATION = "trm-pipeline.org/launch-id"


class LaunchError(Exception):
    """A refusal or a setup problem, in one sentence (the CLI prints it without a traceback)."""

    exit_code = 2


class ApiUnreachable(LaunchError):
    """The API server did not answer within the retry window."""

    exit_code = EXIT_CODES["Unreachable"]


@dataclasses.dataclass(frozen=True)
class Kind:
    """What differs between the two job kinds for submitting and following them."""

    key: str
    group: str
    version: str
    plural: str
    kind: str
    container: str  # the trainer's container in the master pod
    build: Callable[[LaunchConfig], dict]
    master_selector: Callable[[str], str]
    install: str  # what to install when the API server lacks the kind

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"

    def state(self, job: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        return job_state(job) if self.key == "pytorchjob" else trainjob_state(job)


PYTORCHJOB = Kind("pytorchjob", ptj.GROUP, ptj.VERSION, ptj.PLURAL, ptj.KIND, ptj.CONTAINER, ptj.build_pytorchjob,
                  lambda name: f"{ptj.JOB_NAME_LABEL}={name},{ptj.REPLICA_TYPE_LABEL}=master",
                  "the Kubeflow Training Operator 1.9 (docs/kubernetes.md)")
TRAINJOB = Kind("trainjob", tj.GROUP, tj.VERSION, tj.PLURAL, tj.KIND, tj.CONTAINER, tj.build_trainjob,
                tj.master_selector, "Kubeflow Trainer v2.3 and the trm-torch TrainingRuntime (docs/kubernetes.md)")
KINDS = {k.key: k for k in (TRAINJOB, PYTORCHJOB)}  # in order of preference for "auto"


@dataclasses.dataclass
class JobResult:
    name: str
    namespace: str
    state: str  # one of EXIT_CODES
    message: str = ""
    conditions: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    kind: str = "PyTorchJob"
    deleted: bool = False
    adopted: str = ""  # "running" | "succeeded" | "failed -> resubmitted" when a 409 was answered by adoption
    cleanup_error: str = ""

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.state]

    @property
    def ok(self) -> bool:
        return self.state == "Succeeded"

    def raise_for_state(self) -> None:
        if not self.ok:
            raise RuntimeError(f"{self.kind} {self.namespace}/{self.name} ended {self.state}: {self.message}")


# -- API access ------------------------------------------------------------------------------------------------
def api_client_from_config(kubeconfig: str | None = None, context: str | None = None):
    """An ApiClient: in-cluster credentials in a pod (KFP step), else the kubeconfig (KUBECONFIG, ~/.kube/config).

    LaunchError (one sentence) when there is neither."""
    import os

    from kubernetes import client, config

    if kubeconfig is None and context is None:
        try:
            config.load_incluster_config()
            return client.ApiClient()
        except config.ConfigException:
            pass
    configuration = client.Configuration()
    try:
        config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=configuration)
    except (config.ConfigException, OSError, TypeError, ValueError) as err:
        where = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
        raise LaunchError(f"no usable Kubernetes configuration: not inside a cluster, and the kubeconfig {where} "
                          f"could not be loaded ({redact(err)}); pass --kubeconfig or set KUBECONFIG") from None
    return client.ApiClient(configuration)


def in_cluster() -> bool:
    """True inside a pod with a service account (where a KFP step runs)."""
    import os

    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and os.path.isfile(
        "/var/run/secrets/kubernetes.io/serviceaccount/token")


def _host(api_client) -> str:
    return redact(getattr(getattr(api_client, "configuration", None), "host", "?"))


def _status(err: Exception) -> int | None:
    return getattr(err, "status", None) if type(err).__name__ == "ApiException" else None


def _transient(err: Exception) -> bool:
    """Worth retrying: a connection problem, 429, or a 5xx from the API server."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    if isinstance(err, ApiException):
        return not err.status or err.status == 429 or err.status >= 500
    return isinstance(err, (HTTPError, OSError))


def _reason(err: Exception) -> str:
    from kubernetes.client.exceptions import ApiException

    if isinstance(err, ApiException):
        return f"HTTP {err.status} {err.reason or ''}".strip()
    return redact(f"{type(err).__name__}: {err}")[:300]


def _body_message(err: Exception) -> str:
    import json

    try:
        return redact(json.loads(getattr(err, "body", "") or "{}").get("message", ""))[:500]
    except (ValueError, AttributeError):
        return redact(str(getattr(err, "body", "") or ""))[:500]


def call(fn: Callable[[], Any], what: str, api_client, *, api_retry: float, out: TextIO | None = None,
         cancel: threading.Event | None = None) -> Any:
    """`fn()` with retries on transient errors for up to `api_retry` s; ApiUnreachable naming `what` after that.
    Other errors (403, 404, 409, 422, ...) are raised at once for the caller to read."""
    start = time.monotonic()
    delay = 0.2
    said = False
    while True:
        try:
            return fn()
        except Exception as err:  # noqa: BLE001 - classified right below; the rest is re-raised
            if not _transient(err):
                raise
            waited = time.monotonic() - start
            if waited >= api_retry or (cancel is not None and cancel.is_set()):
                raise ApiUnreachable(f"the Kubernetes API at {_host(api_client)} did not answer {what} for "
                                     f"{waited:.0f} s ({_reason(err)})") from None
            if out is not None and not said:
                _say(out, f"API error while trying to {what} ({_reason(err)}); retrying for up to {api_retry:g} s")
                said = True
            time.sleep(min(delay, max(0.0, api_retry - waited)))
            delay = min(delay * 2, 10.0)


def read_configmap(api_client, name: str, namespace: str, *, api_retry: float = 60.0) -> dict[str, str]:
    """The data of a ConfigMap (e.g. `trm-launch`, the settings an overlay installs)."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    core = client.CoreV1Api(api_client)
    try:
        cm = call(lambda: core.read_namespaced_config_map(name, namespace), f"read ConfigMap {namespace}/{name}",
                  api_client, api_retry=api_retry)
    except ApiException as err:
        if err.status == 404:
            raise LaunchError(f"ConfigMap {namespace}/{name} not found: apply an overlay of manifests/ in that "
                              "namespace or drop --configmap") from None
        raise LaunchError(f"cannot read ConfigMap {namespace}/{name}: {_reason(err)} {_body_message(err)}") from None
    return dict(cm.data or {})


def installed_kinds(api_client, *, api_retry: float = 60.0) -> list[Kind]:
    """The job kinds the API server serves (discovery: GET /apis/<group>/<version>), TrainJob first."""
    from kubernetes.client.exceptions import ApiException

    found = []
    for kind in KINDS.values():
        try:
            resources = call(lambda k=kind: api_client.call_api(
                f"/apis/{k.group}/{k.version}", "GET", response_type="object", auth_settings=["BearerToken"],
                _return_http_data_only=True, _preload_content=True), f"discover {kind.api_version}", api_client,
                api_retry=api_retry)
        except ApiException as err:
            if err.status == 404:
                continue
            raise LaunchError(f"cannot read the API discovery of {kind.api_version}: {_reason(err)}") from None
        if any(r.get("name") == kind.plural for r in (resources or {}).get("resources") or []):
            found.append(kind)
    return found


def resolve_kind(api_client, kind: str, *, api_retry: float = 60.0) -> Kind:
    """"auto" -> the installed kind (TrainJob preferred); an explicit kind must be installed. LaunchError else."""
    if kind not in ("auto", *KINDS):
        raise LaunchError(f"kind: expected auto, trainjob or pytorchjob, got {kind!r}")
    found = installed_kinds(api_client, api_retry=api_retry)
    if kind == "auto":
        if not found:
            raise LaunchError(f"the API server at {_host(api_client)} serves neither TrainJob "
                              f"({TRAINJOB.api_version}, Kubeflow Trainer v2) nor PyTorchJob "
                              f"({PYTORCHJOB.api_version}, Training Operator 1.9): install one (docs/kubernetes.md)")
        return found[0]
    if KINDS[kind] not in found:
        other = f"; it serves {found[0].kind} (use {found[0].key} or auto)" if found else ""
        raise LaunchError(f"the API server at {_host(api_client)} has no {KINDS[kind].api_version} "
                          f"{KINDS[kind].plural}: install {KINDS[kind].install}{other}")
    return KINDS[kind]


def access_problems(api_client, kind: Kind, namespace: str, *, api_retry: float = 60.0) -> list[str]:
    """What this identity may not do that the launcher needs (SelfSubjectAccessReview): create/get/list/watch/
    delete the job kind, get/list pods and read pod logs in `namespace`. Empty when all is allowed."""
    from kubernetes import client

    authz = client.AuthorizationV1Api(api_client)
    wanted = [(kind.group, kind.plural, "", verb) for verb in ("create", "get", "list", "watch", "delete")]
    wanted += [("", "pods", "", "get"), ("", "pods", "", "list"), ("", "pods", "log", "get")]
    denied = []
    for group, resource, sub, verb in wanted:
        body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                "spec": {"resourceAttributes": {"namespace": namespace, "verb": verb, "group": group,
                                                "resource": resource, "subresource": sub}}}
        review = call(lambda b=body: authz.create_self_subject_access_review(b),
                      "review access (SelfSubjectAccessReview)", api_client, api_retry=api_retry)
        status = review.status if hasattr(review, "status") else (review or {}).get("status")
        allowed = getattr(status, "allowed", None) if not isinstance(status, dict) else status.get("allowed")
        if not allowed:
            denied.append(f"{verb} {resource}{'/' + sub if sub else ''}"
                          f"{'.' + group if group else ''}")
    return denied


def runtime_missing(api_client, cfg: LaunchConfig, *, api_retry: float = 60.0) -> str:
    """Why the TrainJob's runtime cannot be used ("" when it exists)."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    custom = client.CustomObjectsApi(api_client)
    try:
        if cfg.runtime_kind == "ClusterTrainingRuntime":
            call(lambda: custom.get_cluster_custom_object(tj.GROUP, tj.VERSION, "clustertrainingruntimes",
                                                          cfg.runtime), "read the runtime", api_client,
                 api_retry=api_retry)
        else:
            call(lambda: custom.get_namespaced_custom_object(tj.GROUP, tj.VERSION, cfg.namespace,
                                                             "trainingruntimes", cfg.runtime),
                 "read the runtime", api_client, api_retry=api_retry)
    except ApiException as err:
        where = "" if cfg.runtime_kind == "ClusterTrainingRuntime" else f" in namespace {cfg.namespace}"
        if err.status == 404:
            return (f"{cfg.runtime_kind} {cfg.runtime!r} not found{where}: apply an overlay of manifests/ there "
                    "(it holds the trm-torch TrainingRuntime)")
        return f"cannot read {cfg.runtime_kind} {cfg.runtime!r}{where}: {_reason(err)}"
    return ""


# -- job states ------------------------------------------------------------------------------------------------
def job_state(job: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """PyTorchJob: (state, its condition) from `status.conditions`: a terminal condition that is True wins, else
    the newest True one; "Pending" before the operator has written any."""
    conditions = [c for c in (job.get("status") or {}).get("conditions") or [] if c.get("status") == "True"]
    for kind in ("Succeeded", "Failed"):
        for cond in conditions:
            if cond.get("type") == kind:
                return kind, cond
    if conditions:
        return conditions[-1].get("type", "Unknown"), conditions[-1]
    return "Pending", {}


def trainjob_state(job: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """TrainJob (conditions Complete, Failed, Suspended): Succeeded | Failed | Suspended | Created. Whether it
    runs is not a condition: the launcher reads it from the master pod."""
    conditions = {c.get("type"): c for c in (job.get("status") or {}).get("conditions") or []
                  if c.get("status") == "True"}
    if "Complete" in conditions:
        return "Succeeded", conditions["Complete"]
    if "Failed" in conditions:
        return "Failed", conditions["Failed"]
    if "Suspended" in conditions:
        return "Suspended", conditions["Suspended"]
    return "Created", {}


def _say(out: TextIO, text: str) -> None:
    out.write(f"[trm launch] {redact(text)}\n")
    out.flush()


# -- the master pod --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class PodView:
    pod: str = ""
    started: bool = False  # the trainer container is running or has run
    reason: str = ""  # why it has not started: a waiting reason, Unschedulable, ...
    message: str = ""


def master_view(core, kind: Kind, name: str, namespace: str) -> PodView:
    """The master pod's progress, read from its status (no pod yet: an empty view)."""
    pods = core.list_namespaced_pod(namespace, label_selector=kind.master_selector(name)).items
    if not pods:
        return PodView(reason="NoPod", message="no master pod yet")
    pod = pods[0]
    view = PodView(pod=pod.metadata.name)
    status = pod.status
    for cstatus in (status.container_statuses or []) if status else []:
        if cstatus.name != kind.container:
            continue
        state = cstatus.state
        if state is not None and (state.running or state.terminated):
            view.started = True
            return view
        if (cstatus.restart_count or 0) > 0:
            view.started = True
        if state is not None and state.waiting is not None:
            view.reason, view.message = state.waiting.reason or "Waiting", state.waiting.message or ""
            return view
    for cond in (status.conditions or []) if status else []:
        if cond.type == "PodScheduled" and cond.status == "False":
            view.reason, view.message = cond.reason or "Unschedulable", cond.message or ""
            return view
    view.reason = (status.phase if status and status.phase else "Pending")
    return view


class LogFollower(threading.Thread):
    """Streams the master pod's trainer container log to `out`, one container run after another.

    A stream that drops mid-way is reopened and the bytes already received are skipped, so each line appears once.
    Only whole lines are written (a line cut by a drop waits for its end), so the launcher's own messages never
    land inside a line of the log.
    """

    FINAL_PASSES = 3  # after the job ended: tries to read the last lines when a stream drops

    def __init__(self, core, kind: Kind, name: str, namespace: str, out: TextIO, poll: float):
        super().__init__(name=f"logs-{name}", daemon=True)
        self.core, self.kind, self.job, self.namespace, self.out, self.poll = core, kind, name, namespace, out, poll
        self.stop = threading.Event()
        self.sent: dict[tuple[str, int], int] = {}  # (pod uid, restart count) -> bytes received
        self.partial: dict[tuple[str, int], bytes] = {}  # the received start of a line not yet written
        self.done: set[tuple[str, int]] = set()
        self.drops = 0

    def _container(self):
        pods = self.core.list_namespaced_pod(self.namespace, label_selector=self.kind.master_selector(self.job)).items
        for pod in pods:
            for status in (pod.status.container_statuses or []) if pod.status else []:
                if status.name == self.kind.container:
                    return pod, status
        return None, None

    def _write(self, data: bytes) -> None:
        self.out.write(data.decode("utf-8", errors="replace"))
        self.out.flush()

    def _flush(self, key: tuple[str, int]) -> None:
        """Write what is left of a run's log (its last line may have no newline)."""
        rest = self.partial.pop(key, b"")
        if rest:
            self._write(rest)

    def _stream(self, pod, key: tuple[str, int], previous: bool = False) -> None:
        """Write the log's whole lines from byte `sent[key]` on, counting as it goes (a drop loses nothing,
        repeats nothing)."""
        skip = self.sent.get(key, 0)
        seen = 0
        response = self.core.read_namespaced_pod_log(pod.metadata.name, self.namespace, container=self.kind.container,
                                                     follow=not previous, previous=previous,
                                                     _preload_content=False)
        try:
            for chunk in response.stream(8192):
                start = max(0, skip - seen)
                seen += len(chunk)
                if start < len(chunk):
                    data = self.partial.pop(key, b"") + chunk[start:]
                    end = data.rfind(b"\n") + 1
                    if end:
                        self._write(data[:end])
                    if end < len(data):
                        self.partial[key] = data[end:]
                    self.sent[key] = seen
        finally:
            response.release_conn()

    def _step(self) -> bool:
        """One look at the master container; True when log bytes were written."""
        pod, status = self._container()
        if status is None:
            return False
        restarts = status.restart_count or 0
        uid = pod.metadata.uid
        before = sum(self.sent.values())
        # the run before a restart that we did not see to its end: the kubelet keeps its log as "previous"
        if restarts and (uid, restarts - 1) not in self.done:
            self._stream(pod, (uid, restarts - 1), previous=True)
            self.done.add((uid, restarts - 1))
            self._flush((uid, restarts - 1))
        state = status.state
        key = (uid, restarts)
        if state is None or not (state.running or state.terminated) or key in self.done:
            return sum(self.sent.values()) > before
        self._stream(pod, key)
        pod_after, status_after = self._container()
        if (status_after is None or pod_after.metadata.uid != uid or (status_after.restart_count or 0) != restarts
                or (status_after.state is not None and status_after.state.terminated is not None)):
            self.done.add(key)
            self._flush(key)
        return sum(self.sent.values()) > before

    def run(self) -> None:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        final_passes = 0
        while True:
            final = self.stop.is_set()  # after the job ended: one more pass for the last lines, then stop
            try:
                wrote, dropped = self._step(), False
            except (ApiException, HTTPError, OSError):
                self.drops += 1  # pod gone, container not started yet, stream or connection dropped
                wrote, dropped = False, True
            if final:
                final_passes += 1
                if not dropped or final_passes >= self.FINAL_PASSES:  # a drop in the last pass: read on from there
                    for key in list(self.partial):
                        self._flush(key)
                    return
                continue
            if not wrote:
                self.stop.wait(self.poll)


class JobWatcher(threading.Thread):
    """A watch on the job that sets `wake` on every event, so the follow loop reacts without waiting for its next
    poll. A watch that ends or drops is re-opened after `retry_wait` s; meanwhile the loop keeps polling."""

    def __init__(self, custom, kind: Kind, name: str, namespace: str, wake: threading.Event, out: TextIO,
                 retry_wait: float, window: int = 300):
        super().__init__(name=f"watch-{name}", daemon=True)
        self.custom, self.kind, self.job, self.namespace = custom, kind, name, namespace
        self.wake, self.out, self.retry_wait, self.window = wake, out, retry_wait, window
        self.stop = threading.Event()
        self.opened = 0
        self.events = 0
        self.drops = 0

    def run(self) -> None:
        from kubernetes import watch

        said = False
        while not self.stop.is_set():
            self.opened += 1
            stream = watch.Watch()
            try:
                for _ in stream.stream(self.custom.list_namespaced_custom_object, self.kind.group, self.kind.version,
                                       self.namespace, self.kind.plural, field_selector=f"metadata.name={self.job}",
                                       timeout_seconds=self.window, _request_timeout=(10, self.window + 30)):
                    self.events += 1
                    self.wake.set()
                    if self.stop.is_set():
                        break
                said = False
            except Exception as err:  # noqa: BLE001 - any failure of a watch only means: poll until it is back
                self.drops += 1
                if not said and not self.stop.is_set():
                    _say(self.out, f"watch on {self.kind.kind} {self.namespace}/{self.job} dropped ({_reason(err)}); "
                                   "polling until it is back")
                    said = True
            finally:
                stream.stop()
            self.stop.wait(self.retry_wait)


# -- submit, follow, delete -------------------------------------------------------------------------------------
def delete_job(api_client, kind: Kind, name: str, namespace: str, *, api_retry: float = 60.0,
               out: TextIO | None = None) -> bool:
    """Delete the job (its pods go with it); False when it was already gone. ApiUnreachable/LaunchError else."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    custom = client.CustomObjectsApi(api_client)
    try:
        call(lambda: custom.delete_namespaced_custom_object(kind.group, kind.version, namespace, kind.plural, name,
                                                            propagation_policy="Background"),
             f"delete {kind.kind} {namespace}/{name}", api_client, api_retry=api_retry, out=out)
    except ApiException as err:
        if err.status == 404:
            return False
        raise LaunchError(f"cannot delete {kind.kind} {namespace}/{name}: {_reason(err)} {_body_message(err)}") \
            from None
    return True


def _get(custom, kind: Kind, name: str, namespace: str):
    return custom.get_namespaced_custom_object(kind.group, kind.version, namespace, kind.plural, name)


def _wait_gone(api_client, kind: Kind, name: str, namespace: str, *, api_retry: float, seconds: float = 300.0,
               poll: float = 1.0) -> None:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    custom = client.CustomObjectsApi(api_client)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            call(lambda: _get(custom, kind, name, namespace), f"read {kind.kind} {namespace}/{name}", api_client,
                 api_retry=api_retry)
        except ApiException as err:
            if err.status == 404:
                return
            raise
        time.sleep(poll)
    raise LaunchError(f"{kind.kind} {namespace}/{name} was deleted but is still there after {seconds:g} s")


def submit(api_client, kind: Kind, job: Mapping[str, Any], *, api_retry: float = 60.0,
           out: TextIO | None = None) -> str:
    """Create the job, or adopt an existing one of the same run. Returns "" (created), "running", "succeeded" or
    "failed -> resubmitted". LaunchError for a refusal or a job of another run; ApiUnreachable."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    out = out or sys.stdout
    meta = job["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    where = f"{kind.kind} {namespace}/{name}"
    custom = client.CustomObjectsApi(api_client)

    def create():
        return call(lambda: custom.create_namespaced_custom_object(kind.group, kind.version, namespace, kind.plural,
                                                                   dict(job)),
                    f"create {where}", api_client, api_retry=api_retry, out=out)

    try:
        create()
        return ""
    except ApiException as err:
        if err.status == 404:
            detail = _body_message(err)
            if "namespace" in detail.lower():
                raise LaunchError(f"cannot create {where}: {detail}") from None
            raise LaunchError(f"the API server has no {kind.api_version} {kind.plural}: install {kind.install}") \
                from None
        if err.status == 403:
            raise LaunchError(f"the API server refused to create {where} (403 Forbidden): the service account needs "
                              f"the Role trm-launcher from manifests/base/rbac.yaml ({_body_message(err)})") from None
        if err.status != 409:
            raise LaunchError(f"the API server rejected {where}: {_reason(err)} {_body_message(err)}") from None
    # 409: a job of that name exists. Ours (same run, or our own create whose reply was lost)? Then adopt it.
    try:
        existing = call(lambda: _get(custom, kind, name, namespace), f"read {where}", api_client, api_retry=api_retry,
                        out=out)
    except ApiException as err:
        if err.status == 404:  # deleted in between
            create()
            return ""
        raise LaunchError(f"cannot read the existing {where}: {_reason(err)}") from None
    labels = (existing.get("metadata") or {}).get("labels") or {}
    annotations = (existing.get("metadata") or {}).get("annotations") or {}
    run_id = (meta.get("labels") or {}).get(RUN_ID_LABEL)
    launch_id = (meta.get("annotations") or {}).get(LAUNCH_ID_ANNOTATION)
    same_run = bool(run_id) and labels.get(RUN_ID_LABEL) == run_id
    same_launch = bool(launch_id) and annotations.get(LAUNCH_ID_ANNOTATION) == launch_id
    if not (same_run or same_launch):
        owner = labels.get(RUN_ID_LABEL)
        whose = f"KFP run {owner}" if owner else "no KFP run (no run-id label)"
        raise LaunchError(f"{where} already exists and belongs to {whose}, not to this run: delete it "
                          f"(kubectl delete {kind.kind.lower()} -n {namespace} {name}) or pick another name")
    if same_launch:
        return ""  # our own create got through although its reply was lost
    state, _ = kind.state(existing)
    if state == "Failed":
        _say(out, f"{where} of this run exists and Failed: deleting it and submitting again")
        delete_job(api_client, kind, name, namespace, api_retry=api_retry, out=out)
        _wait_gone(api_client, kind, name, namespace, api_retry=api_retry)
        create()
        return "failed -> resubmitted"
    adopted = "succeeded" if state == "Succeeded" else "running"
    _say(out, f"{where} of this run exists ({state}): adopting it instead of submitting a second one")
    return adopted


def follow(api_client, kind: Kind | str, name: str, namespace: str, *, timeout: float | None = None,
           poll_interval: float = 10.0, pending_timeout: float = 0, image_grace: float = 120.0,
           api_retry: float = 300.0, logs: bool = True, watch: bool = True, out: TextIO | None = None,
           cancel: threading.Event | None = None, wake: threading.Event | None = None) -> JobResult:
    """Follow the job until it ends (see the module docstring); never raises for the job's outcome."""
    from kubernetes import client

    kind = KINDS[kind] if isinstance(kind, str) else kind
    out = out or sys.stdout
    cancel = cancel or threading.Event()
    wake = wake or threading.Event()
    custom, core = client.CustomObjectsApi(api_client), client.CoreV1Api(api_client)
    where = f"{kind.kind} {namespace}/{name}"
    follower = LogFollower(core, kind, name, namespace, out, poll_interval) if logs else None
    watcher = JobWatcher(custom, kind, name, namespace, wake, out, retry_wait=min(poll_interval, 2.0)) if watch \
        else None
    for thread in (follower, watcher):
        if thread:
            thread.start()
    start = time.monotonic()
    deadline = None if timeout is None else start + timeout
    last = None
    conditions: list[dict[str, Any]] = []
    started = False
    image_error_since: float | None = None
    unreachable_since: float | None = None
    view = PodView()
    result: JobResult | None = None

    def end(state: str, message: str) -> JobResult:
        return JobResult(name, namespace, state, message, conditions, kind.kind)

    try:
        while result is None:
            if cancel.is_set():
                result = end("Cancelled", "cancelled by signal or caller")
                break
            now = time.monotonic()
            try:
                job = _get(custom, kind, name, namespace)
                unreachable_since = None
            except Exception as err:  # noqa: BLE001 - sorted below
                job = None
                if _status(err) == 404:
                    result = end("Failed", f"the {kind.kind} disappeared (deleted by someone else)")
                    break
                if not _transient(err):
                    result = end("Failed", f"the API server refused to read the {kind.kind}: {_reason(err)} "
                                           f"{_body_message(err)}")
                    break
                if unreachable_since is None:
                    unreachable_since = now
                    _say(out, f"API error while following {where} ({_reason(err)}); retrying for up to "
                              f"{api_retry:g} s")
                elif now - unreachable_since >= api_retry:
                    result = end("Unreachable", f"the Kubernetes API at {_host(api_client)} did not answer for "
                                                f"{now - unreachable_since:.0f} s ({_reason(err)})")
                    break
            if job is not None:
                conditions = list((job.get("status") or {}).get("conditions") or [])
                state, cond = kind.state(job)
                if state not in ("Succeeded", "Failed"):
                    try:
                        view = master_view(core, kind, name, namespace)
                    except Exception as err:  # noqa: BLE001 - the pod is extra information; the job decides
                        if not _transient(err) and _status(err) not in (403, 404):
                            raise
                    started = started or view.started
                    if kind is TRAINJOB and state == "Created" and started:
                        state = "Running"
                if (state, cond.get("reason"), view.reason if not started else "") != last:
                    last = (state, cond.get("reason"), view.reason if not started else "")
                    detail = f" ({cond.get('reason')}: {cond.get('message')})" if cond.get("reason") else ""
                    if not started and view.reason and state not in ("Succeeded", "Failed"):
                        detail += f" [master pod {view.pod or '-'}: {view.reason}" + (
                            f": {view.message}" if view.message else "") + "]"
                    _say(out, f"{kind.kind.lower()} {namespace}/{name}: {state}{detail}")
                if state in ("Succeeded", "Failed"):
                    result = end(state, cond.get("message", "") or cond.get("reason", ""))
                    break
                if not started:
                    if view.reason in IMAGE_ERRORS:
                        image_error_since = image_error_since if image_error_since is not None else now
                        if now - image_error_since >= image_grace:
                            result = end("Stuck", f"master pod {view.pod}: {view.reason}: {view.message}".rstrip(": "))
                            break
                    else:
                        image_error_since = None
                    if pending_timeout and now - start >= pending_timeout:
                        why = f"{view.reason}: {view.message}".rstrip(": ") if view.reason else state
                        result = end("Stuck", f"not started after {pending_timeout:g} s ({why})")
                        break
            if deadline is not None and time.monotonic() >= deadline:
                result = end("Timeout", f"not finished after {timeout:g} s")
                break
            _pause(poll_interval if deadline is None else max(0.0, min(poll_interval, deadline - time.monotonic())),
                   wake, cancel)
    finally:
        if watcher:
            watcher.stop.set()
        if follower:
            follower.stop.set()
            # a finished container closes its stream by itself; give it a moment to deliver the last lines
            follower.join(timeout=30.0 if result and result.state in ("Succeeded", "Failed") else 0.5)
    return result


def _pause(seconds: float, wake: threading.Event, cancel: threading.Event) -> None:
    """Sleep up to `seconds`, returning early when the watch wakes us or on cancel."""
    end = time.monotonic() + seconds
    while not cancel.is_set() and not wake.is_set():
        left = end - time.monotonic()
        if left <= 0:
            break
        wake.wait(min(left, 0.2))
    wake.clear()


class _Signals:
    """Turn SIGINT/SIGTERM into `cancel.set()` while active (main thread only; a no-op elsewhere)."""

    def __init__(self, cancel: threading.Event, enabled: bool):
        self.cancel, self.enabled, self.saved = cancel, enabled, {}

    def __enter__(self):
        if self.enabled and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.saved[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):  # noqa: ARG002
        self.cancel.set()

    def __exit__(self, *exc):
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)


def _cleanup(api_client, kind: Kind, result: JobResult, *, api_retry: float, out: TextIO) -> None:
    """Delete the job; any failure is recorded and reported, never raised (it must not mask the result)."""
    where = f"{kind.kind} {result.namespace}/{result.name}"
    try:
        result.deleted = delete_job(api_client, kind, result.name, result.namespace, api_retry=api_retry, out=out)
        _say(out, f"deleted {kind.kind.lower()} {result.namespace}/{result.name}" if result.deleted
             else f"{kind.kind.lower()} {result.namespace}/{result.name} was already gone")
    except Exception as err:  # noqa: BLE001 - reported below; the job's own result stands
        result.cleanup_error = redact(str(err) if isinstance(err, LaunchError) else _reason(err))
        _say(out, f"could not delete {where}: {result.cleanup_error}. Delete it with `kubectl delete "
                  f"{kind.kind.lower()} -n {result.namespace} {result.name}`; until then ttlSecondsAfterFinished, "
                  "activeDeadlineSeconds and the pipeline's cleanup step bound it")


def run_job(config: LaunchConfig, kind: str = "auto", *, api_client=None, timeout: float | None = None,
            poll_interval: float = 10.0, image_grace: float = 120.0, api_retry: float = 300.0, logs: bool = True,
            watch: bool = True, out: TextIO | None = None, cancel: threading.Event | None = None, keep: bool = False,
            handle_signals: bool = True, on_submitted: Callable[[dict[str, Any]], None] | None = None) -> JobResult:
    """Submit `config` as a job of `kind`, follow it to the end, delete it (unless keep), return the result.

    `api_client` defaults to `api_client_from_config()`. Never raises for the job's outcome (check
    `result.state` / `result.exit_code`, or `result.raise_for_state()`); LaunchError when the job cannot be
    submitted at all (refused, kind not installed, a job of another run in the way)."""
    out = out or sys.stdout
    api_client = api_client or api_client_from_config()
    cancel = cancel or threading.Event()
    wake = threading.Event()
    chosen = resolve_kind(api_client, kind, api_retry=api_retry) if kind == "auto" else KINDS.get(kind)
    if chosen is None:
        raise LaunchError(f"kind: expected auto, trainjob or pytorchjob, got {kind!r}")
    job = chosen.build(config)
    job["metadata"].setdefault("annotations", {})[LAUNCH_ID_ANNOTATION] = uuid.uuid4().hex
    name, namespace = config.name, config.namespace
    result: JobResult | None = None
    submitted = False

    with _Signals(cancel, handle_signals):
        try:
            adopted = submit(api_client, chosen, job, api_retry=api_retry, out=out)
            submitted = True
        except ApiUnreachable as err:
            result = JobResult(name, namespace, "Unreachable", str(err), kind=chosen.kind)
            adopted = ""
        if submitted:
            if not adopted:
                _say(out, f"submitted {chosen.kind.lower()} {namespace}/{name}: {config.nnodes} node(s) x "
                          f"{config.procs_per_node} process(es), image {config.image}")
            if on_submitted:
                on_submitted(job)
            try:
                result = follow(api_client, chosen, name, namespace, timeout=timeout, poll_interval=poll_interval,
                                pending_timeout=config.pending_timeout, image_grace=image_grace, api_retry=api_retry,
                                logs=logs, watch=watch, out=out, cancel=cancel, wake=wake)
                result.adopted = adopted
            finally:
                if result is None:  # follow itself failed: still clean up, then let the error through
                    if not keep:
                        _cleanup(api_client, chosen, JobResult(name, namespace, "Failed", kind=chosen.kind),
                                 api_retry=api_retry, out=out)
        if not keep:
            _cleanup(api_client, chosen, result, api_retry=api_retry, out=out)
    _say(out, f"{chosen.kind.lower()} {namespace}/{name} ended {result.state}"
         + (f": {result.message}" if result.message else ""))
    return result


def run_pytorchjob(config: LaunchConfig, **kwargs) -> JobResult:
    """`run_job(config, "pytorchjob", ...)` (the name the KFP step used before TrainJobs)."""
    return run_job(config, "pytorchjob", **kwargs)


def delete_run_jobs(api_client, namespace: str, run_id: str, *, api_retry: float = 60.0,
                    out: TextIO | None = None, kinds: list[Kind] | None = None) -> list[str]:
    """Delete every job of the KFP run `run_id` in `namespace` (label trm-pipeline.org/kfp-run-id), of each
    installed kind; returns "Kind/name" of those deleted. The pipeline's exit handler calls this."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    out = out or sys.stdout
    custom = client.CustomObjectsApi(api_client)
    deleted = []
    for kind in kinds if kinds is not None else installed_kinds(api_client, api_retry=api_retry):
        try:
            listed = call(lambda k=kind: custom.list_namespaced_custom_object(
                k.group, k.version, namespace, k.plural, label_selector=f"{RUN_ID_LABEL}={run_id}"),
                f"list {kind.plural}", api_client, api_retry=api_retry, out=out)
        except ApiException as err:
            raise LaunchError(f"cannot list {kind.plural} in {namespace}: {_reason(err)}") from None
        for item in listed.get("items") or []:
            job_name = item["metadata"]["name"]
            if delete_job(api_client, kind, job_name, namespace, api_retry=api_retry, out=out):
                deleted.append(f"{kind.kind}/{job_name}")
                _say(out, f"deleted {kind.kind.lower()} {namespace}/{job_name} of run {run_id}")
    return deleted
