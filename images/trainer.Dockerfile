# The CUDA trainer image the PyTorchJob pods run: `torchrun -m trm.train ...` with flash-attn and the fused
# adam-atan2 kernel, both compiled here against the base image's torch and CUDA.
#   make build-images                 # docker build -f images/trainer.Dockerfile -t $(REGISTRY)/trm-trainer:$(TAG) .
#   docker build -f images/trainer.Dockerfile --build-arg MAX_JOBS=16 -t trm-trainer:dev .
# Building needs no GPU (TORCH_CUDA_ARCH_LIST names the targets: A100 8.0, L40/4090 8.9, H100 9.0) but a lot
# of memory: flash-attn's compile takes roughly 4-8 GiB per job, so size MAX_JOBS to the builder.
FROM pytorch/pytorch:2.7.1-cuda12.8-cudnn9-devel

ARG MAX_JOBS=4
ARG TORCH_CUDA_ARCH_LIST="8.0;8.9;9.0"
ARG FLASH_ATTN_VERSION=2.8.3
ARG ADAM_ATAN2_VERSION=0.0.3
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TRM_HOME=/tmp/trm \
    MAX_JOBS=${MAX_JOBS} \
    TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST}

# Build tools for the CUDA extensions; --no-build-isolation makes them compile against the installed torch
# (with isolation adam-atan2's setup.py finds no torch and installs without its kernel). adam-atan2 also needs
# setuptools-scm at build time. Each kernel is imported after its build (torch first: it loads libc10).
RUN pip install "ninja==1.11.1.4" "packaging==24.2" "wheel==0.45.1" "setuptools==75.8.0" "psutil==6.1.1" \
        "setuptools-scm==8.1.0"
RUN pip install --no-build-isolation "flash-attn==${FLASH_ATTN_VERSION}" \
    && python -c "import torch, flash_attn"
RUN pip install --no-build-isolation "adam-atan2==${ADAM_ATAN2_VERSION}" \
    && python -c "import torch, adam_atan2_backend"

WORKDIR /opt/trm-pipeline
COPY pyproject.toml README.md ./
COPY trm ./trm
COPY pipeline ./pipeline
COPY components ./components
# The gpu extra is already satisfied by the builds above; torch stays the base image's CUDA build. The
# pipeline extra (kfp) is needed because the in-pod train and evaluate KFP steps run in this image.
RUN pip install --no-build-isolation ".[gpu,wandb,pipeline]" \
    && python -c "import torch, trm; assert torch.version.cuda, 'expected a CUDA build of torch'"

RUN useradd --create-home --uid 1000 --user-group trm
USER 1000:1000
WORKDIR /home/trm
CMD ["trm", "--help"]
