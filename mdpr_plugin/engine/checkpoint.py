"""Safe checkpoint loading for fastreid's ``Checkpointer``.

fastreid loads checkpoints with a bare ``torch.load`` (utils/checkpoint.py:216), which unpickles
arbitrary objects. Here every file is read with ``weights_only=True``; the only non-tensor types allowed
are the numpy scalars fastreid itself stores (the best-model ``metric``). Files in the MDPR authors' key
layout are converted to this plugin's layout on the way in.
"""
import os
import pickle

import numpy as np
import torch


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot or must not be loaded."""


def _numpy_scalar_globals():
    # what pickling a numpy scalar (np.float64(0.5), np.int64(3), ...) refers to
    dtypes = [np.float16, np.float32, np.float64, np.int32, np.int64, np.bool_]
    reconstruct = np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar
    return [reconstruct, np.dtype] + [type(np.dtype(t)) for t in dtypes]


_SAFE_GLOBALS = _numpy_scalar_globals()


def _read(path):
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "weights_only" in str(error) or "Unsupported global" in str(error):
            raise CheckpointError(
                f"Refusing to load {path}: it holds pickled Python objects, which could run arbitrary "
                "code when unpickled; only tensors, containers and numbers are accepted. If you trust "
                "the file, re-save just its tensors: torch.save({'model': model.state_dict()}, path).\n"
                f"torch said: {str(error).splitlines()[-1] if str(error) else error}") from None
        raise CheckpointError(f"{path} is not a torch checkpoint ({error}).") from None
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise CheckpointError(
            f"{path} could not be read as a torch checkpoint: it is truncated, corrupt or of another "
            f"format ({error}). Point MODEL.WEIGHTS at a file written by torch.save.") from None


def load_checkpoint_file(path):
    """Read a checkpoint as a dict ``{"model": state_dict, ...}``; a bare state dict is wrapped."""
    if not os.path.isfile(path):
        raise CheckpointError(f"Checkpoint {path} not found. Check MODEL.WEIGHTS (or --resume's OUTPUT_DIR).")
    checkpoint = _read(path)
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

    from ..modeling.checkpoint import convert_authors_state_dict, is_authors_layout
    if is_authors_layout(checkpoint["model"]):
        checkpoint["model"] = convert_authors_state_dict(checkpoint["model"])
    return checkpoint
