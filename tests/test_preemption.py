"""SIGTERM (preemption, eviction, KFP cancel): every rank stops at the next step boundary, writes the checkpoint of
that step, exits with EXIT_PREEMPTED (143), and the same command continues exactly where it stopped.

    .venv/bin/python -m pytest -q tests/test_preemption.py

One process, and 2 gloo ranks started the way torchrun starts them (RANK / WORLD_SIZE / MASTER_* in the
environment) so that each rank's own exit code is seen; only rank 1 gets the signal, so rank 0 stops because the
ranks agree, not because it was signalled too. A last test (slow) sends SIGTERM to torchrun itself (what
Kubernetes does to the container's first process), which forwards it to its workers.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trm.train import EXIT_PREEMPTED

ROOT = Path(__file__).resolve().parents[1]
STEPS = 10
ARGS = ["preset=cpu-tiny", "global_batch_size=4", "micro_batch_size=null", "num_threads=1", "progress=False",
        "wandb=off", "epochs=1000", "eval_interval=1000", f"max_steps={STEPS}", "checkpoint_every_n_steps=4",
        "arch.halt_max_steps=3", "ema=True", "keep_last=2", "run_name=sigterm"]


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), WANDB_MODE="disabled", **extra)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args: list[str], world: int, logs: Path) -> list[subprocess.Popen]:
    """`python -m trm.train args` as `world` ranks (one process when world == 1)."""
    port = _free_port()
    procs = []
    for rank in range(world):
        extra = {} if world == 1 else dict(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                                           LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                                           MASTER_PORT=str(port))
        err = open(logs / f"rank{rank}-{time.monotonic_ns()}.log", "w")
        procs.append(subprocess.Popen([sys.executable, "-m", "trm.train", *args], cwd=ROOT, env=_env(**extra),
                                      stdout=subprocess.DEVNULL, stderr=err))
        err.close()
    return procs


def _finish(procs: list[subprocess.Popen], timeout: float = 240) -> list[int]:
    deadline = time.time() + timeout
    codes = []
    for proc in procs:
        try:
            codes.append(proc.wait(max(1.0, deadline - time.time())))
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
    return codes


def _lines(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # a line being written
    return out


def _by_step(run_dir: Path) -> dict[int, dict]:
    out: dict[int, dict] = {}
    for record in _lines(run_dir):
        record = {k: v for k, v in record.items() if k != "time"}
        out.setdefault(record["step"], {}).update(record)
    return out


def _checkpoint_steps(run_dir: Path) -> list[int]:
    folder = run_dir / "checkpoints"
    return sorted(int(p.name[5:]) for p in folder.glob("step-*") if (p / "meta.json").is_file())


@pytest.mark.parametrize("world", [1, 2], ids=["one-process", "two-gloo-ranks"])
def test_sigterm_checkpoints_the_step_and_resume_continues_exactly(tiny, tmp_path, world):
    args = [*ARGS, f"data_paths=[{tiny}]"]
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    assert _finish(_start([*args, f"run_dir={whole}"], world, tmp_path)) == [0] * world
    reference = _by_step(whole)
    assert sorted(reference) == list(range(1, STEPS + 1))

    procs = _start([*args, f"run_dir={broken}"], world, tmp_path)
    deadline = time.time() + 180
    while time.time() < deadline and all(p.poll() is None for p in procs):
        if any(r["step"] >= 5 for r in _lines(broken)):  # past the checkpoint of step 4, before that of step 8
            break
        time.sleep(0.01)
    procs[-1].send_signal(signal.SIGTERM)  # one rank is told; the others learn it from the agreement
    codes = _finish(procs)
    assert codes == [EXIT_PREEMPTED] * world, codes
    stopped = max(_by_step(broken))
    assert 5 <= stopped < STEPS, f"stopped at step {stopped}"
    saved = _checkpoint_steps(broken)
    assert saved[-1] == stopped, f"no checkpoint of the step it stopped at ({stopped}): {saved}"
    meta = json.loads((broken / "checkpoints" / f"step-{stopped}" / "meta.json").read_text())
    assert meta["step"] == stopped and meta["world_size"] == world

    assert _finish(_start([*args, f"run_dir={broken}"], world, tmp_path)) == [0] * world
    resumed = _by_step(broken)
    assert sorted(resumed) == sorted(reference)
    for step, record in reference.items():
        assert set(resumed[step]) == set(record), step
        for key, value in record.items():  # every logged key, exactly (same code path, same process count)
            assert resumed[step][key] == value, (step, key, resumed[step][key], value)
    assert _checkpoint_steps(broken)[-1] == STEPS


@pytest.mark.slow
def test_sigterm_to_torchrun_reaches_the_workers(tiny, tmp_path):
    """Kubernetes signals the container's first process: torchrun forwards SIGTERM to its workers, which write
    the checkpoint of the step they stop at (torchrun itself then exits non-zero: see docs/training.md)."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
           str(_free_port()), "-m", "trm.train", *ARGS, "max_steps=400", f"data_paths=[{tiny}]", f"run_dir={run}"]
    with open(tmp_path / "torchrun.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 180
        while time.time() < deadline and proc.poll() is None:
            if any(r["step"] >= 5 for r in _lines(run)):
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(120)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = (tmp_path / "torchrun.log").read_text()
    assert code != 0
    stopped = max(_by_step(run))
    assert _checkpoint_steps(run)[-1] == stopped < 400, text[-2000:]
    assert f"exit code {EXIT_PREEMPTED}" in text


def test_sigterm_during_an_evaluation_stops_it_and_the_resumed_run_evaluates_that_step(tiny, tmp_path):
    """A seed evaluation outlasts the pod's grace period: SIGTERM inside it stops it at the next batch, the step is
    checkpointed (not marked evaluated), and the resumed run evaluates that step first, so its metrics.jsonl and
    eval/step-N/ files equal an uninterrupted run's."""
    from trm.config import load_config
    from trm.train import Dist, Trainer

    args = ["preset=cpu-tiny", "global_batch_size=4", "micro_batch_size=null", "progress=False", "wandb=off",
            "epochs=4", "eval_interval=2", "evaluators=[arc]", "ema=True", f"data_paths=[{tiny}]"]
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    Trainer(load_config([*args, f"run_dir={whole}"]), Dist()).fit()
    reference = _by_step(whole)
    evaluated = sorted(s for s, r in reference.items() if any(k.startswith("ARC/") for k in r))
    assert len(evaluated) == 2, evaluated  # at epochs 2 and 4

    trainer = Trainer(load_config([*args, f"run_dir={broken}"]), Dist())
    calls = []
    original = trainer.evaluate

    def evaluate_then_get_signalled():
        calls.append(trainer.step)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives before the evaluation's first batch
        return original()

    trainer.evaluate = evaluate_then_get_signalled
    trainer.fit()
    assert trainer.preempted and calls == [evaluated[0]]
    assert _checkpoint_steps(broken)[-1] == evaluated[0]
    assert not any(k.startswith("ARC/") for k in _by_step(broken)[evaluated[0]])  # the cut evaluation left nothing
    assert not (broken / "eval" / f"step-{evaluated[0]}").exists()

    Trainer(load_config([*args, f"run_dir={broken}"]), Dist()).fit()
    assert _by_step(broken) == reference  # every key of every step, exactly
    for step in evaluated:
        for name in ("submission.json", "metrics.json"):
            assert (broken / "eval" / f"step-{step}" / name).read_bytes() == \
                (whole / "eval" / f"step-{step}" / name).read_bytes(), (step, name)
