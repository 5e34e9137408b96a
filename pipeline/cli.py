"""`trm pipeline`: compile, run locally, or submit the KFP pipeline.

    trm pipeline compile [--pipeline posttrain] [--output pipeline.yaml]
    trm pipeline run-local [--tasks N] [--run-id ID] [--param key=value ...]     # = make run
    trm pipeline run-local --pipeline posttrain --checkpoint URI [--tasks N] [--param key=value ...]
    trm pipeline submit [--pipeline posttrain] --host URL [--experiment NAME] [--param key=value ...]
    trm pipeline params [--pipeline posttrain]                                  # every parameter and default
"""

from __future__ import annotations

import sys

USAGE = __doc__.strip()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command == "compile":
        from pipeline.compile import main as run
    elif command == "run-local":
        from pipeline.local import main as run
    elif command == "submit":
        from pipeline.submit import main as run
    elif command == "params":
        from pipeline.params import PIPELINES, signature

        which = rest[1] if rest[:1] == ["--pipeline"] and len(rest) > 1 else "pretrain"
        if which not in PIPELINES or (rest and rest[:1] != ["--pipeline"]):
            print(f"trm pipeline params: expected [--pipeline {'|'.join(PIPELINES)}], got {rest}", file=sys.stderr)
            return 2
        for name, (kind, default) in signature(which).items():
            print(f"  {name:<26} {kind.__name__:<6} {default!r}")
        return 0
    else:
        print(f"trm pipeline: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    return int(run(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
