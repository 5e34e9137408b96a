"""Submit a PyTorchJob, follow it to the end, stream the master's log, and delete it: with the `kubernetes` client.

    from trm.launch.pytorchjob import LaunchConfig
    from trm.launch.client import run_pytorchjob, api_client_from_config
    result = run_pytorchjob(LaunchConfig(name="trm-try1", image=..., train_args=[...]), timeout=48 * 3600)
    result.state        # "Succeeded" | "Failed" | "Timeout" | "Cancelled"
    result.exit_code    # 0 only for Succeeded; see EXIT_CODES
    result.raise_for_state()   # RuntimeError unless Succeeded (for the KFP train component)

The job's `status.conditions` (Created, Running, Restarting, Succeeded, Failed, Suspended) are polled and
each change is reported; the pod `<name>-master-0` (labels `training.kubeflow.org/job-name`,
`training.kubeflow.org/replica-type=master`) has its `pytorch` container log followed in a thread, again after
each container restart. The job ends as Failed when its Failed condition is True or it vanishes, as Timeout
when `timeout` seconds pass, as Cancelled on SIGINT/SIGTERM or when `cancel` is set. In every case the job is
deleted before returning (unless keep=True), so a cancelled KFP run leaves no pods behind.
"""

from __future__ import annotations

import dataclasses
import signal
import sys
import threading
import time
from typing import Any, Callable, Mapping, TextIO

from trm.launch.pytorchjob import (CONTAINER, GROUP, JOB_NAME_LABEL, PLURAL, REPLICA_TYPE_LABEL, VERSION,
                                   LaunchConfig, build_pytorchjob)

TERMINAL = ("Succeeded", "Failed")
EXIT_CODES = {"Succeeded": 0, "Failed": 1, "Timeout": 124, "Cancelled": 130}


@dataclasses.dataclass
class JobResult:
    name: str
    namespace: str
    state: str  # Succeeded | Failed | Timeout | Cancelled
    message: str = ""
    conditions: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    deleted: bool = False

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.state]

    @property
    def ok(self) -> bool:
        return self.state == "Succeeded"

    def raise_for_state(self) -> None:
        if not self.ok:
            raise RuntimeError(f"PyTorchJob {self.namespace}/{self.name} ended {self.state}: {self.message}")


def api_client_from_config(kubeconfig: str | None = None, context: str | None = None):
    """An ApiClient: in-cluster credentials in a pod (KFP step), else the kubeconfig (KUBECONFIG, ~/.kube/config)."""
    from kubernetes import client, config

    if kubeconfig is None and context is None:
        try:
            config.load_incluster_config()
            return client.ApiClient()
        except config.ConfigException:
            pass
    configuration = client.Configuration()
    config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=configuration)
    return client.ApiClient(configuration)


def read_configmap(api_client, name: str, namespace: str) -> dict[str, str]:
    """The data of a ConfigMap (e.g. `trm-launch`, the settings the gpu overlay installs)."""
    from kubernetes import client

    cm = client.CoreV1Api(api_client).read_namespaced_config_map(name, namespace)
    return dict(cm.data or {})


def job_state(job: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """(state, its condition) from `status.conditions`: a terminal condition that is True wins, else the
    newest True one; "Pending" before the operator has written any."""
    conditions = [c for c in (job.get("status") or {}).get("conditions") or [] if c.get("status") == "True"]
    for kind in TERMINAL:
        for cond in conditions:
            if cond.get("type") == kind:
                return kind, cond
    if conditions:
        return conditions[-1].get("type", "Unknown"), conditions[-1]
    return "Pending", {}


def _say(out: TextIO, text: str) -> None:
    out.write(f"[trm launch] {text}\n")
    out.flush()


class LogFollower(threading.Thread):
    """Streams the master pod's `pytorch` container log to `out`, one container run after another."""

    def __init__(self, core, name: str, namespace: str, out: TextIO, poll: float):
        super().__init__(name=f"logs-{name}", daemon=True)
        self.core, self.job, self.namespace, self.out, self.poll = core, name, namespace, out, poll
        self.stop = threading.Event()
        self.sent: dict[tuple[str, int], int] = {}  # (pod uid, restart count) -> bytes written
        self.done: set[tuple[str, int]] = set()

    def _container(self):
        selector = f"{JOB_NAME_LABEL}={self.job},{REPLICA_TYPE_LABEL}=master"
        pods = self.core.list_namespaced_pod(self.namespace, label_selector=selector).items
        for pod in pods:
            for status in (pod.status.container_statuses or []) if pod.status else []:
                if status.name == CONTAINER:
                    return pod, status
        return None, None

    def _stream(self, pod, key: tuple[str, int], previous: bool = False) -> int:
        """Write the log from byte `sent[key]` on; returns the new byte count."""
        skip = self.sent.get(key, 0)
        seen = 0
        response = self.core.read_namespaced_pod_log(pod.metadata.name, self.namespace, container=CONTAINER,
                                                     follow=not previous, previous=previous,
                                                     _preload_content=False)
        try:
            for chunk in response.stream(8192):
                start = max(0, skip - seen)
                seen += len(chunk)
                if start < len(chunk):
                    self.out.write(chunk[start:].decode("utf-8", errors="replace"))
                    self.out.flush()
        finally:
            response.release_conn()
        return max(seen, skip)

    def _step(self) -> bool:
        """One look at the master container; True when log bytes were written."""
        pod, status = self._container()
        if status is None:
            return False
        restarts = status.restart_count or 0
        uid = pod.metadata.uid
        wrote = False
        # the run before a restart that we did not see to its end: the kubelet keeps its log as "previous"
        if restarts and (uid, restarts - 1) not in self.done:
            before = self.sent.get((uid, restarts - 1), 0)
            self.sent[(uid, restarts - 1)] = self._stream(pod, (uid, restarts - 1), previous=True)
            self.done.add((uid, restarts - 1))
            wrote = self.sent[(uid, restarts - 1)] > before
        state = status.state
        key = (uid, restarts)
        if state is None or not (state.running or state.terminated) or key in self.done:
            return wrote
        before = self.sent.get(key, 0)
        self.sent[key] = self._stream(pod, key)
        pod_after, status_after = self._container()
        if (status_after is None or pod_after.metadata.uid != uid or (status_after.restart_count or 0) != restarts
                or (status_after.state is not None and status_after.state.terminated is not None)):
            self.done.add(key)
        return wrote or self.sent[key] > before

    def run(self) -> None:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        while True:
            final = self.stop.is_set()  # after the job ended: one more pass for the last lines, then stop
            try:
                wrote = self._step()
            except (ApiException, HTTPError, OSError):
                wrote = False  # pod gone, container not started yet, connection dropped
            if final:
                return
            if not wrote:
                self.stop.wait(self.poll)


def delete_job(api_client, name: str, namespace: str) -> bool:
    """Delete the PyTorchJob (its pods go with it); False when it was already gone."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    try:
        client.CustomObjectsApi(api_client).delete_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, propagation_policy="Background")
    except ApiException as err:
        if err.status == 404:
            return False
        raise
    return True


def submit(api_client, job: Mapping[str, Any]) -> dict[str, Any]:
    """Create the PyTorchJob; a clear error when one of that name exists."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    meta = job["metadata"]
    try:
        return client.CustomObjectsApi(api_client).create_namespaced_custom_object(
            GROUP, VERSION, meta["namespace"], PLURAL, dict(job))
    except ApiException as err:
        if err.status == 409:
            raise ValueError(f"PyTorchJob {meta['namespace']}/{meta['name']} already exists: delete it "
                             f"(kubectl delete pytorchjob -n {meta['namespace']} {meta['name']}) or pick "
                             "another name") from None
        if err.status == 404:
            raise ValueError("the API server has no kubeflow.org/v1 pytorchjobs: install the Training "
                             "Operator (docs/kubernetes.md)") from None
        raise


def follow(api_client, name: str, namespace: str, *, timeout: float | None = None, poll_interval: float = 10.0,
           logs: bool = True, out: TextIO | None = None, cancel: threading.Event | None = None) -> JobResult:
    """Poll the job until a terminal condition, the timeout, or `cancel`; stream the master log meanwhile."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    out = out or sys.stdout
    cancel = cancel or threading.Event()
    custom = client.CustomObjectsApi(api_client)
    follower = LogFollower(client.CoreV1Api(api_client), name, namespace, out, poll_interval) if logs else None
    if follower:
        follower.start()
    deadline = None if timeout is None else time.monotonic() + timeout
    last = None
    conditions: list[dict[str, Any]] = []
    result: JobResult | None = None
    try:
        while result is None:
            if cancel.is_set():
                result = JobResult(name, namespace, "Cancelled", "cancelled by signal or caller", conditions)
                break
            try:
                job = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
            except ApiException as err:
                if err.status == 404:
                    result = JobResult(name, namespace, "Failed", "the job disappeared (deleted by someone else)",
                                       conditions)
                    break
                if err.status < 500 and err.status != 429:
                    raise
                _say(out, f"API error {err.status} while following {name}; retrying")
                job = None
            except HTTPError as err:
                _say(out, f"connection error while following {name}: {err}; retrying")
                job = None
            if job is not None:
                conditions = list((job.get("status") or {}).get("conditions") or [])
                state, cond = job_state(job)
                if (state, cond.get("reason")) != last:
                    last = (state, cond.get("reason"))
                    detail = f" ({cond.get('reason')}: {cond.get('message')})" if cond.get("reason") else ""
                    _say(out, f"pytorchjob {namespace}/{name}: {state}{detail}")
                if state in TERMINAL:
                    result = JobResult(name, namespace, state, cond.get("message", ""), conditions)
                    break
            if deadline is not None and time.monotonic() >= deadline:
                result = JobResult(name, namespace, "Timeout", f"not finished after {timeout:g} s", conditions)
                break
            wait = poll_interval if deadline is None else max(0.0, min(poll_interval, deadline - time.monotonic()))
            cancel.wait(wait)
    finally:
        if follower:
            follower.stop.set()
            # a finished container closes its stream by itself; give it a moment to deliver the last lines
            follower.join(timeout=30.0 if result and result.state in TERMINAL else 1.0)
    return result


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


def run_pytorchjob(config: LaunchConfig, *, api_client=None, timeout: float | None = None,
                   poll_interval: float = 10.0, logs: bool = True, out: TextIO | None = None,
                   cancel: threading.Event | None = None, keep: bool = False, handle_signals: bool = True,
                   on_submitted: Callable[[dict[str, Any]], None] | None = None) -> JobResult:
    """Submit `config` as a PyTorchJob, follow it to the end, delete it (unless keep), return the result.

    `api_client` defaults to `api_client_from_config()`. Never raises for a failed job: check
    `result.state` / `result.exit_code` or call `result.raise_for_state()`.
    """
    out = out or sys.stdout
    api_client = api_client or api_client_from_config()
    cancel = cancel or threading.Event()
    job = build_pytorchjob(config)
    name, namespace = config.name, config.namespace
    with _Signals(cancel, handle_signals):
        submit(api_client, job)
        _say(out, f"submitted pytorchjob {namespace}/{name}: {config.nnodes} node(s) x "
                  f"{config.procs_per_node} process(es), image {config.image}")
        if on_submitted:
            on_submitted(job)
        result = None
        try:
            result = follow(api_client, name, namespace, timeout=timeout, poll_interval=poll_interval, logs=logs,
                            out=out, cancel=cancel)
        finally:
            if not keep:
                deleted = delete_job(api_client, name, namespace)
                if result is not None:
                    result.deleted = deleted
                _say(out, f"deleted pytorchjob {namespace}/{name}" if deleted
                     else f"pytorchjob {namespace}/{name} was already gone")
    _say(out, f"pytorchjob {namespace}/{name} ended {result.state}" + (f": {result.message}" if result.message
                                                                        else ""))
    return result
