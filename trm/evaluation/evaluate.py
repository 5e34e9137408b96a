"""Run a checkpoint on the test split, vote, and write submission.json, metrics.json, report.html, summary.md.

    trm evaluate --checkpoint runs/try1/checkpoints/step-1000 --data data/arc2 --output-dir out/eval
    trm evaluate --checkpoint s3://trm/runs/r1/checkpoints/step-5000 --data s3://trm/runs/r1/dataset \
        --output-dir s3://trm/runs/r1/eval/step-5000 --save-outputs
    trm evaluate --checkpoint ref/step_723000 --config ref/all_config.yaml --data data/arc2 --output-dir out/ref \
        --max-augmentations 8 --batch-size 256 --device cuda
    torchrun --nproc-per-node 4 -m trm.evaluation.evaluate --checkpoint ... --data ... --output-dir ...

`--checkpoint` is one of our `step-N/` folders (model.pt, ema.pt when EMA was on, config.yaml; see
docs/ARCHITECTURE.md "Checkpoints"), or a reference `step_<N>` file with `--config all_config.yaml` (default:
all_config.yaml beside it); either local or `s3://`. Every test-split example (or, with `--max-augmentations N`,
the original plus the first N variants of every group) runs halt_max_steps ACT steps in global batches of
`--batch-size`; under torchrun rank r takes rows [r*B/W, (r+1)*B/W) of each batch and rank 0 gathers the
predictions, votes (trm.evaluation.vote) and writes the files. `--save-outputs` adds outputs.npz
(puzzle_identifiers, inputs, preds, q_halt_logits of every evaluated example in dataset order), which
`trm vote` can vote on again. evaluation.json records what was run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from trm.data.loader import augmentation_rows
from trm.evaluation.vote import SEQ_LEN, Voter, load_dataset_files, save_outputs, write_results

IGNORE_LABEL = -100


# ----------------------------------------------------------------------------------------------- data


class TestSplit:
    """The test split of a dataset folder: arrays, and the examples selected for evaluation."""

    __test__ = False

    def __init__(self, root: Path, max_augmentations: int | None = None):
        folder = root / "test"
        arrays = {}
        for name in ("inputs", "labels", "puzzle_identifiers", "puzzle_indices", "group_indices"):
            path = folder / f"all__{name}.npy"
            if not path.is_file():
                raise FileNotFoundError(f"dataset {root}: {path.name} not found in test/")
            arrays[name] = np.load(path, mmap_mode="r" if name in ("inputs", "labels") else None)
        meta_path = folder / "dataset.json"
        self.meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        self.inputs, self.labels = arrays["inputs"], arrays["labels"]
        pidx = arrays["puzzle_indices"].astype(np.int64)
        gidx = arrays["group_indices"].astype(np.int64)
        pids = arrays["puzzle_identifiers"].astype(np.int64)
        n = self.inputs.shape[0]
        if self.inputs.shape != (n, SEQ_LEN) or self.labels.shape != (n, SEQ_LEN):
            raise ValueError(f"dataset {root}: test inputs/labels must be [N, {SEQ_LEN}]")
        if pidx.shape != (pids.size + 1,) or pidx[0] != 0 or pidx[-1] != n or gidx[0] != 0 or gidx[-1] != pids.size:
            raise ValueError(f"dataset {root}: test puzzle_indices/group_indices do not fit the arrays")
        sizes = np.diff(pidx)
        self.example_ids = np.repeat(pids, sizes)
        self.positions = np.arange(n) - np.repeat(pidx[:-1], sizes)  # index within its puzzle
        if max_augmentations is not None and max_augmentations < 0:
            raise ValueError(f"--max-augmentations must be >= 0, got {max_augmentations}")
        self.selected = augmentation_rows(pidx, gidx, max_augmentations)
        self.pad_id = int(self.meta.get("pad_id", 0))
        self.ignore_label_id = self.meta.get("ignore_label_id", 0)

    def batch(self, rows: np.ndarray, size: int) -> dict[str, torch.Tensor]:
        """The examples `rows` (global indices) as a batch of `size`, padded with PAD inputs and identifier 0."""
        inputs = np.full((size, SEQ_LEN), self.pad_id, dtype=np.int32)
        labels = np.full((size, SEQ_LEN), IGNORE_LABEL, dtype=np.int32)
        ids = np.zeros(size, dtype=np.int32)
        k = rows.size
        if k:
            inputs[:k] = self.inputs[rows]
            lab = np.asarray(self.labels[rows], dtype=np.int32)
            if self.ignore_label_id is not None:
                lab[lab == int(self.ignore_label_id)] = IGNORE_LABEL
            labels[:k] = lab
            ids[:k] = self.example_ids[rows]
        return {"inputs": torch.from_numpy(inputs), "labels": torch.from_numpy(labels),
                "puzzle_identifiers": torch.from_numpy(ids)}


# ----------------------------------------------------------------------------------------------- model


def _local(uri: str) -> Path:
    if str(uri).startswith("s3://"):
        from trm.storage import localize

        return Path(localize(uri))
    path = Path(uri)
    if not path.exists():
        raise FileNotFoundError(f"{uri}: not found")
    return path


def _is_step_folder(uri: str) -> bool:
    if str(uri).startswith("s3://"):
        return os.path.basename(str(uri).rstrip("/")).startswith("step-")
    return Path(uri).is_dir()


def load_model(checkpoint: str, config: str | None, batch_size: int, device: torch.device,
               dtype: str | None = None, weights: str = "auto", num_identifiers: int | None = None):
    """(LossHead in eval mode on `device`, a description) from our step-N folder or a reference step_N file.

    `num_identifiers`: the dataset's num_puzzle_identifiers. A reference table of another size is replaced by
    its mean row (load_reference_checkpoint logs it); our own checkpoint must cover the dataset's identifiers.
    """
    from trm.model import TRM, LossHead, ModelConfig, load_reference_checkpoint

    fields = {"batch_size": batch_size}
    if dtype:
        fields["forward_dtype"] = dtype
    if not _is_step_folder(checkpoint):
        cfg_path = _local(config) if config else None
        extra = {"num_puzzle_identifiers": num_identifiers} if num_identifiers else {}
        model = load_reference_checkpoint(_local(checkpoint), cfg_path, **fields, **extra)
        return model.to(device).eval(), {"kind": "reference", "checkpoint": checkpoint, "weights": "model"}
    if config:
        raise ValueError("--config is for reference step_<N> files; a step-N folder carries its config.yaml")
    import dataclasses

    from trm.checkpoint import Checkpoints
    from trm.config import load_config

    where = str(checkpoint).rstrip("/")
    store = Checkpoints(os.path.dirname(where) or ".")
    meta = store.read_meta(where)
    names = ["model.pt", "config.yaml"]
    has_ema = "ema.pt" in meta.get("files", {}) or (not where.startswith("s3://") and (Path(where) / "ema.pt").is_file())
    if weights == "ema" and not has_ema:
        raise ValueError(f"{where}: --weights ema but the checkpoint has no ema.pt")
    use_ema = has_ema and weights in ("auto", "ema")
    if use_ema:
        names.append("ema.pt")
    loaded = store.load(where, names)
    with tempfile.TemporaryDirectory() as tmp:
        cfg_file = Path(tmp) / "config.yaml"
        cfg_file.write_text(loaded["config.yaml"])
        cfg = load_config(["--config", str(cfg_file)])
    state = loaded["model.pt"]
    table = state.get("model.inner.puzzle_emb.weights")
    model_fields = {f.name for f in dataclasses.fields(ModelConfig)}
    arch = {k: v for k, v in dataclasses.asdict(cfg.arch).items() if k in model_fields}
    arch["halt_max_steps_eval"] = cfg.eval_halt_max_steps  # the run's evaluation depth (top-level key wins)
    if table is not None and table.ndim == 2:
        arch["num_puzzle_identifiers"] = int(table.shape[0])
        if num_identifiers and num_identifiers > table.shape[0]:
            raise ValueError(f"{where}: the checkpoint knows {table.shape[0]} puzzle identifiers, the dataset has "
                             f"{num_identifiers}; evaluate on the dataset it was trained with")
    model_cfg = ModelConfig(**{**arch, **fields})
    model = LossHead(TRM(model_cfg), loss_type=cfg.arch.loss_type)
    missing = sorted(set(model.state_dict()) - set(state))
    unexpected = sorted(set(state) - set(model.state_dict()))
    if missing or unexpected:
        raise ValueError(f"{where}/model.pt does not match the model of its config.yaml: missing {missing or 'none'},"
                         f" unexpected {unexpected or 'none'}")
    model.load_state_dict(state, strict=True)
    if use_ema:
        shadow = loaded["ema.pt"]["shadow"]
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name in shadow:
                    p.copy_(shadow[name])
    return model.to(device).eval(), {"kind": "step", "checkpoint": where, "weights": "ema" if use_ema else "model",
                                     "step": meta.get("step")}


# ----------------------------------------------------------------------------------------------- run


def _environment(device_arg: str) -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_arg == "auto":
        device_arg = "cuda" if torch.cuda.is_available() else "cpu"
    if device_arg == "cuda":
        device = torch.device("cuda", local_rank if world > 1 else torch.cuda.current_device())
        torch.cuda.set_device(device)
    else:
        device = torch.device(device_arg)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


@torch.inference_mode()
def predict(model, split: TestSplit, global_batch: int, rank: int, world: int, device: torch.device,
            log_every: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """This rank's (global example indices, preds uint8 [n, 900], q_halt_logits float32 [n])."""
    if global_batch < 1 or global_batch % world:
        raise ValueError(f"--batch-size ({global_batch}) must be a positive multiple of the world size ({world})")
    local = global_batch // world
    sel = split.selected
    rows_out, preds_out, q_out = [], [], []
    n_batches = (sel.size + global_batch - 1) // global_batch
    t0 = time.time()
    for i, start in enumerate(range(0, sel.size, global_batch)):
        rows = sel[start:start + global_batch][rank * local:(rank + 1) * local]
        batch = {k: v.to(device) for k, v in split.batch(rows, local).items()}
        carry = model.initial_carry(batch)
        while True:
            carry, _loss, _metrics, outputs, done = model(carry=carry, batch=batch,
                                                          return_keys=("preds", "q_halt_logits"))
            if bool(done):
                break
        k = rows.size
        rows_out.append(rows)
        preds_out.append(outputs["preds"][:k].to(torch.uint8).cpu().numpy())
        q_out.append(outputs["q_halt_logits"][:k].float().cpu().numpy())
        if log_every and rank == 0 and ((i + 1) % log_every == 0 or i + 1 == n_batches):
            print(f"[trm evaluate] batch {i + 1}/{n_batches} ({time.time() - t0:.1f} s)", file=sys.stderr)
    if not rows_out:
        return np.zeros(0, np.int64), np.zeros((0, SEQ_LEN), np.uint8), np.zeros(0, np.float32)
    return np.concatenate(rows_out), np.concatenate(preds_out), np.concatenate(q_out)


def _gather(part, rank: int, world: int):
    if world == 1:
        return [part]
    parts = [None] * world if rank == 0 else None
    dist.gather_object(part, parts, dst=0)
    return parts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trm evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="our step-N/ folder or a reference step_<N> file")
    parser.add_argument("--config", help="all_config.yaml of a reference checkpoint (default: beside it)")
    parser.add_argument("--data", required=True, help="dataset folder or s3:// URI")
    parser.add_argument("--output-dir", required=True, help="local folder or s3:// URI")
    parser.add_argument("--max-augmentations", type=int, default=None,
                        help="evaluate the original plus the first N variants of every group")
    parser.add_argument("--save-outputs", action="store_true", help="also write outputs.npz")
    parser.add_argument("--batch-size", type=int, default=256, help="global batch size (split over ranks)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or a torch device string")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                        help="override the checkpoint's forward_dtype (e.g. float32 on CPU)")
    parser.add_argument("--weights", choices=("auto", "ema", "model"), default="auto",
                        help="step-N folders: EMA weights when present (auto), or force one")
    parser.add_argument("--log-every", type=int, default=20, help="progress line every N batches (0: never)")
    args = parser.parse_args(argv)

    rank, world, device = _environment(args.device)
    t_start = time.time()
    data = _local(args.data)
    split = TestSplit(data, args.max_augmentations)
    model, info = load_model(args.checkpoint, args.config, args.batch_size // max(world, 1), device,
                             dtype=args.dtype, weights=args.weights,
                             num_identifiers=split.meta.get("num_puzzle_identifiers"))
    rows, preds, q = predict(model, split, args.batch_size, rank, world, device, log_every=args.log_every)
    parts = _gather((rows, preds, q), rank, world)
    if rank != 0:
        dist.barrier()
        return 0
    rows = np.concatenate([p[0] for p in parts])
    order = np.argsort(rows, kind="stable")  # dataset order
    rows = rows[order]
    preds = np.concatenate([p[1] for p in parts])[order]
    q = np.concatenate([p[2] for p in parts])[order]
    seconds_model = time.time() - t_start

    ids = split.example_ids[rows]
    inputs = np.asarray(split.inputs[rows], dtype=np.uint8)
    voter = Voter.from_dataset(data)
    voter.add(ids, inputs, preds, q, positions=split.positions[rows], copy=False)  # arrays of this function
    result = voter.result()
    test_puzzles, _ = load_dataset_files(data)
    run = {**info, "data": args.data, "examples": int(rows.size), "test_examples": int(split.inputs.shape[0]),
           "max_augmentations": args.max_augmentations, "batch_size": args.batch_size, "world_size": world,
           "device": str(device), "seconds": round(time.time() - t_start, 3),
           "seconds_inference": round(seconds_model, 3)}
    title = f"TRM evaluation: {os.path.basename(str(args.checkpoint).rstrip('/'))}"

    def fill(folder: Path) -> None:
        write_results(result, test_puzzles, folder, title=title)
        (folder / "evaluation.json").write_text(json.dumps(run, indent=1))
        if args.save_outputs:
            save_outputs(folder / "outputs.npz", ids, inputs, preds, q)

    if str(args.output_dir).startswith("s3://"):
        from trm.storage import publish

        with tempfile.TemporaryDirectory() as tmp:
            fill(Path(tmp))
            publish(tmp, args.output_dir)
    else:
        fill(Path(args.output_dir))
    print(json.dumps({k: v for k, v in result.metrics.items()}))
    if world > 1:
        dist.barrier()
    return 0


if __name__ == "__main__":
    from trm.cli import guarded

    code = guarded("evaluate", main)  # expected failures: one line, exit code 1 (TRM_DEBUG=1: traceback)
    if dist.is_initialized():
        dist.destroy_process_group()
    sys.exit(code)
