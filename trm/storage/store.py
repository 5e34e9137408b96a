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
- A folder is complete only when `<prefix>/_COMPLETE` exists; it is written after every other file and removed
  before a folder is re-uploaded.
- Credentials never appear in repr/str, log records or exception messages.
"""

from __future__ import annotations

import fcntl
import io
import json
import logging
import os
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

from trm.storage.config import S3Config, trm_home
from trm.storage.uri import is_s3, join, parse_s3, s3_uri

log = logging.getLogger("trm.storage")

COMPLETE = "_COMPLETE"
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


@dataclass(frozen=True)
class Entry:
    """One row of a listing: an object (size, modified) or, in non-recursive listings, a folder prefix."""

    uri: str
    key: str
    size: int
    modified: datetime | None
    is_dir: bool = False


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
        for secret in (self.config.secret_key, self.config.session_token):
            if secret:
                text = text.replace(secret, "***")
        return text

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
            if exc.code in _NOT_FOUND:
                return FileNotFoundError(f"{what}: not found on {self.endpoint} ({exc.code})")
            if exc.code in _AUTH:
                return PermissionError(
                    f"{what}: the S3 endpoint {self.endpoint} refused access key "
                    f"{self.config.access_key!r} ({exc.code}); check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
                )
            return RuntimeError(self._scrub(f"{what}: S3 error {exc.code} on {self.endpoint}: {exc.message}"))
        if isinstance(exc, (OSError, ValueError)):
            return exc
        return RuntimeError(self._scrub(f"{what} on {self.endpoint}: {type(exc).__name__}: {exc}"))

    def _ensure_bucket_once(self, bucket: str) -> None:
        if bucket in self._buckets:
            return
        self.ensure_bucket(bucket)

    # -- buckets and health -------------------------------------------------------------------------------------

    def check(self, timeout: float = 10.0) -> "S3Store":
        """Reach the endpoint within `timeout` seconds or raise ConnectionError/PermissionError naming it."""
        self._retry(f"check (bucket {self.config.bucket})",
                    lambda: self._client.bucket_exists(self.config.bucket), deadline_s=timeout)
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
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"upload: no such file {path}")
        bucket, key = parse_s3(uri)
        if not key:
            raise ValueError(f"upload: {uri!r} names a bucket, not an object")
        self._ensure_bucket_once(bucket)
        self._retry(f"upload {path} -> {uri}",
                    lambda: self._client.fput_object(bucket, key, str(path), part_size=PART_SIZE))
        return s3_uri(bucket, key)

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

    def download_file(self, uri: str, path: str | os.PathLike) -> Path:
        """Download to a temporary file beside `path`, resuming after dropped connections, then rename."""
        bucket, key = parse_s3(uri)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.part-{uuid.uuid4().hex[:8]}")
        state = {"etag": None, "size": None}

        def fetch() -> None:
            info = self._client.stat_object(bucket, key)
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
                                 size=int(obj.size or 0), modified=obj.last_modified, is_dir=bool(obj.is_dir)))
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

        def remove() -> None:
            errors = list(self._client.remove_objects(bucket, (DeleteObject(k) for k in keys)))
            if errors:
                raise RuntimeError(f"delete under {uri}: {len(errors)} object(s) failed, e.g. {errors[0]}")

        if keys:
            self._retry(f"delete {uri}", remove)
        return len(keys)

    # -- folders ------------------------------------------------------------------------------------------------

    def is_complete(self, uri: str) -> bool:
        """True when the folder `uri` has its `_COMPLETE` marker."""
        try:
            self.stat(join(uri, COMPLETE))
            return True
        except FileNotFoundError:
            return False

    def _map(self, fn: Callable[[T], object], items: Iterable[T]) -> None:
        items = list(items)
        if len(items) <= 1 or self.workers == 1:
            for item in items:
                fn(item)
            return
        with ThreadPoolExecutor(max_workers=min(self.workers, len(items))) as pool:
            for _ in pool.map(fn, items):
                pass

    def upload_dir(self, local_dir: str | os.PathLike, uri: str) -> str:
        """Upload every file under `local_dir` to `uri/...`, then write `uri/_COMPLETE` last.

        An existing marker is removed first, so readers never take a half-replaced folder as complete.
        """
        local_dir = Path(local_dir)
        if not local_dir.is_dir():
            raise FileNotFoundError(f"upload: no such folder {local_dir}")
        bucket, key = parse_s3(uri)
        if not key:
            raise ValueError(f"upload: {uri!r} names a bucket; give a folder under it")
        files = sorted(p for p in local_dir.rglob("*")
                       if p.is_file() and p.relative_to(local_dir).as_posix() != COMPLETE)
        self._ensure_bucket_once(bucket)
        self.delete(join(uri, COMPLETE))
        self._map(lambda p: self.upload_file(p, join(uri, p.relative_to(local_dir).as_posix())), files)
        marker = {"files": len(files), "bytes": sum(p.stat().st_size for p in files),
                  "written": datetime.now(timezone.utc).isoformat(), "id": uuid.uuid4().hex}
        self.write_bytes(join(uri, COMPLETE), json.dumps(marker).encode())
        return s3_uri(bucket, key)

    def download_dir(self, uri: str, local_dir: str | os.PathLike, allow_incomplete: bool = False) -> Path:
        """Download the folder `uri` into `local_dir` via a temporary sibling folder renamed when whole.

        Refuses (FileNotFoundError) a folder without `_COMPLETE` unless allow_incomplete. An existing
        `local_dir` is replaced only after the new copy is whole.
        """
        bucket, key = parse_s3(uri)
        local_dir = Path(local_dir)
        if not allow_incomplete and not self.is_complete(uri):
            if self.entries(uri):
                raise FileNotFoundError(f"{uri} is incomplete (no {COMPLETE} marker): it is still being "
                                        "written or its upload failed")
            raise FileNotFoundError(f"{uri}: no such folder")
        entries = [e for e in self.entries(uri, recursive=True) if not e.is_dir]
        if not entries:
            raise FileNotFoundError(f"{uri}: no such folder (nothing under it)")
        prefix = key + "/" if key else ""
        local_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = local_dir.with_name(f".{local_dir.name}.part-{uuid.uuid4().hex[:8]}")
        tmp.mkdir()
        try:
            def get(entry: Entry) -> None:
                rel = entry.key[len(prefix):]
                if not rel or rel.endswith("/"):
                    return
                target = tmp / rel
                if tmp.resolve() not in target.resolve().parents:
                    raise ValueError(f"{entry.uri}: key escapes the target folder")
                self.download_file(entry.uri, target)

            self._map(get, entries)
            _swap_in(tmp, local_dir)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return local_dir


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
    bucket, key = parse_s3(uri)
    return cache_dir / bucket / key if key else cache_dir / bucket


def localize(uri_or_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
             store: S3Store | None = None) -> Path:
    """A local path for `uri_or_path`: a local path is returned as is (it must exist); an `s3://` object or
    complete folder is downloaded once into `cache_dir` (default $TRM_HOME/cache/s3/<bucket>/<key>) and
    re-downloaded only when its `_COMPLETE` marker (or ETag, for a file) changed."""
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


def _localize_locked(store: S3Store, text: str, target: Path) -> Path:
    local_marker = target / COMPLETE
    for _ in range(3):
        if not store.is_complete(text):
            break
        remote = store.read_bytes(join(text, COMPLETE))
        if target.is_dir() and local_marker.is_file() and local_marker.read_bytes() == remote:
            return target
        store.download_dir(text, target)
        if local_marker.is_file() and local_marker.read_bytes() == remote:
            return target
        # the folder was re-uploaded while we copied it: copy again
    else:
        raise RuntimeError(f"{text} keeps changing while it is downloaded; try again later")
    try:
        info = store.stat(text)
    except FileNotFoundError:
        if store.entries(text):
            raise FileNotFoundError(f"{text} is incomplete (no {COMPLETE} marker)") from None
        raise FileNotFoundError(f"{text}: no such object or folder on {store.endpoint}") from None
    tag = target.with_name(f".{target.name}.etag")
    if target.is_file() and tag.is_file() and tag.read_text() == str(info.etag):
        return target
    store.download_file(text, target)
    tag.write_text(str(info.etag))
    return target


def process_alive(pid: int) -> bool:
    """True while process `pid` exists (a temporary folder named after a dead writer may be removed)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def publish(local_dir: str | os.PathLike, dest: str | os.PathLike, store: S3Store | None = None) -> str:
    """Put the finished folder `local_dir` at `dest`, never leaving a half-written folder there.

    dest `s3://...`: upload_dir (every file, then `_COMPLETE`). dest local: copy beside dest, then rename into
    place (an existing dest is replaced only after the copy is whole). Returns dest as a string.
    """
    local_dir = Path(local_dir)
    if not local_dir.is_dir():
        raise FileNotFoundError(f"publish: no such folder {local_dir}")
    text = os.fspath(dest)
    if is_s3(text):
        return (store or open_store()).upload_dir(local_dir, text)
    dest_path = Path(text).expanduser()
    if dest_path.resolve() == local_dir.resolve():
        return text
    dest_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest_path.with_name(f".{dest_path.name}.part-{uuid.uuid4().hex[:8]}")
    try:
        shutil.copytree(local_dir, tmp, symlinks=False, copy_function=shutil.copy2)
        _swap_in(tmp, dest_path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return text
