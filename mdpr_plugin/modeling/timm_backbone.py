"""``build_timm_backbone``: timm's stage-wise CNNs (ConvNeXt, RegNet, EfficientNet, ResNet, ...) as fastreid
backbones, with the ``timm`` extra. ``MODEL.BACKBONE.TIMM_MODEL`` names the model.

The backbone is the modules of timm's ``forward_features``, in the order it calls them, as nested Sequentials under
timm's own names, so that timm's weight files load key for key; it returns the last feature map. It declares where
its last two stages begin (``branch_stages``, from timm's ``feature_info``) for MDPR. With LAST_STRIDE 1 the model
is built with timm's ``output_stride=16``: the last stage's downsampling stride becomes 1 (timm dilates its
convolutions instead); a model that does not take it is refused. Weights never come from timm's hub: they are
read from MODEL.BACKBONE.PRETRAIN_PATH with the plugin's safe reader.
"""
import difflib
import logging
from collections import OrderedDict

from torch import nn

from fastreid.modeling.backbones import BACKBONE_REGISTRY

from ..errors import InputError, require
from . import stages
from .backbone import load_pretrained_weights, pretrain_file

logger = logging.getLogger(__name__)
_KEY = "MODEL.BACKBONE.TIMM_MODEL"


class TimmBackbone(nn.Sequential):
    """A timm model's feature modules in forward order; ``branch_stages``: where its last two stages begin."""

    def __init__(self, chain):
        super().__init__(OrderedDict(stages.as_sequential(chain).named_children()))
        self.branch_stages = None


def _norm_converter(timm, norm):
    """timm builds its own norm layers; the plugin can make its BatchNorms synchronised or frozen, nothing else."""
    converters = {"BN": lambda model: model, "syncBN": timm.layers.convert_sync_batchnorm,
                  "FrozenBN": timm.layers.freeze_batch_norm_2d}
    if norm not in converters:
        raise InputError(f"MODEL.BACKBONE.NORM {norm!r} cannot be applied to a timm model, which builds its own "
                         f"norm layers; the plugin converts its BatchNorms for {', '.join(converters)} only. Set one "
                         "of them.")
    return converters[norm]


def _create(timm, name, last_stride):
    if not name:
        raise InputError(f"MODEL.BACKBONE.NAME build_timm_backbone needs {_KEY}, the name of a timm model "
                         f"(e.g. convnext_atto, regnety_002, efficientnet_b0).")
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f" Did you mean {' or '.join(close)}?" if close else ""
        raise InputError(f"{_KEY} {name!r} is not a timm model.{hint}")
    kwargs = {"output_stride": 16} if last_stride == 1 else {}
    try:
        return timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    except (TypeError, AssertionError, ValueError, NotImplementedError) as error:
        if not kwargs:
            raise
        raise InputError(
            f"timm's {name!r} cannot run its last stage at stride 1 (MODEL.BACKBONE.LAST_STRIDE 1): it refuses "
            f"output_stride=16 ({type(error).__name__}: {error}). Choose a timm model that takes output_stride, "
            "e.g. a ConvNeXt, RegNet, EfficientNet or ResNet.") from None


@BACKBONE_REGISTRY.register()
def build_timm_backbone(cfg):
    """The timm model ``MODEL.BACKBONE.TIMM_MODEL`` as a fastreid backbone (see module doc)."""
    timm = require("timm", "timm")
    options = cfg.MODEL.BACKBONE
    convert = _norm_converter(timm, options.NORM)
    name = options.TIMM_MODEL
    ignored = [f"WITH_{option}" for option in ("IBN", "SE", "NL") if options[f"WITH_{option}"]]
    if ignored:
        logger.warning(f"build_timm_backbone ignores MODEL.BACKBONE.{' / '.join(ignored)}: timm's {name!r} is "
                       "built with its own blocks (choose a timm variant that has them, e.g. seresnet50)")
    model = _create(timm, name, options.LAST_STRIDE)
    levels = [info["module"] for info in getattr(model, "feature_info", [])]
    if not hasattr(model, "forward_features") or len(levels) < 3:
        raise InputError(f"timm's {name!r} does not describe its stages (feature_info), so it cannot serve as a "
                         "stage-wise backbone; choose a CNN such as a ConvNeXt, RegNet or EfficientNet.")
    image = stages.probe_image(model)
    what = f"timm's {name!r} (forward_features)"
    with stages.evaluating(model):
        chain, expected = stages.traced_chain(model, levels[-3:], model.forward_features, image)
        backbone = TimmBackbone(chain)
        stages.check_same_output(expected, [backbone], image, what)
    # Stage 3 begins right after the end of the third-last level, stage 4 after the end of the second-last.
    paths = [path for path, _ in chain]
    ends = [paths.index(level) for level in levels[-3:-1] if level in paths]
    if len(ends) != 2 or ends[1] + 1 >= len(paths):
        raise InputError(f"{what} does not call its stages {', '.join(levels[-3:])} as modules one after another, "
                         "so MDPR cannot cut it; choose a CNN such as a ConvNeXt, RegNet or EfficientNet.")
    backbone.branch_stages = tuple(paths[end + 1] for end in ends)
    backbone = convert(backbone)
    path = pretrain_file(cfg)
    if path:
        load_pretrained_weights(backbone, path)
    return backbone
