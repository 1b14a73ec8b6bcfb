"""MDPR's own loss terms against direct, loop-based computations of the spec's formulas."""
import pytest
import torch

from mdpr_plugin.modeling.losses import (attention_diversity_loss, attention_sparsity_loss,
                                         mutual_distillation_loss)
from modeling.mdpr_testutils import batch, build, small_cfg


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


def test_mutual_distillation_matches_the_formula_and_its_range():
    p1, p2, z1, z2 = (torch.randn(5, 8) for _ in range(4))
    cos = [float(p1[s] @ z2[s] / (p1[s].norm() * z2[s].norm())) for s in range(5)]
    cos2 = [float(p2[s] @ z1[s] / (p2[s].norm() * z1[s].norm())) for s in range(5)]
    expected = -0.5 * (sum(cos) / 5 + sum(cos2) / 5)
    assert mutual_distillation_loss(p1, p2, z1, z2).item() == pytest.approx(expected, abs=1e-6)
    assert mutual_distillation_loss(z2, z1, z1, z2).item() == pytest.approx(-1.0, abs=1e-6)


def test_distillation_passes_no_gradient_into_its_targets():
    z1, z2 = torch.randn(4, 8, requires_grad=True), torch.randn(4, 8, requires_grad=True)
    p1, p2 = torch.randn(4, 8, requires_grad=True), torch.randn(4, 8, requires_grad=True)
    grads = torch.autograd.grad(mutual_distillation_loss(p1, p2, z1, z2), [p1, p2, z1, z2], allow_unused=True)
    assert grads[0] is not None and grads[1] is not None
    assert grads[2] is None and grads[3] is None  # targets are stop-gradient


def test_distillation_in_the_model_trains_only_through_the_predictors():
    """With predictors that ignore their input, the distillation loss must leave the network untouched."""
    class IgnoreInput(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.anchor = torch.nn.Parameter(torch.randn(16))

        def forward(self, z):
            return self.anchor.expand_as(z)

    model = build(small_cfg())
    model.distillation.predictor1, model.distillation.predictor2 = IgnoreInput(), IgnoreInput()
    loss = model(batch())["loss_mutual_distillation"]
    anchors = [model.distillation.predictor1.anchor, model.distillation.predictor2.anchor]
    params = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("distillation.")]
    grads = torch.autograd.grad(loss, params + anchors, allow_unused=True)
    assert grads[-2] is not None
    assert grads[-1] is not None
    assert all(g is None or not g.any() for g in grads[:-2])


def test_distillation_reaches_both_branches_through_the_predictors():
    model = build(small_cfg())
    loss = model(batch())["loss_mutual_distillation"]
    for branch in ("hard", "soft"):
        layer4 = [p for p in getattr(model.backbone, branch).layer4.parameters() if p.requires_grad]
        grads = torch.autograd.grad(loss, layer4, retain_graph=True, allow_unused=True)
        assert any(g is not None and g.any() for g in grads), branch
