"""Compile the pipeline and start a run on a Kubeflow Pipelines cluster with `kfp.Client`.

    trm pipeline submit --host https://kfp.example.com --experiment trm --param num_aug=1000 --param run_id=seed1
    trm pipeline submit --host http://localhost:8080 --upload trm-arc-agi --param trainer_backend=local
    trm pipeline submit --pipeline posttrain --host URL --param checkpoint=s3://trm/runs/seed1 --param chunk_size=40
    KFP_TOKEN=$(gcloud auth print-access-token) trm pipeline submit --host ...   # a bearer token, if needed

Parameters are `key=value` words checked against the pipeline signature (see pipeline/params.py); anything not
given keeps its default (the seed run). `--upload NAME` also uploads the compiled YAML as a pipeline (or a new
version of it) so it appears in the UI. Credentials are never parameters: the token comes from KFP_TOKEN or the
client's own configuration, S3 and W&B keys from Kubernetes secrets on the cluster.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
from pathlib import Path


def submit(host: str, params: dict, experiment: str, run_name: str | None = None, upload: str | None = None,
           namespace: str | None = None, client=None, pipeline: str = "pretrain") -> str:
    """Compile `pipeline` (pretrain | posttrain), optionally upload, start a run; returns the run id. `client` is
    for tests (a kfp.Client)."""
    from pipeline.compile import compile_pipeline

    if client is None:
        import kfp

        client = kfp.Client(host=host, existing_token=os.environ.get("KFP_TOKEN") or None, namespace=namespace)
    run_name = run_name or "trm-" + datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    with tempfile.TemporaryDirectory(prefix="trm-pipeline-") as tmp:
        package = str(compile_pipeline(Path(tmp) / "pipeline.yaml", pipeline))
        if upload:
            existing = client.get_pipeline_id(upload)
            if existing:
                version = client.upload_pipeline_version(package, pipeline_version_name=run_name,
                                                         pipeline_id=existing)
                print(f"uploaded pipeline {upload} version {getattr(version, 'display_name', run_name)}")
            else:
                client.upload_pipeline(package, pipeline_name=upload)
                print(f"uploaded pipeline {upload}")
        result = client.create_run_from_pipeline_package(package, arguments=params, run_name=run_name,
                                                         experiment_name=experiment, namespace=namespace)
    run_id = getattr(result, "run_id", None) or str(result)
    print(f"started run {run_name} ({run_id}) in experiment {experiment} on {host}")
    print(f"  {host.rstrip('/')}/#/runs/details/{run_id}")
    return run_id


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trm pipeline submit", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", required=True, help="KFP API endpoint, e.g. http://localhost:8080")
    parser.add_argument("--experiment", default="trm", help="experiment name (created if missing; default trm)")
    parser.add_argument("--run-name", default=None, help="run name (default trm-<UTC time>)")
    parser.add_argument("--namespace", default=None, help="Kubeflow profile namespace (multi-user installs)")
    parser.add_argument("--upload", default=None, metavar="NAME", help="also upload the pipeline under NAME")
    parser.add_argument("--pipeline", choices=("pretrain", "posttrain"), default="pretrain",
                        help="pretrain (the default) or posttrain (test-time adaptation of a checkpoint)")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="a pipeline parameter (repeatable)")
    args = parser.parse_args(argv)
    from pipeline.params import parse_params

    try:
        params = parse_params(args.param, args.pipeline)
    except ValueError as error:
        parser.error(str(error))
    submit(args.host, params, args.experiment, args.run_name, args.upload, args.namespace, pipeline=args.pipeline)
    return 0


if __name__ == "__main__":
    sys.exit(main())
