"""Where a config's ``MODEL.DEVICE`` runs on this machine."""
import logging

import torch

from .errors import InputError

logger = logging.getLogger(__name__)
_warned = set()


def parse_device(device):
    """``MODEL.DEVICE`` as a ``torch.device``, refused unless it is a CPU or CUDA device (what fastreid runs on)."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        parsed = None
    if parsed is None or parsed.type not in ("cpu", "cuda"):
        raise InputError(f"MODEL.DEVICE {device!r} is not allowed: give cuda (the first GPU; cuda:N for another) "
                         "or cpu. Fix it in the config file or the command line.")
    return parsed


def resolve_device(device):
    """``device`` if it exists here, else the CPU with one logged warning (per requested device).

    fastreid's default ``MODEL.DEVICE`` is "cuda"; a config written for a GPU machine still runs on a
    CPU-only one.
    """
    device = parse_device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        if str(device) not in _warned:
            _warned.add(str(device))
            logger.warning("MODEL.DEVICE is %s but CUDA is not available: running on the CPU.", device)
        return torch.device("cpu")
    return device


def on_available_device(cfg):
    """``cfg``, or a copy whose ``MODEL.DEVICE`` is the device it resolves to here."""
    device = resolve_device(cfg.MODEL.DEVICE)
    if str(device) == cfg.MODEL.DEVICE:
        return cfg
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.DEVICE = str(device)
    return cfg


def model_device(model):
    """The device ``model``'s first weight is on; the CPU for a model without weights."""
    first = next(iter((*model.parameters(), *model.buffers())), None)
    return first.device if first is not None else torch.device("cpu")
