"""Checkpoint loading for fastreid's ``Checkpointer``.

fastreid loads checkpoints with a bare ``torch.load`` (utils/checkpoint.py:216), which unpickles
arbitrary objects. Here every file is read with :func:`mdpr_plugin.serialization.safe_load`, checked to
be a checkpoint, and converted from the MDPR authors' key layout when it is in that layout.
"""
import os

import torch

from ..modeling.checkpoint import convert_authors_state_dict, is_authors_layout
from ..serialization import CheckpointError, safe_load


def load_checkpoint_file(path):
    """Read a checkpoint as a dict ``{"model": state_dict, ...}``; a bare state dict is wrapped."""
    if not os.path.isfile(path):
        raise CheckpointError(f"Checkpoint {path} not found. Check MODEL.WEIGHTS (or --resume's OUTPUT_DIR).")
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
