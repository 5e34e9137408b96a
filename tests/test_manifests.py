"""Kustomize manifests: every overlay builds with `kubectl kustomize`; built-in kinds pass `kubernetes-validate
--strict`, the TrainingRuntime passes its CRD (unknown fields rejected); pods meet the "restricted" Pod Security
profile; no credential literal anywhere; KFP's kfp-launcher is never shipped.

    .venv/bin/python -m pytest -q tests/test_manifests.py

Also: the base carries no namespace and no image tag, the RBAC covers every call trm.launch makes (both kinds),
the standalone MinIO needs user-supplied secrets, exposes no console and hands the pods a scoped user, the
multi-user overlay binds the profile's default-editor, and each overlay's `trm-launch` settings build a
TrainJob and a PyTorchJob that pass their CRDs.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from trm.launch.config import LaunchConfig
from trm.launch.pytorchjob import build_pytorchjob, operator_problems
from trm.launch.trainjob import build_trainjob, runtime_problems, trainjob_problems

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "manifests"
OVERLAYS = ("gpu", "standalone", "multi-user")
K8S_VERSION = "1.33.0"
# what a user writes into the standalone overlay before applying it (never committed: .gitignore)
USER_FILES = {"minio-root.env": "MINIO_ROOT_USER=trm-root\nMINIO_ROOT_PASSWORD=root-sentinel-5b1d9\n",
              "trm-s3.env": "accesskey=trm\nsecretkey=scoped-sentinel-c0e4a\n"}


def _tool(name: str) -> str:
    found = Path(sys.executable).parent / name
    if found.exists():
        return str(found)
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed (pip install -e '.[dev]' brings it)")
    return path


def _kustomize(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([_tool("kubectl"), "kustomize", str(path)], capture_output=True, text=True, timeout=60)


def _build(path: Path) -> list[dict]:
    done = _kustomize(path)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module")
def copy(tmp_path_factory) -> Path:
    """manifests/ copied, with the files the standalone overlay asks its user to create."""
    target = tmp_path_factory.mktemp("manifests") / "manifests"
    shutil.copytree(MANIFESTS, target)
    for name, text in USER_FILES.items():
        (target / "overlays" / "standalone" / name).write_text(text)
    return target


@pytest.fixture(scope="module")
def built(copy) -> dict[str, list[dict]]:
    return {name: _build(copy / "overlays" / name) for name in OVERLAYS} | {"base": _build(copy / "base")}


def _find(docs: list[dict], kind: str, name: str) -> dict:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def test_every_overlay_is_tested():
    assert sorted(p.name for p in (MANIFESTS / "overlays").iterdir() if p.is_dir()) == sorted(OVERLAYS)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_passes_kubernetes_validate_strict_and_the_crds(overlay, built, tmp_path, shared_dir):
    from trm.launch.schema import CrdValidator

    builtin = [d for d in built[overlay] if "." not in d["apiVersion"].split("/")[0] or
               d["apiVersion"].startswith(("rbac.authorization.k8s.io/", "batch/", "apps/"))]
    custom = [d for d in built[overlay] if d not in builtin]
    rendered = tmp_path / f"{overlay}.yaml"
    rendered.write_text(yaml.safe_dump_all(builtin))
    done = subprocess.run([_tool("kubernetes-validate"), "--strict", "-k", K8S_VERSION, str(rendered)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("passed") == len(builtin) and "WARN" not in done.stdout + done.stderr
    assert [d["kind"] for d in custom] == ["TrainingRuntime"]
    crd = CrdValidator.from_file(shared_dir / "k8s-schemas" / "trainer-v2.3.0" /
                                 "trainer.kubeflow.org_trainingruntimes.yaml", "v1alpha1")
    for doc in custom:
        assert crd.errors(doc) == [] and runtime_problems(doc) == []
    namespace = "kubeflow-user-example-com" if overlay == "multi-user" else "kubeflow"
    for doc in built[overlay]:
        assert doc["metadata"]["namespace"] == namespace, doc["metadata"]["name"]


def test_strict_validation_can_fail(built):
    import kubernetes_validate

    stateful = _find(built["standalone"], "StatefulSet", "trm-minio")
    stateful["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(stateful, K8S_VERSION, strict=True)


def test_kfp_launcher_is_never_shipped(built):
    """KFP (standalone) or the profile controller (multi-user) owns each namespace's kfp-launcher ConfigMap."""
    for name, docs in built.items():
        assert not [d for d in docs if d["metadata"]["name"] == "kfp-launcher"], name


def test_no_dead_minio_endpoint_outside_the_docs():
    needle = "minio-" + "service"  # KFP < 2.16's object store: gone since SeaweedFS
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    hits = [name for name in tracked.split()
            if not name.startswith("docs/") and (ROOT / name).is_file()
            and needle in (ROOT / name).read_text(errors="replace")]
    assert hits == []


def test_base_has_no_namespace_and_no_image_tag(built):
    for doc in built["base"]:
        assert "namespace" not in doc["metadata"], doc["metadata"]["name"]
    text = "".join(p.read_text() for p in sorted((MANIFESTS / "base").glob("*.yaml")))
    assert "namespace:" not in text
    images = [line.split("image:", 1)[1].strip() for line in text.splitlines() if line.strip().startswith("image:")]
    assert images == ["trm-trainer"], "the base names its image without a tag; overlays pin it"
    assert "image=" not in text


def _pod_specs(doc: dict) -> list[dict]:
    """Pod specs inside a workload or a TrainingRuntime."""
    kind = doc["kind"]
    if kind in ("StatefulSet", "Deployment", "Job"):
        return [doc["spec"]["template"]["spec"]]
    if kind == "TrainingRuntime":
        return [j["template"]["spec"]["template"]["spec"] for j in doc["spec"]["template"]["spec"]["replicatedJobs"]]
    if kind == "PyTorchJob":
        return [r["template"]["spec"] for r in doc["spec"]["pytorchReplicaSpecs"].values()]
    return []


def restricted_problems(pod: dict) -> list[str]:
    """What the "restricted" Pod Security Standard refuses in a pod spec (the subset these pods could break)."""
    problems = []
    pod_sc = pod.get("securityContext") or {}
    allowed_volumes = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                       "projected", "secret"}
    for volume in pod.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= allowed_volumes:
            problems.append(f"volume {volume['name']}: {sorted(kinds)}")
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(flag):
            problems.append(flag)
    for container in (pod.get("containers") or []) + (pod.get("initContainers") or []):
        sc = container.get("securityContext") or {}
        where = container["name"]
        if sc.get("privileged"):
            problems.append(f"{where}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation must be false")
        if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
            problems.append(f"{where}: capabilities must drop ALL")
        if set((sc.get("capabilities") or {}).get("add") or []) - {"NET_BIND_SERVICE"}:
            problems.append(f"{where}: capabilities added")
        if not (sc.get("runAsNonRoot") or pod_sc.get("runAsNonRoot")):
            problems.append(f"{where}: runAsNonRoot")
        if (sc.get("runAsUser", pod_sc.get("runAsUser")) or 1) == 0:
            problems.append(f"{where}: runAsUser 0")
        seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{where}: seccompProfile RuntimeDefault")
    return problems


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_meet_the_restricted_pod_security_profile(overlay, built):
    pods = [(d["kind"], d["metadata"]["name"], p) for d in built[overlay] for p in _pod_specs(d)]
    assert pods, "no pod templates found"
    for kind, name, pod in pods:
        assert restricted_problems(pod) == [], f"{kind}/{name}"
    # ... and so do the jobs the launcher renders from the overlay's settings
    settings = _find(built[overlay], "ConfigMap", "trm-launch")["data"]
    cfg = LaunchConfig.from_mapping(settings, name="trm-psa", nnodes=2, train_args=["preset=cpu-tiny"])
    for pod in _pod_specs(build_pytorchjob(cfg)):
        assert restricted_problems(pod) == []
    runtime = _find(built[overlay], "TrainingRuntime", "trm-torch")
    patch = build_trainjob(cfg)["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"][
        "replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    merged = dict(_pod_specs(runtime)[0], securityContext=patch["securityContext"], volumes=patch["volumes"])
    assert restricted_problems(merged) == []
    broken = dict(merged, containers=[dict(merged["containers"][0], securityContext={"runAsNonRoot": True})])
    assert len(restricted_problems(broken)) == 2  # the check itself can fail


def test_rbac_covers_the_launcher_calls(built):
    for overlay in OVERLAYS:
        docs = built[overlay]
        role = _find(docs, "Role", "trm-launcher")

        def allowed(group: str, resource: str, verb: str) -> bool:
            return any(group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"]
                       for r in role["rules"])

        for group, plural in (("trainer.kubeflow.org", "trainjobs"), ("kubeflow.org", "pytorchjobs")):
            for verb in ("create", "get", "list", "watch", "delete"):  # submit, follow, watch, clean up
                assert allowed(group, plural, verb), (overlay, plural, verb)
        assert allowed("trainer.kubeflow.org", "trainingruntimes", "get")  # check-params: the runtime exists
        for resource in ("pods", "pods/log"):  # the master pod and its log
            for verb in ("get", "list", "watch"):
                assert allowed("", resource, verb), (resource, verb)
        assert allowed("", "configmaps", "get")  # trm-launch
        binding = _find(docs, "RoleBinding", "trm-launcher")
        assert binding["roleRef"]["name"] == role["metadata"]["name"]
        subjects = {(s["name"], s.get("namespace")) for s in binding["subjects"]}
        namespace = docs[0]["metadata"]["namespace"]
        runner = "default-editor" if overlay == "multi-user" else "pipeline-runner"
        assert subjects == {("trm-runner", namespace), (runner, namespace)}, overlay
        _find(docs, "ServiceAccount", "trm-runner")


def test_standalone_needs_user_supplied_secrets(tmp_path):
    target = tmp_path / "manifests"
    shutil.copytree(MANIFESTS, target)
    for name in USER_FILES:
        (target / "overlays" / "standalone" / name).unlink(missing_ok=True)
    done = _kustomize(target / "overlays" / "standalone")
    assert done.returncode != 0 and "minio-root.env" in done.stderr
    assert (MANIFESTS / "overlays" / "standalone" / ".gitignore").read_text().strip() == "*.env"


def test_no_credential_literal_in_any_manifest():
    for path in sorted(MANIFESTS.rglob("*")):
        if not path.is_file() or path.name.endswith(".env"):
            continue
        text = path.read_text()
        for doc in yaml.safe_load_all(text) if path.suffix == ".yaml" else []:
            if not doc:
                continue
            if doc.get("kind") == "Secret":
                pytest.fail(f"{path}: a Secret object in the repository")
            for generator in doc.get("secretGenerator") or []:
                assert not generator.get("literals"), f"{path}: secretGenerator literals"
        assert "change-me" not in text and "PASSWORD=" not in text.replace("MINIO_ROOT_PASSWORD=%s", ""), path


def test_standalone_minio(built):
    docs = built["standalone"]
    stateful = _find(docs, "StatefulSet", "trm-minio")
    service = _find(docs, "Service", "trm-minio")
    claim = _find(docs, "PersistentVolumeClaim", "trm-minio-data")
    root = _find(docs, "Secret", "trm-minio-root")
    scoped = _find(docs, "Secret", "trm-s3")
    pod = stateful["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    image = container["image"]
    assert ":" in image and not image.endswith(":latest") and "RELEASE." in image
    assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert service["spec"]["selector"] == stateful["spec"]["template"]["metadata"]["labels"]
    # the secrets hold exactly what the user wrote into the two files
    decoded = {k: base64.b64decode(v).decode() for k, v in {**root["data"], **scoped["data"]}.items()}
    assert decoded == {"MINIO_ROOT_USER": "trm-root", "MINIO_ROOT_PASSWORD": "root-sentinel-5b1d9",
                       "accesskey": "trm", "secretkey": "scoped-sentinel-c0e4a"}
    # the console is not served, nor exposed: only the S3 port
    assert [p["port"] for p in service["spec"]["ports"]] == [9000]
    assert [p["containerPort"] for p in container["ports"]] == [9000]
    assert "--console-address" not in container["args"]
    env = {e["name"]: e for e in container["env"]}
    assert env["MINIO_BROWSER"]["value"] == "off"
    # root credentials: only the MinIO pod and the setup Job; every other pod gets the scoped user
    readers = {(d["kind"], d["metadata"]["name"]) for d in docs if "trm-minio-root" in yaml.safe_dump(d)
               and d["kind"] != "Secret"}
    assert readers == {("StatefulSet", "trm-minio"), ("Job", "trm-minio-setup")}
    setup = _find(docs, "Job", "trm-minio-setup")["spec"]["template"]["spec"]["containers"][0]
    assert setup["command"] == ["python", "-m", "trm.launch.minio_setup"] and setup["image"].startswith(
        "ghcr.io/trm-pipeline/trm-steps:")
    settings = _find(docs, "ConfigMap", "trm-launch")["data"]
    assert settings["s3_endpoint"] == f"http://{service['metadata']['name']}:9000" and settings["s3_secret"] == "trm-s3"
    runtime = _find(docs, "TrainingRuntime", "trm-torch")
    renv = {e["name"]: e for e in _pod_specs(runtime)[0]["containers"][0]["env"]}
    assert renv["TRM_S3_ENDPOINT"]["value"] == "http://trm-minio:9000"
    assert {renv[k]["valueFrom"]["secretKeyRef"]["name"] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")} \
        == {"trm-s3"}


def test_minio_setup_policy_is_limited_to_the_bucket():
    from trm.launch.minio_setup import bucket_policy

    policy = bucket_policy("trm")
    resources = {r for statement in policy["Statement"] for r in statement["Resource"]}
    assert resources == {"arn:aws:s3:::trm", "arn:aws:s3:::trm/*"}
    assert all(statement["Effect"] == "Allow" and "s3:*" not in statement["Action"]
               for statement in policy["Statement"])
    assert not any(a.startswith("admin:") for statement in policy["Statement"] for a in statement["Action"])


def test_multi_user_overlay(built):
    docs = built["multi-user"]
    settings = _find(docs, "ConfigMap", "trm-launch")["data"]
    assert settings["s3_bucket"] == "mlpipeline" and settings["s3_secret"] == "mlpipeline-minio-artifact"
    assert settings["s3_endpoint"] == "http://seaweedfs.kubeflow:9000"
    assert not [d for d in docs if d["kind"] == "Secret"], "the profile controller owns the namespace's S3 secret"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_settings_build_valid_jobs(overlay, built, shared_dir):
    from trm.launch.schema import CrdValidator

    schemas = shared_dir / "k8s-schemas"
    pytorch = CrdValidator.from_file(schemas / "kubeflow.org_pytorchjobs.yaml")
    trainjob = CrdValidator.from_file(schemas / "trainer-v2.3.0" / "trainer.kubeflow.org_trainjobs.yaml", "v1alpha1")
    settings = _find(built[overlay], "ConfigMap", "trm-launch")["data"]
    runtime = _find(built[overlay], "TrainingRuntime", "trm-torch")
    image = settings["image"]
    assert ":" in image and not image.endswith(":latest")
    assert _pod_specs(runtime)[0]["containers"][0]["image"] == image, "runtime and launcher use one image"
    cfg = LaunchConfig.from_mapping(settings, name="trm-overlay", nnodes=2, train_args=["preset=cpu-tiny"])
    assert cfg.namespace == "kubeflow" and cfg.termination_grace_seconds == 180 and cfg.pending_timeout == 1800
    job = build_pytorchjob(cfg)
    assert pytorch.errors(job) == [] and operator_problems(job) == []
    train = build_trainjob(cfg)
    assert trainjob.errors(train) == [] and trainjob_problems(train, runtime) == []
    pod = job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]
    if overlay == "gpu":
        assert cfg.gpus_per_node > 0 and train["spec"]["trainer"]["numProcPerNode"] == cfg.gpus_per_node
        assert pod["nodeSelector"] and pod["tolerations"][0]["key"] == "nvidia.com/gpu"
        assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == str(cfg.gpus_per_node)
        runtime_pod = _pod_specs(runtime)[0]
        assert runtime_pod["nodeSelector"] == cfg.node_selector and runtime_pod["tolerations"] == cfg.tolerations
        assert "trm-trainer" in image
    elif overlay == "standalone":
        assert cfg.gpus_per_node == 0


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_runtime_gives_torchrun_the_grace_period_to_checkpoint(overlay, built):
    """SIGTERM -> torchrun forwards it and waits TORCH_ELASTIC_SHUTDOWN_TIMEOUT for the workers' checkpoint: that
    wait must fit in the pod's grace period, and be longer than torchrun's own 30 s default."""
    from trm.launch.config import DEFAULT_GRACE_SECONDS, SHUTDOWN_MARGIN_SECONDS

    pod = _pod_specs(_find(built[overlay], "TrainingRuntime", "trm-torch"))[0]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    grace = pod["terminationGracePeriodSeconds"]
    assert grace == DEFAULT_GRACE_SECONDS
    assert 30 < int(env["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"]) == grace - SHUTDOWN_MARGIN_SECONDS
