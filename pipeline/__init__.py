"""The KFP pipeline: `dag` (the @dsl.pipeline), `compile`, `local` (the main job), `submit`, `cli`, `params`.

    python -m pipeline.compile --output pipeline.yaml      # make compile
    python -m pipeline.local                                # make run
    trm pipeline submit --host URL --param run_id=seed1
"""
