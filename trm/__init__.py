"""trm: Tiny Recursive Models on ARC-AGI, from task files to an ARC Prize submission.

The library behind the `trm` command, the KFP components and the PyTorchJob pods. It imports no kfp.
"""

__version__ = "0.1.0"
