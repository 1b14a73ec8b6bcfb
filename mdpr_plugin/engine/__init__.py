"""Training: the trainer, the CPU-capable AMP step, safe checkpoint loading."""
from .checkpoint import CheckpointError, load_checkpoint_file
from .trainer import Trainer, setup_config

__all__ = ["CheckpointError", "load_checkpoint_file", "Trainer", "setup_config"]
