"""The launcher against a FAKE Kubernetes API (tests/fake_k8s.py, HTTP on 127.0.0.1): it is not a cluster.

    .venv/bin/python -m pytest -q tests/test_launch_client.py

Scenarios: success, Failed -> non-zero, timeout -> non-zero + delete, Restarting then success, cancel -> delete
(in-process and by SIGTERM to `trm launch submit`), an existing job, settings from a ConfigMap.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from trm.launch.client import job_state, run_pytorchjob
from trm.launch.pytorchjob import LaunchConfig, operator_problems

sys.path.insert(0, str(Path(__file__).parent))
from fake_k8s import FakeKubernetes  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
IMAGE = "ghcr.io/trm-pipeline/trm-trainer:0.1.0"
POLL = 0.02


def _config(**change) -> LaunchConfig:
    return LaunchConfig(**{"name": "trm-fake", "image": IMAGE, "namespace": "trm",
                           "train_args": ["preset=cpu-tiny"], **change})


def _run(fake: FakeKubernetes, cfg: LaunchConfig | None = None, **kwargs):
    out = io.StringIO()
    result = run_pytorchjob(cfg or _config(), api_client=fake.api_client(), poll_interval=POLL, out=out,
                            **{"timeout": 20, **kwargs})
    return result, out.getvalue()


@pytest.fixture
def validate(shared_dir):
    """The fake refuses what the CRD schema or the operator's webhook would refuse."""
    from trm.launch.schema import CrdValidator

    crd = CrdValidator.from_file(shared_dir / "k8s-schemas" / "kubeflow.org_pytorchjobs.yaml")
    return lambda job: crd.errors(job) + operator_problems(job)


def test_success_streams_the_master_log_and_deletes_the_job(validate):
    with FakeKubernetes(["Created", "Running", "Running", "Succeeded"],
                        logs={0: "step 1 loss 2.5\nstep 2 loss 2.1\n"}, validate=validate) as fake:
        result, out = _run(fake)
    assert result.state == "Succeeded" and result.exit_code == 0 and result.ok
    assert fake.created[0]["metadata"]["name"] == "trm-fake"
    assert fake.deleted == [("trm", "trm-fake")] and result.deleted
    assert "step 1 loss 2.5\nstep 2 loss 2.1\n" in out
    assert out.count("step 1 loss") == 1  # streamed once, though the stream was reopened while Running
    assert "Running" in out and "ended Succeeded" in out
    assert ("GET", "/api/v1/namespaces/trm/pods/trm-fake-master-0/log") in fake.requests
    result.raise_for_state()


def test_failed_job_is_a_failure_and_is_deleted():
    with FakeKubernetes(["Created", "Running", "Failed"], logs={0: "Traceback: boom\n"}) as fake:
        result, out = _run(fake)
    assert result.state == "Failed" and result.exit_code != 0 and not result.ok
    assert "1 Master replica(s) failed" in result.message
    assert fake.deleted == [("trm", "trm-fake")]
    assert "Traceback: boom" in out
    with pytest.raises(RuntimeError, match="ended Failed"):
        result.raise_for_state()


def test_timeout_is_a_failure_and_deletes_the_job():
    with FakeKubernetes(["Created", "Running"], logs={0: "still training\n"}) as fake:
        start = time.monotonic()
        result, out = _run(fake, timeout=0.5)
        elapsed = time.monotonic() - start
    assert result.state == "Timeout" and result.exit_code == 124
    assert fake.deleted == [("trm", "trm-fake")]
    assert elapsed < 10
    assert "deleted pytorchjob trm/trm-fake" in out


def test_restarting_then_success_streams_both_container_runs():
    with FakeKubernetes(["Created", "Running", "Running", "Restarting", "Restarting", "Running", "Running",
                         "Succeeded"],
                        logs={0: "run 0: step 5\nNCCL error\n", 1: "run 1: resumed from step-4\n"}) as fake:
        result, out = _run(fake)
    assert result.state == "Succeeded" and result.exit_code == 0
    assert "Restarting" in out
    assert "run 0: step 5" in out and "run 1: resumed from step-4" in out
    assert out.index("run 0: step 5") < out.index("run 1: resumed")
    assert fake.deleted == [("trm", "trm-fake")]


def test_cancel_deletes_the_job():
    cancel = threading.Event()
    with FakeKubernetes(["Created", "Running"]) as fake:
        timer = threading.Timer(0.3, cancel.set)
        timer.start()
        result, _ = _run(fake, cancel=cancel, timeout=None)
        timer.cancel()
    assert result.state == "Cancelled" and result.exit_code == 130
    assert fake.deleted == [("trm", "trm-fake")]


def test_existing_job_is_an_error_and_is_not_deleted():
    with FakeKubernetes(["Running"]) as fake:
        fake.jobs[("trm", "trm-fake")] = {"metadata": {"name": "trm-fake"}}
        with pytest.raises(ValueError, match="already exists"):
            _run(fake)
    assert fake.deleted == []


def test_job_state_prefers_terminal_conditions():
    job = {"status": {"conditions": [{"type": "Created", "status": "True"}, {"type": "Running", "status": "False"},
                                     {"type": "Failed", "status": "True"}, {"type": "Restarting", "status": "True"}]}}
    assert job_state(job)[0] == "Failed"
    assert job_state({"status": {}})[0] == "Pending"
    assert job_state({"status": {"conditions": [{"type": "Created", "status": "True"},
                                                {"type": "Running", "status": "True"}]}})[0] == "Running"


def test_cli_submit_reads_a_configmap_and_returns_the_exit_code(tmp_path, validate):
    from trm.launch.cli import main

    settings = {"image": IMAGE, "cpu": "2", "memory": "4Gi", "s3_endpoint": "http://trm-minio:9000",
                "s3_secret": "trm-s3", "node_selector": '{"pool": "cpu"}'}
    with FakeKubernetes(["Created", "Running", "Failed"], validate=validate,
                        configmaps={"trm-launch": settings}) as fake:
        code = main(["submit", "--kubeconfig", str(fake.kubeconfig(tmp_path / "kubeconfig")), "--configmap",
                     "trm-launch", "-n", "trm", "--name", "trm-cli", "--poll", str(POLL), "--timeout", "20",
                     "preset=cpu-tiny", "max_steps=3"])
    assert code == 1
    job = fake.created[0]
    pod = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "cpu"}
    assert pod["containers"][0]["image"] == IMAGE
    assert "max_steps=3" in pod["containers"][0]["args"]
    assert fake.deleted == [("trm", "trm-cli")]


def test_cli_sigterm_cancels_and_deletes(tmp_path):
    with FakeKubernetes(["Created", "Running"], logs={0: "training\n"}) as fake:
        kubeconfig = fake.kubeconfig(tmp_path / "kubeconfig")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen([sys.executable, "-m", "trm.cli", "launch", "submit", "--kubeconfig",
                                 str(kubeconfig), "-n", "trm", "--name", "trm-sig", "--image", IMAGE, "--poll",
                                 "0.05", "preset=cpu-tiny"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and fake.state != "Running":
                time.sleep(0.05)
            assert fake.state == "Running", "the CLI never got the job running"
            proc.send_signal(signal.SIGTERM)
            output, _ = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 130, output
    assert fake.deleted == [("trm", "trm-sig")]
    assert "ended Cancelled" in output
