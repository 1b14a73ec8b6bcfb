"""The config keys the MDPR authors' fork of fastreid adds that the plugin has no use for.

Their fork's ``fastreid/config/defaults.py`` adds these keys to fastreid 1.4.0's, so every ``config.yaml`` their
runs wrote holds them (fastreid's setup dumps the whole config). None of them is read on their MDPR model's path
(meta-architecture, heads, losses, data, solver): they are left-overs of their other models or unused. The plugin
accepts exactly these keys, only where a config file or the command line gives them, keeps their values in the
config (so a run's own config.yaml loads again) and says once that they have no effect. A key of the plugin's own,
mistyped, is not among them and is still refused with the closest names.

The keys their fork adds that the plugin has too (``MODEL.BACKBONE.EMBEDDING_DIM``, ``ATTN_NUM``, ``PART_NUM``,
``ATTN_GUIDED``, ``FUSION_ENABLE``, ``DISTILLATION_ENABLE``, ``OUTPUT_ALL``, ``MODEL.LOSSES.ATTN_DIVERSITY.SCALE``)
are read, with their meaning. The decision for each key is in docs/from-authors-code.md.
"""
import logging

from fastreid.config import CfgNode

from .errors import InputError

logger = logging.getLogger(__name__)

# key -> (its default in the authors' defaults.py, what reads it in the authors' code)
AUTHORS_KEYS = {
    "MODEL.LAST_EMBEDDING": (False, "nothing"),
    "MODEL.LAST_ONLY": (True, "nothing"),
    "MODEL.HEADS.ATTN": (1, "their A2MGN meta-architecture only (its number of attention maps)"),
    "MODEL.HEADS.GAN": (False, "nothing"),
    "MODEL.HEADS.GAN_RATIO": (0.0, "nothing"),
    "MODEL.HEADS.ADDTION_POOL": ("", "nothing"),
    "MODEL.HEADS.NUM_CHUNK": (2, "nothing"),
    "MODEL.LOSSES.CE.ATTN_SCALE": (1.0, "nothing"),
    "MODEL.LOSSES.CE.MAIN_SCALE": (1.0, "nothing"),
    "MODEL.LOSSES.TRI.ATTN": (False, "nothing"),
    "MODEL.LOSSES.CENTER.SCALE": (0.0005, "nothing"),
    "MODEL.LOSSES.KL.MARGIN": (1.0, "nothing"),
    "INPUT.RGPR.ENABLED": (False, "their training transforms: True adds a random grayscale patch replacement"),
    "INPUT.RGPR.PROB": (0.4, "their training transforms, with INPUT.RGPR.ENABLED True"),
    "DATASETS.CUHK03_LABELED": (True, "nothing (their CUHK03 reads a cuhk03_L argument instead)"),
    "DATASETS.MSMT17_V": (1, "their MSMT17 class, from an argument their trainer never passes (it fails without)"),
    "ATTN_TYPE": ("PAM", "nothing"),
    "CHANNEL_POOL": ("GlobalMaxPool", "nothing"),
    "ENABLE_BRANCH": ("2_3_attn", "nothing"),
    "IDENTITY": (False, "nothing"),
    "ENABLE_UPSAMPLE": ("2_3_none", "nothing"),
    "ENABLE_GAT": (False, "nothing"),
    "STAGE": ("first", "nothing"),
    "STAGE_PATH": ("", "nothing"),
    "GENERATE_ATTN": (8, "nothing"),
    "BETA": (0.001, "nothing"),
}

# Keys read on every model's path in the authors' code, with a meaning the plugin does not implement: key -> the
# value that means what the plugin does (their default) and what another one would do there.
_ONLY_VALUE = {
    "INPUT.RGPR.ENABLED": (False, "their random grayscale patch replacement, which the plugin does not have"),
}

_MISSING = object()


def _lookup(cfg, key):
    """The value of the dotted ``key`` in the nested mapping ``cfg``, or ``_MISSING``."""
    for part in key.split("."):
        if not isinstance(cfg, dict) or part not in cfg:
            return _MISSING
        cfg = cfg[part]
    return cfg


def add_authors_keys(cfg, keys=tuple(AUTHORS_KEYS)):
    """Add ``keys`` (all of :data:`AUTHORS_KEYS` by default) to ``cfg`` with the authors' defaults, so that a file
    holding them merges (in place; keys ``cfg`` has are kept). ``add_authors_keys(cfg)`` after
    :func:`mdpr_plugin.add_mdpr_config` lets fastreid's own ``merge_from_file`` read the authors' config.yaml."""
    for key in keys:
        *parents, name = key.split(".")
        node = cfg
        for part in parents:
            if part not in node:
                node[part] = CfgNode()
            node = node[part]
        if name not in node:
            node[name] = AUTHORS_KEYS[key][0]
    return cfg


def authors_keys_in(cfg, opts=()):
    """The keys of :data:`AUTHORS_KEYS` that the nested mapping ``cfg`` (a config, a config file's values) holds
    or the ``KEY VALUE`` list ``opts`` gives, in the table's order."""
    given = set(opts[::2])
    return [key for key in AUTHORS_KEYS if key in given or _lookup(cfg, key) is not _MISSING]


def check_authors_keys(cfg):
    """Refuse an authors' key whose value would do, in their code, what the plugin does not implement."""
    for key, (value, other) in _ONLY_VALUE.items():
        given = _lookup(cfg, key)
        if given is not _MISSING and given != value:
            raise InputError(f"{key} {given!r} asks for {other}: set it to {value!r} or remove it (in the config "
                             "file or the command line).")
    return cfg


def warn_authors_keys(cfg):
    """Log, in one warning line, the authors' keys ``cfg`` holds, which have no effect (none when it holds none)."""
    keys = authors_keys_in(cfg)
    if keys:
        logger.warning("%d config keys of the MDPR authors' code have no effect, here as in their MDPR runs; accepted "
                       "and ignored: %s.", len(keys), ", ".join(keys))
