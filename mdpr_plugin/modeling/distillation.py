"""Mutual distillation between the two branches: its predictors, its loss and the head features it distils."""
import torch.nn.functional as F
from torch import nn


class Predictor(nn.Sequential):
    """SimSiam predictor: Linear (no bias) -> BN1d -> ReLU -> Linear.

    Left at PyTorch's default initialisation: ``weights_init_kaiming`` is applied to the conv blocks only.
    """

    def __init__(self, dim):
        super().__init__(
            nn.Linear(dim, dim, bias=False),
            nn.BatchNorm1d(dim),
            nn.ReLU(inplace=True),
            nn.Linear(dim, dim),
        )


def mutual_distillation_loss(p1, p2, z1, z2):
    """SimSiam-style symmetric distillation with stop-gradient on the targets.

    ``p1 = P1(z1)`` predicts ``z2`` and ``p2 = P2(z2)`` predicts ``z1`` (all B x E). Returns
    ``-0.5 * (mean cos(p1, sg(z2)) + mean cos(p2, sg(z1)))``, which lies in [-1, 1]. Like the other loss
    terms it stays on the input's device and reads nothing back to the host.
    """
    return -0.5 * (F.cosine_similarity(p1, z2.detach(), dim=1).mean()
                   + F.cosine_similarity(p2, z1.detach(), dim=1).mean())


class MutualDistillation(nn.Module):
    """The hard branch's global feature and the soft branch's layer4 feature each predict the other.

    Both are the training ``features`` of their heads (E wide, pooled); the targets are stop-gradient,
    so the loss reaches each branch only through the predictor that reads it.
    """
    hard_head = "hard_global"
    soft_head = "attn_feature4"

    def __init__(self, embedding_dim):
        super().__init__()
        self.predictor1 = Predictor(embedding_dim)  # hard -> soft
        self.predictor2 = Predictor(embedding_dim)  # soft -> hard

    def forward(self, head_outputs):
        """``head_outputs``: head name -> that head's training output dict. Returns the loss."""
        z_hard, z_soft = head_outputs[self.hard_head]["features"], head_outputs[self.soft_head]["features"]
        return mutual_distillation_loss(self.predictor1(z_hard), self.predictor2(z_soft), z_hard, z_soft)
