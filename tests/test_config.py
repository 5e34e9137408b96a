"""Config: defaults of the reference, presets, the seed command as written, YAML, clear errors."""

from __future__ import annotations

import shlex

import pytest

from trm.config import PRESETS, TrainConfig, load_config, parse_value

SEED_COMMAND = (
    'torchrun --nproc-per-node 4 --rdzv_backend=c10d --rdzv_endpoint=localhost:0 --nnodes=1 -m trm.train '
    'arch=trm data_paths="[data/arc2concept-aug-1000]" arch.L_layers=2 arch.H_cycles=3 arch.L_cycles=4 '
    '+run_name=pretrain_att_arc2concept_4 ema=True'
)


def test_defaults_are_the_reference_ones():
    cfg = TrainConfig()
    assert (cfg.global_batch_size, cfg.epochs, cfg.eval_interval, cfg.min_eval_interval) == (768, 100000, 10000, 0)
    assert (cfg.lr, cfg.lr_min_ratio, cfg.lr_warmup_steps) == (1e-4, 1.0, 2000)
    assert (cfg.beta1, cfg.beta2, cfg.weight_decay) == (0.9, 0.95, 0.1)
    assert (cfg.puzzle_emb_lr, cfg.puzzle_emb_weight_decay, cfg.ema_rate) == (1e-2, 0.1, 0.999)
    assert cfg.checkpoint_every_eval is True and cfg.ema is False and cfg.seed == 0
    a = cfg.arch
    assert (a.hidden_size, a.num_heads, a.L_layers, a.H_cycles, a.L_cycles, a.halt_max_steps) == (512, 8, 2, 3, 6, 16)
    assert a.puzzle_emb_ndim == 512 and a.puzzle_emb_len == 16 and a.forward_dtype == "bfloat16"


def test_seed_command_is_accepted_as_written():
    words = shlex.split(SEED_COMMAND)
    argv = words[words.index("trm.train") + 1 :]
    cfg = load_config(argv)
    assert cfg.data_paths == ["data/arc2concept-aug-1000"]
    assert (cfg.arch.L_layers, cfg.arch.H_cycles, cfg.arch.L_cycles) == (2, 3, 4)
    assert cfg.ema is True and cfg.run_name == "pretrain_att_arc2concept_4" and cfg.arch.name == "trm"
    seed = load_config(["preset=arc2-seed", "+run_name=pretrain_att_arc2concept_4"])
    assert seed == cfg


def test_preset_then_yaml_then_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "global_batch_size: 64\nlr: 1e-3\narch:\n  hidden_size: 128\n  num_heads: 4\n  loss:\n"
        "    name: losses@ACTLossHead\n    loss_type: softmax_cross_entropy\nevaluators:\n  - name: arc@ARC\n"
    )
    cfg = load_config(["--preset", "cpu-tiny", "--config", str(path), "lr=2e-3", "++arch.L_cycles=3", "data_paths=[a, 'b']"])
    assert cfg.global_batch_size == 64 and cfg.lr == 2e-3
    assert cfg.arch.hidden_size == 128 and cfg.arch.L_cycles == 3 and cfg.arch.H_cycles == 1
    assert cfg.arch.loss_type == "softmax_cross_entropy" and cfg.evaluators == ["arc"]
    assert cfg.data_paths == ["a", "b"] and cfg.arch.puzzle_emb_ndim == 128
    assert load_config(["preset=cpu-tiny"]).arch.hidden_size == PRESETS["cpu-tiny"]["arch"]["hidden_size"]


def test_parse_value():
    assert parse_value("True") is True and parse_value("false") is False
    assert parse_value("1e-4") == 1e-4 and parse_value("3") == 3 and parse_value("null") is None
    assert load_config(["wandb=on"]).wandb == "on" and load_config(["wandb=False"]).wandb == "off"
    assert parse_value("[x,y]") == ["x", "y"] and parse_value("[]") == [] and parse_value('"12"') == "12"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["global_batch_sise=8"], "unknown config key 'global_batch_sise'; did you mean global_batch_size"),
        (["+arch.L_cycle=2"], "did you mean arch.L_cycles"),
        (["lr=fast"], "lr: expected a number"),
        (["ema=maybe"], "ema: expected True or False"),
        (["global_batch_size=0"], "global_batch_size must be positive"),
        (["arch.hidden_size=100", "arch.num_heads=8"], "multiple of arch.num_heads"),
        (["epochs=10", "eval_interval=3"], "must divide epochs"),
        (["arch=hrm"], "unknown model 'hrm'"),
        (["preset=huge"], "unknown preset 'huge'"),
        (["beta2=1.0"], "beta2 must lie in"),
        (["data_paths=[]"], "data_paths is empty"),
        (["arch.pos_encodings=alibi"], "pos_encodings"),
        (["oops"], "cannot read argument 'oops'"),
    ],
)
def test_bad_input_gives_clear_errors(argv, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_config(argv)


def test_missing_yaml_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(["--config", str(tmp_path / "nope.yaml")])
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rate: 1\n")
    with pytest.raises(ValueError, match="bad.yaml: unknown config key 'learning_rate'"):
        load_config(["--config", str(bad)])


def test_yaml_round_trip(tmp_path):
    cfg = load_config(["preset=cpu-tiny", "run_name=x", "checkpoint_every_n_steps=5"])
    path = tmp_path / "config.yaml"
    path.write_text(cfg.to_yaml())
    assert load_config(["--config", str(path)]) == cfg


def test_reference_arch_name_maps_to_ours(fixtures_dir):
    """The reference's all_config.yaml names its model '<module>@<class>'; that loads as our `trm`."""
    import json

    name = json.loads((fixtures_dir / "config.json").read_text())["arch_name"]
    assert load_config([f"arch.name={name}"]).arch.name == "trm"
    with pytest.raises(ValueError, match="arch"):
        load_config(["arch.name=some_other_module@Model"])


def test_compile_is_auto_by_default():
    """compile=null (default) means: torch.compile on CUDA, eager on CPU; True/False force it; others fail."""
    assert load_config(["--preset", "arc2-seed"]).compile is None
    assert load_config(["compile=True"]).compile is True
    assert load_config(["compile=False"]).compile is False
    with pytest.raises(ValueError, match="compile"):
        load_config(["compile=maybe"])
