"""`trm artifacts`: browse and copy run artifacts in the S3 store.

    trm artifacts ls                                   # top of s3://$TRM_S3_BUCKET/
    trm artifacts ls s3://trm/runs/r1/ -r              # every object under a prefix, with sizes
    trm artifacts cp s3://trm/runs/r1/eval/step-100/submission.json .
    trm artifacts cp s3://trm/runs/r1/dataset data/arc2          # a folder (must have _COMPLETE)
    trm artifacts cp data/arc2 s3://trm/datasets/arc2            # upload a folder (then _COMPLETE)

The store is the one configured by TRM_S3_ENDPOINT / AWS_* (see docs/storage.md); when no endpoint is set, the
embedded server under $TRM_HOME/s3 is reused, or started in the background (`trm s3 stop` stops it).

Copy rules: a file copied onto an existing folder (or a DST ending in '/') lands inside it under its own name.
A folder copied to a local DST that is an existing folder lands inside it as DST/<name> (like `cp -r`);
otherwise, and always for an s3:// DST, its contents go to exactly DST. Local targets appear atomically.
A folder downloaded from S3 is exactly the list in its `_COMPLETE` manifest, every size and ETag checked. A
folder uploaded to S3 replaces what a previous upload left there (keys not in the new list are removed); an
s3:// DST that holds objects of something else (no `_COMPLETE` / `_UPLOADING` marker) is refused. A copy
killed half-way is finished by running the same command again.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

from trm.storage.config import S3Config, trm_home
from trm.storage.store import COMPLETE, S3Store, StoreError, publish
from trm.storage.uri import basename, is_s3, join, parse_s3

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def human_size(n: int) -> str:
    """1536 -> '1.5 KiB'."""
    size = float(n)
    for unit in _UNITS:
        if size < 1024 or unit == _UNITS[-1]:
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def resolve_store(env=None, quiet: bool = False) -> S3Store:
    """The configured store, or the embedded server under TRM_HOME (started when needed)."""
    config = S3Config.from_env(env)
    if config.endpoint:
        return S3Store(config)
    from trm.storage.embedded import ensure_running

    server = ensure_running(trm_home(env))
    if not quiet:
        print(f"(no TRM_S3_ENDPOINT set: using the embedded S3 server {server.endpoint}; `trm s3 stop` stops it)",
              file=sys.stderr)
    return S3Store(server.config())


def cmd_ls(store: S3Store, uri: str, recursive: bool) -> int:
    bucket, key = parse_s3(uri)
    entries = store.entries(uri, recursive=recursive)
    if not entries and not store.exists(f"s3://{bucket}"):
        raise FileNotFoundError(f"bucket {bucket!r} does not exist on {store.endpoint}")
    if not entries and key:
        try:
            info = store.stat(uri)
        except FileNotFoundError:
            print(f"trm artifacts ls: nothing at {uri}", file=sys.stderr)
            return 1
        when = info.last_modified.strftime("%Y-%m-%d %H:%M:%S") if info.last_modified else ""
        print(f"{when:19}  {human_size(info.size):>10}  {uri}")
        return 0
    total = count = folders = 0
    for e in entries:
        if e.is_dir:
            print(f"{'':19}  {'DIR':>10}  {e.uri}")
            folders += 1
            continue
        when = e.modified.strftime("%Y-%m-%d %H:%M:%S") if e.modified else ""
        print(f"{when:19}  {human_size(e.size):>10}  {e.uri}")
        total += e.size
        count += 1
    summary = f"{count} object(s), {human_size(total)}"
    if folders:
        summary += f"; {folders} folder(s) not expanded (-r lists everything)"
    print(summary)
    return 0


def _copy_local_file(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.part-{uuid.uuid4().hex[:8]}")
    try:
        shutil.copy2(src, tmp)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def _local_target(src_name: str, dst: str) -> Path:
    path = Path(dst).expanduser()
    if path.is_dir() or dst.endswith(("/", os.sep)):
        return path / src_name
    return path


def cmd_cp(src: str, dst: str, allow_incomplete: bool = False, env=None) -> str:
    """Copy SRC to DST (either may be s3://); returns the final destination."""
    name = basename(src)
    if not is_s3(src) and not is_s3(dst):
        source = Path(src).expanduser()
        if source.is_dir():
            target = _local_target(name, dst) if Path(dst).expanduser().is_dir() else Path(dst).expanduser()
            return publish(source, target)
        if not source.is_file():
            raise FileNotFoundError(f"no such file or folder: {source}")
        target = _local_target(name, dst)
        _copy_local_file(source, target)
        return str(target)

    store = resolve_store(env)
    if not is_s3(src):
        source = Path(src).expanduser()
        if source.is_dir():
            _refuse_foreign(store, dst)
            return store.upload_dir(source, dst)
        if not source.is_file():
            raise FileNotFoundError(f"no such file or folder: {source}")
        bucket, key = parse_s3(dst)
        if dst.endswith("/") or not key or (store.exists(dst) and not _is_object(store, dst)):
            dst = join(dst, source.name)
        return store.upload_file(source, dst)

    is_file = _is_object(store, src)
    if not is_file and not store.entries(src):
        bucket = parse_s3(src)[0]
        if not store.exists(f"s3://{bucket}"):
            raise FileNotFoundError(f"{src}: bucket {bucket!r} does not exist on {store.endpoint}")
        raise FileNotFoundError(f"{src}: no such object or folder on {store.endpoint}")
    if not is_s3(dst):
        if is_file:
            return str(store.download_file(src, _local_target(name, dst)))
        dest = Path(dst).expanduser()
        target = dest / name if dest.is_dir() else dest
        return str(store.download_dir(src, target, allow_incomplete=allow_incomplete))

    # s3 -> s3: through a local temporary copy (works across buckets and endpoints alike)
    with tempfile.TemporaryDirectory(prefix="trm-cp-") as tmp:
        if is_file:
            bucket, key = parse_s3(dst)
            if dst.endswith("/") or not key or (store.exists(dst) and not _is_object(store, dst)):
                dst = join(dst, name)
            local = store.download_file(src, Path(tmp) / name)
            return store.upload_file(local, dst)
        local = store.download_dir(src, Path(tmp) / "copy", allow_incomplete=allow_incomplete)
        (local / COMPLETE).unlink(missing_ok=True)  # the copy gets a manifest of its own
        _refuse_foreign(store, dst)
        return store.upload_dir(local, dst)


def _refuse_foreign(store: S3Store, dst: str) -> None:
    """A folder upload replaces DST whole: refuse when DST holds objects that no folder upload put there."""
    count = store.foreign_objects(dst)
    if count:
        raise FileExistsError(f"{dst} already holds {count} object(s) that are not a folder written by trm "
                              f"(no {COMPLETE} marker); copy to an empty prefix or remove them first")


def _is_object(store: S3Store, uri: str) -> bool:
    if not parse_s3(uri)[1]:
        return False
    try:
        store.stat(uri)
        return True
    except FileNotFoundError:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trm artifacts", description="List and copy run artifacts in the S3 "
                                     "store (TRM_S3_ENDPOINT, else the embedded server under $TRM_HOME).")
    sub = parser.add_subparsers(dest="action", required=True)
    ls = sub.add_parser("ls", help="list objects with sizes")
    ls.add_argument("uri", nargs="?", default=None, help="s3://bucket/prefix (default s3://$TRM_S3_BUCKET/)")
    ls.add_argument("-r", "--recursive", action="store_true", help="every object under the prefix")
    cp = sub.add_parser("cp", help="copy a file or folder; either side may be s3://")
    cp.add_argument("src")
    cp.add_argument("dst")
    cp.add_argument("--allow-incomplete", action="store_true",
                    help="download a folder even without its _COMPLETE marker")
    args = parser.parse_args(argv)
    try:
        if args.action == "ls":
            uri = args.uri or f"s3://{S3Config.from_env().bucket}/"
            if not is_s3(uri):
                parser.error(f"ls takes an s3:// URI, got {uri!r}")
            return cmd_ls(resolve_store(), uri, args.recursive)
        final = cmd_cp(args.src, args.dst, allow_incomplete=args.allow_incomplete)
        print(f"copied {args.src} -> {final}")
        return 0
    except (OSError, ValueError, StoreError) as exc:
        from trm.storage.config import env_secrets, redact

        print(f"trm artifacts {args.action}: error: {redact(exc, env_secrets())}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    from trm.cli import guarded

    sys.exit(guarded("artifacts", main))
