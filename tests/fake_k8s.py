"""A FAKE Kubernetes API server for the launcher's tests: HTTP on 127.0.0.1, only the endpoints trm.launch uses.

    with FakeKubernetes(["Created", "Running", "Succeeded"], logs={0: "step 1\\n"}) as fake:
        api = fake.api_client()            # a kubernetes.client.ApiClient pointed at the fake
        fake.kubeconfig(path)              # or a kubeconfig file for `trm launch submit --kubeconfig`

It is not Kubernetes. It plays a Training Operator that moves one PyTorchJob through a scripted list of states,
one state per GET of the job (the last state repeats), and a master pod whose `pytorch` container follows it:

    Created -> container waiting     Running -> running            Restarting -> waiting, restartCount + 1
    Succeeded -> terminated, exit 0  Failed -> terminated, exit 1  (conditions accumulate as the operator's do)

Endpoints: POST/GET/DELETE /apis/kubeflow.org/v1/namespaces/{ns}/pytorchjobs[/{name}],
GET /api/v1/namespaces/{ns}/pods?labelSelector=..., GET /api/v1/namespaces/{ns}/pods/{pod}/log,
GET /api/v1/namespaces/{ns}/configmaps/{name}. A POSTed job is checked by `validate` (a callable returning
a list of problems) and refused with 422 like an API server would. Every request is recorded in `requests`.
"""

from __future__ import annotations

import json
import re
import threading
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, urlparse

STATES = ("Created", "Running", "Restarting", "Succeeded", "Failed")
_JOB = re.compile(r"^/apis/kubeflow\.org/v1/namespaces/([^/]+)/pytorchjobs(?:/([^/]+))?$")
_PODS = re.compile(r"^/api/v1/namespaces/([^/]+)/pods$")
_LOG = re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)/log$")
_CM = re.compile(r"^/api/v1/namespaces/([^/]+)/configmaps/([^/]+)$")


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "reason": reason,
            "message": message}


class FakeKubernetes:
    """The fake API server (a context manager). `scenario` lists the job's states, one per GET."""

    def __init__(self, scenario: list[str], logs: dict[int, str] | None = None,
                 validate: Callable[[dict], list[str]] | None = None,
                 configmaps: dict[str, dict[str, str]] | None = None):
        unknown = [s for s in scenario if s not in STATES]
        if unknown or not scenario:
            raise ValueError(f"scenario states must be among {STATES}, got {scenario}")
        self.scenario = list(scenario)
        self.logs = logs or {}
        self.validate = validate
        self.configmaps = configmaps or {}
        self.lock = threading.Lock()
        self.jobs: dict[tuple[str, str], dict[str, Any]] = {}
        self.created: list[dict[str, Any]] = []
        self.deleted: list[tuple[str, str]] = []
        self.requests: list[tuple[str, str]] = []
        self.gets = 0
        self.restarts = 0
        self.state: str | None = None
        self.server: ThreadingHTTPServer | None = None

    # -- lifecycle ------------------------------------------------------------------------------------------
    def __enter__(self) -> "FakeKubernetes":
        handler = type("Handler", (_Handler,), {"fake": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
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

    # -- the scripted operator -------------------------------------------------------------------------------
    def _advance(self, job: dict[str, Any]) -> None:
        state = self.scenario[min(self.gets, len(self.scenario) - 1)]
        self.gets += 1
        if state == self.state:
            return
        if state == "Restarting":
            self.restarts += 1
        self.state = state
        conditions = job.setdefault("status", {}).setdefault("conditions", [])
        conditions[:] = [c for c in conditions if c["type"] != state]  # the operator keeps one per type
        for cond in conditions:
            if cond["type"] in ("Running", "Restarting") and state != cond["type"]:
                cond["status"] = "False"
        reason = {"Failed": "PyTorchJobFailed", "Succeeded": "PyTorchJobSucceeded"}.get(state, f"PyTorchJob{state}")
        message = {"Failed": "PyTorchJob trm is failed because 1 Master replica(s) failed."}.get(
            state, f"PyTorchJob {job['metadata']['name']} is {state.lower()}.")
        conditions.append({"type": state, "status": "True", "reason": reason, "message": message,
                           "lastUpdateTime": _now(), "lastTransitionTime": _now()})

    def _master_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        if self.state is None:
            return None
        container_state = {
            "Created": {"waiting": {"reason": "ContainerCreating"}},
            "Running": {"running": {"startedAt": _now()}},
            "Restarting": {"waiting": {"reason": "CrashLoopBackOff"}},
            "Succeeded": {"terminated": {"exitCode": 0, "reason": "Completed"}},
            "Failed": {"terminated": {"exitCode": 1, "reason": "Error"}},
        }[self.state]
        phase = {"Created": "Pending", "Succeeded": "Succeeded", "Failed": "Failed"}.get(self.state, "Running")
        return {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"{name}-master-0", "namespace": namespace, "uid": f"uid-{name}-master-0",
                         "labels": {"training.kubeflow.org/job-name": name,
                                    "training.kubeflow.org/replica-type": "master",
                                    "training.kubeflow.org/replica-index": "0"}},
            "status": {"phase": phase, "containerStatuses": [{
                "name": "pytorch", "image": "trainer", "imageID": "", "ready": self.state == "Running",
                "restartCount": self.restarts, "state": container_state}]},
        }


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

    def _route(self, method: str) -> None:
        fake = self.fake
        url = urlparse(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        with fake.lock:
            fake.requests.append((method, url.path))
        if match := _JOB.match(url.path):
            return self._job(method, match.group(1), match.group(2))
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
        self._send(404, _status(404, "NotFound", f"the fake has no endpoint {method} {url.path}"))

    def _job(self, method: str, namespace: str, name: str | None) -> None:
        fake = self.fake
        with fake.lock:
            if method == "POST" and name is None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                problems = fake.validate(body) if fake.validate else []
                if problems:
                    return self._send(422, _status(422, "Invalid", "; ".join(problems)))
                key = (namespace, body.get("metadata", {}).get("name", ""))
                if key in fake.jobs:
                    return self._send(409, _status(409, "AlreadyExists", f'pytorchjobs "{key[1]}" already exists'))
                body.setdefault("metadata", {})["namespace"] = namespace
                fake.jobs[key] = body
                fake.created.append(json.loads(json.dumps(body)))
                return self._send(201, body)
            key = (namespace, name or "")
            if key not in fake.jobs:
                return self._send(404, _status(404, "NotFound", f'pytorchjobs.kubeflow.org "{name}" not found'))
            if method == "GET":
                fake._advance(fake.jobs[key])
                return self._send(200, fake.jobs[key])
            if method == "DELETE":
                if self.headers.get("Content-Length"):
                    self.rfile.read(int(self.headers["Content-Length"]))
                fake.jobs.pop(key)
                fake.deleted.append(key)
                fake.state = None
                return self._send(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})
        self._send(405, _status(405, "MethodNotAllowed", method))

    def _pods(self, namespace: str, selector: str) -> None:
        fake = self.fake
        wanted = dict(part.split("=", 1) for part in selector.split(",") if "=" in part)
        with fake.lock:
            pods = []
            for (ns, name) in fake.jobs:
                pod = fake._master_pod(ns, name) if ns == namespace else None
                if pod and all(pod["metadata"]["labels"].get(k) == v for k, v in wanted.items()):
                    pods.append(pod)
        self._send(200, {"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": pods})

    def _log(self, namespace: str, pod_name: str, query: dict[str, str]) -> None:
        fake = self.fake
        with fake.lock:
            pod = next((fake._master_pod(ns, n) for (ns, n) in fake.jobs
                        if ns == namespace and f"{n}-master-0" == pod_name), None)
            if pod is None:
                return self._send(404, _status(404, "NotFound", f'pods "{pod_name}" not found'))
            state = pod["status"]["containerStatuses"][0]["state"]
            if "waiting" in state and query.get("previous", "").lower() != "true":
                return self._send(400, _status(400, "BadRequest", f'container "pytorch" in pod "{pod_name}" is '
                                                                  "waiting to start"))
            if query.get("container") not in (None, "pytorch"):
                return self._send(400, _status(400, "BadRequest", "no such container"))
            run = fake.restarts - 1 if query.get("previous", "").lower() == "true" else fake.restarts
            if run < 0:
                return self._send(400, _status(400, "BadRequest", "previous terminated container not found"))
            text = fake.logs.get(run, "")
        self._send(200, text.encode(), "text/plain")

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def do_DELETE(self) -> None:
        self._route("DELETE")
