"""Local files that are never seen half-written: atomic writes, temporary names, and safe clean-up of temporaries.

    from trm.storage.local import atomic_write, temp_name, reap_temporaries
    atomic_write("out/metrics.json", b"{}")        # unique temp name beside it, fsync, rename, fsync the folder
    tmp = parent / temp_name("step-100")          # ".step-100.tmp-<host>-<pid>-<random>"
    reap_temporaries(parent, "step-100")          # remove temporaries of dead writers (see below)

A temporary name carries the writer's host name and process id. Several pods may share one volume, and a
process id means nothing on another host, so clean-up removes a temporary of THIS host when its process is
gone, and a temporary of another host only when it has not been touched for `max_age` seconds (default 24 h).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import time
import uuid
from pathlib import Path

DEFAULT_MAX_AGE = 24 * 3600.0
_TAG = re.compile(r"\.[a-z]+-(?P<host>[A-Za-z0-9_.-]+?)-(?P<pid>\d+)-[0-9a-f]{8}$")


def host() -> str:
    """This machine's (pod's) name, made safe for file names."""
    name = socket.gethostname() or "host"
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:64]


def temp_name(name: str, kind: str = "tmp") -> str:
    """A hidden temporary name for `name`, unique across hosts, processes and threads:
    `.<name>.<kind>-<host>-<pid>-<random>` (kind: lower-case letters, e.g. "tmp", "building", "old")."""
    if not re.fullmatch(r"[a-z]+", kind):
        raise ValueError(f"temp_name: kind must be lower-case letters, got {kind!r}")
    return f".{name}.{kind}-{host()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def is_temp_name(name: str) -> bool:
    """Whether `name` was made by temp_name."""
    return _TAG.search(name) is not None


def process_alive(pid: int) -> bool:
    """True while process `pid` exists on this host."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def writer_gone(path: Path, max_age: float = DEFAULT_MAX_AGE) -> bool:
    """Whether the temporary `path` (named by temp_name) belongs to a writer that is certainly gone.

    This host: its process no longer exists. Another host: untouched for max_age seconds (a PID there says
    nothing here). Names not made by temp_name: never."""
    match = _TAG.search(path.name)
    if not match:
        return False
    if match.group("host") == host():
        return not process_alive(int(match.group("pid")))
    try:
        age = time.time() - path.lstat().st_mtime
    except OSError:
        return False
    return age > max_age


def reap_temporaries(parent: Path, name: str | None = None, max_age: float = DEFAULT_MAX_AGE) -> list[Path]:
    """Remove temporaries (of `name`, or of any name) in `parent` whose writer is gone; returns them."""
    removed = []
    try:
        children = list(Path(parent).iterdir())
    except OSError:
        return removed
    prefix = f".{name}." if name else "."
    for child in children:
        if child.name.startswith(prefix) and writer_gone(child, max_age):
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
            removed.append(child)
    return removed


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename inside `path` durable (best effort: not every file system allows it)."""
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


def atomic_write(path: str | os.PathLike, data: bytes | str, mode: int | None = None) -> Path:
    """Write `data` to `path` so that readers see the old file or the whole new one, even after a crash."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = data.encode() if isinstance(data, str) else bytes(data)
    tmp = path.with_name(temp_name(path.name))
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    fd = os.open(tmp, flags, 0o600 if mode is None else mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(blob)
            handle.flush()
            os.fsync(handle.fileno())
        if mode is None:  # ordinary permissions (umask), as a plain open() would give
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path
