"""Building blocks of the TRM network: init, casted linear/embedding, RoPE, attention, SwiGLU, post-norm block.

Parameters are stored in float32 and cast to the activation dtype at use, so one set of weights serves
float32, bfloat16 and float16 forwards. Attention runs flash-attn when it is importable and the tensors are
CUDA bf16/fp16, else `torch.nn.functional.scaled_dot_product_attention` (CPU and everything else);
`set_attention_backend(model, "cudnn")` pins SDPA to one kernel instead (flash, cudnn, efficient, math).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

try:  # optional CUDA kernels; never required
    from flash_attn_interface import flash_attn_func as _flash_attn  # type: ignore[import-not-found]
except ImportError:
    try:
        from flash_attn import flash_attn_func as _flash_attn  # type: ignore[import-not-found]
    except ImportError:
        _flash_attn = None

FLASH_DTYPES = (torch.bfloat16, torch.float16)
# `sdpa_backend` names -> torch.nn.attention.SDPBackend members; "auto" lets SDPA choose (flash-attn first when
# installed). CPU has only the flash and math kernels: there the other names fall back to "auto".
SDPA_BACKENDS = {"flash": "FLASH_ATTENTION", "cudnn": "CUDNN_ATTENTION", "efficient": "EFFICIENT_ATTENTION",
                 "math": "MATH"}
CPU_SDPA_BACKENDS = ("flash", "math")


def flash_available(x: torch.Tensor) -> bool:
    """True when flash-attn is installed and `x` is a CUDA bf16/fp16 tensor."""
    return _flash_attn is not None and x.is_cuda and x.dtype in FLASH_DTYPES


def set_attention_backend(model: nn.Module, name: str) -> int:
    """Route every Attention module of `model` through one SDPA kernel (`name`: "auto" or a key of
    SDPA_BACKENDS); returns how many modules were set. The choice is a module attribute, so torch.compile
    traces it into the graph (and guards on it)."""
    if name != "auto" and name not in SDPA_BACKENDS:
        raise ValueError(f"sdpa backend must be auto or one of {sorted(SDPA_BACKENDS)}, got {name!r}")
    count = 0
    for module in model.modules():
        if isinstance(module, Attention):
            module.sdpa_backend = name
            count += 1
    return count


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str) -> torch.Tensor:
    """scaled_dot_product_attention, restricted to `backend` where the device has that kernel."""
    if backend == "auto" or (not q.is_cuda and backend not in CPU_SDPA_BACKENDS):
        return F.scaled_dot_product_attention(q, k, v)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(getattr(SDPBackend, SDPA_BACKENDS[backend])):
        return F.scaled_dot_product_attention(q, k, v)


@torch.no_grad()
def trunc_normal_(tensor: torch.Tensor, std: float = 1.0, bound: float = 2.0,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Fill `tensor` with a normal cut at +-bound standard deviations whose *resulting* std is `std`.

    torch.nn.init.trunc_normal_ keeps the std of the untruncated normal; like JAX we scale the draw up by
    1/sqrt(var of the standard normal truncated to [-bound, bound]) so the truncated samples have std `std`.
    Sampling is by inverse CDF: u ~ U(erf(-b/sqrt2), erf(b/sqrt2)), x = sqrt2 * erfinv(u).
    """
    if std == 0:
        return tensor.zero_()
    z = math.erf(bound / math.sqrt(2.0))  # P(|N(0,1)| < bound)
    pdf = math.exp(-0.5 * bound * bound) / math.sqrt(2.0 * math.pi)
    unit_var = 1.0 - 2.0 * bound * pdf / z  # variance of N(0,1) truncated symmetrically at +-bound
    scale = std / math.sqrt(unit_var)
    work = tensor if tensor.dtype in (torch.float32, torch.float64) else torch.empty_like(tensor, dtype=torch.float32)
    work.uniform_(-z, z, generator=generator).erfinv_().mul_(math.sqrt(2.0) * scale)
    work.clamp_(-bound * scale, bound * scale)
    if work is not tensor:
        tensor.copy_(work)
    return tensor


def rms_norm(x: torch.Tensor, eps: float, inplace: bool = False) -> torch.Tensor:
    """Weightless RMS norm over the last dim, x / sqrt(mean(x^2) + eps), in float32, returned in x's dtype.

    One reduction pass (vector_norm) and one multiply, instead of square, mean, add, rsqrt, multiply.
    """
    xf = x if x.dtype == torch.float32 else x.float()
    scale = torch.linalg.vector_norm(xf, dim=-1, keepdim=True, dtype=torch.float32)
    scale = torch.rsqrt(scale.square() / x.shape[-1] + eps)
    if x.dtype != torch.float32:
        return (xf * scale).to(x.dtype)
    return xf.mul_(scale) if inplace else xf * scale


class Linear(nn.Module):
    """y = x W^T (+ b); W [out, in] truncated normal with std 1/sqrt(in), b zero; cast to x's dtype."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(trunc_normal_(torch.empty(out_features, in_features), std=in_features ** -0.5))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight if self.weight.dtype == x.dtype else self.weight.to(x.dtype)
        b = self.bias
        if b is not None and b.dtype != x.dtype:
            b = b.to(x.dtype)
        return F.linear(x, w, b)


class Embedding(nn.Module):
    """Lookup table [num, dim] (`embedding_weight`), truncated normal with the given std, cast at use."""

    def __init__(self, num: int, dim: int, std: float, dtype: torch.dtype) -> None:
        super().__init__()
        self.dtype = dtype
        self.embedding_weight = nn.Parameter(trunc_normal_(torch.empty(num, dim), std=std))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.embedding_weight.to(self.dtype))

    def table(self) -> torch.Tensor:
        return self.embedding_weight.to(self.dtype)


class Rotary(nn.Module):
    """RoPE tables for `positions` positions: cos/sin of position * theta^(-2i/head_dim), i < head_dim/2.

    The usual full tables are cat(freqs, freqs) with rotate-half; both halves are equal, so we keep one half
    (non-persistent float32 buffers, computed once).
    """

    def __init__(self, head_dim: int, positions: int, theta: float) -> None:
        super().__init__()
        inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        angles = torch.outer(torch.arange(positions, dtype=torch.float32), inv)  # [S, head_dim/2]
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on x [..., S, D] whose head dims are *pair-interleaved*; half tables cos/sin [S, D/2]; float32 math.

    Rotate-half RoPE turns the pair (x[i], x[i + D/2]) by angle i. Here the input holds that pair at
    (2i, 2i+1) (Attention permutes the q/k rows of its projection so, see `pair_order`), and the output keeps
    that order. The permutation is the same for q and k, so every q.k product, and attention, is unchanged.
    Eager mode rotates with one complex multiply reading the strided q/k views in place; under torch.compile
    (inductor has no complex codegen) the same numbers come from real arithmetic. Input strides are free as
    long as the last dim is contiguous; the output is a new contiguous tensor in x's dtype.
    """
    dtype = x.dtype
    pairs = x.unflatten(-1, (-1, 2))  # [..., S, D/2, 2]
    if torch.compiler.is_compiling():
        x1, x2 = pairs[..., 0].float(), pairs[..., 1].float()
        out = torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    else:
        if dtype != torch.float32:
            pairs = pairs.float()
        if pairs.stride(-1) != 1 or any(st % 2 for st in pairs.stride()[:-1]) or pairs.storage_offset() % 2:
            pairs = pairs.contiguous()
        z, table = torch.view_as_complex(pairs), torch.complex(cos, sin)
        if torch.is_grad_enabled() and z.requires_grad:
            z = (z * table).contiguous()
        else:  # write the product straight into a contiguous buffer (SDPA is faster on contiguous q/k)
            z = torch.mul(z, table, out=torch.empty(z.shape, dtype=z.dtype, device=z.device))
        out = torch.view_as_real(z)
    out = out.flatten(-2)
    return out if dtype == torch.float32 else out.to(dtype)


def pair_order(num_heads: int, head_dim: int) -> torch.Tensor:
    """Row order of a [q; k; v] projection that puts each RoPE pair (i, i + head_dim/2) of q and k side by side."""
    half = head_dim // 2
    within = torch.stack((torch.arange(half), torch.arange(half) + half), dim=-1).flatten()  # 0, h, 1, h+1, ...
    qk = (torch.arange(2 * num_heads)[:, None] * head_dim + within).flatten()
    v = torch.arange(2 * num_heads * head_dim, 3 * num_heads * head_dim)
    return torch.cat((qk, v))


def interleaved_to_half(x: torch.Tensor) -> torch.Tensor:
    """Pair-interleaved head dims [..., D] back to rotate-half order (for tests and debugging)."""
    return x.unflatten(-1, (-1, 2)).transpose(-1, -2).flatten(-2)


def half_to_interleaved(x: torch.Tensor) -> torch.Tensor:
    """Rotate-half order [..., D] to pair-interleaved order."""
    return x.unflatten(-1, (2, -1)).transpose(-1, -2).flatten(-2)


class Attention(nn.Module):
    """Bidirectional multi-head attention with a fused qkv projection and optional RoPE.

    With RoPE the q/k rows of `qkv_proj.weight` are read in `pair_order` (a gather of the small weight, not of
    activations), so RoPE needs no copy of q/k; the stored weight keeps the reference layout.
    """

    def __init__(self, hidden_size: int, num_heads: int, rope: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.qkv_proj = Linear(hidden_size, 3 * hidden_size)
        self.o_proj = Linear(hidden_size, hidden_size)
        self.register_buffer("qkv_order", pair_order(num_heads, self.head_dim) if rope else None, persistent=False)
        self._ordered: tuple[tuple, torch.Tensor] | None = None  # no-grad cache of the reordered weight
        self.sdpa_backend = "auto"  # set_attention_backend

    def qkv_weight(self, dtype: torch.dtype) -> torch.Tensor:
        """qkv_proj.weight in RoPE pair order and `dtype`; cached while the weight is unchanged and no
        gradient is recorded (with autograd the gather is part of the graph, so it is redone per call)."""
        w = self.qkv_proj.weight
        if self.qkv_order is None:
            return w.to(dtype)
        if torch.compiler.is_compiling() or (torch.is_grad_enabled() and w.requires_grad) or w.is_inference():
            return w.index_select(0, self.qkv_order).to(dtype)
        key = (w.data_ptr(), w._version, w.device, dtype)
        if self._ordered is None or self._ordered[0] != key:
            with torch.no_grad():
                self._ordered = (key, w.index_select(0, self.qkv_order).to(dtype))
        return self._ordered[1]

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        b, s, _ = x.shape
        h = self.num_heads
        if (rope is None) != (self.qkv_order is None):
            raise ValueError("Attention: RoPE tables must be given exactly when the module was built with rope=True")
        w = self.qkv_weight(x.dtype)
        qkv = F.linear(x, w).view(b, s, 3 * h, self.head_dim).transpose(1, 2)  # [B, 3H, S, Dh] view
        # split, not slicing: the backward of a split is one concatenation, while each slice would zero-fill a
        # full-size gradient and add them up
        qk, v = qkv.split((2 * h, h), dim=1)
        if rope is not None:
            qk = apply_rope(qk, *rope)  # contiguous [B, 2H, S, Dh]
        q, k = qk.split(h, dim=1)
        v = v.contiguous()
        if self.sdpa_backend == "auto" and flash_available(q):
            out = _flash_attn(*(t.transpose(1, 2).contiguous() for t in (q, k, v)), causal=False)
            if isinstance(out, tuple):  # some flash-attn versions also return the log-sum-exp
                out = out[0]
        else:
            out = _sdpa(q, k, v, self.sdpa_backend).transpose(1, 2)
        return self.o_proj(out.reshape(b, s, h * self.head_dim))


class SwiGLU(nn.Module):
    """down(silu(gate) * up) with [gate; up] = gate_up_proj(x)."""

    def __init__(self, hidden_size: int, inter: int) -> None:
        super().__init__()
        self.gate_up_proj = Linear(hidden_size, 2 * inter)
        self.down_proj = Linear(inter, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        if torch.is_grad_enabled() and (gate.requires_grad or up.requires_grad):
            return self.down_proj(F.silu(gate) * up)
        return self.down_proj(F.silu(gate, inplace=True).mul_(up))  # no autograd: in place in the fresh buffer


class Block(nn.Module):
    """Post-norm transformer block: h = norm(h + attn(h)); h = norm(h + mlp(h))."""

    def __init__(self, hidden_size: int, num_heads: int, inter: int, eps: float, rope: bool = True) -> None:
        super().__init__()
        self.self_attn = Attention(hidden_size, num_heads, rope)
        self.mlp = SwiGLU(hidden_size, inter)
        self.eps = eps

    def forward(self, h: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        if torch.is_grad_enabled():
            h = rms_norm(h + self.self_attn(h, rope), self.eps)
            return rms_norm(h + self.mlp(h), self.eps)
        # no autograd: add the residual into the fresh sublayer output and normalise it in place
        h = rms_norm(self.self_attn(h, rope).add_(h), self.eps, inplace=True)
        return rms_norm(self.mlp(h).add_(h), self.eps, inplace=True)


class Reasoner(nn.Module):
    """The shared latent-update network f(h, x): the blocks applied in turn to h + x."""

    def __init__(self, blocks: list[Block]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(blocks)

    def forward(self, h: torch.Tensor, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        h = h + x
        for block in self.layers:
            h = block(h, rope)
        return h
