"""The embedding head MDPR uses for each of its features, and the declaration a branch makes of each head it feeds."""
from dataclasses import dataclass
from typing import Optional

from fastreid.modeling.heads import REID_HEADS_REGISTRY
from fastreid.modeling.heads.embedding_head import EmbeddingHead


# The identity losses an MDPR head can be trained with: the names MODEL.LOSSES.NAME may hold for MDPR.
IDENTITY_LOSSES = ("CrossEntropyLoss", "TripletLoss")


@dataclass(frozen=True)
class HeadSpec:
    """One head a branch feeds: its name (the loss keys' ``<head>``), input width, pooling and training policy.

    ``pool_type`` None keeps ``MODEL.HEADS.POOL_LAYER``. A head is trained with the identity losses
    ``MODEL.LOSSES.NAME`` names (:meth:`identity_losses`); one with ``follows_loss_names`` False with both
    whatever it names, and one with ``with_triplet`` False never with triplet loss. One with
    ``in_eval_feature`` False is training-only. fastreid logs the accuracy of the head with ``logs_accuracy``
    (of the first head when none has it).
    """
    name: str
    width: int
    pool_type: Optional[str] = None
    with_triplet: bool = True
    in_eval_feature: bool = True
    logs_accuracy: bool = False
    follows_loss_names: bool = True

    def identity_losses(self, loss_names):
        """The names of :data:`IDENTITY_LOSSES` this head is trained with under MODEL.LOSSES.NAME ``loss_names``."""
        wanted = loss_names if self.follows_loss_names else IDENTITY_LOSSES
        return tuple(name for name in IDENTITY_LOSSES
                     if name in wanted and (self.with_triplet or name != "TripletLoss"))


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
