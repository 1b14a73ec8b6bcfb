"""The MDPR meta-architecture: shapes, loss keys, eval widths and gradients per ablation, plus forward details."""
import dataclasses

import pytest
import torch
from torch import nn

from fastreid.utils.events import EventStorage
from helpers import logged
from mdpr_plugin.modeling import Fusion, HardContentBranch, MDPRHead, SoftContentBranch, mdpr
from modeling.mdpr_testutils import E, batch, build, small_cfg

HARD = {"loss_hard_global_cls", "loss_hard_global_triplet",
        "loss_hard_part_0_cls", "loss_hard_part_0_triplet",
        "loss_hard_part_1_cls", "loss_hard_part_1_triplet"}
DIVERSITY = {"loss_diversity_loss_4", "loss_diversity_loss_reg_4",
             "loss_diversity_loss_3", "loss_diversity_loss_reg_3"}
SOFT = {"loss_attn_feature4_cls", "loss_attn_feature4_triplet", "loss_attn_bap4_cls",
        "loss_attn_feature3_cls", "loss_attn_feature3_triplet", "loss_attn_bap3_cls"} | DIVERSITY
FUSION = {"loss_fusion_cls", "loss_fusion_triplet"}
DISTILLATION = {"loss_mutual_distillation"}
DEFAULT = HARD | SOFT | FUSION | DISTILLATION
FOUR_PARTS = {f"loss_hard_part_{i}_{kind}" for i in range(4) for kind in ("cls", "triplet")}

# (id, config overrides, M, P, expected loss keys, expected eval width)
ABLATIONS = [
    ("default", [], 2, 2, DEFAULT, 9 * E),  # E*(P+3) + 4E
    ("no_fusion", ["FUSION_ENABLE", False], 2, 2, DEFAULT - FUSION, 5 * E),
    ("no_distillation", ["DISTILLATION_ENABLE", False], 2, 2, DEFAULT - DISTILLATION, 9 * E),
    ("no_diversity", ["ATTN_DIVERSITY_LOSS_ENABLE", False], 2, 2, DEFAULT - DIVERSITY, 9 * E),
    ("unguided", ["ATTN_GUIDED", False], 2, 2, DEFAULT, 9 * E),
    ("hard_only", ["SOFT_BRANCH_ENABLE", False], 2, 2, HARD, 3 * E),  # E*(P+1)
    ("soft_only", ["HARD_BRANCH_ENABLE", False], 2, 2, SOFT, 2 * E),
    ("M3_P4", ["ATTN_NUM", 3, "PART_NUM", 4], 3, 4, DEFAULT - HARD | FOUR_PARTS | {
        "loss_hard_global_cls", "loss_hard_global_triplet"}, 11 * E),
]


class Recorder:
    """Forward hooks that keep the latest output of named submodules."""

    def __init__(self, model, names):
        self.out = {}
        modules = dict(model.named_modules())
        self.handles = [modules[n].register_forward_hook(self._hook(n)) for n in names if n in modules]

    def _hook(self, name):
        def hook(module, inputs, output):
            self.out[name] = output
        return hook


RECORDED = ["backbone.trunk", "backbone.hard", "backbone.soft", "hard_branch", "soft_branch",
            "soft_branch.attention4", "soft_branch.attention3", "soft_branch.layer3_embedding",
            "soft_branch.guide", "fusion", "fusion.merge_parts"]


@pytest.mark.parametrize("overrides,m,p,keys,width", [a[1:] for a in ABLATIONS], ids=[a[0] for a in ABLATIONS])
def test_ablation_shapes_losses_width_and_gradients(overrides, m, p, keys, width):
    model = build(small_cfg(*overrides))
    b, h, w = 4, 4, 2  # 64x32 input -> 4x2 maps at layer3 and layer4 (last stride 1)
    f3, f4 = 256, 512  # ResNet-18
    rec = Recorder(model, RECORDED)
    with EventStorage():
        losses = model(batch(b))
    assert set(losses) == keys
    if keys == DEFAULT:
        assert len(losses) == 19
    for name, value in losses.items():
        assert value.dim() == 0 and torch.isfinite(value), name

    shapes = {n: o.shape if torch.is_tensor(o) else o for n, o in rec.out.items()}
    assert shapes["backbone.trunk"] == (b, f3 // 2, 2 * h, 2 * w)
    if model.hard_branch is not None:
        assert [t.shape for t in rec.out["backbone.hard"]] == [(b, f3, h, w), (b, f4, h, w)]
        hard_global, parts = rec.out["hard_branch"]
        assert hard_global.shape == (b, E, h, w)
        assert [t.shape for t in parts] == [(b, E, h // p, w)] * p
    if model.soft_branch is not None:
        assert [t.shape for t in rec.out["backbone.soft"]] == [(b, f3, h, w), (b, f4, h, w)]
        assert shapes["soft_branch.attention4"] == shapes["soft_branch.attention3"] == (b, m + 1, h, w)
        assert shapes["soft_branch.layer3_embedding"] == (b, f3, h, w)
        if "ATTN_GUIDED" in overrides:
            assert model.soft_branch.guide is None and "soft_branch.guide" not in shapes
        else:
            assert shapes["soft_branch.guide"] == (b, m + 1, h, w)
        soft = rec.out["soft_branch"]
        assert soft.feature4.shape == soft.feature3.shape == (b, E, h, w)
        assert soft.attention4.shape == soft.attention3.shape == (b, m, h, w)
        assert soft.bap4.shape == soft.bap3.shape == (b, m * E, 1, 1)
        assert [t.shape for t in soft.pooled4 + soft.pooled3] == [(b, E, 1, 1)] * (2 * m)
    else:
        assert "soft_branch.guide" not in shapes
    if model.fusion is not None:
        assert shapes["fusion.merge_parts"] == (b, E, h, w)
        assert shapes["fusion"] == (b, 4 * E, h, w)

    # Every trainable parameter gets a gradient; the BNNecks' frozen biases are not trainable.
    sum(losses.values()).backward()
    no_grad = [n for n, prm in model.named_parameters()
               if prm.requires_grad and (prm.grad is None or not prm.grad.abs().sum() > 0)]
    assert no_grad == []
    assert all(not head.bottleneck[0].bias.requires_grad for head in model.heads.values())

    model.eval()
    with torch.no_grad():
        feature = model(batch(b)["images"])
    assert feature.shape == (b, width) and model.eval_feature_dim == width


def test_eval_feature_is_the_heads_bnneck_outputs_in_order():
    model = build(small_cfg()).eval()
    assert model.eval_feature_names == ["hard_global", "hard_part_0", "hard_part_1",
                                        "attn_feature4", "attn_feature3", "fusion"]
    rec = Recorder(model, [f"heads.{n}.bottleneck" for n in model.eval_feature_names])
    with torch.no_grad():
        feature = model(batch()["images"])
    expected = torch.cat([rec.out[f"heads.{n}.bottleneck"][..., 0, 0] for n in model.eval_feature_names], 1)
    assert torch.equal(feature, expected)


def test_bap_heads_are_declared_cross_entropy_only_and_training_only():
    specs = {spec.name: spec for spec in SoftContentBranch.head_specs(E, 3)}
    assert list(specs) == ["attn_feature4", "attn_bap4", "attn_feature3", "attn_bap3"]
    for spec in (specs["attn_bap4"], specs["attn_bap3"]):
        assert (spec.width, spec.pool_type) == (3 * E, "Identity")
        assert not spec.with_triplet and not spec.in_eval_feature
    assert all(specs[name].with_triplet and specs[name].in_eval_feature for name in ("attn_feature4", "attn_feature3"))

    model = build(small_cfg())
    declared = HardContentBranch.head_specs(E, 2) + SoftContentBranch.head_specs(E, 2) + Fusion.head_specs(E)
    assert list(model.head_specs.values()) == declared and list(model.heads) == [spec.name for spec in declared]
    assert type(model.heads["attn_bap4"].pool_layer).__name__ == "Identity"
    assert model.heads["attn_bap4"].bottleneck[0].num_features == 2 * E
    losses = model(batch())
    assert {"loss_attn_bap4_cls", "loss_attn_bap3_cls"} <= set(losses)
    assert [key for key in losses if key.startswith("loss_attn_bap") and key.endswith("_triplet")] == []
    assert {"attn_bap4", "attn_bap3"}.isdisjoint(model.eval_feature_names)
    assert model.eval_feature_dim == sum(spec.width for spec in declared if spec.in_eval_feature) == 9 * E


TRIPLET = {key for key in DEFAULT if key.endswith("_triplet")}
BAP_CE = {"loss_attn_bap4_cls", "loss_attn_bap3_cls"}
OWN = DIVERSITY | DISTILLATION  # MDPR's own losses, with their own switches


@pytest.mark.parametrize("names, keys", [
    ("('CrossEntropyLoss', 'TripletLoss')", DEFAULT),
    ("('CrossEntropyLoss',)", DEFAULT - TRIPLET),
    # as in the authors' model, the BAP heads are trained with cross-entropy whatever the names say
    ("('TripletLoss',)", TRIPLET | BAP_CE | OWN),
])
def test_loss_names_switch_cross_entropy_and_triplet_of_every_head(names, keys):
    model = build(small_cfg("MODEL.LOSSES.NAME", names))
    losses = model(batch())
    assert set(losses) == keys
    assert all(torch.isfinite(value) for value in losses.values())


def test_the_model_reads_the_declared_policy_rather_than_head_names(monkeypatch):
    declared = SoftContentBranch.head_specs
    monkeypatch.setattr(SoftContentBranch, "head_specs", staticmethod(lambda e, m: [
        dataclasses.replace(spec, with_triplet=True, in_eval_feature=True) for spec in declared(e, m)]))
    model = build(small_cfg())
    assert {"loss_attn_bap4_triplet", "loss_attn_bap3_triplet"} <= set(model(batch()))
    assert model.eval_feature_names[3:7] == ["attn_feature4", "attn_bap4", "attn_feature3", "attn_bap3"]
    assert model.eval_feature_dim == 9 * E + 2 * (2 * E)


def test_eval_computes_neither_bap_nor_attention_unless_output_all():
    model = build(small_cfg()).eval()
    watched = ["soft_branch.bap4", "soft_branch.bap3", "soft_branch.attention4", "soft_branch.attention3",
               "heads.attn_bap4", "heads.attn_bap3"]
    rec = Recorder(model, watched)
    assert len(rec.handles) == len(watched)  # Recorder skips names the model lacks: a rename would watch nothing
    with torch.no_grad():
        model(batch()["images"])
    assert rec.out == {} and model.last_attention_maps is None


def test_output_all_keeps_the_attention_maps():
    model = build(small_cfg("OUTPUT_ALL", True)).eval()
    images = batch(3)["images"]
    with torch.no_grad():
        feature = model(images)
        maps = model.attention_maps(images)
    assert feature.shape == (3, 9 * E)
    assert set(model.last_attention_maps) == {"attention4", "attention3"}
    for name, attention in model.last_attention_maps.items():
        assert attention.shape == (3, 2, 4, 2)
        assert torch.equal(attention, maps[name])
        # softmax over M+1 maps with the background dropped: the foreground sums to at most 1
        assert (attention.sum(1) <= 1 + 1e-6).all() and (attention >= 0).all()


def test_attention_maps_needs_the_soft_branch():
    model = build(small_cfg("SOFT_BRANCH_ENABLE", False)).eval()
    with pytest.raises(ValueError, match="SOFT_BRANCH_ENABLE"):
        model.attention_maps(batch()["images"])


def test_both_branches_off_is_refused():
    with pytest.raises(ValueError, match="HARD_BRANCH_ENABLE and SOFT_BRANCH_ENABLE"):
        build(small_cfg("HARD_BRANCH_ENABLE", False, "SOFT_BRANCH_ENABLE", False))


def test_one_branch_off_logs_the_skipped_fusion_and_distillation():
    with logged() as warnings:
        model = build(small_cfg("HARD_BRANCH_ENABLE", False))
    assert model.fusion is None and model.distillation is None
    assert sum("FUSION_ENABLE" in m for m in warnings) == 1
    assert sum("DISTILLATION_ENABLE" in m for m in warnings) == 1


def test_preprocess_leaves_the_callers_images_alone():
    model = build(small_cfg())
    data = batch()
    images, targets = data["images"].clone(), data["targets"].clone()
    model(data)
    model.eval()
    with torch.no_grad():
        model(data)
    assert torch.equal(data["images"], images) and torch.equal(data["targets"], targets)
    normalised = model.preprocess_image(data)
    assert normalised.device == model.device
    assert torch.allclose(normalised, (images - model.pixel_mean) / model.pixel_std)


def test_precise_bn_targets_of_minus_one_are_read_as_class_zero():
    model = build(small_cfg())
    data = batch()
    data["targets"] = torch.full((4,), -1)
    losses = model(data)
    assert all(torch.isfinite(v) for v in losses.values())
    assert (data["targets"] == -1).all()


def test_training_needs_targets():
    model = build(small_cfg())
    with pytest.raises(ValueError, match="targets"):
        model(batch()["images"])


def test_batch_of_one():
    model = build(small_cfg())
    model.eval()
    with torch.no_grad():
        assert model(batch(1)["images"]).shape == (1, 9 * E)
    # Train-mode BatchNorm itself refuses one value per channel (PyTorch's rule; SyncBN over several
    # devices or frozen BN avoids it), so run the training path with BN in eval mode: MDPR's own code
    # (stripes, attention, BAP, diversity, distillation, losses) must cope with B = 1.
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
    losses = model(batch(1))
    assert set(losses) == DEFAULT
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()


def test_training_losses_never_read_values_back_to_the_host(monkeypatch):
    model = build(small_cfg())
    data = batch()

    def refuse(*args, **kwargs):
        raise AssertionError("host-device sync in the training forward")

    # .item/.cpu/.tolist are the usual culprits; bool()/float()/int() of a tensor sync as well.
    for name in ("item", "cpu", "tolist", "numpy", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, refuse)
    losses = model(data)
    total = sum(losses.values())
    total.backward()  # the backward of every loss term, GeM's learnable p and the BAP included
    monkeypatch.undo()
    assert set(losses) == DEFAULT and torch.isfinite(total)
    assert model.soft_branch.bap4.pool.p.grad is not None


@pytest.mark.parametrize("overrides,head", [([], "attn_bap4"), (["SOFT_BRANCH_ENABLE", False], "hard_global")])
def test_accuracy_is_logged_from_the_declared_head_inside_the_trainers_storage(monkeypatch, overrides, head):
    model = build(small_cfg(*overrides))
    logged, logits = [], {}
    monkeypatch.setattr(mdpr, "log_accuracy", lambda pred, targets: logged.append(pred))
    model.heads[head].register_forward_hook(lambda module, inputs, out: logits.update(out))
    model(batch())
    assert logged == []  # outside the trainer's storage there is nothing to log to
    with EventStorage():
        model(batch())
    assert len(logged) == 1 and torch.equal(logged[0], logits["pred_class_logits"])
    monkeypatch.undo()
    with EventStorage() as storage:
        model(batch())
        assert "cls_accuracy" in storage.latest()


def test_backbone_is_one_child_that_fastreids_layer_freeze_covers():
    from fastreid.engine.hooks import LayerFreeze
    model = build(small_cfg())
    children = dict(model.named_children())
    assert {"trunk", "hard", "soft"} <= {n for n, _ in children["backbone"].named_children()}
    backbone_params = {id(p) for p in model.backbone.parameters()}
    for name, prm in model.named_parameters():
        assert (id(prm) in backbone_params) == name.startswith("backbone.")
    hook = LayerFreeze(model, ["backbone"], freeze_iters=10)
    hook.freeze_specific_layer()
    assert not any(m.training for m in model.backbone.modules())
    assert all(m.training for m in model.heads.modules())
    hook.open_all_layer()
    assert all(m.training for m in model.backbone.modules())


def test_heads_lr_factor_applies_to_every_head_and_nothing_else():
    """In the trainer's optimizer every parameter of every MDPR head, wherever the model holds it, learns at
    SOLVER.HEADS_LR_FACTOR x BASE_LR and every other one at BASE_LR (fastreid applies the factor to the
    top-level child named "heads")."""
    from mdpr_plugin.engine import Trainer
    cfg = small_cfg("SOLVER.HEADS_LR_FACTOR", 10.0, "SOLVER.BIAS_LR_FACTOR", 1.0)
    model = build(cfg)
    heads = [module for module in model.modules() if isinstance(module, MDPRHead)]
    assert len(heads) == 8
    head_params = {id(p) for head in heads for p in head.parameters()}
    optimizer, _ = Trainer.build_optimizer(cfg, model)
    lr = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    assert lr.keys() == {id(p) for _, p in trainable}
    for name, p in trainable:
        factor = 10 if id(p) in head_params else 1
        assert lr[id(p)] == pytest.approx(factor * cfg.SOLVER.BASE_LR, rel=1e-12), name
