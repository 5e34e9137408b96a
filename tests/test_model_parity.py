"""Parity of trm.model with the reference outputs in ../shared/reference-fixtures, and init statistics.

    .venv/bin/python -m pytest -q tests/test_model_parity.py
    TRM_REFERENCE_DIR=../TinyRecursiveModels .venv/bin/python -m pytest -q tests/test_model_parity.py  # + the reference
    TRM_TEST_DEVICE=cuda .venv/bin/python -m pytest -q tests/test_model_parity.py    # on a GPU machine
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path

import pytest
import torch

from trm.model import TRM, LossHead, ModelConfig
from trm.model.layers import trunc_normal_

RETURN_KEYS = ("logits", "q_halt_logits", "q_continue_logits", "preds")
INT_METRICS = ("count", "exact_accuracy", "q_halt_accuracy", "steps")


def _device() -> torch.device:
    name = os.environ.get("TRM_TEST_DEVICE", "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip(f"TRM_TEST_DEVICE={name} but CUDA is not available")
    return torch.device(name)


def _fixture_config(fixtures_dir) -> ModelConfig:
    return ModelConfig.from_dict(json.loads((fixtures_dir / "config.json").read_text())["resolved_config"])


def _load(fixtures_dir, name):
    return torch.load(fixtures_dir / name, map_location="cpu", weights_only=True)


def test_config_from_fixture_model_dict(fixtures_dir):
    data = json.loads((fixtures_dir / "config.json").read_text())
    from_model = ModelConfig.from_dict(data["model_config"])  # carries the extra `causal: false`
    assert from_model == ModelConfig.from_dict(data["resolved_config"])
    assert from_model.mlp_inter == 256 and from_model.total_len == 916


def test_state_dict_keys_match_reference(fixtures_dir):
    model = LossHead(TRM(_fixture_config(fixtures_dir)))
    ours = model.state_dict()
    ref = _load(fixtures_dir, "trm_tiny_state_dict.pt")
    assert sorted(ours) == sorted(ref)
    for key, value in ref.items():
        assert ours[key].shape == value.shape and ours[key].dtype == value.dtype, key
    buffers = dict(model.named_buffers())
    assert "model.inner.puzzle_emb.weights" in buffers  # a buffer, not a parameter
    assert "model.inner.puzzle_emb.weights" not in dict(model.named_parameters())
    for hidden in ("model.inner.puzzle_emb.local_weights", "model.inner.puzzle_emb.local_ids"):
        assert hidden in buffers and hidden not in ours


def test_eval_parity_every_act_step(fixtures_dir):
    device = _device()
    model = LossHead(TRM(_fixture_config(fixtures_dir)))
    model.load_state_dict(_load(fixtures_dir, "trm_tiny_state_dict.pt"), strict=True)
    model.to(device).eval()
    batch = {k: v.to(device) for k, v in _load(fixtures_dir, "trm_tiny_batch.pt").items()}
    ref = _load(fixtures_dir, "trm_tiny_outputs.pt")

    steps = []
    with torch.inference_mode():
        carry = model.initial_carry(batch)
        while True:
            carry, loss, metrics, outputs, all_halted = model(carry=carry, batch=batch, return_keys=RETURN_KEYS)
            steps.append((loss.cpu(), {k: v.cpu() for k, v in metrics.items()}, {k: v.cpu() for k, v in outputs.items()},
                          carry.halted.cpu(), carry.steps.cpu()))
            if all_halted or len(steps) > 2 * ref["num_act_steps"]:
                break
    assert len(steps) == ref["num_act_steps"] == len(ref["per_step"])

    for i, ((loss, metrics, outputs, halted, act_steps), want) in enumerate(zip(steps, ref["per_step"])):
        for key in ("logits", "q_halt_logits", "q_continue_logits"):
            torch.testing.assert_close(outputs[key], want[key], atol=1e-4, rtol=0, msg=lambda m: f"step {i} {key}: {m}")
        assert torch.equal(outputs["preds"], want["preds"]), f"step {i}: preds differ"
        assert loss.dtype == torch.float64
        assert abs(loss.item() / want["loss"].item() - 1) < 1e-6, f"step {i}: loss {loss.item()} vs {want['loss'].item()}"
        assert torch.equal(halted, want["halted"]) and torch.equal(act_steps, want["steps"]), f"step {i}: halting"
        assert set(metrics) == set(want["metrics"])
        for key, value in want["metrics"].items():
            assert metrics[key].dtype == value.dtype, f"step {i} metric {key} dtype"
            if key in INT_METRICS:
                assert torch.equal(metrics[key], value), f"step {i} metric {key}: {metrics[key]} vs {value}"
            else:
                torch.testing.assert_close(metrics[key], value, rtol=1e-6, atol=1e-7, msg=lambda m: f"step {i} {key}: {m}")
    final = steps[-1][2]
    for key in RETURN_KEYS:
        torch.testing.assert_close(final[key], ref[key], atol=1e-4, rtol=0)


def test_init_statistics_match_reference(fixtures_dir):
    """Each tensor's mean/std at init agrees with the reference init within sampling error (values differ)."""
    ref = _load(fixtures_dir, "trm_tiny_state_dict_init.pt")
    cfg = _fixture_config(fixtures_dir)
    samples = []
    for seed in range(4):  # average a few of our draws so our own sampling noise is small
        torch.manual_seed(seed)
        samples.append(LossHead(TRM(cfg)).state_dict())
    for key, want in ref.items():
        want = want.float()
        ours = torch.stack([s[key].float() for s in samples])
        if want.std() == 0:  # deterministic init: zeros, or the q_head constants
            assert torch.equal(ours[0], want), key
            continue
        n = want.numel()
        sigma = want.std().item()
        ours_std = ours.flatten(1).std(dim=1).mean().item()
        ours_mean = ours.flatten(1).mean(dim=1).mean().item()
        # 5 standard errors of the difference of the two estimates
        assert abs(ours_std - sigma) < 5 * sigma * math.sqrt(1 / (2 * n) + 1 / (8 * n)) + 1e-6, (key, ours_std, sigma)
        assert abs(ours_mean - want.mean().item()) < 5 * sigma * math.sqrt(1 / n + 1 / (4 * n)), key
        # both cut at 2 corrected std (2 * 1.1368 * std)
        bound = 2 * 1.1369 * sigma * 1.15
        assert ours.abs().max().item() < bound and want.abs().max().item() < bound, key


def test_trunc_normal_has_requested_std():
    gen = torch.Generator().manual_seed(0)
    x = trunc_normal_(torch.empty(400_000), std=0.5, generator=gen)
    assert abs(x.std().item() - 0.5) < 0.005
    assert abs(x.mean().item()) < 0.005
    corrected = 0.5 / math.sqrt(0.7737413)  # variance of N(0,1) truncated at +-2
    assert x.abs().max().item() <= 2 * corrected + 1e-6
    assert x.abs().max().item() > 2 * corrected * 0.99  # really reaches the cut
    assert torch.count_nonzero(trunc_normal_(torch.empty(10), std=0.0)) == 0


# ----------------------------------------------------------------------------------------------- training mode
# Numbers recorded from the reference code by bench/make_training_fixture.py (its docstring has the command):
# 8 training-mode ACT steps with halting from Q and exploration (global RNG), new batch rows every step, and the
# gradients of every step. CI compares our model with them; no reference code is needed.
TRAINING_FIXTURE = Path(__file__).parent / "fixtures" / "reference_training_mode.pt"


def _generator():
    spec = importlib.util.spec_from_file_location("make_training_fixture",
                                                  Path(__file__).parents[1] / "bench" / "make_training_fixture.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _compare_traces(got: dict, want: dict, where: str) -> None:
    """Halting exactly; losses to 1e-6 relative; logits, metrics and gradients to float32 noise."""
    assert got["names"] and sorted(got["names"]) == sorted(want["names"]), where
    index = {n: i for i, n in enumerate(got["names"])}
    order = [index[n] for n in want["names"]]
    assert len(got["steps"]) == len(want["steps"])
    for k, (g, w) in enumerate(zip(got["steps"], want["steps"])):
        at = f"{where} step {k + 1}"
        assert g["halted"].tolist() == w["halted"].tolist(), f"{at}: halted {g['halted'].tolist()} vs {w['halted'].tolist()}"
        assert g["act_steps"].tolist() == w["act_steps"].tolist(), f"{at}: ACT steps"
        assert torch.equal(g["local_ids"], w["local_ids"]), f"{at}: puzzle identifiers in the carry"
        assert abs(g["loss"].item() / w["loss"].item() - 1) < 1e-6, f"{at}: loss {g['loss'].item()} vs {w['loss'].item()}"
        assert set(g["metrics"]) == set(w["metrics"]), at
        for key, value in w["metrics"].items():
            if key in INT_METRICS:
                assert torch.equal(g["metrics"][key], value), f"{at} metric {key}: {g['metrics'][key]} vs {value}"
            else:
                torch.testing.assert_close(g["metrics"][key], value, rtol=1e-5, atol=1e-6, msg=lambda m: f"{at} {key}: {m}")
        for key in ("q_halt_logits", "q_continue_logits"):
            torch.testing.assert_close(g[key], w[key], rtol=0, atol=1e-4, msg=lambda m: f"{at} {key}: {m}")
        assert torch.equal(g["preds"], w["preds"]), f"{at}: preds"
        scale = w["local_grad"].abs().max().item()
        torch.testing.assert_close(g["local_grad"], w["local_grad"], rtol=1e-4, atol=1e-5 * scale,
                                   msg=lambda m: f"{at} puzzle-embedding gradient: {m}")
        diff = (g["projections"][order] - w["projections"]).abs()
        bound = 1e-4 * w["scales"] + 1e-12
        bad = [want["names"][i] for i in torch.nonzero((diff > bound).any(dim=1)).flatten().tolist()]
        assert not bad, f"{at}: gradients differ for {bad}"
    if "grad_sum" in want:
        for name, value in want["grad_sum"].items():
            torch.testing.assert_close(got["grad_sum"][name], value, rtol=1e-4, atol=1e-5 * value.abs().max().item(),
                                       msg=lambda m: f"{where} gradient of {name} summed over the steps: {m}")


def _recorded() -> dict:
    if not TRAINING_FIXTURE.is_file():
        raise FileNotFoundError(f"{TRAINING_FIXTURE} is missing (bench/make_training_fixture.py writes it)")
    return torch.load(TRAINING_FIXTURE, map_location="cpu", weights_only=True)


@pytest.mark.parametrize("scenario", ["q_halt", "exploration"])
def test_training_mode_matches_reference_fixture(fixtures_dir, scenario):
    """Our model, run through the generator's own trace() on the same weights, batches and seeds, reproduces the
    reference's halting decisions, losses, metrics, logits and per-step gradients."""
    gen = _generator()
    recorded = _recorded()
    want = recorded["scenarios"][scenario]
    cfg = _fixture_config(fixtures_dir).replace(halt_exploration_prob=recorded["halt_exploration_prob"])
    assert cfg.halt_max_steps >= 3 and cfg.no_ACT_continue
    ours = LossHead(TRM(cfg))
    ours.load_state_dict(_load(fixtures_dir, "trm_tiny_state_dict.pt"), strict=True)
    with torch.no_grad():
        ours.model.inner.q_head.bias[0] = want["halt_bias"]
    orders, ids, batches = gen.step_batches(_load(fixtures_dir, "trm_tiny_batch.pt"), cfg.num_puzzle_identifiers)
    assert torch.equal(orders, recorded["orders"]) and torch.equal(ids, recorded["identifiers"])
    halted = torch.stack([s["halted"] for s in want["steps"]])
    assert halted.any() and (~halted).any() and len(want["steps"]) >= 8  # rows halt and rows go on
    got = gen.trace(ours, batches, want["seed"], keep_grads="grad_sum" in want)
    _compare_traces(got, want, scenario)


def test_reference_code_reproduces_the_fixture(fixtures_dir):
    """Optional: with TRM_REFERENCE_DIR (a checkout of the reference TinyRecursiveModels code, with pydantic and
    einops installed), the generator run on the reference now gives the committed numbers."""
    ref_dir = os.environ.get("TRM_REFERENCE_DIR")
    if not ref_dir:
        pytest.skip("TRM_REFERENCE_DIR not set (a checkout of the reference TinyRecursiveModels code)")
    recorded = _recorded()
    fresh = _generator().generate(Path(ref_dir).resolve(), fixtures_dir)
    assert torch.equal(fresh["orders"], recorded["orders"])
    for name, want in recorded["scenarios"].items():
        assert fresh["scenarios"][name]["halt_bias"] == want["halt_bias"], name
        _compare_traces(fresh["scenarios"][name], want, f"reference {name}")
