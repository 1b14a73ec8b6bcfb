"""Every name the config looks up in a fastreid registry or a fixed set, checked before anything is built.

fastreid looks these names up deep inside model, data or optimizer building, and an unknown one ends in a
``KeyError`` or an ``AssertionError`` with a traceback, sometimes after the data set was read. Here each is
checked at once: the key, the name, the closest registered names, and, when none is close, how a name of the
user's own gets registered (a module named in ``IMPORTS``).
"""
import difflib

import torch

from .errors import InputError


class UnknownNameError(InputError):
    """A config names something that no registry or fixed set of fastreid's holds."""


def _registered(registry):
    return sorted(registry._obj_map)  # fastreid's Registry has no public listing


def _optimizers():
    return sorted(name for name, value in vars(torch.optim).items()
                  if isinstance(value, type) and issubclass(value, torch.optim.Optimizer) and value is not
                  torch.optim.Optimizer)


def _lookups(cfg):
    """``(key, names, choices, what a user's own would be)`` for every name the config looks up: registries
    (extensible through IMPORTS) and fastreid's fixed sets (``what`` None)."""
    from fastreid.data.datasets import DATASET_REGISTRY
    from fastreid.layers import any_softmax, pooling
    from fastreid.modeling.backbones.build import BACKBONE_REGISTRY
    from fastreid.modeling.heads.build import REID_HEADS_REGISTRY
    from fastreid.modeling.meta_arch.build import META_ARCH_REGISTRY

    norms = ["BN", "syncBN", "GhostBN", "FrozenBN", "GN"]  # fastreid's get_norm (layers/batch_norm.py:198)
    return [
        ("MODEL.META_ARCHITECTURE", [cfg.MODEL.META_ARCHITECTURE], _registered(META_ARCH_REGISTRY),
         "meta-architecture"),
        ("MODEL.BACKBONE.NAME", [cfg.MODEL.BACKBONE.NAME], _registered(BACKBONE_REGISTRY), "backbone"),
        ("MODEL.HEADS.NAME", [cfg.MODEL.HEADS.NAME], _registered(REID_HEADS_REGISTRY), "head"),
        ("DATASETS.NAMES", list(cfg.DATASETS.NAMES), _registered(DATASET_REGISTRY), "dataset"),
        ("DATASETS.TESTS", list(cfg.DATASETS.TESTS), _registered(DATASET_REGISTRY), "dataset"),
        ("MODEL.BACKBONE.NORM", [cfg.MODEL.BACKBONE.NORM], norms, None),
        ("MODEL.HEADS.NORM", [cfg.MODEL.HEADS.NORM], norms, None),
        ("MODEL.HEADS.POOL_LAYER", [cfg.MODEL.HEADS.POOL_LAYER], list(pooling.__all__), None),
        ("MODEL.HEADS.CLS_LAYER", [cfg.MODEL.HEADS.CLS_LAYER], list(any_softmax.__all__), None),
        ("SOLVER.OPT", [cfg.SOLVER.OPT], _optimizers(), None),
        # the schedulers fastreid builds arguments for (solver/build.py:318)
        ("SOLVER.SCHED", [cfg.SOLVER.SCHED], ["CosineAnnealingLR", "MultiStepLR"], None),
        # fastreid's sampler names (data/build.py:51-63)
        ("DATALOADER.SAMPLER_TRAIN", [cfg.DATALOADER.SAMPLER_TRAIN],
         ["TrainingSampler", "NaiveIdentitySampler", "BalancedIdentitySampler", "SetReWeightSampler",
          "ImbalancedDatasetSampler"], None),
    ]


# The loss names fastreid's own meta-architectures and MDPR test for (meta_arch/baseline.py:151-179,
# mgn.py:293-351, mdpr_plugin/modeling/heads.py); any other name is skipped without a word, so a typo trains
# without that loss. A user's meta-architecture reads the names its own way: not checked.
_BASELINE_LOSSES = ("CrossEntropyLoss", "TripletLoss", "CircleLoss", "Cosface")  # Distiller and MoCo inherit them
_FASTREID_LOSSES = {"Baseline": _BASELINE_LOSSES, "Distiller": _BASELINE_LOSSES, "MoCo": _BASELINE_LOSSES,
                    "MGN": ("CrossEntropyLoss", "TripletLoss")}


def _shared_affix(name, choices, suffix=False):
    """The longest ``_``-delimited prefix (or suffix) of ``name`` that at least half of ``choices`` share
    (``build_`` and ``_backbone`` for backbones, whatever names of their own users registered besides)."""
    flip = (lambda text: text[::-1]) if suffix else (lambda text: text)
    parts = flip(name).split("_")
    for count in range(len(parts) - 1, 0, -1):
        affix = "_".join(parts[:count]) + "_"
        if sum(flip(choice).startswith(affix) for choice in choices) * 2 >= len(choices):
            return flip(affix)
    return ""


def _core(name, prefix, suffix):
    if prefix and name.startswith(prefix):
        name = name[len(prefix):]
    if suffix and name.endswith(suffix):
        name = name[:-len(suffix)]
    return name


def close_names(name, choices):
    """The registered names ``name`` may be a typo of. The affixes most choices share (``build_`` ...
    ``_backbone``) are also compared without, so ``build_my_backbone`` is close to none of fastreid's backbones
    while ``build_resnet_backbon`` is close to ``build_resnet_backbone``."""
    prefix, suffix = _shared_affix(name, choices), _shared_affix(name, choices, suffix=True)
    cores = {_core(c, prefix, suffix): c for c in choices}
    close = set(difflib.get_close_matches(name, choices, n=3, cutoff=0.9))
    close |= {cores[c] for c in difflib.get_close_matches(_core(name, prefix, suffix), list(cores), n=3, cutoff=0.6)}
    return sorted(close, key=lambda c: -difflib.SequenceMatcher(None, name, c).ratio())[:3]


def _message(key, name, choices, what):
    close = close_names(name, choices)
    if close:
        advice = f"Did you mean {' or '.join(close)}?"
    elif what:
        advice = (f"A {what} of your own must be registered by a module named in IMPORTS, e.g. IMPORTS "
                  f"\"('my_{what.replace('-', '_')}s',)\" for my_{what.replace('-', '_')}s.py in the working "
                  f"directory or on PYTHONPATH. Registered: {', '.join(choices)}.")
    else:
        advice = f"It must be one of {', '.join(choices)}."
    return f"{key} {name!r} is not {'registered' if what else 'known'} in fastreid. {advice}"


def check_registered_names(cfg):
    """Refuse the first name ``cfg`` looks up that fastreid does not have, in one line; returns ``cfg``."""
    for key, names, choices, what in _lookups(cfg):
        for name in names:
            if name not in choices and not (key.endswith(".NORM") and name == ""):  # "": no norm layer
                raise UnknownNameError(_message(key, name, choices, what))
    check_loss_names(cfg)
    return cfg


def check_loss_names(cfg):
    """``MODEL.LOSSES.NAME`` of ``cfg``, as a tuple, once every name is one its meta-architecture computes (for
    fastreid's and MDPR; a user's is not checked) and, for MDPR, it names one at least."""
    from .modeling.heads import IDENTITY_LOSSES

    arch, names = cfg.MODEL.META_ARCHITECTURE, tuple(cfg.MODEL.LOSSES.NAME)
    known_losses = {**_FASTREID_LOSSES, "MDPR": IDENTITY_LOSSES}.get(arch, names)  # others: nothing to refuse
    computes = "MDPR" if arch == "MDPR" else f"fastreid's {arch}"
    for name in names:
        if name not in known_losses:
            raise UnknownNameError(f"MODEL.LOSSES.NAME {name!r} is not a loss {computes} computes: it would train "
                                   f"without it. It must be among {', '.join(known_losses)}.")
    if arch == "MDPR" and not names:
        raise UnknownNameError(f"MODEL.LOSSES.NAME is empty: MDPR's heads of the evaluation feature would be trained "
                               f"by no loss. Name {' and / or '.join(IDENTITY_LOSSES)} (both: the paper's).")
    return names
