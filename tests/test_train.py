"""The trainer end to end on the reference tiny dataset: run, evaluate, checkpoint, resume after SIGKILL exactly,
2 gloo ranks == 1 process, gradient accumulation == one big batch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BASE = ["preset=cpu-tiny", "global_batch_size=8", "micro_batch_size=null", "num_threads=1", "progress=False", "wandb=off"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), WANDB_MODE="disabled")
    return env


def _run(args: list[str], torchrun: int = 0, timeout: float = 240) -> None:
    if torchrun:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(torchrun),
               "--master-port", str(_free_port()), "-m", "trm.train", *args]
    else:
        cmd = [sys.executable, "-m", "trm.train", *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)
    if proc.returncode:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _metrics(run_dir: Path) -> dict[int, dict[str, float]]:
    """step -> merged metrics (train and eval lines of one step merged; later lines win)."""
    out: dict[int, dict[str, float]] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        out.setdefault(record["step"], {}).update(record)
    return out


def test_end_to_end_train_eval_checkpoint(tiny, tmp_path):
    run = tmp_path / "run"
    _run([*BASE, f"data_paths=[{tiny}]", f"run_dir={run}", "epochs=4", "eval_interval=2", "evaluators=[arc]",
          "run_name=e2e"])
    metrics = _metrics(run)
    steps = sorted(metrics)
    assert steps == list(range(1, len(steps) + 1)) and len(steps) >= 4
    first = metrics[1]
    for key in ("train/count", "train/accuracy", "train/exact_accuracy", "train/q_halt_accuracy", "train/steps",
                "train/lm_loss", "train/q_halt_loss", "train/lr"):
        assert key in first, key
    evals = [s for s, m in metrics.items() if "all/accuracy" in m]
    assert len(evals) == 2, evals  # after epochs 2 and 4
    assert any(k.startswith("ARC/pass@") for k in metrics[evals[-1]])
    for step in evals:
        folder = run / "checkpoints" / f"step-{step}"
        names = {p.name for p in folder.iterdir()}
        assert {"model.pt", "optimizer.pt", "train_state.pt", "config.yaml", "identifiers.json", "dataset.json",
                "meta.json"} <= names
        assert json.loads((folder / "meta.json").read_text())["evaluated"] is True
        assert (run / "eval" / f"step-{step}" / "submission.json").is_file()
    # losses went down over the run
    assert metrics[steps[-1]]["train/lm_loss"] < metrics[1]["train/lm_loss"]


@pytest.mark.slow  # tests/test_resume.py holds the stronger version (kill inside an epoch, halting, EMA, ARC eval)
def test_sigkill_and_resume_continue_exactly(tiny, tmp_path):
    args = [*BASE, f"data_paths=[{tiny}]", "epochs=1000", "eval_interval=1000", "max_steps=24",
            "checkpoint_every_n_steps=4", "keep_last=2", "ema=True", "run_name=kill"]
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    _run([*args, f"run_dir={whole}"])

    cmd = [sys.executable, "-m", "trm.train", *args, f"run_dir={broken}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            if (broken / "checkpoints" / "step-8" / "meta.json").exists():
                break
            time.sleep(0.005)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    saved = sorted(int(p.name[5:]) for p in (broken / "checkpoints").glob("step-*") if (p / "meta.json").exists())
    assert saved and saved[-1] < 24, f"the run finished before it was killed: {saved}"

    _run([*args, f"run_dir={broken}"])
    a, b = _metrics(whole), _metrics(broken)
    assert sorted(a) == sorted(b) == list(range(1, 25))
    for step in range(1, 25):
        for key in ("train/lm_loss", "train/q_halt_loss", "train/accuracy", "train/steps", "train/lr"):
            assert b[step][key] == pytest.approx(a[step][key], rel=1e-6, abs=1e-9), (step, key)


def test_two_gloo_ranks_equal_one_process(tiny, tmp_path):
    args = [*BASE, f"data_paths=[{tiny}]", "epochs=1000", "eval_interval=1000", "max_steps=4",
            "arch.halt_exploration_prob=0.0", "evaluators=[]", "run_name=ddp"]
    one, two, accum = tmp_path / "one", tmp_path / "two", tmp_path / "accum"
    _run([*args, f"run_dir={one}"])
    _run([*args, f"run_dir={two}"], torchrun=2)
    _run([*args, f"run_dir={accum}", "micro_batch_size=2"])
    a, b, c = _metrics(one), _metrics(two), _metrics(accum)
    assert sorted(a) == sorted(b) == sorted(c) == list(range(1, 5))
    for step in a:
        for key in ("train/lm_loss", "train/q_halt_loss", "train/accuracy", "train/count"):
            assert b[step][key] == pytest.approx(a[step][key], abs=1e-5), ("2 ranks", step, key)
            assert c[step][key] == pytest.approx(a[step][key], abs=1e-5), ("accumulation", step, key)


@pytest.mark.s3
def test_run_folder_and_checkpoints_on_s3(tiny, request, tmp_path):
    pytest.importorskip("trm.storage.embedded")
    env = request.getfixturevalue("s3_env")
    from trm.storage import open_store

    root = "s3://trm/test-train/run1"
    args = [*BASE, f"data_paths=[{tiny}]", "epochs=1000", "eval_interval=1000", "evaluators=[]",
            f"run_dir={root}", "checkpoint_every_n_steps=1", "keep_last=1", "run_name=s3run"]
    os.environ.update(env)
    home = tmp_path / "home"
    os.environ["TRM_HOME"] = str(home)
    try:
        _run([*args, "max_steps=2"])
        _run([*args, "max_steps=4"])  # resumes from step-2 on S3 and continues
    finally:
        os.environ.pop("TRM_HOME")
    store = open_store()
    keys = [u[len(root) + 1 :] for u in store.list(root)]
    assert "checkpoints/step-4/_COMPLETE" in keys and "checkpoints/step-4/meta.json" in keys
    # step 2 ended the first run with an evaluation, so it is kept; step 3 was a plain one (keep_last=1)
    assert "checkpoints/step-2/_COMPLETE" in keys
    assert not any(k.startswith("checkpoints/step-3/") for k in keys), keys
    lines = [json.loads(x) for x in store.read_bytes(f"{root}/metrics.jsonl").decode().splitlines()]
    assert sorted({r["step"] for r in lines}) == [1, 2, 3, 4]
    assert [r["step"] for r in lines if "train/lm_loss" in r] == [1, 2, 3, 4]


def test_eval_max_augmentations_limits_periodic_evaluation(tiny, tmp_path):
    """eval_max_augmentations=0: the periodic evaluation runs only the original puzzle of each group."""
    import numpy as np

    run = tmp_path / "run"
    _run([*BASE, f"data_paths=[{tiny}]", f"run_dir={run}", "epochs=1", "eval_interval=1", "evaluators=[arc]",
          "eval_max_augmentations=0", "eval_save_outputs=[preds]", "run_name=maxaug"])
    (folder,) = (run / "eval").iterdir()
    got = np.load(folder / "outputs.npz")["puzzle_identifiers"]
    got = got[got != 0]  # padding rows of the last batch carry the blank identifier
    test = Path(tiny) / "test"
    pids = np.load(test / "all__puzzle_identifiers.npy")
    pidx, gidx = np.load(test / "all__puzzle_indices.npy"), np.load(test / "all__group_indices.npy")
    originals = pids[gidx[:-1]]  # the first puzzle of each group
    want = np.repeat(originals, np.diff(pidx)[gidx[:-1]])
    assert got.tolist() == want.tolist()
    assert want.size < pidx[-1]  # fewer rows than the whole test split
