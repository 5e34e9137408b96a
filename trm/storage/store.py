"""The S3 store: atomic, retried uploads and downloads of files and folders through the `minio` SDK.

    from trm.storage import S3Store, localize, publish
    store = S3Store.from_env()                  # TRM_S3_ENDPOINT, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, ...
    store.check()                               # fails fast, naming the endpoint, when it cannot be reached
    store.upload_dir("out/dataset", "s3://trm/runs/r1/dataset")   # every file, then _COMPLETE last
    store.download_dir("s3://trm/runs/r1/dataset", "data/arc2")   # temp folder, renamed when whole
    path = localize("s3://trm/runs/r1/dataset")  # cached local copy under $TRM_HOME/cache/s3/
    publish("build/tmp-dataset", "s3://trm/runs/r1/dataset")  # or a local path: atomic rename into place

Guarantees:
- Every network call retries with exponential backoff on connection errors, timeouts and 5xx answers for up to
  `retry_seconds` (TRM_S3_RETRY_SECONDS, default 60), so a server restarted mid-transfer is survived.
- Uploads are single PUTs or multipart uploads, both atomic in S3: no partial object is ever visible under its
  final name. Downloads write a temporary file next to the target and rename it when the size matches.
- A folder is complete only when `<prefix>/_COMPLETE` exists. That marker is a manifest: every key of the folder
  with its size and ETag. It is written after every other file (and after keys of an earlier upload that are not
  in the new list have been removed) and deleted before a folder is re-uploaded. Readers (`download_dir`,
  `localize`) fetch exactly the manifest's keys and check each size and ETag, so they get one whole upload or a
  `DamagedFolder` error naming what is wrong, never a mix of two uploads.
- Credentials never appear in repr/str, log records or exception messages (URL userinfo included).
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import logging
import os
import re
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TypeVar

import urllib3
from minio import Minio
from minio.deleteobjects import DeleteObject
from minio.error import InvalidResponseError, S3Error, ServerError

from trm.storage.config import S3Config, redact, trm_home
from trm.storage.local import atomic_write, host, temp_name
from trm.storage.uri import is_s3, join, parse_s3, s3_uri

log = logging.getLogger("trm.storage")

COMPLETE = "_COMPLETE"
UPLOADING = "_UPLOADING"  # present while upload_dir runs: the prefix is a trm folder being (re)written
MANIFEST_FORMAT = 2
PART_SIZE = 32 * 1024 * 1024  # larger files go up as multipart uploads (atomic on completion)
CHUNK = 1024 * 1024
_NOT_FOUND = {"NoSuchKey", "NoSuchObject", "NoSuchBucket", "ResourceNotFound", "NotFound"}
_AUTH = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"}
# NoSuchUpload: a multipart upload lost to a server restart; the retry starts the whole upload again.
_RETRY_CODES = {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "RequestTimeTooSkewed",
                "XMinioServerNotInitialized", "OperationAborted", "NoSuchUpload"}

T = TypeVar("T")


class _Truncated(Exception):
    """A download ended before the object's size: retried like a dropped connection."""


class StoreError(RuntimeError):
    """An S3 failure that is not a missing object, refused credentials or an unreachable endpoint."""


class DamagedFolder(ValueError):
    """A folder whose objects do not match its `_COMPLETE` manifest (missing, resized or replaced keys)."""


@dataclass(frozen=True)
class Entry:
    """One row of a listing: an object (size, modified) or, in non-recursive listings, a folder prefix."""

    uri: str
    key: str
    size: int
    modified: datetime | None
    is_dir: bool = False
    etag: str | None = None


@dataclass(frozen=True)
class Manifest:
    """What `_COMPLETE` says a folder holds: relative key -> (size, ETag or None), plus the writer's `meta`."""

    files: dict[str, tuple[int, str | None]]
    meta: dict
    raw: bytes
    legacy: bool = False  # a format-1 marker (a file count only): the list comes from the folder listing

    @property
    def bytes(self) -> int:
        return sum(size for size, _ in self.files.values())


def _etag(value: str | None) -> str | None:
    return value.strip('"') if value else None


def _manifest_bytes(files: dict[str, tuple[int, str | None]], meta: dict | None) -> bytes:
    doc = {"format": MANIFEST_FORMAT,
           "files": {rel: ({"size": size, "etag": etag} if etag else {"size": size})
                     for rel, (size, etag) in sorted(files.items())},
           "count": len(files), "bytes": sum(size for size, _ in files.values()),
           "written": datetime.now(timezone.utc).isoformat(), "id": uuid.uuid4().hex}
    if meta:
        doc["meta"] = meta
    return json.dumps(doc, indent=1, sort_keys=True).encode()


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError, socket.timeout, _Truncated)):
        return True
    if isinstance(exc, ServerError):
        return exc.status_code >= 500
    if isinstance(exc, InvalidResponseError):
        return getattr(exc, "_code", 500) >= 500 or getattr(exc, "_code", 0) in (408, 429)
    if isinstance(exc, S3Error):
        status = getattr(getattr(exc, "response", None), "status", 0) or 0
        return exc.code in _RETRY_CODES or status >= 500
    return False


def _http_client(connect_timeout: float, read_timeout: float) -> urllib3.PoolManager:
    # Retries are ours (bounded by time, whole-operation), so urllib3 must not retry on its own.
    import certifi

    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
        maxsize=16,
        cert_reqs="CERT_REQUIRED",
        ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
        retries=urllib3.Retry(total=0, redirect=0, raise_on_status=False),
    )


class S3Store:
    """A minio client for one endpoint, with bounded retries and atomic transfers. Thread-safe."""

    def __init__(self, config: S3Config, connect_timeout: float = 5.0, read_timeout: float = 120.0,
                 max_backoff: float = 4.0, workers: int = 4):
        config.require()
        self.config = config
        self.endpoint = config.endpoint
        self.max_backoff = max_backoff
        self.workers = max(1, int(workers))
        netloc, secure = config.split_endpoint()
        self._client = Minio(netloc, access_key=config.access_key, secret_key=config.secret_key,
                             session_token=config.session_token, secure=secure, region=config.region,
                             http_client=_http_client(connect_timeout, read_timeout))
        self._buckets: set[str] = set()
        self._lock = threading.Lock()
        self.retry_log_level = logging.WARNING

    @classmethod
    def from_env(cls, env=None, **kwargs) -> "S3Store":
        """The store named by TRM_S3_ENDPOINT / AWS_*; ValueError naming the missing variable."""
        return cls(S3Config.from_env(env), **kwargs)

    def __repr__(self) -> str:
        return f"S3Store(endpoint={self.endpoint}, bucket={self.config.bucket})"

    __str__ = __repr__

    # -- plumbing ---------------------------------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        """`text` without this store's secret key, session token, or credentials inside any URL."""
        return redact(text, (self.config.secret_key, self.config.session_token))

    def _retry(self, what: str, fn: Callable[[], T], deadline_s: float | None = None) -> T:
        """Call fn until it succeeds, a non-retryable error occurs, or the deadline passes."""
        budget = self.config.retry_seconds if deadline_s is None else deadline_s
        start = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                return fn()
            except Exception as exc:  # noqa: BLE001 - classified below; anything else re-raised
                if not _retryable(exc):
                    raise self._translate(what, exc) from None
                elapsed = time.monotonic() - start
                delay = min(self.max_backoff, 0.1 * 2 ** (attempt - 1))
                reason = self._scrub(f"{type(exc).__name__}: {exc}")[:300]
                if elapsed + delay > budget:
                    raise ConnectionError(
                        f"S3 endpoint {self.endpoint}: {what} failed after {attempt} attempt(s) over "
                        f"{elapsed:.1f}s ({reason}). Is the server running and TRM_S3_ENDPOINT right?"
                    ) from None
                log.log(self.retry_log_level, "S3 %s failed (%s); retry %d in %.1fs", what, reason, attempt, delay)
                time.sleep(delay)

    def _translate(self, what: str, exc: Exception) -> Exception:
        if isinstance(exc, S3Error):
            if exc.code == "NoSuchBucket":
                bucket = getattr(exc, "_bucket_name", None) or "?"
                return FileNotFoundError(self._scrub(f"{what}: bucket {bucket!r} does not exist on {self.endpoint}"))
            if exc.code in _NOT_FOUND:
                return FileNotFoundError(self._scrub(f"{what}: not found on {self.endpoint} ({exc.code})"))
            if exc.code in _AUTH:
                return PermissionError(self._scrub(
                    f"{what}: the S3 endpoint {self.endpoint} refused access key "
                    f"{self.config.access_key!r} ({exc.code}); check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
                ))
            return StoreError(self._scrub(f"{what}: S3 error {exc.code} on {self.endpoint}: {exc.message}"))
        if isinstance(exc, (OSError, ValueError)):
            text = str(exc)
            clean = self._scrub(text)
            if clean == text:
                return exc
            try:  # the same kind of error, without the secret
                return type(exc)(clean)
            except Exception:  # noqa: BLE001 - an exception type with another signature
                return (PermissionError if isinstance(exc, PermissionError) else
                        OSError if isinstance(exc, OSError) else ValueError)(clean)
        return StoreError(self._scrub(f"{what} on {self.endpoint}: {type(exc).__name__}: {exc}"))

    def _ensure_bucket_once(self, bucket: str) -> None:
        if bucket in self._buckets:
            return
        self.ensure_bucket(bucket)

    # -- buckets and health -------------------------------------------------------------------------------------

    def check(self, timeout: float = 10.0) -> "S3Store":
        """Reach the endpoint within `timeout` seconds (at most TRM_S3_RETRY_SECONDS) or raise
        ConnectionError/PermissionError naming it."""
        self._retry(f"check (bucket {self.config.bucket})",
                    lambda: self._client.bucket_exists(self.config.bucket),
                    deadline_s=min(timeout, self.config.retry_seconds))
        return self

    def ensure_bucket(self, bucket: str | None = None) -> str:
        """Create the bucket (default TRM_S3_BUCKET) if it does not exist; return its name."""
        bucket = bucket or self.config.bucket

        def make() -> None:
            if self._client.bucket_exists(bucket):
                return
            try:
                self._client.make_bucket(bucket)
            except S3Error as exc:
                if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise

        self._retry(f"create bucket {bucket}", make)
        with self._lock:
            self._buckets.add(bucket)
        return bucket

    # -- objects ------------------------------------------------------------------------------------------------

    def upload_file(self, path: str | os.PathLike, uri: str) -> str:
        """Upload one local file to `uri` (a single PUT or multipart upload: atomic). Returns the URI."""
        return self.put_file(path, uri)[0]

    def put_file(self, path: str | os.PathLike, uri: str) -> tuple[str, str | None]:
        """upload_file, returning (URI, the ETag the store gave the object)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"upload: no such file {path}")
        bucket, key = parse_s3(uri)
        if not key:
            raise ValueError(f"upload: {uri!r} names a bucket, not an object")
        self._ensure_bucket_once(bucket)
        result = self._retry(f"upload {path} -> {uri}",
                             lambda: self._client.fput_object(bucket, key, str(path), part_size=PART_SIZE))
        return s3_uri(bucket, key), _etag(getattr(result, "etag", None))

    def write_bytes(self, uri: str, data: bytes) -> str:
        """Write `data` as one object (atomic)."""
        bucket, key = parse_s3(uri)
        if not key:
            raise ValueError(f"write: {uri!r} names a bucket, not an object")
        self._ensure_bucket_once(bucket)
        data = bytes(data)
        self._retry(f"write {uri}",
                    lambda: self._client.put_object(bucket, key, io.BytesIO(data), len(data)))
        return s3_uri(bucket, key)

    def read_bytes(self, uri: str) -> bytes:
        """The whole object; FileNotFoundError when absent."""
        bucket, key = parse_s3(uri)

        def read() -> bytes:
            resp = self._client.get_object(bucket, key)
            try:
                return resp.read()
            finally:
                resp.close()
                resp.release_conn()

        return self._retry(f"read {uri}", read)

    def stat(self, uri: str):
        """minio's object stat (size, etag, last_modified); FileNotFoundError when absent."""
        bucket, key = parse_s3(uri)
        return self._retry(f"stat {uri}", lambda: self._client.stat_object(bucket, key))

    def download_file(self, uri: str, path: str | os.PathLike, size: int | None = None,
                      etag: str | None = None) -> Path:
        """Download to a temporary file beside `path`, resuming after dropped connections, then rename.

        With `size` / `etag` (from a folder's manifest) an object of another size or ETag is refused
        (DamagedFolder) instead of downloaded."""
        bucket, key = parse_s3(uri)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.part-{uuid.uuid4().hex[:8]}")
        state = {"etag": None, "size": None}

        def fetch() -> None:
            info = self._client.stat_object(bucket, key)
            if size is not None and info.size != size:
                raise DamagedFolder(f"{uri} has {info.size} bytes, its folder's {COMPLETE} says {size}")
            if etag and _etag(info.etag) and _etag(info.etag) != etag:
                raise DamagedFolder(f"{uri} was replaced after its folder's {COMPLETE} was written "
                                    f"(ETag {_etag(info.etag)}, expected {etag})")
            have = tmp.stat().st_size if tmp.exists() else 0
            if info.etag != state["etag"] or have > info.size:
                have = 0  # the object changed between attempts: start over
            state.update(etag=info.etag, size=info.size)
            if have < info.size or info.size == 0:
                resp = self._client.get_object(bucket, key, offset=have) if have else \
                    self._client.get_object(bucket, key)
                try:
                    with open(tmp, "ab" if have else "wb") as f:
                        for chunk in resp.stream(CHUNK):
                            f.write(chunk)
                finally:
                    resp.close()
                    resp.release_conn()
            got = tmp.stat().st_size
            if got != info.size:
                raise _Truncated(f"got {got} of {info.size} bytes")

        try:
            self._retry(f"download {uri}", fetch)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    def exists(self, uri: str) -> bool:
        """True for an existing object, a non-empty prefix ("folder"), or an existing bucket."""
        bucket, key = parse_s3(uri)
        if not key:
            return self._retry(f"check bucket {bucket}", lambda: self._client.bucket_exists(bucket))

        def probe() -> bool:
            try:
                self._client.stat_object(bucket, key)
                return True
            except S3Error as exc:
                if exc.code not in _NOT_FOUND:
                    raise
                if exc.code == "NoSuchBucket":
                    return False
            return next(iter(self._client.list_objects(bucket, prefix=key + "/")), None) is not None

        return self._retry(f"exists {uri}", probe)

    def entries(self, uri: str, recursive: bool = True) -> list[Entry]:
        """Objects under the folder `uri` (sorted); non-recursive listings also give sub-folders (is_dir)."""
        bucket, key = parse_s3(uri)
        prefix = key + "/" if key else ""

        def listing() -> list[Entry]:
            out = []
            for obj in self._client.list_objects(bucket, prefix=prefix, recursive=recursive):
                name = obj.object_name.rstrip("/")
                out.append(Entry(uri=s3_uri(bucket, name) + ("/" if obj.is_dir else ""), key=obj.object_name,
                                 size=int(obj.size or 0), modified=obj.last_modified, is_dir=bool(obj.is_dir),
                                 etag=_etag(getattr(obj, "etag", None))))
            return sorted(out, key=lambda e: e.key)

        try:
            return self._retry(f"list {uri}", listing)
        except FileNotFoundError:
            return []

    def list(self, uri: str, recursive: bool = True) -> list[str]:
        """URIs of the objects under the folder `uri` (sub-folders end in '/' when not recursive)."""
        return [e.uri for e in self.entries(uri, recursive=recursive)]

    def delete(self, uri: str) -> None:
        """Remove one object (no error when it is absent)."""
        bucket, key = parse_s3(uri)
        self._retry(f"delete {uri}", lambda: self._client.remove_object(bucket, key))

    def delete_prefix(self, uri: str) -> int:
        """Remove the object `uri` and every object under `uri/`; returns how many were removed."""
        bucket, key = parse_s3(uri)
        keys = [e.key for e in self.entries(uri, recursive=True)]
        if key:
            try:
                self.stat(uri)
                keys.append(key)
            except FileNotFoundError:
                pass

        if keys:
            self._delete_keys(uri, bucket, keys)
        return len(keys)

    def _delete_keys(self, uri: str, bucket: str, keys: list[str]) -> None:
        def remove() -> None:
            errors = list(self._client.remove_objects(bucket, (DeleteObject(k) for k in keys)))
            if errors:
                raise StoreError(f"delete under {uri}: {len(errors)} object(s) failed, e.g. {errors[0]}")

        self._retry(f"delete {uri}", remove)

    # -- folders ------------------------------------------------------------------------------------------------

    def is_complete(self, uri: str) -> bool:
        """True when the folder `uri` has its `_COMPLETE` marker."""
        try:
            self.stat(join(uri, COMPLETE))
            return True
        except FileNotFoundError:
            return False

    def _map(self, fn: Callable[[T], object], items: Iterable[T]) -> list:
        items = list(items)
        if len(items) <= 1 or self.workers == 1:
            return [fn(item) for item in items]
        with ThreadPoolExecutor(max_workers=min(self.workers, len(items))) as pool:
            return list(pool.map(fn, items))

    def manifest(self, uri: str) -> Manifest | None:
        """The parsed `_COMPLETE` of folder `uri`, or None when it has none (incomplete or not a folder).

        A format-1 marker (older versions wrote only a file count and a byte total) is still read: its key list
        is the folder's listing, accepted only when the count and total match (else DamagedFolder)."""
        try:
            raw = self.read_bytes(join(uri, COMPLETE))
        except FileNotFoundError:
            return None
        try:
            doc = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise DamagedFolder(f"{uri}: its {COMPLETE} marker is not valid JSON; upload the folder again") from None
        if not isinstance(doc, dict):
            raise DamagedFolder(f"{uri}: its {COMPLETE} marker is not a JSON object; upload the folder again")
        files = doc.get("files")
        if isinstance(files, dict):
            out = {}
            for rel, info in files.items():
                if not isinstance(info, dict) or not isinstance(info.get("size"), int):
                    raise DamagedFolder(f"{uri}: {COMPLETE} lists {rel!r} without a size; upload the folder again")
                out[rel] = (int(info["size"]), info.get("etag"))
            return Manifest(out, dict(doc.get("meta") or {}), raw)
        if isinstance(files, int):  # format 1
            listed = {e.key[len(parse_s3(uri)[1]) + 1:]: (e.size, e.etag)
                      for e in self.entries(uri, recursive=True) if not e.is_dir}
            listed = {rel: v for rel, v in listed.items() if rel not in (COMPLETE, UPLOADING)}
            total = sum(size for size, _ in listed.values())
            if len(listed) != files or (isinstance(doc.get("bytes"), int) and total != doc["bytes"]):
                raise DamagedFolder(
                    f"{uri}: holds {len(listed)} file(s) / {total} bytes but its (old-format) {COMPLETE} says "
                    f"{files} / {doc.get('bytes')}; upload the folder again")
            return Manifest(listed, {}, raw, legacy=True)
        raise DamagedFolder(f"{uri}: its {COMPLETE} marker has no file list; upload the folder again")

    def verify_folder(self, uri: str, manifest: Manifest | None = None) -> Manifest:
        """The folder's manifest after checking every listed key is there with its size and ETag.

        FileNotFoundError when it has no `_COMPLETE`; DamagedFolder naming the first problems otherwise."""
        manifest = manifest or self.manifest(uri)
        if manifest is None:
            raise FileNotFoundError(f"{uri} is incomplete (no {COMPLETE} marker)")
        prefix = parse_s3(uri)[1]
        have = {e.key[len(prefix) + 1:] if prefix else e.key: e
                for e in self.entries(uri, recursive=True) if not e.is_dir}
        problems = []
        for rel, (size, etag) in sorted(manifest.files.items()):
            entry = have.get(rel)
            if entry is None:
                problems.append(f"{rel} is missing")
            elif entry.size != size:
                problems.append(f"{rel} has {entry.size} bytes, not {size}")
            elif etag and entry.etag and entry.etag != etag:
                problems.append(f"{rel} was replaced (ETag {entry.etag}, not {etag})")
        if problems:
            more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
            raise DamagedFolder(f"{uri} does not match its {COMPLETE}: {'; '.join(problems[:3])}{more}. "
                                "Another writer may have changed it: upload it again")
        return manifest

    def upload_dir(self, local_dir: str | os.PathLike, uri: str, meta: dict | None = None) -> str:
        """Make the folder `uri` exactly the files under `local_dir`; `_COMPLETE` (the manifest) comes last.

        Order: `_UPLOADING` (who writes), delete `_COMPLETE`, upload every file, delete keys of an earlier upload
        that are not in the new list, check no other writer took over meanwhile, write `_COMPLETE` with every
        key's size and ETag (and `meta`), remove `_UPLOADING`. A reader sees no marker while this runs.
        """
        local_dir = Path(local_dir)
        if not local_dir.is_dir():
            raise FileNotFoundError(f"upload: no such folder {local_dir}")
        bucket, key = parse_s3(uri)
        if not key:
            raise ValueError(f"upload: {uri!r} names a bucket; give a folder under it")
        files = sorted(p for p in local_dir.rglob("*")
                       if p.is_file() and p.relative_to(local_dir).as_posix() not in (COMPLETE, UPLOADING))
        self._ensure_bucket_once(bucket)
        token = uuid.uuid4().hex
        claim = {"id": token, "host": host(), "pid": os.getpid(), "started": datetime.now(timezone.utc).isoformat()}
        self.write_bytes(join(uri, UPLOADING), json.dumps(claim).encode())
        self.delete(join(uri, COMPLETE))

        def put(path: Path) -> tuple[str, tuple[int, str | None]]:
            rel = path.relative_to(local_dir).as_posix()
            size = path.stat().st_size
            _, etag = self.put_file(path, join(uri, rel))
            return rel, (size, etag)

        listing = dict(self._map(put, files))
        self._still_mine(uri, token)  # before removing anything: an overtaken writer must not touch the other's
        self._remove_stale(uri, set(listing))
        self._still_mine(uri, token)
        self.write_bytes(join(uri, COMPLETE), _manifest_bytes(listing, meta))
        self.delete(join(uri, UPLOADING))
        return s3_uri(bucket, key)

    def _still_mine(self, uri: str, token: str) -> None:
        try:
            current = json.loads(self.read_bytes(join(uri, UPLOADING))).get("id")
        except (FileNotFoundError, ValueError):
            current = None
        if current != token:
            raise StoreError(f"upload to {uri}: another upload to the same folder started while this one ran; "
                             f"this one was not marked complete (run one writer per folder)")

    def _remove_stale(self, uri: str, keep: set[str]) -> int:
        """Delete objects under `uri` that are neither in `keep` (relative keys) nor markers, sparing any nested
        folder that has markers of its own (another trm folder below this one)."""
        bucket, prefix = parse_s3(uri)
        rels = [e.key[len(prefix) + 1:] for e in self.entries(uri, recursive=True) if not e.is_dir]
        nested = {rel.rsplit("/", 1)[0] + "/" for rel in rels
                  if "/" in rel and rel.rsplit("/", 1)[1] in (COMPLETE, UPLOADING)}
        stale = [f"{prefix}/{rel}" for rel in rels
                 if rel not in keep | {UPLOADING, COMPLETE} and not any(rel.startswith(n) for n in nested)]
        if stale:
            self._delete_keys(uri, bucket, stale)
        return len(stale)

    def foreign_objects(self, uri: str) -> int:
        """How many objects lie under `uri` when it is not a trm folder (no `_COMPLETE` nor `_UPLOADING`)."""
        if self.is_complete(uri) or self.exists(join(uri, UPLOADING)):
            return 0
        return len([e for e in self.entries(uri, recursive=True) if not e.is_dir])

    def download_dir(self, uri: str, local_dir: str | os.PathLike, allow_incomplete: bool = False) -> Path:
        """Download the folder `uri` into `local_dir` via a temporary sibling folder renamed when whole.

        Exactly the keys of its `_COMPLETE` manifest are fetched, each checked against the listed size and ETag
        (DamagedFolder on a mismatch); objects not in the manifest are ignored. Refuses (FileNotFoundError) a
        folder without `_COMPLETE` unless allow_incomplete (then: every object there). An existing `local_dir`
        is replaced only after the new copy is whole.
        """
        bucket, key = parse_s3(uri)
        local_dir = Path(local_dir)
        manifest = self.manifest(uri)
        prefix = key + "/" if key else ""
        if manifest is not None:
            wanted = [(rel, size, etag) for rel, (size, etag) in sorted(manifest.files.items())]
        elif allow_incomplete:
            wanted = [(e.key[len(prefix):], None, None) for e in self.entries(uri, recursive=True)
                      if not e.is_dir and e.key[len(prefix):] not in (UPLOADING, "")]
            if not wanted:
                raise FileNotFoundError(f"{uri}: no such folder (nothing under it)")
        elif self.entries(uri):
            raise FileNotFoundError(f"{uri} is incomplete (no {COMPLETE} marker): it is still being "
                                    "written or its upload failed")
        else:
            raise FileNotFoundError(f"{uri}: no such folder")
        local_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = local_dir.with_name(f".{local_dir.name}.part-{uuid.uuid4().hex[:8]}")
        tmp.mkdir()
        try:
            def get(item: tuple[str, int | None, str | None]) -> None:
                rel, size, etag = item
                target = tmp / rel
                if tmp.resolve() not in target.resolve().parents:
                    raise ValueError(f"{uri}/{rel}: key escapes the target folder")
                try:
                    self.download_file(join(uri, rel), target, size=size, etag=etag)
                except FileNotFoundError:
                    if manifest is None:
                        raise
                    raise DamagedFolder(f"{uri}: {rel} is listed in its {COMPLETE} but missing; "
                                        "upload the folder again") from None

            self._map(get, wanted)
            if manifest is not None:
                (tmp / COMPLETE).write_bytes(manifest.raw)  # the copy remembers which upload it is
            _swap_in(tmp, local_dir)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return local_dir

    def copy_object(self, src: str, dst: str) -> str | None:
        """Server-side copy of one object; returns the new object's ETag."""
        from minio.commonconfig import ComposeSource, CopySource

        sb, sk = parse_s3(src)
        db, dk = parse_s3(dst)
        self._ensure_bucket_once(db)
        size = self.stat(src).size

        def copy():
            if size > 5 * 1024 ** 3:  # above S3's single-copy limit: a multipart copy
                return self._client.compose_object(db, dk, [ComposeSource(sb, sk)])
            return self._client.copy_object(db, dk, CopySource(sb, sk))

        return _etag(getattr(self._retry(f"copy {src} -> {dst}", copy), "etag", None))

    def move_folder(self, src: str, dst: str) -> str:
        """Move the folder `src` to `dst` inside the store (server-side copies, then deletes).

        A complete source stays complete at `dst` (a new manifest, with the copies' ETags, is written last);
        `src` loses its `_COMPLETE` before anything else is deleted. A killed move can simply be run again."""
        _, src_key = parse_s3(src)
        try:
            manifest = self.verify_folder(src)
        except (FileNotFoundError, DamagedFolder):
            manifest = None
        entries = [e for e in self.entries(src, recursive=True) if not e.is_dir]
        copied: dict[str, tuple[int, str | None]] = {}
        for entry in entries:
            rel = entry.key[len(src_key) + 1:]
            if rel in (COMPLETE, UPLOADING):
                continue
            copied[rel] = (entry.size, self.copy_object(entry.uri, join(dst, rel)))
        if manifest is not None:
            self.write_bytes(join(dst, COMPLETE),
                             _manifest_bytes({rel: copied[rel] for rel in manifest.files}, manifest.meta))
        self.delete(join(src, COMPLETE))
        self.delete_prefix(src)
        return dst


def _swap_in(new: Path, dest: Path) -> None:
    """Rename the finished folder `new` to `dest`; an existing dest is moved aside first, then removed."""
    old = None
    if dest.exists() or dest.is_symlink():
        old = dest.with_name(f".{dest.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(dest, old)
    try:
        os.replace(new, dest)
    except OSError:
        if old is not None:
            os.replace(old, dest)
        raise
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


_STORES: dict[tuple, S3Store] = {}
_STORES_LOCK = threading.Lock()


def open_store(config: S3Config | None = None) -> S3Store:
    """A shared S3Store for `config` (default: from the environment), created once per process and config."""
    config = S3Config.from_env() if config is None else config
    key = (config.endpoint, config.access_key, config.secret_key, config.session_token, config.region,
           config.retry_seconds)
    with _STORES_LOCK:
        store = _STORES.get(key)
        if store is None:
            store = _STORES[key] = S3Store(config)
        return store


def _cache_path(cache_dir: Path, uri: str) -> Path:
    """`<cache>/<bucket>/<key with '/' as '__'>-<hash>`: one flat entry per URI, so that `s3://b/a_b`, `s3://b/a/b`
    and a folder and the objects under it never share or nest a cache path."""
    bucket, key = parse_s3(uri)
    digest = hashlib.sha256(f"{bucket}/{key}".encode()).hexdigest()[:12]
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", key.replace("/", "__"))[-80:].lstrip(".") or "_"
    return cache_dir / bucket / f"{readable}-{digest}"


def localize(uri_or_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
             store: S3Store | None = None) -> Path:
    """A local path for `uri_or_path`: a local path is returned as is (it must exist); an `s3://` object or
    complete folder is downloaded once into `cache_dir` (default $TRM_HOME/cache/s3/<bucket>/...) and
    re-downloaded only when its `_COMPLETE` manifest (or ETag, for a file) changed or the cached copy no longer
    matches it. A folder's copy holds exactly the keys its manifest lists, each of the listed size."""
    text = os.fspath(uri_or_path)
    if not is_s3(text):
        path = Path(text).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"no such file or folder: {path}")
        return path
    store = store or open_store()
    cache = Path(cache_dir) if cache_dir is not None else trm_home() / "cache" / "s3"
    target = _cache_path(cache, text)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Several processes (e.g. the ranks of one node) may localize the same URI at once: one downloads, the
    # others wait and then find the copy current.
    with open(target.with_name(f".{target.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _localize_locked(store, text, target)


def _copy_matches(target: Path, manifest: Manifest) -> bool:
    """The cached folder is the upload `manifest` describes: same marker, every listed file at its size."""
    marker = target / COMPLETE
    if not (target.is_dir() and marker.is_file() and marker.read_bytes() == manifest.raw):
        return False
    for rel, (size, _) in manifest.files.items():
        try:
            if (target / rel).stat().st_size != size:
                return False
        except OSError:
            return False
    return True


def _localize_locked(store: S3Store, text: str, target: Path) -> Path:
    for _ in range(3):
        manifest = store.manifest(text)
        if manifest is None:
            break
        if _copy_matches(target, manifest):
            return target
        store.download_dir(text, target)
        if (target / COMPLETE).is_file() and (target / COMPLETE).read_bytes() == store.read_bytes(join(text, COMPLETE)):
            return target
        # the folder was re-uploaded while we copied it: copy again
    else:
        raise StoreError(f"{text} keeps changing while it is downloaded; try again later")
    try:
        info = store.stat(text)
    except FileNotFoundError:
        if store.entries(text):
            raise FileNotFoundError(f"{text} is incomplete (no {COMPLETE} marker)") from None
        raise FileNotFoundError(f"{text}: no such object or folder on {store.endpoint}") from None
    tag = target.with_name(f".{target.name}.etag")
    if target.is_file() and tag.is_file() and tag.read_text() == str(info.etag) \
            and target.stat().st_size == info.size:
        return target
    store.download_file(text, target)
    atomic_write(tag, str(info.etag))
    return target


def publish(local_dir: str | os.PathLike, dest: str | os.PathLike, store: S3Store | None = None,
            meta: dict | None = None) -> str:
    """Put the finished folder `local_dir` at `dest`, never leaving a half-written folder there.

    dest `s3://...`: upload_dir (every file, then the `_COMPLETE` manifest, which also carries `meta`). dest
    local: copy beside dest, then rename into place (an existing dest is replaced only after the copy is whole;
    `meta` is not written). Returns dest as a string.
    """
    local_dir = Path(local_dir)
    if not local_dir.is_dir():
        raise FileNotFoundError(f"publish: no such folder {local_dir}")
    text = os.fspath(dest)
    if is_s3(text):
        return (store or open_store()).upload_dir(local_dir, text, meta=meta)
    dest_path = Path(text).expanduser()
    if dest_path.resolve() == local_dir.resolve():
        return text
    dest_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest_path.with_name(temp_name(dest_path.name))
    try:
        shutil.copytree(local_dir, tmp, symlinks=False, copy_function=shutil.copy2)
        _swap_in(tmp, dest_path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return text
