"""`s3://bucket/key` URIs and path joining that works the same for local paths and S3.

    from trm.storage.uri import is_s3, parse_s3, join
    is_s3("s3://trm/runs/a")            # True
    parse_s3("s3://trm/runs/a/")        # ("trm", "runs/a")
    join("s3://trm/runs", "a", "b.json")  # "s3://trm/runs/a/b.json"
    join("runs", "a")                   # "runs/a"
"""

from __future__ import annotations

import os
import re

SCHEME = "s3://"
# S3 bucket naming rules (lower case, digits, dots and hyphens, 3-63 characters).
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")


def is_s3(uri: object) -> bool:
    """True for a string starting with `s3://` (case-insensitive scheme)."""
    return isinstance(uri, str) and uri[:5].lower() == SCHEME


def parse_s3(uri: str) -> tuple[str, str]:
    """Split `s3://bucket/some/key` into `("bucket", "some/key")`.

    Slashes at either end of the key are dropped, so a "folder" and its prefix parse the same; the key is ""
    for the bucket itself. Raises ValueError naming the URI when it is not a valid `s3://` URI.
    """
    if not is_s3(uri):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    rest = uri[len(SCHEME):]
    bucket, _, key = rest.partition("/")
    if not _BUCKET.match(bucket):
        raise ValueError(
            f"bad bucket name {bucket!r} in {uri!r}: 3-63 characters of lower-case letters, digits, '.' and '-'"
        )
    key = key.strip("/")
    if "//" in key:
        raise ValueError(f"empty path segment in {uri!r}")
    if any(part in (".", "..") for part in key.split("/")):
        raise ValueError(f"'.' or '..' path segment in {uri!r}")
    return bucket, key


def s3_uri(bucket: str, key: str = "") -> str:
    """The URI of `key` in `bucket` (no trailing slash; just the bucket when key is empty)."""
    key = key.strip("/")
    return f"{SCHEME}{bucket}/{key}" if key else f"{SCHEME}{bucket}"


def join(base: str | os.PathLike, *parts: str | os.PathLike) -> str:
    """Join path parts onto a local path or an `s3://` URI; S3 always uses '/' and never doubles it."""
    if is_s3(str(base)):
        out = str(base).rstrip("/")
        for part in parts:
            text = str(part).strip("/")
            if text:
                out = f"{out}/{text}"
        return out
    return os.path.join(os.fspath(base), *(os.fspath(p) for p in parts))


def basename(uri: str) -> str:
    """Last segment of a local path or an `s3://` URI (a trailing slash is ignored)."""
    if is_s3(uri):
        return uri.rstrip("/").rsplit("/", 1)[-1]
    return os.path.basename(os.fspath(uri).rstrip(os.sep))
