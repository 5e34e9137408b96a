"""Dockerfiles: pinned bases and packages, a non-root user, and `make -n build-images` building both.

    .venv/bin/python -m pytest -q tests/test_images.py
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
IMAGES = {"steps": ROOT / "images" / "steps.Dockerfile", "trainer": ROOT / "images" / "trainer.Dockerfile"}


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _args(path: Path) -> dict[str, str]:
    found = {}
    for word, rest in _instructions(path):
        if word == "ARG" and "=" in rest:
            key, value = rest.split("=", 1)
            found[key] = value.strip('"')
    return found


def _expand(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), text)


def pinned_image(ref: str) -> bool:
    """name@sha256:<64 hex>, or name:<tag> where the tag holds a version number and is not 'latest'."""
    if re.search(r"@sha256:[0-9a-f]{64}$", ref):
        return True
    name, _, tag = ref.rpartition(":")
    if not name or "/" in tag or tag in ("", "latest"):
        return False
    return bool(re.search(r"\d+\.\d+", tag))


def test_pinned_image_check_can_fail():
    assert not pinned_image("python")
    assert not pinned_image("python:latest")
    assert not pinned_image("python:3-slim")
    assert not pinned_image("localhost:5000/python")
    assert pinned_image("python:3.11.11-slim-bookworm")
    assert pinned_image("python@sha256:" + "a" * 64)


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_base_image_is_pinned_and_user_is_not_root(image):
    path = IMAGES[image]
    steps = _instructions(path)
    bases = [_expand(rest.split()[0], _args(path)) for word, rest in steps if word == "FROM"]
    assert bases, f"{path.name}: no FROM"
    for base in bases:
        assert pinned_image(base), f"{path.name}: base {base!r} is not pinned"
    users = [rest for word, rest in steps if word == "USER"]
    assert users, f"{path.name}: no USER; the image would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0") and (not user.isdigit() or int(user) >= 1000), user
    # runAsNonRoot (set by the launcher on the pods) needs a numeric uid in the image
    assert user.isdigit()
    assert steps.index(("USER", users[-1])) > max(i for i, (w, _) in enumerate(steps) if w == "RUN")


def _pip_requirements(path: Path) -> list[str]:
    """Every requirement of every `pip install` (ARG defaults expanded); local paths like '.[gpu]' skipped."""
    reqs = []
    for word, rest in _instructions(path):
        if word != "RUN":
            continue
        for command in re.split(r"&&|;", _expand(rest, _args(path))):
            tokens = command.split()
            if "pip" in tokens and "install" in tokens:
                after = tokens[tokens.index("install") + 1:]
                skip_next = False
                for token in after:
                    if skip_next:
                        skip_next = False
                        continue
                    if token in ("--index-url", "--extra-index-url", "-r", "-c"):
                        skip_next = True
                        continue
                    token = token.strip("\"'")
                    if token.startswith("-") or token.startswith("."):
                        continue
                    reqs.append(token)
    return reqs


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_pip_installs_pin_exact_versions(image):
    reqs = _pip_requirements(IMAGES[image])
    assert reqs
    for req in reqs:
        assert re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==\d+(\.\d+)+(\.post\d+)?", req), f"{image}: {req!r} is not pinned"


def test_trainer_builds_cuda_kernels_against_the_base_torch():
    path = IMAGES["trainer"]
    runs = [_expand(rest, _args(path)) for word, rest in _instructions(path) if word == "RUN"]
    for package, module in (("flash-attn==", "flash_attn"), ("adam-atan2==", "adam_atan2_backend")):
        (line,) = [r for r in runs if package in r]
        assert "--no-build-isolation" in line, package
        assert f"import torch, {module}" in line, f"{package}: the build must be checked by importing {module}"
    assert any("setuptools-scm==" in r for r in runs), "adam-atan2's setup.py needs setuptools-scm to build"
    text = path.read_text()
    assert "MAX_JOBS" in text and "TORCH_CUDA_ARCH_LIST" in text
    assert re.search(r"FROM pytorch/pytorch:\d+\.\d+\.\d+-cuda\d+\.\d+-cudnn\d+-devel", text)
    assert any(".[gpu" in r for r in runs)


def test_steps_image_torch_matches_the_makefile():
    make_spec = re.search(r"^TORCH_SPEC \?= torch==(\S+)", (ROOT / "Makefile").read_text(), re.M).group(1)
    assert _args(IMAGES["steps"])["TORCH_VERSION"] == make_spec
    runs = [rest for word, rest in _instructions(IMAGES["steps"]) if word == "RUN"]
    assert any("/whl/cpu" in r and "torch==" in r for r in runs)


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_copied_sources_exist(image):
    for word, rest in _instructions(IMAGES[image]):
        if word == "COPY":
            for source in rest.split()[:-1]:
                assert (ROOT / source).exists(), f"{image}: COPY {source} is missing"


def test_make_build_images_runs_docker_build_per_image():
    if shutil.which("make") is None:
        pytest.skip("make not installed")
    done = subprocess.run(["make", "-n", "build-images", "REGISTRY=registry.example/trm", "TAG=t1"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    builds = [line for line in done.stdout.splitlines() if re.match(r"^\S*docker build ", line)]
    assert len(builds) == 2
    assert any("-f images/steps.Dockerfile" in b and "-t registry.example/trm/trm-steps:t1" in b for b in builds)
    assert any("-f images/trainer.Dockerfile" in b and "-t registry.example/trm/trm-trainer:t1" in b for b in builds)
    default = subprocess.run(["make", "-n", "build-images"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    tag = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if tag.returncode == 0:  # the tag defaults to the git revision
        assert f"trm-steps:{tag.stdout.strip()}" in default.stdout
    pushed = subprocess.run(["make", "-n", "push", "TAG=t1"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert pushed.stdout.count("docker push") == 2
