# The CPU image of the pipeline steps: build_dataset, the train step (which launches the PyTorchJob, or trains on
# CPU itself), evaluate and export_submission. It also runs CPU PyTorchJobs (manifests/overlays/standalone).
#   make build-images                 # docker build -f images/steps.Dockerfile -t $(REGISTRY)/trm-steps:$(TAG) .
#   docker build -f images/steps.Dockerfile -t trm-steps:dev .
#   docker run --rm trm-steps:dev trm --help
# The base is pinned by an exact version tag; the CPU build of torch matches the Makefile's TORCH_SPEC.
FROM python:3.11.11-slim-bookworm

ARG TORCH_VERSION=2.13.0
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TRM_HOME=/tmp/trm

# CPU-only torch first, so that installing the package does not pull the CUDA build.
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch==${TORCH_VERSION}"

WORKDIR /opt/trm-pipeline
COPY pyproject.toml README.md ./
COPY trm ./trm
COPY pipeline ./pipeline
COPY components ./components
RUN pip install ".[pipeline,wandb]" && python -c "import trm, torch; assert not torch.version.cuda"

RUN useradd --create-home --uid 1000 --user-group trm
USER 1000:1000
WORKDIR /home/trm
CMD ["trm", "--help"]
