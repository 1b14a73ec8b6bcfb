"""MDPR's model. Importing this package registers the ``MDPR`` meta-architecture, the ``MDPRHead`` head and the
``build_timm_backbone`` backbone (usable with the ``timm`` extra) in fastreid's registries."""
from .authors_layout import convert_authors_state_dict, is_authors_layout, to_authors_state_dict
from .backbone import SplitBackbone, build_split_backbone, load_pretrained_weights
from .blocks import BAP, AttentionMaker, Embedding, FusionBlock, Guide, softmax_attn
from .branches import Fusion, HardContentBranch, SoftContentBranch
from .distillation import MutualDistillation, Predictor, mutual_distillation_loss
from .heads import HeadSpec, MDPRHead
from .losses import attention_diversity_loss, attention_sparsity_loss
from .mdpr import MDPR
from .timm_backbone import build_timm_backbone

__all__ = [
    "MDPR", "MDPRHead", "HeadSpec", "SplitBackbone", "build_split_backbone", "load_pretrained_weights",
    "Embedding", "AttentionMaker", "Guide", "softmax_attn", "BAP", "FusionBlock", "Predictor",
    "HardContentBranch", "SoftContentBranch", "Fusion", "MutualDistillation",
    "attention_diversity_loss", "attention_sparsity_loss", "mutual_distillation_loss",
    "convert_authors_state_dict", "is_authors_layout", "to_authors_state_dict", "build_timm_backbone",
]
