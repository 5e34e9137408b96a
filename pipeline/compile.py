"""Compile the KFP pipeline to YAML (the IR that the KFP UI and `kfp.Client` accept).

    python -m pipeline.compile --output pipeline.yaml          # what `make compile` runs
    python -m pipeline.compile --pipeline posttrain --output posttrain.yaml   # the post-training pipeline
    TRM_STEPS_IMAGE=reg/trm-steps:abc TRM_TRAINER_IMAGE=reg/trm-trainer:abc python -m pipeline.compile -o p.yaml
    env -u TRM_STEPS_IMAGE -u TRM_TRAINER_IMAGE -u TRM_S3_SECRET python -m pipeline.compile -o tests/golden/pipeline.yaml
    env -u TRM_STEPS_IMAGE -u TRM_TRAINER_IMAGE -u TRM_S3_SECRET python -m pipeline.compile --pipeline posttrain \
        -o tests/golden/posttrain.yaml

The images come from `components.settings` (env TRM_STEPS_IMAGE / TRM_TRAINER_IMAGE, read at import).
The YAML is written to a temporary name and renamed, so a failed compile never leaves half a file.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path


def compile_pipeline(output: str | os.PathLike, pipeline: str = "pretrain") -> Path:
    """Compile `pipeline` (pretrain: pipeline.dag.trm_pipeline; posttrain: pipeline.posttrain.posttrain_pipeline)
    to `output` (atomic); returns the path."""
    from kfp import compiler

    from pipeline.params import pipeline_function

    function = pipeline_function(pipeline)

    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".yaml")
    os.close(fd)
    try:
        compiler.Compiler().compile(function, tmp)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trm pipeline compile", description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", default=None,
                        help="where to write (default pipeline.yaml; posttrain.yaml for --pipeline posttrain)")
    parser.add_argument("--pipeline", choices=("pretrain", "posttrain"), default="pretrain",
                        help="pretrain (pipeline/dag.py, the default) or posttrain (pipeline/posttrain.py)")
    args = parser.parse_args(argv)
    from components import settings

    output = args.output or ("posttrain.yaml" if args.pipeline == "posttrain" else "pipeline.yaml")
    path = compile_pipeline(output, args.pipeline)
    print(f"wrote {path} (steps image {settings.STEPS_IMAGE}, trainer image {settings.TRAINER_IMAGE})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
