"""`trm evaluate` end to end on the tiny fixture dataset with a tiny random model (our step-N folder and a
reference step_N file), --max-augmentations, --save-outputs -> `trm vote`, and s3:// in and out."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import yaml

from trm.evaluation.evaluate import TestSplit, main as evaluate_main
from trm.evaluation.submission import validate
from trm.evaluation.vote import load_dataset_files, load_outputs, main as vote_main

PASS = [f"ARC/pass@{k}" for k in (1, 2, 5, 10, 100, 1000)]


@pytest.fixture(scope="module")
def step_folder(tmp_path_factory, fixtures_dir):
    """A random tiny model saved as our step-1/ checkpoint (with an EMA file) for the tiny dataset."""
    from trm.checkpoint import Checkpoints
    from trm.config import load_config
    from trm.model import TRM, LossHead, ModelConfig
    import dataclasses

    cfg = load_config(["--preset", "cpu-tiny", "arch.hidden_size=32", "arch.halt_max_steps=2"])
    meta = json.loads((fixtures_dir / "tiny_dataset" / "test" / "dataset.json").read_text())
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    arch = {k: v for k, v in dataclasses.asdict(cfg.arch).items() if k in fields}
    torch.manual_seed(0)
    model = LossHead(TRM(ModelConfig(**{**arch, "batch_size": 8,
                                        "num_puzzle_identifiers": meta["num_puzzle_identifiers"]})))
    with torch.no_grad():  # make the puzzle embeddings and the halting head matter
        model.model.inner.puzzle_emb.weights.normal_(0, 0.5)
    shadow = {n: p.detach() + 0.01 for n, p in model.named_parameters() if p.requires_grad}
    root = tmp_path_factory.mktemp("ckpt")
    where = Checkpoints(root).save(1, objects={"model.pt": model.state_dict(), "ema.pt": {"mu": 0.9, "shadow": shadow}},
                                   texts={"config.yaml": cfg.to_yaml()})
    return where


def _check_outputs(out, dataset, n_examples):
    puzzles, _ = load_dataset_files(dataset)
    submission = json.loads((out / "submission.json").read_text())
    assert validate(submission, puzzles) == []
    metrics = json.loads((out / "metrics.json").read_text())
    assert all(0.0 <= metrics[k] <= 1.0 for k in PASS)
    assert metrics["ARC/tasks"] == 5 and metrics["ARC/test_inputs"] == 7
    assert (metrics["ARC/predictions"] + metrics["ARC/empty_crops"] + metrics["ARC/unmatched_predictions"]
            == n_examples)
    html = (out / "report.html").read_text()
    assert "<table" in html and "http://" not in html and "https://" not in html
    assert "ARC/pass@1" in (out / "summary.md").read_text()
    return submission, metrics


def test_evaluate_step_folder_and_vote_again(step_folder, fixtures_dir, tmp_path):
    dataset = fixtures_dir / "tiny_dataset"
    out = tmp_path / "eval"
    rc = evaluate_main(["--checkpoint", step_folder, "--data", str(dataset), "--output-dir", str(out),
                        "--batch-size", "8", "--device", "cpu", "--save-outputs", "--log-every", "0"])
    assert rc == 0
    submission, metrics = _check_outputs(out, dataset, 21)
    run = json.loads((out / "evaluation.json").read_text())
    assert run["weights"] == "ema" and run["examples"] == 21
    saved = load_outputs(out / "outputs.npz")
    ids = np.repeat(np.load(dataset / "test" / "all__puzzle_identifiers.npy"),
                    np.diff(np.load(dataset / "test" / "all__puzzle_indices.npy")))
    assert saved["puzzle_identifiers"].dtype == np.int32 and saved["q_halt_logits"].dtype == np.float32
    assert (saved["puzzle_identifiers"] == ids).all()
    assert (saved["inputs"] == np.load(dataset / "test" / "all__inputs.npy")).all()
    assert saved["preds"].shape == (21, 900) and saved["preds"].max() <= 11
    # voting again on the saved outputs gives the same files
    rc = vote_main(["--outputs", str(out / "outputs.npz"), "--data", str(dataset), "--output-dir", str(tmp_path / "v")])
    assert rc == 0
    assert (tmp_path / "v" / "submission.json").read_text() == (out / "submission.json").read_text()
    assert json.loads((tmp_path / "v" / "metrics.json").read_text()) == metrics
    # the plain weights give other predictions than the EMA ones
    rc = evaluate_main(["--checkpoint", step_folder, "--data", str(dataset), "--output-dir", str(tmp_path / "m"),
                        "--batch-size", "8", "--device", "cpu", "--save-outputs", "--weights", "model",
                        "--max-augmentations", "0", "--log-every", "0"])
    assert rc == 0
    other = load_outputs(tmp_path / "m" / "outputs.npz")
    originals = np.isin(saved["puzzle_identifiers"], other["puzzle_identifiers"])
    assert not np.array_equal(other["q_halt_logits"], saved["q_halt_logits"][originals])


def test_max_augmentations_keeps_originals_first(step_folder, fixtures_dir, tmp_path):
    dataset = fixtures_dir / "tiny_dataset"
    split = TestSplit(dataset, max_augmentations=1)
    kept = np.unique(split.example_ids[split.selected]).tolist()
    assert kept == [1, 2, 4, 5, 7, 8, 10, 11, 13, 14]  # groups of 3: original + first variant
    rc = evaluate_main(["--checkpoint", step_folder, "--data", str(dataset), "--output-dir", str(tmp_path / "o"),
                        "--batch-size", "4", "--device", "cpu", "--save-outputs", "--max-augmentations", "0",
                        "--log-every", "0"])
    assert rc == 0
    saved = load_outputs(tmp_path / "o" / "outputs.npz")
    assert saved["puzzle_identifiers"].tolist() == [1, 4, 4, 7, 10, 13, 13]
    _check_outputs(tmp_path / "o", dataset, 7)
    with pytest.raises(ValueError, match="max-augmentations"):
        TestSplit(dataset, max_augmentations=-1)


def test_evaluate_reference_checkpoint(fixtures_dir, tmp_path):
    ref = tmp_path / "ref"
    ref.mkdir()
    shutil.copy(fixtures_dir / "trm_tiny_state_dict.pt", ref / "step_7")
    config = json.loads((fixtures_dir / "config.json").read_text())
    arch = {k: v for k, v in config["model_config"].items()
            if k not in ("causal", "batch_size", "vocab_size", "seq_len", "num_puzzle_identifiers")}
    arch.update(name=config["arch_name"], loss={"name": config["loss"]["name"],
                                                "loss_type": config["loss"]["loss_type"]})
    (ref / "all_config.yaml").write_text(yaml.safe_dump({"arch": arch, "global_batch_size": 4}))
    rc = evaluate_main(["--checkpoint", str(ref / "step_7"), "--config", str(ref / "all_config.yaml"),
                        "--data", str(fixtures_dir / "tiny_dataset"), "--output-dir", str(tmp_path / "out"),
                        "--batch-size", "8", "--device", "cpu", "--log-every", "0", "--max-augmentations", "0"])
    assert rc == 0
    _check_outputs(tmp_path / "out", fixtures_dir / "tiny_dataset", 7)
    assert json.loads((tmp_path / "out" / "evaluation.json").read_text())["kind"] == "reference"


def test_step_folder_must_cover_the_dataset(tmp_path, fixtures_dir, step_folder):
    from trm.evaluation.evaluate import load_model

    with pytest.raises(ValueError, match="puzzle identifiers"):
        load_model(step_folder, None, 4, torch.device("cpu"), num_identifiers=1000)
    with pytest.raises(ValueError, match="--config"):
        load_model(step_folder, "x.yaml", 4, torch.device("cpu"))


@pytest.mark.s3
def test_evaluate_s3_in_and_out(step_folder, fixtures_dir, tmp_path, s3_env):
    from trm.storage import open_store

    store = open_store()
    store.ensure_bucket("trm")
    store.upload_dir(fixtures_dir / "tiny_dataset", "s3://trm/evaltest/dataset")
    store.upload_dir(step_folder, "s3://trm/evaltest/checkpoints/step-1")
    rc = evaluate_main(["--checkpoint", "s3://trm/evaltest/checkpoints/step-1", "--data", "s3://trm/evaltest/dataset",
                        "--output-dir", "s3://trm/evaltest/eval/step-1", "--batch-size", "8", "--device", "cpu",
                        "--log-every", "0"])
    assert rc == 0
    assert store.exists("s3://trm/evaltest/eval/step-1/_COMPLETE")
    puzzles, _ = load_dataset_files(fixtures_dir / "tiny_dataset")
    submission = json.loads(store.read_bytes("s3://trm/evaltest/eval/step-1/submission.json"))
    assert validate(submission, puzzles) == []
    assert "ARC/pass@2" in json.loads(store.read_bytes("s3://trm/evaltest/eval/step-1/metrics.json"))
    run = json.loads(store.read_bytes("s3://trm/evaltest/eval/step-1/evaluation.json"))
    assert run["weights"] == "ema" and run["checkpoint"] == "s3://trm/evaltest/checkpoints/step-1"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_ranks_match_one_process(step_folder, fixtures_dir, tmp_path):
    """Two CPU ranks (gloo) each take their slice of every batch; rank 0 gathers in dataset order. The
    predictions, q_halt logits, metrics and submission equal those of one process exactly."""
    import os
    import subprocess
    import sys

    dataset = fixtures_dir / "tiny_dataset"
    common = ["--checkpoint", step_folder, "--data", str(dataset), "--batch-size", "8", "--device", "cpu",
              "--save-outputs", "--log-every", "0"]
    assert evaluate_main(common + ["--output-dir", str(tmp_path / "one")]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), "-m",
                           "trm.evaluation.evaluate", *common, "--output-dir", str(tmp_path / "two")],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = load_outputs(tmp_path / "one" / "outputs.npz"), load_outputs(tmp_path / "two" / "outputs.npz")
    assert sorted(one) == sorted(two)
    for key in one:
        assert one[key].dtype == two[key].dtype and one[key].shape == two[key].shape, key
        assert np.array_equal(one[key], two[key]), f"{key}: 2 ranks differ from 1 process"
    for name in ("submission.json", "metrics.json", "pass_at_k.json"):
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name
    assert json.loads((tmp_path / "two" / "evaluation.json").read_text())["world_size"] == 2
    assert json.loads((tmp_path / "one" / "evaluation.json").read_text())["world_size"] == 1
