"""MDPR's backbone: fastreid's ResNet-like backbone cut into a shared trunk and two (layer3, layer4) copies.

The backbone is built through fastreid's ``BACKBONE_REGISTRY`` (``MODEL.BACKBONE.NAME``) and its
pretrained weights are loaded before the cut, so both branches start from the same weights.
Stages that carry fastreid's non-local blocks (``WITH_NL``) keep them, in their original positions.
"""
import copy
import logging
import os
from collections import OrderedDict

import torch
from torch import nn

from fastreid.modeling.backbones import BACKBONE_REGISTRY
from fastreid.modeling.backbones.resnest import ResNeSt
from fastreid.modeling.backbones.resnet import ResNet
from fastreid.modeling.backbones.resnext import ResNeXt
from fastreid.utils.checkpoint import get_missing_parameters_message

from ..errors import InputError, MissingFileError
from ..serialization import safe_load

logger = logging.getLogger(__name__)

# Backbone class -> name of its stem max-pool attribute (the only attribute name that differs).
_STEM_POOL = {ResNet: "maxpool", ResNeXt: "maxpool1", ResNeSt: "maxpool"}
SUPPORTED_BUILDERS = ("build_resnet_backbone", "build_resnext_backbone", "build_resnest_backbone")


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


class BranchLayers(nn.Module):
    """One branch's own copy of layer3 and layer4; returns both maps."""

    def __init__(self, layer3, layer4):
        super().__init__()
        self.layer3 = layer3
        self.layer4 = layer4

    def forward(self, x):
        x3 = self.layer3(x)
        return x3, self.layer4(x3)


class SplitBackbone(nn.Module):
    """``trunk`` (conv1 .. layer2, shared) and each branch's (layer3, layer4): ``hard`` and ``soft``.

    A disabled branch has None. ``layer3_channels`` / ``layer4_channels`` are the measured widths
    (F/2 and F: 256 / 512 for ResNet-18/34, 1024 / 2048 for ResNet-50/101).
    """

    def __init__(self, trunk, hard, soft, layer3_channels, layer4_channels):
        super().__init__()
        self.trunk = trunk
        self.hard = hard
        self.soft = soft
        self.layer3_channels = layer3_channels
        self.layer4_channels = layer4_channels


def build_split_backbone(cfg, with_hard=True, with_soft=True):
    """Build ``MODEL.BACKBONE.NAME``, load its pretrained weights, and cut it (see module doc)."""
    _check_last_stride(cfg)
    name = cfg.MODEL.BACKBONE.NAME
    pretrain_path = cfg.MODEL.BACKBONE.PRETRAIN_PATH if cfg.MODEL.BACKBONE.PRETRAIN else ""
    if pretrain_path:
        _check_pretrain_file(pretrain_path)
        # We load the file ourselves (see load_pretrained_weights), so fastreid must not.
        cfg = cfg.clone()
        cfg.defrost()
        cfg.MODEL.BACKBONE.PRETRAIN = False

    backbone = BACKBONE_REGISTRY.get(name)(cfg)
    stem_pool = _stem_pool_name(backbone, name)
    if pretrain_path:
        load_pretrained_weights(backbone, pretrain_path)

    trunk = nn.Sequential(OrderedDict(
        conv1=backbone.conv1, bn1=backbone.bn1, relu=backbone.relu, maxpool=getattr(backbone, stem_pool),
        layer1=_stage(backbone, 1), layer2=_stage(backbone, 2)))
    layer3, layer4 = _stage(backbone, 3), _stage(backbone, 4)
    layer3_channels, layer4_channels = _probe_widths(trunk, layer3, layer4)
    hard = BranchLayers(copy.deepcopy(layer3), copy.deepcopy(layer4)) if with_hard else None
    soft = BranchLayers(copy.deepcopy(layer3), copy.deepcopy(layer4)) if with_soft else None
    return SplitBackbone(trunk, hard, soft, layer3_channels, layer4_channels)


def _check_last_stride(cfg):
    stride = cfg.MODEL.BACKBONE.LAST_STRIDE
    if stride != 1:
        raise InputError(
            f"MDPR needs MODEL.BACKBONE.LAST_STRIDE 1 (got {stride}): its branches concatenate layer3 and "
            "layer4 maps, which must have the same size. Set MODEL.BACKBONE.LAST_STRIDE 1.")


def _check_pretrain_file(path):
    if not os.path.isfile(path):
        raise MissingFileError(
            f"MODEL.BACKBONE.PRETRAIN_PATH {path!r} does not exist (resolved to {os.path.abspath(path)!r}). "
            "Put the pretrained weights there, point MODEL.BACKBONE.PRETRAIN_PATH at them, or train "
            "without them with `MODEL.BACKBONE.PRETRAIN False`.")


def _stem_pool_name(backbone, name):
    for cls, pool in _STEM_POOL.items():
        if isinstance(backbone, cls):
            return pool
    raise InputError(
        f"MDPR cannot split the backbone built by MODEL.BACKBONE.NAME={name!r} ({type(backbone).__name__}): "
        "it needs a ResNet-like backbone with conv1, bn1, layer1..layer4. Supported: "
        f"{', '.join(SUPPORTED_BUILDERS)} (any DEPTH, with IBN / SE / non-local where they offer them).")


def _stage(backbone, k):
    """layer{k}, wrapped with its non-local blocks if it has any."""
    layer = getattr(backbone, f"layer{k}")
    non_local = getattr(backbone, f"NL_{k}", None)
    # fastreid stores "no non-local block" as [] or, after a forward, [-1].
    positions = [i for i in getattr(backbone, f"NL_{k}_idx", []) if i >= 0]
    if non_local is None or not positions:
        return layer
    return NonLocalStage(layer, non_local, positions)


@torch.no_grad()
def _probe_widths(trunk, layer3, layer4):
    """Run a tiny image through the layers to read F/2 and F and check that layer3 and layer4 agree in size."""
    modules = (trunk, layer3, layer4)
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()  # no running-statistics update from the probe
    param = next(trunk.parameters())
    x3 = layer3(trunk(torch.zeros(1, 3, 64, 32, device=param.device, dtype=param.dtype)))
    x4 = layer4(x3)
    for m, mode in zip(modules, modes):
        m.train(mode)
    if x3.shape[-2:] != x4.shape[-2:]:
        raise InputError(
            f"layer4 changes the map size ({tuple(x3.shape[-2:])} -> {tuple(x4.shape[-2:])}) although "
            "MODEL.BACKBONE.LAST_STRIDE is 1; MDPR needs layer3 and layer4 maps of the same size.")
    return x3.shape[1], x4.shape[1]


def load_pretrained_weights(backbone, path):
    """Load a pretrained backbone file into ``backbone`` and report what did not match.

    Accepts a plain state dict or one wrapped in ``{"model": ...}`` / ``{"state_dict": ...}``, with key
    prefixes such as ``module.`` or MoCo's ``module.encoder_q.`` (fastreid's ResNet builder would load
    such a file silently as nothing). Raises if no tensor matches at all.
    """
    state = safe_load(path)
    if not isinstance(state, dict):
        raise InputError(f"{path!r} holds a {type(state).__name__}, not a state dict")
    for wrapper in ("model", "state_dict"):
        if isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    own = backbone.state_dict()
    matched = {}
    # Prefer keys that need the shortest prefix stripped; skip MoCo's momentum (key) encoder.
    candidates = []
    for key, value in state.items():
        if not torch.is_tensor(value) or "encoder_k." in key:
            continue
        parts = key.split(".")
        for drop in range(len(parts)):
            name = ".".join(parts[drop:])
            if name in own and own[name].shape == value.shape:
                candidates.append((drop, name, value))
                break
    for _, name, value in sorted(candidates, key=lambda c: c[0]):
        matched.setdefault(name, value)
    if not matched:
        raise InputError(
            f"no tensor in {path!r} matches the backbone (file keys look like {list(state)[:3]}, the "
            f"backbone's like {list(own)[:3]}); check MODEL.BACKBONE.NAME / DEPTH / WITH_IBN / PRETRAIN_PATH.")
    backbone.load_state_dict(matched, strict=False)
    missing = [k for k in own if k not in matched and not k.endswith("num_batches_tracked")]
    logger.info(f"Loaded {len(matched)} pretrained tensors from {path}")
    if missing:
        logger.warning(get_missing_parameters_message(missing))
