"""Config keys MDPR adds to fastreid's config.

The model switches live at the config root (``ATTN_NUM``, ``PART_NUM``, ...) because that is where the
authors' YAML files put them; keeping them there lets those files load unchanged.
"""
import difflib
import math
import os
import re

import yaml
from fastreid.config import CfgNode as CN
from fastreid.config import get_cfg
from fastreid.config.config import BASE_KEY
from fastreid.utils import comm

from .authors_keys import add_authors_keys, authors_keys_in, check_authors_keys
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

    # Patch pool of RandomPatch (INPUT.RPT). 0: the meta-architecture's own, 1000 for MDPR (the authors' RandomPatch,
    # whatever their files say) and fastreid's 50000 for any other (mdpr_plugin/data/transforms.py).
    _add(cfg.INPUT.RPT, "POOL_CAPACITY", 0)

    # Speed switches, applied by the plugin's Trainer.build_model (measured in docs/benchmarks.md,
    # the model benchmark): torch.compile of the model in place (state-dict keys unchanged; the first
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

    # ReidFolder, the dataset read from a folder with no code (mdpr_plugin/data/folder.py, docs/own-data.md): the
    # folder (a relative path is from the working folder); for a folder with a training split alone, the identities
    # held back from it as query and gallery, a fraction 0 < x < 1 of them or a count >= 1 (None: none held back,
    # the whole folder trains), and the seed that draws them. None as the default lets either type be given.
    _add(cfg.DATASETS, "FOLDER", CN())
    _add(cfg.DATASETS.FOLDER, "ROOT", "")
    _add(cfg.DATASETS.FOLDER, "TEST_IDS", None)
    _add(cfg.DATASETS.FOLDER, "SEED", 0)

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
# fastreid's loader follows _BASE_ by recursion: a chain a few hundred long ends in a RecursionError, a cycle too
MAX_BASE_FILES = 100


def _read_config_file(path):
    """One YAML file's mapping, read as fastreid reads it (UTF-8 text, ``yaml.safe_load``: tags that would build
    Python objects are refused), or an :class:`InputError` naming the file and, where yaml gives it, the line."""
    if path.endswith(".py"):
        raise InputError(f"Config file {path} is a Python file: configs are YAML files of KEY: value mappings, "
                         "like configs/MDPR/demo.yml.")
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
    except OSError as error:
        raise InputError(f"Config file {path} could not be read: {error.strerror}.") from None
    except UnicodeDecodeError as error:
        raise InputError(f"Config file {path} is not UTF-8 text (byte {error.start}: {error.reason}), and fastreid "
                         "reads config files as UTF-8: save it as UTF-8.") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        where = [f"{what} at line {mark.line + 1}, column {mark.column + 1}"
                 for what, mark in ((getattr(error, "context", None), getattr(error, "context_mark", None)),
                                    (getattr(error, "problem", None), getattr(error, "problem_mark", None)))
                 if what and mark]
        raise InputError(f"Config file {path} could not be read as YAML: {'; '.join(where) or error}. "
                         "Fix the file there.") from None
    if not isinstance(data, dict):
        holds = "is empty" if data is None else f"holds a {type(data).__name__}"
        raise InputError(f"Config file {path} {holds}, not a mapping of KEY: value. A config is a YAML file "
                         "like configs/MDPR/demo.yml.")
    return data


def _base_path(path, base):
    # where fastreid's loader looks for it: relative to the folder of the file naming it, unless absolute
    base = os.path.expanduser(base) if base.startswith("~") else base
    return base if base.startswith(("/", "https://", "http://")) else os.path.join(os.path.dirname(path), base)


def _checked_base_chain(path):
    """``[(file, its mapping), ...]``: ``path``, its ``_BASE_``, that one's ``_BASE_``, ..., each file readable,
    a mapping, its ``_BASE_`` one path to a file; no cycle and at most :data:`MAX_BASE_FILES` bases. What
    fastreid's loader would fail on with an error that names no file (or by recursing without end)."""
    chain = [(path, _read_config_file(path))]
    while BASE_KEY in chain[-1][1]:
        referrer, base = chain[-1][0], chain[-1][1][BASE_KEY]
        if not isinstance(base, str):
            raise InputError(f"Config file {referrer}: {BASE_KEY} must be one file path, got {base!r}.")
        resolved = _base_path(referrer, base)
        seen = [os.path.realpath(file) for file, _ in chain]
        if os.path.realpath(resolved) in seen:
            cycle = [file for file, _ in chain[seen.index(os.path.realpath(resolved)):]] + [resolved]
            raise InputError(f"Config files include each other through {BASE_KEY} in a cycle: {' -> '.join(cycle)}. "
                             f"Remove the {BASE_KEY} that leads back.")
        if len(chain) > MAX_BASE_FILES:
            raise InputError(f"Config file {referrer} names {BASE_KEY}: {base}, one more than the {MAX_BASE_FILES} "
                             f"{BASE_KEY} files a config may stand on (counting from {path}). Merge files of that "
                             f"chain into one.")
        if not os.path.isfile(resolved):
            raise MissingFileError(
                f"Config file {referrer} names {BASE_KEY}: {base}, which is not found ({resolved}). Fix the path in "
                f"{referrer}: a {BASE_KEY} is relative to the file that names it.")
        chain.append((resolved, _read_config_file(resolved)))
    return chain


def _holding(mapping, key):
    """The kinds of value ``key`` has anywhere in the nested ``mapping``: "a mapping", "a single value"."""
    kinds = set()
    for name, value in mapping.items():
        if name == key:
            kinds.add("a mapping" if isinstance(value, dict) else "a single value")
        if isinstance(value, dict):
            kinds |= _holding(value, key)
    return kinds


def load_config_file(path):
    """The config file ``path`` with its ``_BASE_`` files merged, by fastreid's ``CfgNode.load_yaml_with_base``,
    once :func:`_checked_base_chain` has checked what it would fail on without naming a file."""
    chain = _checked_base_chain(path)
    try:
        return CN.load_yaml_with_base(path)
    except AssertionError as error:  # fastreid: "Cannot inherit key 'K' from base!" (a mapping over a value)
        inherited = re.fullmatch(r"Cannot inherit key '(.*)' from base!", str(error))
        if not inherited:
            raise
        key = inherited.group(1)
        kinds = "; ".join(f"{', '.join(sorted(_holding(data, key)))} in {file}" for file, data in chain
                          if _holding(data, key))
        raise InputError(f"Config file {path}: {key} is a mapping in one of its files and a single value in a "
                         f"{BASE_KEY} below it ({kinds}). Make them the same kind.") from None


def merge_config(cfg, path, opts):
    """The config file ``path`` (or a packaged config's name, see :func:`config_file`) with its ``_BASE_`` files,
    then the ``KEY VALUE`` ``opts``, merged into ``cfg``, with errors that name the file or key: an unknown key
    names where it came from and the closest valid keys (yacs says only "Non-existent (config) key"); a missing
    or unreadable file, a ``_BASE_`` cycle and a value of the wrong type are :class:`MDPRError` s. fastreid loads
    and merges the files (:func:`load_config_file`)."""
    path = config_file(path)
    values = load_config_file(path)
    if isinstance(values.get("IMPORTS"), str):
        values["IMPORTS"] = [name.strip() for name in values["IMPORTS"].split(",") if name.strip()]
    opts = [_module_list(value) if i % 2 and opts[i - 1] == "IMPORTS" else value for i, value in enumerate(opts)]
    # the keys the authors' fork adds, where given: their files and runs' config.yaml load (mdpr_plugin/authors_keys.py)
    add_authors_keys(cfg, authors_keys_in(values, opts))
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
    "INPUT.RPT.POOL_CAPACITY": (0, "RandomPatch's patch pool; 0: the meta-architecture's own"),
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
    check_authors_keys(cfg)
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
