"""Seeded SIGKILL trials: `trm train` with its run folder and checkpoints on S3, and `trm artifacts cp` of a dataset
folder, killed at random moments and at the worst ones, then run again with the same command.

    .venv/bin/python -m pytest -q tests/test_kill_trials.py               # the short version (default suite)
    .venv/bin/python -m pytest -q -m slow tests/test_kill_trials.py       # >= 10 seeded trials of each

A trial draws (from its seed) where the process dies: after a random delay from outside, or from inside at the
n-th call of a chosen step: the upload of a checkpoint file, just before a checkpoint's `_COMPLETE`, between the
local staging of a checkpoint and its upload, the upload of metrics.jsonl, or in the middle of pruning (its
`_COMPLETE` deleted, its files not yet). After one or two kills the same command runs to the end. Every trial must
end with metrics (every logged key, every step) equal to an uninterrupted run's, and `latest` at its last step.
The `trm artifacts cp` trials replace an older version of the folder, are killed during the upload, and must end
with exactly the new files (no stale key, no marker before the end; a reader in between is refused).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from trm.checkpoint import Checkpoints
from trm.storage import COMPLETE, S3Store

pytestmark = pytest.mark.s3
ROOT = Path(__file__).resolve().parents[1]
STEPS = 10
TRAIN = ["preset=cpu-tiny", "global_batch_size=4", "micro_batch_size=null", "num_threads=1", "progress=False",
         "wandb=off", "epochs=1000", "eval_interval=1000", f"max_steps={STEPS}", "checkpoint_every_n_steps=2",
         "keep_last=2", "arch.halt_max_steps=3", "ema=True", "run_name=kill"]
KINDS = ("time", "upload", "marker", "staged", "metrics", "prune")

# Runs a trm command in a process that SIGKILLs itself at the n-th call of one step (TRM_TEST_KILL="kind:n").
DRIVER = textwrap.dedent('''
    import os, signal, sys
    kind, n = os.environ["TRM_TEST_KILL"].split(":")
    n = int(n)
    calls = {"n": 0}

    def hit():
        calls["n"] += 1
        return calls["n"] == n

    def die():
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    import trm.checkpoint as ckpt
    from trm.storage import S3Store

    if kind == "upload":  # a checkpoint (or dataset) file is being uploaded
        real_put = S3Store.put_file
        def put_file(self, path, uri):
            if "/metrics.jsonl" not in uri and hit():
                die()
            return real_put(self, path, uri)
        S3Store.put_file = put_file
    elif kind == "marker":  # every file is up, the _COMPLETE marker is not
        real_write = S3Store.write_bytes
        def write_bytes(self, uri, data):
            if uri.endswith("/_COMPLETE") and hit():
                die()
            return real_write(self, uri, data)
        S3Store.write_bytes = write_bytes
    elif kind == "staged":  # the checkpoint is whole in local staging, its upload has not started
        real_publish = ckpt.publish
        def publish(*args, **kwargs):
            if hit():
                die()
            return real_publish(*args, **kwargs)
        ckpt.publish = publish
    elif kind == "metrics":  # metrics.jsonl is being uploaded
        real_upload = S3Store.upload_file
        def upload_file(self, path, uri):
            if uri.endswith("/metrics.jsonl") and hit():
                die()
            return real_upload(self, path, uri)
        S3Store.upload_file = upload_file
    elif kind == "prune":  # pruning an old checkpoint: its _COMPLETE is gone, its files are not
        real_remove = ckpt.Checkpoints._remove
        def _remove(self, step):
            if hit():
                self._store().delete(f"{self.where(step)}/_COMPLETE")
                die()
            return real_remove(self, step)
        ckpt.Checkpoints._remove = _remove
    from trm.cli import main
    sys.exit(main(sys.argv[1:]))
''')


def _env(s3_env: dict, home: Path, kill: str | None = None) -> dict[str, str]:
    env = dict(os.environ, **s3_env)
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), WANDB_MODE="disabled", TRM_HOME=str(home))
    env.pop("TRM_TEST_KILL", None)
    if kill:
        env["TRM_TEST_KILL"] = kill
    return env


def _run(args: list[str], env: dict, driver: Path, delay: float | None = None, timeout: float = 300) -> int:
    """Run `trm args` (through the fault driver when env has TRM_TEST_KILL); SIGKILL after `delay` seconds."""
    cmd = [sys.executable, str(driver), *args] if "TRM_TEST_KILL" in env else \
        [sys.executable, "-m", "trm.cli", *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        if delay is not None:
            try:
                proc.wait(delay)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    if proc.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(f"{' '.join(args[:3])} ... exited {proc.returncode}:\n{err[-3000:]}")
    return proc.returncode


def _metrics(store: S3Store, run: str) -> dict[int, dict]:
    out: dict[int, dict] = {}
    for line in store.read_bytes(f"{run}/metrics.jsonl").decode().splitlines():
        record = {k: v for k, v in json.loads(line).items() if k != "time"}
        out.setdefault(record["step"], {}).update(record)
    return out


@pytest.fixture(scope="module")
def driver(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("driver") / "kill_driver.py"
    path.write_text(DRIVER)
    return path


@pytest.fixture(scope="module")
def reference(s3_server, tiny, driver, tmp_path_factory):
    """An uninterrupted run: (its S3 run folder, its metrics by step)."""
    home = tmp_path_factory.mktemp("ref-home")
    run = f"s3://trm/kill-trials/ref-{os.urandom(3).hex()}"
    env = _env(s3_server.env(), home)
    start = time.monotonic()
    assert _run(["train", *TRAIN, f"data_paths=[{tiny}]", f"run_dir={run}"], env, driver) == 0
    duration = time.monotonic() - start
    metrics = _metrics(S3Store(s3_server.config()), run)
    assert sorted(metrics) == list(range(1, STEPS + 1))
    return run, metrics, duration


def _plan(seed: int, duration: float) -> list[tuple[str, str | None, float | None]]:
    """The kills of one trial: (kind, TRM_TEST_KILL value or None, external delay or None). `duration`: how long
    an uninterrupted run took here, so that a kill from outside lands inside the run (20-80% of it)."""
    rng = random.Random(seed)
    kills = []
    for _ in range(rng.choice((1, 1, 2))):
        kind = KINDS[seed % len(KINDS)] if not kills else rng.choice(KINDS)
        if kind == "time":
            kills.append((kind, None, rng.uniform(0.2, 0.8) * duration))
        else:
            # checkpoints come every 2 steps (8 files each); prunes start at the third save
            n = {"upload": rng.randint(1, 40), "marker": rng.randint(1, 4), "staged": rng.randint(1, 4),
                 "metrics": rng.randint(1, 4), "prune": rng.randint(1, 2)}[kind]
            kills.append((kind, f"{kind}:{n}", None))
    return kills


def _trial(seed: int, s3_server, tiny: str, driver: Path, reference, tmp_path: Path) -> list[str]:
    _, ref_metrics, duration = reference
    store = S3Store(s3_server.config())
    run = f"s3://trm/kill-trials/t{seed}-{os.urandom(3).hex()}"
    home = tmp_path / f"home-{seed}"
    args = ["train", *TRAIN, f"data_paths=[{tiny}]", f"run_dir={run}"]
    happened = []
    for kind, kill, delay in _plan(seed, duration):
        code = _run(args, _env(s3_server.env(), home, kill), driver, delay=delay)
        happened.append(f"{kill or f'time:{delay:.1f}s'}->{'killed' if code else 'finished'}")
    assert _run(args, _env(s3_server.env(), home), driver) == 0
    got = _metrics(store, run)
    assert sorted(got) == sorted(ref_metrics), (seed, happened, sorted(got))
    for step, record in ref_metrics.items():
        assert got[step] == record, (seed, happened, step)
    with pytest.MonkeyPatch.context() as mp:
        for key, value in s3_server.env().items():
            mp.setenv(key, value)
        assert Checkpoints(f"{run}/checkpoints").latest() == f"{run}/checkpoints/step-{STEPS}", (seed, happened)
    return happened


def _cp_trial(seed: int, s3_server, tiny: str, driver: Path, tmp_path: Path) -> str:
    """Upload an older version of a dataset folder, then the real one killed during its upload, then again."""
    rng = random.Random(1000 + seed)
    store = S3Store(s3_server.config())
    home = tmp_path / f"cp-home-{seed}"
    old = tmp_path / f"old-{seed}"
    (old / "train").mkdir(parents=True)
    (old / "train" / "stale.npy").write_bytes(b"stale" * 100)
    (old / "identifiers.json").write_text('["old"]')
    new = tmp_path / f"new-{seed}"
    shutil.copytree(tiny, new)
    files = sorted(p.relative_to(new).as_posix() for p in new.rglob("*") if p.is_file())
    dst = f"s3://trm/kill-trials/cp-{seed}-{os.urandom(3).hex()}/dataset"
    env = _env(s3_server.env(), home)
    assert _run(["artifacts", "cp", str(old), dst], env, driver) == 0
    kill = f"upload:{rng.randint(1, len(files))}"
    assert _run(["artifacts", "cp", str(new), dst], _env(s3_server.env(), home, kill), driver) == -signal.SIGKILL
    assert not store.is_complete(dst), "a folder killed mid-upload must not look complete"
    reader = subprocess.run([sys.executable, "-m", "trm.cli", "artifacts", "cp", dst, str(tmp_path / f"r{seed}")],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert reader.returncode == 1 and "incomplete" in reader.stderr, reader.stderr
    assert _run(["artifacts", "cp", str(new), dst], env, driver) == 0
    keys = sorted(u[len(dst) + 1:] for u in store.list(dst))
    assert keys == sorted([*files, COMPLETE]), (seed, kill, keys)
    out = tmp_path / f"out-{seed}"
    assert _run(["artifacts", "cp", dst, str(out)], env, driver) == 0
    for rel in files:
        assert (out / rel).read_bytes() == (new / rel).read_bytes(), (seed, rel)
    return kill


def test_train_killed_in_upload_and_in_prune_resumes_exactly(s3_server, tiny, driver, reference, tmp_path):
    """The short version for every run of the suite: one kill inside a checkpoint upload, one inside pruning."""
    store = S3Store(s3_server.config())
    run = f"s3://trm/kill-trials/short-{os.urandom(3).hex()}"
    home = tmp_path / "home"
    args = ["train", *TRAIN, f"data_paths=[{tiny}]", f"run_dir={run}"]
    # 8 files per checkpoint: the 11th upload is the third file of step-4
    assert _run(args, _env(s3_server.env(), home, "upload:11"), driver) == -signal.SIGKILL
    assert _run(args, _env(s3_server.env(), home, "prune:1"), driver) == -signal.SIGKILL
    assert _run(args, _env(s3_server.env(), home), driver) == 0
    got, want = _metrics(store, run), reference[1]
    assert sorted(got) == sorted(want)
    for step in want:
        assert got[step] == want[step], step
    with pytest.MonkeyPatch.context() as mp:
        for key, value in s3_server.env().items():
            mp.setenv(key, value)
        ck = Checkpoints(f"{run}/checkpoints")
        assert ck.latest() == f"{run}/checkpoints/step-{STEPS}"
    leftovers = [u for u in store.list(f"{run}/checkpoints") if "/step-" in u and "/aside/" not in u]
    complete = {u.rsplit("/", 2)[-2] for u in leftovers if u.endswith(COMPLETE)}
    assert {u.rsplit("/", 2)[-2] for u in leftovers} == complete, "a cut-short prune left files behind"


def test_artifacts_cp_killed_mid_upload_then_rerun(s3_server, tiny, driver, tmp_path):
    _cp_trial(0, s3_server, tiny, driver, tmp_path)


@pytest.mark.slow
def test_seeded_kill_trials(s3_server, tiny, driver, reference, tmp_path):
    """12 seeded trials (every kind at least twice), then 10 of `trm artifacts cp`; prints what happened."""
    start = time.monotonic()
    report = []
    kills = 0
    for seed in range(12):
        happened = _trial(seed, s3_server, tiny, driver, reference, tmp_path)
        kills += sum("killed" in h for h in happened)
        report.append(f"train seed {seed}: {', '.join(happened)}")
    for seed in range(10):
        report.append(f"cp seed {seed}: {_cp_trial(seed, s3_server, tiny, driver, tmp_path)}")
    print("\n".join(report) + f"\n{len(report)} trials, {kills} kills of trm train, in {time.monotonic() - start:.0f} s")
    assert kills >= 12, "too few trials killed the run: the kill moments no longer fall inside it"
