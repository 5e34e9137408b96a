"""Loading reference `step_<N>` checkpoints with their all_config.yaml (trm.model.reference).

    .venv/bin/python -m pytest -q tests/test_reference_checkpoint.py
"""

from __future__ import annotations

import json
import logging
import pickle

import pytest
import torch
import yaml

from trm.model import LossHead, ModelConfig, TRM, load_reference_checkpoint, load_reference_state_dict
from trm.model.reference import read_reference_config

TABLE = "model.inner.puzzle_emb.weights"


class NotATensor:  # pickled into a file to check that loading never unpickles arbitrary objects
    def __reduce__(self):
        return (print, ("this would run on load",))


def write_run(tmp_path, fixtures_dir, prefix: str, name: str = "step_1200", global_batch_size: int = 4):
    """A reference-style run folder: step_<N> (bare state dict) and all_config.yaml with an arch section."""
    fixture_config = json.loads((fixtures_dir / "config.json").read_text())
    resolved = fixture_config["resolved_config"]
    arch = {k: v for k, v in resolved.items() if k not in ("batch_size", "seq_len", "vocab_size", "num_puzzle_identifiers")}
    arch["name"] = fixture_config["arch_name"]  # the reference's own "<module>@<class>" string
    arch["loss"] = {"name": "losses@ACTLossHead", "loss_type": "stablemax_cross_entropy"}
    config = {"arch": arch, "global_batch_size": global_batch_size, "data_paths": ["data/x"], "lr": 1e-4,
              "ema": True, "epochs": 10, "checkpoint_path": "checkpoints/x"}
    (tmp_path / "all_config.yaml").write_text(yaml.dump(config))
    state = torch.load(fixtures_dir / "trm_tiny_state_dict.pt", weights_only=True)
    torch.save({prefix + k: v for k, v in state.items()}, tmp_path / name)
    return tmp_path / name, state


def eval_logits(model: LossHead, fixtures_dir) -> torch.Tensor:
    batch = torch.load(fixtures_dir / "trm_tiny_batch.pt", weights_only=True)
    model.eval()
    with torch.inference_mode():
        _, _, _, out, _ = model(carry=model.initial_carry(batch), batch=batch, return_keys=("logits",))
    return out["logits"]


@pytest.mark.parametrize("prefix", ["_orig_mod.", ""])
def test_loads_both_key_styles(tmp_path, fixtures_dir, prefix):
    path, state = write_run(tmp_path, fixtures_dir, prefix)
    model = load_reference_checkpoint(path)  # all_config.yaml beside the file
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_heads, cfg.L_layers, cfg.halt_max_steps) == (64, 2, 1, 4)
    assert cfg.num_puzzle_identifiers == 10 and cfg.batch_size == 4  # from the table and global_batch_size
    loaded = model.state_dict()
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key
    ref = torch.load(fixtures_dir / "trm_tiny_outputs.pt", weights_only=True)
    torch.testing.assert_close(eval_logits(model, fixtures_dir), ref["per_step"][0]["logits"], atol=1e-4, rtol=0)


def test_state_dict_strips_prefix(tmp_path, fixtures_dir):
    path, state = write_run(tmp_path, fixtures_dir, "_orig_mod.")
    assert sorted(load_reference_state_dict(path)) == sorted(state)


def test_into_existing_model_and_explicit_config(tmp_path, fixtures_dir):
    path, state = write_run(tmp_path, fixtures_dir, "_orig_mod.")
    cfg, loss_type = read_reference_config(tmp_path / "all_config.yaml", num_puzzle_identifiers=10)
    assert loss_type == "stablemax_cross_entropy"
    model = LossHead(TRM(cfg))
    assert load_reference_checkpoint(path, model=model) is model
    assert torch.equal(model.state_dict()[TABLE], state[TABLE])
    other = load_reference_checkpoint(path, cfg)
    assert torch.equal(other.state_dict()[TABLE], state[TABLE])


def test_other_identifier_count_takes_the_mean_row(tmp_path, fixtures_dir, caplog):
    path, state = write_run(tmp_path, fixtures_dir, "_orig_mod.")
    with caplog.at_level(logging.INFO, logger="trm.model"):
        model = load_reference_checkpoint(path, tmp_path / "all_config.yaml", num_puzzle_identifiers=16)
    table = model.state_dict()[TABLE]
    assert table.shape == (16, 64)
    mean = state[TABLE].mean(0)
    for row in table:
        torch.testing.assert_close(row, mean)
    assert any("mean row" in r.getMessage() and "10" in r.getMessage() and "16" in r.getMessage() for r in caplog.records)


def test_missing_and_unexpected_keys_are_listed(tmp_path, fixtures_dir):
    _, state = write_run(tmp_path, fixtures_dir, "")
    broken = dict(state)
    del broken["model.inner.lm_head.weight"]
    broken["model.inner.extra.weight"] = torch.zeros(2)
    torch.save({"_orig_mod." + k: v for k, v in broken.items()}, tmp_path / "step_7")
    with pytest.raises(ValueError) as err:
        load_reference_checkpoint(tmp_path / "step_7")
    assert "model.inner.lm_head.weight" in str(err.value) and "model.inner.extra.weight" in str(err.value)
    assert "step_7" in str(err.value)


def test_shape_mismatch_is_an_error(tmp_path, fixtures_dir):
    path, _ = write_run(tmp_path, fixtures_dir, "")
    cfg = ModelConfig.from_dict(json.loads((fixtures_dir / "config.json").read_text())["resolved_config"])
    with pytest.raises(ValueError, match="qkv_proj"):
        load_reference_checkpoint(path, cfg.replace(num_heads=4, hidden_size=128, puzzle_emb_ndim=64))


def test_unknown_arch_key_is_an_error(tmp_path, fixtures_dir):
    path, _ = write_run(tmp_path, fixtures_dir, "")
    data = yaml.safe_load((tmp_path / "all_config.yaml").read_text())
    data["arch"]["hidden_sise"] = 3
    (tmp_path / "all_config.yaml").write_text(yaml.dump(data))
    with pytest.raises(ValueError, match="hidden_sise"):
        load_reference_checkpoint(path)


def test_missing_files_and_code_in_pickles_are_refused(tmp_path, fixtures_dir):
    with pytest.raises(FileNotFoundError, match="step_9"):
        load_reference_checkpoint(tmp_path / "step_9")
    path, _ = write_run(tmp_path, fixtures_dir, "")
    (tmp_path / "all_config.yaml").unlink()
    with pytest.raises(FileNotFoundError, match="all_config.yaml"):
        load_reference_checkpoint(path)
    torch.save({"x": NotATensor()}, tmp_path / "step_evil")
    with pytest.raises(pickle.UnpicklingError):
        load_reference_state_dict(tmp_path / "step_evil")
