"""The plugin's checkpointer: fastreid's ``Checkpointer`` that reads safely, loads only weights that fit
the model and writes atomically.

- Reading: fastreid loads with a bare ``torch.load`` (utils/checkpoint.py:216), which unpickles arbitrary
  objects, and on torch >= 2.6 (``weights_only=True`` by default) fails on fastreid's own best-model
  checkpoints, which hold a numpy scalar. Here every file is read with
  :func:`mdpr_plugin.serialization.safe_load` and checked to be a checkpoint. (The MDPR authors' key layout
  is the model's to convert: :class:`mdpr_plugin.modeling.MDPR` does it when it loads a state dict.)
- A missing file: fastreid asserts (``Checkpoint x not found!``, utils/checkpoint.py:119), naming neither
  the config key nor the folder it was looked for from.
- Weights that do not fit: fastreid loads what matches, drops keys of another shape and leaves missing ones
  at their random initialisation, with warnings (utils/checkpoint.py:236-246); evaluating another model's
  weights then prints numbers of a random model. Here the checkpoint must fit the model: every key but
  the classifiers' (which depend on the training set's identities) present and of the same shape, unless
  ``allow_partial`` (``MODEL.ALLOW_PARTIAL_WEIGHTS``) asks for a partial load, e.g. for fine-tuning.
- Writing: fastreid writes checkpoints and ``last_checkpoint`` in place (utils/checkpoint.py:93,202): a
  process killed while saving leaves a truncated file where the previous good one was. Here each is
  written to a temporary file in the same folder and renamed over the old one, and a write that fails because
  of the folder (removed, read-only, full, over ``ulimit -f``) is one line (mdpr_plugin/engine/write_faults.py).
"""
import logging
import numbers
import os
import re

import numpy as np
import torch
from fastreid.modeling.heads.embedding_head import EmbeddingHead
from fastreid.modeling.meta_arch.build import META_ARCH_REGISTRY
from fastreid.utils.checkpoint import Checkpointer

from ..modeling.mdpr import state_dict_as_loaded
from ..output_files import atomic_open
from ..serialization import CheckpointError, safe_load
from .write_faults import remake_removed_folder, writing_into

logger = logging.getLogger(__name__)

MISMATCHES_NAMED = 3  # of each kind (missing, other shape, unexpected) in the error message


def check_weights_file(path):
    """Refuse a ``MODEL.WEIGHTS`` (or ``last_checkpoint``) entry that names no file, with the one message for it."""
    if not path:
        raise CheckpointError("MODEL.WEIGHTS is empty: pass the trained checkpoint, e.g. MODEL.WEIGHTS "
                              "logs/demo/mdpr/model_final.pth.")
    if "://" not in path and not os.path.isfile(path):
        authors = re.search(r"duke|market|msmt", os.path.basename(path), re.I) and not os.path.basename(
            path).startswith("model_")
        where = (" The MDPR authors' released weights (DukeMTMC-reID.pth, ...) are published through the links in "
                 "GETTING_STARTED.md of https://github.com/KuilongCui/MDPR (a BaiduYun folder, password mdpr): "
                 "download the file and pass its path as MODEL.WEIGHTS." if authors else "")
        raise CheckpointError(
            f"Checkpoint {path} not found (absolute: {os.path.abspath(path)}). Check MODEL.WEIGHTS, or with "
            f"--resume the file named in OUTPUT_DIR/last_checkpoint.{where}")


def load_checkpoint_file(path):
    """Read a checkpoint as a dict ``{"model": state_dict, ...}``; a bare state dict is wrapped."""
    check_weights_file(path)
    checkpoint = safe_load(path)
    if not isinstance(checkpoint, dict):
        raise CheckpointError(
            f"{path} holds a {type(checkpoint).__name__}, not a checkpoint dict "
            "({'model': state_dict, ...}) or a state dict.")
    if "model" not in checkpoint:
        if not checkpoint or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
            raise CheckpointError(
                f"{path} is neither a fastreid checkpoint (a dict with a 'model' entry) nor a state "
                f"dict of tensors; its top-level keys are {sorted(checkpoint)[:10]}.")
        checkpoint = {"model": checkpoint}
    if not isinstance(checkpoint["model"], dict):
        raise CheckpointError(f"{path}: checkpoint['model'] is a {type(checkpoint['model']).__name__}, "
                              "expected a state dict.")
    return checkpoint


# what a checkpoint records of the training's progress: the epoch it ends, the schedulers' step counts, the sampler's
# seed; --resume continues from them
_PROGRESS_COUNTS = ("last_epoch", "_step_count", "seed")
_LARGEST_COUNT = 2 ** 32 - 1  # numpy's largest seed


def _progress_counts(checkpoint, states):
    """(name, value) of each count of training progress in ``checkpoint``, for the trainer's ``states``."""
    counts = [("'epoch'", checkpoint["epoch"])] if "epoch" in checkpoint else []
    for name in states:
        state = checkpoint.get(name, {})
        if not isinstance(state, dict):
            counts.append((f"'{name}' entry", state))
            continue
        counts += [(f"{name} '{key}'", state[key]) for key in _PROGRESS_COUNTS if key in state]
    return counts


def check_training_progress(checkpoint, path, states):
    """Refuse to resume from ``checkpoint`` (read from ``path``) unless its record of the training's progress (for
    the trainer's ``states``: optimizer, schedulers, sampler) holds counts: fastreid would start again from epoch 0
    over the run's checkpoints for an epoch of -1, and fail in a traceback on "abc"."""
    for name, value in _progress_counts(checkpoint, states):
        if isinstance(value, dict) or (isinstance(value, numbers.Integral) and not isinstance(value, bool)
                                       and 0 <= value <= _LARGEST_COUNT):
            continue
        shown = repr(value) if len(repr(value)) <= 40 else f"a {type(value).__name__}"
        raise CheckpointError(
            f"{path} cannot be resumed from: its {name} is {shown}, not a count (an integer from 0 to "
            f"{_LARGEST_COUNT}); the file was altered or not written by a training run. Write the name of an earlier "
            f"checkpoint of the run (model_0001.pth, ...) into {os.path.join(os.path.dirname(path), 'last_checkpoint')}, "
            "or start the run again without --resume.")


def classifier_keys(model):
    """State-dict keys of the classifier weights (``weight`` of each fastreid ``EmbeddingHead``, MDPR's
    heads included): their shape is the number of training identities, not part of the model."""
    return {f"{name}.weight" if name else "weight"
            for name, module in model.named_modules() if isinstance(module, EmbeddingHead)}


def without_module_prefix(state_dict):
    """The keys of ``state_dict`` as fastreid matches them: without the ``module.`` of a (Distributed)
    DataParallel model when every key has it."""
    if state_dict and all(key.startswith("module.") for key in state_dict):
        return {key[len("module."):]: value for key, value in state_dict.items()}
    return state_dict


def _model_name(model):
    name = type(model).__name__
    if META_ARCH_REGISTRY.get(name) is type(model):
        return f"{name} (MODEL.META_ARCHITECTURE {name})"
    return name


def _first(items, describe=str):
    named = ", ".join(describe(item) for item in items[:MISMATCHES_NAMED])
    return named + (f" and {len(items) - MISMATCHES_NAMED} more" if len(items) > MISMATCHES_NAMED else "")


def check_weights_fit(model, state_dict, source, allow_partial=False):
    """Refuse ``state_dict`` unless it fits ``model``: some key matches and, unless ``allow_partial``,
    every key of the model but the classifiers' is present with the same shape.

    ``source`` (the file) is named in the error. Checked before anything is loaded, so a refused
    checkpoint leaves the model as it was. Returns the number of keys that fit (classifiers aside).
    """
    state_dict = without_module_prefix(state_dict)
    not_arrays = [key for key, value in state_dict.items() if not isinstance(value, (torch.Tensor, np.ndarray))]
    if not_arrays:
        raise CheckpointError(f"{source}: the model weights hold values that are not tensors ({_first(not_arrays)}, "
                              f"a {type(state_dict[not_arrays[0]]).__name__}); re-save the model's state_dict.")
    expected = model.state_dict()
    classifiers = classifier_keys(model)
    compared = [key for key in expected if key not in classifiers]
    missing = [key for key in compared if key not in state_dict]
    shapes = {key: (tuple(state_dict[key].shape), tuple(expected[key].shape)) for key in compared if key in state_dict}
    other_shape = [(key, *pair) for key, pair in shapes.items() if pair[0] != pair[1]]
    unexpected = [key for key in state_dict if key not in expected]
    fitting = len(compared) - len(missing) - len(other_shape)
    if not compared or (not missing and not other_shape):
        return fitting

    found = []
    if missing:
        found.append(f"Missing: {_first(missing)}.")
    if other_shape:
        found.append("Of another shape: " + _first(other_shape, lambda m: f"{m[0]} [file {m[1]}, model {m[2]}]") + ".")
    if unexpected:
        found.append(f"Unexpected: {_first(unexpected)}.")
    summary = (f"{source} does not fit the model {_model_name(model)}: {fitting} of the model's {len(compared)} "
               f"weights (classifiers aside) are in it with their shape. {' '.join(found)}")
    if fitting == 0:
        raise CheckpointError(
            f"{summary} It holds another model's weights: pass the config it was trained with "
            "(MODEL.META_ARCHITECTURE, MODEL.BACKBONE.*), or give backbone-only weights as "
            "MODEL.BACKBONE.PRETRAIN_PATH; MODEL.ALLOW_PARTIAL_WEIGHTS True cannot help, nothing would be loaded.")
    if not allow_partial:
        raise CheckpointError(
            f"{summary} Pass the config the checkpoint was trained with (MODEL.BACKBONE.DEPTH, "
            "MODEL.BACKBONE.EMBEDDING_DIM, the MDPR switches, ...), or set MODEL.ALLOW_PARTIAL_WEIGHTS True "
            "to load only the matching weights on purpose (fine-tuning).")
    logger.warning("%s MODEL.ALLOW_PARTIAL_WEIGHTS is True: loading the %d matching weights; the others keep "
                   "their initial values.", summary, fitting)
    return fitting


def _tensor_bytes(value):
    """Bytes of the tensors in ``value`` (nested dicts, lists and tuples): about a checkpoint's size."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(v) for v in value)
    return 0


class _WriteErrorsKept:
    """A file for ``torch.save`` that keeps the error of a failed write: torch's zip writer reports any as a
    RuntimeError (``unexpected pos``) that does not say why."""

    def __init__(self, file):
        self.file, self.error = file, None

    def write(self, data):
        try:
            return self.file.write(data)
        except OSError as error:
            self.error = error
            raise

    def flush(self):
        self.file.flush()


def _save_telling_why(data, file):
    """``torch.save(data, file)``; a write that failed raises its own OSError (a full disk, a file-size limit)."""
    kept = _WriteErrorsKept(file)
    try:
        torch.save(data, kept)
    except RuntimeError:
        if kept.error is None:
            raise
        raise kept.error from None


class MDPRCheckpointer(Checkpointer):
    """fastreid's ``Checkpointer`` with safe reading, weights that must fit the model (:func:`check_weights_fit`;
    ``allow_partial`` is ``MODEL.ALLOW_PARTIAL_WEIGHTS``) and atomic writing.

    Works for any fastreid model, not only MDPR; its state-dict keys are fastreid's own.
    """

    def __init__(self, model, save_dir="", *, save_to_disk=True, allow_partial=False, **checkpointables):
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.allow_partial = allow_partial
        self._source = None  # the file being loaded, named by the fit check
        self._resuming = False  # loading every state, the training's progress included
        self.on_folder_recreated = None  # called after save_dir, removed during training, was made again

    def load(self, path, checkpointables=None):
        if path:  # an empty MODEL.WEIGHTS means training from scratch
            check_weights_file(path)
        self._source = path
        self._resuming = checkpointables is None  # fastreid's resume_or_load loads every state to resume
        return super().load(path, checkpointables)

    def load_model_weights(self, checkpoint, source):
        """The model's part of :meth:`load` for a checkpoint already read with :func:`load_checkpoint_file`
        (so that a caller that needed its contents first does not read the file twice)."""
        self._source = source
        self.logger.info("Loading checkpoint from %s", source)
        remaining = dict(checkpoint)  # _load_model pops the model's entry
        self._log_incompatible_keys(self._load_model(remaining))
        return remaining

    def _load_file(self, f):
        checkpoint = load_checkpoint_file(f)
        if self._resuming:
            check_training_progress(checkpoint, f, self.checkpointables)
        return checkpoint

    def _load_model(self, checkpoint):
        # the keys as the model loads them (the authors' layout renamed), so that the fit check and fastreid's
        # shape check compare the model's own names
        checkpoint["model"] = state_dict_as_loaded(self.model, checkpoint["model"])
        check_weights_fit(self.model, checkpoint["model"], self._source, self.allow_partial)
        return super()._load_model(checkpoint)

    def save(self, name, **kwargs):
        if not self.save_dir or not self.save_to_disk:
            return
        if not os.path.isdir(self.save_dir):
            remake_removed_folder(self.save_dir, "this checkpoint", self.on_folder_recreated)
        data = {"model": self.model.state_dict()}
        data.update((key, obj.state_dict()) for key, obj in self.checkpointables.items())
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        with writing_into(self.save_dir, basename, _tensor_bytes(data)), atomic_open(save_file, "wb") as f:
            _save_telling_why(data, f)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename):
        with writing_into(self.save_dir, "last_checkpoint"), \
                atomic_open(os.path.join(self.save_dir, "last_checkpoint"), "w") as f:
            f.write(last_filename_basename)
