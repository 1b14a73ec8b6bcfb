"""Where a config's ``MODEL.DEVICE`` runs on this machine."""
import logging

import torch

from .errors import InputError

logger = logging.getLogger(__name__)
_warned = set()


def resolve_device(device):
    """``device`` if it exists here, else the CPU with one logged warning (per requested device).

    fastreid's default ``MODEL.DEVICE`` is "cuda"; a config written for a GPU machine still runs on a
    CPU-only one.
    """
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"MODEL.DEVICE {device!r} is not a torch device; give 'cuda', 'cuda:N' or 'cpu'") from None
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
