"""The launcher against a FAKE Kubernetes API (tests/fake_k8s.py, HTTP on 127.0.0.1): it is not a cluster.

    .venv/bin/python -m pytest -q tests/test_launch_client.py

Lifecycles of TrainJobs and PyTorchJobs: success, Failed, timeout, Restarting, cancel (in-process and SIGTERM to
`trm launch submit`), stuck Pending past the timeout, ImagePullBackOff, 409 adoption of a running / succeeded /
failed job of the same run (and refusal of another run's job), a lost create reply, an unreachable API (at
submit, while following, during cleanup), injected 5xx/429, a dropped watch, a dropped log stream, a log
stream held open until the container stops, a job deleted behind the launcher's back. Each ends with its exit
code and no job left behind. Also: `auto` picks the installed kind, access reviews, `trm launch` errors as one
sentence, URL credentials never printed.
"""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from trm.launch import client
from trm.launch.client import EXIT_CODES, LaunchError, job_state, run_job, trainjob_state
from trm.launch.config import RUN_ID_LABEL, LaunchConfig, redact
from trm.launch.pytorchjob import build_pytorchjob, operator_problems
from trm.launch.trainjob import build_trainjob, trainjob_problems

sys.path.insert(0, str(Path(__file__).parent))
from fake_k8s import FakeKubernetes  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
IMAGE = "ghcr.io/trm-pipeline/trm-trainer:0.1.0"
POLL = 0.02
KINDS = ("trainjob", "pytorchjob")


def _config(**change) -> LaunchConfig:
    return LaunchConfig(**{"name": "trm-fake", "image": IMAGE, "namespace": "trm",
                           "train_args": ["preset=cpu-tiny"], **change})


def _run(fake: FakeKubernetes, kind: str = "trainjob", cfg: LaunchConfig | None = None, **kwargs):
    out = io.StringIO()
    kwargs = {"timeout": 20, "poll_interval": POLL, "api_retry": 5, **kwargs}
    result = run_job(cfg or _config(), kind, api_client=fake.api_client(), out=out, **kwargs)
    return result, out.getvalue()


@pytest.fixture
def validate(shared_dir):
    """The fake refuses what the CRD schemas or the controllers' webhooks would refuse."""
    from trm.launch.schema import CrdValidator

    schemas = shared_dir / "k8s-schemas"
    pytorch = CrdValidator.from_file(schemas / "kubeflow.org_pytorchjobs.yaml")
    train = CrdValidator.from_file(schemas / "trainer-v2.3.0" / "trainer.kubeflow.org_trainjobs.yaml", "v1alpha1")
    runtime = next(d for d in __import__("yaml").safe_load_all((ROOT / "manifests/base/trainingruntime.yaml")
                                                               .read_text()) if d)

    def check(job):
        if job.get("kind") == "TrainJob":
            return train.errors(job) + trainjob_problems(job, runtime)
        return pytorch.errors(job) + operator_problems(job)

    return check


def _left(fake: FakeKubernetes) -> list:
    return sorted(fake.jobs)


@pytest.mark.parametrize("kind", KINDS)
def test_success_streams_the_master_log_and_deletes_the_job(validate, kind):
    with FakeKubernetes(["Created", "Running", "Running", "Succeeded"],
                        logs={0: "step 1 loss 2.5\nstep 2 loss 2.1\n"}, validate=validate) as fake:
        result, out = _run(fake, kind)
    assert result.state == "Succeeded" and result.exit_code == 0 and result.ok
    assert fake.created[0]["kind"] == ("TrainJob" if kind == "trainjob" else "PyTorchJob")
    assert fake.deleted == [("trm", "trm-fake")] and result.deleted and _left(fake) == []
    assert "step 1 loss 2.5\nstep 2 loss 2.1\n" in out
    assert out.count("step 1 loss") == 1  # streamed once
    assert "Running" in out and "ended Succeeded" in out
    result.raise_for_state()


@pytest.mark.parametrize("kind", KINDS)
def test_failed_job_is_a_failure_and_is_deleted(kind):
    with FakeKubernetes(["Created", "Running", "Failed"], logs={0: "Traceback: boom\n"}) as fake:
        result, out = _run(fake, kind)
    assert result.state == "Failed" and result.exit_code == 1 and not result.ok
    assert ("1 Master replica(s) failed" if kind == "pytorchjob" else "jobset failed") in result.message
    assert fake.deleted == [("trm", "trm-fake")] and _left(fake) == []
    assert "Traceback: boom" in out
    with pytest.raises(RuntimeError, match="ended Failed"):
        result.raise_for_state()


def test_timeout_is_a_failure_and_deletes_the_job():
    with FakeKubernetes(["Created", "Running"], logs={0: "still training\n"}) as fake:
        result, out = _run(fake, timeout=0.5)
    assert result.state == "Timeout" and result.exit_code == 124
    assert fake.deleted == [("trm", "trm-fake")] and _left(fake) == []
    assert "deleted trainjob trm/trm-fake" in out


def test_restarting_then_success_streams_both_container_runs():
    with FakeKubernetes(["Created", "Running", "Running", "Restarting", "Restarting", "Running", "Running",
                         "Succeeded"],
                        logs={0: "run 0: step 5\nNCCL error\n", 1: "run 1: resumed from step-4\n"}) as fake:
        result, out = _run(fake, "pytorchjob")
    assert result.state == "Succeeded" and result.exit_code == 0
    assert "Restarting" in out
    assert "run 0: step 5" in out and "run 1: resumed from step-4" in out
    assert out.index("run 0: step 5") < out.index("run 1: resumed")
    assert _left(fake) == []


@pytest.mark.parametrize("kind", KINDS)
def test_cancel_deletes_the_job(kind):
    cancel = threading.Event()
    with FakeKubernetes(["Created", "Running"]) as fake:
        timer = threading.Timer(0.3, cancel.set)
        timer.start()
        result, _ = _run(fake, kind, cancel=cancel, timeout=None)
        timer.cancel()
    assert result.state == "Cancelled" and result.exit_code == 130
    assert fake.deleted == [("trm", "trm-fake")] and _left(fake) == []


@pytest.mark.parametrize("state, reason", [("Unschedulable", "Insufficient nvidia.com/gpu"),
                                           ("Created", "ContainerCreating")])
def test_stuck_pending_past_the_timeout_names_the_reason(state, reason):
    with FakeKubernetes([state]) as fake:
        result, out = _run(fake, cfg=_config(pending_timeout=1))
    assert result.state == "Stuck" and result.exit_code == EXIT_CODES["Stuck"] == 3
    assert "not started after 1 s" in result.message and reason in result.message
    assert fake.deleted == [("trm", "trm-fake")] and _left(fake) == []
    assert reason in out


@pytest.mark.parametrize("kind, pull", [("trainjob", "ImagePullBackOff"), ("pytorchjob", "ErrImagePull")])
def test_image_pull_errors_fail_the_job_with_that_reason(kind, pull):
    with FakeKubernetes(["Created", pull]) as fake:
        result, out = _run(fake, kind, cfg=_config(pending_timeout=0), image_grace=0.3)
    assert result.state == "Stuck" and result.exit_code == 3
    assert pull in result.message and IMAGE in result.message
    assert _left(fake) == []


def _existing(fake: FakeKubernetes, kind: str, state: str, run_id: str | None) -> None:
    cfg = _config(run_id=run_id) if run_id else _config()
    body = (build_trainjob if kind == "trainjob" else build_pytorchjob)(cfg)
    fake.add_job("trainjobs" if kind == "trainjob" else "pytorchjobs", body, state)


@pytest.mark.parametrize("kind", KINDS)
def test_409_adopts_a_running_job_of_the_same_run(kind):
    with FakeKubernetes(["Running"], logs={0: "adopted log\n"}) as fake:
        _existing(fake, kind, "Running", run_id="run-1")
        timer = threading.Timer(0.5, fake.set_state, ("trm", "trm-fake", "Succeeded"))
        timer.start()
        result, out = _run(fake, kind, cfg=_config(run_id="run-1"))
        timer.cancel()
    assert result.state == "Succeeded" and result.adopted == "running"
    assert fake.created == [], "no second job was created"
    assert "adopting it" in out and "adopted log" in out
    assert fake.deleted == [("trm", "trm-fake")] and _left(fake) == []


@pytest.mark.parametrize("kind", KINDS)
def test_409_takes_the_result_of_a_succeeded_job_of_the_same_run(kind):
    with FakeKubernetes(["Running"]) as fake:
        _existing(fake, kind, "Succeeded", run_id="run-1")
        result, _ = _run(fake, kind, cfg=_config(run_id="run-1"))
    assert result.state == "Succeeded" and result.exit_code == 0 and result.adopted == "succeeded"
    assert fake.created == [] and _left(fake) == []


@pytest.mark.parametrize("kind", KINDS)
def test_409_deletes_a_failed_job_of_the_same_run_and_submits_again(kind):
    with FakeKubernetes(["Created", "Running", "Succeeded"]) as fake:
        _existing(fake, kind, "Failed", run_id="run-1")
        result, out = _run(fake, kind, cfg=_config(run_id="run-1"))
    assert result.state == "Succeeded" and result.adopted == "failed -> resubmitted"
    assert len(fake.created) == 1 and fake.created[0]["metadata"]["labels"][RUN_ID_LABEL] == "run-1"
    assert fake.deleted == [("trm", "trm-fake"), ("trm", "trm-fake")]  # the failed one, then ours at the end
    assert "Failed: deleting it and submitting again" in out and _left(fake) == []


@pytest.mark.parametrize("other", ["run-0", None])
def test_409_for_a_job_of_another_run_is_refused_and_left_alone(other):
    with FakeKubernetes(["Running"]) as fake:
        _existing(fake, "trainjob", "Running", run_id=other)
        with pytest.raises(LaunchError, match="already exists and belongs to") as info:
            _run(fake, cfg=_config(run_id="run-1"))
    assert fake.deleted == [] and _left(fake) == [("trm", "trm-fake")]
    assert "kubectl delete trainjob -n trm trm-fake" in str(info.value)


def test_a_lost_create_reply_is_our_own_job_and_is_followed():
    with FakeKubernetes(["Created", "Running", "Succeeded"]) as fake:
        fake.lose_create_reply = True
        result, _ = _run(fake)  # no run id: the launch-id annotation tells our job from another
    assert result.state == "Succeeded" and len(fake.created) == 1
    assert fake.count("POST", "trainjobs$") >= 2 and _left(fake) == []


@pytest.mark.parametrize("status", [503, 429])
def test_5xx_and_429_are_retried(status):
    with FakeKubernetes(["Created", "Running", "Succeeded"]) as fake:
        fake.inject(status, "POST", "trainjobs$", times=2)
        fake.inject(status, "GET", "trainjobs/trm-fake$", times=3)
        fake.inject(status, "DELETE", "trainjobs/trm-fake$", times=2)
        result, out = _run(fake)
    assert result.state == "Succeeded" and result.deleted and _left(fake) == []
    assert f"HTTP {status}" in out and "retrying" in out
    assert fake.count("POST", "trainjobs$") == 3 and len(fake.created) == 1


def test_unreachable_api_while_following_ends_the_step_and_cleanup_never_masks_it():
    with FakeKubernetes(["Created", "Running"]) as fake:
        def go_dark():
            while fake.state != "Running":
                time.sleep(0.01)
            fake.dark = True

        threading.Thread(target=go_dark, daemon=True).start()
        result, out = _run(fake, cfg=_config(run_id="run-7"), api_retry=0.5, timeout=30)
        assert result.state == "Unreachable" and result.exit_code == 69
        assert "did not answer" in result.message and fake.host.split("//")[1] in result.message
        assert result.cleanup_error and not result.deleted  # reported ...
        assert "could not delete TrainJob trm/trm-fake" in out and "kubectl delete trainjob" in out
        # ... and the exit handler removes it once the API is back: nothing is orphaned
        fake.dark = False
        deleted = client.delete_run_jobs(fake.api_client(), "trm", "run-x", api_retry=1)
        assert deleted == []  # not this run's
        gone = client.delete_run_jobs(fake.api_client(), "trm", "run-7", api_retry=1)
    assert gone == ["TrainJob/trm-fake"] and _left(fake) == []


def test_unreachable_api_at_submit_is_a_clear_sentence():
    with FakeKubernetes(["Running"]) as fake:
        fake.dark = True
        result, _ = _run(fake, api_retry=0.5)
    assert result.state == "Unreachable" and result.exit_code == 69
    assert result.message.startswith("the Kubernetes API at 127.0.0.1:") or "did not answer create" in result.message


def test_job_deleted_behind_the_launchers_back():
    with FakeKubernetes(["Created", "Running"]) as fake:
        def vanish():
            while fake.state != "Running":
                time.sleep(0.01)
            fake.vanish("trm", "trm-fake")

        threading.Thread(target=vanish, daemon=True).start()
        result, out = _run(fake, timeout=None)
    assert result.state == "Failed" and result.exit_code == 1
    assert "disappeared" in result.message and "was already gone" in out and _left(fake) == []


def test_a_watch_event_wakes_the_loop_and_a_dropped_watch_is_reopened():
    """Polls 30 s apart and a cancel 5 s after the job succeeds: only the watch (re-opened after being dropped)
    can deliver Succeeded before the cancel; by polling alone the step would end Cancelled."""
    cancel = threading.Event()
    with FakeKubernetes(["Running"]) as fake:
        fake.drop_watches = 1

        def finish():
            deadline = time.monotonic() + 15
            while fake.watch_opens < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.2)
            fake.set_state("trm", "trm-fake", "Succeeded")
            time.sleep(5)
            cancel.set()

        threading.Thread(target=finish, daemon=True).start()
        result, out = _run(fake, poll_interval=30, timeout=None, logs=False, cancel=cancel)
    assert result.state == "Succeeded", out
    assert fake.watch_opens >= 2 and "watch on TrainJob trm/trm-fake dropped" in out
    assert _left(fake) == []


def _log_lines(out: str) -> str:
    """The job's log as the step printed it: every line but the launcher's own, which are whole lines too (a
    launcher message inside a log line fails the check)."""
    kept = [line for line in out.splitlines(True) if not line.startswith("[trm launch]")]
    assert all(re.fullmatch(r"line \d{3}\n", line) for line in kept), kept
    return "".join(kept)


def test_a_dropped_log_stream_resumes_without_repeating_lines():
    lines = "".join(f"line {i:03d}\n" for i in range(40))
    with FakeKubernetes(["Created", "Running", "Running", "Running", "Succeeded"], logs={0: lines}) as fake:
        fake.drop_logs_after = 95  # mid-line
        result, out = _run(fake, poll_interval=0.1)
    assert result.state == "Succeeded"
    assert _log_lines(out) == lines and fake.log_opens >= 2


def test_the_log_stream_is_held_open_until_the_container_stops():
    with FakeKubernetes(["Created"] + ["Running"] * 30 + ["Succeeded"], logs={0: "first\n"}) as fake:
        def feed():
            while fake.state != "Running":
                time.sleep(0.01)
            for i in range(5):
                fake.append_log(0, f"later {i}\n")
                time.sleep(0.02)

        threading.Thread(target=feed, daemon=True).start()
        result, out = _run(fake, poll_interval=0.01)
    assert result.state == "Succeeded"
    assert "first\nlater 0\nlater 1\nlater 2\nlater 3\nlater 4\n" in out
    assert fake.log_opens == 1, "one stream, held open while the container ran"


def test_job_states_from_conditions():
    job = {"status": {"conditions": [{"type": "Created", "status": "True"}, {"type": "Running", "status": "False"},
                                     {"type": "Failed", "status": "True"}, {"type": "Restarting", "status": "True"}]}}
    assert job_state(job)[0] == "Failed"
    assert job_state({"status": {}})[0] == "Pending"
    assert trainjob_state({"status": {"conditions": [{"type": "Complete", "status": "True"}]}})[0] == "Succeeded"
    assert trainjob_state({"status": {"conditions": [{"type": "Suspended", "status": "True"}]}})[0] == "Suspended"
    assert trainjob_state({})[0] == "Created"


@pytest.mark.parametrize("installed, wanted, got", [
    (("trainjobs", "pytorchjobs"), "auto", "trainjob"), (("pytorchjobs",), "auto", "pytorchjob"),
    (("trainjobs",), "trainjob", "trainjob"), (("trainjobs", "pytorchjobs"), "pytorchjob", "pytorchjob"),
])
def test_auto_asks_the_api_which_kind_is_installed(installed, wanted, got):
    with FakeKubernetes(["Running"], kinds=installed) as fake:
        assert client.resolve_kind(fake.api_client(), wanted, api_retry=1).key == got


@pytest.mark.parametrize("installed, wanted, message", [
    ((), "auto", "serves neither TrainJob"), (("trainjobs",), "pytorchjob", "has no kubeflow.org/v1 pytorchjobs"),
    (("pytorchjobs",), "trainjob", "use pytorchjob or auto"),
])
def test_a_missing_kind_is_one_sentence(installed, wanted, message):
    with FakeKubernetes(["Running"], kinds=installed) as fake:
        with pytest.raises(LaunchError, match=message):
            client.resolve_kind(fake.api_client(), wanted, api_retry=1)


def test_access_review_names_what_is_denied():
    with FakeKubernetes(["Running"]) as fake:
        api = fake.api_client()
        assert client.access_problems(api, client.TRAINJOB, "trm", api_retry=1) == []
        fake.denied |= {("create", "trainjobs"), ("delete", "trainjobs"), ("get", "pods/log")}
        denied = client.access_problems(api, client.TRAINJOB, "trm", api_retry=1)
    assert denied == ["create trainjobs.trainer.kubeflow.org", "delete trainjobs.trainer.kubeflow.org",
                      "get pods/log"]


def test_delete_run_jobs_removes_only_that_runs_jobs():
    with FakeKubernetes(["Running"]) as fake:
        _existing(fake, "trainjob", "Running", run_id="run-1")
        fake.add_job("pytorchjobs", build_pytorchjob(_config(name="trm-other", run_id="run-2")), "Running")
        fake.add_job("pytorchjobs", build_pytorchjob(_config(name="trm-same", run_id="run-1")), "Failed")
        deleted = client.delete_run_jobs(fake.api_client(), "trm", "run-1", api_retry=1)
    assert sorted(deleted) == ["PyTorchJob/trm-same", "TrainJob/trm-fake"]
    assert _left(fake) == [("trm", "trm-other")]


# -- `trm launch` ------------------------------------------------------------------------------------------------
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
    assert job["kind"] == "TrainJob"  # auto: TrainJob preferred
    pod = job["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0][
        "template"]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "cpu"}
    assert job["spec"]["trainer"]["image"] == IMAGE and job["spec"]["trainer"]["resourcesPerNode"]["requests"] == {
        "cpu": "2", "memory": "4Gi"}
    assert "max_steps=3" in job["spec"]["trainer"]["args"]
    assert fake.deleted == [("trm", "trm-cli")]


def _cli(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trm.cli", "launch", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})


@pytest.mark.parametrize("kind", ["auto"])
def test_cli_sigterm_cancels_and_deletes(tmp_path, kind):
    with FakeKubernetes(["Created", "Running"], logs={0: "training\n"}) as fake:
        kubeconfig = fake.kubeconfig(tmp_path / "kubeconfig")
        proc = subprocess.Popen([sys.executable, "-m", "trm.cli", "launch", "submit", "--kind", kind, "--kubeconfig",
                                 str(kubeconfig), "-n", "trm", "--name", "trm-sig", "--image", IMAGE, "--poll",
                                 "0.05", "preset=cpu-tiny"], cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
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
    assert fake.deleted == [("trm", "trm-sig")] and _left(fake) == []
    assert "ended Cancelled" in output


def test_cli_without_kubeconfig_is_one_sentence(tmp_path, monkeypatch, capsys):
    from trm.launch.cli import main

    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("TRM_DEBUG", raising=False)
    assert main(["submit", "--name", "trm-x", "--image", IMAGE, "preset=cpu-tiny"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("trm launch: no usable Kubernetes configuration") and err.count("\n") == 1
    assert "Traceback" not in err
    monkeypatch.setenv("TRM_DEBUG", "1")
    assert main(["submit", "--name", "trm-x", "--image", IMAGE, "preset=cpu-tiny"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_cli_with_an_unreachable_api_server_is_one_sentence(tmp_path):
    from trm.storage.embedded import free_ports

    (port,) = free_ports(1)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(f"""apiVersion: v1
kind: Config
current-context: x
clusters: [{{name: x, cluster: {{server: "http://127.0.0.1:{port}"}}}}]
users: [{{name: x, user: {{}}}}]
contexts: [{{name: x, context: {{cluster: x, user: x}}}}]
""")
    done = _cli("submit", "--kind", "trainjob", "--kubeconfig", str(kubeconfig), "--api-retry", "1", "--name", "trm-x",
                "--image", IMAGE, "preset=cpu-tiny")
    assert done.returncode == 69, done.stderr
    assert done.stderr.count("\n") == 1 and f"127.0.0.1:{port}" in done.stderr and "did not answer" in done.stderr
    assert "Traceback" not in done.stderr


def test_url_credentials_never_appear_in_render_output_or_messages(capsys):
    from trm.launch.cli import main

    secret = "s3cr3t-KEY-91"
    assert main(["render", "--name", "trm-x", "--image", IMAGE, "--s3-endpoint", f"http://AKIA1:{secret}@minio:9000",
                 "preset=cpu-tiny"]) == 2
    out, err = capsys.readouterr()
    assert secret not in out + err
    assert "http://***@minio:9000" in err and "carries credentials" in err
    # a URL with credentials anywhere else in the manifest (an env value) is masked in the YAML too
    assert main(["render", "--kind", "pytorchjob", "--name", "trm-x", "--image", IMAGE, "--env",
                 f"MIRROR=https://u:{secret}@pypi.example/simple", "preset=cpu-tiny"]) == 0
    out, err = capsys.readouterr()
    assert secret not in out + err and "https://***@pypi.example/simple" in out
    assert redact(f"x http://a:{secret}@h:1/p and s3://k:{secret}@b/k") == "x http://***@h:1/p and s3://***@b/k"


def test_a_log_stream_dropped_after_the_job_ended_is_read_to_its_end():
    """The job ends before the follower has the whole log (a loaded launcher pod): its last pass drops mid-line,
    and the lines after the drop still reach the step's log."""
    lines = "".join(f"line {i:03d}\n" for i in range(40))
    with FakeKubernetes(["Succeeded"], logs={0: lines}) as fake:
        fake.drop_logs_after = 95
        result, out = _run(fake, poll_interval=0.1)
    assert result.state == "Succeeded"
    assert _log_lines(out) == lines


def test_the_log_follower_writes_whole_lines_only():
    """A stream cut inside a line writes nothing of that line until its end arrives (on the next stream), so a
    launcher message written meanwhile never lands inside it; a run's unterminated last line is written at its end."""
    class Response:
        def __init__(self, chunks, fail):
            self.chunks, self.fail = chunks, fail

        def stream(self, size):
            yield from self.chunks
            if self.fail:
                raise OSError("connection reset")

        def release_conn(self):
            pass

    class Core:
        def __init__(self):
            self.responses = [Response([b"line 000\nline 0", b"01\nli"], True), Response([b"line 000\nline 001\nline 002"], False)]

        def read_namespaced_pod_log(self, *args, **kwargs):
            return self.responses.pop(0)

    out = io.StringIO()
    follower = client.LogFollower(Core(), client.KINDS["trainjob"], "job", "ns", out, poll=0.1)
    pod = type("Pod", (), {"metadata": type("Meta", (), {"name": "p"})()})()
    with pytest.raises(OSError):
        follower._stream(pod, ("uid", 0))
    assert out.getvalue() == "line 000\nline 001\n"
    out.write("[trm launch] a message\n")
    follower._stream(pod, ("uid", 0))
    assert out.getvalue() == "line 000\nline 001\n[trm launch] a message\n"
    follower._flush(("uid", 0))
    assert out.getvalue().endswith("a message\nline 002")
