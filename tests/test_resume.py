"""Exact resume: a training run killed with SIGKILL and started again logs exactly what an uninterrupted run logs,
and a checkpoint written by Trainer.save() restores the whole training state.

    .venv/bin/python -m pytest -q tests/test_resume.py

The runs use the reference tiny dataset with 2 rows per batch (5 batches per epoch), halting with exploration
(halt_max_steps 3, halt_exploration_prob 0.5, and a halting head whose Q-logit is mostly above 0, so that rows
would halt after one ACT step and the ACT generator's exploration draws keep some going for 2 or 3: rows halt at
different steps, decided by those draws), EMA on, and ARC evaluation after every epoch. The resume step R is read from the uninterrupted run's evaluation steps (the epoch
ends): the first odd step at least 2 batches into the second epoch and 3 before its end (7 with 5 batches per
epoch). The killed run checkpoints every R steps and gets SIGKILL once it has logged step R + 2 (also odd), so it
resumes from step R and redoes R + 1 and R + 2; the evaluations after the resume follow. Every line of
metrics.jsonl (train/*, the evaluation's loss metrics and ARC/* keys; only "time" left out), the evaluation files
written after the resume and the final weights (model and EMA) must be equal, bit for bit.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
ROUND_TRIP_STEP = 7  # the round-trip test saves after 7 steps: 2 batches into the second epoch


def _args(tiny: str, init: Path, **extra: str) -> list[str]:
    args = {
        "preset": "cpu-tiny", "data_paths": f"[{tiny}]", "global_batch_size": "2", "micro_batch_size": "null",
        "num_threads": "1", "progress": "False", "wandb": "off", "device": "cpu",
        "arch.halt_max_steps": "3", "arch.halt_exploration_prob": "0.5",
        "ema": "True", "ema_rate": "0.9", "evaluators": "[arc]", "epochs": "4", "eval_interval": "1",
        "keep_last": "10", "lr_warmup_steps": "2",
        # the reference's lr: the halting head keeps saying "halt" all run long (the preset's 3e-3 drives every
        # Q-logit below 0 within a few steps, after which the exploration draws no longer change anything)
        "lr": "1e-4",
        "load_checkpoint": str(init), "run_name": "resume",
    }
    args.update(extra)
    return [f"{k}={v}" for k, v in args.items()]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "WANDB_MODE": "disabled"}


def _train(args: list[str], timeout: float = 300) -> None:
    cmd = [sys.executable, "-m", "trm.train", *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)
    if proc.returncode:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")


def _lines(run: Path) -> list[dict]:
    """metrics.jsonl, line by line, without the wall-clock time."""
    out = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        record.pop("time")
        out.append(record)
    return out


def _complete_checkpoints(run: Path) -> list[int]:
    """Steps of the checkpoint folders in place (a folder is renamed into place once it is complete)."""
    root = run / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(int(p.name[5:]) for p in root.iterdir() if p.name.startswith("step-") and p.name[5:].isdigit())


def _logged_steps(run: Path) -> set[int]:
    path = run / "metrics.jsonl"
    steps = set()
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                steps.add(json.loads(line)["step"])
            except (json.JSONDecodeError, KeyError):
                continue  # a line being written
    return steps


@pytest.fixture(scope="module")
def init(tiny: str, tmp_path_factory) -> Path:
    """Starting weights (a reference-format state dict, given as load_checkpoint): the model's own init with a
    halting head of small random weights and bias 3 and random puzzle embeddings, so that the halting Q-logit is
    above 0 for most rows (the default init, bias -5, says "go on" everywhere until the last step, which makes
    every row halt together and leaves the exploration draws without effect)."""
    from trm.config import load_config
    from trm.train import Dist, Trainer

    folder = tmp_path_factory.mktemp("init")
    cfg = load_config([a for a in _args(tiny, folder / "none.pt") if not a.startswith("load_checkpoint=")]
                      + [f"run_dir={folder / 'run'}"])
    state = Trainer(cfg, Dist()).model.state_dict()
    g = torch.Generator().manual_seed(1)
    head, bias, table = "model.inner.q_head.weight", "model.inner.q_head.bias", "model.inner.puzzle_emb.weights"
    state[head] = torch.randn(state[head].shape, generator=g) * 0.1
    state[bias] = torch.tensor([3.0, 0.0])
    state[table] = torch.randn(state[table].shape, generator=g) * 0.1
    path = folder / "init.pt"
    torch.save(state, path)
    return path


def _resume_step(evals: list[int]) -> int:
    """The first odd step >= 2 batches into an epoch after the first one and <= 3 before that epoch's end."""
    for before, end in zip(evals, evals[1:]):
        for step in range(before + 2, end - 2):
            if step % 2:
                return step
    raise AssertionError(f"no epoch long enough for an odd resume step inside it (epoch ends at {evals})")


def test_sigkill_inside_an_epoch_and_resume_logs_exactly_the_same(tiny, init, tmp_path):
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    _train(_args(tiny, init, run_dir=str(whole)))
    a = _lines(whole)
    # what this test claims to cover, read from the uninterrupted run
    evals = [r["step"] for r in a if any(k.startswith("ARC/") for k in r)]
    assert len(evals) == 4 and min(np.diff([0] + evals)) >= 3, f"several batches per epoch: evaluations at {evals}"
    assert any(k.startswith("all/") for r in a for k in r), "the evaluation's loss metrics are logged"
    resume = _resume_step(evals)
    kill_after = resume + 2
    # rows halt before the last ACT step (Q says halt) after the resume, and at different ACT steps
    halts = [r["train/steps"] for r in a if r.get("train/count", 0) > 0 and r["step"] > resume]
    assert min(halts) < 3 and len(set(halts)) >= 3, f"mean ACT steps of the halted rows, per step: {halts}"
    after = [s for s in evals if s > resume]

    # the killed run: SIGKILL once step resume + 2 is logged (the newest checkpoint is then step `resume`)
    args = _args(tiny, init, run_dir=str(broken), checkpoint_every_n_steps=str(resume))
    proc = subprocess.Popen([sys.executable, "-m", "trm.train", *args], cwd=ROOT, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            if kill_after in _logged_steps(broken):
                break
            time.sleep(0.002)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, f"the run ended before it was killed:\n{err[-3000:]}"
    assert _complete_checkpoints(broken)[-1] == resume, (resume, _complete_checkpoints(broken))
    assert kill_after in _logged_steps(broken)  # logged after the checkpoint: dropped and redone on resume
    before = [json.loads(line) for line in (broken / "metrics.jsonl").read_text().splitlines()]

    _train(args)
    b = _lines(broken)
    # it resumed: the lines up to step `resume` are those of the killed run (same times), the later ones are new
    again = [json.loads(line) for line in (broken / "metrics.jsonl").read_text().splitlines()]
    kept = [r for r in before if r["step"] <= resume]
    assert again[:len(kept)] == kept, "the run started again from scratch instead of resuming"
    redone = {r["step"]: r["time"] for r in again if resume < r["step"] <= kill_after}
    assert all(r["time"] < min(redone.values()) for r in before if resume < r["step"] <= kill_after)

    # every logged key of every line, exactly
    assert [r["step"] for r in b] == [r["step"] for r in a]
    for ra, rb in zip(a, b):
        assert sorted(rb) == sorted(ra), (ra["step"], sorted(set(ra) ^ set(rb)))
        different = {k: (ra[k], rb[k]) for k in ra if ra[k] != rb[k]}
        assert not different, f"step {ra['step']}: resumed != uninterrupted: {different}"
    # the evaluation files written after the resume, and the final weights
    for step in after:
        for name in ("submission.json", "metrics.json"):
            assert (broken / "eval" / f"step-{step}" / name).read_bytes() == \
                   (whole / "eval" / f"step-{step}" / name).read_bytes(), (step, name)
    last = _complete_checkpoints(whole)[-1]
    assert _complete_checkpoints(broken)[-1] == last
    for name in ("model.pt", "ema.pt"):
        wa = torch.load(whole / "checkpoints" / f"step-{last}" / name, map_location="cpu", weights_only=True)
        wb = torch.load(broken / "checkpoints" / f"step-{last}" / name, map_location="cpu", weights_only=True)
        _assert_same(wb, wa, name)


# ------------------------------------------------------------------------------------------- save -> restore


def _assert_same(got, want, where: str) -> None:
    """Nested dicts/lists/tuples of tensors and plain values: equal, tensors bit for bit."""
    if torch.is_tensor(want):
        assert torch.is_tensor(got) and got.dtype == want.dtype and got.shape == want.shape, where
        assert torch.equal(got, want), f"{where}: tensors differ"
    elif isinstance(want, dict):
        assert isinstance(got, dict) and sorted(map(str, got)) == sorted(map(str, want)), f"{where}: keys differ"
        for k in want:
            _assert_same(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, (list, tuple)):
        assert isinstance(got, (list, tuple)) and len(got) == len(want), f"{where}: lengths differ"
        for i, (g, w) in enumerate(zip(got, want)):
            _assert_same(g, w, f"{where}[{i}]")
    elif isinstance(want, np.ndarray):
        assert np.array_equal(got, want), where
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"


def _global_rng() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def _same_rng(got: dict, want: dict) -> None:
    assert torch.equal(got["torch"], want["torch"]), "torch RNG state not restored"
    assert all(np.array_equal(x, y) if isinstance(x, np.ndarray) else x == y
               for x, y in zip(got["numpy"], want["numpy"])), "numpy RNG state not restored"
    assert got["python"] == want["python"], "python RNG state not restored"


def test_save_then_restore_gives_back_the_whole_training_state(tiny, init, tmp_path):
    """Trainer A trains 7 steps (an evaluation after epoch 1, then 2 batches into epoch 2) and saves; trainer B,
    built afresh with the same config, restores that checkpoint after the global RNGs were reseeded. Model,
    EMA shadow, both optimisers, the global and ACT RNG states, loader position, evaluated epoch and step are
    equal; then both take the same next step, which must agree bit for bit (ACT carries included)."""
    from trm.config import load_config
    from trm.train import Dist, Trainer, carry_state

    cfg_words = _args(tiny, init, run_dir=str(tmp_path / "run"), max_steps=str(ROUND_TRIP_STEP), evaluators="[]")
    a = Trainer(load_config(cfg_words), Dist())
    a.fit()  # ends with a checkpoint of step 7
    want_rng = _global_rng()
    assert a.step == ROUND_TRIP_STEP and a.evaluated_through_epoch >= 1
    assert a.ema is not None and a.sparse is not None

    b = Trainer(load_config(cfg_words), Dist())
    torch.manual_seed(1234)  # whatever the global RNGs hold now, restore() must bring back the saved states
    np.random.seed(1234)
    random.seed(1234)
    assert b.restore() == ROUND_TRIP_STEP
    _same_rng(_global_rng(), want_rng)
    assert torch.equal(b.generator.get_state(), a.generator.get_state()), "ACT generator state not restored"
    assert b.step == a.step
    assert b.position == a.position, (b.position, a.position)
    assert b.evaluated_through_epoch == a.evaluated_through_epoch
    _assert_same(b.model.state_dict(), a.model.state_dict(), "model")
    _assert_same(b.ema.state_dict(), a.ema.state_dict(), "ema")
    _assert_same(b.dense.state_dict(), a.dense.state_dict(), "dense optimiser")
    # the sparse optimiser: its state; its lr is set from the schedule before every step (Trainer.set_lr)
    sa, sb = a.sparse.state_dict(), b.sparse.state_dict()
    _assert_same(sb["state"], sa["state"], "sparse optimiser state")
    _assert_same([{k: v for k, v in g.items() if k != "lr"} for g in sb["param_groups"]],
                 [{k: v for k, v in g.items() if k != "lr"} for g in sa["param_groups"]], "sparse optimiser groups")

    # one more step each, on the batch at the restored position: same metrics, weights, EMA, carries
    _, batch = next(iter(a.train_loader.iterate(start=a.position)))
    a.model.train()
    b.model.train()
    ma, mb = a.train_step({k: v.clone() for k, v in batch.items()}), b.train_step({k: v.clone() for k, v in batch.items()})
    assert mb == ma, "the step after the restore differs (ACT carries or RNG not restored?)"
    for i, (ca, cb) in enumerate(zip(a.carries, b.carries)):
        _assert_same(carry_state(cb), carry_state(ca), f"carry {i}")
    _assert_same(b.model.state_dict(), a.model.state_dict(), "model after a step")
    _assert_same(b.ema.state_dict(), a.ema.state_dict(), "ema after a step")
    assert torch.equal(b.generator.get_state(), a.generator.get_state())
