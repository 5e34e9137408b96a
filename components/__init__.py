"""Thin KFP v2 components over `trm`, one module per step (see docs/pipeline.md).

    from components.check import check_params                  # 0. parameters, S3, cluster; run root, backend
    from components.build_dataset import build_dataset         # 1. augmented dataset -> <run>/dataset/
    from components.train import train, train_job              # 2. torchrun in the pod, or a TrainJob/PyTorchJob
    from components.evaluate import evaluate                   # 3. vote, report -> <run>/eval/step-N/
    from components.export_submission import export_submission # 4. validated <run>/submission.json
    from components.cleanup import cleanup_jobs                # exit handler: delete the run's training jobs
    from components.choose import choose_checkpoint            # the final checkpoint: last | best (both pipelines)
    from components.posttrain import check_posttrain, merge_submissions, score_submission   # post-training

Each `@dsl.component` body only imports and calls `components.impl.<step>.run(...)`, plain Python that tests
call directly or through the component's `.python_func`. The split is needed: KFP runs component code with
`_KFP_RUNTIME=true`, where `kfp.dsl.component` does not exist, so a pod must never import a module that applies
the decorator. `components.runtime` holds shared helpers (pointers, the store); images, resources, limits: `components.settings`.
"""
