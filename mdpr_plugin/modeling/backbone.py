"""MDPR's backbone: any stage-wise backbone cut into a shared trunk and, for each branch, a copy of its last two
stages (the paper's layer3 and layer4).

The backbone is built through fastreid's ``BACKBONE_REGISTRY`` (``MODEL.BACKBONE.NAME``) and its pretrained
weights are loaded before the cut, so both branches start from the same weights. Where the stages begin:
``MODEL.BACKBONE.BRANCH_STAGES`` if set, else the backbone's own ``branch_stages`` (the timm builder's), else the
family's (``families.py``), else ``layer3`` / ``layer4``; how the cut is found and checked: ``stages.py``.
"""
import copy
import logging
import os

import torch
from torch import nn

from fastreid.modeling.backbones import BACKBONE_REGISTRY
from fastreid.utils.checkpoint import get_missing_parameters_message

from ..errors import InputError, MissingFileError
from ..serialization import safe_load
from . import families, stages

logger = logging.getLogger(__name__)


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
    """``trunk`` (everything before layer3, shared) and each branch's (layer3, layer4): ``hard`` and ``soft``.

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
    pretrain_path = pretrain_file(cfg)
    if pretrain_path:
        # We load the file ourselves (see load_pretrained_weights), so the builder must not.
        cfg = cfg.clone()
        cfg.defrost()
        cfg.MODEL.BACKBONE.PRETRAIN = False
    builder = BACKBONE_REGISTRY.get(name)
    backbone = families.OWN_BUILDERS.get(builder, builder)(cfg)
    if pretrain_path:
        load_pretrained_weights(backbone, pretrain_path)
    families.last_stage_to_stride_1(backbone)

    describe = stages.how_to_name_stages(backbone, name)
    stage_paths = _stage_paths(backbone, cfg.MODEL.BACKBONE.BRANCH_STAGES, describe)
    trunk, layer3, layer4, x3, x4 = _cut(backbone, stage_paths, describe, f"The backbone {name!r}")
    if x3.shape[-2:] != x4.shape[-2:]:
        raise InputError(
            f"MDPR needs the maps of its two branch stages to have the same size (it concatenates them), but "
            f"{stage_paths[1]!r} of {name!r} turns {tuple(x3.shape[-2:])} into {tuple(x4.shape[-2:])}. Build the "
            "backbone with its last stage at stride 1 (MODEL.BACKBONE.LAST_STRIDE 1 where its builder reads it), "
            "or set MODEL.BACKBONE.BRANCH_STAGES to two stages whose maps have the same size.")
    logger.info(f"MDPR branches copy {stage_paths[0]} .. and {stage_paths[1]} .. of {type(backbone).__name__} "
                f"({x3.shape[1]} and {x4.shape[1]} channels)")
    hard = BranchLayers(copy.deepcopy(layer3), copy.deepcopy(layer4)) if with_hard else None
    soft = BranchLayers(copy.deepcopy(layer3), copy.deepcopy(layer4)) if with_soft else None
    return SplitBackbone(trunk, hard, soft, x3.shape[1], x4.shape[1])


def _cut(backbone, stage_paths, describe, what):
    """The trunk and the two stages as modules, checked to give the backbone's output, and the stages' maps of a
    probe image."""
    image = stages.probe_image(backbone)
    with stages.evaluating(backbone):
        chain = families.resnet_chain(backbone)
        if chain is None:
            chain, expected = stages.traced_chain(backbone, stage_paths, backbone, image)
        else:
            expected = backbone(image)
        trunk, layer3, layer4 = stages.cut(chain, stage_paths, describe)
        trunk, layer3, layer4 = stages.as_sequential(trunk), stages.as_stage(layer3), stages.as_stage(layer4)
        with stages.evaluating(trunk, layer3, layer4):
            _, x3, x4 = stages.check_same_output(expected, (trunk, layer3, layer4), image, what)
    return trunk, layer3, layer4, x3, x4


def _stage_paths(backbone, named, describe):
    """Where layer3 and layer4 begin (see module doc), each checked to be a module of the backbone."""
    named = tuple(named)
    if named and (len(named) != 2 or not all(isinstance(path, str) and path for path in named)):
        raise InputError(f"MODEL.BACKBONE.BRANCH_STAGES must be two module names, got {named!r}. {describe}")
    found = (named or getattr(backbone, "branch_stages", None) or families.known_stages(backbone)
             or ("layer3", "layer4"))
    modules = dict(backbone.named_modules())
    missing = [path for path in found if path not in modules]
    if missing:
        source = "MODEL.BACKBONE.BRANCH_STAGES names" if named else "MDPR looks for"
        raise InputError(f"MDPR cannot find the two stages each of its branches copies: {source} "
                         f"{', '.join(map(repr, missing))}, which the backbone does not have. {describe}")
    return found


def _check_last_stride(cfg):
    stride = cfg.MODEL.BACKBONE.LAST_STRIDE
    if stride != 1:
        raise InputError(
            f"MDPR needs MODEL.BACKBONE.LAST_STRIDE 1 (got {stride}): its branches concatenate layer3 and "
            "layer4 maps, which must have the same size. Set MODEL.BACKBONE.LAST_STRIDE 1.")


def pretrain_file(cfg):
    """The pretrained weights' file when MODEL.BACKBONE.PRETRAIN is on (checked to exist), else ""."""
    if not cfg.MODEL.BACKBONE.PRETRAIN:
        return ""
    path = cfg.MODEL.BACKBONE.PRETRAIN_PATH
    if not path:
        raise InputError(
            "MODEL.BACKBONE.PRETRAIN is True but MODEL.BACKBONE.PRETRAIN_PATH is empty: the plugin loads pretrained "
            "weights only from a file, with a reader that refuses pickled code, and never downloads them. "
            f"{_where_to_get(cfg)}Or train without them: MODEL.BACKBONE.PRETRAIN False.")
    if not os.path.isfile(path):
        lup = " The LUPerson MoCo weights (lup_moco_r101.pth) are published by the LUPerson project " \
              f"({LUPERSON}) and with the MDPR authors' weights ({AUTHORS_WEIGHTS})." if "lup" in path.lower() else ""
        raise MissingFileError(
            f"MODEL.BACKBONE.PRETRAIN_PATH {path!r} does not exist (resolved to {os.path.abspath(path)!r}). "
            f"Put the pretrained weights there, point MODEL.BACKBONE.PRETRAIN_PATH at them, or train "
            f"without them with `MODEL.BACKBONE.PRETRAIN False`.{lup}")
    return path


LUPERSON = "https://github.com/DengpanFu/LUPerson"
AUTHORS_WEIGHTS = "the links in GETTING_STARTED.md of https://github.com/KuilongCui/MDPR, a BaiduYun folder, password mdpr"


def _where_to_get(cfg):
    """Where fastreid's model zoo has the ImageNet weights of a ResNet backbone as configured, and the commands that
    fetch them into MODEL.BACKBONE.PRETRAIN_PATH; a generic sentence for other backbones."""
    backbone = cfg.MODEL.BACKBONE
    if backbone.NAME == "build_resnet_backbone":
        from fastreid.modeling.backbones.resnet import model_urls

        key = ("se_" if backbone.WITH_SE else "") + ("ibn_" if backbone.WITH_IBN else "") + backbone.DEPTH
        if key in model_urls:
            url = model_urls[key]
            file = os.path.join("pretrained", url.rsplit("/", 1)[-1])
            return (f"fastreid downloads this backbone's weights from {url}: fetch them once with `mkdir -p pretrained "
                    f"&& curl -L -o {file} {url}` and pass MODEL.BACKBONE.PRETRAIN_PATH {file}. ")
    return "Save the weights to a file and set MODEL.BACKBONE.PRETRAIN_PATH. "


def load_pretrained_weights(backbone, path):
    """Load a pretrained backbone file into ``backbone`` and report what did not match.

    Accepts a plain state dict or one wrapped in ``{"model": ...}`` / ``{"state_dict": ...}`` / ``{"model_state":
    ...}`` (pycls' RegNet / EfficientNet files), with key prefixes such as ``module.`` or MoCo's
    ``module.encoder_q.`` (fastreid's ResNet builder would load such a file silently as nothing). Raises if no
    tensor matches at all.
    """
    state = safe_load(path)
    if not isinstance(state, dict):
        raise InputError(f"{path!r} holds a {type(state).__name__}, not a state dict")
    for wrapper in ("model", "state_dict", "model_state"):
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
