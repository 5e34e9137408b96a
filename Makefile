# trm-pipeline. `make help` lists the targets.
# The two set-up commands on a fresh machine are `make run` and `make test`; both create .venv themselves.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel of torch that these machines carry; GPU images pin their own build.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=
# Container images (make build-images / make push).
REGISTRY ?= ghcr.io/trm-pipeline
TAG ?= $(shell git rev-parse --short=12 HEAD 2>/dev/null || echo dev)
DOCKER ?= docker
STEPS_IMAGE := $(REGISTRY)/trm-steps:$(TAG)
TRAINER_IMAGE := $(REGISTRY)/trm-trainer:$(TAG)

.DEFAULT_GOAL := help
.PHONY: help venv run test test-slow bench compile build-images push clean

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

bench: $(VENV)/.installed ## Run the CPU benchmarks in bench/ (prints ratios against baselines)
	for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

compile: $(VENV)/.installed ## Compile the KFP pipeline to pipeline.yaml
	$(PY) -m pipeline.compile --output pipeline.yaml

build-images: ## Build the CPU steps image and the CUDA trainer image
	$(DOCKER) build -f images/steps.Dockerfile -t $(STEPS_IMAGE) .
	$(DOCKER) build -f images/trainer.Dockerfile -t $(TRAINER_IMAGE) .

push: build-images ## Push both images to $(REGISTRY) with tag $(TAG)
	$(DOCKER) push $(STEPS_IMAGE)
	$(DOCKER) push $(TRAINER_IMAGE)

clean: ## Remove build outputs and local run data (keeps .venv)
	rm -rf build dist *.egg-info .pytest_cache runs .trm
