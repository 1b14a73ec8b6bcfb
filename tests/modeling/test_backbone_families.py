"""MDPR on every stage-wise backbone: fastreid's families, timm's CNNs and backbones users register, and the refusals
of the rule that finds the stages."""
import os
import sys

import pytest
import timm
import torch
import torchvision
from torch import nn

from fastreid.modeling.backbones import BACKBONE_REGISTRY
from fastreid.utils.events import EventStorage
from mdpr_plugin.errors import InputError, MissingExtraError
from mdpr_plugin.modeling import build_split_backbone, build_timm_backbone, families
from mdpr_plugin.serialization import CheckpointError
from helpers import logged
from modeling.mdpr_testutils import E, batch, build, small_cfg


def _conv(in_channels, out_channels, stride):
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class UserNet(nn.Module):
    """A user's backbone with stage names of its own: body.2 and head run at stride 16 (or ``head_stride`` more)."""

    def __init__(self, head_stride=1):
        super().__init__()
        self.stem = _conv(3, 16, 4)
        self.body = nn.Sequential(_conv(16, 24, 2), _conv(24, 32, 2), _conv(32, 48, 1))
        self.head = _conv(48, 64, head_stride)

    def forward(self, x):
        return self.head(self.body(self.stem(x)))


class NotAChain(UserNet):
    """Computes between its modules: splitting it into modules would change it."""

    def forward(self, x):
        return self.head(self.body(self.stem(x)) * 2)


class TorchvisionResNetMaps(torchvision.models.ResNet):
    """A user's backbone: torchvision's ResNet returning its layer4 map, as fastreid's backbones return maps."""

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


@BACKBONE_REGISTRY.register()
def build_test_torchvision_resnet34(cfg):
    model = TorchvisionResNetMaps(torchvision.models.resnet.BasicBlock, [3, 4, 6, 3])
    model.layer4[0].conv1.stride = model.layer4[0].downsample[0].stride = (1, 1)  # last stride 1
    return model


@BACKBONE_REGISTRY.register()
def build_test_user_net(cfg):
    return UserNet()


@BACKBONE_REGISTRY.register()
def build_test_user_net_stride_2(cfg):
    return UserNet(head_stride=2)


@BACKBONE_REGISTRY.register()
def build_test_not_a_chain(cfg):
    return NotAChain()


NAME, DEPTH, TIMM = "MODEL.BACKBONE.NAME", "MODEL.BACKBONE.DEPTH", "MODEL.BACKBONE.TIMM_MODEL"
STAGES = "MODEL.BACKBONE.BRANCH_STAGES"
# (id, overrides, module where layer4 begins in the unsplit backbone)
FAMILIES = [
    ("fastreid_resnet18", [], "layer4"),
    ("fastreid_resnext50", [NAME, "build_resnext_backbone", DEPTH, "50x"], "layer4"),
    ("fastreid_resnest50", [NAME, "build_resnest_backbone", DEPTH, "50x"], "layer4"),
    ("fastreid_osnet_x0_25", [NAME, "build_osnet_backbone", DEPTH, "x0_25"], "conv5"),
    ("fastreid_regnety_200mf", [NAME, "build_regnet_backbone", DEPTH, "200y"], "s4"),
    ("fastreid_efficientnet_b0", [NAME, "build_effnet_backbone", DEPTH, "b0"], "s6"),
    ("fastreid_repvgg_a0", [NAME, "build_repvgg_backbone", DEPTH, "A0"], "stage4"),
    ("fastreid_mobilenetv2_0.1x", [NAME, "build_mobilenetv2_backbone", DEPTH, "0.1x"], "features.14"),
    ("timm_convnext_atto", [NAME, "build_timm_backbone", TIMM, "convnext_atto"], "stages.3"),
    ("timm_regnety_002", [NAME, "build_timm_backbone", TIMM, "regnety_002"], "s4"),
    ("timm_efficientnet_b0", [NAME, "build_timm_backbone", TIMM, "efficientnet_b0"], "blocks.5"),
    ("user_torchvision_resnet34", [NAME, "build_test_torchvision_resnet34"], "layer4"),
    ("user_named_stages", [NAME, "build_test_user_net", STAGES, "('body.2', 'head')"], "head"),
]


def unsplit_backbone_maps(cfg, layer4_begins, images):
    """The whole backbone's output and its layer3 map (what enters the module where layer4 begins), from a
    backbone built as the model's was, with the same seed."""
    torch.manual_seed(0)
    builder = BACKBONE_REGISTRY.get(cfg.MODEL.BACKBONE.NAME)
    backbone = families.OWN_BUILDERS.get(builder, builder)(cfg).eval()
    families.last_stage_to_stride_1(backbone)
    entered = []
    hooks = [module.register_forward_pre_hook(lambda _module, args: entered.append(args[0]))
             for module in backbone.get_submodule(layer4_begins).modules()]
    with torch.no_grad():
        output = backbone(images)
    for hook in hooks:
        hook.remove()
    return entered[0], output


@pytest.mark.parametrize("overrides,layer4_begins", [f[1:] for f in FAMILIES], ids=[f[0] for f in FAMILIES])
def test_mdpr_trains_and_evaluates_on_every_stage_wise_backbone(overrides, layer4_begins):
    cfg = small_cfg(*overrides)
    model = build(cfg, seed=0)
    assert all(module.training for module in model.modules())  # the probes leave the modes as they were
    model.eval()
    images = model.preprocess_image(batch()["images"])
    layer3_map, output = unsplit_backbone_maps(cfg, layer4_begins, images)
    with torch.no_grad():
        shared = model.backbone.trunk(images)
        for branch in (model.backbone.hard, model.backbone.soft):  # both copies start as the backbone's stages
            x3, x4 = branch(shared)
            assert torch.allclose(x3, layer3_map, rtol=1e-4, atol=1e-5)
            assert torch.allclose(x4, output, rtol=1e-4, atol=1e-5)
    widths = (layer3_map.shape[1], output.shape[1])
    assert (model.backbone.layer3_channels, model.backbone.layer4_channels) == widths
    assert x3.shape[-2:] == x4.shape[-2:]
    soft = model.soft_branch  # sized by the probed widths
    assert (soft.layer3_embedding.conv.in_channels, soft.attention4.conv1x1.in_channels) == widths
    assert model.hard_branch.global_embedding.conv.in_channels == widths[1]

    model.train()
    with EventStorage():
        losses = model(batch())
    assert len(losses) == 19 and all(torch.isfinite(value) for value in losses.values())
    sum(losses.values()).backward()
    unreached = [name for name, param in model.named_parameters()
                 if param.requires_grad and (param.grad is None or not torch.isfinite(param.grad).all())]
    assert unreached == []

    model.eval()
    with torch.no_grad():
        feature = model(batch()["images"])
    assert feature.shape == (4, 9 * E) and model.eval_feature_dim == 9 * E and torch.isfinite(feature).all()


def test_finding_the_stages_draws_no_random_numbers():
    """Modules draw their initial weights in build order: the probe must not shift what comes after."""
    cfg = small_cfg(NAME, "build_osnet_backbone", DEPTH, "x0_25")
    torch.manual_seed(0)
    BACKBONE_REGISTRY.get("build_osnet_backbone")(cfg)
    expected = torch.rand(3)
    torch.manual_seed(0)
    build_split_backbone(cfg)
    assert torch.equal(torch.rand(3), expected)


# ------------------------------------------------------------------------------------------------ the rule's refusals
def test_a_backbone_whose_stages_cannot_be_found_is_told_its_modules_and_the_key():
    with pytest.raises(InputError) as err:
        build(small_cfg(NAME, "build_test_user_net"))
    message = str(err.value)
    assert "looks for 'layer3', 'layer4', which the backbone does not have" in message
    assert "top-level modules, in order: stem, body, head" in message
    assert "MODEL.BACKBONE.BRANCH_STAGES" in message


@pytest.mark.parametrize("stages,message", [
    ("('body.7.0', 'head')", r"BRANCH_STAGES names 'body\.7\.0', which the backbone does not have"),
    ("('head', 'body.2')", "name the earlier stage first"),
    ("('head',)", "must be two module names"),
])
def test_branch_stages_that_do_not_fit_the_backbone_are_refused(stages, message):
    with pytest.raises(InputError, match=message):
        build(small_cfg(NAME, "build_test_user_net", STAGES, stages))


def test_a_forward_that_computes_outside_its_modules_is_refused():
    with pytest.raises(InputError, match="not a plain chain of its modules"):
        build(small_cfg(NAME, "build_test_not_a_chain", STAGES, "('body.2', 'head')"))


def test_stages_whose_maps_differ_in_size_are_refused_with_the_fix():
    with pytest.raises(InputError, match="same size") as err:
        build(small_cfg(NAME, "build_test_user_net_stride_2", STAGES, "('body.2', 'head')"))
    assert "MODEL.BACKBONE.LAST_STRIDE 1" in str(err.value) and "(4, 2) into (2, 1)" in str(err.value)


# ------------------------------------------------------------------------------------------- fastreid's RegNet family
@pytest.mark.parametrize("name,depth", [("build_regnet_backbone", "200x"), ("build_effnet_backbone", "b0")])
def test_regnet_and_efficientnet_build_from_any_working_directory(tmp_path, monkeypatch, name, depth):
    fastreids_builder = BACKBONE_REGISTRY.get(name)
    monkeypatch.chdir(tmp_path)
    cfg = small_cfg(NAME, name, DEPTH, depth)
    with pytest.raises(FileNotFoundError):  # fastreid's builder opens its file relative to the working directory
        fastreids_builder(cfg)
    model = build(cfg)
    assert model.backbone.layer4_channels > 0 and os.getcwd() == str(tmp_path)
    assert BACKBONE_REGISTRY.get(name) is fastreids_builder


def test_a_regnety_built_first_leaves_nothing_behind_in_a_regnetx():
    build(small_cfg(NAME, "build_regnet_backbone", DEPTH, "200y"))
    regnetx = build(small_cfg(NAME, "build_regnet_backbone", DEPTH, "200x"))
    assert not [name for name, _ in regnetx.backbone.named_modules() if name.endswith(".se")]


def test_pycls_weight_files_load_into_trunk_and_both_branches(tmp_path):
    torch.manual_seed(1)
    reference = families.build_regnet(small_cfg(NAME, "build_regnet_backbone", DEPTH, "200x")).state_dict()
    path = tmp_path / "regnetx.pyth"
    torch.save({"model_state": reference, "epoch": 100}, path)
    model = build(small_cfg(NAME, "build_regnet_backbone", DEPTH, "200x", "MODEL.BACKBONE.PRETRAIN", True,
                            "MODEL.BACKBONE.PRETRAIN_PATH", str(path)), seed=2)
    ours = model.state_dict()
    assert torch.equal(ours["backbone.trunk.stem.conv.weight"], reference["stem.conv.weight"])
    for branch in ("hard", "soft"):
        assert torch.equal(ours[f"backbone.{branch}.layer4.b1.f.b.weight"], reference["s4.b1.f.b.weight"])


# ---------------------------------------------------------------------------------------------------------- timm
def test_timm_weight_files_load_key_for_key_through_the_safe_reader(tmp_path):
    torch.manual_seed(1)
    reference = timm.create_model("convnext_atto", pretrained=False).state_dict()  # with its classifier
    path = tmp_path / "convnext_atto.pth"
    torch.save({"state_dict": reference}, path)
    cfg = small_cfg(NAME, "build_timm_backbone", TIMM, "convnext_atto", "MODEL.BACKBONE.PRETRAIN", True,
                    "MODEL.BACKBONE.PRETRAIN_PATH", str(path))
    ours = build(cfg, seed=2).state_dict()
    assert torch.equal(ours["backbone.trunk.stem.0.weight"], reference["stem.0.weight"])
    for branch in ("hard", "soft"):
        assert torch.equal(ours[f"backbone.{branch}.layer3.blocks.1.conv_dw.weight"],
                           reference["stages.2.blocks.1.conv_dw.weight"])
    # The builder alone (fastreid's Baseline, say) loads the file too, and refuses one that could run code.
    assert torch.equal(build_timm_backbone(cfg).state_dict()["stages.3.blocks.1.mlp.fc2.weight"],
                       reference["stages.3.blocks.1.mlp.fc2.weight"])
    torch.save({"state_dict": reference, "args": torch.nn.Identity()}, path)
    with pytest.raises(CheckpointError, match="pickled Python object"):
        build_timm_backbone(cfg)


def test_without_timm_the_builder_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(MissingExtraError, match=r"mdpr-plugin\[timm\]"):
        build(small_cfg(NAME, "build_timm_backbone", TIMM, "convnext_atto"))


@pytest.mark.parametrize("model,message", [
    ("", "needs MODEL.BACKBONE.TIMM_MODEL"),
    ("convnext_atoo", "Did you mean convnext_atto"),
    ("mobilenetv3_small_050", "cannot run its last stage at stride 1.*output_stride=16"),
])
def test_timm_models_that_cannot_serve_are_refused_with_the_reason(model, message):
    with pytest.raises(InputError, match=message):
        build(small_cfg(NAME, "build_timm_backbone", TIMM, model))


# ---------------------------------------------------------------------------------------------------------- norms
def train_step(model):
    losses = model(batch())
    sum(losses.values()).backward()
    return all(torch.isfinite(value) for value in losses.values())


@pytest.mark.parametrize("norm", ["BN", "syncBN", "GhostBN", "FrozenBN"])
def test_fastreids_norms_train(norm):
    model = build(small_cfg("MODEL.BACKBONE.NORM", norm))
    assert train_step(model)
    # MDPR's own blocks start untrained: with FrozenBN (the backbone's statistics frozen) they use BN.
    expected = {"BN": "BatchNorm", "syncBN": "SyncBatchNorm", "GhostBN": "GhostBatchNorm", "FrozenBN": "BatchNorm"}
    assert type(model.soft_branch.attention4.bn).__name__ == expected[norm]
    assert type(model.backbone.trunk.bn1).__name__ == {"FrozenBN": "FrozenBatchNorm"}.get(norm, expected[norm])


def test_group_norm_is_refused_with_the_reason():
    with pytest.raises(InputError, match="GroupNorm with 32 groups.*ATTN_NUM \\+ 1 attention maps"):
        build(small_cfg("MODEL.BACKBONE.NORM", "GN"))


@pytest.mark.parametrize("norm,layer", [("syncBN", nn.SyncBatchNorm), ("FrozenBN", timm.layers.FrozenBatchNormAct2d)])
def test_timm_batchnorms_follow_the_norm(norm, layer):
    model = build(small_cfg(NAME, "build_timm_backbone", TIMM, "regnety_002", "MODEL.BACKBONE.NORM", norm))
    assert isinstance(model.backbone.trunk.stem.bn, layer) and train_step(model)


def test_timm_refuses_a_norm_it_cannot_convert():
    with pytest.raises(InputError, match="'GhostBN' cannot be applied to a timm model"):
        build(small_cfg(NAME, "build_timm_backbone", TIMM, "regnety_002", "MODEL.BACKBONE.NORM", "GhostBN"))


def test_the_timm_builder_says_which_resnet_options_it_ignores():
    with logged() as warnings:
        build(small_cfg(NAME, "build_timm_backbone", TIMM, "test_convnext", "MODEL.BACKBONE.WITH_IBN", True))
    assert [m for m in warnings if "ignores MODEL.BACKBONE.WITH_IBN" in m and "test_convnext" in m]


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [[NAME, "build_osnet_backbone", DEPTH, "x0_25"],
                                       [NAME, "build_timm_backbone", TIMM, "convnext_atto"]],
                         ids=["fastreid_osnet", "timm_convnext"])
def test_mdpr_on_other_backbones_exports_to_onnx(overrides, tmp_path):
    import onnxruntime  # the onnx extra, part of the test extra

    from mdpr_plugin.tools.export import export_onnx

    model = build(small_cfg(*overrides)).eval()
    path = export_onnx(model, str(tmp_path / "model.onnx"), 64, 32)
    images = batch(3)["images"]
    with torch.no_grad():
        expected = model(images).numpy()
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: images.numpy()})
    assert got.shape == expected.shape
    assert abs(got - expected).max() <= 1e-4 * abs(expected).max()
