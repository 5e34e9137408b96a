"""Files the voter reads and writes: a dataset's test puzzles and identifiers, and outputs.npz.

    test_puzzles, identifiers = load_dataset_files("data/arc2")       # test_puzzles.json, identifiers.json
    save_outputs("out/outputs.npz", puzzle_identifiers, inputs, preds, q_halt_logits)
    arrays = load_outputs("out/outputs.npz")                         # the same four arrays, checked
    folder = localize_path("s3://trm/runs/r1/dataset")               # a local copy of an s3:// folder
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from trm.evaluation.kernels import SEQ_LEN
from trm.storage.local import atomic_write

OUTPUT_KEYS = ("puzzle_identifiers", "inputs", "preds", "q_halt_logits")


def load_dataset_files(path) -> tuple[dict, list[str]]:
    """test_puzzles.json and identifiers.json of a dataset folder (local; localize s3:// first)."""
    root = Path(path)
    files = {}
    for name in ("test_puzzles.json", "identifiers.json"):
        f = root / name
        if not f.is_file():
            raise FileNotFoundError(f"dataset {root}: {name} not found")
        with open(f) as fh:
            try:
                files[name] = json.load(fh)
            except json.JSONDecodeError as e:
                raise ValueError(f"{f}: not valid JSON ({e})") from None
    if not isinstance(files["test_puzzles.json"], dict):
        raise ValueError(f"{root / 'test_puzzles.json'}: expected an object task -> puzzle")
    if not isinstance(files["identifiers.json"], list):
        raise ValueError(f"{root / 'identifiers.json'}: expected a list of names")
    return files["test_puzzles.json"], files["identifiers.json"]


def load_outputs(path) -> dict[str, np.ndarray]:
    """An outputs.npz written by `trm evaluate --save-outputs`, checked."""
    with np.load(path) as data:
        missing = [k for k in OUTPUT_KEYS if k not in data]
        if missing:
            raise ValueError(f"{path}: missing arrays {missing} (expected {list(OUTPUT_KEYS)})")
        out = {k: data[k] for k in OUTPUT_KEYS}
    n = out["puzzle_identifiers"].shape[0]
    if out["inputs"].shape != (n, SEQ_LEN) or out["preds"].shape != (n, SEQ_LEN) or out["q_halt_logits"].shape != (n,):
        raise ValueError(f"{path}: expected puzzle_identifiers [N], inputs/preds [N, {SEQ_LEN}], q_halt_logits [N]")
    return out


def save_outputs(path, puzzle_identifiers, inputs, preds, q_halt_logits) -> None:
    """Write outputs.npz (atomic: temp name, then rename)."""
    buffer = io.BytesIO()
    np.savez(buffer, puzzle_identifiers=np.asarray(puzzle_identifiers, dtype=np.int32),
             inputs=np.asarray(inputs, dtype=np.uint8), preds=np.asarray(preds, dtype=np.uint8),
             q_halt_logits=np.asarray(q_halt_logits, dtype=np.float32))
    atomic_write(path, buffer.getvalue())


def write_text(path: Path, text: str) -> None:
    """Write a text file atomically (temp name, then rename)."""
    atomic_write(path, text)


def is_remote(uri) -> bool:
    return str(uri).startswith("s3://")


def localize_path(uri) -> Path:
    """A local path for a folder given locally or as s3:// (downloaded through trm.storage)."""
    if is_remote(uri):
        from trm.storage import localize

        return Path(localize(str(uri)))
    return Path(uri)
