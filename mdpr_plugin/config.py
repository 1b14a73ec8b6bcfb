"""Config keys MDPR adds to fastreid's config.

The model switches live at the config root (``ATTN_NUM``, ``PART_NUM``, ...) because that is where the
authors' YAML files put them; keeping them there lets those files load unchanged.
"""
import difflib
import math
import os

import yaml
from fastreid.config import CfgNode as CN
from fastreid.config import get_cfg
from fastreid.config.config import BASE_KEY
from fastreid.utils import comm

from .errors import InputError, MDPRError, MissingFileError
from .resources import check_batch_memory

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

    # The two stages each MDPR branch gets its own copy of (the paper's layer3 and layer4): the dotted names of the
    # modules where they begin, in the backbone's forward order, e.g. ("layer3", "layer4") or ("features.7",
    # "features.14"). The trunk is what the forward runs before the first, layer3 runs up to the second, layer4 to
    # the end; both must give maps of the same size. Empty: the backbone family's own (fastreid's ResNet, OSNet,
    # RegNet, ... and build_timm_backbone's), else layer3 / layer4 (mdpr_plugin/modeling/stages.py).
    _add(cfg.MODEL.BACKBONE, "BRANCH_STAGES", ())
    # The timm model built by MODEL.BACKBONE.NAME build_timm_backbone (the `timm` extra), e.g. convnext_atto.
    _add(cfg.MODEL.BACKBONE, "TIMM_MODEL", "")

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

    # The optimizer's fused implementation (one pass over each parameter's tensors per step; torch's own,
    # where the optimizer has one: Adam, AdamW, SGD, ...). fastreid gives every parameter its own group, which
    # leaves the default multi-tensor implementation one small step per tensor (docs/benchmarks.md).
    _add(cfg.SOLVER, "FUSED", True)

    # MODEL.WEIGHTS must fit the model (every key but the classifiers' present, of the same shape); True
    # allows a partial load, e.g. fine-tuning from another model's weights.
    _add(cfg.MODEL, "ALLOW_PARTIAL_WEIGHTS", False)

    # Unreadable (truncated, empty, non-image) files, found when the data set is built: "error" stops
    # naming them, "skip" leaves them out with a warning giving their number (mdpr_plugin/data/checks.py).
    _add(cfg.DATALOADER, "BAD_IMAGES", "error")

    # Modules of the user's own (dotted names) imported before anything is built, e.g. ("my_backbones",): where
    # backbones, heads, meta-architectures or datasets of one's own register themselves (mdpr_plugin/custom_imports.py).
    _add(cfg, "IMPORTS", ())

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


PACKAGED_CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


def config_file(name):
    """``name`` when it is a file, else the path of the config of that name shipped with the package, e.g.
    ``config_file("MDPR/duke.yml")`` (as detectron2's ``model_zoo.get_config_file``; ``"configs/MDPR/duke.yml"``
    names the same file). The configs' ``_BASE_`` files are shipped beside them."""
    if os.path.isfile(name):
        return name
    relative = name[len("configs/"):] if name.startswith("configs/") else name
    path = os.path.join(PACKAGED_CONFIGS, relative)
    if not os.path.isfile(path):
        shipped = sorted(os.path.relpath(os.path.join(folder, f), PACKAGED_CONFIGS)
                         for folder, _, files in os.walk(PACKAGED_CONFIGS) for f in files if f.endswith(".yml"))
        raise MissingFileError(f"Config file {name} not found (absolute: {os.path.abspath(name)}), and no packaged "
                               f"config has that name; the packaged ones are {', '.join(shipped)}.")
    return path


def build_config(path, opts=()):
    """fastreid's defaults + MDPR's keys + the config file ``path`` (or a packaged config's name) + ``KEY VALUE``
    ``opts`` (not frozen), checked, with the modules of its ``IMPORTS`` imported and every registry name it
    looks up found: the one way train_net.py, the tools, the benchmarks and the tests build a config."""
    return prepare_user_code(check_config(merge_config(add_mdpr_config(get_cfg()), path, list(opts))))


def prepare_user_code(cfg):
    """Import the modules ``cfg.IMPORTS`` names, then check every name ``cfg`` looks up in fastreid's registries
    (those modules may register some); returns ``cfg``. For a config built another way (a config node given to
    FeatureExtractor, a user's own ``get_cfg()``)."""
    from .custom_imports import import_modules
    from .registry_names import check_registered_names

    import_modules(cfg.get("IMPORTS", ()))
    return check_registered_names(cfg)


def _module_list(value):
    """IMPORTS given as one name (``IMPORTS my_backbones``, ``IMPORTS: my_backbones``) or a comma-separated list,
    as the tuple yacs expects; a list or tuple as it is."""
    if isinstance(value, str) and not value.lstrip().startswith(("(", "[")):
        return str(tuple(name.strip() for name in value.split(",") if name.strip()))
    return value


# ------------------------------------------------------------------------------------------ files
def _read_config_file(path):
    """One YAML file's mapping, read with ``yaml.safe_load`` as fastreid reads it (tags that would run Python
    are refused), or an :class:`InputError` naming the file and, where yaml gives it, the line."""
    if path.endswith(".py"):
        raise InputError(f"Config file {path} is a Python file: configs are YAML files of KEY: value mappings, "
                         "like configs/MDPR/demo.yml.")
    try:
        with open(path, "rb") as f:  # bytes: yaml detects the encoding and names a bad byte's position
            data = yaml.safe_load(f)
    except OSError as error:
        raise InputError(f"Config file {path} could not be read: {error.strerror}.") from None
    except yaml.YAMLError as error:
        where = [f"{text} at line {mark.line + 1}, column {mark.column + 1}"
                 for text, mark in ((getattr(error, "context", None), getattr(error, "context_mark", None)),
                                    (getattr(error, "problem", None), getattr(error, "problem_mark", None)))
                 if text and mark]
        raise InputError(f"Config file {path} could not be read as YAML: {'; '.join(where) or error}. "
                         "Fix the file there.") from None
    if not isinstance(data, dict):
        holds = "is empty" if data is None else f"holds a {type(data).__name__}"
        raise InputError(f"Config file {path} {holds}, not a mapping of KEY: value. A config is a YAML file "
                         "like configs/MDPR/demo.yml.")
    return data


def load_config_file(path, _referrers=()):
    """fastreid's ``CfgNode.load_yaml_with_base``: the file's keys over those of its ``_BASE_`` file (a path
    relative to the file naming it), recursively; each error names the files involved."""
    data = _read_config_file(path)
    if BASE_KEY not in data:
        return data
    base, referrers = data.pop(BASE_KEY), _referrers + (path,)
    if not isinstance(base, str):
        raise InputError(f"Config file {path}: {BASE_KEY} must be one file path, got {base!r}.")
    resolved = os.path.join(os.path.dirname(path), os.path.expanduser(base))  # as fastreid resolves it
    seen = [os.path.realpath(p) for p in referrers]
    if os.path.realpath(resolved) in seen:
        cycle = referrers[seen.index(os.path.realpath(resolved)):] + (resolved,)
        raise InputError(f"Config files include each other through {BASE_KEY} in a cycle: {' -> '.join(cycle)}. "
                         f"Remove the {BASE_KEY} that leads back.")
    if not os.path.isfile(resolved):
        raise MissingFileError(
            f"Config file {path} names {BASE_KEY}: {base}, which is not found ({resolved}). Fix the path in {path}: "
            f"a {BASE_KEY} is relative to the file that names it.")
    merged = load_config_file(resolved, referrers)
    _merge_into(data, merged, path, resolved)
    return merged


def _merge_into(values, base_values, path, base_path, prefix=""):
    # fastreid's merge_a_into_b: mappings merge key by key, anything else replaces the base's value
    for key, value in values.items():
        if isinstance(value, dict) and key in base_values:
            if not isinstance(base_values[key], dict):
                raise InputError(f"{prefix}{key} is a mapping in {path} but a single value in its {BASE_KEY} "
                                 f"{base_path}. Make them the same kind.")
            _merge_into(value, base_values[key], path, base_path, f"{prefix}{key}.")
        else:
            base_values[key] = value


def merge_config(cfg, path, opts):
    """The config file ``path`` (or a packaged config's name, see :func:`config_file`) with its ``_BASE_`` files,
    then the ``KEY VALUE`` ``opts``, merged into ``cfg``, with errors that name the file or key: an unknown key
    names where it came from and the closest valid keys (yacs says only "Non-existent (config) key"); a missing
    or unreadable file, a ``_BASE_`` cycle and a value of the wrong type are :class:`MDPRError` s."""
    path = config_file(path)
    values = load_config_file(path)
    if isinstance(values.get("IMPORTS"), str):
        values["IMPORTS"] = [name.strip() for name in values["IMPORTS"].split(",") if name.strip()]
    opts = [_module_list(value) if i % 2 and opts[i - 1] == "IMPORTS" else value for i, value in enumerate(opts)]
    for source, merge in ((path, lambda: cfg.merge_from_other_cfg(type(cfg)(values))),
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


# ----------------------------------------------------------------------------------------- values
# Values no run can use: key -> (smallest allowed, what the key is). fastreid would fail on them late,
# after start-up, with an error about something else (a convolution, NUM_INSTANCE, a division).
_MINIMUMS = {
    "SOLVER.IMS_PER_BATCH": (1, "training images per batch, over all processes"),
    "TEST.IMS_PER_BATCH": (1, "test images per batch, over all processes"),
    "DATALOADER.NUM_INSTANCE": (1, "images of each identity in a training batch"),
    "DATALOADER.NUM_WORKERS": (0, "loader processes; 0 loads in the main process"),
    "SOLVER.MAX_EPOCH": (1, "epochs to train"),
    "SOLVER.CHECKPOINT_PERIOD": (1, "epochs between checkpoints"),
    "TEST.EVAL_PERIOD": (1, "epochs between evaluations; the last epoch is always evaluated"),
}
# Learning rates and factors: a negative one ascends the loss (0 is allowed: a frozen part, or a run that only
# collects statistics)
_NOT_NEGATIVE = ("SOLVER.BASE_LR", "SOLVER.BIAS_LR_FACTOR", "SOLVER.HEADS_LR_FACTOR", "SOLVER.ETA_MIN_LR",
                 "SOLVER.WEIGHT_DECAY", "SOLVER.WEIGHT_DECAY_BIAS", "SOLVER.WEIGHT_DECAY_NORM")
_SIZES = {"INPUT.SIZE_TRAIN": "SOLVER.IMS_PER_BATCH", "INPUT.SIZE_TEST": "TEST.IMS_PER_BATCH"}  # size -> its batch
_LARGEST_SIDE = 8192  # pixels of an input side: person crops are a few hundred
# MDPR's sizes: key -> (smallest, largest, what it is). Beyond them a run fails late (a convolution of width 0, a
# negative dimension) or builds a model no machine holds; the memory a size within them needs is checked too.
_RANGES = {
    "MODEL.BACKBONE.EMBEDDING_DIM": (1, 16384, "E, the width of every MDPR embedding; the paper's is 512"),
    "ATTN_NUM": (1, 64, "M, MDPR's foreground attention maps per scale; the paper's is 2"),
    "PART_NUM": (1, 64, "P, MDPR's horizontal stripes; the paper's is 2"),
}


def _value(cfg, key):
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def check_config(cfg):
    """Refuse values no run can use, naming the key, the value and what is allowed; returns ``cfg``."""
    for key, (minimum, meaning) in _MINIMUMS.items():
        value = _value(cfg, key)  # an int: yacs refuses values of another type than the default's
        if value < minimum:
            raise InputError(f"{key} {value!r} is not allowed: it must be an integer >= {minimum} ({meaning}). "
                             "Fix it in the config file or the command line.")
    for key in _NOT_NEGATIVE:
        value = _value(cfg, key)
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise InputError(f"{key} {value!r} is not allowed: it must be a number >= 0 (a negative learning rate or "
                             "weight decay ascends the loss). Fix it in the config file or the command line.")
    from .devices import parse_device  # imports torch: only once a config is checked

    parse_device(cfg.MODEL.DEVICE)
    for key, (smallest, largest, meaning) in _RANGES.items():
        value = _value(cfg, key)
        if not smallest <= value <= largest:
            raise InputError(f"{key} {value!r} is not allowed: it must be an integer from {smallest} to {largest} "
                             f"({meaning}). Fix it in the config file or the command line.")
    for key, batch_key in _SIZES.items():
        value = _value(cfg, key)
        if not (isinstance(value, (list, tuple)) and len(value) == 2 and
                all(_is_int(v) and 1 <= v <= _LARGEST_SIDE for v in value)):
            raise InputError(f"{key} {value!r} is not allowed: it must be [height, width], two integers from 1 to "
                             f"{_LARGEST_SIDE} (to keep images at their size, give that size). Fix it in the config "
                             "file or the command line.")
        check_batch_memory(key, batch_key, max(_value(cfg, batch_key) // comm.get_world_size(), 1), value)
    return cfg
