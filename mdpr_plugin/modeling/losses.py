"""MDPR's attention diversity and sparsity losses. Identity losses come from fastreid, the mutual
distillation loss from distillation.py.

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

