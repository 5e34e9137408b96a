# trm-pipeline. `make help` lists the targets.
# The two set-up commands on a fresh machine are `make run` and `make test`; both create .venv themselves.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel of torch that these machines carry; GPU images pin their own build.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=
# Container images (make build-images / make push / make run-containers / make test-images).
REGISTRY ?= ghcr.io/trm-pipeline
TAG ?= $(shell git rev-parse --short=12 HEAD 2>/dev/null || echo dev)
DOCKER ?= docker
STEPS_IMAGE := $(REGISTRY)/trm-steps:$(TAG)
TRAINER_IMAGE := $(REGISTRY)/trm-trainer:$(TAG)
TORCH_VERSION := $(patsubst torch==%,%,$(TORCH_SPEC))
# Extra `docker build` flags for both images, e.g. IMAGE_ARGS="--build-arg MAX_JOBS=16".
IMAGE_ARGS ?=
# LOCAL_BASE=1: build where Docker Hub and the PyTorch index are out of reach (this project's machines and CI):
# both images on a local Debian base made by `make base-image`, torch from the wheel that `pip download
# $(TORCH_SPEC)` resolves here (or TORCH_WHEEL=<file>), copied into .whl/ (git-ignored), pip reaching PyPI
# through the host's network; the trainer image in its CPU smoke form (FLASH_ATTN=0). Without it: the defaults
# of the Dockerfiles (public bases pinned by digest, torch from the PyTorch index, the CUDA kernels built).
LOCAL_BASE ?=
LOCAL_BASE_IMAGE ?= trm-base:bookworm-local
TORCH_WHEEL ?=
ifeq ($(LOCAL_BASE),1)
LOCAL_ARGS := --network host --build-arg BASE_IMAGE=$(LOCAL_BASE_IMAGE) --build-arg TORCH_VERSION=$(TORCH_VERSION) \
	--build-arg TORCH_WHEEL=.whl/$$(cd .whl && ls torch-$(TORCH_VERSION)[+-]*.whl | head -n1)
TRAINER_LOCAL_ARGS := --build-arg FLASH_ATTN=0
LOCAL_DEPS := base-image torch-wheel
endif

.DEFAULT_GOAL := help
.PHONY: help venv run run-containers test test-slow mutations test-images bench compile build-images base-image torch-wheel push clean

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

venv: $(VENV)/.installed ## Create the virtual environment (.venv) with every dependency

run: $(VENV)/.installed ## The main job: the whole pipeline locally (embedded S3, kfp.local, CPU preset)
	$(PY) -m pipeline.local $(ARGS)

test: $(VENV)/.installed ## Run the test suite (slow tests excluded)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-slow: $(VENV)/.installed ## Run only the slow tests
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS)

mutations: $(VENV)/.installed ## Break each headline claim on a scratch copy and check its tests fail (about 4 min)
	$(PY) tests/mutations.py $(ARGS)

bench: $(VENV)/.installed ## Run the CPU benchmarks in bench/ (prints ratios against baselines)
	for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

# The compiled pipelines name the images `make build-images push` tags (REGISTRY, TAG) unless TRM_STEPS_IMAGE /
# TRM_TRAINER_IMAGE are set.
compile: $(VENV)/.installed ## Compile both KFP pipelines: pipeline.yaml (pretraining) and posttrain.yaml
	TRM_STEPS_IMAGE="$${TRM_STEPS_IMAGE:-$(STEPS_IMAGE)}" TRM_TRAINER_IMAGE="$${TRM_TRAINER_IMAGE:-$(TRAINER_IMAGE)}" \
	  $(PY) -m pipeline.compile --output pipeline.yaml
	TRM_STEPS_IMAGE="$${TRM_STEPS_IMAGE:-$(STEPS_IMAGE)}" TRM_TRAINER_IMAGE="$${TRM_TRAINER_IMAGE:-$(TRAINER_IMAGE)}" \
	  $(PY) -m pipeline.compile --pipeline posttrain --output posttrain.yaml

build-images: $(LOCAL_DEPS) ## Build the steps and trainer images (LOCAL_BASE=1: without Docker Hub; CPU trainer)
	$(DOCKER) build $(LOCAL_ARGS) $(IMAGE_ARGS) -f images/steps.Dockerfile -t $(STEPS_IMAGE) .
	$(DOCKER) build $(LOCAL_ARGS) $(TRAINER_LOCAL_ARGS) $(IMAGE_ARGS) -f images/trainer.Dockerfile -t $(TRAINER_IMAGE) .

base-image: ## Make the local Debian base of LOCAL_BASE=1 builds (debootstrap, root; kept when it exists)
	DOCKER="$(DOCKER)" images/base.sh $(LOCAL_BASE_IMAGE)

torch-wheel: # the torch wheel of LOCAL_BASE=1 builds, into .whl/
	mkdir -p .whl
	$(if $(TORCH_WHEEL),cp "$(TORCH_WHEEL)" .whl/,$(PYTHON) -m pip download --quiet --no-deps --only-binary=:all: -d .whl "$(TORCH_SPEC)")

run-containers: $(VENV)/.installed ## The main job with every step in the steps image (kfp.local DockerRunner)
	$(PY) -m pipeline.local --runner docker --image $(STEPS_IMAGE) $(ARGS)

test-images: $(VENV)/.installed ## Docker checks (CI, after test): hadolint, build-images LOCAL_BASE=1, run them
	$(PY) -m pytest -q tests/test_images.py $(PYTEST_ARGS)
	$(MAKE) build-images LOCAL_BASE=1
	TRM_STEPS_IMAGE=$(STEPS_IMAGE) TRM_TRAINER_IMAGE=$(TRAINER_IMAGE) $(PY) -m pytest -q -m docker tests/test_containers.py $(PYTEST_ARGS)

push: build-images ## Push both images to $(REGISTRY) with tag $(TAG)
	$(DOCKER) push $(STEPS_IMAGE)
	$(DOCKER) push $(TRAINER_IMAGE)

clean: ## Remove build outputs and local run data (keeps .venv)
	rm -rf build dist *.egg-info .pytest_cache runs .trm
