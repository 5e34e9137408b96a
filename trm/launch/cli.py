"""`trm launch`: render a training TrainJob or PyTorchJob as YAML, or submit it and follow it to the end.

    trm launch render --kind trainjob --name trm-try1 --image ghcr.io/trm-pipeline/trm-trainer:abc123 \
        --nnodes 2 --gpus 4 --s3-endpoint http://seaweedfs.kubeflow:9000 preset=arc2-seed \
        'data_paths=[s3://trm/runs/try1/dataset]' | kubectl apply -f -
    trm launch submit --name trm-try1 --configmap trm-launch -n trm --timeout 172800 preset=arc2-seed ...
    trm launch submit --kind pytorchjob --settings launch.yaml --name trm-try2 --keep max_steps=100

Words of the form key=value after the options go to the trainer (`torchrun -m trm.train key=value ...`).
Settings are applied in this order: LaunchConfig defaults, `--settings FILE` (a YAML mapping of LaunchConfig
fields), `--configmap NAME` (the same fields read from a ConfigMap in the namespace, e.g. `trm-launch` from
manifests/overlays/gpu), then the flags. `--kind`: trainjob (Kubeflow Trainer v2.3; the default of render),
pytorchjob (Training Operator 1.9) or auto (submit's default: whichever the API server has, TrainJob first).

`submit` exits 0 when the job Succeeded, 1 when it Failed, 3 when it never started (pending past
--pending-timeout, or an image that cannot be pulled), 69 when the API server stopped answering, 124 on
--timeout, 130 when cancelled (Ctrl-C or SIGTERM), 2 for bad settings or a refused submission (one sentence on
stderr; TRM_DEBUG=1 adds the traceback). The job is deleted in every case unless --keep.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path
from typing import Any

import yaml

from trm.launch.config import LaunchConfig, redact


def _key_value(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    return key, value


def _toleration(text: str) -> dict[str, Any]:
    """kubectl taint syntax: KEY[=VALUE]:EFFECT, or KEY[=VALUE] for every effect."""
    spec, _, effect = text.partition(":")
    key, eq, value = spec.partition("=")
    tol: dict[str, Any] = {"key": key, "operator": "Equal" if eq else "Exists"}
    if eq:
        tol["value"] = value
    if effect:
        tol["effect"] = effect
    return tol


COMMANDS = {"render": "print the TrainJob or PyTorchJob YAML (for kubectl apply -f -)",
            "submit": "submit the job, stream the master log, wait for the end, delete it"}


def parser(name: str) -> argparse.ArgumentParser:
    """The options of `trm launch <name>` (options and key=value words may be mixed)."""
    s = argparse.ArgumentParser(prog=f"trm launch {name}", description=COMMANDS[name])
    s.add_argument("train_args", nargs="*", metavar="KEY=VALUE", help="trainer overrides (trm.config)")
    s.add_argument("--settings", type=Path, help="YAML file of LaunchConfig fields")
    s.add_argument("--configmap", help="read LaunchConfig fields from this ConfigMap in the namespace")
    s.add_argument("--kind", choices=("auto", "trainjob", "pytorchjob") if name == "submit" else
                   ("trainjob", "pytorchjob"), default="auto" if name == "submit" else "trainjob",
                   help="TrainJob (Kubeflow Trainer v2.3), PyTorchJob (Training Operator 1.9)"
                        + (", or auto: what the cluster has (default)" if name == "submit" else " (default trainjob)"))
    s.add_argument("--name", help="job name (DNS-1035 label); also the run name")
    s.add_argument("--image", help="trainer image")
    s.add_argument("-n", "--namespace")
    s.add_argument("--nnodes", type=int, help="pods (nodes), each with --nproc-per-node processes")
    s.add_argument("--nproc-per-node", type=int, help="processes per pod (default: --gpus or 1)")
    s.add_argument("--gpus", type=int, dest="gpus_per_node", help="GPUs per pod (0: CPU job)")
    s.add_argument("--gpu-resource", help="e.g. nvidia.com/gpu")
    s.add_argument("--cpu", help="CPU request per pod, e.g. 8")
    s.add_argument("--memory", help="memory per pod, e.g. 64Gi")
    s.add_argument("--shm-size", help="size of the memory-backed /dev/shm, e.g. 16Gi")
    s.add_argument("--scratch-size", help="emptyDir on /tmp per pod (dataset cache), e.g. 64Gi")
    s.add_argument("--scratch-claim", help="a PersistentVolumeClaim for /tmp instead of the emptyDir")
    s.add_argument("--node-selector", type=_key_value, action="append", metavar="KEY=VALUE")
    s.add_argument("--toleration", type=_toleration, action="append", metavar="KEY[=VALUE][:EFFECT]")
    s.add_argument("--s3-endpoint", help="TRM_S3_ENDPOINT for the pods, e.g. http://minio.trm:9000")
    s.add_argument("--s3-bucket")
    s.add_argument("--s3-secret", help="secret with the S3 keys (default mlpipeline-minio-artifact)")
    s.add_argument("--wandb-secret", help="secret holding the W&B API key (key api-key)")
    s.add_argument("--run-dir", help="s3:// run folder (default s3://<bucket>/runs/<name>)")
    s.add_argument("--checkpoint-path", help="s3:// checkpoint folder (default <run-dir>/checkpoints)")
    s.add_argument("--env", type=_key_value, action="append", metavar="NAME=VALUE")
    s.add_argument("--service-account")
    s.add_argument("--run-id", help="KFP run id label: a job of the same run that exists is adopted, not refused")
    s.add_argument("--queue", dest="queue_name", help="Kueue LocalQueue name (label kueue.x-k8s.io/queue-name)")
    s.add_argument("--runtime", help="TrainJob: the TrainingRuntime (default trm-torch)")
    s.add_argument("--grace", type=int, dest="termination_grace_seconds", metavar="SECONDS",
                   help="terminationGracePeriodSeconds of the pods (time to checkpoint on SIGTERM)")
    s.add_argument("--pending-timeout", type=int, dest="pending_timeout", metavar="SECONDS",
                   help="give up when the job has not started after this long (0: wait forever)")
    s.add_argument("--backoff-limit", type=int, help="PyTorchJob pod restarts (default 0: fail, let KFP retry)")
    s.add_argument("--active-deadline", type=int, dest="active_deadline_seconds", metavar="SECONDS")
    s.add_argument("--ttl-after-finished", type=int, dest="ttl_seconds_after_finished", metavar="SECONDS")
    s.add_argument("--clean-pod-policy", choices=("None", "Running", "All"))
    s.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, then KUBECONFIG)")
    s.add_argument("--context", help="kubeconfig context")
    if name == "submit":
        s.add_argument("--timeout", type=float, help="seconds to wait before deleting the job (exit 124)")
        s.add_argument("--poll", type=float, default=10.0, help="seconds between status polls")
        s.add_argument("--no-logs", action="store_true", help="do not stream the master pod's log")
        s.add_argument("--keep", action="store_true", help="do not delete the job at the end")
        s.add_argument("--api-retry", type=float, default=300.0, metavar="SECONDS",
                       help="how long to keep retrying an API server that does not answer (default 300)")
    return s


FLAG_FIELDS = ("name", "image", "namespace", "nnodes", "nproc_per_node", "gpus_per_node", "gpu_resource", "cpu",
               "memory", "shm_size", "scratch_size", "scratch_claim", "s3_endpoint", "s3_bucket", "s3_secret",
               "wandb_secret", "run_dir", "checkpoint_path", "service_account", "run_id", "queue_name", "runtime",
               "termination_grace_seconds", "pending_timeout", "backoff_limit", "active_deadline_seconds",
               "ttl_seconds_after_finished", "clean_pod_policy")


def config_from_args(args: argparse.Namespace, api_client=None) -> LaunchConfig:
    """Defaults < --settings < --configmap < flags."""
    data: dict[str, Any] = {}
    if args.settings:
        if not args.settings.is_file():
            raise FileNotFoundError(f"settings file not found: {args.settings}")
        loaded = yaml.safe_load(args.settings.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{args.settings}: expected a mapping of LaunchConfig fields")
        data.update(loaded)
    flags = {key: getattr(args, key) for key in FLAG_FIELDS if getattr(args, key) is not None}
    if args.configmap:
        from trm.launch.client import read_configmap

        namespace = flags.get("namespace") or data.get("namespace") or "kubeflow"
        data.update(read_configmap(api_client, args.configmap, namespace, api_retry=getattr(args, "api_retry", 60.0)))
    if args.node_selector:
        flags["node_selector"] = dict(args.node_selector)
    if args.toleration:
        flags["tolerations"] = list(args.toleration)
    if args.env:
        flags["env"] = dict(args.env)
    if args.train_args:
        flags["train_args"] = list(args.train_args)
    return LaunchConfig.from_mapping(data, **flags)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print("usage: trm launch {render,submit} [options] [KEY=VALUE ...]\n", file=sys.stderr)
        for name, text in COMMANDS.items():
            print(f"  {name:<7} {text}", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    args = parser(argv[0]).parse_intermixed_args(argv[1:])
    args.command = argv[0]
    try:
        return _run(args)
    except Exception as err:  # noqa: BLE001 - every failure ends as one sentence and an exit code
        from trm.launch.client import LaunchError

        if os.environ.get("TRM_DEBUG") == "1":
            traceback.print_exc()
        if isinstance(err, LaunchError):
            print(f"trm launch: {redact(err)}", file=sys.stderr)
            return err.exit_code
        if isinstance(err, (ValueError, FileNotFoundError)):
            print(f"trm launch: {redact(err)}", file=sys.stderr)
            return 2
        if type(err).__name__ == "ApiException":  # e.g. 403: the service account lacks the Role
            print(f"trm launch: the API server answered {getattr(err, 'status', '?')} {getattr(err, 'reason', '')}",
                  file=sys.stderr)
            return 1
        print(f"trm launch: unexpected {type(err).__name__}: {redact(err)} (TRM_DEBUG=1 shows the traceback)",
              file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    from trm.launch import client

    api_client = None
    if args.command == "submit" or args.configmap:
        api_client = client.api_client_from_config(args.kubeconfig, args.context)
    config = config_from_args(args, api_client)
    if args.command == "render":
        from trm.launch.pytorchjob import render as render_pytorchjob
        from trm.launch.trainjob import render as render_trainjob

        sys.stdout.write(render_trainjob(config) if args.kind == "trainjob" else render_pytorchjob(config))
        return 0
    result = client.run_job(config, args.kind, api_client=api_client, timeout=args.timeout,
                            poll_interval=args.poll, api_retry=args.api_retry, logs=not args.no_logs, keep=args.keep)
    if not result.ok:  # the log went to stdout; the outcome in one sentence on stderr
        print(f"trm launch: {result.kind} {result.namespace}/{result.name} ended {result.state}"
              + (f": {redact(result.message)}" if result.message else ""), file=sys.stderr)
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
