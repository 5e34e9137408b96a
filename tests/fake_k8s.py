"""A FAKE Kubernetes API server for the launcher's tests: HTTP on 127.0.0.1, only the endpoints trm.launch uses.

    with FakeKubernetes(["Created", "Running", "Succeeded"], logs={0: "step 1\\n"}) as fake:
        api = fake.api_client()            # a kubernetes.client.ApiClient pointed at the fake
        fake.kubeconfig(path)              # or a kubeconfig file for `trm launch submit --kubeconfig`

It is not Kubernetes. It plays a Training Operator (PyTorchJob, kubeflow.org/v1) and Kubeflow Trainer v2
(TrainJob, trainer.kubeflow.org/v1alpha1) that move each submitted job through a scripted list of states, one
state per GET of the job (the last state repeats), and the job's master pod whose trainer container follows it:

    Created -> pod Pending, container waiting (ContainerCreating)      Running -> container running
    Unschedulable -> pod Pending, PodScheduled=False (Unschedulable)   Restarting -> waiting, restartCount + 1
    ImagePullBackOff / ErrImagePull -> container waiting with it        Succeeded -> terminated, exit 0
    Suspended -> no pod                                                Failed -> terminated, exit 1

Job conditions are the controllers': PyTorchJob Created/Running/Restarting/Succeeded/Failed/Suspended
(accumulating, as the operator's do); TrainJob only Complete, Failed and Suspended (whether it runs is read from
its pods, as for the real one).

Endpoints: discovery GET /apis/{group}/{version}; POST/GET/DELETE and LIST (labelSelector, fieldSelector, and
watch=true) of pytorchjobs and trainjobs; GET trainingruntimes/{name}; GET pods?labelSelector=...; GET
pods/{pod}/log (follow=true holds the stream open while the container runs, as a kubelet does, sending text added
with `append_log` and closing when the container stops); GET configmaps/{name}; POST selfsubjectaccessreviews.
A POSTed job is checked by `validate` (a callable returning a list of problems) and refused with 422 like an API
server would. Every request is recorded in `requests`.

Faults a test can inject: `inject(status, method, path, times)` answers matching requests with 5xx/429;
`dark = True` makes every request end without an answer (an unreachable API server) until set back;
`drop_watches = n` breaks the next n watch streams mid-way; `lose_create_reply = True` creates the next job
but never answers (the client retries and meets its own job: 409); `drop_logs_after = b` breaks the next log stream
after b bytes; `vanish(ns, name)` deletes a job behind the launcher's back; `set_state(ns, name, state)` moves a
job at once (and pushes a watch event; GETs do not, so tests pace the script by polls); `denied` holds
(verb, resource) pairs the access review refuses.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, urlparse

STATES = ("Created", "Unschedulable", "ImagePullBackOff", "ErrImagePull", "Running", "Restarting", "Succeeded",
          "Failed", "Suspended")
KINDS = {  # plural -> (group, version, kind)
    "pytorchjobs": ("kubeflow.org", "v1", "PyTorchJob"),
    "trainjobs": ("trainer.kubeflow.org", "v1alpha1", "TrainJob"),
}
_JOB = re.compile(r"^/apis/(kubeflow\.org|trainer\.kubeflow\.org)/(v1|v1alpha1)/namespaces/([^/]+)/"
                  r"(pytorchjobs|trainjobs)(?:/([^/]+))?$")
_RUNTIME = re.compile(r"^/apis/trainer\.kubeflow\.org/v1alpha1/namespaces/([^/]+)/trainingruntimes/([^/]+)$")
_DISCOVERY = re.compile(r"^/apis/([^/]+)/([^/]+)$")
_PODS = re.compile(r"^/api/v1/namespaces/([^/]+)/pods$")
_LOG = re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)/log$")
_CM = re.compile(r"^/api/v1/namespaces/([^/]+)/configmaps/([^/]+)$")
_SSAR = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "reason": reason,
            "message": message}


class FakeJob:
    """One job object and where it is in its script."""

    def __init__(self, plural: str, body: dict[str, Any], scenario: list[str], state: str | None = None):
        self.plural, self.body, self.scenario = plural, body, list(scenario)
        self.gets = 0
        self.restarts = 0
        self.state: str | None = None
        self.forced = False
        self.version = 1
        if state is not None:
            self.move(state)
            self.forced = True

    @property
    def name(self) -> str:
        return self.body["metadata"]["name"]

    @property
    def namespace(self) -> str:
        return self.body["metadata"]["namespace"]

    def advance(self) -> None:
        """One GET: the next scripted state (unless a test forced one)."""
        if self.forced:
            return
        state = self.scenario[min(self.gets, len(self.scenario) - 1)]
        self.gets += 1
        self.move(state)

    def move(self, state: str) -> None:
        if state == self.state:
            return
        if state == "Restarting":
            self.restarts += 1
        self.state = state
        self.version += 1
        self.body["metadata"]["resourceVersion"] = str(self.version)
        status = self.body.setdefault("status", {})
        conditions = status.setdefault("conditions", [])
        if self.plural == "pytorchjobs":
            cond_type = {"Unschedulable": "Created", "ImagePullBackOff": "Created", "ErrImagePull": "Created"}.get(
                state, state)
            conditions[:] = [c for c in conditions if c["type"] != cond_type]  # the operator keeps one per type
            for cond in conditions:
                if cond["type"] in ("Running", "Restarting") and cond_type != cond["type"]:
                    cond["status"] = "False"
            reason = {"Failed": "PyTorchJobFailed", "Succeeded": "PyTorchJobSucceeded"}.get(cond_type,
                                                                                          f"PyTorchJob{cond_type}")
            message = {"Failed": "PyTorchJob trm is failed because 1 Master replica(s) failed."}.get(
                cond_type, f"PyTorchJob {self.name} is {cond_type.lower()}.")
            conditions.append({"type": cond_type, "status": "True", "reason": reason, "message": message,
                               "lastUpdateTime": _now(), "lastTransitionTime": _now()})
        else:
            found = {"Succeeded": ("Complete", "AllJobsCompleted", "jobset completed successfully"),
                     "Failed": ("Failed", "FailedJobs", "jobset failed due to one or more job failures"),
                     "Suspended": ("Suspended", "Suspended", "TrainJob is suspended")}.get(state)
            conditions[:] = [c for c in conditions if c["type"] != "Suspended"]
            if found:
                conditions.append({"type": found[0], "status": "True", "reason": found[1], "message": found[2],
                                   "lastTransitionTime": _now()})
            if not conditions:
                status.pop("conditions")

    def master_pod(self) -> dict[str, Any] | None:
        if self.state is None or self.state == "Suspended":
            return None
        waiting = {"Created": "ContainerCreating", "ImagePullBackOff": "ImagePullBackOff",
                   "ErrImagePull": "ErrImagePull", "Restarting": "CrashLoopBackOff"}
        spec = self.body.get("spec", {})
        master = ((spec.get("pytorchReplicaSpecs") or {}).get("Master") or {}).get("template", {})
        image = ((spec.get("trainer") or {}).get("image")
                 or ((master.get("spec") or {}).get("containers") or [{}])[0].get("image", "trainer"))
        if self.state in waiting:
            message = f'Back-off pulling image "{image}"' if "Image" in self.state else ""
            container_state: dict[str, Any] = {"waiting": {"reason": waiting[self.state], "message": message}}
        elif self.state == "Running":
            container_state = {"running": {"startedAt": _now()}}
        elif self.state in ("Succeeded", "Failed"):
            container_state = {"terminated": {"exitCode": 0 if self.state == "Succeeded" else 1,
                                              "reason": "Completed" if self.state == "Succeeded" else "Error"}}
        else:
            container_state = None
        phase = {"Succeeded": "Succeeded", "Failed": "Failed", "Running": "Running",
                 "Restarting": "Running"}.get(self.state, "Pending")
        if self.plural == "pytorchjobs":
            pod_name, container = f"{self.name}-master-0", "pytorch"
            labels = {"training.kubeflow.org/job-name": self.name, "training.kubeflow.org/replica-type": "master",
                      "training.kubeflow.org/replica-index": "0"}
        else:
            pod_name, container = f"{self.name}-node-0-0-x7k2p", "node"
            labels = {"jobset.sigs.k8s.io/jobset-name": self.name, "jobset.sigs.k8s.io/replicatedjob-name": "node",
                      "batch.kubernetes.io/job-completion-index": "0", "jobset.sigs.k8s.io/job-index": "0"}
        status: dict[str, Any] = {"phase": phase}
        if self.state == "Unschedulable":
            status["conditions"] = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                     "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}]
        else:
            status["containerStatuses"] = [{"name": container, "image": image, "imageID": "",
                                            "ready": self.state == "Running", "restartCount": self.restarts,
                                            "state": container_state}]
        return {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod_name, "namespace": self.namespace, "uid": f"uid-{pod_name}",
                             "labels": labels},
                "status": status}

    @property
    def running(self) -> bool:
        return self.state in ("Running",)


class FakeKubernetes:
    """The fake API server (a context manager). `scenario` lists each submitted job's states, one per GET."""

    def __init__(self, scenario: list[str], logs: dict[int, str] | None = None,
                 validate: Callable[[dict], list[str]] | None = None,
                 configmaps: dict[str, dict[str, str]] | None = None,
                 kinds: tuple[str, ...] = ("pytorchjobs", "trainjobs"), runtimes: tuple[str, ...] = ("trm-torch",)):
        unknown = [s for s in scenario if s not in STATES]
        if unknown or not scenario:
            raise ValueError(f"scenario states must be among {STATES}, got {scenario}")
        self.scenario = list(scenario)
        self.logs = {k: v for k, v in (logs or {}).items()}
        self.validate = validate
        self.configmaps = configmaps or {}
        self.kinds = set(kinds)
        self.runtimes = set(runtimes)
        self.lock = threading.Condition()
        self.objects: dict[tuple[str, str, str], FakeJob] = {}  # (plural, namespace, name)
        self.created: list[dict[str, Any]] = []
        self.deleted: list[tuple[str, str]] = []
        self.requests: list[tuple[str, str]] = []
        self.faults: list[dict[str, Any]] = []
        self.denied: set[tuple[str, str]] = set()
        self.dark = False
        self.drop_watches = 0
        self.drop_logs_after: int | None = None
        self.lose_create_reply = False  # create the next job but close the connection instead of answering
        self.on_create: Callable[[FakeJob], None] | None = None  # e.g. a runner that plays the pod (tests)
        self.watch_opens = 0
        self.log_opens = 0
        self.closing = False
        self.server: ThreadingHTTPServer | None = None

    # -- lifecycle ------------------------------------------------------------------------------------------
    def __enter__(self) -> "FakeKubernetes":
        handler = type("Handler", (_Handler,), {"fake": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        with self.lock:
            self.closing = True
            self.lock.notify_all()
        self.server.shutdown()
        self.server.server_close()

    @property
    def host(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def api_client(self):
        from kubernetes import client

        configuration = client.Configuration(host=self.host)
        return client.ApiClient(configuration)

    def kubeconfig(self, path: Path) -> Path:
        import yaml

        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.host}}],
            "users": [{"name": "fake", "user": {}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
        }))
        return path

    # -- what tests look at and change ------------------------------------------------------------------------
    @property
    def jobs(self) -> dict[tuple[str, str], dict[str, Any]]:
        """(namespace, name) -> the job body, of every kind (what is left on the "cluster")."""
        return {(ns, name): job.body for (_, ns, name), job in self.objects.items()}

    def job(self, namespace: str, name: str) -> FakeJob:
        return next(j for (_, ns, n), j in self.objects.items() if (ns, n) == (namespace, name))

    @property
    def state(self) -> str | None:
        """The state of the only job (None when there is none)."""
        with self.lock:
            jobs = list(self.objects.values())
        return jobs[0].state if len(jobs) == 1 else None

    def add_job(self, plural: str, body: dict[str, Any], state: str) -> FakeJob:
        """A job that exists before the launcher starts (e.g. left by a launcher that died), held in `state`."""
        body = json.loads(json.dumps(body))
        body["metadata"].setdefault("namespace", "default")
        job = FakeJob(plural, body, self.scenario, state)
        with self.lock:
            self.objects[(plural, job.namespace, job.name)] = job
        return job

    def set_state(self, namespace: str, name: str, state: str) -> None:
        with self.lock:
            job = self.job(namespace, name)
            job.forced = True
            job.move(state)
            self.lock.notify_all()

    def vanish(self, namespace: str, name: str) -> None:
        """Delete a job behind the launcher's back (a user, or the controller's TTL)."""
        with self.lock:
            key = next(k for k in self.objects if k[1:] == (namespace, name))
            self.objects.pop(key)
            self.lock.notify_all()

    def append_log(self, run: int, text: str) -> None:
        with self.lock:
            self.logs[run] = self.logs.get(run, "") + text
            self.lock.notify_all()

    def inject(self, status: int, method: str = "GET", path: str = ".*", times: int = 1) -> None:
        """Answer the next `times` requests matching `method` and the `path` regex with HTTP `status`."""
        self.faults.append({"status": status, "method": method, "path": re.compile(path), "times": times})

    def count(self, method: str, pattern: str) -> int:
        return sum(1 for m, p in self.requests if m == method and re.search(pattern, p))


class _Handler(BaseHTTPRequestHandler):
    fake: FakeKubernetes
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def _send(self, code: int, body: Any, content_type: str = "application/json") -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _start_stream(self, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _break(self) -> None:
        """End the connection mid-stream, without the terminating chunk (a dropped connection)."""
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length", 0) or 0)
        return json.loads(self.rfile.read(length) or b"{}") if length else {}

    def _route(self, method: str) -> None:
        fake = self.fake
        url = urlparse(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        with fake.lock:
            fake.requests.append((method, url.path))
            if fake.dark:  # no answer at all: the client sees the connection close
                self.close_connection = True
                return
            for fault in fake.faults:
                if fault["times"] > 0 and fault["method"] == method and fault["path"].search(url.path):
                    fault["times"] -= 1
                    if method in ("POST", "PUT"):
                        self._body()
                    return self._send(fault["status"], _status(fault["status"], "Injected",
                                                               f"injected HTTP {fault['status']}"))
        if method == "POST" and url.path == _SSAR:
            return self._ssar()
        if match := _JOB.match(url.path):
            group, version, namespace, plural, name = match.groups()
            if plural not in fake.kinds or KINDS[plural][:2] != (group, version):
                if method == "POST":
                    self._body()
                return self._send(404, _status(404, "NotFound", "the server could not find the requested resource"))
            if name is None and method == "GET":
                return self._list(plural, namespace, query)
            return self._job(method, plural, namespace, name)
        if method == "GET" and (match := _RUNTIME.match(url.path)):
            if "trainjobs" in fake.kinds and match.group(2) in fake.runtimes:
                return self._send(200, {"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainingRuntime",
                                        "metadata": {"name": match.group(2), "namespace": match.group(1)}})
            return self._send(404, _status(404, "NotFound", f'trainingruntimes "{match.group(2)}" not found'))
        if method == "GET" and (match := _DISCOVERY.match(url.path)):
            served = [p for p in fake.kinds if KINDS[p][:2] == match.groups()]
            if not served:
                return self._send(404, _status(404, "NotFound", "the server could not find the requested resource"))
            return self._send(200, {"kind": "APIResourceList", "apiVersion": "v1",
                                    "groupVersion": "/".join(match.groups()),
                                    "resources": [{"name": p, "kind": KINDS[p][2], "namespaced": True,
                                                   "verbs": ["create", "delete", "get", "list", "watch"]}
                                                  for p in served]})
        if method == "GET" and (match := _PODS.match(url.path)):
            return self._pods(match.group(1), query.get("labelSelector", ""))
        if method == "GET" and (match := _LOG.match(url.path)):
            return self._log(match.group(1), match.group(2), query)
        if method == "GET" and (match := _CM.match(url.path)):
            data = fake.configmaps.get(match.group(2))
            if data is None:
                return self._send(404, _status(404, "NotFound", f'configmaps "{match.group(2)}" not found'))
            return self._send(200, {"apiVersion": "v1", "kind": "ConfigMap", "data": data,
                                    "metadata": {"name": match.group(2), "namespace": match.group(1)}})
        if method in ("POST", "PUT"):
            self._body()
        self._send(404, _status(404, "NotFound", f"the fake has no endpoint {method} {url.path}"))

    def _ssar(self) -> None:
        body = self._body()
        attrs = (body.get("spec") or {}).get("resourceAttributes") or {}
        resource = attrs.get("resource", "") + (f"/{attrs['subresource']}" if attrs.get("subresource") else "")
        allowed = (attrs.get("verb"), resource) not in self.fake.denied
        body["status"] = {"allowed": allowed}
        self._send(201, body)

    def _job(self, method: str, plural: str, namespace: str, name: str | None) -> None:
        fake = self.fake
        with fake.lock:
            if method == "POST" and name is None:
                body = self._body()
                problems = fake.validate(body) if fake.validate else []
                if problems:
                    return self._send(422, _status(422, "Invalid", "; ".join(problems)))
                key = (plural, namespace, body.get("metadata", {}).get("name", ""))
                if key in fake.objects:
                    return self._send(409, _status(409, "AlreadyExists", f'{plural} "{key[2]}" already exists'))
                body.setdefault("metadata", {})["namespace"] = namespace
                job = fake.objects[key] = FakeJob(plural, body, fake.scenario)
                fake.created.append(json.loads(json.dumps(body)))
                fake.lock.notify_all()
                if fake.on_create is not None:
                    fake.on_create(job)
                if fake.lose_create_reply:
                    fake.lose_create_reply = False
                    self.close_connection = True
                    return
                return self._send(201, body)
            job = fake.objects.get((plural, namespace, name or ""))
            if job is None:
                if method == "DELETE":
                    self._body()
                return self._send(404, _status(404, "NotFound", f'{plural}.{KINDS[plural][0]} "{name}" not found'))
            if method == "GET":
                job.advance()
                return self._send(200, job.body)
            if method == "DELETE":
                self._body()
                fake.objects.pop((plural, namespace, name))
                fake.deleted.append((namespace, name))
                fake.lock.notify_all()
                return self._send(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})
        self._send(405, _status(405, "MethodNotAllowed", method))

    def _matching(self, plural: str, namespace: str, query: dict[str, str]) -> list[FakeJob]:
        labels = dict(p.split("=", 1) for p in query.get("labelSelector", "").split(",") if "=" in p)
        fields = dict(p.split("=", 1) for p in query.get("fieldSelector", "").split(",") if "=" in p)
        out = []
        for (kind, ns, name), job in self.fake.objects.items():
            if kind != plural or ns != namespace:
                continue
            if fields.get("metadata.name", name) != name:
                continue
            if all((job.body["metadata"].get("labels") or {}).get(k) == v for k, v in labels.items()):
                out.append(job)
        return out

    def _list(self, plural: str, namespace: str, query: dict[str, str]) -> None:
        fake = self.fake
        if query.get("watch", "").lower() not in ("true", "1"):
            with fake.lock:
                items = [j.body for j in self._matching(plural, namespace, query)]
            group, version, kind = KINDS[plural]
            return self._send(200, {"apiVersion": f"{group}/{version}", "kind": f"{kind}List",
                                    "metadata": {"resourceVersion": "1"}, "items": items})
        # a watch: the current objects, then an event whenever a test changes one; ends after timeoutSeconds
        window = float(query.get("timeoutSeconds", 60))
        with fake.lock:
            fake.watch_opens += 1
            drop = fake.drop_watches > 0
            fake.drop_watches -= 1 if drop else 0
            seen = {j.name: j.version for j in self._matching(plural, namespace, query)}
            first = [j.body for j in self._matching(plural, namespace, query)]
        self._start_stream("application/json")
        for body in first:
            self._chunk(json.dumps({"type": "ADDED", "object": body}).encode() + b"\n")
        if drop:
            self.wfile.write(b"40\r\n{\"type\": \"MODIF")  # half a chunk, then the connection is gone
            return self._break()
        end = time.monotonic() + window
        while True:
            with fake.lock:
                if fake.closing or fake.dark:
                    return self._break()
                now = {j.name: j for j in self._matching(plural, namespace, query)}
                events = [("MODIFIED", j.body) for n, j in now.items() if seen.get(n) != j.version]
                events += [("DELETED", {"metadata": {"name": n, "namespace": namespace}}) for n in seen
                           if n not in now]
                seen = {n: j.version for n, j in now.items()}
                if not events:
                    left = end - time.monotonic()
                    if left <= 0:
                        break
                    fake.lock.wait(min(left, 0.5))
                    continue
            for kind, body in events:
                self._chunk(json.dumps({"type": kind, "object": body}).encode() + b"\n")
        self._chunk(b"")

    def _pods(self, namespace: str, selector: str) -> None:
        fake = self.fake
        wanted = dict(part.split("=", 1) for part in selector.split(",") if "=" in part)
        with fake.lock:
            pods = []
            for job in fake.objects.values():
                pod = job.master_pod() if job.namespace == namespace else None
                if pod and all(pod["metadata"]["labels"].get(k) == v for k, v in wanted.items()):
                    pods.append(pod)
        self._send(200, {"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": pods})

    def _find_pod(self, namespace: str, pod_name: str) -> tuple[FakeJob | None, dict[str, Any] | None]:
        for job in self.fake.objects.values():
            pod = job.master_pod() if job.namespace == namespace else None
            if pod and pod["metadata"]["name"] == pod_name:
                return job, pod
        return None, None

    def _log(self, namespace: str, pod_name: str, query: dict[str, str]) -> None:
        fake = self.fake
        previous = query.get("previous", "").lower() == "true"
        with fake.lock:
            job, pod = self._find_pod(namespace, pod_name)
            if pod is None:
                return self._send(404, _status(404, "NotFound", f'pods "{pod_name}" not found'))
            cstatus = pod["status"].get("containerStatuses", [{}])[0]
            if query.get("container") != cstatus.get("name"):
                return self._send(400, _status(400, "BadRequest", "no such container"))
            if "waiting" in (cstatus.get("state") or {}) and not previous:
                return self._send(400, _status(400, "BadRequest", f'container in pod "{pod_name}" is waiting to '
                                                                  "start"))
            run = job.restarts - 1 if previous else job.restarts
            if run < 0:
                return self._send(400, _status(400, "BadRequest", "previous terminated container not found"))
            fake.log_opens += 1
            drop_after, fake.drop_logs_after = fake.drop_logs_after, None
            hold = query.get("follow", "").lower() == "true" and not previous and job.running
        self._start_stream("text/plain")
        sent = 0
        while True:
            with fake.lock:
                text = fake.logs.get(run, "").encode()
                still = hold and not fake.closing and not fake.dark and job.running and \
                    fake.objects.get((job.plural, job.namespace, job.name)) is job and job.restarts == run
            if len(text) > sent:
                part = text[sent:] if drop_after is None else text[sent:max(sent, drop_after)]
                if part:
                    self._chunk(part)
                    sent += len(part)
                if drop_after is not None and sent >= drop_after:
                    return self._break()
            if not still:
                break
            with fake.lock:
                fake.lock.wait(0.2)
        self._chunk(b"")

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def do_DELETE(self) -> None:
        self._route("DELETE")
