"""KFP component `cleanup-jobs`: the pipeline's exit handler; deletes the training jobs of this KFP run.

    from components.cleanup import cleanup_jobs
    cleanup_jobs.python_func(namespace="", kfp_run_id="1234-...", status=PipelineTaskFinalStatus(...))

Runs when the run ends however it ends (succeeded, failed, cancelled): every TrainJob and PyTorchJob labelled
`trm-pipeline.org/kfp-run-id=<run id>` in the namespace is deleted, so a launcher pod that died without cleaning
up (OOM, eviction, node loss, a cancelled run) leaves no GPUs held. After a success there is normally nothing left
to delete. Outside a cluster (kfp.local) it only says so. It never fails the run.
"""

from kfp import dsl

from components import settings


@dsl.component(base_image=settings.STEPS_IMAGE, install_kfp_package=False)
def cleanup_jobs(namespace: str, kfp_run_id: str, status: dsl.PipelineTaskFinalStatus):
    """Delete the TrainJobs/PyTorchJobs labelled with this KFP run's id."""
    from components.impl.launch import cleanup_run

    cleanup_run(namespace, kfp_run_id, status.state)
