"""Settings shared by the KFP components: images, secret names, step resources, time limits (fixed when compiling).

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
# On a cluster the GPU steps run the `trainer_image` pipeline parameter (set_container_image). kfp.local's
# DockerRunner cannot resolve a parameter in an image name, so a local Docker run (pipeline.local.use_image) sets
# TRM_FIXED_IMAGES=1 and every step keeps the image fixed at compile time.
IMAGE_FROM_PARAMETER = os.environ.get("TRM_FIXED_IMAGES", "") != "1"

# Kubernetes secrets that the pipeline's pods read as environment variables (fixed when compiling).
# The S3 keys: the secret every KFP install has for its own artifact store (keys `accesskey`/`secretkey`).
# TRM_S3_SECRET=trm-s3 when compiling for manifests/overlays/standalone (its own MinIO, same keys).
S3_SECRET = os.environ.get("TRM_S3_SECRET") or "mlpipeline-minio-artifact"
S3_SECRET_KEYS = {"accesskey": "AWS_ACCESS_KEY_ID", "secretkey": "AWS_SECRET_ACCESS_KEY"}
# W&B: optional; without it the trainer logs offline.
WANDB_SECRET = "trm-wandb"
WANDB_SECRET_KEYS = {"api-key": "WANDB_API_KEY"}
# The S3 endpoint is not a secret: a pipeline parameter (`s3_endpoint`) with this default: KFP's object store
# since KFP 2.16 (SeaweedFS, service `seaweedfs` in `kubeflow`, S3 on port 9000; same secret as before).
DEFAULT_S3_ENDPOINT = "http://seaweedfs.kubeflow:9000"

# Where training runs: auto = what the cluster has (TrainJob, else PyTorchJob; `local` outside a cluster),
# trainjob = Kubeflow Trainer v2.3, pytorchjob = Training Operator 1.9, local = torchrun in the step's own pod.
TRAINER_BACKENDS = ("auto", "trainjob", "pytorchjob", "local")
# The ConfigMap (in the job's namespace) whose LaunchConfig fields size the job's pods (manifests/).
LAUNCH_CONFIGMAP = "trm-launch"

# Requests (and memory limits) of each step's pod: (cpu request, memory request, memory limit).
STEP_RESOURCES = {
    "check-params": ("500m", "1Gi", "2Gi"),
    "check-posttrain": ("500m", "2Gi", "4Gi"),  # reads the tasks and writes the chunks' task files
    "build-dataset": ("4", "16Gi", "32Gi"),
    "train": ("8", "64Gi", "256Gi"),  # torchrun in the pod (trainer_backend=local): the GPUs' host side
    "train-job": ("250m", "512Mi", "1Gi"),  # the launcher: follows the TrainJob/PyTorchJob
    "choose-checkpoint": ("250m", "512Mi", "1Gi"),
    "evaluate": ("8", "64Gi", "128Gi"),
    "export-submission": ("500m", "2Gi", "4Gi"),
    "cleanup-jobs": ("100m", "256Mi", "512Mi"),
    "merge-submissions": ("500m", "2Gi", "4Gi"),
    "score-submission": ("500m", "2Gi", "4Gi"),
}
# Scratch space on /tmp (an emptyDir with this size limit; TRM_HOME=/tmp/trm in the images): the dataset build
# stages its output there, trainers and evaluation cache the dataset there. Never the container's own filesystem.
SCRATCH_SIZE = {"build-dataset": "64Gi", "train": "200Gi", "evaluate": "100Gi"}
SHM_SIZE = "16Gi"  # memory-backed /dev/shm of the GPU steps (counts against their memory limit)

# Time limits. A job's own limit is the `active_deadline_seconds` pipeline parameter (default a week); the pods
# that follow it (and the in-pod trainer) are killed by Kubernetes after LAUNCHER_TIMEOUT (kubernetes.set_timeout,
# a compile-time integer), which must stay above active_deadline_seconds + pending_timeout (check-params says so).
DEFAULT_ACTIVE_DEADLINE = 7 * 24 * 3600
DEFAULT_PENDING_TIMEOUT = 1800
LAUNCHER_TIMEOUT = 8 * 24 * 3600
# The one retry layer: KFP retries the train step (each attempt resumes from the newest checkpoint, and adopts
# or resubmits the job of this run); the jobs themselves never restart pods (backoffLimit 0).
TRAIN_RETRIES = 3
# The post-training pipeline's chunks (chunk_size > 0) that run at once (dsl.ParallelFor parallelism; KFP fixes it
# when compiling): each is a training job of nnodes x nproc_per_node GPUs. 0 would mean all at once.
CHUNK_PARALLELISM = 4
