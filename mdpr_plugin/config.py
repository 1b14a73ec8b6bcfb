"""Config keys MDPR adds to fastreid's config.

The model switches live at the config root (``ATTN_NUM``, ``PART_NUM``, ...) because that is where the
authors' YAML files put them; keeping them there lets those files load unchanged.
"""
import difflib
import os

from fastreid.config import CfgNode as CN
from fastreid.config import get_cfg

from .errors import InputError, MDPRError, MissingFileError

# Root-level keys: name -> (default, meaning).
_ROOT_KEYS = {
    "ATTN_NUM": (2, "M, number of foreground attention maps per scale (one background map is added)"),
    "PART_NUM": (2, "P, number of horizontal stripes of the hard content branch"),
    "ATTN_GUIDED": (True, "guide layer3's attention with layer4's raw attention"),
    "FUSION_ENABLE": (True, "fuse hard and soft maps into a 4E-wide fusion feature (needs both branches)"),
    "DISTILLATION_ENABLE": (True, "mutual distillation between the branches (needs both branches)"),
    "ATTN_DIVERSITY_LOSS_ENABLE": (True, "attention diversity and sparsity losses"),
    "OUTPUT_ALL": (False, "at eval, also keep the attention maps on model.last_attention_maps"),
    # Ours, not the authors': keep only one branch. Fusion and distillation need both, so with one
    # branch off they are skipped (the model logs it once when it is built).
    "HARD_BRANCH_ENABLE": (True, "build the hard (stripe) content branch"),
    "SOFT_BRANCH_ENABLE": (True, "build the soft (attention) content branch"),
}


def _add(node, key, value):
    # Setting only missing keys makes the function idempotent and keeps values already merged.
    if key not in node:
        setattr(node, key, value)


def add_mdpr_config(cfg):
    """Add MDPR's keys to a fastreid config (in place; safe to call twice).

    Call it before ``cfg.merge_from_file``: yacs refuses keys it does not know.
    """
    for key, (default, _meaning) in _ROOT_KEYS.items():
        _add(cfg, key, default)

    # E: width of every MDPR embedding (heads, fusion input, distillation).
    _add(cfg.MODEL.BACKBONE, "EMBEDDING_DIM", 512)

    # Weight of the attention sparsity regulariser (sum of attention / batch size).
    _add(cfg.MODEL.LOSSES, "ATTN_DIVERSITY", CN())
    _add(cfg.MODEL.LOSSES.ATTN_DIVERSITY, "SCALE", 0.001)

    # Patch pool of RandomPatch (INPUT.RPT): fastreid hard-codes 50000; MDPR's configs use 1000.
    _add(cfg.INPUT.RPT, "POOL_CAPACITY", 50000)

    # Speed switches, applied by the plugin's Trainer.build_model (measured in docs/benchmarks.md,
    # `mdpr-benchmark`): torch.compile of the model in place (state-dict keys unchanged; the first
    # iterations compile) and the channels-last memory format for the convolutions.
    _add(cfg.MODEL, "COMPILE", False)
    _add(cfg.MODEL, "CHANNELS_LAST", False)

    # MODEL.WEIGHTS must fit the model (every key but the classifiers' present, of the same shape); True
    # allows a partial load, e.g. fine-tuning from another model's weights.
    _add(cfg.MODEL, "ALLOW_PARTIAL_WEIGHTS", False)

    # Unreadable (truncated, empty, non-image) files, found when the data set is built: "error" stops
    # naming them, "skip" leaves them out with a warning giving their number (mdpr_plugin/data/checks.py).
    _add(cfg.DATALOADER, "BAD_IMAGES", "error")

    # Seed of the run (fastreid 1.4.0 has no such key): model initialisation, the training sampler's
    # stream and every sample's augmentation. -1 draws one at random, as fastreid does, and stores it in
    # the checkpoints so that --resume continues the same stream. The paper trains with 3407.
    _add(cfg, "SEED", -1)
    return cfg


class ConfigKeyError(MDPRError, KeyError):
    """An unknown config key, with the closest valid keys."""

    def __str__(self):
        return self.args[0]


def _all_keys(node, prefix=""):
    for key, value in node.items():
        if isinstance(value, CN):
            yield from _all_keys(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def build_config(config_file, opts=()):
    """fastreid's defaults + MDPR's keys + ``config_file`` + ``KEY VALUE`` ``opts`` (not frozen): the one way
    train_net.py, the tools, the benchmarks and the tests build a config."""
    return merge_config(add_mdpr_config(get_cfg()), config_file, list(opts))


def merge_config(cfg, config_file, opts):
    """``cfg.merge_from_file(config_file)`` then ``cfg.merge_from_list(opts)``, with errors that name the file
    or key: an unknown key names where it came from and the closest valid keys (yacs says only
    "Non-existent (config) key"); a missing file and a value of the wrong type are :class:`MDPRError` s."""
    if not os.path.isfile(config_file):
        raise MissingFileError(f"Config file {config_file} not found (absolute: {os.path.abspath(config_file)}).")
    for source, merge in ((config_file, lambda: cfg.merge_from_file(config_file)),
                          ("the command line", lambda: cfg.merge_from_list(opts))):
        try:
            merge()
        except (KeyError, AssertionError) as error:  # yacs: KeyError from files, AssertionError from lists
            message = str(error.args[0]) if error.args else ""
            if not message.startswith(("Non-existent config key:", "Non-existent key:")):
                raise
            key = message.split(":", 1)[1].strip()
            close = difflib.get_close_matches(key, list(_all_keys(cfg)), n=3, cutoff=0.85)
            hint = f" Did you mean {' or '.join(close)}?" if close else ""
            raise ConfigKeyError(f"Unknown config key {key} in {source}.{hint}") from None
        except ValueError as error:  # yacs: "Type mismatch (<class 'int'> vs. <class 'str'>) ... for config key: K"
            if not str(error).startswith("Type mismatch"):
                raise
            raise InputError(f"{error} (in {source}). Give a value of the key's type.") from None
    return cfg
