"""Training on Kubernetes: the TrainJob or PyTorchJob of a run, and submitting/following/deleting it.

    from trm.launch import LaunchConfig, build_trainjob, build_pytorchjob, run_job
    result = run_job(LaunchConfig(name="trm-try1", image="...", train_args=["preset=arc2-seed"]), kind="auto")

    trm launch render --kind trainjob --name trm-try1 --image IMAGE preset=arc2-seed | kubectl apply -f -
    trm launch submit --name trm-try1 --configmap trm-launch -n trm preset=arc2-seed

`config` is the typed settings (no kubernetes import), `trainjob` and `pytorchjob` build the manifests,
`client` talks to the API server, `schema` checks a manifest against its CRD, `cli` is `trm launch`.
See docs/kubernetes.md.
"""

from trm.launch.config import LaunchConfig, redact
from trm.launch.pytorchjob import build_pytorchjob, operator_problems, render
from trm.launch.trainjob import build_trainjob, trainjob_problems

__all__ = ["LaunchConfig", "build_pytorchjob", "build_trainjob", "operator_problems", "trainjob_problems", "render",
           "redact", "run_job", "run_pytorchjob", "JobResult", "LaunchError"]


def __getattr__(name):
    # the kubernetes client is imported only by those who submit
    if name in ("run_job", "run_pytorchjob", "JobResult", "LaunchError"):
        from trm.launch import client

        return getattr(client, name)
    raise AttributeError(name)
