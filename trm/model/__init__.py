"""TRM model: config, network with ACT, loss head, reference-checkpoint loading.

    from trm.model import ModelConfig, TRM, LossHead, load_reference_checkpoint
"""

from trm.model.config import ModelConfig
from trm.model.loss import IGNORE_LABEL_ID, LossHead, stablemax_cross_entropy
from trm.model.trm import TRM, Carry, PuzzleEmbedding
from trm.model.reference import load_reference_checkpoint, load_reference_state_dict, read_reference_config

__all__ = [
    "ModelConfig", "TRM", "LossHead", "Carry", "PuzzleEmbedding", "IGNORE_LABEL_ID", "stablemax_cross_entropy",
    "load_reference_checkpoint", "load_reference_state_dict", "read_reference_config",
]
