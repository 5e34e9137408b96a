"""`trm vote`: vote over saved outputs.npz files and write submission.json, metrics.json and the report.

    trm vote --outputs outputs.npz --data data/arc2 --output-dir out/vote
    trm vote --outputs rank0.npz --outputs rank1.npz --data s3://trm/runs/r1/dataset --output-dir s3://trm/runs/r1/eval/vote
    trm vote --outputs step-100.npz --outputs step-200.npz --pooled --data data/arc2 --output-dir out/pooled

The voting rules are in trm.evaluation.rules (the Voter), its numpy kernels in trm.evaluation.kernels, the files
it reads in trm.evaluation.files; the names are re-exported here for callers of the earlier single module.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from trm.data.augment import parse_variant_name
from trm.evaluation.files import (OUTPUT_KEYS, is_remote, load_dataset_files, load_outputs, localize_path,
                                  save_outputs, write_text)
from trm.evaluation.kernels import DIHEDRAL_INVERSE, GRID, SEQ_LEN, crop_sizes, dihedral, parse_names
from trm.evaluation.report import render_html, render_summary
from trm.evaluation.rules import PASS_KS, Candidate, Voter, VoteResult

__all__ = ["DIHEDRAL_INVERSE", "GRID", "OUTPUT_KEYS", "PASS_KS", "SEQ_LEN", "Candidate", "VoteResult", "Voter",
           "crop_sizes", "deliver", "dihedral", "is_remote", "load_dataset_files", "load_outputs", "localize_path",
           "main", "parse_variant", "save_outputs", "write_results"]


parse_variant = parse_variant_name  # (task, tid, mapping) of a variant name; the earlier name


def _parse_names(names: list[str]):
    """parse_names in the earlier form (task names, run [m], tids, mappings), kept for its test: one run a name."""
    tasks, tids, luts = parse_names(names)
    return tasks, np.arange(len(tasks)), tids, np.argsort(luts, axis=1).astype(np.uint8)


def write_results(result: VoteResult, test_puzzles: dict, out_dir, title: str = "TRM evaluation") -> Path:
    """submission.json, metrics.json, pass_at_k.json, report.html and summary.md into a local folder."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "submission.json", json.dumps(result.submission))
    write_text(out / "pass_at_k.json", json.dumps(result.pass_at_k(), indent=1))
    write_text(out / "metrics.json", json.dumps(result.metrics, indent=1))
    write_text(out / "report.html", render_html(result, test_puzzles, title=title))
    write_text(out / "summary.md", render_summary(result, title=title))
    return out


def deliver(local_dir: Path, dest: str) -> None:
    """Publish a finished local folder to `dest` (local path or s3://) through trm.storage."""
    from trm.storage import publish

    publish(str(local_dir), dest)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trm vote", description="Vote over saved outputs.npz files.")
    parser.add_argument("--outputs", action="append", required=True, help="outputs.npz (repeat to merge)")
    parser.add_argument("--data", required=True, help="dataset folder or s3:// URI")
    parser.add_argument("--output-dir", required=True, help="local folder or s3:// URI")
    parser.add_argument("--pooled", action="store_true",
                        help="the files are evaluations of different checkpoints: name metrics ARC_pooled/*")
    parser.add_argument("--workers", type=int, help="deprecated and ignored: voting runs in one process")
    args = parser.parse_args(argv)
    if args.workers is not None:
        print("trm vote: --workers is deprecated and ignored (voting runs in one process); it goes in the next "
              "release", file=sys.stderr)
    voter = Voter.from_dataset(args.data, prefix="ARC_pooled" if args.pooled else "ARC")
    for path in args.outputs:
        out = load_outputs(localize_path(path))
        voter.add(out["puzzle_identifiers"], out["inputs"], out["preds"], out["q_halt_logits"])
    result = voter.result()
    if is_remote(args.output_dir):
        with tempfile.TemporaryDirectory() as tmp:
            write_results(result, voter.test_puzzles, tmp, title="TRM vote")
            deliver(Path(tmp), args.output_dir)
    else:
        write_results(result, voter.test_puzzles, args.output_dir, title="TRM vote")
    print(json.dumps(result.pass_at_k()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
