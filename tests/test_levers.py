"""Speed levers of issue 14, all opt-in: each changes nothing the run computes (CPU checks; the GPU gains are measured
by bench/gpu_check.sh).

    .venv/bin/python -m pytest -q tests/test_levers.py

- `log_interval=N` reads the train metrics from the device once every N steps: metrics.jsonl has the same lines
  with the same values as with N=1 (only "time" may differ), evaluations and checkpoints included.
- `prefetch_batches=N` reads batches ahead in a thread (CUDA: pinned + side-stream copy): same lines, same weights.
- `log_data_wait=True` adds train/data_wait_s to each train line; without it the lines are as before.
- `sdpa_backend` pins attention to one SDPA kernel (on CPU: flash/math; cudnn/efficient fall back to auto);
  `tf32` and the speed keys are not part of the training identity, and tf32 changes nothing on CPU.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch

# the tiny set in one epoch at 2 rows (2 micro-batches of 1): 5 steps, a checkpoint at step 4, an evaluation
# (with its checkpoint) at the end
BASE = ["preset=cpu-tiny", "arch.hidden_size=32", "global_batch_size=2", "micro_batch_size=1", "num_threads=1",
        "progress=False", "wandb=off", "device=cpu", "epochs=1", "eval_interval=1", "evaluators=[]",
        "max_eval_examples_per_puzzle=1", "eval_max_augmentations=0", "lr_warmup_steps=2", "checkpoint_every_n_steps=4", "ema=True",
        "run_name=levers"]


def _train(tiny: str, run: Path, *extra: str):
    from trm.config import load_config
    from trm.train import Dist, Trainer

    trainer = Trainer(load_config([*BASE, f"data_paths=[{tiny}]", f"run_dir={run}", *extra], warn=False), Dist())
    trainer.fit()
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return trainer, lines


def _without_time(lines: list[dict]) -> list[dict]:
    return [{k: v for k, v in line.items() if k != "time"} for line in lines]


@pytest.fixture(scope="module")
def plain(tiny, tmp_path_factory):
    """The run with every lever at its default."""
    return _train(tiny, tmp_path_factory.mktemp("plain") / "run")


def test_log_interval_logs_the_same_lines_and_data_wait_only_when_asked(tiny, plain, tmp_path):
    base, want = plain
    trainer, got = _train(tiny, tmp_path / "run", "log_interval=3", "log_data_wait=True")
    steps = [line["step"] for line in want if "train/lm_loss" in line]
    assert steps == list(range(1, base.step + 1)) and base.step >= 5  # every step has its train line
    assert any("all/lm_loss" in line for line in want)  # evaluations are in the comparison too
    assert not any("train/data_wait_s" in line for line in want)
    train = [line for line in got if "train/lm_loss" in line]
    assert len(train) == len(steps) and all(line["train/data_wait_s"] >= 0.0 for line in train)
    assert [{k: v for k, v in line.items() if k != "train/data_wait_s"} for line in _without_time(got)] == \
        _without_time(want)
    # the checkpoints were written at the same steps
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step-*"))
    assert names == sorted(p.name for p in (Path(base.run_dir) / "checkpoints").glob("step-*"))


def test_prefetch_gives_the_same_run(tiny, plain, tmp_path):
    base, want = plain
    trainer, got = _train(tiny, tmp_path / "run", "prefetch_batches=2")
    assert _without_time(got) == _without_time(want)
    for key, value in base.model.state_dict().items():
        assert torch.equal(trainer.model.state_dict()[key], value), key
    assert not any(t.name == "trm-prefetch" and t.is_alive() for t in threading.enumerate())


def test_prefetcher_keeps_order_raises_and_stops():
    from trm.data.loader import Prefetcher

    items = [(i, {"x": torch.full((2,), i)}) for i in range(7)]
    got = list(Prefetcher(iter(items), depth=2))
    assert [p for p, _ in got] == list(range(7)) and all(b["x"] is items[i][1]["x"] for i, b in got)

    def broken():
        yield 0, {"x": torch.zeros(1)}
        raise OSError("disk gone")

    fetch = Prefetcher(broken(), depth=1)
    assert next(fetch)[0] == 0
    with pytest.raises(OSError, match="disk gone"):
        next(fetch)

    def endless():
        i = 0
        while True:
            yield i, {"x": torch.zeros(1)}
            i += 1

    fetch = Prefetcher(endless(), depth=2)
    next(fetch)
    fetch.close()
    assert not fetch._thread.is_alive()
    with pytest.raises(ValueError, match="depth"):
        Prefetcher(iter(items), depth=0)


def _tiny_model():
    from trm.model import TRM, LossHead, ModelConfig

    cfg = ModelConfig(hidden_size=32, num_heads=2, L_layers=1, H_cycles=1, L_cycles=1, halt_max_steps=2,
                      puzzle_emb_len=1, num_puzzle_identifiers=4, batch_size=2, seq_len=16, forward_dtype="float32")
    torch.manual_seed(0)
    return LossHead(TRM(cfg)), cfg


def _eval_loss(model, cfg) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    batch = {"inputs": torch.randint(0, cfg.vocab_size, (2, cfg.seq_len), generator=g, dtype=torch.int32),
             "labels": torch.randint(0, cfg.vocab_size, (2, cfg.seq_len), generator=g, dtype=torch.int32),
             "puzzle_identifiers": torch.tensor([1, 2], dtype=torch.int32)}
    model.eval()
    with torch.inference_mode():
        _, loss, *_ = model(carry=model.initial_carry(batch), batch=batch, return_keys=())
    return loss


def test_sdpa_backend_pins_the_kernel(monkeypatch):
    from trm.config import SDPA_BACKENDS
    from trm.model import layers
    from trm.model.layers import Attention, set_attention_backend

    assert set(SDPA_BACKENDS) == {"auto", *layers.SDPA_BACKENDS}  # the config key names every kernel
    model, cfg = _tiny_model()
    auto = _eval_loss(model, cfg)
    seen = []
    real = torch.nn.attention.sdpa_kernel

    def spy(backends, *args, **kwargs):
        seen.append(backends)
        return real(backends, *args, **kwargs)

    monkeypatch.setattr(torch.nn.attention, "sdpa_kernel", spy)
    assert set_attention_backend(model, "math") == cfg.L_layers
    assert all(m.sdpa_backend == "math" for m in model.modules() if isinstance(m, Attention))
    math = _eval_loss(model, cfg)
    assert seen and all(b == torch.nn.attention.SDPBackend.MATH for b in seen)
    assert torch.allclose(math, auto, rtol=1e-5)
    seen.clear()
    set_attention_backend(model, "cudnn")  # no CPU kernel: SDPA's own choice, as "auto"
    assert torch.equal(_eval_loss(model, cfg), auto) and not seen
    with pytest.raises(ValueError, match="sdpa backend"):
        set_attention_backend(model, "fast")


def test_trainer_applies_the_backend_and_speed_keys_are_not_identity(tiny, tmp_path):
    from trm.config import load_config
    from trm.identity import training_identity
    from trm.model.layers import Attention
    from trm.train import Dist, Trainer, apply_tf32

    words = [*BASE, f"data_paths=[{tiny}]", f"run_dir={tmp_path}"]
    levers = ["sdpa_backend=math", "tf32=True", "log_interval=4", "prefetch_batches=1", "log_data_wait=True",
              "compile_mode=max-autotune"]
    assert training_identity(load_config([*words, *levers], warn=False)) == training_identity(load_config(words, warn=False))
    trainer = Trainer(load_config([*words, "sdpa_backend=math"], warn=False), Dist())
    assert {m.sdpa_backend for m in trainer.model.modules() if isinstance(m, Attention)} == {"math"}
    before = torch.get_float32_matmul_precision()
    assert apply_tf32(True, torch.device("cpu")) is False and torch.get_float32_matmul_precision() == before


@pytest.mark.parametrize("word, message", [
    ("log_interval=0", "log_interval"), ("prefetch_batches=-1", "prefetch_batches"),
    ("compile_mode=fastest", "compile_mode"), ("sdpa_backend=flash3", "sdpa_backend"),
])
def test_bad_lever_values_are_refused(word, message):
    from trm.config import load_config

    with pytest.raises(ValueError, match=message):
        load_config(["preset=cpu-tiny", word], warn=False)


def test_compile_mode_reaches_torch_compile(tiny, tmp_path, monkeypatch):
    from trm.config import load_config
    from trm.train import Dist, Trainer, compile_model

    calls = []

    def record(model, **kwargs):
        calls.append(kwargs)
        return model

    monkeypatch.setattr(torch, "compile", record)
    model = torch.nn.Linear(2, 2)
    assert compile_model(model, "default") is model and compile_model(model, "reduce-overhead") is model
    assert calls == [{}, {"mode": "reduce-overhead"}]  # "default": every option at its default, as the reference
    calls.clear()
    Trainer(load_config([*BASE, f"data_paths=[{tiny}]", f"run_dir={tmp_path}", "compile=True",
                         "compile_mode=max-autotune"], warn=False), Dist())
    assert calls == [{"mode": "max-autotune"}]
