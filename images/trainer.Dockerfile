# The CUDA trainer image: the training pods (`torchrun -m trm.train ...`, TrainJob or PyTorchJob) and the GPU
# steps of the pipeline (train, evaluate), with flash-attn and the fused adam-atan2 kernel compiled here against
# the image's own torch and CUDA.
#
#   docker build -f images/trainer.Dockerfile --build-arg MAX_JOBS=16 -t trm-trainer:dev .   # connected builder
#   make build-images                                   # both images with the defaults, tagged $(REGISTRY)/...
#   make build-images LOCAL_BASE=1                      # here: the CPU smoke form (below)
#
# Build args (the defaults are what a builder with registry access wants):
#   BASE_IMAGE       default the public nvidia/cuda:12.9.1-cudnn-devel-ubuntu24.04 pinned by its digest (the devel
#                    image: nvcc for the kernels' build, ptxas for torch.compile at run time).
#   TORCH_VERSION    the torch version the project tests with (the Makefile's TORCH_SPEC).
#   TORCH_INDEX_URL  where torch comes from: the PyTorch CUDA 12.9 wheel index (matches the base's CUDA 12.9).
#   TORCH_WHEEL      instead of the index: a torch wheel file under .whl/ in the build context (git-ignored).
#   FLASH_ATTN       1 (default): build flash-attn and adam-atan2's fused kernel (both need nvcc and a CUDA torch)
#                    and check that torch is a CUDA build. 0: neither, for the CPU smoke build on a Debian base
#                    (`make build-images LOCAL_BASE=1`); the trainer then uses its PyTorch fallbacks.
#   MAX_JOBS, TORCH_CUDA_ARCH_LIST   the kernels' compile: jobs (roughly 4-8 GiB of memory each: size it to the
#                    builder) and targets (A100 8.0, L40/4090 8.9, H100 9.0). No GPU is needed to build.
#
# The digest is the one published for nvidia/cuda:12.9.1-cudnn-devel-ubuntu24.04 (the multi-platform index, the
# same on Docker Hub and nvcr.io), as recorded by several independent public projects that pin it; it was not
# pulled on the machine this file was written on (Docker Hub was unreachable there). Change tag and digest together.
#
# The image runs as uid 1000 (user trm). It writes only to $HOME (/home/trm) and /tmp ($TRM_HOME=/tmp/trm, the
# dataset cache, checkpoints before upload, torch.compile's caches); the pods mount emptyDirs there and a
# memory-backed /dev/shm (docs/kubernetes.md#images).
ARG BASE_IMAGE=nvidia/cuda:12.9.1-cudnn-devel-ubuntu24.04@sha256:a2e1e2360c85298ac47ec2543b406ab1e8cec42e31ee47e4d32140ebc82e1067

# ---- runtime: the base with Python and the user. The CUDA base has no Python; the compiler and headers are
# needed to build the kernels and, at run time, by torch.compile (Triton and Inductor compile small C helpers).
FROM ${BASE_IMAGE} AS runtime
ARG FLASH_ATTN=1
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# DL3008 (apt versions not pinned): the packages are those of the base's own release, which its digest pins;
# pinning Ubuntu's package revisions would break the build at each security update of the archive.
# hadolint ignore=DL3008
RUN if [ "${FLASH_ATTN}" = 1 ] || ! python3 -c "import ensurepip, venv" 2>/dev/null; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
            ca-certificates python3 python3-venv python3-dev g++ \
        && rm -rf /var/lib/apt/lists/*; \
    fi
# Ubuntu images ship a user `ubuntu` with uid 1000: the trainer's user takes that uid.
RUN if getent passwd 1000 >/dev/null; then userdel --remove "$(getent passwd 1000 | cut -d: -f1)"; fi \
    && if getent group 1000 >/dev/null; then groupdel "$(getent group 1000 | cut -d: -f1)"; fi \
    && useradd --create-home --home-dir /home/trm --uid 1000 --user-group --shell /bin/bash trm

# ---- build: a virtual environment in /opt/venv with torch, the kernels and the package's dependencies.
FROM runtime AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu129
ARG TORCH_WHEEL=
ARG FLASH_ATTN=1
ARG MAX_JOBS=4
ARG TORCH_CUDA_ARCH_LIST="8.0;8.9;9.0"
ARG FLASH_ATTN_VERSION=2.8.3
ARG ADAM_ATAN2_VERSION=0.0.3
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:/usr/local/nvidia/bin:/usr/local/cuda/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    MAX_JOBS=${MAX_JOBS} \
    TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST}
RUN python3 -m venv /opt/venv && pip install "pip==25.2" "setuptools==80.9.0"

# .whl/ holds a README and, for TORCH_WHEEL, the wheel (build stage only).
COPY .whl/ /tmp/wheels/
RUN if [ -n "${TORCH_WHEEL}" ]; then \
        pip install "/tmp/wheels/$(basename "${TORCH_WHEEL}")"; \
    else \
        pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"; \
    fi \
    && python -c "import sys, torch; v = torch.__version__.split('+')[0]; \
cuda = bool(torch.version.cuda) or '${FLASH_ATTN}' != '1'; \
sys.exit(None if v == '${TORCH_VERSION}' and cuda else f'torch {torch.__version__}: expected ${TORCH_VERSION} (CUDA build when FLASH_ATTN=1)')"

# The CUDA kernels, built against the installed torch: --no-build-isolation (with isolation adam-atan2's setup.py
# finds no torch and installs without its kernel); adam-atan2 also needs setuptools-scm at build time. Each kernel
# is imported after its build (torch first: it loads libc10).
RUN if [ "${FLASH_ATTN}" = 1 ]; then \
        pip install "ninja==1.11.1.4" "packaging==24.2" "wheel==0.45.1" "psutil==6.1.1" "setuptools-scm==8.1.0" \
        && pip install --no-build-isolation "flash-attn==${FLASH_ATTN_VERSION}" \
        && python -c "import torch, flash_attn" \
        && pip install --no-build-isolation "adam-atan2==${ADAM_ATAN2_VERSION}" \
        && python -c "import torch, adam_atan2_backend"; \
    fi

# The package's dependencies (pyproject.toml with the pipeline and wandb extras, and gpu with the kernels: already
# satisfied by the builds above) apart from the package itself: a change of the sources alone keeps this stage, and
# so the image's big venv layer, cached. torch stays the one installed above (checked).
COPY pyproject.toml /src/
RUN python -c "import tomllib; p = tomllib.load(open('/src/pyproject.toml', 'rb'))['project']; \
extras = ['pipeline', 'wandb'] + (['gpu'] if '${FLASH_ATTN}' == '1' else []); \
print('\n'.join(p['dependencies'] + [d for e in extras for d in p['optional-dependencies'][e]]))" \
        > /tmp/requirements.txt \
    && pip install --no-build-isolation -r /tmp/requirements.txt \
    && python -c "import torch; assert torch.__version__.split('+')[0] == '${TORCH_VERSION}', torch.__version__"

# ---- the image: the venv, then the package (no dependencies: they are all in the venv). The train and evaluate
# KFP steps may run in this image, hence kfp in it.
FROM runtime
ENV PATH=/opt/venv/bin:/usr/local/nvidia/bin:/usr/local/cuda/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/home/trm \
    TRM_HOME=/tmp/trm
COPY --from=build /opt/venv /opt/venv
COPY pyproject.toml README.md /src/
COPY trm /src/trm
COPY pipeline /src/pipeline
COPY components /src/components
RUN pip install --no-deps --no-build-isolation /src && rm -rf /src \
    && pip check \
    && python -c "import torch, trm, kfp, components, pipeline"
USER 1000:1000
WORKDIR /home/trm
CMD ["trm", "--help"]
