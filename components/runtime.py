"""Plain-Python helpers behind the KFP components (no kfp import): run prefixes, artifact pointers, the store.

    from components.runtime import run_root, write_pointer, pointer_uri
    root = run_root("trm", "runs", "r1")              # "s3://trm/runs/r1"
    write_pointer(dataset_artifact, f"{root}/dataset", train_examples=123)
    pointer_uri(dataset_artifact)                      # "s3://trm/runs/r1/dataset"

A KFP artifact here is any object with `.path` (a local file) and `.metadata` (a dict): the pointer file holds
JSON `{"uri": ..., <facts>}` and the same keys go into the metadata, so the KFP UI shows them and nothing big is
copied into the KFP artifact store. Works for `s3://` run roots and for local folders (tests, debugging).
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def log(message: str) -> None:
    """One line to stdout (the step's log), flushed at once."""
    print(f"[trm] {message}", flush=True)


def use_endpoint(s3_endpoint: str) -> None:
    """Point this process (and its children) at `s3_endpoint`; empty keeps TRM_S3_ENDPOINT from the environment."""
    if s3_endpoint:
        os.environ["TRM_S3_ENDPOINT"] = s3_endpoint


def run_root(bucket: str, prefix: str, run_id: str) -> str:
    """`s3://<bucket>/<prefix>/<run_id>`, each part checked; ValueError names the bad part."""
    if not bucket or not _NAME.match(bucket):
        raise ValueError(f"bucket: invalid S3 bucket name {bucket!r}")
    parts = [p for p in prefix.strip("/").split("/") if p] if prefix else []
    for part in parts:
        if not _NAME.match(part):
            raise ValueError(f"run_prefix: invalid path segment {part!r} in {prefix!r}")
    if not run_id or not _NAME.match(run_id):
        raise ValueError(f"run_id: invalid run id {run_id!r} (letters, digits, '.', '_', '-')")
    return "s3://" + "/".join([bucket, *parts, run_id])


def write_pointer(artifact: Any, uri: str, **facts: Any) -> dict[str, Any]:
    """Record `uri` and small `facts` in the artifact's file and metadata; returns the record."""
    record = {"uri": uri, **facts}
    path = Path(artifact.path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    artifact.metadata.update(record)
    return record


def pointer_uri(artifact: Any) -> str:
    """The `uri` a pointer artifact carries (metadata first, then the file)."""
    uri = (artifact.metadata or {}).get("uri")
    if not uri:
        path = Path(artifact.path)
        if not path.is_file():
            raise FileNotFoundError(f"artifact {getattr(artifact, 'name', '?')}: no pointer file at {path}")
        uri = json.loads(path.read_text()).get("uri")
    if not uri:
        raise ValueError(f"artifact {getattr(artifact, 'name', '?')}: its pointer holds no 'uri'")
    return str(uri)


def _store():
    from trm.storage import S3Store

    return S3Store.from_env()


def check_store(root: str):
    """The S3 store of the environment (endpoint and keys never come from parameters), reachable, with the bucket
    of run root `root` in place; ValueError in one sentence otherwise."""
    from trm.storage.config import S3Config

    S3Config.from_env().require()
    store = _store()
    try:
        store.check(timeout=15.0)
        store.ensure_bucket(root[len("s3://"):].split("/", 1)[0])
    except (ConnectionError, PermissionError, OSError) as error:
        raise ValueError(f"S3 store: {error}") from None
    return store


def join(base: str, *parts: str) -> str:
    from trm.storage import join as _join

    return _join(base, *parts)


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def read_bytes(uri: str) -> bytes:
    if is_s3(uri):
        return _store().read_bytes(uri)
    return Path(uri).read_bytes()


def write_bytes(uri: str, data: bytes) -> None:
    """A single S3 PUT (atomic) or a local temp file renamed into place."""
    if is_s3(uri):
        _store().write_bytes(uri, data)
        return
    path = Path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)


def exists(uri: str) -> bool:
    if is_s3(uri):
        return _store().exists(uri)
    return Path(uri).exists()


def read_json(uri: str) -> Any:
    try:
        return json.loads(read_bytes(uri))
    except json.JSONDecodeError as error:
        raise ValueError(f"{uri}: not valid JSON ({error})") from None


def write_json(uri: str, value: Any) -> None:
    write_bytes(uri, (json.dumps(value, indent=1, sort_keys=True) + "\n").encode())


def copy_to_file(uri: str, path: str) -> None:
    """Copy a small object (report, summary) into a local file, e.g. an HTML/Markdown artifact's path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(read_bytes(uri))


def run_command(argv: list[str], env: dict[str, str] | None = None) -> None:
    """Run a child process with this process's stdout/stderr; RuntimeError naming it when it fails.

    A SIGTERM to this step (pod eviction, preemption, a cancelled run) is passed on to the child and the step
    waits for it: the trainer then checkpoints the step it stopped at within the pod's grace period."""
    import signal
    import subprocess

    log("running: " + " ".join(argv))
    merged = {**os.environ, **(env or {})}
    child = subprocess.Popen(argv, env=merged, stdout=sys.stdout, stderr=sys.stderr)

    def forward(signum, frame):  # noqa: ARG001
        log(f"SIGTERM: passed on to {argv[0]} (pid {child.pid}); waiting for it to checkpoint and exit")
        child.send_signal(signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, forward) if threading.current_thread() is threading.main_thread() else None
    try:
        code = child.wait()
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if child.poll() is None:
            child.kill()
    if code != 0:
        raise RuntimeError(f"{argv[0]} {' '.join(argv[1:3])} ... exited with status {code}")
