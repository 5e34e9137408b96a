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

    # the in-pod trainer: S3 + W&B secrets, memory-backed /dev/shm, node selector and tolerations from parameters
    train = configs["exec-train"]
    assert [s.secret_name for s in train.secret_as_env] == ["mlpipeline-minio-artifact", "trm-wandb"]
    assert train.secret_as_env[1].optional and not train.secret_as_env[0].optional
    envs = {e.env_var for s in train.secret_as_env for e in s.key_to_env}
    assert envs == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "WANDB_API_KEY"}
    (shm,) = train.empty_dir_mounts
    assert (shm.mount_path, shm.medium) == ("/dev/shm", "Memory")
    assert train.node_selector.node_selector_json.component_input_parameter == "pipelinechannel--node_selector"
    assert train.tolerations[0].toleration_json.component_input_parameter == "pipelinechannel--tolerations"
    # every step gets the S3 credentials from the secret
    for name, config in configs.items():
        assert "mlpipeline-minio-artifact" in [s.secret_name for s in config.secret_as_env], name


def _tasks(pipeline_doc) -> dict:
    """task name -> task spec over the root DAG and every sub-DAG."""
    out = {}
    for comp in [pipeline_doc["root"], *pipeline_doc["components"].values()]:
        for name, task in comp.get("dag", {}).get("tasks", {}).items():
            out[name] = task
    return out


def test_dag_shape_caching_retries_and_gpus(docs):
    pipeline_doc, _ = docs
    tasks = _tasks(pipeline_doc)
    assert {"check-params", "build-dataset", "train", "train-pytorchjob", "evaluate", "evaluate-2",
            "export-submission", "export-submission-2"} <= set(tasks)
    assert tasks["build-dataset"]["dependentTasks"] == ["check-params"]
    assert tasks["evaluate"]["dependentTasks"] == ["train"]
    assert tasks["export-submission"]["dependentTasks"] == ["evaluate", "train"]
    assert tasks["evaluate-2"]["dependentTasks"] == ["train-pytorchjob"]
    # caching only on the dataset step
    cached = sorted(n for n, t in tasks.items() if t.get("cachingOptions", {}).get("enableCache"))
    assert cached == ["build-dataset"]
    # retries on both trainers and nowhere else
    retried = sorted(n for n, t in tasks.items() if t.get("retryPolicy", {}).get("maxRetryCount"))
    assert retried == ["train", "train-pytorchjob"]
    # the two branches switch on trainer_backend
    conditions = [t["triggerPolicy"]["condition"] for t in tasks.values() if "triggerPolicy" in t]
    assert any("'local'" in c for c in conditions) and any("!" in c for c in conditions)
    # accelerators: the in-pod trainer asks for nproc_per_node GPUs of gpu_type, evaluation for one
    executors = pipeline_doc["deploymentSpec"]["executors"]
    train_acc = executors["exec-train"]["container"]["resources"]["accelerator"]
    assert "gpu_type" in str(train_acc) and "nproc_per_node" in str(train_acc)
    assert executors["exec-evaluate"]["container"]["resources"]["accelerator"]["count"] == "1"
    assert "resources" not in executors["exec-train-pytorchjob"]["container"], "the launcher pod needs no GPU"


def test_images_come_from_one_setting(tmp_path):
    text = compile_in_subprocess(tmp_path / "p.yaml", TRM_STEPS_IMAGE="reg.example/steps:abc",
                                 TRM_TRAINER_IMAGE="reg.example/trainer:def")
    doc = next(yaml.safe_load_all(text))
    images = {name: e["container"]["image"] for name, e in doc["deploymentSpec"]["executors"].items()}
    assert images["exec-check-params"] == images["exec-build-dataset"] == "reg.example/steps:abc"
    assert images["exec-train-pytorchjob"] == images["exec-export-submission"] == "reg.example/steps:abc"
    assert images["exec-train"] == images["exec-evaluate"] == "reg.example/trainer:def"
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


def test_submit_compiles_and_starts_a_run(monkeypatch):
    """`trm pipeline submit` against a recording stand-in for kfp.Client (no KFP server runs here)."""
    from pipeline import submit

    calls = []

    class RecordingClient:
        def get_pipeline_id(self, name):
            return None

        def upload_pipeline(self, path, pipeline_name):
            calls.append(("upload", pipeline_name, Path(path).read_text()[:200]))

        def create_run_from_pipeline_package(self, path, arguments, run_name, experiment_name, namespace):
            spec = next(yaml.safe_load_all(Path(path).read_text()))
            calls.append(("run", arguments, run_name, experiment_name, spec["pipelineInfo"]["name"]))

            class Result:
                run_id = "run-123"

            return Result()

    run_id = submit.submit("http://kfp.invalid", {"num_aug": 10}, "exp1", run_name="r1", upload="trm",
                           client=RecordingClient())
    assert run_id == "run-123"
    assert calls[0][:2] == ("upload", "trm")
    assert calls[1] == ("run", {"num_aug": 10}, "r1", "exp1", "trm-arc-agi")


def test_cli_dispatch(tmp_path, capsys):
    from trm.cli import main

    assert main(["pipeline", "compile", "--output", str(tmp_path / "p.yaml")]) == 0
    assert (tmp_path / "p.yaml").read_text().startswith("# PIPELINE DEFINITION")
    assert main(["pipeline", "nonsense"]) == 2
