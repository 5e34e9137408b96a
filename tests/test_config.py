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


# -- the reference's config files as written ---------------------------------------------------------------------

import os  # noqa: E402
from pathlib import Path  # noqa: E402

CONFIGS = Path(__file__).resolve().parent / "configs"
HYDRA = CONFIGS / "hydra"


def _print_config(argv, capsys) -> dict:
    """`trm train ... --print-config` in this process: the printed YAML, parsed."""
    import yaml

    from trm.train import main

    capsys.readouterr()
    assert main([*argv, "--print-config"]) == 0
    out = capsys.readouterr().out
    return yaml.safe_load(out)


def test_hydra_folder_composes_defaults_and_interpolations(capsys):
    cfg = load_config(["--config-path", str(HYDRA), "--config-name", "cfg_adapt", "data_paths=[data/x]",
                       "+run_name=adapt1"])
    a = cfg.arch
    assert (a.hidden_size, a.num_heads, a.L_layers, a.H_cycles, a.L_cycles, a.puzzle_emb_len) == (128, 4, 1, 2, 3, 2)
    assert a.puzzle_emb_ndim == 128 and a.name == "trm" and a.forward_dtype == "bfloat16"
    assert (cfg.global_batch_size, cfg.eval_global_batch_size, cfg.epochs, cfg.eval_interval) == (48, 96, 600, 200)
    assert cfg.freeze_weights is True and cfg.freeze_weights_epochs == 150 and cfg.lr == 5e-5
    assert cfg.puzzle_emb_reinit_strategy == "normal" and cfg.entity == "test-team" and cfg.run_name == "adapt1"
    assert cfg.evaluators == ["arc"] and cfg.data_paths == ["data/x"] and cfg.epochs_per_iter == 200
    # keys without effect here: one warning line each, naming the key
    err = capsys.readouterr().err.splitlines()
    for key in ("hydra.output_subdir", "hydra.job.chdir", "dataloader_num_workers", "dataloader_pin_memory",
                "evaluators.0.submission_K"):
        assert sum(line.startswith(f"[trm.config] warning: {key} has no effect here") for line in err) == 1, (key, err)
    assert len(err) == 5 and cfg.warnings and all("no effect" in w for w in cfg.warnings)
    # an override moves the interpolation with it; arch=NAME picks the folder's arch/NAME.yaml (Hydra's group)
    wide = load_config(["--config-path", str(HYDRA), "--config-name", "cfg_adapt", "data_paths=[x]",
                        "arch.hidden_size=256"], warn=False)
    assert wide.arch.puzzle_emb_ndim == 256 and wide.explicit_keys == {"data_paths", "arch.hidden_size"}
    slim = load_config(["--config-path", str(HYDRA), "--config-name", "cfg_adapt.yaml", "data_paths=[x]",
                        "arch=slim"], warn=False)
    assert (slim.arch.hidden_size, slim.arch.puzzle_emb_ndim, slim.arch.halt_max_steps_eval) == (64, 64, 4)
    assert (slim.arch.puzzle_emb_dropout, slim.arch.grid_token_dropout) == (0.2, 0.1)
    assert (slim.noise_prob, slim.noise_fraction) == (0.3, 0.05)
    # --config FILE composes the same way (its folder holds arch/)
    same = load_config(["--config", str(HYDRA / "cfg_adapt.yaml"), "data_paths=[data/x]", "+run_name=adapt1"],
                       warn=False)
    assert same == cfg


def test_print_config_prints_the_resolved_config_and_round_trips(capsys, tmp_path):
    argv = ["--config-path", str(HYDRA), "--config-name", "cfg_adapt", "data_paths=[data/x]", "arch=slim"]
    printed = _print_config(argv, capsys)
    assert printed["arch"]["hidden_size"] == 64 and printed["arch"]["puzzle_emb_ndim"] == 64
    assert printed["freeze_weights_epochs"] == 150 and printed["entity"] == "test-team"
    path = tmp_path / "printed.yaml"
    import yaml

    path.write_text(yaml.safe_dump(printed))
    assert load_config(["--config", str(path)]) == load_config(argv, warn=False)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--config-path", str(HYDRA), "--config-name", "cfg_lora"], "LoRA is not supported"),
        (["--config-path", str(HYDRA), "--config-name", "cfg_adapt", "data_paths=[x]", "arch=nope"], "unknown model 'nope'"),
        (["--config-path", str(HYDRA), "--config-name", "cfg_missing"], "no file .*cfg_missing.yaml"),
        (["--config-name", "cfg_posttrain_long"], "--config-path DIR"),
        (["--config-path", str(HYDRA)], "needs --config-name"),
        (["arch.lora_rank=2"], "LoRA is not supported"),
        (["arch.lora_scale=2"], "LoRA is not supported"),
        (["puzzle_emb_reinit_strategy=zeros"], "mean"),
        (["load_weights=best"], "load_weights"),
        (["arch.loss.name=losses@Other"], "losses@ACTLossHead"),
        (["arch.puzzle_emb_dropout=1.5"], "puzzle_emb_dropout"),
        (["grid_noise_prob=2"], "grid_noise_prob"),
        (["eval_interval=0"], "eval_interval must be >= 1"),
    ],
)
def test_reference_config_errors(argv, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        load_config(argv, warn=False)


def test_config_name_is_not_a_preset_name_and_cfg_posttrain_is_built_in():
    post = load_config(["--config-name", "cfg_posttrain", "data_paths=[data/eval2]"])
    assert (post.global_batch_size, post.epochs, post.eval_interval, post.eval_max_augmentations) == (384, 15000, 3000, 512)
    assert post.freeze_weights and post.freeze_weights_epochs == 3125 and post.ema and post.halt_max_steps_eval is None
    assert post.puzzle_emb_reinit_strategy == "mean"
    assert load_config(["--config-name", "cfg_pretrain"]) == TrainConfig()
    assert load_config(["--config-name", "arc2-seed"]) == load_config(["preset=arc2-seed"])  # still accepted


def test_the_references_all_config_files_load(capsys):
    s = load_config(["--config", str(CONFIGS / "all_config_s.yaml")])
    assert (s.arch.hidden_size, s.arch.L_cycles, s.arch.puzzle_emb_ndim, s.global_batch_size) == (256, 4, 256, 256)
    assert s.freeze_weights is False and s.run_name == "run x" and capsys.readouterr().err == ""
    t = load_config(["--config", str(CONFIGS / "all_config_trelis.yaml")])
    assert (t.arch.puzzle_emb_dropout, t.arch.grid_token_dropout, t.arch.grid_noise_prob) == (0.1, 0.05, 0.05)
    assert (t.halt_max_steps_eval, t.eval_halt_max_steps, t.freeze_weights_epochs, t.entity) == (2, 2, 100, "test-team")
    err = capsys.readouterr().err
    assert err.count("dataloader_") == 4 and err.count("\n") == 4


def test_trm_evaluate_reads_a_trelis_all_config(fixtures_dir, tmp_path):
    """trm evaluate's reference path: a Trelis-trained all_config.yaml (grid_noise_*, dropouts,
    halt_max_steps_eval) gives the model; its top-level halt_max_steps_eval sets the evaluation depth."""
    import torch

    from trm.evaluation.evaluate import load_model
    from trm.model import read_reference_config

    model_cfg, loss = read_reference_config(CONFIGS / "all_config_trelis.yaml", num_puzzle_identifiers=10)
    assert model_cfg.halt_max_steps_eval == 2 and model_cfg.puzzle_emb_dropout == 0.1 and loss == "stablemax_cross_entropy"
    step = tmp_path / "step_5"
    torch.save(torch.load(fixtures_dir / "trm_tiny_state_dict.pt", weights_only=True), step)
    model, info = load_model(str(step), str(CONFIGS / "all_config_trelis.yaml"), 4, torch.device("cpu"))
    assert info["kind"] == "reference" and model.config.halt_max_steps_eval == 2 and not model.training


def _checkout(var: str, marker: str) -> Path:
    root = os.environ.get(var)
    if not root:
        pytest.skip(f"{var} is not set: point it at a checkout to test its configs as written")
    path = Path(root)
    if not (path / marker).is_file():
        pytest.skip(f"{var}={root}: no {marker} there")
    return path


def test_trelis_cfg_posttrain_resolves_as_its_readme_runs_it(capsys):
    """TRM_TRELIS_DIR: a checkout of the Trelis fork. Its README's post-training command, as written."""
    root = _checkout("TRM_TRELIS_DIR", "config/cfg_posttrain.yaml")
    printed = _print_config(["--config-path", str(root / "config"), "--config-name", "cfg_posttrain",
                             "data_paths=['data/arc-eval2-aug-1000']", "data_paths_test=['data/arc-eval2-aug-1000']",
                             "load_checkpoint=pretrained/step_155718", "arch.puzzle_emb_len=16",
                             "+run_name=posttrain_L4_test"], capsys)
    assert (printed["global_batch_size"], printed["epochs"], printed["eval_interval"]) == (384, 15000, 3000)
    assert printed["freeze_weights"] is True and printed["freeze_weights_epochs"] == 3125
    assert printed["eval_max_augmentations"] == 512 and printed["puzzle_emb_reinit_strategy"] == "mean"
    assert printed["arch"]["puzzle_emb_len"] == 16 and printed["arch"]["puzzle_emb_ndim"] == printed["arch"]["hidden_size"]
    assert printed["load_checkpoint"] == "pretrained/step_155718" and printed["run_name"] == "posttrain_L4_test"
    assert printed["entity"]


def test_s_cfg_pretrain_resolves(capsys):
    """TRM_REFERENCE_DIR: a checkout of SamsungSAILMontreal/TinyRecursiveModels. Its seed command, as written."""
    root = _checkout("TRM_REFERENCE_DIR", "config/cfg_pretrain.yaml")
    printed = _print_config(["--config-path", str(root / "config"), "--config-name", "cfg_pretrain", "arch=trm",
                             "data_paths=[data/arc2concept-aug-1000]", "arch.L_layers=2", "arch.H_cycles=3",
                             "arch.L_cycles=4", "+run_name=pretrain_att_arc2concept_4", "ema=True"], capsys)
    seed = load_config(["preset=arc2-seed", "+run_name=pretrain_att_arc2concept_4"])
    assert printed == seed.to_dict()
