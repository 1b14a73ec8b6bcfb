"""MDPR's attention loss terms against direct, loop-based computations of their formulas."""
import pytest
import torch

from mdpr_plugin.modeling.losses import attention_diversity_loss, attention_sparsity_loss


def diversity_by_loops(pooled):
    """sum over i<j of mean_b <f_i^b / |f_i^b|, f_j^b / |f_j^b|>."""
    m, b = len(pooled), pooled[0].shape[0]
    total = 0.0
    for i in range(m):
        for j in range(i + 1, m):
            dots = []
            for s in range(b):
                fi, fj = pooled[i][s].flatten(), pooled[j][s].flatten()
                dots.append(float(fi @ fj) / (float(fi.norm()) * float(fj.norm())))
            total += sum(dots) / b
    return total


@pytest.mark.parametrize("m,b", [(2, 5), (3, 4), (4, 1), (2, 1)])
def test_diversity_matches_the_formula(m, b):
    pooled = [torch.randn(b, 8, 1, 1) for _ in range(m)]
    assert attention_diversity_loss(pooled).item() == pytest.approx(diversity_by_loops(pooled), abs=1e-5)


def test_diversity_is_the_mean_cosine_for_two_maps():
    f1, f2 = torch.randn(6, 8), torch.randn(6, 8)
    expected = torch.nn.functional.cosine_similarity(f1, f2, dim=1).mean()
    assert torch.allclose(attention_diversity_loss([f1, f2]), expected, atol=1e-6)
    assert attention_diversity_loss([f1, f1]).item() == pytest.approx(1.0, abs=1e-6)
    assert attention_diversity_loss([f1]).item() == 0.0  # M = 1: no pair


@pytest.mark.parametrize("b", [1, 3])
def test_sparsity_matches_the_formula(b):
    attention = torch.rand(b, 2, 4, 3)
    expected = 0.001 * sum(float(attention[s, i, y, x]) for s in range(b) for i in range(2)
                           for y in range(4) for x in range(3)) / b
    assert attention_sparsity_loss(attention, 0.001).item() == pytest.approx(expected, rel=1e-5)

