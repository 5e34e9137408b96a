"""Optimisers for TRM: AdamATan2 for dense weights, sparse sign-SGD for puzzle embeddings, LR schedule, EMA.

    from trm.optim import AdamATan2, SparseSignSGD, lr_factor, EMA
    dense = AdamATan2(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    sparse = SparseSignSGD(model.model.inner.puzzle_emb, lr=1e-2, weight_decay=0.1, gather=None)
    f = lr_factor(step, warmup_steps=2000, total_steps=10_000, min_ratio=1.0)

AdamATan2 (TRM-SPEC section 8), per element, with t the optimiser step count:
    p *= 1 - lr*wd; m = lerp(m, g, 1-b1); v = lerp(v, g*g, 1-b2)
    p -= (lr / (1 - b1^t)) * atan2(m, sqrt(v) / sqrt(1 - b2^t))
On CUDA tensors the fused kernel of the `adam-atan2` package is used when it is importable; everywhere else
(and with `fused=False`) our PyTorch implementation of the same update. State names (`step`, `exp_avg`,
`exp_avg_sq`) match the package, so optimiser states move between the two.

No CUDA-only code path: the test suite runs everything on CPU; `tests/test_optim.py::test_fused_matches_ours`
compares the two on a GPU.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
from torch import nn

try:  # the CUDA kernel of the `adam-atan2` package (it cannot be built without CUDA)
    import adam_atan2_backend as _fused_backend  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - the usual case on CPU machines
    _fused_backend = None


def fused_available() -> bool:
    """True when the `adam-atan2` CUDA kernel is importable and a GPU is present."""
    return _fused_backend is not None and torch.cuda.is_available()


class AdamATan2(torch.optim.Optimizer):
    """Adam with atan2 in place of the epsilon-division (decoupled weight decay), as TRM-SPEC section 8.

    `fused=None` picks the package kernel for CUDA parameters when it is importable; `fused=False` forces our
    implementation (used to compare the two).
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.95),
        weight_decay: float = 0.1,
        fused: bool | None = None,
    ):
        if lr < 0:
            raise ValueError(f"AdamATan2: lr must be >= 0, got {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"AdamATan2: betas must lie in [0, 1), got {betas}")
        if weight_decay < 0:
            raise ValueError(f"AdamATan2: weight_decay must be >= 0, got {weight_decay}")
        if fused and _fused_backend is None:
            raise ValueError("AdamATan2: fused=True but the adam-atan2 package (adam_atan2_backend) is not importable")
        self.fused = fused
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure: Callable | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd = float(group["lr"]), float(group["weight_decay"])
            beta1, beta2 = group["betas"]
            fused_lists: tuple[list, list, list, list, list] = ([], [], [], [], [])
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise ValueError("AdamATan2 does not take sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                if self._use_fused(p):
                    if state["step"].device != p.device:  # load_state_dict leaves `step` where it was loaded
                        state["step"] = state["step"].to(p.device)
                    for lst, t in zip(fused_lists, (p, p.grad, state["exp_avg"], state["exp_avg_sq"], state["step"])):
                        lst.append(t)
                else:
                    _update(p, p.grad, state, lr, beta1, beta2, wd)
            if fused_lists[0]:
                torch._foreach_add_(fused_lists[4], 1)
                _fused_backend.adam_atan2_cuda_impl_(*fused_lists, lr, beta1, beta2, wd)
        return loss

    def _use_fused(self, p: torch.Tensor) -> bool:
        if self.fused is False or _fused_backend is None:
            return False
        return p.is_cuda


def _update(p: torch.Tensor, g: torch.Tensor, state: dict, lr: float, beta1: float, beta2: float, wd: float) -> None:
    """Our implementation of one AdamATan2 step for one tensor (in place)."""
    state["step"] += 1
    t = float(state["step"])
    m, v = state["exp_avg"], state["exp_avg_sq"]
    p.mul_(1 - lr * wd)
    m.lerp_(g, 1 - beta1)
    v.lerp_(g * g, 1 - beta2)
    bias1 = 1 - beta1**t
    bias2 = 1 - beta2**t
    denom = v.sqrt() / math.sqrt(bias2)
    p.add_(torch.atan2(m, denom), alpha=-lr / bias1)


# --------------------------------------------------------------------------------------------------------------
# Sparse sign-SGD for the puzzle-embedding table

Gather = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def all_gather_rows(ids: torch.Tensor, grads: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, grads) of every rank concatenated, through torch.distributed (initialised by the trainer)."""
    import torch.distributed as dist

    world = dist.get_world_size()
    all_ids = [torch.empty_like(ids) for _ in range(world)]
    all_grads = [torch.empty_like(grads) for _ in range(world)]
    dist.all_gather(all_ids, ids.contiguous())
    dist.all_gather(all_grads, grads.contiguous())
    return torch.cat(all_ids), torch.cat(all_grads)


class SparseSignSGD(torch.optim.Optimizer):
    """Sign-SGD with decoupled weight decay on the rows of a puzzle-embedding table that this step touched.

    `embedding` exposes `weights` (the persistent [num_ids, dim] table), `local_weights` (the batch's rows,
    with `.grad` after backward) and `local_ids` (their identifiers). `gather(ids, grads)` returns the rows
    of all ranks (`all_gather_rows` under torch.distributed; None = this process only). Gradients of equal ids
    are summed, then p = p * (1 - lr*wd) - lr * sign(grad) for those rows only.
    """

    def __init__(self, embedding: nn.Module, lr: float = 1e-2, weight_decay: float = 0.1, gather: Gather | None = None):
        for name in ("weights", "local_weights", "local_ids"):
            if not hasattr(embedding, name):
                raise ValueError(f"SparseSignSGD: the embedding module has no attribute {name!r}")
        if lr < 0 or weight_decay < 0:
            raise ValueError(f"SparseSignSGD: lr and weight_decay must be >= 0, got {lr}, {weight_decay}")
        self.embedding = embedding
        self.gather = gather
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        super().__init__([embedding.local_weights], dict(lr=lr, weight_decay=weight_decay))

    @torch.no_grad()
    def collect(self) -> None:
        """Set aside this micro-batch's (ids, grads) and clear the local gradient (gradient accumulation:
        the next micro-batch reuses the local rows for other ids). `step` uses what was collected."""
        local = self.embedding.local_weights
        if local.grad is None:
            return
        ids = self.embedding.local_ids.reshape(-1).to(torch.long).clone()
        self._pending.append((ids, local.grad.reshape(ids.shape[0], -1).clone()))
        local.grad = None

    @torch.no_grad()
    def step(self, closure: Callable | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.collect()
        pending, self._pending = self._pending, []
        if not pending:
            return loss
        group = self.param_groups[0]
        lr, wd = float(group["lr"]), float(group["weight_decay"])
        ids = torch.cat([p[0] for p in pending])
        grads = torch.cat([p[1] for p in pending])
        if self.gather is not None:
            ids, grads = self.gather(ids, grads)
        rows, inverse = torch.unique(ids, return_inverse=True)
        summed = torch.zeros(rows.shape[0], grads.shape[1], dtype=grads.dtype, device=grads.device)
        summed.index_add_(0, inverse, grads)
        table = self.embedding.weights
        updated = table[rows] * (1 - lr * wd) - lr * torch.sign(summed).to(table.dtype)
        table[rows] = updated
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self._pending = []
        local = self.embedding.local_weights
        if local.grad is not None:
            if set_to_none:
                local.grad = None
            else:
                local.grad.zero_()


# --------------------------------------------------------------------------------------------------------------
# Schedule and EMA


def lr_factor(step: int, warmup_steps: int, total_steps: int, min_ratio: float = 1.0) -> float:
    """Linear warm-up from 0 over `warmup_steps`, then cosine from 1 to `min_ratio` at `total_steps`.

    `step` counts optimiser steps from 1 as the reference does (the first step uses 1/warmup). The same
    factor multiplies both optimisers' base learning rates.
    """
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_ratio + max(0.0, (1 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))


class EMA:
    """Exponential moving average of a model's trainable parameters: shadow = mu*shadow + (1-mu)*p.

    Buffers (the puzzle-embedding table, the initial latents) are not averaged: `copy_to` loads the averaged
    parameters into a copy of the live model, whose buffers are the live ones.
    """

    def __init__(self, model: nn.Module, mu: float = 0.999):
        if not 0.0 <= mu < 1.0:
            raise ValueError(f"ema_rate must lie in [0, 1), got {mu}")
        self.mu = mu
        self.shadow = {name: p.detach().clone() for name, p in _named_trainable(model)}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for name, p in _named_trainable(model):
            self.shadow[name].lerp_(p.detach(), 1 - self.mu)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> nn.Module:
        """Write the averaged weights into `model` (pass a deep copy to keep the live weights)."""
        for name, p in _named_trainable(model):
            p.copy_(self.shadow[name])
        return model

    def state_dict(self) -> dict:
        return {"mu": self.mu, "shadow": {k: v.clone() for k, v in self.shadow.items()}}

    def load_state_dict(self, state: dict) -> None:
        missing = set(self.shadow) - set(state["shadow"])
        extra = set(state["shadow"]) - set(self.shadow)
        if missing or extra:
            raise ValueError(f"EMA state does not match the model: missing {sorted(missing)}, unexpected {sorted(extra)}")
        self.mu = float(state["mu"])
        for k, v in state["shadow"].items():
            self.shadow[k].copy_(v)


def _named_trainable(model: nn.Module):
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]
