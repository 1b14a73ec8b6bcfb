"""The embedding head MDPR uses for each of its features, and the declaration a branch makes of each head it feeds."""
from dataclasses import dataclass
from typing import Optional

from fastreid.modeling.heads import REID_HEADS_REGISTRY
from fastreid.modeling.heads.embedding_head import EmbeddingHead


@dataclass(frozen=True)
class HeadSpec:
    """One head a branch feeds: its name (the loss keys' ``<head>``), input width, pooling and training policy.

    ``pool_type`` None keeps ``MODEL.HEADS.POOL_LAYER``. A head with ``with_triplet`` False is trained
    with cross-entropy only; one with ``in_eval_feature`` False is training-only. fastreid logs the
    accuracy of the head with ``logs_accuracy`` (of the first head when none has it).
    """
    name: str
    width: int
    pool_type: Optional[str] = None
    with_triplet: bool = True
    in_eval_feature: bool = True
    logs_accuracy: bool = False


@REID_HEADS_REGISTRY.register()
class MDPRHead(EmbeddingHead):
    """fastreid's EmbeddingHead whose input width and pooling can be set per head.

    EmbeddingHead reads both from the config (``MODEL.BACKBONE.FEAT_DIM``, ``MODEL.HEADS.POOL_LAYER``),
    but MDPR's heads differ: E-wide GeM-pooled maps and M*E-wide already pooled BAP vectors.
    Everything else is EmbeddingHead's: BNNeck with frozen bias, classifier weight N(0, 0.01) used
    through ``MODEL.HEADS.CLS_LAYER``, ``NECK_FEAT`` choosing the triplet feature; at eval it returns
    the BNNeck output. Usage: ``MDPRHead(cfg, feat_dim=1024, pool_type="Identity")``.
    """

    @classmethod
    def from_config(cls, cfg, feat_dim=None, pool_type=None):
        args = super().from_config(cfg)
        if feat_dim is not None:
            args["feat_dim"] = feat_dim
        if pool_type is not None:
            args["pool_type"] = pool_type
        return args
