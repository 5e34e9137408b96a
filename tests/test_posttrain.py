"""Post-training pieces in the trainer: the embeddings-first freeze, small sets, warm starts from our step-N folders
and reference step_N files (rows carried by identifier name), the model's definition from the checkpoint, the
Trelis fork's evaluation depth and regularisers, and the last|best checkpoint choice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from trm.config import load_config
from trm.data.build import BuildConfig, build_dataset
from trm.data.loader import load_identifiers
from trm.train import Dist, Trainer, frozen_until_step

from test_data_build import write_subset

BASE = ["preset=cpu-tiny", "global_batch_size=8", "micro_batch_size=null", "progress=False", "wandb=off",
        "evaluators=[]", "lr_warmup_steps=0"]
TABLE = "model.inner.puzzle_emb.weights"


def _trainer(tmp_path: Path, *words: str) -> Trainer:
    return Trainer(load_config([*BASE, f"run_dir={tmp_path / 'run'}", *words]), Dist())


def _batches(trainer: Trainer, n: int):
    it = trainer.train_loader.iterate()
    for _ in range(n):
        position, batch = next(it)
        trainer.position = position
        yield batch


def _trunk(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.named_parameters()}


# -- freeze ------------------------------------------------------------------------------------------------------


def test_freeze_until_step_follows_the_fork():
    cfg = load_config(["epochs=100", "eval_interval=10", "freeze_weights=True", "freeze_weights_epochs=25"])
    assert frozen_until_step(cfg, 1000) == 250
    assert frozen_until_step(load_config(["epochs=100", "eval_interval=10", "freeze_weights=True",
                                          "freeze_weights_epochs=24"]), 101) == 25  # ceil(24.24)
    assert frozen_until_step(load_config(["freeze_weights=True"]), 77) == 77  # S: embeddings only, all run
    assert frozen_until_step(load_config(["epochs=10", "eval_interval=10", "freeze_weights=True",
                                          "freeze_weights_epochs=10"]), 77) == 77
    assert frozen_until_step(load_config(["freeze_weights=True", "freeze_weights_epochs=0"]), 77) is None
    assert frozen_until_step(load_config(["freeze_weights_epochs=5"]), 77) is None  # freeze_weights off


def test_freeze_phase_moves_only_the_embeddings_then_the_trunk(fixtures_dir, tmp_path):
    data = str(fixtures_dir / "tiny_dataset")
    # 15 examples per epoch at batch 8, 40 epochs: 75 scheduled steps; 12 frozen epochs -> steps 1..23 frozen
    trainer = _trainer(tmp_path, f"data_paths=[{data}]", "epochs=40", "eval_interval=40", "freeze_weights=True",
                       "freeze_weights_epochs=12", "ema=True")
    assert trainer.freeze_until == 23
    trainer.model.train()
    trunk0, table0 = _trunk(trainer), trainer.model.model.puzzle_emb.weights.clone()
    batches = _batches(trainer, 26)
    for _ in range(trainer.freeze_until):
        trainer.train_step(next(batches))
    after = _trunk(trainer)
    assert all(torch.equal(after[k], trunk0[k]) for k in trunk0), "a trunk weight moved while frozen"
    assert all(torch.equal(trainer.ema.shadow[k], trunk0[k]) for k in trunk0)
    moved = (trainer.model.model.puzzle_emb.weights != table0).any(dim=1)
    assert moved.sum() >= 2, "the puzzle embeddings did not train"
    for _ in range(3):
        trainer.train_step(next(batches))
    later = _trunk(trainer)
    assert sum(not torch.equal(later[k], trunk0[k]) for k in trunk0) == len(trunk0), "the trunk did not train after"


# -- small sets ---------------------------------------------------------------------------------------------------


def test_a_three_example_set_trains_at_global_batch_8(three, tmp_path):
    run = tmp_path / "run"
    cfg = load_config([*BASE, f"data_paths=[{three}]", f"run_dir={run}", "epochs=16", "eval_interval=8",
                       "evaluators=[arc]"])
    Trainer(cfg, Dist()).fit()
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    steps = sorted({r["step"] for r in lines if "train/lm_loss" in r})
    # 8 epochs of 3 examples per iteration, batches of 3 + 3 + 2 (cut): 2 full batches per iteration
    assert steps == [1, 2, 3, 4]
    evals = [r["step"] for r in lines if "ARC/pass@2" in r]
    assert evals == [2, 4]  # after each iteration of eval_interval epochs
    assert (run / "eval" / "step-4" / "submission.json").is_file()


# -- warm starts ------------------------------------------------------------------------------------------------

TASKS_A = ["3c9b0459", "67a3c6ac", "68b16354", "74dd1130"]
TASKS_B = ["ed36ccf7", "74dd1130", "3c9b0459", "0d3d703e"]  # two shared, two new; another order and id range


def _build(arc_dir: Path, root: Path, name: str, tasks: list[str], start: int = 1) -> str:
    src = root / f"src-{name}"
    src.mkdir()
    prefix = write_subset(arc_dir, src, "training", name, ids=tasks)
    out = root / name
    build_dataset(BuildConfig(prefix, str(out), [name], [name], num_aug=2, workers=1, puzzle_identifiers_start=start))
    return str(out)


@pytest.fixture(scope="module")
def pretrained(arc_dir, tmp_path_factory):
    """A short run on dataset A (EMA on) with its last checkpoint, and a rebuilt dataset B."""
    root = tmp_path_factory.mktemp("warm")
    a = _build(arc_dir, root, "a", TASKS_A)
    b = _build(arc_dir, root, "b", TASKS_B, start=7)
    run = root / "run-a"
    cfg = load_config([*BASE, f"data_paths=[{a}]", f"run_dir={run}", "epochs=4", "eval_interval=4", "max_steps=3",
                       "ema=True"])
    Trainer(cfg, Dist()).fit()
    (step,) = [p for p in (run / "checkpoints").iterdir() if p.name.startswith("step-")]
    return {"a": a, "b": b, "ckpt": step, "run": run}


def test_rows_carried_by_name_survive_a_rebuilt_dataset(pretrained, tmp_path):
    ckpt = pretrained["ckpt"]
    saved = torch.load(ckpt / "model.pt", weights_only=True)[TABLE]
    names_a = json.loads((ckpt / "identifiers.json").read_text())
    trainer = _trainer(tmp_path, f"data_paths=[{pretrained['b']}]", f"load_checkpoint={ckpt}", "load_weights=raw",
                       "epochs=4", "eval_interval=4")
    table = trainer.model.model.puzzle_emb.weights
    names_b = load_identifiers([pretrained["b"]])
    row_a = {n: i for i, n in enumerate(names_a)}
    shared = [n for n in names_b if n in row_a and n != "<blank>"]
    new = [n for n in names_b if n not in row_a]
    assert shared and new
    assert any(names_b.index(n) != row_a[n] for n in shared)  # the identifiers are numbered differently
    for n in shared:
        assert torch.equal(table[names_b.index(n)], saved[row_a[n]]), n
    assert (saved[1:].abs().sum(dim=1) > 0).any()  # rows were trained, so the check above has teeth
    mean = saved.float().mean(dim=0)
    for n in new:
        assert torch.allclose(table[names_b.index(n)], mean), n
    summary = trainer.warm_start_summary
    assert (summary.mode, summary.carried, summary.new) == ("name", len(shared), len(new))
    assert summary.dropped == sum(1 for n in names_a if n != "<blank>" and n not in set(names_b))


def test_warm_start_weights_ema_or_raw_and_the_models_shape_from_the_checkpoint(pretrained, tmp_path):
    ckpt = pretrained["ckpt"]
    raw = torch.load(ckpt / "model.pt", weights_only=True)
    shadow = torch.load(ckpt / "ema.pt", weights_only=True)["shadow"]
    key = "model.inner.lm_head.weight"
    assert not torch.equal(raw[key], shadow[key])
    words = [f"data_paths=[{pretrained['a']}]", f"load_checkpoint={ckpt}", "epochs=4", "eval_interval=4"]
    ema = _trainer(tmp_path / "e", *words)  # auto: the EMA weights, which the reference's checkpoints hold
    assert torch.equal(ema.model.state_dict()[key], shadow[key])
    assert torch.equal(ema.model.state_dict()[TABLE], raw[TABLE])  # same dataset: every row carried
    assert ema.warm_start_summary.new == 0
    plain = _trainer(tmp_path / "r", *words, "load_weights=raw")
    assert torch.equal(plain.model.state_dict()[key], raw[key])
    # the model's definition comes from the checkpoint: a config with another width is overridden ...
    wide = _trainer(tmp_path / "w", *words, f"--config={_yaml(tmp_path, {'arch': {'hidden_size': 128}})}")
    assert wide.cfg.arch.hidden_size == 64 and wide.model_config.hidden_size == 64
    # ... and a command-line value that changes a shape is an error naming the key
    with pytest.raises(ValueError, match="arch.hidden_size=128 on the command line"):
        _trainer(tmp_path / "x", *words, "arch.hidden_size=128", "arch.num_heads=2")
    # a key that does not change shapes may differ (logged)
    deeper = _trainer(tmp_path / "d", *words, "arch.L_cycles=2")
    assert deeper.model_config.L_cycles == 2


def _yaml(tmp_path: Path, tree: dict) -> str:
    import yaml

    path = tmp_path / "extra.yaml"
    path.write_text(yaml.safe_dump(tree))
    return str(path)


def test_reference_step_file_with_all_config_beside_it(fixtures_dir, tmp_path):
    """A reference step_N (compiled keys) + all_config.yaml: the model is the all_config's; the table (10 rows,
    the tiny dataset has 16 identifiers and no names beside the file) is re-initialised with its mean row."""
    import yaml

    ref = json.loads((fixtures_dir / "config.json").read_text())
    state = torch.load(fixtures_dir / "trm_tiny_state_dict.pt", weights_only=True)
    folder = tmp_path / "ref"
    folder.mkdir()
    torch.save({f"_orig_mod.{k}": v for k, v in state.items()}, folder / "step_42")
    arch = {k: v for k, v in ref["model_config"].items()
            if k not in ("batch_size", "vocab_size", "seq_len", "num_puzzle_identifiers", "causal")}
    arch.update(name=ref.get("arch_name", "recursive_reasoning.trm@TRM"),
                loss={"name": "losses@ACTLossHead", "loss_type": "stablemax_cross_entropy"})
    (folder / "all_config.yaml").write_text(yaml.safe_dump({"arch": arch, "ema": False, "global_batch_size": 4}))
    data = str(fixtures_dir / "tiny_dataset")
    trainer = _trainer(tmp_path, f"data_paths=[{data}]", f"load_checkpoint={folder / 'step_42'}", "epochs=4",
                       "eval_interval=4", "puzzle_emb_reinit_strategy=mean")
    assert (trainer.model_config.H_cycles, trainer.model_config.L_cycles, trainer.model_config.puzzle_emb_len) == (2, 2, 16)
    got = trainer.model.state_dict()
    for k, v in state.items():
        if k != TABLE:
            assert torch.equal(got[k], v), k
    assert got[TABLE].shape[0] == 16
    assert torch.allclose(got[TABLE], state[TABLE].mean(dim=0).expand(16, -1))
    assert trainer.warm_start_summary.mode == "reinit"
    with pytest.raises(ValueError, match="load_weights=ema"):
        _trainer(tmp_path / "e", f"data_paths=[{data}]", f"load_checkpoint={folder / 'step_42'}", "epochs=4",
                 "eval_interval=4", "load_weights=ema")


def test_normal_reinit_draws_around_the_mean():
    from trm.warmstart import carry_table

    torch.manual_seed(0)
    old = torch.randn(50, 8) * torch.linspace(0.1, 2.0, 8) + 3.0
    table, summary = carry_table(old, None, torch.Size([400, 8]), None, "normal")
    assert summary.mode == "reinit" and summary.new == 400
    assert torch.allclose(table.mean(0), old.mean(0), atol=0.3)
    assert torch.allclose(table.std(0), old.std(0, unbiased=False), rtol=0.25)
    with pytest.raises(ValueError, match="puzzle_emb_ndim"):
        carry_table(old, None, torch.Size([400, 4]), None, "mean")


@pytest.mark.s3
def test_load_checkpoint_from_s3(pretrained, s3_env, tmp_path, monkeypatch):
    from trm.checkpoint import Checkpoints
    from trm.storage import open_store
    from trm.warmstart import read_pretrained

    monkeypatch.setenv("TRM_HOME", str(tmp_path / "home"))
    local = pretrained["ckpt"]
    root = "s3://trm/test-warm/checkpoints"
    names = [p.name for p in local.iterdir() if p.name != "meta.json"]
    objects = {n: torch.load(local / n, weights_only=True) for n in names if n.endswith(".pt")}
    files = {n: local / n for n in names if not n.endswith(".pt")}
    where = Checkpoints(root).save(7, objects=objects, files=files)
    src = read_pretrained(where)
    assert src.kind == "step" and src.weights == "ema" and src.step == 7 and src.arch["hidden_size"] == 64
    assert torch.equal(src.state[TABLE], objects["model.pt"][TABLE])
    store = open_store()
    store.upload_file(local / "model.pt", "s3://trm/test-warm/ref/step_9")  # our keys load as a reference file too
    ref = read_pretrained("s3://trm/test-warm/ref/step_9")
    assert ref.kind == "reference" and ref.arch is None and ref.step == 9
    assert torch.equal(ref.state[TABLE], objects["model.pt"][TABLE])


# -- evaluation depth and regularisers ---------------------------------------------------------------------------


def test_halt_max_steps_eval_and_dropouts():
    from trm.model import TRM, ModelConfig

    cfg = ModelConfig(hidden_size=32, num_heads=2, L_layers=1, H_cycles=1, L_cycles=1, halt_max_steps=4,
                      halt_max_steps_eval=2, num_puzzle_identifiers=5, batch_size=4, puzzle_emb_len=1,
                      forward_dtype="float32", puzzle_emb_dropout=0.5, grid_token_dropout=0.25)
    torch.manual_seed(0)
    net = TRM(cfg)
    batch = {"inputs": torch.randint(0, 12, (4, 900), dtype=torch.int32),
             "puzzle_identifiers": torch.tensor([1, 2, 3, 4], dtype=torch.int32)}
    net.eval()
    with torch.no_grad():
        carry = net.initial_carry(batch)
        steps = 0
        while True:
            carry, _ = net(carry, batch)
            steps += 1
            if carry.halted.all():
                break
        assert steps == 2
        # evaluation: no dropout (same embedding twice)
        assert torch.equal(net.inner.embed(batch["inputs"], batch["puzzle_identifiers"]),
                           net.inner.embed(batch["inputs"], batch["puzzle_identifiers"]))
    with torch.no_grad():
        net.puzzle_emb.weights.copy_(torch.randn(5, 32))
    net.train()
    rows = net.inner.embed(batch["inputs"], batch["puzzle_identifiers"])[:, 0] / net.inner.embed_scale
    want = net.puzzle_emb.weights[batch["puzzle_identifiers"].long()]
    for r in range(4):  # a row's puzzle embedding is dropped whole, or kept and scaled by 1/(1-p)
        assert torch.allclose(rows[r], torch.zeros(32)) or torch.allclose(rows[r], 2 * want[r], atol=1e-5)
    tokens = net.inner.embed(batch["inputs"], batch["puzzle_identifiers"])[:, 1:]
    zero = (tokens == 0).float().mean().item()
    assert 0.15 < zero < 0.35  # ~ grid_token_dropout of the token embedding entries


def test_top_level_keys_win_over_arch_ones():
    cfg = load_config(["arch.halt_max_steps_eval=4", "arch.grid_noise_prob=0.2", "arch.grid_noise_fraction=0.1"])
    assert (cfg.eval_halt_max_steps, cfg.noise_prob, cfg.noise_fraction) == (4, 0.2, 0.1)
    cfg = load_config(["arch.halt_max_steps_eval=4", "halt_max_steps_eval=8", "arch.grid_noise_prob=0.2",
                       "grid_noise_prob=0.0"])
    assert (cfg.eval_halt_max_steps, cfg.noise_prob) == (8, 0.0)


# -- the final checkpoint: last | best ----------------------------------------------------------------------------


def test_pick_checkpoint_last_or_best(tmp_path):
    from trm.checkpoint import Checkpoints
    from trm.warmstart import pick_checkpoint

    run = tmp_path / "run"
    ckpts = Checkpoints(run / "checkpoints", keep_last=10)
    for step in (10, 20, 30, 40):
        ckpts.save(step, objects={"model.pt": {}}, evaluated=True)

    def metrics(step, value, scored=5):
        folder = run / "eval" / f"step-{step}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "metrics.json").write_text(json.dumps({"ARC/pass@2": value, "ARC/tasks_scored": scored}))

    assert pick_checkpoint(str(run), "best").how.startswith("last (no evaluation")
    metrics(10, 0.2)
    metrics(20, 0.5)
    metrics(30, 0.5)
    metrics(40, 0.3)
    last = pick_checkpoint(str(run), "last")
    assert (last.step, last.how, last.value) == (40, "last", 0.3)
    best = pick_checkpoint(str(run), "best")
    assert (best.step, best.how, best.value) == (30, "best", 0.5)  # ties: the later step
    assert best.where == str(run / "checkpoints" / "step-30")
    metrics(40, 0.9, scored=0)  # no known outputs: not a candidate
    assert pick_checkpoint(str(run), "best").step == 30
    with pytest.raises(ValueError, match="last or best"):
        pick_checkpoint(str(run), "first")
    with pytest.raises(FileNotFoundError):
        pick_checkpoint(str(tmp_path / "none"), "last")


def test_checkpoint_names_every_paths_identifiers(arc_dir, pretrained, tmp_path):
    """A run on several data_paths saves the merged identifier list, so a warm start carries every path's rows."""
    a = pretrained["a"]
    last = len(load_identifiers([a]))
    c = _build(arc_dir, tmp_path, "c", ["0d3d703e", "ed36ccf7"], start=last)
    run = tmp_path / "run-ac"
    cfg = load_config([*BASE, f"data_paths=[{a},{c}]", f"run_dir={run}", "epochs=4", "eval_interval=4",
                       "max_steps=1"])
    Trainer(cfg, Dist()).fit()
    (step,) = [p for p in (run / "checkpoints").iterdir() if p.name.startswith("step-")]
    saved = json.loads((step / "identifiers.json").read_text())
    assert saved == load_identifiers([a, c])
    assert set(load_identifiers([c])[last:]) <= set(saved) and len(saved) > last
