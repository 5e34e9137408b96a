"""Training checkpoints: `<root>/step-<N>/` folders, atomic, local or `s3://`, verified, keep-last-k per generation.

    from trm.checkpoint import Checkpoints
    ckpts = Checkpoints("runs/try1/checkpoints", keep_last=3)        # or "s3://trm/runs/try1/checkpoints"
    where, loaded = ckpts.select(fingerprint, identity, resume=True)  # the trainer: what to resume, if anything
    ckpts.save(step=1000, objects={"model.pt": sd, "optimizer.pt": opt, "train_state.pt": st},
               texts={"config.yaml": cfg.to_yaml()}, files={"identifiers.json": path}, meta={"epoch": 3},
               evaluated=True)
    where = ckpts.latest()                # newest complete folder, else None
    loaded = ckpts.load(where)            # verified; {"model.pt": ..., "meta.json": {...}, ...}

Writing: a folder is built under a temporary name (`.step-N.tmp-<host>-<pid>-<random>`) and renamed into place
after `meta.json`, which is written last and lists every file with its size; a folder without `meta.json` is
incomplete and never resumed from. For an `s3://` root the folder is first written whole to a local staging
folder ($TRM_HOME/staging/...), then uploaded with `trm.storage.publish` (`_COMPLETE` manifest last), then the
staged copy is removed; a staged folder left by a process killed during the upload is uploaded by the next
`select`.

Generations: `meta.json` records the run's generation (an id fixed when a run starts from scratch) and the
fingerprint of its training parameters. Pruning looks only at folders of the current generation and never at
the folder just written, so old or foreign folders can never make a new checkpoint disappear; it keeps the newest
`keep_last` plus every folder saved with `evaluated=True`, and a pruning failure is only a warning.

Resume (`select`): folders are tried newest first. One that fails verification (unreadable `meta.json`, a file
missing or of another size than `meta.json` / `_COMPLETE` list, a file torch cannot load) is moved aside to
`<root>/aside/<time>-bad/step-N` with a warning and the next one is tried. If the newest good folder was written
with other training parameters (another fingerprint), or `resume=False`, every step folder is moved aside to
`<root>/aside/<time>-superseded/` (said in one line) and the run starts a new generation from scratch: nothing is
deleted, and an old model can never be taken for the new run's.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from trm.storage import S3Store, publish
from trm.storage.local import fsync_dir, reap_temporaries, temp_name

log = logging.getLogger("trm.checkpoint")

STEP_DIR = re.compile(r"^step-(\d+)$")
META = "meta.json"
COMPLETE = "_COMPLETE"
ASIDE = "aside"


class BadCheckpoint(ValueError):
    """A checkpoint folder that cannot be used: the message says which folder and what is wrong with it."""


def _is_s3(path: str) -> bool:
    return str(path).startswith("s3://")


def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _torch_write(path: Path, obj: Any) -> int:
    """torch.save straight into the file (no in-memory copy of a multi-GB table), fsync; returns its size."""
    with open(path, "wb") as handle:
        torch.save(obj, handle)
        handle.flush()
        os.fsync(handle.fileno())
    return path.stat().st_size


def new_generation() -> str:
    """A fresh generation id: UTC time (sortable, readable) and a random suffix."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


def _say(text: str) -> None:
    print(f"[trm.checkpoint] {text}", file=sys.stderr, flush=True)


class Checkpoints:
    """The `step-N/` folders under one root (a local folder or an `s3://` prefix)."""

    def __init__(self, root: str | os.PathLike, keep_last: int = 3, generation: str | None = None):
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {keep_last}")
        self.root = str(root).rstrip("/")
        self.keep_last = keep_last
        self.remote = _is_s3(self.root)
        self.generation = generation  # fixed by select() (or given); written into every meta.json
        self.fingerprint: str | None = None
        self.identity: dict | None = None
        self.superseded: str | None = None  # where select() moved the steps of an earlier training, if it did

    # -- listing ----------------------------------------------------------------------------------------------
    def _store(self) -> S3Store:
        from trm.storage import open_store

        return open_store()

    def where(self, step: int) -> str:
        return f"{self.root}/step-{step}"

    def complete_steps(self) -> list[int]:
        """Steps of complete folders (local: with meta.json; s3: with _COMPLETE), ascending."""
        steps = []
        if self.remote:
            for uri in self._store().list(self.root, recursive=True):
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

    # -- reading ----------------------------------------------------------------------------------------------
    def read_meta(self, where: str) -> dict[str, Any]:
        """meta.json of a folder; FileNotFoundError when absent, BadCheckpoint when unreadable."""
        if _is_s3(where):
            data = self._store().read_bytes(f"{where}/{META}")
        else:
            path = Path(where) / META
            if not path.is_file():
                raise FileNotFoundError(f"{path}: checkpoint is incomplete (no meta.json)")
            data = path.read_bytes()
        try:
            meta = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise BadCheckpoint(f"checkpoint {where}: meta.json is not valid JSON ({err})") from None
        if not isinstance(meta, dict):
            raise BadCheckpoint(f"checkpoint {where}: meta.json is not a JSON object")
        return meta

    def verify(self, where: str, meta: dict | None = None) -> dict[str, Any]:
        """Check that every file meta.json lists is there with its size (s3: and matches `_COMPLETE`);
        returns meta. BadCheckpoint naming the folder and the problem otherwise."""
        meta = self.read_meta(where) if meta is None else meta
        files = meta.get("files")
        if not isinstance(files, dict) or not all(isinstance(v, int) for v in files.values()):
            raise BadCheckpoint(f"checkpoint {where}: meta.json has no file list with sizes")
        if _is_s3(where):
            from trm.storage import DamagedFolder

            try:
                manifest = self._store().verify_folder(where)
            except (FileNotFoundError, DamagedFolder) as err:
                raise BadCheckpoint(f"checkpoint {where}: {err}") from None
            have = {rel: size for rel, (size, _) in manifest.files.items()}
        else:
            have = {}
            for name in files:
                try:
                    have[name] = (Path(where) / name).stat().st_size
                except OSError:
                    pass
        for name, size in sorted(files.items()):
            if name not in have:
                raise BadCheckpoint(f"checkpoint {where}: {name} is missing")
            if have[name] != size:
                raise BadCheckpoint(f"checkpoint {where}: {name} has {have[name]} bytes, meta.json says {size}")
        return meta

    def load(self, where: str, names: list[str] | None = None) -> dict[str, Any]:
        """Load a complete, verified folder's files (torch files with weights_only=True, map_location cpu).

        BadCheckpoint when a file is missing, of the wrong size, or cannot be loaded."""
        meta = self.verify(where)
        sizes = meta["files"]
        wanted = names if names is not None else list(sizes)
        out: dict[str, Any] = {META: meta}
        scratch = None
        try:
            for name in wanted:
                if _is_s3(where):  # a temporary local copy: torch reads files without a second in-memory copy
                    if scratch is None:
                        scratch = self.staging_dir() / temp_name("load")
                        scratch.mkdir(parents=True)
                    path = scratch / name
                    try:
                        self._store().download_file(f"{where}/{name}", path, size=sizes.get(name))
                    except FileNotFoundError:
                        raise BadCheckpoint(f"checkpoint {where}: {name} is missing") from None
                    except ValueError as err:  # DamagedFolder: another size than listed
                        raise BadCheckpoint(f"checkpoint {where}: {err}") from None
                else:
                    path = Path(where) / name
                    if not path.is_file():
                        raise BadCheckpoint(f"checkpoint {where}: {name} is missing")
                size = path.stat().st_size
                if name in sizes and size != sizes[name]:
                    raise BadCheckpoint(f"checkpoint {where}: {name} has {size} bytes, meta.json says {sizes[name]}")
                if name.endswith(".pt"):
                    try:
                        out[name] = torch.load(path, map_location="cpu", weights_only=True)
                    except Exception as err:  # noqa: BLE001 - any unpickling failure means the same: unusable
                        raise BadCheckpoint(f"checkpoint {where}: {name} cannot be loaded ({type(err).__name__}: "
                                            f"{str(err)[:200]})") from None
                else:
                    try:
                        out[name] = path.read_bytes().decode()
                    except UnicodeDecodeError:
                        raise BadCheckpoint(f"checkpoint {where}: {name} is not UTF-8 text") from None
        finally:
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)
        return out

    # -- resume -----------------------------------------------------------------------------------------------
    def select(self, fingerprint: str, identity: dict, resume: bool = True,
               required: tuple[str, ...] = (), same: Callable[[dict], str | None] | None = None,
               ) -> tuple[str | None, dict[str, Any] | None]:
        """Choose the folder a run resumes from and fix this run's generation; returns (where, loaded files).

        `fingerprint`/`identity`: of the training parameters (see trm.identity); `required`: files a usable
        folder must hold. (None, None) means: start from scratch in a new generation."""
        self.fingerprint, self.identity = fingerprint, dict(identity)
        self.flush_staged()
        steps = self.complete_steps()
        if not resume:
            if steps:
                aside = self.superseded = self.set_aside(steps, "superseded")
                _say(f"resume=False: moved {len(steps)} existing checkpoint(s) (step-{steps[0]} .. step-{steps[-1]}) "
                     f"of {self.root} aside to {aside}; starting over")
            self.generation = new_generation()
            return None, None
        for index in range(len(steps) - 1, -1, -1):
            step = steps[index]
            where = self.where(step)
            try:
                meta = self.read_meta(where)
                theirs = meta.get("fingerprint")
                if theirs is None:  # written before fingerprints existed: judge by its config.yaml
                    from trm.identity import training_identity_from_yaml

                    text = self.load(where, ["config.yaml"])["config.yaml"]
                    theirs_identity = training_identity_from_yaml(text)
                    from trm.identity import fingerprint_of

                    theirs = fingerprint_of(theirs_identity)
                    meta = {**meta, "training": theirs_identity}
                if theirs != fingerprint:
                    from trm.identity import differences

                    diff = differences(meta.get("training") or {}, identity)
                    remaining = steps[: index + 1]
                    aside = self.superseded = self.set_aside(remaining, "superseded")
                    _say(f"{where} was trained with other parameters ({'; '.join(diff[:6]) or 'fingerprint differs'}"
                         f"): moved {len(remaining)} checkpoint(s) aside to {aside}; starting over")
                    self.generation = new_generation()
                    return None, None
                for name in required:
                    if name not in (meta.get("files") or {}):
                        raise BadCheckpoint(f"checkpoint {where}: {name} is missing")
                loaded = self.load(where)
            except (BadCheckpoint, FileNotFoundError, EOFError) as err:
                aside = self.set_aside([step], "bad")
                _say(f"WARNING: {err}; moved it aside to {aside} and trying the next newest checkpoint")
                continue
            self.generation = str(meta.get("generation", ""))
            return where, loaded
        self.generation = new_generation()
        return None, None

    def set_aside(self, steps: list[int], reason: str) -> str:
        """Move step folders to `<root>/aside/<UTC time>-<reason>/` (nothing is deleted); returns that folder."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:4]
        target = f"{self.root}/{ASIDE}/{stamp}-{reason}"
        for step in steps:
            src = self.where(step)
            if self.remote:
                self._store().move_folder(src, f"{target}/step-{step}")
            else:
                Path(target).mkdir(parents=True, exist_ok=True)
                if Path(src).exists():
                    os.rename(src, f"{target}/step-{step}")
        if not self.remote:
            fsync_dir(self.root)
        return target

    # -- writing ----------------------------------------------------------------------------------------------
    def staging_dir(self) -> Path:
        """Where an s3:// root's folders are written before they are uploaded (one per root)."""
        from trm.storage import trm_home

        digest = hashlib.sha256(self.root.encode()).hexdigest()[:16]
        return trm_home() / "staging" / digest

    def flush_staged(self) -> list[int]:
        """Upload complete folders a killed process staged but never published (s3 roots); returns their steps."""
        if not self.remote:
            return []
        staging = self.staging_dir()
        if not staging.is_dir():
            return []
        reap_temporaries(staging)
        done = []
        for child in sorted(staging.iterdir()):
            match = STEP_DIR.match(child.name)
            if not match or not (child / META).is_file():
                continue
            step = int(match.group(1))
            store = self._store()
            if not store.is_complete(self.where(step)):
                publish(str(child), self.where(step), store=store)
                _say(f"uploaded step-{step}, staged locally by a run that stopped before uploading it")
            shutil.rmtree(child, ignore_errors=True)
            done.append(step)
        return done

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
        if self.generation is None:
            self.generation = new_generation()
        parent = self.staging_dir() if self.remote else Path(self.root)
        parent.mkdir(parents=True, exist_ok=True)
        reap_temporaries(parent)
        _reap_legacy(parent)
        tmp = parent / temp_name(f"step-{step}")
        tmp.mkdir()
        try:
            listing = {}
            for name, obj in (objects or {}).items():
                listing[name] = _torch_write(tmp / name, obj)
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
            record = {"step": step, "evaluated": bool(evaluated), "saved_at": time.time(), "files": listing,
                      "generation": self.generation}
            if self.fingerprint is not None:
                record["fingerprint"] = self.fingerprint
                record["training"] = self.identity
            record.update(meta or {})
            _fsync_write(tmp / META, json.dumps(record, indent=1, sort_keys=True).encode())
            final = parent / f"step-{step}"
            if final.exists():  # an older folder of the same step (a rerun, or a stale staged copy): swap it out
                old = parent / temp_name(f"step-{step}", "old")
                final.rename(old)
                tmp.rename(final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                tmp.rename(final)
            fsync_dir(parent)
            if self.remote:
                publish(str(final), self.where(step), store=self._store())
                shutil.rmtree(final, ignore_errors=True)
            target = self.where(step)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        self.prune(just_written=step)
        return target

    def prune(self, just_written: int | None = None) -> list[int]:
        """Delete this generation's plain folders beyond the newest keep_last (evaluated ones stay).

        Never touches the folder just written, folders of other generations, or folders whose meta.json cannot
        be read (those get a warning). Failures are warnings: a checkpoint that was written stays written."""
        removed: list[int] = []
        try:
            steps = self.complete_steps()
        except (OSError, ValueError, RuntimeError) as err:
            log.warning("checkpoint pruning skipped: cannot list %s (%s)", self.root, err)
            return removed
        mine: list[tuple[int, dict]] = []
        for step in steps:
            if step == just_written:
                continue
            try:
                meta = self.read_meta(self.where(step))
            except (OSError, ValueError, RuntimeError) as err:
                _say(f"WARNING: not pruning step-{step}: {err}")
                continue
            if str(meta.get("generation", "")) == str(self.generation or ""):
                mine.append((step, meta))
        newest = sorted([s for s, _ in mine] + ([just_written] if just_written is not None else []))
        keep = set(newest[-self.keep_last :])
        if just_written is not None:
            keep.add(just_written)
        for step, meta in mine:
            if step in keep or meta.get("evaluated"):
                continue
            try:
                self._remove(step)
            except (OSError, RuntimeError) as err:
                _say(f"WARNING: could not prune step-{step}: {err}")
                continue
            removed.append(step)
        if just_written is not None:
            try:
                self._sweep_incomplete(below=just_written, complete=set(steps))
            except (OSError, RuntimeError) as err:
                log.warning("leftovers under %s not swept: %s", self.root, err)
        return removed

    def _sweep_incomplete(self, below: int, complete: set[int], max_age: float = 3600.0) -> None:
        """Remove what killed prunes and uploads left: step folders below `below` that are not complete.

        Local: a `step-N` without meta.json can only be a prune cut short (saves rename whole folders into place).
        s3: a `step-N/` prefix without `_COMPLETE`, unless an upload marker (`_UPLOADING`) younger than max_age
        says someone may still be writing it."""
        if not self.remote:
            root = Path(self.root)
            for child in root.iterdir() if root.is_dir() else []:
                match = STEP_DIR.match(child.name)
                if match and int(match.group(1)) < below and not (child / META).exists() and child.is_dir():
                    shutil.rmtree(child, ignore_errors=True)
            return
        from datetime import datetime, timezone

        store = self._store()
        folders: dict[int, list] = {}
        for entry in store.entries(self.root, recursive=True):
            rel = str(entry.uri)[len(self.root) + 1:].split("/")
            if len(rel) >= 2 and STEP_DIR.match(rel[0]):
                folders.setdefault(int(STEP_DIR.match(rel[0]).group(1)), []).append((rel[-1], entry))
        now = datetime.now(timezone.utc)
        for step, items in folders.items():
            if step >= below or step in complete:
                continue
            names = {name: entry for name, entry in items}
            if COMPLETE in names:
                continue
            marker = names.get("_UPLOADING")
            if marker is not None and marker.modified is not None and \
                    (now - marker.modified).total_seconds() < max_age:
                continue
            store.delete_prefix(self.where(step))

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


_LEGACY_TMP = re.compile(r"^\.(tmp|old)-step-\d+-\d+$")


def _reap_legacy(parent: Path) -> None:
    """Temporaries named by older versions (`.tmp-step-N-<pid>`, no host): removed after 24 hours only."""
    try:
        children = list(parent.iterdir())
    except OSError:
        return
    for child in children:
        if _LEGACY_TMP.match(child.name):
            try:
                if time.time() - child.stat().st_mtime > 24 * 3600:
                    shutil.rmtree(child, ignore_errors=True)
            except OSError:
                pass
