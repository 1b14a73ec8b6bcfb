"""Training: the trainer, its loop and hooks, the checkpointer, launching over processes."""
from .checkpointer import MDPRCheckpointer, check_weights_file, load_checkpoint_file
from .setup import setup_config
from .trainer import Trainer, build_model
from .eval_model import build_eval_model
from .hooks import NotLearningError, StopIfNotLearning
from ..serialization import CheckpointError

__all__ = ["CheckpointError", "MDPRCheckpointer", "NotLearningError", "StopIfNotLearning", "Trainer",
           "build_eval_model", "build_model", "check_weights_file", "load_checkpoint_file", "setup_config"]
