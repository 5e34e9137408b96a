"""Training on Kubernetes: the PyTorchJob for a run, and submitting/following/deleting it.

    from trm.launch import LaunchConfig, build_pytorchjob, render, run_pytorchjob
    result = run_pytorchjob(LaunchConfig(name="trm-try1", image="...", train_args=["preset=arc2-seed"]))

    trm launch render --name trm-try1 --image IMAGE preset=arc2-seed | kubectl apply -f -
    trm launch submit --name trm-try1 --configmap trm-launch -n trm preset=arc2-seed

`pytorchjob` builds the manifest (no kubernetes import), `client` talks to the API server, `schema` checks a
manifest against the CRD, `cli` is `trm launch`. See docs/kubernetes.md.
"""

from trm.launch.pytorchjob import LaunchConfig, build_pytorchjob, operator_problems, render

__all__ = ["LaunchConfig", "build_pytorchjob", "operator_problems", "render", "run_pytorchjob", "JobResult"]


def __getattr__(name):
    # the kubernetes client is imported only by those who submit
    if name in ("run_pytorchjob", "JobResult"):
        from trm.launch import client

        return getattr(client, name)
    raise AttributeError(name)
