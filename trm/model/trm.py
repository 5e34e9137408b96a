"""The Tiny Recursive Model with adaptive computation time (TRM-SPEC section 6).

    from trm.model import ModelConfig, TRM
    net = TRM(ModelConfig(hidden_size=64, num_heads=2, num_puzzle_identifiers=10, batch_size=4))
    carry = net.initial_carry(batch)
    carry, outputs = net(carry, batch)            # one ACT step; outputs: logits, q_halt_logits, q_continue_logits

Module names fix the state-dict keys: `inner.H_init`, `inner.L_init`, `inner.embed_tokens.embedding_weight`,
`inner.embed_pos.embedding_weight` (learned positions), `inner.puzzle_emb.weights`, `inner.lm_head.weight`,
`inner.q_head.{weight,bias}`, `inner.L_level.layers.<i>.{self_attn.{qkv_proj,o_proj},mlp.{gate_up_proj,down_proj}}.weight`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from trm.model.config import ModelConfig
from trm.model.layers import Block, Embedding, Linear, Reasoner, Rotary, trunc_normal_


@dataclass
class Carry:
    """State kept between ACT steps. Rows with `halted` set are replaced from the next batch."""

    z_H: torch.Tensor  # [B, total_len, D] forward dtype
    z_L: torch.Tensor  # [B, total_len, D]
    steps: torch.Tensor  # [B] int32: ACT steps taken by the row in flight
    halted: torch.Tensor  # [B] bool
    current_data: dict[str, torch.Tensor]  # the batch rows being worked on


class PuzzleEmbedding(nn.Module):
    """Per-puzzle vectors trained by sparse sign-SGD (trm.optim), not by autograd on the table.

    `weights` [num_ids, dim] is a persistent float32 buffer (zero init). In training, forward copies the
    batch's rows into `local_weights` [B, dim] (a non-persistent leaf buffer with requires_grad) and their
    ids into `local_ids` [B] int32; the loss gradient lands in `local_weights.grad`, which the optimiser turns
    into updates of `weights[local_ids]`. The two local buffers keep their identity across steps; they are
    re-created only when the batch size or device changes (or after `.to()`), so look them up by attribute.
    In eval mode forward reads `weights[ids]` directly.
    """

    def __init__(self, num_ids: int, dim: int, batch_size: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.dtype = dtype
        self.register_buffer("weights", torch.zeros(num_ids, dim), persistent=True)
        self.register_buffer("local_weights", torch.zeros(batch_size, dim, requires_grad=True), persistent=False)
        self.register_buffer("local_ids", torch.zeros(batch_size, dtype=torch.int32), persistent=False)

    def _apply(self, fn, recurse: bool = True):
        # .to()/.cuda() would turn the grad-requiring buffer into a non-leaf copy; keep it an optimisable leaf.
        out = super()._apply(fn, recurse)
        local = self.local_weights
        if not (local.is_leaf and local.requires_grad) and local.is_floating_point():
            self.local_weights = local.detach().requires_grad_(True)
        return out

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self.weights[ids].to(self.dtype)
        n, dim = ids.shape[0], self.weights.shape[1]
        local = self.local_weights
        if local.shape[0] != n or local.device != self.weights.device or not (local.is_leaf and local.requires_grad):
            self.local_weights = torch.zeros(n, dim, device=self.weights.device, requires_grad=True)
            self.local_ids = torch.zeros(n, dtype=torch.int32, device=self.weights.device)
        with torch.no_grad():
            self.local_weights.copy_(self.weights[ids])
            self.local_ids.copy_(ids)
        return self.local_weights.to(self.dtype)


class RecursiveCore(nn.Module):
    """One ACT step of the recursion: embeddings, H_cycles x (L_cycles latent updates + 1 answer update), heads."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = c = config
        self.dtype = c.dtype
        self.prefix_len = c.prefix_len
        self.embed_scale = math.sqrt(c.hidden_size)
        self.embed_tokens = Embedding(c.vocab_size, c.hidden_size, std=1.0 / self.embed_scale, dtype=self.dtype)
        self.lm_head = Linear(c.hidden_size, c.vocab_size)
        self.q_head = Linear(c.hidden_size, 2, bias=True)
        if c.puzzle_emb_ndim > 0:
            self.puzzle_emb = PuzzleEmbedding(c.num_puzzle_identifiers, c.puzzle_emb_ndim, c.batch_size, self.dtype)
        if c.pos_encodings == "rope":
            self.rotary = Rotary(c.head_dim, c.total_len, c.rope_theta)
        else:
            self.embed_pos = Embedding(c.total_len, c.hidden_size, std=1.0 / self.embed_scale, dtype=self.dtype)
        rope = c.pos_encodings == "rope"
        self.L_level = Reasoner([Block(c.hidden_size, c.num_heads, c.mlp_inter, c.rms_norm_eps, rope)
                                 for _ in range(c.L_layers)])
        self.register_buffer("H_init", trunc_normal_(torch.empty(c.hidden_size), std=1.0).to(self.dtype))
        self.register_buffer("L_init", trunc_normal_(torch.empty(c.hidden_size), std=1.0).to(self.dtype))
        with torch.no_grad():  # start Q near "never halt" so ACT bootstraps from full-depth answers
            self.q_head.weight.zero_()
            self.q_head.bias.fill_(-5.0)

    def rope(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The RoPE half tables (cos, sin) [total_len, head_dim/2], or None for learned positions."""
        if self.config.pos_encodings != "rope":
            return None
        return self.rotary.cos, self.rotary.sin

    def embed(self, inputs: torch.Tensor, puzzle_ids: torch.Tensor) -> torch.Tensor:
        c = self.config
        x = self.embed_tokens(inputs.to(torch.int32))
        # the Trelis fork's regularisers, in training only; their draws come from torch's global RNG (saved in
        # checkpoints), and none are made when the rates are 0
        if self.training and c.grid_token_dropout > 0:
            x = F.dropout(x, p=c.grid_token_dropout, training=True)
        if c.puzzle_emb_ndim > 0:
            p = self.puzzle_emb(puzzle_ids)
            if self.training and c.puzzle_emb_dropout > 0:
                keep = torch.rand(p.shape[0], device=p.device) >= c.puzzle_emb_dropout
                p = p * (keep.to(p.dtype) / (1.0 - c.puzzle_emb_dropout)).unsqueeze(-1)
            pad = self.prefix_len * c.hidden_size - p.shape[-1]
            if pad > 0:
                p = F.pad(p, (0, pad))
            x = torch.cat((p.view(-1, self.prefix_len, c.hidden_size), x), dim=1)
        if c.pos_encodings == "learned":
            x = 0.707106781 * (x + self.embed_pos.table())
        return self.embed_scale * x

    def empty_latents(self, batch_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (batch_size, self.config.total_len, self.config.hidden_size)
        return (torch.zeros(shape, dtype=self.dtype, device=device),
                torch.zeros(shape, dtype=self.dtype, device=device))

    def forward(self, z_H: torch.Tensor, z_L: torch.Tensor, data: dict[str, torch.Tensor]):
        """Returns (z_H, z_L) detached, logits [B, seq_len, V] and q_halt, q_continue [B] in float32."""
        c = self.config
        rope = self.rope()
        x = self.embed(data["inputs"], data["puzzle_identifiers"])
        f = self.L_level
        with torch.no_grad():  # all but the last H cycle run without gradients
            for _ in range(c.H_cycles - 1):
                inject = z_H + x
                for _ in range(c.L_cycles):
                    z_L = f(z_L, inject, rope)
                z_H = f(z_H, z_L, rope)
        inject = z_H + x
        for _ in range(c.L_cycles):
            z_L = f(z_L, inject, rope)
        z_H = f(z_H, z_L, rope)
        logits = self.lm_head(z_H[:, self.prefix_len:])
        q = self.q_head(z_H[:, 0]).to(torch.float32)
        return z_H.detach(), z_L.detach(), logits, q[:, 0], q[:, 1]


def _draws(steps: torch.Tensor, max_steps: int, generator: torch.Generator | None):
    """Exploration draws, in the reference's order: U(0,1) per row, then a minimum step count in 2..max_steps."""
    uniform = torch.rand(steps.shape, generator=generator, device=steps.device)
    minimum = torch.randint(2, max_steps + 1, steps.shape, generator=generator, device=steps.device, dtype=steps.dtype)
    return uniform, minimum


# torch.compile cannot trace an explicit Generator; run those draws eagerly (one small graph break)
_draws_outside_compile = torch.compiler.disable(_draws)


class TRM(nn.Module):
    """ACT wrapper: keeps a carry of rows in flight, resets halted rows from the batch, decides halting."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if not isinstance(config, ModelConfig):
            raise ValueError(f"TRM needs a ModelConfig, got {type(config).__name__} (use ModelConfig.from_dict)")
        self.config = config
        self.inner = RecursiveCore(config)

    @property
    def puzzle_emb(self) -> PuzzleEmbedding:
        return self.inner.puzzle_emb

    def initial_carry(self, batch: dict[str, torch.Tensor]) -> Carry:
        """An all-halted carry: the first call replaces every row by the batch's."""
        n = batch["inputs"].shape[0]
        device = self.inner.H_init.device
        z_H, z_L = self.inner.empty_latents(n, device)
        return Carry(z_H=z_H, z_L=z_L,
                     steps=torch.zeros(n, dtype=torch.int32, device=device),
                     halted=torch.ones(n, dtype=torch.bool, device=device),
                     current_data={k: torch.empty_like(v, device=device) for k, v in batch.items()})

    def forward(self, carry: Carry, batch: dict[str, torch.Tensor],
                generator: torch.Generator | None = None) -> tuple[Carry, dict[str, torch.Tensor]]:
        """One ACT step. Exploration draws come from `generator` (else the global RNG of the device)."""
        c = self.config
        halted = carry.halted
        reset = halted.view(-1, 1, 1)
        z_H = torch.where(reset, self.inner.H_init, carry.z_H)
        z_L = torch.where(reset, self.inner.L_init, carry.z_L)
        steps = torch.where(halted, 0, carry.steps)
        data = {}
        for k, v in carry.current_data.items():
            if k not in batch:
                raise ValueError(f"batch is missing {k!r} (the carry was made from a batch with keys {sorted(carry.current_data)})")
            data[k] = torch.where(halted.view((-1,) + (1,) * (v.ndim - 1)), batch[k], v)

        z_H, z_L, logits, q_halt, q_continue = self.inner(z_H, z_L, data)
        outputs = {"logits": logits, "q_halt_logits": q_halt, "q_continue_logits": q_continue}

        with torch.no_grad():
            steps = steps + 1
            limit = c.halt_max_steps if self.training or c.halt_max_steps_eval is None else c.halt_max_steps_eval
            last = steps >= limit
            new_halted = last
            if self.training and c.halt_max_steps > 1:
                new_halted = new_halted | ((q_halt > 0) if c.no_ACT_continue else (q_halt > q_continue))
                draw = _draws if generator is None else _draws_outside_compile
                uniform, minimum = draw(steps, c.halt_max_steps, generator)
                min_steps = (uniform < c.halt_exploration_prob) * minimum
                new_halted = new_halted & (steps >= min_steps)
                if not c.no_ACT_continue:  # bootstrap target for the q_continue loss (no replay buffer)
                    _, _, _, next_halt, next_continue = self.inner(z_H, z_L, data)
                    outputs["target_q_continue"] = torch.sigmoid(
                        torch.where(last, next_halt, torch.maximum(next_halt, next_continue)))
        return Carry(z_H=z_H, z_L=z_L, steps=steps, halted=new_halted, current_data=data), outputs
