"""The plugin's checkpointer: fastreid's ``Checkpointer`` that reads safely and writes atomically.

- Reading: fastreid loads with a bare ``torch.load`` (utils/checkpoint.py:216), which unpickles arbitrary
  objects, and on torch >= 2.6 (``weights_only=True`` by default) fails on fastreid's own best-model
  checkpoints, which hold a numpy scalar. Here every file is read with
  :func:`mdpr_plugin.serialization.safe_load`, checked to be a checkpoint, and converted from the MDPR
  authors' key layout when it is in that layout.
- A missing file: fastreid asserts (``Checkpoint x not found!``, utils/checkpoint.py:119), naming neither
  the config key nor the folder it was looked for from.
- Writing: fastreid writes checkpoints and ``last_checkpoint`` in place (utils/checkpoint.py:93,202): a
  process killed while saving leaves a truncated file where the previous good one was. Here each is
  written to a temporary file in the same folder and renamed over the old one.
"""
import contextlib
import os

import torch
from fastreid.utils.checkpoint import Checkpointer

from ..modeling.authors_layout import convert_authors_state_dict, is_authors_layout
from ..serialization import CheckpointError, safe_load


def check_weights_file(path):
    """Refuse a ``MODEL.WEIGHTS`` (or ``last_checkpoint``) entry that names no file, with the one message for it."""
    if not path:
        raise CheckpointError("MODEL.WEIGHTS is empty: pass the trained checkpoint, e.g. MODEL.WEIGHTS "
                              "logs/demo/mdpr/model_final.pth.")
    if "://" not in path and not os.path.isfile(path):
        raise CheckpointError(
            f"Checkpoint {path} not found (absolute: {os.path.abspath(path)}). Check MODEL.WEIGHTS, or with "
            "--resume the file named in OUTPUT_DIR/last_checkpoint.")


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

    if is_authors_layout(checkpoint["model"]):
        checkpoint["model"] = convert_authors_state_dict(checkpoint["model"])
    return checkpoint


@contextlib.contextmanager
def atomic_open(path, mode="wb"):
    """Open a temporary file next to ``path``; it replaces ``path`` only once fully written."""
    temporary = f"{path}.tmp{os.getpid()}"
    try:
        with open(temporary, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


class MDPRCheckpointer(Checkpointer):
    """fastreid's ``Checkpointer`` with safe reading (and the authors' layout) and atomic writing.

    Works for any fastreid model, not only MDPR; its state-dict keys are fastreid's own.
    """

    def load(self, path, checkpointables=None):
        if path:  # an empty MODEL.WEIGHTS means training from scratch
            check_weights_file(path)
        return super().load(path, checkpointables)

    def _load_file(self, f):
        return load_checkpoint_file(f)

    def save(self, name, **kwargs):
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        data.update((key, obj.state_dict()) for key, obj in self.checkpointables.items())
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        with atomic_open(save_file, "wb") as f:
            torch.save(data, f)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename):
        with atomic_open(os.path.join(self.save_dir, "last_checkpoint"), "w") as f:
            f.write(last_filename_basename)
