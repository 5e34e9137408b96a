"""The compiled pipeline: golden YAML, pipeline-spec and kfp-kubernetes protos, platform settings, no credentials.

    .venv/bin/python -m pytest -q tests/test_pipeline.py
    # after an intended change to the DAG or a component, regenerate the golden file (images unset):
    env -u TRM_STEPS_IMAGE -u TRM_TRAINER_IMAGE -u TRM_S3_SECRET .venv/bin/python -m pipeline.compile \
        --output tests/golden/pipeline.yaml
"""

from __future__ import annotations

import difflib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden" / "pipeline.yaml"
REGENERATE = ("env -u TRM_STEPS_IMAGE -u TRM_TRAINER_IMAGE -u TRM_S3_SECRET .venv/bin/python -m pipeline.compile "
              "--output tests/golden/pipeline.yaml")
SENTINELS = {"AWS_ACCESS_KEY_ID": "AKIA-SENTINEL-ACCESS-7f3a", "AWS_SECRET_ACCESS_KEY": "sentinel-secret-91c2e",
             "WANDB_API_KEY": "sentinel-wandb-55d1"}


def compile_in_subprocess(out: Path, **env: str) -> str:
    """Compile in a fresh interpreter (the images are read at import) with `env` on top of a clean one."""
    clean = {k: v for k, v in os.environ.items() if k not in ("TRM_STEPS_IMAGE", "TRM_TRAINER_IMAGE", "TRM_S3_SECRET")}
    subprocess.run([sys.executable, "-m", "pipeline.compile", "--output", str(out)], cwd=ROOT,
                   env={**clean, **env}, check=True, capture_output=True, text=True)
    return out.read_text()


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> str:
    return compile_in_subprocess(tmp_path_factory.mktemp("compile") / "pipeline.yaml", **SENTINELS)


@pytest.fixture(scope="module")
def docs(compiled):
    pipeline_doc, platform_doc = list(yaml.safe_load_all(compiled))
    return pipeline_doc, platform_doc


def test_golden(compiled):
    want = GOLDEN.read_text()
    if compiled != want:
        diff = "".join(difflib.unified_diff(want.splitlines(True), compiled.splitlines(True), "golden", "compiled",
                                            n=2))
        pytest.fail(f"compiled pipeline differs from {GOLDEN.relative_to(ROOT)}; if intended, regenerate with\n"
                    f"  {REGENERATE}\n{diff[:6000]}")


def test_parses_into_pipeline_spec_protos(docs):
    from google.protobuf import json_format
    from kfp.kubernetes import kubernetes_executor_config_pb2 as k8s
    from kfp.pipeline_spec import pipeline_spec_pb2

    from components import settings

    pipeline_doc, platform_doc = docs
    spec = json_format.ParseDict(pipeline_doc, pipeline_spec_pb2.PipelineSpec())  # unknown fields raise
    assert spec.pipeline_info.name == "trm-arc-agi"
    platform = json_format.ParseDict(platform_doc, pipeline_spec_pb2.PlatformSpec())
    executors = platform.platforms["kubernetes"].deployment_spec.executors
    configs = {}
    for name, value in executors.items():
        as_dict = json_format.MessageToDict(value)
        configs[name] = json_format.ParseDict(as_dict, k8s.KubernetesExecutorConfig())
    assert set(configs) == set(spec.deployment_spec["executors"]), "every executor has platform settings"

    # the in-pod trainer: S3 + W&B secrets, memory-backed /dev/shm, scratch on /tmp, node selector and tolerations
    train = configs["exec-train"]
    assert [s.secret_name for s in train.secret_as_env] == ["mlpipeline-minio-artifact", "trm-wandb"]
    assert train.secret_as_env[1].optional and not train.secret_as_env[0].optional
    envs = {e.env_var for s in train.secret_as_env for e in s.key_to_env}
    assert envs == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "WANDB_API_KEY"}
    mounts = {m.mount_path: m for m in train.empty_dir_mounts}
    assert mounts["/dev/shm"].medium == "Memory"
    assert mounts["/tmp"].size_limit == settings.SCRATCH_SIZE["train"] and not mounts["/tmp"].medium
    assert train.node_selector.node_selector_json.component_input_parameter == "pipelinechannel--node_selector"
    assert train.tolerations[0].toleration_json.component_input_parameter == "pipelinechannel--tolerations"
    # the train steps are bounded by the launcher timeout; the steps with data have scratch space on /tmp
    for name in ("exec-train", "exec-train-job"):
        assert configs[name].active_deadline_seconds == settings.LAUNCHER_TIMEOUT, name
    for name, step in (("exec-build-dataset", "build-dataset"), ("exec-evaluate", "evaluate"),
                       ("exec-evaluate-2", "evaluate")):
        scratch = [m for m in configs[name].empty_dir_mounts if m.mount_path == "/tmp"]
        assert [m.size_limit for m in scratch] == [settings.SCRATCH_SIZE[step]], name
    for name, config in configs.items():
        # every step runs as the images' non-root user (KFP 2.17 adds no-escalation, drop ALL, seccomp)
        assert config.security_context.run_as_non_root and config.security_context.run_as_user == 1000, name
        # every step but the exit handler gets the S3 credentials from the secret
        if name != "exec-cleanup-jobs":
            assert "mlpipeline-minio-artifact" in [s.secret_name for s in config.secret_as_env], name
    assert not configs["exec-cleanup-jobs"].secret_as_env, "the cleanup step needs no S3 keys"


def _tasks(pipeline_doc) -> dict:
    """task name -> task spec over the root DAG and every sub-DAG."""
    out = {}
    for comp in [pipeline_doc["root"], *pipeline_doc["components"].values()]:
        for name, task in comp.get("dag", {}).get("tasks", {}).items():
            out[name] = task
    return out


def test_dag_shape_caching_retries_and_gpus(docs):
    from components import settings

    pipeline_doc, _ = docs
    tasks = _tasks(pipeline_doc)
    assert {"check-params", "build-dataset", "train", "train-job", "choose-checkpoint", "choose-checkpoint-2",
            "evaluate", "evaluate-2", "export-submission", "export-submission-2", "cleanup-jobs"} <= set(tasks)
    assert tasks["build-dataset"]["dependentTasks"] == ["check-params"]
    # the final checkpoint (last | best) is chosen after training; evaluate and export take the chosen one
    assert tasks["choose-checkpoint"]["dependentTasks"] == ["train"]
    assert tasks["choose-checkpoint-2"]["dependentTasks"] == ["train-job"]
    assert tasks["evaluate"]["dependentTasks"] == ["choose-checkpoint"]
    assert tasks["export-submission"]["dependentTasks"] == ["choose-checkpoint", "evaluate"]
    assert tasks["evaluate-2"]["dependentTasks"] == ["choose-checkpoint-2"]
    for name in ("evaluate", "export-submission"):
        assert tasks[name]["inputs"]["artifacts"]["model"]["taskOutputArtifact"] == {
            "outputArtifactKey": "model", "producerTask": "choose-checkpoint"}, name
    assert tasks["choose-checkpoint"]["inputs"]["parameters"]["final_checkpoint"] == {
        "componentInputParameter": "pipelinechannel--final_checkpoint"}
    # the exit handler: cleanup-jobs runs after everything else, however it ended, with the final status
    root = pipeline_doc["root"]["dag"]["tasks"]
    assert set(root) == {"cleanup-jobs", "exit-handler-1"}
    assert root["cleanup-jobs"]["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    assert root["cleanup-jobs"]["dependentTasks"] == ["exit-handler-1"]
    inputs = root["cleanup-jobs"]["inputs"]["parameters"]
    assert inputs["kfp_run_id"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}"
    assert "taskFinalStatus" in inputs["status"]
    # caching only on the dataset step
    cached = sorted(n for n, t in tasks.items() if t.get("cachingOptions", {}).get("enableCache"))
    assert cached == ["build-dataset"]
    # retries on both trainers and nowhere else; the retry window spans a whole training (not KFP's 3600 s)
    retried = {n: t["retryPolicy"] for n, t in tasks.items() if t.get("retryPolicy", {}).get("maxRetryCount")}
    assert sorted(retried) == ["train", "train-job"]
    for policy in retried.values():
        assert policy["backoffMaxDuration"] == f"{settings.LAUNCHER_TIMEOUT}s"
        assert policy["maxRetryCount"] == settings.TRAIN_RETRIES
    # the two branches switch on the backend check-params resolved (auto -> trainjob | pytorchjob | local)
    conditions = [t["triggerPolicy"]["condition"] for t in tasks.values() if "condition" in t.get("triggerPolicy", {})]
    assert conditions and all("check-params-backend" in c for c in conditions)
    assert any("'local'" in c and not c.startswith("!") for c in conditions) and any(c.startswith("!")
                                                                                     for c in conditions)
    assert tasks["train-job"]["inputs"]["parameters"]["backend"] == {
        "componentInputParameter": "pipelinechannel--check-params-backend"}
    # accelerators: the in-pod trainer asks for nproc_per_node GPUs of gpu_type, evaluation for one
    executors = pipeline_doc["deploymentSpec"]["executors"]
    train_acc = executors["exec-train"]["container"]["resources"]["accelerator"]
    assert "gpu_type" in str(train_acc) and "nproc_per_node" in str(train_acc)
    assert executors["exec-evaluate"]["container"]["resources"]["accelerator"]["count"] == "1"
    assert "accelerator" not in executors["exec-train-job"]["container"]["resources"], "the launcher needs no GPU"
    # the train step also outputs the training curves (HTML) beside Model and Metrics
    train_outputs = pipeline_doc["components"]["comp-train-job"]["outputDefinitions"]["artifacts"]
    assert train_outputs["curves"]["artifactType"]["schemaTitle"] == "system.HTML"
    assert set(train_outputs) == {"model", "metrics", "curves"}


def test_every_executor_requests_cpu_and_memory(docs):
    from components import settings

    pipeline_doc, _ = docs
    executors = pipeline_doc["deploymentSpec"]["executors"]
    assert len(executors) == 11
    for name, executor in executors.items():
        resources = executor["container"]["resources"]
        step = name[len("exec-"):].removesuffix("-2")
        cpu, memory, limit = settings.STEP_RESOURCES[step]
        assert (resources["resourceCpuRequest"], resources["resourceMemoryRequest"],
                resources["resourceMemoryLimit"]) == (cpu, memory, limit), name


def test_one_parameter_picks_the_image_of_every_gpu_step(docs):
    pipeline_doc, _ = docs
    executors = pipeline_doc["deploymentSpec"]["executors"]
    images = {name: e["container"]["image"] for name, e in executors.items()}
    for name in ("exec-train", "exec-evaluate", "exec-evaluate-2"):
        assert images[name] == "{{$.inputs.parameters['pipelinechannel--trainer_image']}}", name
    # the launcher runs the steps image and hands trainer_image to the job's pods
    assert "trainer_image" in pipeline_doc["components"]["comp-train-job"]["inputDefinitions"]["parameters"]
    assert images["exec-train-job"] == images["exec-check-params"]


def test_images_come_from_one_setting(tmp_path):
    text = compile_in_subprocess(tmp_path / "p.yaml", TRM_STEPS_IMAGE="reg.example/steps:abc",
                                 TRM_TRAINER_IMAGE="reg.example/trainer:def")
    doc = next(yaml.safe_load_all(text))
    images = {name: e["container"]["image"] for name, e in doc["deploymentSpec"]["executors"].items()}
    assert images["exec-check-params"] == images["exec-build-dataset"] == "reg.example/steps:abc"
    assert images["exec-train-job"] == images["exec-export-submission"] == "reg.example/steps:abc"
    assert doc["root"]["inputDefinitions"]["parameters"]["trainer_image"]["defaultValue"] == "reg.example/trainer:def"
    assert "ghcr.io" not in text


def test_no_credentials_in_compiled_yaml(compiled, docs):
    for value in SENTINELS.values():
        assert value not in compiled
    pipeline_doc, _ = docs
    names = list(pipeline_doc["root"]["inputDefinitions"]["parameters"])
    for comp in pipeline_doc["components"].values():
        names += list(comp.get("inputDefinitions", {}).get("parameters", {}))
    risky = [n for n in names if any(w in n.lower() for w in ("secret", "password", "token", "access_key",
                                                                 "api_key", "credential"))]
    assert risky == [], f"credential-like parameters: {risky}"
    defaults = pipeline_doc["root"]["inputDefinitions"]["parameters"]
    assert defaults["s3_endpoint"]["defaultValue"] == "http://seaweedfs.kubeflow:9000"
    assert defaults["trainer_backend"]["defaultValue"] == "auto"


def test_params_parse_and_reject():
    from pipeline.params import parse_params

    got = parse_params(["num_aug=8", "subsets=[training2,evaluation2]", "ema=false", "lr=1",
                        'node_selector={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}',
                        "train_overrides=[max_steps=5]"])
    assert got == {"num_aug": 8, "subsets": ["training2", "evaluation2"], "ema": False, "lr": 1.0,
                   "node_selector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
                   "train_overrides": ["max_steps=5"]}
    with pytest.raises(ValueError, match="num_aug"):
        parse_params(["num_aug=many"])
    with pytest.raises(ValueError, match="did you mean num_aug"):
        parse_params(["num_augs=3"])
    with pytest.raises(ValueError, match="key=value"):
        parse_params(["epochs"])


def _kfp_client():
    """A stand-in for kfp.Client with kfp's own signatures (create_autospec): a wrong call raises TypeError."""
    from unittest import mock

    import kfp

    client = mock.create_autospec(kfp.Client, instance=True)
    client.get_pipeline_id.return_value = None
    client.create_run_from_pipeline_package.return_value = mock.Mock(run_id="run-123")
    return client


def test_submit_compiles_and_starts_a_run():
    """`trm pipeline submit` against an autospec of kfp.Client (no KFP server runs here)."""
    from pipeline import submit

    client = _kfp_client()
    run_id = submit.submit("http://kfp.invalid", {"num_aug": 10}, "exp1", run_name="r1", upload="trm",
                           namespace="team-a", client=client)
    assert run_id == "run-123"
    client.get_pipeline_id.assert_called_once_with("trm")
    (package,), kwargs = client.upload_pipeline.call_args
    assert kwargs == {"pipeline_name": "trm"} and package.endswith("pipeline.yaml")
    _, kwargs = client.create_run_from_pipeline_package.call_args
    assert kwargs == {"arguments": {"num_aug": 10}, "run_name": "r1", "experiment_name": "exp1",
                      "namespace": "team-a"}
    # an existing pipeline gets a new version instead
    client = _kfp_client()
    client.get_pipeline_id.return_value = "pid-7"
    submit.submit("http://kfp.invalid", {}, "exp1", run_name="r2", upload="trm", client=client)
    _, kwargs = client.upload_pipeline_version.call_args
    assert kwargs == {"pipeline_version_name": "r2", "pipeline_id": "pid-7"}
    client.upload_pipeline.assert_not_called()


def test_the_client_stand_in_enforces_kfp_signatures():
    client = _kfp_client()
    with pytest.raises(TypeError):
        client.create_run_from_pipeline_package("p.yaml", params={"a": 1})  # kfp calls it `arguments`
    with pytest.raises(AttributeError):
        client.upload_pipeline_from_package("p.yaml")  # no such method on kfp.Client


def test_cli_dispatch(tmp_path, capsys):
    from trm.cli import main

    assert main(["pipeline", "compile", "--output", str(tmp_path / "p.yaml")]) == 0
    assert (tmp_path / "p.yaml").read_text().startswith("# PIPELINE DEFINITION")
    assert main(["pipeline", "nonsense"]) == 2
