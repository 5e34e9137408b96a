"""The post-training pipeline: compiled (golden YAML, protos, DAG shape), its step code as plain functions (chunking,
checkpoint hand-off, merge, score, the last|best choice used by export), check-posttrain against a real local S3,
and the whole pipeline through kfp.local (SubprocessRunner) on a few tasks.

    .venv/bin/python -m pytest -q tests/test_pipeline_posttrain.py
    # after an intended change to the DAG or a component, regenerate the golden file (images unset):
    env -u TRM_STEPS_IMAGE -u TRM_TRAINER_IMAGE -u TRM_S3_SECRET .venv/bin/python -m pipeline.compile \
        --pipeline posttrain --output tests/golden/posttrain.yaml

The pretrained checkpoint of the S3 tests is made here: cpu-tiny trained for two steps on three ARC-AGI-2 training
tasks (about 10 s). The kfp.local run adapts it to the first four evaluation2 tasks in two chunks (about 40 s on
the project's loaded 2-core machine).
"""

from __future__ import annotations

import difflib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from kfp import dsl

sys.path.insert(0, str(Path(__file__).parent))
from test_pipeline import SENTINELS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden" / "posttrain.yaml"
REGENERATE = ("env -u TRM_STEPS_IMAGE -u TRM_TRAINER_IMAGE -u TRM_S3_SECRET .venv/bin/python -m pipeline.compile "
              "--pipeline posttrain --output tests/golden/posttrain.yaml")


# -- the compiled pipeline ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("compile") / "posttrain.yaml"
    clean = {k: v for k, v in os.environ.items() if k not in ("TRM_STEPS_IMAGE", "TRM_TRAINER_IMAGE", "TRM_S3_SECRET")}
    subprocess.run([sys.executable, "-m", "pipeline.compile", "--pipeline", "posttrain", "--output", str(out)],
                   cwd=ROOT, env={**clean, **SENTINELS}, check=True, capture_output=True, text=True)
    return out.read_text()


@pytest.fixture(scope="module")
def docs(compiled):
    return list(yaml.safe_load_all(compiled))


def _tasks(pipeline_doc) -> dict:
    """task name -> (task spec, the component whose DAG holds it) over the root DAG and every sub-DAG."""
    out = {}
    for owner, comp in [("root", pipeline_doc["root"]), *pipeline_doc["components"].items()]:
        for name, task in comp.get("dag", {}).get("tasks", {}).items():
            out[name] = (task, owner)
    return out


def test_golden(compiled):
    want = GOLDEN.read_text()
    if compiled != want:
        diff = "".join(difflib.unified_diff(want.splitlines(True), compiled.splitlines(True), "golden", "compiled",
                                            n=2))
        pytest.fail(f"compiled pipeline differs from {GOLDEN.relative_to(ROOT)}; if intended, regenerate with\n"
                    f"  {REGENERATE}\n{diff[:6000]}")


def test_parses_into_protos_with_platform_settings(docs):
    from google.protobuf import json_format
    from kfp.kubernetes import kubernetes_executor_config_pb2 as k8s
    from kfp.pipeline_spec import pipeline_spec_pb2

    from components import settings

    pipeline_doc, platform_doc = docs
    spec = json_format.ParseDict(pipeline_doc, pipeline_spec_pb2.PipelineSpec())  # unknown fields raise
    assert spec.pipeline_info.name == "trm-arc-agi-posttrain"
    platform = json_format.ParseDict(platform_doc, pipeline_spec_pb2.PlatformSpec())
    executors = platform.platforms["kubernetes"].deployment_spec.executors
    configs = {name: json_format.ParseDict(json_format.MessageToDict(value), k8s.KubernetesExecutorConfig())
               for name, value in executors.items()}
    assert set(configs) == set(spec.deployment_spec["executors"]), "every executor has platform settings"
    for name, config in configs.items():
        assert config.security_context.run_as_non_root and config.security_context.run_as_user == 1000, name
        if name != "exec-cleanup-jobs":
            assert settings.S3_SECRET in [s.secret_name for s in config.secret_as_env], name
    # the shared pod settings of the pretraining pipeline: GPU pod for the in-pod trainer, bounded train steps
    train = configs["exec-train"]
    assert {m.mount_path: m.medium for m in train.empty_dir_mounts}["/dev/shm"] == "Memory"
    assert train.node_selector.node_selector_json.component_input_parameter == "pipelinechannel--node_selector"
    for name in ("exec-train", "exec-train-job"):
        assert configs[name].active_deadline_seconds == settings.LAUNCHER_TIMEOUT, name
    # every executor requests what components.settings gives its step
    for name, executor in pipeline_doc["deploymentSpec"]["executors"].items():
        resources = executor["container"]["resources"]
        cpu, memory, limit = settings.STEP_RESOURCES[name[len("exec-"):].removesuffix("-2")]
        assert (resources["resourceCpuRequest"], resources["resourceMemoryRequest"],
                resources["resourceMemoryLimit"]) == (cpu, memory, limit), name


def test_dag_shape(docs):
    """check -> ParallelFor over its chunks (dataset, train, choose, export) -> merge (Collected) -> score when the
    outputs are known; once per trainer branch; inside the exit handler."""
    from components import settings

    pipeline_doc, _ = docs
    tasks = _tasks(pipeline_doc)
    root = pipeline_doc["root"]["dag"]["tasks"]
    assert set(root) == {"cleanup-jobs", "exit-handler-1"}
    assert root["cleanup-jobs"]["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    loops = {name: task for name, (task, _) in tasks.items() if "parameterIterator" in task}
    assert len(loops) == 2, "one ParallelFor per trainer branch"
    for name, loop in loops.items():
        assert loop["parameterIterator"]["items"]["inputParameter"] == "pipelinechannel--check-posttrain-chunks"
        assert loop["iteratorPolicy"]["parallelismLimit"] == settings.CHUNK_PARALLELISM
        # the second branch's copies are named <name>-2
        body = {n.removesuffix("-2"): t for n, t in
                pipeline_doc["components"][loop["componentRef"]["name"]]["dag"]["tasks"].items()}
        trainer = "train" if "train" in body else "train-job"
        assert set(body) == {"build-dataset", trainer, "choose-checkpoint", "export-submission"}, sorted(body)
        assert body[trainer]["dependentTasks"][0].startswith("build-dataset")
        assert body["choose-checkpoint"]["dependentTasks"] == [trainer]
        # each chunk trains in its own run folder on its own dataset (selected from the loop item)
        build = body["build-dataset"]["inputs"]["parameters"]
        assert build["run_root"]["parameterExpressionSelector"] == 'parseJson(string_value)["run_root"]'
        assert build["input_prefix"]["parameterExpressionSelector"] == 'parseJson(string_value)["input_prefix"]'
        train = body[trainer]["inputs"]["parameters"]
        assert train["run_root"]["parameterExpressionSelector"] == 'parseJson(string_value)["run_root"]'
        assert train["train_overrides"] == {"componentInputParameter":
                                            "pipelinechannel--check-posttrain-train_overrides"}
        for key in ("hidden_size", "num_heads", "L_layers", "H_cycles", "L_cycles", "halt_max_steps"):
            assert train[key]["runtimeValue"]["constant"] == 0.0, "the model comes from the checkpoint"
        # export publishes the chosen checkpoint's evaluation, not the trainer's last checkpoint
        export = body["export-submission"]["inputs"]["artifacts"]
        for key, output in (("submission", "evaluation"), ("model", "model")):
            assert export[key]["taskOutputArtifact"]["outputArtifactKey"] == output, key
            assert export[key]["taskOutputArtifact"]["producerTask"].startswith("choose-checkpoint"), key
        choose = body["choose-checkpoint"]
        assert choose["inputs"]["parameters"]["need_evaluation"]["runtimeValue"]["constant"] is True
        assert choose["inputs"]["parameters"]["final_checkpoint"] == {
            "componentInputParameter": "pipelinechannel--final_checkpoint"}
    # the merge collects every chunk's export; the score runs only when outputs are known
    merges = [t for n, (t, _) in tasks.items() if n.startswith("merge-submissions")]
    assert len(merges) == 2
    for merge in merges:
        parts = merge["inputs"]["artifacts"]["parts"]
        assert parts["taskOutputArtifact"]["outputArtifactKey"].startswith("pipelinechannel--export-submission")
    scores = [(t, owner) for n, (t, owner) in tasks.items() if n.startswith("score-submission")]
    assert len(scores) == 2
    conditions = [t["triggerPolicy"]["condition"] for n, (t, _) in tasks.items() if n.startswith("condition-")
                  and "condition" in t.get("triggerPolicy", {})]
    assert any("check-posttrain-solutions" in c and "!= ''" in c for c in conditions), conditions
    assert any("check-posttrain-backend" in c for c in conditions)
    # retries on the trainers only; no caching anywhere
    retried = sorted(n for n, (t, _) in tasks.items() if t.get("retryPolicy", {}).get("maxRetryCount"))
    assert retried == ["train", "train-job"]
    assert not [n for n, (t, _) in tasks.items() if t.get("cachingOptions", {}).get("enableCache")]


def test_defaults_are_cfg_posttrain_and_no_credentials(compiled, docs):
    from trm.config import load_config

    for value in SENTINELS.values():
        assert value not in compiled
    pipeline_doc, _ = docs
    params = pipeline_doc["root"]["inputDefinitions"]["parameters"]
    cfg = load_config(["preset=cfg_posttrain"], warn=False)
    assert params["preset"]["defaultValue"] == "cfg_posttrain"
    for key in ("global_batch_size", "epochs", "eval_interval", "lr", "puzzle_emb_lr", "ema"):
        assert params[key]["defaultValue"] == getattr(cfg, key), key
    assert params["max_augmentations"]["defaultValue"] == cfg.eval_max_augmentations == 512
    assert params["chunk_size"]["defaultValue"] == 0 and params["final_checkpoint"]["defaultValue"] == "last"
    assert params["checkpoint"]["defaultValue"] == "" and params["subsets"]["defaultValue"] == ["evaluation2"]
    risky = [n for n in params if any(w in n.lower() for w in ("secret", "password", "token", "access_key"))]
    assert risky == []


def test_params_and_cli(tmp_path):
    from pipeline.params import parse_params
    from trm.cli import main

    got = parse_params(["checkpoint=s3://trm/runs/seed1", "chunk_size=40", "final_checkpoint=best"], "posttrain")
    assert got == {"checkpoint": "s3://trm/runs/seed1", "chunk_size": 40, "final_checkpoint": "best"}
    with pytest.raises(ValueError, match="unknown pipeline parameter 'checkpoint'"):
        parse_params(["checkpoint=x"])  # the pretraining pipeline has none
    with pytest.raises(ValueError, match="did you mean chunk_size"):
        parse_params(["chunk_sizes=4"], "posttrain")
    assert main(["pipeline", "compile", "--pipeline", "posttrain", "--output", str(tmp_path / "p.yaml")]) == 0
    assert "trm-arc-agi-posttrain" in (tmp_path / "p.yaml").read_text()


# -- plain functions -----------------------------------------------------------------------------------------------
def test_split_into_chunks():
    from components.impl.posttrain import split

    ids = [f"t{i}" for i in range(5)]
    assert split(ids, 0) == [ids]
    assert split(ids, 2) == [["t0", "t1"], ["t2", "t3"], ["t4"]]
    assert split(ids, 5) == split(ids, 9) == [ids]
    with pytest.raises(ValueError, match="chunk_size"):
        split(ids, -1)


def test_chunk_words_and_reserved_keys():
    from components.impl.posttrain import chunk_words

    assert chunk_words("s3://trm/c/step-5", "ema", 0, ["lr=1e-3"]) == [
        "load_checkpoint=s3://trm/c/step-5", "load_weights=ema", "eval_max_augmentations=null", "lr=1e-3"]
    assert chunk_words("c", "auto", 512, [])[2] == "eval_max_augmentations=512"
    for word in ("load_checkpoint=other", "+data_paths=[x]", "eval_max_augmentations=8"):
        with pytest.raises(ValueError, match="set by the pipeline"):
            chunk_words("c", "auto", 0, [word])


def test_model_words_left_out_for_the_checkpoint():
    """The post-training trainer gets no arch.* word (0), so the model is the checkpoint's (trm.warmstart: a
    command-line shape key that differs from the checkpoint is an error); the pretraining values pass through."""
    from components.impl.check import train_overrides
    from trm.config import load_config

    post = train_overrides("cfg_posttrain", "d", "r", 0, 0, 0, 0, 0, 0, 16, 4, 2, 1e-3, 1e-2, False, ["x=1"])
    assert not [w for w in post if w.startswith("arch.")] and post[-1] == "x=1"
    assert load_config(post[:-1]).explicit_keys.isdisjoint({"arch.hidden_size", "arch.L_cycles"})
    pre = train_overrides("cpu-tiny", "d", "r", 64, 2, 1, 1, 2, 2, 16, 4, 2, 1e-3, 1e-2, False, [])
    assert [w for w in pre if w.startswith("arch.")] == [
        "arch.hidden_size=64", "arch.num_heads=2", "arch.L_layers=1", "arch.H_cycles=1", "arch.L_cycles=2",
        "arch.halt_max_steps=2"]


def test_cluster_job_takes_the_posttrain_words():
    """The words a chunk's TrainJob/PyTorchJob gets pass the launcher's key=value check (preset=cfg_posttrain
    selects the built-in config; no --config-name needed) and build valid jobs."""
    from components.impl.check import train_overrides
    from components.impl.launch import launch_config
    from components.impl.posttrain import chunk_root, chunk_words
    from trm.launch.pytorchjob import build_pytorchjob, operator_problems
    from trm.launch.trainjob import build_trainjob, trainjob_problems

    root = chunk_root("s3://trm/posttrain/post1", 3)
    extra = chunk_words("s3://trm/runs/seed1/checkpoints/step-723000", "auto", 512, ["freeze_weights_epochs=600"])
    words = train_overrides("cfg_posttrain", f"{root}/dataset", root, 0, 0, 0, 0, 0, 0, 384, 15000, 3000, 1e-4,
                            1e-2, True, extra)
    job = {"image": "reg/trainer:x", "gpu_type": "nvidia.com/gpu", "run_root": root, "namespace": "team-a",
           "nnodes": 1, "nproc_per_node": 4, "kfp_run_id": "run-1", "s3_endpoint": "http://s3:9000"}
    cfg = launch_config(words, job, {})
    assert cfg.name == "trm-post1-c003"
    assert cfg.train_args[0] == "preset=cfg_posttrain"
    assert "load_checkpoint=s3://trm/runs/seed1/checkpoints/step-723000" in cfg.train_args
    assert "eval_max_augmentations=512" in cfg.train_args and cfg.train_args[-1] == "freeze_weights_epochs=600"
    assert operator_problems(build_pytorchjob(cfg)) == [] and trainjob_problems(build_trainjob(cfg)) == []


def test_too_small_names_the_chunk():
    from components.impl.posttrain import too_small
    from trm.data.validate import Pair, Task

    import numpy as np

    grid = np.zeros((2, 2), dtype=np.uint8)
    tasks = {t: Task(t, [Pair(grid, grid)] * n, [Pair(grid, None)]) for t, n in (("a", 3), ("b", 3), ("c", 2))}
    assert too_small(tasks, [["a", "b"], ["c"]], 4, 2) == ""  # 6*2 and 2*2 rows per iteration
    message = too_small(tasks, [["a", "b"], ["c"]], 8, 2)
    assert message.startswith("global_batch_size: chunk 1 (1 task(s), 2 demonstration pairs per epoch) gives 4")
    assert too_small(tasks, [["a", "b", "c"]], 8, 2, max_examples_per_puzzle=1) != ""  # 3 per epoch


def _step(folder: Path, step: int) -> str:
    where = folder / "checkpoints" / f"step-{step}"
    where.mkdir(parents=True)
    (where / "meta.json").write_text(json.dumps({"step": step, "files": {}}))
    return str(where)


def test_resolve_checkpoint_hands_off_from_a_pretraining_run(tmp_path):
    from components.impl.posttrain import resolve_checkpoint

    run = tmp_path / "pre"
    _step(run, 100)
    newest = _step(run, 200)
    assert resolve_checkpoint(str(run)) == (newest, f"the newest complete checkpoint of the run {run}")
    chosen = str(run / "checkpoints" / "step-100")
    (run / "run.json").write_text(json.dumps({"checkpoint": chosen + "/"}))  # what export-submission publishes
    got, how = resolve_checkpoint(str(run) + "/")
    assert got == chosen and "exported by the pretraining run" in how
    assert resolve_checkpoint(chosen) == (chosen, "as given")
    (run / "run.json").write_text("{}")
    with pytest.raises(ValueError, match="names no checkpoint"):
        resolve_checkpoint(str(run))
    with pytest.raises(ValueError, match="checkpoint: empty"):
        resolve_checkpoint(" ")


def test_read_tasks_with_a_solutions_file(tmp_path):
    from components.impl.posttrain import known_outputs, read_tasks

    task = {"train": [{"input": [[1]], "output": [[2]]}], "test": [{"input": [[3]]}]}
    (tmp_path / "arc_a_challenges.json").write_text(json.dumps({"t1": task, "t2": task}))
    (tmp_path / "arc_b_challenges.json").write_text(json.dumps({"t3": task}))
    tasks = read_tasks(str(tmp_path / "arc"), ["a", "b"])
    assert list(tasks) == ["t1", "t2", "t3"] and not any(known_outputs(t) for t in tasks.values())
    (tmp_path / "sol.json").write_text(json.dumps({"t2": [[[4]]], "t9": [[[1]]]}))
    tasks = read_tasks(str(tmp_path / "arc"), ["a", "b"], str(tmp_path / "sol.json"))
    assert [t for t, v in tasks.items() if known_outputs(v)] == ["t2"]
    (tmp_path / "bad.json").write_text(json.dumps({"t1": [[[4]], [[5]]]}))
    with pytest.raises(ValueError, match="task t1: 2 grid"):
        read_tasks(str(tmp_path / "arc"), ["a", "b"], str(tmp_path / "bad.json"))
    (tmp_path / "arc_c_challenges.json").write_text(json.dumps({"t1": task}))
    with pytest.raises(ValueError, match="task t1 is in both 'a' and 'c'"):
        read_tasks(str(tmp_path / "arc"), ["a", "c"])
    with pytest.raises(ValueError, match="cannot read subset 'zz'"):
        read_tasks(str(tmp_path / "arc"), ["zz"])


def _artifact(cls, folder: Path, name: str, **metadata):
    art = cls(name=name, uri=str(folder / name), metadata=dict(metadata))
    return art


def _submission(tasks: dict, right: bool) -> dict:
    return {t: [{"attempt_1": out if right else [[0]], "attempt_2": [[0]]} for out in outs]
            for t, outs in tasks.items()}


def test_merge_and_score(tmp_path):
    """Two chunks' submissions merged into one validated submission.json; a missing task or disagreeing chunks
    fail naming it; `trm score` gives pass@1/pass@2 per task and overall, also in run.json."""
    from components.impl.posttrain import merge, score
    from trm.evaluation.submission import SubmissionError

    outputs = {"t1": [[[1]]], "t2": [[[2]], [[3]]], "t3": [[[4]]]}
    challenges = {t: {"train": [{"input": [[0]], "output": [[0]]}], "test": [{"input": [[9]]}] * len(o)}
                  for t, o in outputs.items()}
    root = tmp_path / "run"
    (root / "tasks").mkdir(parents=True)
    (root / "tasks" / "all_tasks_challenges.json").write_text(json.dumps(challenges))
    (root / "tasks" / "all_tasks_solutions.json").write_text(json.dumps(outputs))
    parts = []
    for index, (ids, right) in enumerate(((["t1", "t2"], True), (["t3"], False))):
        chunk = root / "chunks" / f"run-c{index:03d}"
        chunk.mkdir(parents=True)
        (chunk / "submission.json").write_text(json.dumps(_submission({t: outputs[t] for t in ids}, right)))
        (chunk / "run.json").write_text(json.dumps({"tasks": len(ids), "step": 7 + index, "checkpoint": "c",
                                                    "final_checkpoint": "best", "metrics": {}}))
        parts.append(_artifact(dsl.Artifact, tmp_path, f"part{index}", uri=str(chunk / "submission.json")))
    summary = merge(parts, str(root), str(root / "tasks" / "all_tasks_challenges.json"), "pre/step-5")
    merged = json.loads((root / "submission.json").read_text())
    assert list(merged) == ["t1", "t2", "t3"] and summary["submission"] == str(root / "submission.json")
    assert [c["step"] for c in summary["chunks"]] == [7, 8] and summary["pretrained"] == "pre/step-5"

    result = score(str(root / "submission.json"), str(root / "tasks" / "all_tasks_solutions.json"), str(root))
    assert result["tasks"] == {"t1": {"pass@1": 1.0, "pass@2": 1.0}, "t2": {"pass@1": 1.0, "pass@2": 1.0},
                               "t3": {"pass@1": 0.0, "pass@2": 0.0}}
    assert result["pass@2"] == pytest.approx(2 / 3)
    assert json.loads((root / "score.json").read_text())["pass@1"] == pytest.approx(2 / 3)
    assert json.loads((root / "run.json").read_text())["score"]["pass@2"] == pytest.approx(2 / 3)

    with pytest.raises(SubmissionError, match="task t3: missing"):
        merge(parts[:1], str(tmp_path / "other"), str(root / "tasks" / "all_tasks_challenges.json"), "p")
    clash = tmp_path / "clash.json"
    clash.write_text(json.dumps(_submission({"t1": outputs["t1"]}, False)))
    with pytest.raises(ValueError, match="task t1: .* disagree"):
        merge([*parts, _artifact(dsl.Artifact, tmp_path, "clash", uri=str(clash))], str(tmp_path / "o2"),
              str(root / "tasks" / "all_tasks_challenges.json"), "p")


@pytest.fixture
def evaluated_run(tmp_path):
    """A finished run folder: checkpoints 2, 4, 6, each evaluated with its own submission; pass@2 best at 4."""
    outputs = {"t1": [[[1]]], "t2": [[[2]]]}
    run = tmp_path / "run"
    for step, value in ((2, 0.0), (4, 0.5), (6, 0.25)):
        _step(run, step)
        folder = run / "eval" / f"step-{step}"
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text(json.dumps({"ARC/pass@1": value, "ARC/pass@2": value,
                                                         "ARC/tasks_scored": 2}))
        sub = {t: [{"attempt_1": [[step]], "attempt_2": [[step]]}] for t in outputs}
        (folder / "submission.json").write_text(json.dumps(sub))
        (folder / "report.html").write_text("<!DOCTYPE html>")
    data = tmp_path / "dataset"
    data.mkdir()
    (data / "test_puzzles.json").write_text(json.dumps({t: {"train": [], "test": [{"input": [[0]], "output": o[0]}]}
                                                        for t, o in outputs.items()}))
    return run, data


@pytest.mark.parametrize("choice, step", [("best", 4), ("last", 6)])
def test_final_checkpoint_choice_is_what_export_publishes(evaluated_run, tmp_path, choice, step):
    """choose-checkpoint -> export-submission, as a post-training chunk runs them: `best` publishes step 4's
    checkpoint and evaluation (ARC/pass@2 0.5), not the last step's; `last` step 6's."""
    from components.choose import choose_checkpoint
    from components.export_submission import export_submission

    run, data = evaluated_run
    arts = tmp_path / "art"
    trained = _artifact(dsl.Model, arts, "trained", uri=str(run / "checkpoints" / "step-6"), step=6)
    model, evaluation = _artifact(dsl.Model, arts, "model"), _artifact(dsl.Artifact, arts, "evaluation")
    choose_checkpoint.python_func(s3_endpoint="", trained=trained, run_root=str(run), final_checkpoint=choice,
                                  need_evaluation=True, model=model, evaluation=evaluation)
    assert model.metadata["uri"] == str(run / "checkpoints" / f"step-{step}")
    assert (model.metadata["step"], model.metadata["chosen"]) == (step, choice)
    assert evaluation.metadata["uri"] == str(run / "eval" / f"step-{step}" / "submission.json")
    dataset = _artifact(dsl.Dataset, arts, "dataset", uri=str(data))
    final = _artifact(dsl.Artifact, arts, "final")
    export_submission.python_func(s3_endpoint="", submission=evaluation, dataset=dataset, model=model,
                                  run_root=str(run), final=final)
    published = json.loads((run / "submission.json").read_text())
    assert published["t1"][0]["attempt_1"] == [[step]], "the chosen step's evaluation is the submission"
    summary = json.loads((run / "run.json").read_text())
    assert (summary["checkpoint"], summary["step"], summary["final_checkpoint"]) == (
        model.metadata["uri"], step, choice)
    assert summary["metrics"]["ARC/pass@2"] == {4: 0.5, 6: 0.25}[step]


def test_best_without_known_outputs_is_the_last_and_a_missing_evaluation_fails(evaluated_run, tmp_path):
    from components.choose import choose_checkpoint

    run, _ = evaluated_run
    for step in (2, 4, 6):  # hidden test outputs: nothing scored
        (run / "eval" / f"step-{step}" / "metrics.json").write_text(json.dumps({"ARC/pass@2": 0.0,
                                                                                "ARC/tasks_scored": 0}))
    arts = tmp_path / "art"
    trained = _artifact(dsl.Model, arts, "trained", uri=str(run / "checkpoints" / "step-6"))
    model, evaluation = _artifact(dsl.Model, arts, "model"), _artifact(dsl.Artifact, arts, "evaluation")
    choose_checkpoint.python_func(s3_endpoint="", trained=trained, run_root=str(run), final_checkpoint="best",
                                  need_evaluation=True, model=model, evaluation=evaluation)
    assert model.metadata["step"] == 6 and model.metadata["chosen"] == "last (no evaluation with known outputs)"
    (run / "eval" / "step-6" / "submission.json").unlink()
    with pytest.raises(FileNotFoundError, match="step 6 .* has no evaluation"):
        choose_checkpoint.python_func(s3_endpoint="", trained=trained, run_root=str(run), final_checkpoint="last",
                                      need_evaluation=True, model=model, evaluation=evaluation)
    with pytest.raises(ValueError, match="final_checkpoint: expected one of"):
        choose_checkpoint.python_func(s3_endpoint="", trained=trained, run_root=str(run), final_checkpoint="top",
                                      need_evaluation=False, model=model, evaluation=evaluation)


# -- against a real S3 -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    """A pretraining run folder: cpu-tiny, two steps on the first three training2 tasks (local files)."""
    from pipeline.local import subset_source

    base = tmp_path_factory.mktemp("pre")
    source = subset_source(base / "src", 3, ["training2"])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", "trm.data.build", "--input-file-prefix", source, "--output-dir",
                    str(base / "data"), "--subsets", "training2", "--test-set-name", "training2", "--num-aug", "1"],
                   cwd=ROOT, env=env, check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "trm.train", "preset=cpu-tiny", f"data_paths=[{base / 'data'}]",
                    f"run_dir={base / 'run'}", "max_steps=2", "global_batch_size=8", "num_threads=1", "wandb=off",
                    "progress=False", "evaluators=[]"], cwd=ROOT, env=env, check=True, capture_output=True)
    return base / "run"


@pytest.fixture(scope="module")
def tasks_source(tmp_path_factory) -> str:
    from pipeline.local import subset_source

    return subset_source(tmp_path_factory.mktemp("tasks"), 4, ["evaluation2"])


def check_args(checkpoint: str, source: str, **changes) -> dict:
    args = dict(s3_endpoint="", job_id="job-1", bucket="", run_prefix="tests/posttrain", run_id="c1",
                checkpoint=checkpoint, load_weights="auto", input_prefix=source, subsets=["evaluation2"],
                solutions="", num_aug=1, chunk_size=2, preset="cfg_posttrain", global_batch_size=8, epochs=4,
                eval_interval=2, lr=3e-3, puzzle_emb_lr=0.1, ema=False, train_overrides=["num_threads=1"],
                max_augmentations=0, final_checkpoint="best", trainer_backend="local", nnodes=1, nproc_per_node=1,
                gpu_type="", node_selector={}, tolerations=[], trainer_image="reg.example/trainer:1", namespace="",
                active_deadline_seconds=7 * 86400, pending_timeout=1800, queue_name="")
    args.update(changes)
    return args


@pytest.mark.s3
def test_check_posttrain_plans_the_chunks(s3_env, pretrained, tasks_source, tmp_path):
    from components.posttrain import check_posttrain
    from components.runtime import read_json

    (pretrained / "run.json").write_text(json.dumps({"checkpoint": str(pretrained / "checkpoints" / "step-2")}))
    art = _artifact(dsl.Model, tmp_path, "pretrained")
    out = check_posttrain.python_func(**check_args(str(pretrained), tasks_source), pretrained=art)
    root = "s3://trm/tests/posttrain/c1"
    assert (out.run_root, out.backend) == (root, "local")
    assert [(c["index"], c["tasks"], c["run_root"]) for c in out.chunks] == [
        (0, 2, f"{root}/chunks/c1-c000"), (1, 2, f"{root}/chunks/c1-c001")]
    assert out.train_overrides[:3] == [f"load_checkpoint={pretrained}/checkpoints/step-2", "load_weights=auto",
                                       "eval_max_augmentations=null"]
    assert art.metadata["uri"] == f"{pretrained}/checkpoints/step-2" and art.metadata["step"] == 2
    assert out.solutions == f"{root}/tasks/all_tasks_solutions.json"
    plan = read_json(f"{root}/tasks/plan.json")
    assert [len(c) for c in plan["chunks"]] == [2, 2]
    first = read_json(f"{out.chunks[0]['input_prefix']}_tasks_challenges.json")
    assert list(first) == plan["chunks"][0] and first[plan["chunks"][0][0]]["test"][0]["output"] is not None
    assert len(read_json(out.challenges)) == 4 and "output" not in next(iter(read_json(out.challenges).values()))[
        "test"][0]
    # the same run id with other chunks is refused (the chunks' datasets and checkpoints would not match)
    with pytest.raises(ValueError, match="already holds a post-training run"):
        check_posttrain.python_func(**check_args(str(pretrained), tasks_source, chunk_size=0), pretrained=art)


@pytest.mark.s3
@pytest.mark.parametrize("change, message", [
    ({"checkpoint": ""}, "checkpoint: empty"),
    ({"checkpoint": "/nonexistent/step-3"}, "checkpoint: load_checkpoint: /nonexistent/step-3: no such file"),
    ({"chunk_size": -1}, "chunk_size: must be >= 0"),
    ({"final_checkpoint": "top"}, "final_checkpoint: expected one of"),
    ({"load_weights": "both"}, "load_weights: expected one of"),
    ({"train_overrides": ["load_checkpoint=/x"]}, "load_checkpoint is set by the pipeline"),
    ({"train_overrides": ["nonsense_key=1"]}, "training parameters: .*nonsense_key"),
    ({"global_batch_size": 64}, "global_batch_size: chunk 0 .* fewer than global_batch_size 64"),
    ({"subsets": ["training2"]}, "cannot read subset 'training2'"),
    ({"train_overrides": ["evaluators=[]"]}, "final_checkpoint=best needs the trainer's evaluations"),
])
def test_check_posttrain_rejects_bad_values(s3_env, pretrained, tasks_source, tmp_path, change, message):
    from components.posttrain import check_posttrain

    args = check_args(str(pretrained / "checkpoints" / "step-2"), tasks_source, run_id="bad")
    args.update(change)
    with pytest.raises(ValueError, match=message):
        check_posttrain.python_func(**args, pretrained=_artifact(dsl.Model, tmp_path, "p"))


@pytest.mark.s3
def test_posttrain_pipeline_locally(s3_server, pretrained, tmp_path):
    """`python -m pipeline.local --pipeline posttrain` on 4 evaluation2 tasks in 2 chunks, final_checkpoint=best:
    every step through kfp.local, one merged submission valid for the 4 tasks, scored, each chunk's choice."""
    from components.runtime import read_json
    from trm.evaluation.submission import validate

    env = {**os.environ, **s3_server.env(), "TRM_HOME": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    try:
        # a pass takes under a minute; a failing train step is retried by kfp.local with the compiled backoff
        # (60 s, 120 s, 240 s), so a broken trainer ends here, at the timeout, with the log's tail
        done = subprocess.run([sys.executable, "-m", "pipeline.local", "--pipeline", "posttrain", "--checkpoint",
                               str(pretrained / "checkpoints" / "step-2"), "--tasks", "4", "--run-id", "smoke",
                               "--param", "chunk_size=2", "--param", "global_batch_size=8"], cwd=ROOT, env=env,
                              text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
    except subprocess.TimeoutExpired as expired:
        out = expired.stdout.decode(errors="replace") if isinstance(expired.stdout, bytes) else expired.stdout or ""
        pytest.fail(f"the post-training run did not end within 300 s:\n{out[-6000:]}")
    log = done.stdout
    assert done.returncode == 0, log[-6000:]
    with pytest.MonkeyPatch.context() as mp:
        for key, value in s3_server.env().items():
            mp.setenv(key, value)
        root = "s3://trm/posttrain/local/smoke"
        summary = read_json(f"{root}/run.json")
        entries = read_json(summary["submission"])
        assert validate(entries, read_json(f"{root}/tasks/all_tasks_challenges.json")) == []
        assert len(entries) == 4 and summary["tasks"] == 4
        score = read_json(f"{root}/score.json")
        assert score["tasks_total"] == 4 and set(score["tasks"]) == set(entries)
        assert summary["score"]["pass@2"] == score["pass@2"]
        assert [c["run_root"].rsplit("/", 1)[-1] for c in summary["chunks"]] == ["smoke-c000", "smoke-c001"]
        for chunk in summary["chunks"]:
            assert chunk["final_checkpoint"] == "best" and chunk["tasks"] == 2
            assert read_json(f"{chunk['run_root']}/eval/step-{chunk['step']}/metrics.json")["ARC/tasks_scored"] == 2
    for name in ("check-posttrain", "build-dataset", "train", "choose-checkpoint", "export-submission",
                 "merge-submissions", "score-submission", "cleanup-jobs"):
        assert f"'{name}'\x1b[0m finished with status \x1b[92mSUCCESS" in log, name
    assert "puzzle embeddings carried by name" in log and "freeze_weights: only the puzzle embeddings train" in log
    assert summary["submission"] in log and "pass@2" in log.split("Post-training finished")[1]
    assert s3_server.env()["AWS_SECRET_ACCESS_KEY"] not in log
