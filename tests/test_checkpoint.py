"""Checkpoint folders: complete-or-absent, newest complete lookup, keep-last-k plus evaluated, local and s3://."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import trm.checkpoint as checkpoint_module
from trm.checkpoint import Checkpoints


def _save(ckpts: Checkpoints, step: int, evaluated: bool = False, tmp_file=None):
    files = {"identifiers.json": tmp_file} if tmp_file else None
    return ckpts.save(
        step,
        objects={"model.pt": {"w": torch.full((3,), float(step))}, "train_state.pt": {"step": step, "rng": torch.arange(4)}},
        texts={"config.yaml": f"step: {step}\n"},
        files=files,
        meta={"epoch": step // 10},
        evaluated=evaluated,
    )


def test_save_load_round_trip(tmp_path):
    ident = tmp_path / "identifiers.json"
    ident.write_text('["<blank>", "a"]')
    ckpts = Checkpoints(tmp_path / "ck", keep_last=2)
    where = _save(ckpts, 7, tmp_file=ident)
    assert where.endswith("step-7") and ckpts.latest() == where
    loaded = ckpts.load(where)
    assert torch.equal(loaded["model.pt"]["w"], torch.full((3,), 7.0))
    assert loaded["train_state.pt"]["step"] == 7 and loaded["config.yaml"] == "step: 7\n"
    assert json.loads(loaded["identifiers.json"]) == ["<blank>", "a"]
    meta = loaded["meta.json"]
    assert meta["step"] == 7 and meta["epoch"] == 0 and set(meta["files"]) == {"model.pt", "train_state.pt", "config.yaml", "identifiers.json"}
    with pytest.raises(FileNotFoundError, match="nope.json"):
        ckpts.save(8, objects={}, files={"dataset.json": tmp_path / "nope.json"})
    assert ckpts.latest() == where


def test_keep_last_k_plus_evaluated(tmp_path):
    ckpts = Checkpoints(tmp_path, keep_last=2)
    for step in range(1, 8):
        _save(ckpts, step, evaluated=step in (2, 5))
    assert ckpts.complete_steps() == [2, 5, 6, 7]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-2", "step-5", "step-6", "step-7"]


def test_incomplete_folders_are_ignored(tmp_path, monkeypatch):
    ckpts = Checkpoints(tmp_path, keep_last=3)
    good = _save(ckpts, 10)
    # a crash in the middle of writing step 20: the error propagates and no step-20 appears
    real = checkpoint_module._fsync_write
    calls = {"n": 0}

    def failing(path, data):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full")
        real(path, data)

    monkeypatch.setattr(checkpoint_module, "_fsync_write", failing)
    with pytest.raises(OSError, match="disk full"):
        _save(ckpts, 20)
    monkeypatch.setattr(checkpoint_module, "_fsync_write", real)
    assert ckpts.latest() == good and not (tmp_path / "step-20").exists()
    # a folder renamed in without meta.json (e.g. copied by hand) is incomplete
    (tmp_path / "step-30").mkdir()
    torch.save({}, tmp_path / "step-30" / "model.pt")
    assert ckpts.latest() == good
    with pytest.raises(FileNotFoundError, match="incomplete"):
        ckpts.load(str(tmp_path / "step-30"))


def test_sigkill_during_saves_leaves_only_complete_folders(tmp_path):
    """Kill a process that saves big checkpoints in a loop; every folder that looks complete must load."""
    script = textwrap.dedent(
        f"""
        import torch
        from trm.checkpoint import Checkpoints
        ck = Checkpoints({str(tmp_path)!r}, keep_last=2)
        step = 0
        while True:
            step += 1
            ck.save(step, objects={{"model.pt": {{"w": torch.full((300_000,), float(step))}}}}, texts={{"config.yaml": "x"}})
            print(step, flush=True)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        for _ in range(3):
            proc.stdout.readline()
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    ckpts = Checkpoints(tmp_path, keep_last=2)
    steps = ckpts.complete_steps()
    assert steps and len(steps) <= 3
    for step in steps:
        loaded = ckpts.load(ckpts.where(step))
        assert torch.equal(loaded["model.pt"]["w"], torch.full((300_000,), float(step)))
    # the next save of the restarted run cleans the dead process's temporaries
    _save(ckpts, steps[-1] + 1)
    left = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert not left, f"killed writer pid {proc.pid}; left: {left}; {_holders(left)}"


def _holders(names: list[str]) -> str:
    """For a failure message: which live process, if any, has the pid written in each temporary's name."""
    found = []
    for name in names:
        pid = name.rsplit("-", 2)[-2] if name.count("-") >= 2 else ""
        cmd = Path(f"/proc/{pid}/cmdline")
        found.append(f"pid {pid}: " + (cmd.read_bytes().replace(b"\0", b" ").decode(errors="replace")[:200]
                                       if pid.isdigit() and cmd.exists() else "not running"))
    return "; ".join(found)


@pytest.mark.s3
def test_s3_checkpoints(request):
    pytest.importorskip("trm.storage.embedded")
    request.getfixturevalue("s3_env")
    ckpts = Checkpoints("s3://trm/test-ckpt/run1/checkpoints", keep_last=1)
    _save(ckpts, 1, evaluated=True)
    _save(ckpts, 2)
    where = _save(ckpts, 3)
    assert where == "s3://trm/test-ckpt/run1/checkpoints/step-3"
    assert ckpts.complete_steps() == [1, 3] and ckpts.latest() == where
    assert ckpts.load(where)["train_state.pt"]["step"] == 3
