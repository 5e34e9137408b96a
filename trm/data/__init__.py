"""ARC data: sources (`sources`), validation (`validate`), augmentation and token layout (`augment`), the dataset
builder (`build`, `trm build-dataset`) and the train/test loaders (`loader`). See docs/data.md.

Import the submodules directly; this package imports nothing so that `trm build-dataset` stays torch-free.
"""
