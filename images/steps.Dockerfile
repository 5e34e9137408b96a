# The CPU image of the pipeline steps: check-params, build-dataset, the train step (which launches the training
# job, or trains on CPU itself with torchrun), evaluate and export-submission; also CPU training jobs
# (manifests/overlays/standalone) and `make run-containers` (kfp.local DockerRunner).
#
#   docker build -f images/steps.Dockerfile -t trm-steps:dev .       # a connected builder: the defaults below
#   make build-images                                                # the same for both images, tagged $(REGISTRY)/...
#   make build-images LOCAL_BASE=1       # a builder without Docker Hub or the PyTorch index (docs/kubernetes.md#images)
#   docker run --rm trm-steps:dev trm --help
#
# Build args (the defaults are what a builder with registry access wants):
#   BASE_IMAGE       a Debian-family image with python3 (>= 3.10) and its venv module; default the public
#                    python:3.11.13-slim-bookworm pinned by its digest. images/base.sh makes a local one.
#   TORCH_VERSION    torch's version; the same as the Makefile's TORCH_SPEC (the version the tests run on).
#   TORCH_INDEX_URL  where torch comes from: the PyTorch CPU wheel index (no CUDA libraries in this image).
#   TORCH_WHEEL      instead of the index: a torch wheel file under .whl/ in the build context (git-ignored),
#                    e.g. .whl/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl. Its version is checked.
#
# The digest is the one Docker Hub publishes for the tag python:3.11.13-slim-bookworm (the multi-platform index),
# as recorded by several independent public projects that pin it; it was not pulled on the machine this file was
# written on (Docker Hub was unreachable there). Change tag and digest together.
#
# The image runs as uid 1000 (user trm). It writes only to $HOME (/home/trm) and /tmp ($TRM_HOME=/tmp/trm,
# temporary files, torch's caches); with a read-only root filesystem mount emptyDirs there (docs/kubernetes.md#images).
ARG BASE_IMAGE=python:3.11.13-slim-bookworm@sha256:86adf8dbadc3d6e82ee5dd2c74bec2e1c2467cdad47886280501df722372d2e1

# ---- build: a virtual environment in /opt/venv with torch and the package's dependencies (nothing of this stage
# but the venv reaches the image: no wheel file).
FROM ${BASE_IMAGE} AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_WHEEL=
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN python3 -m venv /opt/venv && pip install "pip==25.2" "setuptools==80.9.0"

# .whl/ holds a README and, for TORCH_WHEEL, the wheel (build stage only).
COPY .whl/ /tmp/wheels/
# Torch first (CPU build), so that installing the package does not pull the CUDA build from PyPI.
RUN if [ -n "${TORCH_WHEEL}" ]; then \
        pip install "/tmp/wheels/$(basename "${TORCH_WHEEL}")"; \
    else \
        pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"; \
    fi \
    && python -c "import sys, torch; v = torch.__version__.split('+')[0]; \
sys.exit(None if v == '${TORCH_VERSION}' and not torch.version.cuda else f'torch {torch.__version__}: expected ${TORCH_VERSION}, CPU build')"

# The package's dependencies (pyproject.toml with the pipeline and wandb extras), apart from the package itself: a
# change of the sources alone keeps this stage, and so the image's big venv layer, cached.
COPY pyproject.toml /src/
RUN python -c "import tomllib; p = tomllib.load(open('/src/pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['pipeline'] + p['optional-dependencies']['wandb']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && python -c "import torch; assert torch.__version__.split('+')[0] == '${TORCH_VERSION}', torch.__version__"

# ---- the image: the venv, then the package (no dependencies: they are all in the venv)
FROM ${BASE_IMAGE}
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/home/trm \
    TRM_HOME=/tmp/trm
RUN useradd --create-home --home-dir /home/trm --uid 1000 --user-group --shell /bin/bash trm
COPY --from=build /opt/venv /opt/venv
COPY pyproject.toml README.md /src/
COPY trm /src/trm
COPY pipeline /src/pipeline
COPY components /src/components
RUN pip install --no-deps --no-build-isolation /src && rm -rf /src \
    && pip check \
    && python -c "import torch, trm, kfp, components, pipeline; assert not torch.version.cuda"
USER 1000:1000
WORKDIR /home/trm
CMD ["trm", "--help"]
