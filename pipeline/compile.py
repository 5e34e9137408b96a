"""Compile the KFP pipeline to YAML (the IR that the KFP UI and `kfp.Client` accept).

    python -m pipeline.compile --output pipeline.yaml          # what `make compile` runs
    TRM_STEPS_IMAGE=reg/trm-steps:abc TRM_TRAINER_IMAGE=reg/trm-trainer:abc python -m pipeline.compile -o p.yaml
    env -u TRM_STEPS_IMAGE -u TRM_TRAINER_IMAGE -u TRM_S3_SECRET python -m pipeline.compile -o tests/golden/pipeline.yaml

The images come from `components.settings` (env TRM_STEPS_IMAGE / TRM_TRAINER_IMAGE, read at import).
The YAML is written to a temporary name and renamed, so a failed compile never leaves half a file.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path


def compile_pipeline(output: str | os.PathLike) -> Path:
    """Compile `pipeline.dag.trm_pipeline` to `output` (atomic); returns the path."""
    from kfp import compiler

    from pipeline.dag import trm_pipeline

    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".yaml")
    os.close(fd)
    try:
        compiler.Compiler().compile(trm_pipeline, tmp)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trm pipeline compile", description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", default="pipeline.yaml", help="where to write (default pipeline.yaml)")
    args = parser.parse_args(argv)
    from components import settings

    path = compile_pipeline(args.output)
    print(f"wrote {path} (steps image {settings.STEPS_IMAGE}, trainer image {settings.TRAINER_IMAGE})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
