"""The model for evaluation and the tools, built from ``MODEL.WEIGHTS``: its classifiers sized from the
checkpoint, its weights checked to fit.

fastreid builds an evaluation model with ``MODEL.HEADS.NUM_CLASSES`` 0 unless it is given, so every
classifier weight of the checkpoint is skipped with a warning; the evaluation feature does not use them,
but the warnings hide the ones that matter. Here the number of classes is read from the checkpoint, which
is read once.
"""
import logging
import os

import torch
from fastreid.modeling.meta_arch.build import META_ARCH_REGISTRY
from fastreid.utils.file_io import PathManager

from ..errors import MDPRError
from ..modeling.mdpr import state_dict_as_loaded
from .checkpointer import (MDPRCheckpointer, check_weights_file, classifier_keys, load_checkpoint_file,
                           without_module_prefix)
from .trainer import build_model

logger = logging.getLogger(__name__)


def _meta_model(cfg):
    """The model ``cfg`` describes, built on the meta device (no memory, no initialisation); None for a model
    that cannot be built there."""
    try:
        with torch.device("meta"):
            return META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)(cfg)
    except (NotImplementedError, RuntimeError) as error:
        if isinstance(error, MDPRError):
            raise
        logger.info("Could not find the classifiers without building the model (%s): MODEL.HEADS.NUM_CLASSES "
                    "stays %d", error, cfg.MODEL.HEADS.NUM_CLASSES)
        return None


def classes_in_checkpoint(cfg, state_dict):
    """The number of identities the checkpoint's classifiers were trained on; None when they are absent
    or disagree."""
    model = _meta_model(cfg)
    if model is None:
        return None
    state_dict = state_dict_as_loaded(model, without_module_prefix(state_dict))
    counts = {state_dict[name].shape[0] for name in classifier_keys(model)
              if name in state_dict and state_dict[name].ndim == 2}
    return counts.pop() if len(counts) == 1 else None


def build_eval_model(cfg, build=build_model):
    """``(model, cfg)``: the model of ``cfg`` in eval mode with the weights of ``MODEL.WEIGHTS``, and the
    config it was built from (a frozen copy: no pretrained backbone, ``MODEL.HEADS.NUM_CLASSES`` from the
    checkpoint when the config leaves it at 0).

    The checkpoint must fit the model (``MODEL.ALLOW_PARTIAL_WEIGHTS`` allows a partial load). ``build``
    makes the model from the config: the trainer's ``Trainer.build_model`` also applies its speed switches.
    """
    path = cfg.MODEL.WEIGHTS
    check_weights_file(path)  # before anything is built
    checkpoint = load_checkpoint_file(path if os.path.isfile(path) else PathManager.get_local_path(path))
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.BACKBONE.PRETRAIN = False  # the weights come from MODEL.WEIGHTS
    if cfg.MODEL.HEADS.NUM_CLASSES == 0:
        classes = classes_in_checkpoint(cfg, checkpoint["model"])
        if classes:
            cfg.MODEL.HEADS.NUM_CLASSES = classes
            logger.info("MODEL.HEADS.NUM_CLASSES %d, from the classifiers of %s", classes, path)
    cfg.freeze()
    model = build(cfg)
    MDPRCheckpointer(model, allow_partial=cfg.MODEL.ALLOW_PARTIAL_WEIGHTS).load_model_weights(checkpoint, path)
    return model.eval(), cfg
