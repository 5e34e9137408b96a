"""ACT loss head: stablemax cross-entropy + Q-halt BCE, and the per-step metrics (TRM-SPEC section 7).

    from trm.model import ModelConfig, TRM, LossHead
    model = LossHead(TRM(cfg))
    carry = model.initial_carry(batch)
    carry, loss, metrics, outputs, all_halted = model(carry=carry, batch=batch, return_keys=("preds",))
    (loss / global_batch_size).backward()
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from trm.model.trm import TRM, Carry

IGNORE_LABEL_ID = -100


def stablemax_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token -log p(label) under stablemax, in float64; 0 where mask is false.

    s(x) = 1/(1-x) for x < 0, x + 1 otherwise; p = s(x) / sum s(x). (1e-30 keeps 1/(1-x) finite at -inf.)
    """
    x = logits.to(torch.float64)
    s = torch.where(x < 0, 1.0 / (1.0 - x + 1e-30), x + 1.0)
    target = torch.where(mask, labels, 0).to(torch.long).unsqueeze(-1)
    logp = torch.log(s.gather(-1, target).squeeze(-1) / s.sum(-1))
    return -torch.where(mask, logp, 0.0)


def softmax_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token softmax cross-entropy in float32; 0 where mask is false."""
    target = torch.where(mask, labels, 0).to(torch.long)
    ce = F.cross_entropy(logits.to(torch.float32).flatten(0, -2), target.flatten(), reduction="none")
    return torch.where(mask, ce.view(labels.shape), 0.0)


LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "stablemax_cross_entropy": stablemax_cross_entropy,
    "softmax_cross_entropy": softmax_cross_entropy,
}


class LossHead(nn.Module):
    """Wraps a TRM (as `.model`, so state-dict keys read `model.inner.*`) and computes loss and metrics.

    forward returns (carry, loss, metrics, outputs, all_halted):
    - loss: sum over rows of the per-row mean token loss, + 0.5 * (q_halt BCE sum [+ q_continue BCE sum]);
    - metrics: 0-dim tensors summed over rows that halted at this step and have labels: count, accuracy,
      exact_accuracy, q_halt_accuracy, steps; plus lm_loss, q_halt_loss (and q_continue_loss) over all rows;
    - outputs: the detached `return_keys` among logits, q_halt_logits, q_continue_logits, preds.
    """

    def __init__(self, model: TRM, loss_type: str = "stablemax_cross_entropy") -> None:
        super().__init__()
        if loss_type not in LOSSES:
            raise ValueError(f"loss_type must be one of {sorted(LOSSES)}, got {loss_type!r}")
        self.model = model
        self.loss_type = loss_type
        self.loss_fn = LOSSES[loss_type]

    @property
    def config(self):
        return self.model.config

    def initial_carry(self, batch: dict[str, torch.Tensor]) -> Carry:
        return self.model.initial_carry(batch)

    def forward(self, carry: Carry, batch: dict[str, torch.Tensor], return_keys: Iterable[str] = (),
                generator: torch.Generator | None = None):
        carry, outputs = self.model(carry, batch, generator=generator)
        labels = carry.current_data["labels"]
        logits = outputs["logits"]

        with torch.no_grad():
            preds = torch.argmax(logits, dim=-1)
            outputs["preds"] = preds
            mask = labels != IGNORE_LABEL_ID
            counts = mask.sum(-1)
            divisor = counts.clamp_min(1).unsqueeze(-1)
            correct = mask & (preds == labels)
            seq_correct = correct.sum(-1) == counts
            valid = carry.halted & (counts > 0)
            metrics = {
                "count": valid.sum(),
                "accuracy": torch.where(valid, (correct.to(torch.float32) / divisor).sum(-1), 0).sum(),
                "exact_accuracy": (valid & seq_correct).sum(),
                "q_halt_accuracy": (valid & ((outputs["q_halt_logits"] >= 0) == seq_correct)).sum(),
                "steps": torch.where(valid, carry.steps, 0).sum(),
            }

        lm_loss = (self.loss_fn(logits, labels, mask) / divisor).sum()
        q_halt = outputs["q_halt_logits"]
        q_halt_loss = F.binary_cross_entropy_with_logits(q_halt, seq_correct.to(q_halt.dtype), reduction="sum")
        metrics["lm_loss"] = lm_loss.detach()
        metrics["q_halt_loss"] = q_halt_loss.detach()
        q_loss = q_halt_loss
        if "target_q_continue" in outputs:
            q_continue_loss = F.binary_cross_entropy_with_logits(
                outputs["q_continue_logits"], outputs["target_q_continue"], reduction="sum")
            metrics["q_continue_loss"] = q_continue_loss.detach()
            q_loss = q_loss + q_continue_loss
        loss = lm_loss + 0.5 * q_loss
        returned = {k: outputs[k].detach() for k in return_keys if k in outputs}
        return carry, loss, metrics, returned, carry.halted.all()
