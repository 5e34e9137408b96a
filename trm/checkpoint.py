"""Training checkpoints: `<root>/step-<N>/` folders, atomic, local or `s3://`, keep-last-k, newest complete.

    from trm.checkpoint import Checkpoints
    ckpts = Checkpoints("runs/try1/checkpoints", keep_last=3)        # or "s3://trm/runs/try1/checkpoints"
    ckpts.save(step=1000, objects={"model.pt": sd, "optimizer.pt": opt, "train_state.pt": st},
               texts={"config.yaml": cfg.to_yaml()}, files={"identifiers.json": path}, meta={"epoch": 3},
               evaluated=True)
    where = ckpts.latest()                # newest folder with meta.json (s3: with _COMPLETE), else None
    loaded = ckpts.load(where)            # {"model.pt": ..., "meta.json": {...}, ...}; torch.load(weights_only=True)

A folder is written under a temporary name (`.tmp-step-N-<pid>`) and renamed into place after `meta.json`,
which is written last; a folder without `meta.json` is incomplete and is never resumed from. On `s3://` the
folder is built locally and uploaded with `trm.storage` (`publish`), which writes `_COMPLETE` last. Pruning keeps
the newest `keep_last` folders plus every folder saved with `evaluated=True`.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from trm.storage import S3Store, process_alive, publish

STEP_DIR = re.compile(r"^step-(\d+)$")
META = "meta.json"
COMPLETE = "_COMPLETE"


def _is_s3(path: str) -> bool:
    return str(path).startswith("s3://")


def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _torch_bytes(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


class Checkpoints:
    """The `step-N/` folders under one root (a local folder or an `s3://` prefix)."""

    def __init__(self, root: str | os.PathLike, keep_last: int = 3):
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {keep_last}")
        self.root = str(root).rstrip("/")
        self.keep_last = keep_last
        self.remote = _is_s3(self.root)

    # -- listing ----------------------------------------------------------------------------------------------
    def _store(self):
        return S3Store.from_env()

    def where(self, step: int) -> str:
        return f"{self.root}/step-{step}"

    def complete_steps(self) -> list[int]:
        """Steps of complete folders, ascending."""
        steps = []
        if self.remote:
            store = self._store()
            for uri in store.list(self.root, recursive=True):
                rel = str(uri)[len(self.root) + 1 :]
                parts = rel.strip("/").split("/")
                if len(parts) == 2 and parts[1] == COMPLETE and STEP_DIR.match(parts[0]):
                    steps.append(int(STEP_DIR.match(parts[0]).group(1)))
        else:
            root = Path(self.root)
            if root.is_dir():
                for child in root.iterdir():
                    match = STEP_DIR.match(child.name)
                    if match and (child / META).is_file():
                        steps.append(int(match.group(1)))
        return sorted(set(steps))

    def latest(self) -> str | None:
        steps = self.complete_steps()
        return self.where(steps[-1]) if steps else None

    # -- writing ----------------------------------------------------------------------------------------------
    def save(
        self,
        step: int,
        objects: dict[str, Any],
        texts: dict[str, str] | None = None,
        files: dict[str, str | os.PathLike] | None = None,
        meta: dict[str, Any] | None = None,
        evaluated: bool = False,
    ) -> str:
        """Write `step-<step>/` atomically and prune; returns its path or URI.

        `objects` are torch-saved, `texts` written as UTF-8, `files` copied (missing source -> FileNotFoundError).
        """
        if META in (objects or {}) or META in (texts or {}):
            raise ValueError("meta.json is written by Checkpoints.save itself")
        parent = Path(tempfile.mkdtemp(prefix="trm-ckpt-")) if self.remote else Path(self.root)
        parent.mkdir(parents=True, exist_ok=True)
        tmp = parent / f".tmp-step-{step}-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        try:
            listing = {}
            for name, obj in (objects or {}).items():
                data = _torch_bytes(obj)
                _fsync_write(tmp / name, data)
                listing[name] = len(data)
            for name, text in (texts or {}).items():
                data = text.encode()
                _fsync_write(tmp / name, data)
                listing[name] = len(data)
            for name, source in (files or {}).items():
                source = Path(source)
                if not source.is_file():
                    raise FileNotFoundError(f"checkpoint step-{step}: {name} source not found: {source}")
                data = source.read_bytes()
                _fsync_write(tmp / name, data)
                listing[name] = len(data)
            record = {"step": step, "evaluated": bool(evaluated), "saved_at": time.time(), "files": listing}
            record.update(meta or {})
            _fsync_write(tmp / META, json.dumps(record, indent=1, sort_keys=True).encode())
            if self.remote:
                publish(str(tmp), self.where(step))
                target = self.where(step)
            else:
                final = Path(self.where(step))
                if final.exists():  # an older folder of the same step (a rerun): swap it out
                    old = parent / f".old-step-{step}-{os.getpid()}"
                    final.rename(old)
                    tmp.rename(final)
                    shutil.rmtree(old, ignore_errors=True)
                else:
                    tmp.rename(final)
                _fsync_dir(parent)
                target = str(final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
            if self.remote:
                shutil.rmtree(parent, ignore_errors=True)
        self.prune()
        return target

    def prune(self) -> list[int]:
        """Delete complete folders beyond the newest keep_last unless evaluated, and stale temporaries."""
        steps = self.complete_steps()
        keep = set(steps[-self.keep_last :])
        removed = []
        for step in steps:
            if step in keep:
                continue
            if self.read_meta(self.where(step)).get("evaluated"):
                continue
            self._remove(step)
            removed.append(step)
        if not self.remote and Path(self.root).is_dir():
            for child in Path(self.root).iterdir():
                # temporaries of dead processes (pid no longer alive) and incomplete step folders
                match = re.match(r"^\.(tmp|old)-step-\d+-(\d+)$", child.name)
                if match and not process_alive(int(match.group(2))):
                    shutil.rmtree(child, ignore_errors=True)
        return removed

    def _remove(self, step: int) -> None:
        if self.remote:
            store = self._store()
            prefix = self.where(step)
            store.delete(f"{prefix}/{COMPLETE}")  # first, so a half-deleted folder never looks complete
            store.delete_prefix(prefix)
        else:
            path = Path(self.where(step))
            (path / META).unlink(missing_ok=True)  # incomplete first
            shutil.rmtree(path, ignore_errors=True)

    # -- reading ----------------------------------------------------------------------------------------------
    def read_meta(self, where: str) -> dict[str, Any]:
        if _is_s3(where):
            return json.loads(self._store().read_bytes(f"{where}/{META}"))
        path = Path(where) / META
        if not path.is_file():
            raise FileNotFoundError(f"{path}: checkpoint is incomplete (no meta.json)")
        return json.loads(path.read_text())

    def load(self, where: str, names: list[str] | None = None) -> dict[str, Any]:
        """Load a complete folder's files (torch files with weights_only=True, map_location cpu)."""
        meta = self.read_meta(where)
        wanted = names if names is not None else list(meta.get("files", {}))
        out: dict[str, Any] = {META: meta}
        for name in wanted:
            if _is_s3(where):
                data = self._store().read_bytes(f"{where}/{name}")
            else:
                path = Path(where) / name
                if not path.is_file():
                    raise FileNotFoundError(f"checkpoint file missing: {path}")
                data = path.read_bytes()
            if name.endswith(".pt"):
                out[name] = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
            else:
                out[name] = data.decode()
        return out


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


