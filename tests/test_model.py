"""Behaviour of trm.model beyond the reference fixtures: config checks, ACT halting, gradients, variants.

    .venv/bin/python -m pytest -q tests/test_model.py
"""

from __future__ import annotations

import math
import platform
import sys

import pytest
import torch
import torch.nn.functional as F

from trm.model import IGNORE_LABEL_ID, TRM, LossHead, ModelConfig, stablemax_cross_entropy
from trm.model.layers import apply_rope, half_to_interleaved, interleaved_to_half, rms_norm


def small_config(**kw) -> ModelConfig:
    base = dict(batch_size=3, seq_len=20, hidden_size=32, num_heads=2, L_layers=1, H_cycles=2, L_cycles=2,
                halt_max_steps=4, num_puzzle_identifiers=5, puzzle_emb_len=2, forward_dtype="float32")
    base.update(kw)
    return ModelConfig(**base)


def make_batch(cfg: ModelConfig, n: int | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    n = n or cfg.batch_size
    inputs = torch.randint(0, cfg.vocab_size, (n, cfg.seq_len), generator=g, dtype=torch.int32)
    labels = torch.randint(0, cfg.vocab_size, (n, cfg.seq_len), generator=g, dtype=torch.int32)
    labels[:, -3:] = IGNORE_LABEL_ID
    ids = torch.randint(1, cfg.num_puzzle_identifiers, (n,), generator=g, dtype=torch.int32)
    return {"inputs": inputs, "labels": labels, "puzzle_identifiers": ids}


def build(cfg: ModelConfig, seed: int = 0) -> LossHead:
    torch.manual_seed(seed)
    model = LossHead(TRM(cfg))
    with torch.no_grad():  # make the puzzle and Q paths non-trivial
        g = torch.Generator().manual_seed(seed + 1)
        model.model.puzzle_emb.weights.copy_(torch.randn(model.model.puzzle_emb.weights.shape, generator=g) * 0.1)
        model.model.inner.q_head.weight.normal_(0, 0.1, generator=g)
        model.model.inner.q_head.bias.zero_()
    return model


# --- config --------------------------------------------------------------------------------------------------

def test_config_defaults_are_the_seed_model():
    cfg = ModelConfig()
    assert (cfg.hidden_size, cfg.num_heads, cfg.L_layers, cfg.H_cycles, cfg.L_cycles) == (512, 8, 2, 3, 4)
    assert cfg.puzzle_emb_ndim == 512 and cfg.puzzle_emb_len == 16 and cfg.total_len == 916
    assert cfg.halt_max_steps == 16 and cfg.forward_dtype == "bfloat16" and cfg.mlp_inter == 1536
    assert ModelConfig(hidden_size=64, num_heads=2).puzzle_emb_ndim == 64


@pytest.mark.parametrize("bad, field", [
    ({"mlp_t": True}, "mlp_t"),
    ({"pos_encodings": "alibi"}, "pos_encodings"),
    ({"forward_dtype": "float8"}, "forward_dtype"),
    ({"num_heads": 3}, "num_heads"),
    ({"hidden_size": 0}, "hidden_size"),
    ({"halt_exploration_prob": 1.5}, "halt_exploration_prob"),
    ({"L_cycles": 2.5}, "L_cycles"),
    ({"batch_size": True}, "batch_size"),
    ({"puzzle_emb_ndim": 0}, "puzzle_emb_len"),
    ({"puzzle_emb_ndim": 10_000}, "puzzle_emb_ndim"),
    ({"expansion": "4"}, "expansion"),
])
def test_config_rejects_bad_values(bad, field):
    with pytest.raises(ValueError, match=field):
        small_config(**bad)


def test_from_dict_rejects_unknown_and_tolerates_reference_extras():
    with pytest.raises(ValueError, match="hiden_size"):
        ModelConfig.from_dict({"hiden_size": 64})
    with pytest.raises(ValueError, match="causal"):
        ModelConfig.from_dict({"causal": True})
    cfg = ModelConfig.from_dict({"name": "recursive_reasoning.trm@X", "loss": {"loss_type": "x"}, "causal": False,
                                 "hidden_size": 64, "num_heads": 2, "expansion": 4}, num_puzzle_identifiers=7)
    assert cfg.hidden_size == 64 and cfg.expansion == 4.0 and cfg.num_puzzle_identifiers == 7
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


def test_puzzle_emb_len_zero_uses_ceil_of_width():
    cfg = small_config(puzzle_emb_ndim=40, puzzle_emb_len=0)
    assert cfg.prefix_len == 2  # ceil(40 / 32)
    model = build(cfg).eval()
    batch = make_batch(cfg)
    with torch.inference_mode():
        _, _, _, out, _ = model(carry=model.initial_carry(batch), batch=batch, return_keys=("logits",))
    assert out["logits"].shape == (3, cfg.seq_len, cfg.vocab_size)


# --- numerics -------------------------------------------------------------------------------------------------

def test_stablemax_matches_formula():
    logits = torch.tensor([[[-2.0, 0.0, 3.0], [1.0, -0.5, 0.25]]])
    labels = torch.tensor([[2, IGNORE_LABEL_ID]])
    got = stablemax_cross_entropy(logits, labels, labels != IGNORE_LABEL_ID)
    s = [1 / 3, 1.0, 4.0]
    assert got.dtype == torch.float64
    assert math.isclose(got[0, 0].item(), -math.log(4.0 / sum(s)), rel_tol=1e-12)
    assert got[0, 1].item() == 0.0


def test_rope_equals_rotate_half_form():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 8, generator=g)  # [B, heads, S, D] in rotate-half order
    angles = torch.randn(5, 4, generator=g)
    full_cos, full_sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    rotated = torch.cat((-x[..., 4:], x[..., :4]), -1)
    want = x * full_cos + rotated * full_sin
    strided = half_to_interleaved(x).transpose(1, 2).contiguous().transpose(1, 2)  # non-contiguous input
    got = apply_rope(strided, angles.cos(), angles.sin())
    assert got.is_contiguous()
    torch.testing.assert_close(interleaved_to_half(got), want)
    compiled = torch.compile(apply_rope, backend="eager", fullgraph=True)  # the real-arithmetic branch
    torch.testing.assert_close(compiled(strided, angles.cos(), angles.sin()), got)


def test_attention_pair_order_keeps_reference_layout():
    """Permuting q/k rows for RoPE gives the same attention as the reference's rotate-half on the stored weight."""
    from trm.model.layers import Attention, Rotary

    torch.manual_seed(0)
    att = Attention(16, 2)
    rot = Rotary(8, 6, 10000.0)
    x = torch.randn(3, 6, 16)
    qkv = F.linear(x, att.qkv_proj.weight).view(3, 6, 6, 8).transpose(1, 2)
    cos, sin = torch.cat([rot.cos] * 2, -1), torch.cat([rot.sin] * 2, -1)

    def rope_half(t):
        return t * cos + torch.cat((-t[..., 4:], t[..., :4]), -1) * sin

    q, k, v = rope_half(qkv[:, :2]), rope_half(qkv[:, 2:4]), qkv[:, 4:]
    scores = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(8), -1)
    want = F.linear((scores @ v).transpose(1, 2).reshape(3, 6, 16), att.o_proj.weight)
    torch.testing.assert_close(att(x, (rot.cos, rot.sin)), want, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(att(x, (rot.cos, rot.sin)), want, atol=1e-5, rtol=1e-5)


def test_rms_norm_in_float32():
    x = torch.randn(4, 16, dtype=torch.bfloat16)
    want = (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-5)).to(torch.bfloat16)
    out = rms_norm(x, 1e-5)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, want)


# --- ACT ------------------------------------------------------------------------------------------------------

@torch.no_grad()
def run_until_halted(model, batch, limit=8, generator=None):
    """ACT steps until every row halted at once (or `limit` steps); [(halted, steps)] after each."""
    carry = model.initial_carry(batch)
    trace = []
    for _ in range(limit):
        carry, loss, metrics, out, done = model(carry=carry, batch=batch, return_keys=("q_halt_logits",),
                                               generator=generator)
        trace.append((carry.halted.clone(), carry.steps.clone()))
        if done:
            break
    return trace


def test_eval_always_runs_max_steps_even_if_q_says_halt():
    cfg = small_config()
    model = build(cfg).eval()
    with torch.no_grad():
        model.model.inner.q_head.bias.fill_(50.0)
    with torch.inference_mode():
        trace = run_until_halted(model, make_batch(cfg))
    assert len(trace) == cfg.halt_max_steps
    assert not trace[-2][0].any() and trace[-1][0].all()


def test_training_halts_on_q_and_explores():
    cfg = small_config(halt_exploration_prob=0.0)
    model = build(cfg).train()
    with torch.no_grad():
        model.model.inner.q_head.bias.fill_(50.0)
    trace = run_until_halted(model, make_batch(cfg))
    assert len(trace) == 1  # q_halt > 0 halts at once

    explore = build(small_config(halt_exploration_prob=1.0)).train()
    with torch.no_grad():
        explore.model.inner.q_head.bias.fill_(50.0)
    trace = run_until_halted(explore, make_batch(cfg), generator=torch.Generator().manual_seed(3))
    assert not trace[0][0].any()  # every row must take at least 2 steps
    halted = torch.stack([h for h, _ in trace[: cfg.halt_max_steps]])
    steps = torch.stack([s for _, s in trace[: cfg.halt_max_steps]])
    assert halted.any(0).all()  # and each halts by halt_max_steps
    assert (steps[halted] >= 2).all()


def test_exploration_is_deterministic_with_a_generator():
    cfg = small_config(halt_exploration_prob=0.5, halt_max_steps=6, H_cycles=1, L_cycles=1)
    model = build(cfg).train()
    with torch.no_grad():
        model.model.inner.q_head.bias.fill_(50.0)
    batch = make_batch(cfg, n=12)
    runs = [run_until_halted(model, batch, generator=torch.Generator().manual_seed(7)) for _ in range(2)]
    assert [t[1].tolist() for t in runs[0]] == [t[1].tolist() for t in runs[1]]
    other = run_until_halted(model, batch, generator=torch.Generator().manual_seed(8))
    first = lambda run: [s.tolist() for _, s in run]  # noqa: E731
    assert first(other) != first(runs[0]) or len(other) != len(runs[0])


def test_halted_rows_are_replaced_from_the_new_batch():
    cfg = small_config(halt_max_steps=2)
    model = build(cfg).eval()
    a, b = make_batch(cfg, seed=1), make_batch(cfg, seed=2)
    with torch.inference_mode():
        carry = model.initial_carry(a)
        carry, *_ = model(carry=carry, batch=a)
        carry, *_ = model(carry=carry, batch=b)  # still in flight: keeps a's rows
        assert torch.equal(carry.current_data["inputs"], a["inputs"]) and carry.halted.all()
        carry, *_ = model(carry=carry, batch=b)  # all halted: rows come from b, steps restart at 1
        assert torch.equal(carry.current_data["inputs"], b["inputs"]) and (carry.steps == 1).all()


def test_metrics_count_only_halted_rows_with_labels():
    cfg = small_config(halt_max_steps=1)
    model = build(cfg).eval()
    batch = make_batch(cfg)
    batch["labels"][1] = IGNORE_LABEL_ID  # a padded row
    batch["labels"][0] = 0
    with torch.inference_mode():
        carry, loss, metrics, out, done = model(carry=model.initial_carry(batch), batch=batch, return_keys=("preds",))
    assert done and metrics["count"].item() == 2 and metrics["steps"].item() == 2
    correct0 = (out["preds"][0] == 0).float().mean()
    correct2 = (out["preds"][2][:-3] == batch["labels"][2][:-3]).float().mean()
    assert math.isclose(metrics["accuracy"].item(), (correct0 + correct2).item(), rel_tol=1e-6)


# --- training ---------------------------------------------------------------------------------------------------

def test_backward_reaches_weights_and_puzzle_rows_only_via_local_weights():
    cfg = small_config()
    model = build(cfg).train()
    batch = make_batch(cfg)
    carry, loss, metrics, _, _ = model(carry=model.initial_carry(batch), batch=batch,
                                       generator=torch.Generator().manual_seed(0))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    emb = model.model.puzzle_emb
    assert emb.local_weights.grad is not None and emb.local_weights.grad.abs().sum() > 0
    assert torch.equal(emb.local_ids, batch["puzzle_identifiers"])
    assert emb.weights.grad is None and not emb.weights.requires_grad
    assert not carry.z_H.requires_grad and not carry.z_L.requires_grad


def test_local_weights_stay_a_leaf_after_to_and_batch_change():
    cfg = small_config()
    model = build(cfg).to(torch.float32).train()
    emb = model.model.puzzle_emb
    assert emb.local_weights.is_leaf and emb.local_weights.requires_grad
    batch = make_batch(cfg, n=5)  # not cfg.batch_size
    _, loss, *_ = model(carry=model.initial_carry(batch), batch=batch)
    loss.backward()
    assert emb.local_weights.shape == (5, cfg.puzzle_emb_ndim) and emb.local_weights.grad is not None


def test_train_and_eval_give_the_same_first_step_outputs():
    cfg = small_config()
    model = build(cfg)
    batch = make_batch(cfg)
    model.train()
    _, loss_train, _, out_train, _ = model(carry=model.initial_carry(batch), batch=batch, return_keys=("logits",))
    model.eval()
    with torch.inference_mode():
        _, loss_eval, _, out_eval, _ = model(carry=model.initial_carry(batch), batch=batch, return_keys=("logits",))
    torch.testing.assert_close(out_train["logits"], out_eval["logits"])
    torch.testing.assert_close(loss_train.detach(), loss_eval)


def test_q_continue_loss_when_act_continue_is_on():
    cfg = small_config(no_ACT_continue=False)
    model = build(cfg).train()
    batch = make_batch(cfg)
    _, loss, metrics, _, _ = model(carry=model.initial_carry(batch), batch=batch)
    assert "q_continue_loss" in metrics
    expected = metrics["lm_loss"] + 0.5 * (metrics["q_halt_loss"] + metrics["q_continue_loss"])
    torch.testing.assert_close(loss.detach(), expected.to(loss.dtype))


@pytest.mark.parametrize("pos", ["rope", "learned"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_variants_run_and_agree_across_dtypes(pos, dtype):
    cfg = small_config(pos_encodings=pos, forward_dtype=dtype)
    model = build(cfg).eval()
    keys = set(model.state_dict())
    assert ("model.inner.embed_pos.embedding_weight" in keys) == (pos == "learned")
    batch = make_batch(cfg)
    with torch.inference_mode():
        _, loss, _, out, _ = model(carry=model.initial_carry(batch), batch=batch, return_keys=("logits",))
        ref = build(small_config(pos_encodings=pos)).eval()
        _, _, _, out32, _ = ref(carry=ref.initial_carry(batch), batch=batch, return_keys=("logits",))
    assert out["logits"].dtype == cfg.dtype and torch.isfinite(loss)
    tol = 1e-5 if dtype == "float32" else 0.15
    torch.testing.assert_close(out["logits"].float(), out32["logits"], atol=tol, rtol=tol)


def test_allocator_tuning_is_safe_to_call():
    from trm.model.runtime import tune_cpu_allocator

    first, second = tune_cpu_allocator(), tune_cpu_allocator()  # idempotent
    assert first == second
    if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
        assert first is True
    x = torch.randn(4096, 1024)  # large allocations still work afterwards
    assert torch.isfinite((x @ x.T).sum())


def test_reordered_qkv_cache_follows_weight_updates():
    cfg = small_config()
    model = build(cfg).eval()
    batch = make_batch(cfg)

    def logits(m):
        with torch.inference_mode():
            return m(carry=m.initial_carry(batch), batch=batch, return_keys=("logits",))[3]["logits"]

    before = logits(model)
    with torch.no_grad():  # an optimiser step changes the weight in place
        model.model.inner.L_level.layers[0].self_attn.qkv_proj.weight.mul_(1.5)
    after = logits(model)
    fresh = build(cfg).eval()
    fresh.load_state_dict(model.state_dict())
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, logits(fresh))
    model.train()  # training after an inference-mode eval reuses the cache in its no-grad cycles
    _, loss, *_ = model(carry=model.initial_carry(batch), batch=batch)
    loss.backward()


def test_traces_without_graph_breaks():
    """torch.compile(fullgraph=True) must see one graph in eval and in training (the trainer's compile=True)."""
    cfg = small_config(H_cycles=1, L_cycles=1, halt_max_steps=2)
    model = build(cfg)
    batch = make_batch(cfg)
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    model.eval()
    with torch.inference_mode():
        want = model(carry=model.initial_carry(batch), batch=batch, return_keys=("logits",))[3]["logits"]
        got = compiled(carry=model.initial_carry(batch), batch=batch, return_keys=("logits",))[3]["logits"]
    torch.testing.assert_close(got, want)
    model.train()
    _, loss, *_ = compiled(carry=model.initial_carry(batch), batch=batch)  # global RNG: traceable
    loss.backward()
    assert model.model.puzzle_emb.local_weights.grad is not None
    # with an explicit generator the draws run outside the graph and match eager mode
    loose = torch.compile(model, backend="eager")
    runs = [fn(carry=model.initial_carry(batch), batch=batch, generator=torch.Generator().manual_seed(5))[0].halted
            for fn in (model, loose)]
    assert torch.equal(runs[0], runs[1])
