"""DAG helpers shared by the pipelines (pretraining `pipeline/dag.py`, post-training `pipeline/posttrain.py`): the
platform settings of every step's pod, the trainer steps, the exit handler.

    from pipeline.pods import pod, gpu_pod, retried, trainer, exit_cleanup
    task = pod(my_component(...), "check-params")                  # requests, limits, uid 1000, S3 secret as env
    trained = trainer(in_pod=True, hyper=hyper, cluster=cluster)    # `train` or `train-job`, configured

Platform settings (kfp-kubernetes; no effect under kfp.local): CPU/memory requests and a memory limit per step
(components.settings.STEP_RESOURCES), uid 1000, the S3 credentials from the secret `components.settings.S3_SECRET`
as environment variables (and optionally W&B's), an emptyDir scratch volume on /tmp for the steps with data. GPU
steps run `trainer_image`, ask for `gpu_type` accelerators, get a memory-backed /dev/shm and the node selector and
tolerations. The train steps retry (TRAIN_RETRIES, resuming from the newest checkpoint) within LAUNCHER_TIMEOUT.
"""

from __future__ import annotations

from typing import Any

from kfp import dsl, kubernetes

from components import settings


def pod(task: dsl.PipelineTask, step: str, wandb: bool = False, secrets: bool = True) -> dsl.PipelineTask:
    """Requests, limits, non-root uid, S3 (and optionally W&B) secrets as env, scratch on /tmp when the step has some."""
    cpu, memory, limit = settings.STEP_RESOURCES[step]
    task.set_cpu_request(cpu).set_memory_request(memory).set_memory_limit(limit)
    kubernetes.set_security_context(task, run_as_user=1000, run_as_group=1000, run_as_non_root=True)
    if secrets:
        kubernetes.use_secret_as_env(task, secret_name=settings.S3_SECRET, secret_key_to_env=settings.S3_SECRET_KEYS)
    if wandb:
        kubernetes.use_secret_as_env(task, secret_name=settings.WANDB_SECRET,
                                     secret_key_to_env=settings.WANDB_SECRET_KEYS, optional=True)
    if step in settings.SCRATCH_SIZE:
        kubernetes.empty_dir_mount(task, volume_name="scratch", mount_path="/tmp", size_limit=settings.SCRATCH_SIZE[step])
    return task


def gpu_pod(task: dsl.PipelineTask, trainer_image, gpu_type, gpus, node_selector, tolerations) -> dsl.PipelineTask:
    """The GPU side of a step's pod: the trainer image, `gpus` accelerators, /dev/shm, node selector, tolerations."""
    if settings.IMAGE_FROM_PARAMETER:  # kfp.local's DockerRunner cannot take an image from a parameter
        task.set_container_image(trainer_image)
    task.set_accelerator_type(gpu_type).set_accelerator_limit(gpus)
    kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory",
                               size_limit=settings.SHM_SIZE)
    kubernetes.add_node_selector_json(task, node_selector)
    kubernetes.add_toleration_json(task, tolerations)
    return task


def retried(task: dsl.PipelineTask) -> dsl.PipelineTask:
    # KFP (Argo) stops retrying once backoffMaxDuration has passed since the first attempt and caps a retried
    # pod's deadline by it; its default (3600 s) would cut a multi-day training, so it spans the step's limit.
    task.set_retry(num_retries=settings.TRAIN_RETRIES, backoff_duration="60s", backoff_factor=2.0,
                   backoff_max_duration=f"{settings.LAUNCHER_TIMEOUT}s")
    kubernetes.set_timeout(task, settings.LAUNCHER_TIMEOUT)
    return task


def trainer(in_pod: bool, hyper: dict[str, Any], cluster: dict[str, Any]) -> dsl.PipelineTask:
    """The `train` step (torchrun in its own GPU pod; `in_pod`) or the `train-job` step (a TrainJob/PyTorchJob
    submitted and followed by the launcher), with retries, secrets and, for `train`, the GPU pod settings.

    `hyper`: the inputs both components share (s3_endpoint, dataset, run_root, preset, ..., nproc_per_node);
    `cluster`: backend, nnodes, gpu_type, node_selector, tolerations, trainer_image, namespace, kfp_run_id,
    active_deadline_seconds, pending_timeout, queue_name (train-job takes them all; train only the pod's)."""
    from components.train import train, train_job

    if in_pod:
        task = train(**hyper)
        task.set_display_name("train").set_caching_options(False)
        retried(pod(task, "train", wandb=True))
        gpu_pod(task, cluster["trainer_image"], cluster["gpu_type"], hyper["nproc_per_node"],
                cluster["node_selector"], cluster["tolerations"])
        return task
    task = train_job(**hyper, **cluster)
    task.set_display_name("train-job").set_caching_options(False)
    retried(pod(task, "train-job", wandb=True))
    return task


def exit_cleanup(namespace) -> dsl.PipelineTask:
    """The exit handler's task: delete the TrainJobs/PyTorchJobs labelled with this KFP run's id."""
    from components.cleanup import cleanup_jobs

    cleanup = cleanup_jobs(namespace=namespace, kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
    cleanup.set_display_name("cleanup-jobs").set_caching_options(False)
    pod(cleanup, "cleanup-jobs", secrets=False)
    return cleanup
