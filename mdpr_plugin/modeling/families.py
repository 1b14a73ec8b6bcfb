"""What MDPR knows of fastreid's backbone families: where their last two stages begin, and how to build them.

Any other backbone is split by the general rule (``stages.py``): its ``layer3`` / ``layer4``, or the two modules
named in ``MODEL.BACKBONE.BRANCH_STAGES``.
"""
import importlib.util
import os

from torch import nn

from fastreid.modeling.backbones.mobilenet import MobileNetV2
from fastreid.modeling.backbones.osnet import OSNet
from fastreid.modeling.backbones.regnet import effnet as effnet_module
from fastreid.modeling.backbones.regnet import regnet as regnet_module
from fastreid.modeling.backbones.repvgg import RepVGG
from fastreid.modeling.backbones.resnest import ResNeSt
from fastreid.modeling.backbones.resnet import ResNet
from fastreid.modeling.backbones.resnext import ResNeXt

from ..errors import InputError

# Backbone class -> the modules where layer3 and layer4 begin. fastreid's MobileNetV2 has no last-stride option:
# its last stage (features.14 on, at stride 32) gets its first block set to stride 1 (LAST_STAGE_BLOCK).
KNOWN_STAGES = {
    ResNet: ("layer3", "layer4"),
    ResNeXt: ("layer3", "layer4"),
    ResNeSt: ("layer3", "layer4"),
    OSNet: ("conv4", "conv5"),
    regnet_module.RegNet: ("s3", "s4"),
    effnet_module.EffNet: ("s4", "s6"),  # s4-s5 at stride 16, s6-s7 and the 1x1 head after LAST_STRIDE
    RepVGG: ("stage3", "stage4"),
    MobileNetV2: ("features.7", "features.14"),
}
LAST_STAGE_BLOCK = {MobileNetV2: "features.14"}


def known_stages(backbone):
    for cls, stages in KNOWN_STAGES.items():
        if isinstance(backbone, cls):
            return stages
    return None


def last_stage_to_stride_1(backbone):
    """For a family without a last-stride option: its last stage's first block at stride 1 (every stride-2 conv)."""
    for cls, path in LAST_STAGE_BLOCK.items():
        if isinstance(backbone, cls):
            for module in backbone.get_submodule(path).modules():
                if isinstance(module, nn.Conv2d) and module.stride == (2, 2):
                    module.stride = (1, 1)


# ------------------------------------------------------------------------------ ResNet and ResNeXt
class NonLocalStage(nn.Module):
    """A residual stage followed, after some of its blocks, by fastreid's non-local blocks."""

    def __init__(self, blocks, non_local, positions):
        super().__init__()
        self.blocks = blocks
        self.non_local = non_local
        self.positions = list(positions)  # block index after which non_local[k] runs

    def forward(self, x):
        after = dict(zip(self.positions, self.non_local))
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in after:
                x = after[i](x)
        return x


def _stage(backbone, k):
    """layer{k}, wrapped with its non-local blocks if it has any."""
    layer = getattr(backbone, f"layer{k}")
    non_local = getattr(backbone, f"NL_{k}", None)
    # fastreid stores "no non-local block" as [] or, after a forward, [-1].
    positions = [i for i in getattr(backbone, f"NL_{k}_idx", []) if i >= 0]
    if non_local is None or not positions:
        return layer
    return NonLocalStage(layer, non_local, positions)


def resnet_chain(backbone):
    """fastreid's ResNet / ResNeXt as a chain. Their forward calls layer1..4 block by block with the non-local
    blocks in between, so no module call shows the stages: the chain is written out, each stage with its non-local
    blocks, under the names MDPR's state-dict keys have always had. None for another backbone."""
    if not isinstance(backbone, (ResNet, ResNeXt)):
        return None
    stem_pool = backbone.maxpool if isinstance(backbone, ResNet) else backbone.maxpool1
    return ([("conv1", backbone.conv1), ("bn1", backbone.bn1), ("relu", backbone.relu), ("maxpool", stem_pool)]
            + [(f"layer{k}", _stage(backbone, k)) for k in range(1, 5)])


# ------------------------------------------------------------------------------ RegNet and EfficientNet
# fastreid's builders open these files relative to the working directory; they live next to the installed module.
PYCLS_DIR = os.path.dirname(os.path.abspath(regnet_module.__file__))
_REGNET_SIZES = {"200": "200MF", "400": "400MF", "800": "800MF", "1600": "1.6GF", "3200": "3.2GF",
                 "4000": "4.0GF", "6400": "6.4GF"}
REGNET_FILES = {f"{size}{kind}": f"regnet{kind}/RegNet{kind.upper()}-{name}_dds_8gpu.yaml"
                for size, name in _REGNET_SIZES.items() for kind in "xy"}
EFFNET_FILES = {f"b{i}": f"effnet/EN-B{i}_dds_8gpu.yaml" for i in range(6)}


def _pycls_defaults():
    """A fresh copy of the RegNet / EfficientNet config's defaults, read from fastreid's own config module."""
    spec = importlib.util.spec_from_file_location("_mdpr_pycls_defaults", os.path.join(PYCLS_DIR, "config.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.cfg


def _build_pycls(cfg, files, make):
    """Set fastreid's shared RegNet / EfficientNet config to the defaults plus DEPTH's file, then ``make`` the model.
    The defaults come first: a file sets only some keys (RegNetY's SE_ON, say), and the config is shared by every
    model built, so without them one model's settings would leak into the next."""
    depth = cfg.MODEL.BACKBONE.DEPTH
    if depth not in files:
        raise InputError(f"MODEL.BACKBONE.DEPTH {depth!r} is not one of {cfg.MODEL.BACKBONE.NAME}'s depths: "
                         f"{', '.join(files)}. Set one of them.")
    shared = regnet_module.regnet_cfg
    shared.merge_from_other_cfg(_pycls_defaults())
    shared.merge_from_file(os.path.join(PYCLS_DIR, files[depth]))
    return make(cfg.MODEL.BACKBONE.LAST_STRIDE, cfg.MODEL.BACKBONE.NORM)


def build_regnet(cfg):
    """fastreid's RegNet from the installed package's files, whatever the working directory (no weights)."""
    return _build_pycls(cfg, REGNET_FILES, regnet_module.RegNet)


def build_effnet(cfg):
    """fastreid's EfficientNet from the installed package's files, whatever the working directory (no weights)."""
    return _build_pycls(cfg, EFFNET_FILES, effnet_module.EffNet)


# fastreid builder -> the plugin's (the same model, built without fastreid's working-directory paths)
OWN_BUILDERS = {regnet_module.build_regnet_backbone: build_regnet, effnet_module.build_effnet_backbone: build_effnet}
