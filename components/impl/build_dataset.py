"""The plain-Python work of the `build_dataset` component (`components/build_dataset.py`); imported inside the pod.

KFP runs component code with `_KFP_RUNTIME=true`, where `kfp.dsl` has no `component` decorator, so the code a
pod imports lives here, apart from the `@dsl.component` definitions.
"""

from __future__ import annotations


def build_argv(input_prefix: str, output: str, subsets: list, test_set_names: list, train_only_subsets: list,
               num_aug: int, seed: int, enable_train_translation: bool) -> list[str]:
    """`trm build-dataset` flags for these parameters."""
    argv = ["--input-file-prefix", input_prefix, "--output-dir", output, "--subsets", *subsets,
            "--test-set-name", *test_set_names, "--num-aug", str(num_aug), "--seed", str(seed)]
    if train_only_subsets:
        argv += ["--train-only-subsets", *train_only_subsets]
    argv.append("--enable-train-translation" if enable_train_translation else "--no-enable-train-translation")
    return argv


def facts(uri: str) -> dict:
    """Key numbers of a built dataset, from its `dataset.json` files."""
    from components import runtime

    out: dict = {}
    for split in ("train", "test"):
        meta = runtime.read_json(runtime.join(uri, split, "dataset.json"))
        out[f"{split}_puzzles"] = int(meta.get("total_puzzles", 0))
        out[f"{split}_groups"] = int(meta.get("total_groups", 0))
        out["num_puzzle_identifiers"] = int(meta.get("num_puzzle_identifiers", 0))
    return out


def run(run_root: str, input_prefix: str, subsets: list, test_set_names: list, train_only_subsets: list,
        num_aug: int, seed: int, enable_train_translation: bool, dataset) -> dict:
    from components import runtime
    from trm.data import build

    uri = runtime.join(run_root, "dataset")
    argv = build_argv(input_prefix, uri, subsets, test_set_names, train_only_subsets, num_aug, seed,
                      enable_train_translation)
    if runtime.exists(runtime.join(uri, "_COMPLETE")):
        build.check_reuse(uri, argv)  # ValueError naming the parameters when it was built with others
        runtime.log(f"dataset already complete at {uri} with these parameters: reusing it")
    else:
        runtime.log("trm build-dataset " + " ".join(argv))
        status = build.main(argv)
        if status:
            raise RuntimeError(f"trm build-dataset exited with status {status}")
    record = runtime.write_pointer(dataset, uri, source=input_prefix, subsets=list(subsets),
                                   test_set_names=list(test_set_names), num_aug=num_aug, seed=seed, **facts(uri))
    runtime.log(f"dataset {record}")
    return record
