"""Kustomize manifests: each overlay builds with `kubectl kustomize` and passes `kubernetes-validate --strict`.

    .venv/bin/python -m pytest -q tests/test_manifests.py

Also: the base carries no namespace and no image, the RBAC covers every call trm.launch makes, the
kfp-launcher ConfigMap has KFP 2.17's keys, and each overlay's `trm-launch` settings build a PyTorchJob that
passes the CRD schema.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from trm.launch.pytorchjob import LaunchConfig, build_pytorchjob, operator_problems

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "manifests"
OVERLAYS = ("standalone", "gpu")
K8S_VERSION = "1.33.0"


def _tool(name: str) -> str:
    found = Path(sys.executable).parent / name
    if found.exists():
        return str(found)
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed (pip install -e '.[dev]' brings it)")
    return path


def _build(path: Path) -> list[dict]:
    done = subprocess.run([_tool("kubectl"), "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module")
def built() -> dict[str, list[dict]]:
    return {name: _build(MANIFESTS / "overlays" / name) for name in OVERLAYS} | {"base": _build(MANIFESTS / "base")}


def _find(docs: list[dict], kind: str, name: str) -> dict:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_passes_kubernetes_validate_strict(overlay, built, tmp_path):
    rendered = tmp_path / f"{overlay}.yaml"
    rendered.write_text(yaml.safe_dump_all(built[overlay]))
    done = subprocess.run([_tool("kubernetes-validate"), "--strict", "-k", K8S_VERSION, str(rendered)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("passed") == len(built[overlay])
    for doc in built[overlay]:
        assert doc["metadata"]["namespace"] == "kubeflow", doc["metadata"]["name"]


def test_strict_validation_can_fail(built):
    import kubernetes_validate

    stateful = _find(built["standalone"], "StatefulSet", "trm-minio")
    stateful["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(stateful, K8S_VERSION, strict=True)


def test_base_has_no_namespace_and_no_images(built):
    for doc in built["base"]:
        assert "namespace" not in doc["metadata"], doc["metadata"]["name"]
    text = "".join(p.read_text() for p in sorted((MANIFESTS / "base").glob("*.yaml")))
    assert "image:" not in text and "image=" not in text and "namespace:" not in text


def test_rbac_covers_the_launcher_calls(built):
    docs = built["gpu"]
    role = _find(docs, "Role", "trm-pytorchjob-runner")

    def allowed(group: str, resource: str, verb: str) -> bool:
        return any(group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"]
                   for r in role["rules"])

    for verb in ("create", "get", "list", "watch", "delete"):  # submit, follow, delete
        assert allowed("kubeflow.org", "pytorchjobs", verb), verb
    for resource in ("pods", "pods/log"):  # the master pod and its log
        for verb in ("get", "list", "watch"):
            assert allowed("", resource, verb), (resource, verb)
    assert allowed("", "configmaps", "get")  # --configmap trm-launch
    binding = _find(docs, "RoleBinding", "trm-pytorchjob-runner")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    subjects = {(s["name"], s.get("namespace")) for s in binding["subjects"]}
    assert subjects == {("trm-runner", "kubeflow"), ("pipeline-runner", "kubeflow")}
    _find(docs, "ServiceAccount", "trm-runner")


def test_kfp_launcher_configmap(built):
    data = _find(built["base"], "ConfigMap", "kfp-launcher")["data"]
    assert set(data) == {"defaultPipelineRoot", "providers"}
    assert data["defaultPipelineRoot"].startswith("minio://")
    providers = yaml.safe_load(data["providers"])
    default = providers["minio"]["default"]
    assert default["endpoint"] and default["credentials"]["fromEnv"] is False
    assert default["credentials"]["secretRef"] == {"secretName": "mlpipeline-minio-artifact",
                                                   "accessKeyKey": "accesskey", "secretKeyKey": "secretkey"}


def test_standalone_minio(built):
    docs = built["standalone"]
    stateful = _find(docs, "StatefulSet", "trm-minio")
    service = _find(docs, "Service", "trm-minio")
    claim = _find(docs, "PersistentVolumeClaim", "trm-minio-data")
    secret = _find(docs, "Secret", "trm-s3")
    pod = stateful["spec"]["template"]["spec"]
    image = pod["containers"][0]["image"]
    assert ":" in image and not image.endswith(":latest") and "RELEASE." in image
    assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert service["spec"]["selector"] == stateful["spec"]["template"]["metadata"]["labels"]
    assert {"accesskey", "secretkey"} <= set(secret["data"])
    refs = {e["valueFrom"]["secretKeyRef"]["name"] for e in pod["containers"][0]["env"]}
    assert refs == {"trm-s3"}
    settings = _find(docs, "ConfigMap", "trm-launch")["data"]
    port = service["spec"]["ports"][0]["port"]
    assert settings["s3_endpoint"] == f"http://{service['metadata']['name']}:{port}"
    assert settings["s3_secret"] == "trm-s3"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_settings_build_a_valid_pytorchjob(overlay, built, shared_dir):
    from trm.launch.schema import CrdValidator

    crd = CrdValidator.from_file(shared_dir / "k8s-schemas" / "kubeflow.org_pytorchjobs.yaml")
    settings = _find(built[overlay], "ConfigMap", "trm-launch")["data"]
    image = settings["image"]
    assert ":" in image and not image.endswith(":latest")
    cfg = LaunchConfig.from_mapping(settings, name="trm-overlay", namespace="kubeflow", nnodes=2,
                                    train_args=["preset=cpu-tiny"])
    job = build_pytorchjob(cfg)
    assert crd.errors(job) == [] and operator_problems(job) == []
    pod = job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]
    if overlay == "gpu":
        assert cfg.gpus_per_node > 0 and job["spec"]["nprocPerNode"] == str(cfg.gpus_per_node)
        assert pod["nodeSelector"] and pod["tolerations"][0]["key"] == "nvidia.com/gpu"
        assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == str(cfg.gpus_per_node)
        assert "trm-trainer" in image
    else:
        assert cfg.gpus_per_node == 0
