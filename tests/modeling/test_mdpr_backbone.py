"""Splitting fastreid's ResNet family, pretrained weights, refusals, and the full-size parameter count."""
import pytest
import torch

from fastreid.modeling.backbones import BACKBONE_REGISTRY
from fastreid.modeling.meta_arch import META_ARCH_REGISTRY
from mdpr_plugin.errors import InputError
from mdpr_plugin.modeling import build_split_backbone
from mdpr_plugin.modeling.families import NonLocalStage
from modeling.mdpr_testutils import E, batch, build, small_cfg

FAMILIES = [
    # (id, overrides, layer3 / layer4 widths)
    ("resnet18", [], (256, 512)),
    ("resnet34", ["MODEL.BACKBONE.DEPTH", "34x"], (256, 512)),
    ("resnet18_ibn_se", ["MODEL.BACKBONE.WITH_IBN", True, "MODEL.BACKBONE.WITH_SE", True], (256, 512)),
    ("resnet50", ["MODEL.BACKBONE.DEPTH", "50x"], (1024, 2048)),
    ("resnet50_ibn_nl", ["MODEL.BACKBONE.DEPTH", "50x", "MODEL.BACKBONE.WITH_IBN", True,
                         "MODEL.BACKBONE.WITH_NL", True], (1024, 2048)),
    ("resnest50", ["MODEL.BACKBONE.NAME", "build_resnest_backbone", "MODEL.BACKBONE.DEPTH", "50x"], (1024, 2048)),
    ("resnext50_ibn_nl", ["MODEL.BACKBONE.NAME", "build_resnext_backbone", "MODEL.BACKBONE.DEPTH", "50x",
                          "MODEL.BACKBONE.WITH_IBN", True, "MODEL.BACKBONE.WITH_NL", True], (1024, 2048)),
]


@pytest.mark.parametrize("overrides,widths", [f[1:] for f in FAMILIES], ids=[f[0] for f in FAMILIES])
def test_every_backbone_family_splits_and_matches_the_unsplit_backbone(overrides, widths):
    cfg = small_cfg(*overrides)
    torch.manual_seed(0)
    whole = BACKBONE_REGISTRY.get(cfg.MODEL.BACKBONE.NAME)(cfg).eval()
    torch.manual_seed(0)  # same initial weights
    split = build_split_backbone(cfg).eval()
    assert (split.layer3_channels, split.layer4_channels) == widths

    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        expected = whole(x)
        shared = split.trunk(x)
        hard3, hard4 = split.hard(shared)
        soft3, soft4 = split.soft(shared)
    assert hard3.shape == (2, widths[0], 4, 2)
    # Both copies start as the backbone's own layer3 / layer4 (non-local blocks included, in place).
    assert torch.allclose(hard4, expected, atol=1e-5) and torch.allclose(soft4, expected, atol=1e-5)
    assert split.hard.layer4 is not split.soft.layer4
    if cfg.MODEL.BACKBONE.WITH_NL:
        assert isinstance(split.trunk.layer2, NonLocalStage) and isinstance(split.hard.layer3, NonLocalStage)


def test_a_resnet50_mdpr_builds_and_runs():
    model = build(small_cfg("MODEL.BACKBONE.DEPTH", "50x")).eval()
    with torch.no_grad():
        assert model(batch(2)["images"]).shape == (2, 9 * E)


def test_pretrain_without_a_file_is_refused_rather_than_downloaded():
    with pytest.raises(InputError, match="PRETRAIN_PATH is empty") as err:
        build(small_cfg("MODEL.BACKBONE.PRETRAIN", True, "MODEL.BACKBONE.PRETRAIN_PATH", ""))
    assert "never downloads" in str(err.value) and "MODEL.BACKBONE.PRETRAIN False" in str(err.value)


def test_last_stride_2_is_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"MODEL\.BACKBONE\.LAST_STRIDE 1"):
        build(small_cfg("MODEL.BACKBONE.LAST_STRIDE", 2))


def test_missing_pretrained_file_names_the_file_and_the_way_out(tmp_path):
    path = str(tmp_path / "nowhere.pth")
    cfg = small_cfg("MODEL.BACKBONE.PRETRAIN", True, "MODEL.BACKBONE.PRETRAIN_PATH", path)
    with pytest.raises(FileNotFoundError, match="nowhere.pth") as err:
        build(cfg)
    assert "MODEL.BACKBONE.PRETRAIN False" in str(err.value)


def test_pretrained_weights_are_loaded_before_the_split(tmp_path):
    cfg = small_cfg()
    torch.manual_seed(1)
    reference = BACKBONE_REGISTRY.get(cfg.MODEL.BACKBONE.NAME)(cfg).state_dict()
    # A MoCo-style file: wrapped, prefixed, with a momentum encoder and an fc that must be ignored.
    moco = {f"module.encoder_q.{k}": v for k, v in reference.items()}
    moco.update({f"module.encoder_k.{k}": torch.zeros_like(v) for k, v in reference.items()})
    moco["module.encoder_q.fc.weight"] = torch.zeros(128, 512)
    path = tmp_path / "moco.pth"
    torch.save({"state_dict": moco, "epoch": 200}, path)

    model = build(small_cfg("MODEL.BACKBONE.PRETRAIN", True, "MODEL.BACKBONE.PRETRAIN_PATH", str(path)), seed=2)
    ours = model.state_dict()
    assert torch.equal(ours["backbone.trunk.conv1.weight"], reference["conv1.weight"])
    assert torch.equal(ours["backbone.trunk.layer2.1.conv2.weight"], reference["layer2.1.conv2.weight"])
    for branch in ("hard", "soft"):
        assert torch.equal(ours[f"backbone.{branch}.layer3.0.conv1.weight"], reference["layer3.0.conv1.weight"])
        assert torch.equal(ours[f"backbone.{branch}.layer4.1.bn2.running_var"], reference["layer4.1.bn2.running_var"])


def test_a_pretrained_file_that_matches_nothing_is_refused(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"model": {"encoder.blocks.0.weight": torch.zeros(3)}}, path)
    with pytest.raises(InputError, match="no tensor"):
        build(small_cfg("MODEL.BACKBONE.PRETRAIN", True, "MODEL.BACKBONE.PRETRAIN_PATH", str(path)))


def test_r101_ibn_parameter_counts_per_part():
    cfg = small_cfg("MODEL.BACKBONE.DEPTH", "101x", "MODEL.BACKBONE.WITH_IBN", True,
                    "MODEL.BACKBONE.EMBEDDING_DIM", 512, "MODEL.HEADS.NUM_CLASSES", 751)
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = META_ARCH_REGISTRY.get("MDPR")(cfg)

    def count(module):
        return sum(p.numel() for p in module.parameters())

    # expected sizes in millions; each figure is compared to its last printed digit
    groups = {
        "trunk": (count(model.backbone.trunk), 1.44),
        "hard layer3/4": (count(model.backbone.hard), 41.06),
        "soft layer3/4": (count(model.backbone.soft), 41.06),
        "backbone": (count(model.backbone), 83.56),
        "branch extras": (count(model.hard_branch) + count(model.soft_branch), 9.02),
        "fusion": (count(model.fusion), 65.55),
        "predictors": (count(model.distillation), 1.05),
        "heads": (count(model.heads), 5.0),
    }
    for name, (measured, millions) in groups.items():
        digits = 1 if name == "heads" else 2
        assert round(measured / 1e6, digits) == millions, name
    total = count(model)
    assert abs(total - 164.18e6) / 164.18e6 < 1e-3
    model.eval()
    with torch.no_grad():
        assert model(torch.empty(2, 3, 64, 32, device="meta")).shape == (2, 4608)
    assert model.eval_feature_dim == 4608
