"""Settings shared by the KFP components: the container images and the Kubernetes secret names.

    TRM_STEPS_IMAGE=registry/trm-steps:abc TRM_TRAINER_IMAGE=registry/trm-trainer:abc make compile

The images are read from the environment once, when `components` is imported (the compiled YAML records
them); the defaults follow `make build-images` with the package version as the tag. Nothing here is a secret:
credentials reach the pods from Kubernetes secrets as environment variables (see `pipeline/dag.py`).
"""

from __future__ import annotations

import os

from trm import __version__

REGISTRY = "ghcr.io/trm-pipeline"
STEPS_IMAGE_VAR = "TRM_STEPS_IMAGE"
TRAINER_IMAGE_VAR = "TRM_TRAINER_IMAGE"


def steps_image() -> str:
    """The CPU image that runs every step (`images/steps.Dockerfile`)."""
    return os.environ.get(STEPS_IMAGE_VAR) or f"{REGISTRY}/trm-steps:{__version__}"


def trainer_image() -> str:
    """The CUDA image of the training pods (`images/trainer.Dockerfile`); the PyTorchJob and the in-pod trainer."""
    return os.environ.get(TRAINER_IMAGE_VAR) or f"{REGISTRY}/trm-trainer:{__version__}"


STEPS_IMAGE = steps_image()
TRAINER_IMAGE = trainer_image()

# Kubernetes secrets that the pipeline's pods read as environment variables (fixed when compiling).
# The S3 keys: the secret every KFP install has for its own artifact store (keys `accesskey`/`secretkey`).
# TRM_S3_SECRET=trm-s3 when compiling for manifests/overlays/standalone (its own MinIO, same keys).
S3_SECRET = os.environ.get("TRM_S3_SECRET") or "mlpipeline-minio-artifact"
S3_SECRET_KEYS = {"accesskey": "AWS_ACCESS_KEY_ID", "secretkey": "AWS_SECRET_ACCESS_KEY"}
# W&B: optional; without it the trainer logs offline.
WANDB_SECRET = "trm-wandb"
WANDB_SECRET_KEYS = {"api-key": "WANDB_API_KEY"}
# The S3 endpoint is not a secret: a pipeline parameter (`s3_endpoint`) with this default (KFP's object store).
DEFAULT_S3_ENDPOINT = "http://minio-service.kubeflow:9000"

TRAINER_BACKENDS = ("local", "pytorchjob")
