"""MDPR's own loss terms (spec section 5). Identity losses come from fastreid.

All of them stay on the input's device and never read values back to the host, so a training step
pays no host-device synchronisation for them and runs on a CPU as well.
"""
import torch
import torch.nn.functional as F


def attention_diversity_loss(pooled):
    """Push the M attention embeddings of one scale apart.

    ``pooled``: M tensors of shape B x E (or B x E x 1 x 1). Each embedding is L2-normalised per sample;
    the loss is ``sum_{i<j} mean_b <f_i^b, f_j^b>`` (for M=2 the mean cosine of the two embeddings).
    """
    f = F.normalize(torch.stack([p.flatten(1) for p in pooled], dim=1), dim=2)  # B x M x E
    mean_gram = torch.bmm(f, f.transpose(1, 2)).mean(dim=0)                      # M x M
    return torch.triu(mean_gram, diagonal=1).sum()


def attention_sparsity_loss(attention, scale):
    """``scale * sum(attention) / B``: keeps the foreground maps small (attention: B x M x H x W)."""
    return attention.sum() * (scale / attention.shape[0])


def mutual_distillation_loss(p1, p2, z1, z2):
    """SimSiam-style symmetric distillation with stop-gradient on the targets.

    ``p1 = P1(z1)`` predicts ``z2`` and ``p2 = P2(z2)`` predicts ``z1`` (all B x E). Returns
    ``-0.5 * (mean cos(p1, sg(z2)) + mean cos(p2, sg(z1)))``, which lies in [-1, 1].
    """
    return -0.5 * (F.cosine_similarity(p1, z2.detach(), dim=1).mean()
                   + F.cosine_similarity(p2, z1.detach(), dim=1).mean())
