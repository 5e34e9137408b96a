"""Time to write (and read back) a seed-size training checkpoint, locally and to the embedded S3 server.

    .venv/bin/python bench/bench_checkpoint.py                       # the seed: 1.28 M puzzle ids x 512, 2 repeats
    .venv/bin/python bench/bench_checkpoint.py --rows 100000 --repeats 1      # a quick look
    .venv/bin/python bench/bench_checkpoint.py --skip-s3 --dir /mnt/fast       # local disk only, elsewhere

What is written is what `trm train` writes at a checkpoint of the seed run (preset arc2-seed: hidden 512,
L_layers 2, H_cycles 3, L_cycles 4, EMA on), built from the real classes: the model's state_dict with its puzzle
embedding table (--rows x --dim float32), the EMA shadow of the trainable weights, both optimisers' states (after
one step, so AdamATan2's moments exist), the train state, config.yaml and meta.json, through
trm.checkpoint.Checkpoints.save (files fsynced, folder renamed into place; for s3:// also staged locally, then
uploaded with its _COMPLETE manifest). Baseline in the same run: one plain torch.save of the same objects to
one local file (no fsync), which is what the disk alone allows.

The SIGTERM grace period this suggests (printed last) is 2 x the slowest measured write to S3 plus 30 s for the
step in flight and the process start-up of the signal path, rounded up to 30 s. Memory: about 2x the table.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402


def seed_state(rows: int, dim: int) -> tuple[dict, dict]:
    """(objects, texts) exactly as Trainer.save passes them, for the seed model with `rows` puzzle identifiers."""
    from trm.config import load_config
    from trm.model import TRM, LossHead, ModelConfig
    from trm.optim import EMA, AdamATan2, SparseSignSGD

    cfg = load_config(["preset=arc2-seed", f"arch.hidden_size={dim}", f"arch.puzzle_emb_ndim={dim}"])
    import dataclasses

    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    arch = {k: v for k, v in dataclasses.asdict(cfg.arch).items() if k in fields}
    model_cfg = ModelConfig(**{**arch, "batch_size": 8, "vocab_size": 12, "seq_len": 900,
                               "num_puzzle_identifiers": rows, "forward_dtype": "float32"})
    model = LossHead(TRM(model_cfg), loss_type=cfg.arch.loss_type)
    dense_params = [p for p in model.parameters() if p.requires_grad]
    dense = AdamATan2(dense_params, lr=1e-4, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
    for p in dense_params:
        p.grad = torch.zeros_like(p)
    dense.step()  # creates the moments, as after the first training step
    sparse = SparseSignSGD(model.model.puzzle_emb, lr=0.0, weight_decay=cfg.puzzle_emb_weight_decay)
    ema = EMA(model, cfg.ema_rate)
    carry_rows = torch.zeros(8, 916, dim)
    train_state = {"step": 1000, "epoch": 3, "position": {"epoch": 3, "step": 7},
                   "carries": [{"z_H": carry_rows.clone(), "z_L": carry_rows.clone(), "steps": torch.zeros(8)}],
                   "rng": {"torch": torch.get_rng_state()}, "evaluated_through_epoch": 0, "world_size": 4}
    objects = {"model.pt": model.state_dict(),
               "optimizer.pt": {"dense": dense.state_dict(), "sparse": sparse.state_dict()},
               "train_state.pt": {**train_state, "ranks": [train_state]},
               "ema.pt": ema.state_dict()}
    return objects, {"config.yaml": cfg.to_yaml()}


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_280_000, help="puzzle identifiers (the seed: ~1.28 M)")
    parser.add_argument("--dim", type=int, default=512, help="hidden size = puzzle embedding width")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dir", type=Path, default=None, help="where local checkpoints go (default: a temp dir)")
    parser.add_argument("--skip-s3", action="store_true", help="local disk only")
    args = parser.parse_args()

    from trm.checkpoint import Checkpoints

    work = Path(tempfile.mkdtemp(prefix="trm-bench-ckpt-", dir=args.dir))
    os.environ["TRM_HOME"] = str(work / "home")  # staging of s3:// checkpoints, the server's data
    print(f"building the seed-size state: {args.rows} x {args.dim} puzzle embedding ...", flush=True)
    t0 = time.perf_counter()
    objects, texts = seed_state(args.rows, args.dim)
    print(f"  built in {time.perf_counter() - t0:.1f} s; load average {os.getloadavg()[0]:.2f}, "
          f"{os.cpu_count()} CPUs", flush=True)
    results: dict[str, list[float]] = {}
    size = 0
    try:
        for repeat in range(args.repeats):
            plain = work / "plain.pt"
            results.setdefault("baseline: one torch.save, no fsync", []).append(
                timed(lambda: torch.save(objects, plain)))
            plain.unlink()
            local = Checkpoints(work / "local", keep_last=1)
            results.setdefault("trm checkpoint, local disk", []).append(
                timed(lambda: local.save(1000 + repeat, objects=objects, texts=texts)))
            size = folder_bytes(Path(local.where(1000 + repeat)))
            results.setdefault("read back (verify + load), local", []).append(
                timed(lambda: local.load(local.where(1000 + repeat))))
        if not args.skip_s3:
            from trm.storage.embedded import EmbeddedS3

            with EmbeddedS3(work / "s3") as server:
                for key, value in server.env().items():
                    os.environ[key] = value
                for repeat in range(args.repeats):
                    remote = Checkpoints("s3://trm/bench/checkpoints", keep_last=1)
                    results.setdefault("trm checkpoint, embedded S3 (stage + upload)", []).append(
                        timed(lambda: remote.save(2000 + repeat, objects=objects, texts=texts)))
                    results.setdefault("read back (verify + load), embedded S3", []).append(
                        timed(lambda: remote.load(remote.where(2000 + repeat))))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    gib = size / 2 ** 30
    base = statistics.median(results["baseline: one torch.save, no fsync"])
    print(f"\ncheckpoint size {size / 1e9:.2f} GB ({gib:.2f} GiB); median of {args.repeats}")
    print(f"{'what':48} {'seconds':>8} {'GB/s':>6} {'x baseline':>10}")
    for name, times in results.items():
        med = statistics.median(times)
        print(f"{name:48} {med:8.1f} {size / 1e9 / med:6.2f} {med / base:10.2f}")
    worst = max(max(t) for n, t in results.items() if n.startswith("trm checkpoint"))
    grace = int(math.ceil((2 * worst + 30) / 30.0) * 30)
    print(f"\nslowest checkpoint write {worst:.1f} s -> suggested terminationGracePeriodSeconds >= {grace} "
          f"(2 x write + 30 s, rounded up to 30 s); under torchrun set TORCH_ELASTIC_SHUTDOWN_TIMEOUT to the "
          f"same value minus 10 s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
