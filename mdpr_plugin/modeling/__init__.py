"""MDPR's model. Importing this package registers the ``MDPR`` meta-architecture and the ``MDPRHead``
head in fastreid's registries."""
from .authors_layout import convert_authors_state_dict, is_authors_layout, to_authors_state_dict
from .backbone import SplitBackbone, build_split_backbone, load_pretrained_weights
from .blocks import BAP, AttentionMaker, Embedding, FusionBlock, Guide, softmax_attn
from .branches import Fusion, HardContentBranch, SoftContentBranch
from .distillation import MutualDistillation, Predictor, mutual_distillation_loss
from .heads import HeadSpec, MDPRHead
from .losses import attention_diversity_loss, attention_sparsity_loss
from .mdpr import MDPR

__all__ = [
    "MDPR", "MDPRHead", "HeadSpec", "SplitBackbone", "build_split_backbone", "load_pretrained_weights",
    "Embedding", "AttentionMaker", "Guide", "softmax_attn", "BAP", "FusionBlock", "Predictor",
    "HardContentBranch", "SoftContentBranch", "Fusion", "MutualDistillation",
    "attention_diversity_loss", "attention_sparsity_loss", "mutual_distillation_loss",
    "convert_authors_state_dict", "is_authors_layout", "to_authors_state_dict",
]
