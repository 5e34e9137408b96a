"""Record the reference code's training-mode ACT numbers (halting with exploration, losses, gradients) as a fixture.

    # a checkout of SamsungSAILMontreal/TinyRecursiveModels (its models/ folder is what is imported; it needs
    # torch, pydantic and einops) and ../shared/reference-fixtures (the tiny weights and batch)
    .venv/bin/python bench/make_training_fixture.py --reference-dir ../TinyRecursiveModels \
        --fixtures ../shared/reference-fixtures --output tests/fixtures/reference_training_mode.pt

tests/test_model_parity.py::test_training_mode_matches_reference_fixture runs OUR model through the same
`trace()` below and compares it with the saved numbers, so CI needs no reference code. With TRM_REFERENCE_DIR set,
test_reference_code_reproduces_the_fixture also reruns this generator on the reference and checks the file.

The reference code is imported at run time from --reference-dir; nothing of it is copied here. What runs: the
reference's loss head around its ACT model, built from the fixture's model config (halt_max_steps 4) with
halt_exploration_prob 0.5 (no_ACT_continue true, as in the fixture config: a row halts when q_halt > 0 and the
exploration draws allow it; the reference's no_ACT_continue false path fails at that commit, so it is not
recorded), loaded with trm_tiny_state_dict.pt, in training mode on CPU in float32. Two scenarios:

- `q_halt`: the halting bias of q_head is set so that at the first step two rows want to halt and two do not
  (value saved); exploration then overrides some of them, so both the Q decision and the exploration draws
  (from the global torch RNG, seeded right before the first step) decide who halts.
- `exploration`: halting bias 3.0, every row's Q says halt, the exploration draws alone keep rows going.
- 8 ACT steps; step k feeds the fixture batch with its rows in another order (`orders[k]`) and other puzzle
  identifiers (`identifiers[k]`), so a row that continues must keep its old data and a halted row must take the
  new one. Each step: gradients zeroed, forward, backward of the loss.

Saved per step: halted, steps, loss (float64), metrics, q_halt/q_continue logits, preds (uint8), local_ids and
the puzzle-embedding gradient `local_weights.grad`; per parameter two projections of its gradient onto fixed
cos/sin directions (`projections`, [n_params, 2] float64) and the sum of |gradient x direction| (`scales`, the
size an error is measured against). For `q_halt` also every parameter's gradient summed over the 8 steps
(`grad_sum`, float32). Numbers only: about 430 KB.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import sys
from pathlib import Path

import torch

STEPS = 8
EXPLORATION = 0.5
# halt_bias None: chosen so that the first step's Q decisions split two and two; a number: every row's Q says halt
SCENARIOS = {"q_halt": {"seed": 123, "halt_bias": None}, "exploration": {"seed": 5, "halt_bias": 3.0}}


def directions(n: int) -> torch.Tensor:
    """Two fixed directions [2, n] (float64) for gradient projections; any implementation can rebuild them."""
    i = torch.arange(n, dtype=torch.float64)
    return torch.stack([torch.cos(0.6180339887 * i + 0.5), torch.sin(1.4142135624 * i + 0.25)])


def step_batches(base: dict[str, torch.Tensor], num_ids: int) -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
    """(orders [STEPS, B], identifiers [STEPS, B], the batches): the base rows rolled by k, identifiers moved by k."""
    b = base["inputs"].shape[0]
    orders = torch.stack([torch.roll(torch.arange(b), k) for k in range(STEPS)])
    first = base["puzzle_identifiers"].to(torch.int64)
    ids = torch.stack([(first[orders[k]] - 1 + k) % (num_ids - 1) + 1 for k in range(STEPS)]).to(torch.int32)
    batches = [{"inputs": base["inputs"][orders[k]], "labels": base["labels"][orders[k]],
                "puzzle_identifiers": ids[k]} for k in range(STEPS)]
    return orders, ids, batches


def trace(model: torch.nn.Module, batches: list[dict], seed: int, keep_grads: bool = False) -> dict:
    """Run the loss head `model` (train mode) over the batches from a fresh carry; the numbers of every step."""
    model.train()
    emb = model.model.puzzle_emb
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    dirs = {n: directions(p.numel()) for n, p in params}
    grad_sum = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in params}
    out: dict = {"names": [n for n, _ in params], "steps": []}
    torch.manual_seed(seed)
    carry = model.initial_carry(batches[0])
    for batch in batches:
        model.zero_grad(set_to_none=True)
        emb.local_weights.grad = None
        carry, loss, metrics, outputs, _ = model(carry=carry, batch=batch,
                                                 return_keys=["q_halt_logits", "q_continue_logits", "preds"])
        loss.backward()
        projections, scales = [], []
        for n, p in params:
            g = p.grad.detach().to(torch.float64).reshape(-1) if p.grad is not None else torch.zeros(p.numel(), dtype=torch.float64)
            projections.append(dirs[n] @ g)
            scales.append((dirs[n].abs() @ g.abs()))
            grad_sum[n] += g.view_as(p)
        record = {
            "halted": carry.halted.clone(), "act_steps": carry.steps.clone(), "loss": loss.detach().to(torch.float64),
            "metrics": {k: v.detach().clone() for k, v in metrics.items()},
            "q_halt_logits": outputs["q_halt_logits"].float().clone(),
            "q_continue_logits": outputs["q_continue_logits"].float().clone(),
            "preds": outputs["preds"].to(torch.uint8).clone(),
            "local_ids": emb.local_ids.clone(),
            "local_grad": (emb.local_weights.grad.detach().float().clone() if emb.local_weights.grad is not None
                           else torch.zeros(emb.local_weights.shape)),
            "projections": torch.stack(projections), "scales": torch.stack(scales),
        }
        out["steps"].append(record)
    if keep_grads:
        out["grad_sum"] = {n: g.to(torch.float32) for n, g in grad_sum.items()}
    return out


# ---------------------------------------------------------------------------------------------- the reference


def _one_class(module, attr: str) -> type:
    found = [c for _, c in inspect.getmembers(module, inspect.isclass)
             if c.__module__ == module.__name__ and issubclass(c, torch.nn.Module) and hasattr(c, attr)]
    if len(found) != 1:
        raise ValueError(f"{module.__file__}: expected one nn.Module class with `{attr}`, found {found}")
    return found[0]


def reference_model(ref_dir: Path, fixtures: Path) -> torch.nn.Module:
    """The reference's loss head around its ACT model (imported from ref_dir) with the fixture weights."""
    if not (ref_dir / "models" / "recursive_reasoning" / "trm.py").is_file():
        raise ValueError(f"--reference-dir {ref_dir}: no models/recursive_reasoning/trm.py (a checkout of the reference)")
    if str(ref_dir) not in sys.path:
        sys.path.insert(0, str(ref_dir))
    model_cls = _one_class(importlib.import_module("models.recursive_reasoning.trm"), "initial_carry")
    head_cls = _one_class(importlib.import_module("models.losses"), "initial_carry")
    config = json.loads((fixtures / "config.json").read_text())
    model_config = {**config["model_config"], "halt_exploration_prob": EXPLORATION}
    head = head_cls(model_cls(model_config), loss_type=config["loss"]["loss_type"])
    state = torch.load(fixtures / "trm_tiny_state_dict.pt", map_location="cpu", weights_only=True)
    head.load_state_dict(state, strict=True)
    return head


def halt_bias(model: torch.nn.Module, batch: dict) -> float:
    """The q_head halting bias that splits the first step's halting decisions two and two (rounded)."""
    with torch.no_grad():
        model.model.inner.q_head.bias[0] = 0.0
        model.train()
        _, _, _, outputs, _ = model(carry=model.initial_carry(batch), batch=batch, return_keys=["q_halt_logits"])
    halt = outputs["q_halt_logits"].double().sort().values
    return round(float(-(halt[1] + halt[2]) / 2), 4)


def generate(ref_dir: Path, fixtures: Path) -> dict:
    base = torch.load(fixtures / "trm_tiny_batch.pt", map_location="cpu", weights_only=True)
    config = json.loads((fixtures / "config.json").read_text())
    num_ids = int(config["model_config"]["num_puzzle_identifiers"])
    orders, ids, batches = step_batches(base, num_ids)
    result = {"format": 1, "steps_per_scenario": STEPS, "halt_exploration_prob": EXPLORATION,
              "torch": str(torch.__version__), "orders": orders, "identifiers": ids, "scenarios": {}}
    for name, spec in SCENARIOS.items():
        model = reference_model(ref_dir, fixtures)
        bias = spec["halt_bias"] if spec["halt_bias"] is not None else halt_bias(model, batches[0])
        with torch.no_grad():
            model.model.inner.q_head.bias[0] = bias
        numbers = trace(model, batches, spec["seed"], keep_grads=(name == "q_halt"))
        result["scenarios"][name] = {"seed": spec["seed"], "halt_bias": bias, **numbers}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference-dir", required=True, type=Path, help="a checkout of the reference code")
    parser.add_argument("--fixtures", required=True, type=Path, help="../shared/reference-fixtures")
    parser.add_argument("--output", required=True, type=Path, help="where to write the .pt file")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    result = generate(args.reference_dir.resolve(), args.fixtures)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_suffix(".tmp")
    torch.save(result, tmp)
    tmp.replace(args.output)
    for name, sc in result["scenarios"].items():
        halts = ["".join("H" if h else "." for h in s["halted"].tolist()) for s in sc["steps"]]
        print(f"{name}: halting bias {sc['halt_bias']}, halted per step {' '.join(halts)}, "
              f"losses {[round(s['loss'].item(), 4) for s in sc['steps']]}")
    print(f"wrote {args.output} ({args.output.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
