"""Mutual distillation: the predictors, the loss against its formula, the features it distils and its gradients."""
import pytest
import torch

from mdpr_plugin.modeling import MutualDistillation, Predictor, mutual_distillation_loss
from modeling.mdpr_testutils import E, batch, build, small_cfg


def test_predictor_layout():
    predictor = Predictor(5)
    assert [type(m).__name__ for m in predictor] == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert predictor[0].bias is None and predictor[3].bias is not None


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


def test_module_distils_hard_global_into_attn_feature4_and_back():
    """Of all the heads' outputs, the module reads the hard_global and attn_feature4 features, in that order."""
    distillation = MutualDistillation(8).eval()
    outputs = {name: {"features": torch.randn(3, 8)}
               for name in ("hard_global", "hard_part_0", "attn_feature4", "attn_feature3", "fusion")}
    z_hard, z_soft = outputs["hard_global"]["features"], outputs["attn_feature4"]["features"]
    p1, p2 = distillation.predictor1, distillation.predictor2
    assert torch.equal(distillation(outputs), mutual_distillation_loss(p1(z_hard), p2(z_soft), z_hard, z_soft))
    assert not torch.equal(distillation(outputs), mutual_distillation_loss(p1(z_soft), p2(z_hard), z_soft, z_hard))


def test_model_loss_is_the_formula_on_the_hard_global_and_attn_feature4_head_features():
    model = build(small_cfg())
    features = {}
    for name in ("hard_global", "attn_feature4", "attn_feature3"):
        model.heads[name].register_forward_hook(
            lambda module, inputs, out, name=name: features.__setitem__(name, out["features"]))
    loss = model(batch())["loss_mutual_distillation"]

    def by_hand(hard, soft):  # the predictors in training mode, on the same batch: the model's own outputs
        z_hard, z_soft = features[hard], features[soft]
        return mutual_distillation_loss(model.distillation.predictor1(z_hard), model.distillation.predictor2(z_soft),
                                        z_hard, z_soft)

    assert torch.equal(loss, by_hand("hard_global", "attn_feature4"))
    assert not torch.equal(loss, by_hand("hard_global", "attn_feature3"))


def test_state_dict_keys_stay_under_distillation_predictor1_and_predictor2():
    keys = [k for k in build(small_cfg()).state_dict() if k.startswith("distillation.")]
    assert {k.split(".")[1] for k in keys} == {"predictor1", "predictor2"}
    assert "distillation.predictor1.0.weight" in keys and "distillation.predictor2.3.bias" in keys
    assert build(small_cfg()).distillation.predictor1[0].weight.shape == (E, E)


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
