"""Reading torch files without running code from them.

``torch.load(weights_only=True)`` everywhere; the only non-tensor types allowed beyond torch's own are
the numpy scalars fastreid stores in its checkpoints (the best-model ``metric``).
"""
import pickle

import numpy as np
import torch

from .errors import MDPRError


class CheckpointError(MDPRError, RuntimeError):
    """A checkpoint file that cannot or must not be loaded."""


def _numpy_scalar_globals():
    # what pickling a numpy scalar (np.float64(0.5), np.int64(3), ...) refers to
    dtypes = [np.float16, np.float32, np.float64, np.int32, np.int64, np.bool_]
    reconstruct = np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar
    return [reconstruct, np.dtype] + [type(np.dtype(t)) for t in dtypes]


_SAFE_GLOBALS = _numpy_scalar_globals()


def safe_load(path):
    """``torch.load(path)`` on the CPU, refusing pickled objects; errors name the file."""
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        message = str(error)
        if "Unsupported global" in message:
            offender = message.split("Unsupported global:", 1)[1].split(" was not", 1)[0].strip()
            raise CheckpointError(
                f"Refusing to load {path}: it holds a pickled Python object ({offender}), which could run "
                "arbitrary code when unpickled; only tensors, containers and numbers are accepted. If you "
                "trust the file, re-save its tensors alone: torch.save({'model': model.state_dict()}, path)."
            ) from None
        raise CheckpointError(f"{path} could not be read as a torch checkpoint: it is truncated, corrupt or "
                              "of another format; re-save or re-download it.") from None
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise CheckpointError(
            f"{path} could not be read as a torch checkpoint: it is truncated, corrupt or of another "
            f"format; re-save or re-download it ({error}).") from None
